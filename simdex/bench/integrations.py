"""``python -m simdex.bench integrations``: what the RAG framework layer costs.

The same WordNet records (glosses as documents, ``pos`` as metadata) and queries go through:

- ``direct``: ``Collection.search(vector, k, include=[metadatas, documents, distances])``, what the stores call;
- ``langchain``: ``SimdexVectorStore.similarity_search(text, k)``;
- ``llamaindex``: ``SimdexLlamaVectorStore.query(VectorStoreQuery(query_embedding=..., similarity_top_k=k))``;
- ``haystack``: ``SimdexEmbeddingRetriever.run(query_embedding=...)``;
- ``langchain-chroma``: ``langchain_chroma.Chroma.similarity_search(text, k)`` (Chroma's own HNSW, cosine), when
  installed.

Embedding is taken out of the timing: texts map to their precomputed all-MiniLM-L6-v2 vectors (a dictionary
lookup, the same for every LangChain store). Each query is timed alone; p50 and p99 over ``n_queries``, recall@k
against brute force. The figure that counts: p50 of each against ``direct`` and ``langchain-chroma``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from ._common import recall, save_json

STORES = ("direct", "langchain", "llamaindex", "haystack", "langchain-chroma")


def _fixed_embeddings(texts: list[str], vectors: np.ndarray) -> Any:
    from langchain_core.embeddings import Embeddings

    class Fixed(Embeddings):
        """Texts to their precomputed vectors: no model in the timed part."""

        def __init__(self) -> None:
            self.vector_of = {t: v for t, v in zip(texts, vectors.tolist())}

        def embed_documents(self, batch: list[str]) -> list[list[float]]:
            return [self.vector_of[t] for t in batch]

        def embed_query(self, text: str) -> list[float]:
            return self.vector_of[text]

    return Fixed()


def run(n_base: int = 20_000, n_queries: int = 1000, k: int = 4, stores: tuple[str, ...] = STORES
        ) -> dict[str, Any]:
    data = datasets.load("wordnet-minilm-384")
    ids_all, metas_all, docs_all = datasets.wordnet_records()
    base = np.ascontiguousarray(data.base[:n_base], np.float32)
    queries = np.ascontiguousarray(data.queries[:n_queries], np.float32)
    ids, docs = ids_all[:n_base], docs_all[:n_base]
    metas = [{"pos": m["pos"]} for m in metas_all[:n_base]]
    query_texts = [f"query {i}" for i in range(n_queries)]
    embedding = _fixed_embeddings(docs + query_texts, np.concatenate([base, queries]))
    truth = datasets.brute_force_knn(base, queries, k, "cosine")
    report: dict[str, Any] = {"dataset": "wordnet-minilm-384", "n_base": n_base, "n_queries": n_queries, "k": k,
                              "stores": {}}
    scratch = Path(tempfile.mkdtemp(prefix="simdex-bench-integrations-"))
    try:
        searches = _build(stores, scratch, embedding, ids, base, metas, docs, k)
        id_pos = {i: j for j, i in enumerate(ids)}
        for name, search in searches.items():
            for qi in range(20):  # warm up
                search(queries[qi], query_texts[qi])
            lat = np.empty(n_queries)
            found = []
            for qi in range(n_queries):
                t = time.perf_counter()
                hits = search(queries[qi], query_texts[qi])
                lat[qi] = time.perf_counter() - t
                found.append([id_pos[h] for h in hits])
            report["stores"][name] = {"p50_us": float(np.percentile(lat, 50) * 1e6),
                                      "p99_us": float(np.percentile(lat, 99) * 1e6),
                                      "recall": recall(found, truth)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = report["stores"]
    report["ratios"] = {f"{name} / direct": r["p50_us"] / rows["direct"]["p50_us"]
                        for name, r in rows.items() if name != "direct" and "direct" in rows}
    if "langchain-chroma" in rows and "langchain" in rows:
        report["ratios"]["langchain-chroma / langchain"] = rows["langchain-chroma"]["p50_us"] / \
            rows["langchain"]["p50_us"]
    return report


def _build(stores: tuple[str, ...], scratch: Path, embedding: Any, ids: list[str], base: np.ndarray,
           metas: list[dict], docs: list[str], k: int) -> dict[str, Any]:
    """One search function per store, ``search(vector, text) -> ids``."""
    from .. import connect
    out: dict[str, Any] = {}
    db = connect(scratch / "simdex", background=False)
    col = db.create_collection("bench", 384, "cosine", text=True)
    for s in range(0, len(ids), 5000):
        col.upsert(ids[s:s + 5000], base[s:s + 5000], metas[s:s + 5000], docs[s:s + 5000])
    col.merge()
    include = ["metadatas", "documents", "distances"]
    if "direct" in stores:
        out["direct"] = lambda v, t: [h["id"] for h in col.search(v, k, include=include)]
    if "langchain" in stores:
        from ..integrations.langchain import SimdexVectorStore
        lc = SimdexVectorStore(col, embedding)
        out["langchain"] = lambda v, t: [d.id for d in lc.similarity_search(t, k)]
    if "llamaindex" in stores:  # its own collection, written through LlamaIndex (nodes carry their fields)
        from llama_index.core.schema import TextNode
        from llama_index.core.vector_stores.types import VectorStoreQuery

        from ..integrations.llamaindex import SimdexLlamaVectorStore
        li = SimdexLlamaVectorStore(db, "llamaindex")
        for s in range(0, len(ids), 5000):
            li.add([TextNode(id_=ids[j], text=docs[j], metadata=metas[j], embedding=base[j].tolist())
                    for j in range(s, min(s + 5000, len(ids)))])
        li.client.merge()
        out["llamaindex"] = lambda v, t: li.query(VectorStoreQuery(query_embedding=v.tolist(),
                                                                   similarity_top_k=k)).ids
    if "haystack" in stores:  # its own collection too (inner product: the vectors are unit length)
        from haystack import Document

        from ..integrations.haystack import SimdexDocumentStore, SimdexEmbeddingRetriever
        hs = SimdexDocumentStore(path=str(scratch / "haystack"), embedding_dim=base.shape[1])
        for s in range(0, len(ids), 5000):
            hs.write_documents([Document(id=ids[j], content=docs[j], meta=metas[j], embedding=base[j].tolist())
                                for j in range(s, min(s + 5000, len(ids)))])
        hs.collection.merge()
        retriever = SimdexEmbeddingRetriever(hs, top_k=k)
        out["haystack"] = lambda v, t: [d.id for d in retriever.run(query_embedding=v.tolist())["documents"]]
    if "langchain-chroma" in stores:
        try:
            from langchain_chroma import Chroma
        except ImportError:
            Chroma = None
        if Chroma is not None:
            os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
            chroma = Chroma("bench", embedding_function=embedding, persist_directory=str(scratch / "chroma"),
                            collection_metadata={"hnsw:space": "cosine"})
            for s in range(0, len(ids), 5000):
                chroma.add_texts(docs[s:s + 5000], metas[s:s + 5000], ids=ids[s:s + 5000])
            out["langchain-chroma"] = lambda v, t: [d.id for d in chroma.similarity_search(t, k)]
    return out


def format_report(report: dict[str, Any]) -> str:
    lines = [f"wordnet-minilm-384: {report['n_base']:,} records, {report['n_queries']} single queries, "
             f"k={report['k']}; embedding out of the timing", f"{'store':18s} {'p50 us':>9s} {'p99 us':>9s} "
             f"{'recall':>7s}"]
    for name, r in report["stores"].items():
        lines.append(f"{name:18s} {r['p50_us']:9.1f} {r['p99_us']:9.1f} {r['recall']:7.3f}")
    for name, ratio in report["ratios"].items():
        lines.append(f"  p50 {name}: {ratio:.2f}x")
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> Path:
    return save_json(report, out, "integrations.json")
