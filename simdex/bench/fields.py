"""``python -m simdex.bench fields``: named vector fields through the database against the same indexes used
directly from the library, on the same records and queries in one run; and the background fill of a new
embedding model against embedding the same documents directly.

Records: the first ``n`` WordNet glosses. A **multivector** field holds, per record, a set of 1-5 consecutive
gloss embeddings (384-d; real sentence vectors standing in for token vectors, as in tests/test_multivector.py),
searched by MUVERA candidates re-ranked by exact Chamfer score; the library side is a
:class:`~simdex.multivector.MultiVectorIndex` with the same parameters. A **sparse** field holds each gloss's
word counts, searched by dot product; the library side is a ``SparseIndex("dot")``. Queries come from the query
split. Measured: single-query latency (one query per call, from Python, 1 thread) and the overlap of the top 10
with the library's (the same index, so 1.0 is expected) and with exact search (Chamfer over every record).

The fill part adds a field with the built-in MiniLM to a collection of ``fill_n`` documents and times the
background fill until complete, against ``MiniLM()(documents)`` on the same documents.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from ._common import save_json

QUERY_ROW = 107_659  # the first row of wordnet-minilm-384's query split
# sets of sentence vectors: few buckets and wide projections suit them (as in tests/test_multivector.py)
ENCODER = {"k_sim": 2, "d_proj": 64, "r_reps": 8}
CANDIDATES = (100, 400, 1600)  # MUVERA candidates re-ranked exactly (a multivector field's ef)


def _sets(vec: np.ndarray, start: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    sizes = rng.integers(1, 6, n)
    off = start + np.concatenate([[0], np.cumsum(sizes)])
    return [np.asarray(vec[off[i]:off[i + 1]], np.float32) for i in range(n)]


def _terms(texts: list[str]) -> list[dict[str, float]]:
    return [{w: float(c) for w, c in Counter(t.lower().split()).items()} for t in texts]


def _latency(search: Any, queries: list[Any]) -> tuple[list[list[int]], np.ndarray]:
    """Each query's result ids (as returned) and its latency in microseconds, after one warm-up call."""
    search(queries[0])
    out, times = [], np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        out.append(search(q))
        times[i] = (time.perf_counter() - t) * 1e6
    return out, times


def _overlap(a: list[list[Any]], b: list[list[Any]], k: int) -> float:
    """Mean share of the reference's top k (``b``; fewer where a query has fewer hits) found in ``a``."""
    return float(np.mean([len(set(x[:k]) & set(y[:k])) / max(1, min(k, len(y))) for x, y in zip(a, b)]))


def run(n: int = 20_000, n_queries: int = 300, k: int = 10, fill_n: int = 2_000,
        parts: tuple[str, ...] = ("multivector", "sparse", "fill")) -> dict[str, Any]:
    import simdex
    from ..multivector import MultiVectorIndex
    from ..sparse import SparseIndex
    ids, _, docs = datasets.wordnet_records()
    vec = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {"n": n, "n_queries": n_queries, "k": k, "results": []}
    with tempfile.TemporaryDirectory(prefix="simdex-bench-fields-") as tmp:
        db = simdex.connect(Path(tmp) / "db")
        if "multivector" in parts or "sparse" in parts:
            sets = _sets(vec, 0, n, rng)
            terms = _terms(docs[:n])
            col = db.create_collection("f", 384, fields={"sents": {"type": "multivector", "dim": 384,
                                                                   "params": ENCODER},
                                                         "terms": {"type": "sparse"}})
            t = time.perf_counter()
            for start in range(0, n, 1000):
                stop = min(n, start + 1000)
                col.upsert(ids[start:stop], np.asarray(vec[start:stop], np.float32),
                           fields={"sents": sets[start:stop], "terms": terms[start:stop]})
            upsert_s = time.perf_counter() - t
            t = time.perf_counter()
            db.optimize(wait_idle=True)
            index_s = time.perf_counter() - t
            row_of = {i: j for j, i in enumerate(ids[:n])}
        if "multivector" in parts:
            queries = _sets(vec, QUERY_ROW, n_queries, rng)
            t = time.perf_counter()
            lib = MultiVectorIndex(384, encoder=ENCODER)
            lib.add(sets, np.arange(n))
            lib_build_s = time.perf_counter() - t
            exact = [lib.search([q], k, method="exact", threads=1)[1][0].tolist() for q in queries]
            for wide in CANDIDATES:
                got_lib, t_lib = _latency(lambda q: lib.search([q], k, candidates=wide, threads=1)[1][0].tolist(),
                                          queries)
                got_db, t_db = _latency(lambda q: [row_of[h["id"]] for h in col.search(q, k, field="sents", ef=wide,
                                                                                        include=[])], queries)
                report["results"].append(_row(f"multivector c={wide}", got_db, t_db, got_lib, t_lib, exact, k,
                                              upsert_s, index_s, lib_build_s))
                print(format_row(report["results"][-1]), flush=True)
        if "sparse" in parts:
            queries = _terms(docs[QUERY_ROW:QUERY_ROW + n_queries])
            t = time.perf_counter()
            lib = SparseIndex("dot", analyzer=None)
            lib.add(terms, np.arange(n))
            lib_build_s = time.perf_counter() - t
            got_lib, t_lib = _latency(lambda q: [i for i in lib.search([q], k, threads=1)[1][0].tolist() if i >= 0],
                                      queries)
            got_db, t_db = _latency(lambda q: [row_of[h["id"]] for h in col.search(q, k, field="terms", include=[])],
                                    queries)
            report["results"].append(_row("sparse", got_db, t_db, got_lib, t_lib, got_lib, k, upsert_s, index_s,
                                          lib_build_s))
            print(format_row(report["results"][-1]), flush=True)
        if "fill" in parts:
            report["fill"] = _fill(db, ids[:fill_n], docs[:fill_n])
            print(format_fill(report["fill"]), flush=True)
        db.close()
    return report


