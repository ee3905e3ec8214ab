"""Distributed collections on a local Ray against a single-node collection, on the same WordNet records.

Layouts: ``local`` (:func:`simdex.connect`, no Ray), and distributed ``SxR`` (S shards, R replicas each; default
1x1, 2x1 and 1x2). For each, in one run on the same machine: upsert throughput (batches of ``batch`` records,
each durable when the call returns), the time until every record is in the index, recall@10 against exact
neighbours, single-query latency (p50 / p99, one query per call), QPS of ``search_batch`` with 100 queries a call,
and QPS of single queries from ``clients`` threads at once (where replicas can share the load). The ratio that
issue 27 sets: a 1x1 collection's batch-100 search time over the local one's, which is what Ray's calls and
serialisation add (target <= 1.2).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from ._common import recall, save_json

BUILD = {"index": "hnsw", "M": 16, "ef_construction": 200}


def _layouts(spec: str) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for part in spec.split(","):
        if part == "local":
            out.append(None)
        else:
            s, r = part.split("x")
            out.append((int(s), int(r)))
    return out


def _wordnet(n_base: int, n_queries: int, k: int) -> tuple:
    data = datasets.load("wordnet-minilm-384")
    ids_all, metas_all, docs_all = datasets.wordnet_records()
    n = min(n_base, data.base.shape[0])
    rows = np.sort(np.random.default_rng(0).choice(data.base.shape[0], n, replace=False))
    base = np.ascontiguousarray(data.base[rows])
    queries = np.ascontiguousarray(data.queries[:n_queries])
    ids = [ids_all[r] for r in rows]
    position = {i: j for j, i in enumerate(ids)}
    truth = datasets.brute_force_knn(base, queries, k, "cosine")
    return ("wordnet-minilm-384", base, queries, ids, [{"pos": metas_all[r]["pos"]} for r in rows],
            [docs_all[r] for r in rows], truth, position.__getitem__)


def _disk_set(n_base: int, n_queries: int, k: int, work_dir: str, log) -> tuple:
    """The 2M x 384 set of ``python -m simdex.bench disk`` (WordNet, GloVe and noisy copies), read from its file a
    batch at a time."""
    from .disk import DIM, make_set
    folder = Path(work_dir)
    make_set(folder, n_base, 1000, 0.25, 0, log)
    base = np.memmap(folder / "base.f32", np.float32, mode="r", shape=(n_base, DIM))
    queries = np.fromfile(folder / "queries.f32", np.float32).reshape(-1, DIM)[:n_queries]
    truth = np.load(folder / "gt.npy")[:n_queries, :k]
    return (f"disk set ({n_base:,} x {DIM})", base, queries, [str(i) for i in range(n_base)], None, None, truth,
            int)


def _embed_rate(db: Any, name: str, layout: tuple[int, int] | None, n_docs: int, batch: int = 250) -> float:
    """Documents per second upserted as text alone into a new exact collection of ``layout`` that embeds them with
    MiniLM (WordNet glosses, batches of ``batch``; its model loaded and its kernels compiled beforehand)."""
    ids, _, docs = datasets.wordnet_records()
    shape = {} if layout is None else {"shards": layout[0], "replicas": layout[1]}
    col = db.create_collection(f"text{name}", embedder="minilm", index="flat", **shape)
    col.upsert(ids[:8], documents=docs[:8])
    t0 = time.perf_counter()
    for s in range(8, n_docs + 8, batch):
        col.upsert(ids[s:min(s + batch, n_docs + 8)], documents=docs[s:min(s + batch, n_docs + 8)])
    rate = n_docs / (time.perf_counter() - t0)
    db.drop_collection(f"text{name}")
    return rate


def run(layouts: str = "local,1x1,2x1,1x2", n_base: int = 20_000, n_queries: int = 500, k: int = 10,
        ef: int = 32, batch: int = 1000, clients: int = 4, rounds: int = 5, data: str = "wordnet",
        index: dict[str, Any] | None = None, work_dir: str = "/tmp/simdex-disk", embed_docs: int = 0,
        log=print) -> dict[str, Any]:
    """``data``: "wordnet" (a sample of ``n_base`` WordNet records with metadata and documents) or "disk" (the
    first ``n_base`` rows of the disk benchmark's set, vectors only); ``index``: the collection's index and its
    options (default HNSW M 16); ``embed_docs`` > 0: also the rate of upserting that many documents to be embedded
    (MiniLM) in each layout, where replicas must not multiply the embedding work."""
    import simdex
    from simdex import distributed
    from .._storage import drop_pages
    from .._proc import proc_status
    build = dict(index or BUILD)
    name_of_set, base, queries, ids, metas, docs, truth, position = (
        _wordnet(n_base, n_queries, k) if data == "wordnet" else _disk_set(n_base, n_queries, k, work_dir, log))
    n = len(ids)
    report: dict[str, Any] = {"dataset": name_of_set, "n_base": n, "n_queries": len(queries), "k": k,
                              "ef": ef, "batch": batch, "clients": clients, "rounds": rounds, "index": build,
                              "layouts": {}}
    n_queries = len(queries)
    scratch = Path(tempfile.mkdtemp(prefix="simdex-distbench-"))
    dist_db = None
    try:
        for layout in _layouts(layouts):
            name = "local" if layout is None else f"{layout[0]}x{layout[1]}"
            if layout is None:
                db: Any = simdex.connect(scratch / "local")
                col = db.create_collection("bench", 384, "cosine", **build)
            else:
                if dist_db is None:
                    t0 = time.perf_counter()
                    dist_db = distributed.connect(scratch / "dist")
                    import ray
                    ray_get = ray.get
                    report["ray_start_seconds"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                col = dist_db.create_collection(f"bench{name}", 384, "cosine", shards=layout[0], replicas=layout[1],
                                                **build)
                report.setdefault("actor_start_seconds", {})[name] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for s in range(0, n, batch):
                col.upsert(ids[s:s + batch], np.asarray(base[s:s + batch]), None if metas is None else
                           metas[s:s + batch], None if docs is None else docs[s:s + batch])
                drop_pages(base)  # a file-backed set's pages are the bench's, not the collection's
            upsert_s = time.perf_counter() - t0
            if layout is None:
                col.merge()
            else:
                col._write("merge", lambda s: (), {}, list(range(layout[0])))
            indexed_s = time.perf_counter() - t0
            if layout is None:
                memory = [{"rss": proc_status("VmRSS"), "anon": proc_status("RssAnon")}]
            else:
                memory = ray_get([a.memory.remote() for row in col._actors for a in row])
            for q in queries[:20]:
                col.search(q, k, ef=ef)  # warm
            lat = np.empty(n_queries)
            found = []
            for i, q in enumerate(queries):
                t = time.perf_counter()
                hits = col.search(q, k, ef=ef, include=["distances"])
                lat[i] = time.perf_counter() - t
                found.append([position(h["id"]) for h in hits])
            batch_s = float("inf")
            for _ in range(rounds):  # the fastest round: 5 calls of 100 queries are over in tens of ms
                t0 = time.perf_counter()
                for s in range(0, n_queries, 100):
                    col.search_batch(queries[s:s + 100], k, ef=ef, include=["distances"])
                batch_s = min(batch_s, time.perf_counter() - t0)
            with ThreadPoolExecutor(clients) as pool:
                t0 = time.perf_counter()
                list(pool.map(lambda q: col.search(q, k, ef=ef, include=["distances"]), queries))
                threaded_s = time.perf_counter() - t0
            point = {"upsert_per_second": n / upsert_s, "indexed_seconds": indexed_s,
                     "recall": recall(np.array(found), truth), "p50_ms": float(np.percentile(lat, 50) * 1e3),
                     "p99_ms": float(np.percentile(lat, 99) * 1e3), "batch100_qps": n_queries / batch_s,
                     "threaded_qps": n_queries / threaded_s, "process_memory": memory}
            if embed_docs:
                point["embed_upsert_per_second"] = _embed_rate(db if layout is None else dist_db, name, layout,
                                                                embed_docs)
            report["layouts"][name] = point
            log(f"  {name:6s} upsert {point['upsert_per_second']:,.0f} rec/s, indexed {indexed_s:.1f} s, recall "
                f"{point['recall']:.3f}, p50 {point['p50_ms']:.2f} ms, p99 {point['p99_ms']:.2f} ms, batch-100 "
                f"{point['batch100_qps']:,.0f} QPS, {clients} clients {point['threaded_qps']:,.0f} QPS"
                + (f", documents embedded and upserted {point['embed_upsert_per_second']:,.0f}/s"
                   if embed_docs else ""))
            if layout is None:
                db.close()
    finally:
        if dist_db is not None:
            dist_db.close()
        shutil.rmtree(scratch, ignore_errors=True)
    layouts_done = report["layouts"]
    if "local" in layouts_done and "1x1" in layouts_done:
        report["ray_overhead_batch100"] = layouts_done["local"]["batch100_qps"] / layouts_done["1x1"]["batch100_qps"]
    return report


def format_report(report: dict[str, Any]) -> str:
    index = report.get("index", BUILD)
    lines = [f"distributed collections, {report['dataset']} {report['n_base']:,} records, {index}, ef={report['ef']}, "
             f"{report['n_queries']} queries",
             "| layout | upsert rec/s | indexed s | recall@10 | p50 ms | p99 ms | batch-100 QPS | "
             f"{report['clients']} clients QPS | anonymous memory MiB (per process) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, p in report["layouts"].items():
        memory = " + ".join(f"{m['anon'] / 2**20:,.0f}" for m in p.get("process_memory", []))
        lines.append(f"| {name} | {p['upsert_per_second']:,.0f} | {p['indexed_seconds']:.1f} | {p['recall']:.3f} | "
                     f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['batch100_qps']:,.0f} | {p['threaded_qps']:,.0f} | "
                     f"{memory} |")
    embedded = {name: p["embed_upsert_per_second"] for name, p in report["layouts"].items()
                if "embed_upsert_per_second" in p}
    if embedded:
        lines.append("documents upserted as text (embedded by MiniLM) per second: "
                     + ", ".join(f"{name} {rate:,.0f}" for name, rate in embedded.items()))
    if "ray_overhead_batch100" in report:
        lines.append(f"1x1 batch-100 search time / local: {report['ray_overhead_batch100']:.2f} (target <= 1.2)")
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> Path:
    return save_json(report, out, "distributed.json")
