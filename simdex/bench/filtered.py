"""Filtered-search calibration: exact scan of the allowed rows against filtered graph traversal.

For each selectivity, a random allow-set of that fraction of the rows; single queries, one thread; recall@10
against the exact top 10 among the allowed rows; p50 latency. Three ways to answer: forced exact scan, forced
graph traversal at a sweep of ef, and what :meth:`HNSWIndex.search` chooses by itself (``auto``, at ef=16). The
table shows where the cost model in ``HNSWIndex._prefer_exact`` switches and whether ``auto`` tracks the faster
of the two at full recall.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from ..dense.hnsw import HNSWIndex

SELECTIVITIES = (0.5, 0.13, 0.03, 0.01, 0.003)
GRAPH_EFS = (10, 16, 32, 64)


def _measure(index: HNSWIndex, queries: np.ndarray, truth: np.ndarray, allowed: np.ndarray, ef: int
             ) -> tuple[float, float]:
    index.search(queries[:5], 10, ef=ef, filter=allowed, threads=1)  # JIT and caches warm
    latencies = np.empty(queries.shape[0])
    found = np.empty((queries.shape[0], 10), np.int64)
    for i in range(queries.shape[0]):
        t = time.perf_counter()
        _, ids = index.search(queries[i:i + 1], 10, ef=ef, filter=allowed, threads=1)
        latencies[i] = time.perf_counter() - t
        found[i] = ids[0]
    recall = float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found.tolist(), truth.tolist())]))
    return recall, float(np.median(latencies) * 1e3)


def run(dataset: str = "wordnet-minilm-384", n_queries: int = 200, seed: int = 0,
        out_dir: Path = Path("bench-results"), n_base: int | None = None) -> dict[str, Any]:
    ds = datasets.load(dataset)
    base = np.ascontiguousarray(ds.base[:n_base])
    index = HNSWIndex(base.shape[1], ds.metric, M=16, ef_construction=200)
    index.add(base)
    queries = np.ascontiguousarray(ds.queries[:n_queries])
    rng = np.random.default_rng(seed)
    rows = []
    print(f"== filtered search on {dataset} ({base.shape[0]} rows), {n_queries} single queries, 1 thread ==")
    print(f"{'selectivity':>11} {'allowed':>8} {'mode':>6} {'ef':>4} {'recall@10':>9} {'p50 ms':>7}")
    for sel in SELECTIVITIES:
        allowed = np.flatnonzero(rng.random(base.shape[0]) < sel)
        truth = allowed[datasets.brute_force_knn(base[allowed], queries, 10, ds.metric)]
        modes: list[tuple[str, int, Any]] = [("auto", 16, None), ("exact", 16, True)]
        modes += [("graph", ef, False) for ef in GRAPH_EFS]
        for mode, ef, force in modes:
            if force is not None:
                # the calibration experiment overrides the cost model on this one instance
                index._prefer_exact = (lambda n, e, f=force: f)  # type: ignore[method-assign]
            try:
                recall, p50 = _measure(index, queries, truth, allowed, ef)
            finally:
                index.__dict__.pop("_prefer_exact", None)
            rows.append({"selectivity": sel, "allowed": int(allowed.size), "mode": mode, "ef": ef,
                         "recall": recall, "p50_ms": p50})
            print(f"{sel:11.3f} {allowed.size:8d} {mode:>6} {ef:4d} {recall:9.3f} {p50:7.2f}")
    report = {"dataset": dataset, "n_queries": n_queries, "rows": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"filtered-{dataset}.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out_dir / f'filtered-{dataset}.json'}")
    return report
