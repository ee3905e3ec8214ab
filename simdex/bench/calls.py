"""What one query per call costs: the fixed cost of a search call, in the library and through a collection.

Servers, RAG loops and the database call an index with one query at a time, so a call's fixed cost (checking the
request, scratch, thread set-up, dispatch into the compiled kernel, turning slots into ids, reading the records)
adds to every query. For each collection kind, on the same WordNet records, one thread, the same search effort,
this times per query:

- ``library batch``: the kind's index (the collection's own main index object) searching every query in one
  call: the search work without a call's fixed cost;
- ``library single``: the same index, one query per call (``index.search(q[None], k, threads=1, ...)``);
- ``store layer``: the collection's vector side (``RecordVectors.search``: growing segment and main index, row
  ids), one query per call;
- ``collection ids``: ``Collection.search(q, k, ef=..., include=["distances"])``, which returns records (their
  ids read from SQLite);
- ``collection records``: the same with ``include=["metadatas", "documents", "distances"]``;
- ``collection batch``: ``Collection.search_batch(queries, k, ef=..., include=["distances"])``, every query in
  one call: a collection's throughput, against ``library batch``;
- for ``hnsw``, hnswlib at the same M, ef_construction and ef, single and batch: the reference.

The variants run interleaved, ``rounds`` times over the queries; each figure is the fastest of its rounds (the
machine is shared: interleaving spreads drift over all of them, and the fastest round is the one least disturbed,
as ``timeit`` takes it). ``overhead`` is single minus batch.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from ._common import pyplot, save_json

KINDS = ("hnsw", "hnsw-lvq8", "hnsw-int8", "rabitq-graph", "ivf-pq", "vamana", "vamana-disk", "spann",
         "flat")
# build parameters of each kind (the db bench's): graphs M 16 / ef_construction 200, Vamana R 32
BUILD = {"hnsw": {"M": 16, "ef_construction": 200}, "hnsw-lvq8": {"M": 16, "ef_construction": 200},
         "hnsw-int8": {"M": 16, "ef_construction": 200}, "rabitq-graph": {"M": 16, "ef_construction": 200},
         "vamana": {"R": 32}, "vamana-disk": {"R": 32}}
VARIANTS = ("library batch", "library single", "store layer", "collection ids", "collection records",
            "collection batch")


def _records(n_base: int, n_queries: int) -> tuple[np.ndarray, np.ndarray, list[str], list[dict], list[str]]:
    data = datasets.load("wordnet-minilm-384")
    ids_all, metas_all, docs_all = datasets.wordnet_records()
    total = data.base.shape[0]
    n = min(n_base, total)
    # an even sample (WordNet is ordered by part of speech), as the db bench takes
    rows = np.arange(total) if n == total else np.sort(np.random.default_rng(0).choice(total, n, replace=False))
    metas = [{"pos": metas_all[r]["pos"], "n_words": metas_all[r]["n_words"]} for r in rows]
    return (np.ascontiguousarray(data.base[rows]), np.ascontiguousarray(data.queries[:n_queries]),
            [ids_all[r] for r in rows], metas, [docs_all[r] for r in rows])


def _timed(variants: dict[str, Callable[[], Any]], n_queries: int, rounds: int) -> dict[str, float]:
    """The fastest of ``rounds`` interleaved passes of each variant, in microseconds per query."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # compile and warm
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / n_queries * 1e6)
    return {name: float(np.min(t)) for name, t in times.items()}


def _kind_variants(col: Any, queries: np.ndarray, k: int, effort: int) -> tuple[dict[str, Callable], Any]:
    """The timed calls of one collection at one effort, and a function giving the library's and the
    collection's ids of the first queries (to check that they answer the same)."""
    from .._numba import num_threads
    from ..store.config import MAIN_INDEXES
    side = col._vectors
    main = side.main
    options: dict[str, Any] = {}
    if main is not None:
        options[MAIN_INDEXES[side.index_kind].breadth] = effort
        if getattr(main, "rerank", 0):  # as the collection asks it (RecordVectors._search_parts)
            options["rerank"] = max(k, main.rerank)
    index = main if main is not None else side.growing
    singles = [queries[i:i + 1] for i in range(queries.shape[0])]
    checked = [col._queries(q, "vector") for q in singles]
    ids_only, records = ["distances"], ["metadatas", "documents", "distances"]

    def library_batch() -> None:
        index.search(queries, k, threads=1, **options)

    def library_single() -> None:
        for q in singles:
            index.search(q, k, threads=1, **options)

    def store_layer() -> None:
        for q in checked:
            side.search(q, k, None, effort, 1)

    def collection_ids() -> None:
        for q in queries:
            col.search(q, k, ef=effort, include=ids_only)

    def collection_records() -> None:
        for q in queries:
            col.search(q, k, ef=effort, include=records)

    def collection_batch() -> None:
        with num_threads(1):  # (a collection searches a batch on numba's threads: one, as the library here)
            col.search_batch(queries, k, ef=effort, include=ids_only)

    def same_answers(n: int = 50) -> float:
        rid_to_id = {}
        agree = 0
        checked_queries = queries[:n]
        for q in checked_queries:
            _, lib = index.search(q[None], k, threads=1, **options)
            _, rids = side.search(col._queries(q[None], "vector"), k, None, effort, 1)
            hits = [h["id"] for h in col.search(q, k, ef=effort, include=ids_only)]
            for rid in rids[0].tolist():
                if rid >= 0 and rid not in rid_to_id:
                    rid_to_id[rid] = col._meta.fetch([rid])[rid][0]
            agree += lib[0].tolist() == rids[0].tolist() and hits == [rid_to_id[r] for r in rids[0].tolist() if r >= 0]
        return agree / len(checked_queries)

    variants = {"library batch": library_batch, "library single": library_single, "store layer": store_layer,
                "collection ids": collection_ids, "collection records": collection_records,
                "collection batch": collection_batch}
    return variants, same_answers