def _row(kind: str, got_db, t_db, got_lib, t_lib, exact, k, upsert_s, index_s, lib_build_s) -> dict[str, Any]:
    return {"field": kind, "db_p50_us": float(np.median(t_db)), "lib_p50_us": float(np.median(t_lib)),
            "db_qps": float(1e6 / t_db.mean()), "lib_qps": float(1e6 / t_lib.mean()),
            "qps_ratio": float(t_lib.mean() / t_db.mean()), "same_as_lib": _overlap(got_db, got_lib, k),
            "db_recall": _overlap(got_db, exact, k), "lib_recall": _overlap(got_lib, exact, k),
            "upsert_seconds": upsert_s, "index_seconds": index_s, "lib_build_seconds": lib_build_s}


def _fill(db: Any, ids: list[str], docs: list[str]) -> dict[str, Any]:
    from ..embed import MiniLM
    model = MiniLM()
    model(docs[:64], progress=False)  # compiled and loaded before either is timed
    t = time.perf_counter()
    model(docs, progress=False)
    direct_s = time.perf_counter() - t
    col = db.create_collection("fill", 8, metric="l2", index="flat")
    col.upsert(ids, np.zeros((len(ids), 8), np.float32) + 1, documents=docs)
    t = time.perf_counter()
    col.add_field("minilm", embedder=model)
    col.wait_for_field("minilm")
    fill_s = time.perf_counter() - t
    fill = col.stats()["fields"]["minilm"]["fill"]
    return {"documents": len(docs), "direct_seconds": direct_s, "fill_seconds": fill_s,
            "direct_docs_per_s": len(docs) / direct_s, "fill_docs_per_s": len(docs) / fill_s,
            "ratio": direct_s / fill_s, "filled": fill["done"], "state": fill["state"]}


def format_row(row: dict[str, Any]) -> str:
    return (f"{row['field']:<16} database p50 {row['db_p50_us']:8.0f} us  library p50 {row['lib_p50_us']:8.0f} us  "
            f"QPS ratio {row['qps_ratio']:.2f}x  same top-10 as library {row['same_as_lib']:.3f}  "
            f"recall@10 {row['db_recall']:.3f} (library {row['lib_recall']:.3f})")


def format_fill(fill: dict[str, Any]) -> str:
    return (f"fill: {fill['documents']} documents by MiniLM in the background in {fill['fill_seconds']:.1f} s "
            f"({fill['fill_docs_per_s']:.0f}/s), directly in {fill['direct_seconds']:.1f} s "
            f"({fill['direct_docs_per_s']:.0f}/s): {fill['ratio']:.2f}x; {fill['filled']} filled, {fill['state']}")


def format_report(report: dict[str, Any]) -> str:
    lines = [f"named fields: {report['n']} WordNet records, {report['n_queries']} single queries, k={report['k']}"]
    lines += [format_row(r) for r in report["results"]]
    if "fill" in report:
        lines.append(format_fill(report["fill"]))
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> Path:
    return save_json(report, out, "fields.json")
