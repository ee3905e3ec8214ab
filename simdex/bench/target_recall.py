"""``python -m simdex.bench target-recall``: how close ``search(target_recall=t)`` lands to t on real queries.

For each data set (all its base vectors) and index kind: build it in one add (which measures its recall curve on
500 held-out base vectors), then search the data set's real held-out queries with ``target_recall`` t and measure
recall@10 against the shared ground truth (ties at the 10th distance counted as hits). Reported: the effort each
target picked and the recall reached; the target is met when the recall lands in [t - 0.01, t + 0.02].
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from ._common import save_json

TARGETS = (0.9, 0.95, 0.99)


def _index(kind: str, dim: int, metric: str, rows: int) -> Any:
    from ..dense import HNSWIndex, VamanaIndex
    from ..quant import IVFIndex
    from ..store.config import sized_params
    if kind == "hnsw":
        return HNSWIndex(dim, metric, M=16, ef_construction=200)
    if kind == "vamana":
        return VamanaIndex(dim, metric, R=32, L_build=64)
    if kind == "ivf-pq":  # as an ivf-pq collection of this size has it (PQ codes, the best 100 re-ranked)
        return IVFIndex(dim, metric, vectors="memory", **sized_params("ivf-pq", {}, rows))
    raise ValueError(f"unknown index kind {kind!r}")


def run(names: tuple[str, ...], kinds: tuple[str, ...], n_queries: int = 1000,
        targets: tuple[float, ...] = TARGETS) -> dict[str, Any]:
    report: dict[str, Any] = {"targets": list(targets), "n_queries": n_queries, "results": []}
    for name in names:
        data = datasets.load(name)
        base, queries = np.ascontiguousarray(data.base), np.ascontiguousarray(data.queries[:n_queries])
        truth = data.ground_truth[:n_queries]
        for kind in kinds:
            index = _index(kind, base.shape[1], data.metric, base.shape[0])
            t = time.perf_counter()
            index.add(base)
            build_s = time.perf_counter() - t
            curve = index.recall_curve(10)
            row: dict[str, Any] = {"dataset": name, "index": kind, "build_seconds": build_s,
                                   "curve": curve.to_meta(), "points": []}
            for target in targets:
                _, ids = index.search(queries, 10, target_recall=target)
                recall = datasets.recall_at_k(ids, truth, 10, base, queries, data.metric)
                row["points"].append({"target": target, "effort": curve.effort_for(target), "recall": float(recall),
                                      "met": bool(target - 0.01 <= recall <= target + 0.02)})
            report["results"].append(row)
            print(format_row(row), flush=True)
    return report


def format_row(row: dict[str, Any]) -> str:
    cells = ", ".join(f"{p['target']} -> {p['recall']:.3f} ({row['curve']['param']}={p['effort']}"
                      f"{'' if p['met'] else ', missed'})" for p in row["points"])
    return f"{row['dataset']:20s} {row['index']:7s} {cells}"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"target recall@10 -> recall on {report['n_queries']} real held-out queries (met: within "
             f"[t - 0.01, t + 0.02])"]
    lines += [format_row(row) for row in report["results"]]
    met = [p["met"] for row in report["results"] for p in row["points"]]
    lines.append(f"met {sum(met)} of {len(met)}")
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> Path:
    return save_json(report, out, "target-recall.json")