def _hnswlib_variants(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[Any, Callable[[int], dict]] | None:
    try:
        import hnswlib
    except ImportError:
        return None
    index = hnswlib.Index("cosine", base.shape[1])
    index.init_index(base.shape[0], M=16, ef_construction=200, random_seed=0)
    index.add_items(base, np.arange(base.shape[0]))
    index.set_num_threads(1)
    singles = [queries[i:i + 1] for i in range(queries.shape[0])]

    def at(effort: int) -> dict[str, Callable]:
        def batch() -> None:
            index.set_ef(effort)
            index.knn_query(queries, k)

        def single() -> None:
            index.set_ef(effort)
            for q in singles:
                index.knn_query(q, k)
        return {"hnswlib batch": batch, "hnswlib single": single}
    return index, at


def run(kinds: tuple[str, ...] = KINDS, n_base: int = 20_000, n_queries: int = 1000, k: int = 10,
        efforts: tuple[int, ...] = (16, 64), rounds: int = 5, progress: bool = True) -> dict[str, Any]:
    from ..store import connect
    base, queries, ids, metas, docs = _records(n_base, n_queries)
    report: dict[str, Any] = {"dataset": "wordnet-minilm-384", "n_base": base.shape[0], "n_queries": n_queries,
                              "k": k, "efforts": list(efforts), "rounds": rounds, "threads": 1, "kinds": {}}
    peer = _hnswlib_variants(base, queries, k) if "hnsw" in kinds else None
    for kind in kinds:
        scratch = Path(tempfile.mkdtemp(prefix=f"simdex-calls-{kind}-"))
        try:
            db = connect(scratch / "db", sync="off", background=False)
            col = db.create_collection("bench", base.shape[1], "cosine", index=kind, **BUILD.get(kind, {}))
            for s in range(0, base.shape[0], 1000):
                col.upsert(ids[s:s + 1000], base[s:s + 1000], metas[s:s + 1000], docs[s:s + 1000])
            col.merge()
            points = []
            for effort in efforts:
                variants, same_answers = _kind_variants(col, queries, k, effort)
                if kind == "hnsw" and peer is not None:
                    variants.update(peer[1](effort))
                us = _timed(variants, n_queries, rounds)
                point = {"effort": effort, "us_per_query": us, "same_answers": same_answers(),
                         "library_overhead_us": us["library single"] - us["library batch"],
                         "collection_ids_vs_library_qps": us["library single"] / us["collection ids"],
                         "collection_records_vs_library_qps": us["library single"] / us["collection records"],
                         "collection_batch_vs_library_qps": us["library batch"] / us["collection batch"]}
                if "hnswlib single" in us:
                    point["hnswlib_overhead_us"] = us["hnswlib single"] - us["hnswlib batch"]
                    point["library_single_vs_hnswlib_latency"] = us["library single"] / us["hnswlib single"]
                points.append(point)
                if progress:
                    print(f"  {kind:12s} effort {effort:<4d} " + "  ".join(f"{n} {v:.1f}" for n, v in us.items())
                          + f"  (us/query; same answers {point['same_answers']:.2f})", flush=True)
            report["kinds"][kind] = points
            db.close()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"one query per call, {report['dataset']} {report['n_base']:,} records, {report['n_queries']} queries, "
             f"k={report['k']}, 1 thread; microseconds per query (fastest of {report['rounds']} interleaved rounds)",
             "| kind | effort | library batch | library single | overhead | store layer | collection ids | "
             "collection records | collection ids / library QPS | records / library QPS | collection batch | "
             "batch / library batch QPS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, points in report["kinds"].items():
        for p in points:
            us = p["us_per_query"]
            lines.append(f"| {kind} | {p['effort']} | {us['library batch']:.1f} | {us['library single']:.1f} | "
                         f"{p['library_overhead_us']:.1f} | {us['store layer']:.1f} | {us['collection ids']:.1f} | "
                         f"{us['collection records']:.1f} | {p['collection_ids_vs_library_qps']:.2f} | "
                         f"{p['collection_records_vs_library_qps']:.2f} | {us['collection batch']:.1f} | "
                         f"{p['collection_batch_vs_library_qps']:.2f} |")
            if "hnswlib single" in us:
                lines.append(f"| hnswlib | {p['effort']} | {us['hnswlib batch']:.1f} | {us['hnswlib single']:.1f} | "
                             f"{p['hnswlib_overhead_us']:.1f} | | | | | | | |")
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> tuple[Path, Path | None]:
    path = save_json(report, out, "calls.json")
    plt = pyplot()
    if plt is None:
        return path, None
    rows = [(f"{kind} {p['effort']}", p["us_per_query"]) for kind, points in report["kinds"].items() for p in points]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    names = [n for n in VARIANTS]
    height = 0.8 / len(names)
    for j, name in enumerate(names):
        ax.barh([i + j * height for i in range(len(rows))], [us[name] for _, us in rows], height, label=name)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(rows))], [label for label, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("microseconds per query, one thread")
    ax.set_title(f"one query per call: {report['dataset']} {report['n_base']:,} records")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / "calls.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return path, png
