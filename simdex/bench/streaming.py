"""Streaming benchmark: cycles of deleting a random fraction of the vectors and inserting it back, while a
search thread keeps querying; recall@k at a fixed search budget against brute force over the live set.

Libraries:

- ``simdex``: :class:`~simdex.dense.VamanaIndex` (FreshDiskANN tombstones, consolidation in a background thread
  once ``consolidate_threshold`` of the nodes are deleted, slot recycling), beam size ``L`` fixed;
- ``hnswlib``: ``mark_deleted`` + ``add_items(replace_deleted=True)`` on an index created with
  ``allow_replace_deleted=True`` (deleted nodes are overwritten in place by new inserts), ``ef`` fixed.

Every cycle deletes ``fraction`` of the base in ``chunks`` steps and re-inserts the same vectors under the same
ids in ``chunks`` steps, so the live set returns to the full base after each cycle. Ground truth: exact top-100
of every query over the full base (numpy, float64); the true top-k of any live set is the first k live entries
of that list (exact unless more than 90 of a query's 100 nearest are deleted at once, which the benchmark checks).

The search thread sends one query per call (so per-query latency is measured) on one thread; the update calls
use all threads. A search is scored against the live set of the update step it ran in; the few searches that
straddle a step (an update call finished while they ran) are counted but not scored.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import datasets
from .ann import _machine
from ._common import pyplot, recall

GT_DEPTH = 100
SWITCH_INTERVAL = 0.0002


def exact_top(base: np.ndarray, queries: np.ndarray, metric: str, depth: int = GT_DEPTH) -> np.ndarray:
    """Ids (nq, depth) of the exact nearest base rows, nearest first (float64 numpy, in blocks)."""
    x = base.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    out = np.empty((q.shape[0], depth), np.int64)
    xn = (x * x).sum(1)
    for s in range(0, q.shape[0], 256):
        qb = q[s:s + 256]
        d = -(qb @ x.T) if metric != "l2" else xn[None, :] - 2 * qb @ x.T
        part = np.argpartition(d, depth - 1, axis=1)[:, :depth]
        order = np.argsort(np.take_along_axis(d, part, 1), axis=1, kind="stable")
        out[s:s + 256] = np.take_along_axis(part, order, 1)
    return out


def live_truth(top: np.ndarray, dead: np.ndarray, k: int) -> np.ndarray:
    """First k ids of each row of ``top`` not in the boolean mask ``dead`` (indexed by id)."""
    alive = ~dead[top]
    if (alive.sum(axis=1) < k).any():
        raise RuntimeError("ground truth too shallow for this many deletions")
    pos = np.argsort(~alive, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(top, pos, 1)


# ---- adapters ----------------------------------------------------------------------------------------------------
class _Simdex:
    name = "simdex"

    def __init__(self, dim: int, metric: str, n: int, p: dict) -> None:
        from ..dense import VamanaIndex
        self.index = VamanaIndex(dim, metric, R=p["R"], L_build=p["L_build"], L_search=p["L"],
                                 alpha=p["alpha"], consolidate_threshold=p["consolidate_threshold"],
                                 background=True)
        self.L = p["L"]
        self.params = {"R": p["R"], "L_build": p["L_build"], "alpha": p["alpha"], "L": p["L"],
                       "consolidate_threshold": p["consolidate_threshold"]}

    def build(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.index.add(x, ids)

    def insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.index.add(x, ids)

    def delete(self, ids: np.ndarray) -> None:
        self.index.remove(ids)

    def settle(self) -> None:
        self.index.wait()

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q, k, L=self.L, threads=1)[1]


class _Hnswlib:
    name = "hnswlib"

    def __init__(self, dim: int, metric: str, n: int, p: dict) -> None:
        import hnswlib
        self.index = hnswlib.Index(space={"l2": "l2", "ip": "ip", "cosine": "cosine"}[metric], dim=dim)
        self.index.init_index(max_elements=n, M=p["M"], ef_construction=p["ef_construction"], random_seed=100,
                              allow_replace_deleted=True)
        self.index.set_ef(p["L"])
        self.threads = p["threads"] or -1
        self.params = {"M": p["M"], "ef_construction": p["ef_construction"], "ef": p["L"]}

    # Re-inserted vectors get fresh hnswlib labels (mapped back to our ids): replace_deleted gives a new label a
    # deleted element's slot and drops the old label's mapping, so re-using a label that is itself deleted and
    # waiting for replacement can lose it ("Label not found" on a later mark_deleted).
    def build(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.label_of = ids.copy()  # id -> current label
        self.id_of = ids.copy()  # label -> id
        self.index.add_items(x, ids, num_threads=self.threads)

    def insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        labels = np.arange(self.id_of.shape[0], self.id_of.shape[0] + ids.shape[0], dtype=np.int64)
        self.id_of = np.concatenate([self.id_of, ids])  # published before the labels can be returned
        self.label_of[ids] = labels
        self.index.add_items(x, labels, num_threads=self.threads, replace_deleted=True)

    def delete(self, ids: np.ndarray) -> None:
        for label in self.label_of[ids].tolist():
            self.index.mark_deleted(label)

    def settle(self) -> None:
        pass

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        labels = self.index.knn_query(q, k, num_threads=1)[0].astype(np.int64)
        # read the map after the query: a label can be returned only once its insert has begun, and the insert
        # publishes the longer map before it starts (read before the query, the map could be too short)
        return self.id_of[labels]


ADAPTERS = {"simdex": _Simdex, "hnswlib": _Hnswlib}


# ---- the run -----------------------------------------------------------------------------------------------------
def _run_one(lib: str, ds: datasets.Dataset, top: np.ndarray, p: dict, log: Callable[..., Any]) -> dict:
    base, queries, k = ds.base, ds.queries, p["k"]
    n = base.shape[0]
    ids = np.arange(n, dtype=np.int64)
    adapter = ADAPTERS[lib](ds.dim, ds.metric, n, p)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    adapter.build(base, ids)
    build_s = time.perf_counter() - t0
    dead = np.zeros(n, bool)
    truth_full = live_truth(top, dead, k)

    def measure() -> float:
        found = np.concatenate([adapter.search(queries[i:i + 1], k) for i in range(queries.shape[0])])
        return recall(found[:, :k], live_truth(top, dead, k))

    adapter.search(queries[:1], k)  # JIT
    fresh = measure()
    log(f"  {lib}: built {n} in {build_s:.1f}s, recall@{k} fresh {fresh:.4f}")
    # the search thread: one query per call; each record is (step before, step after, query, ids, latency)
    step = [0]
    dead_at: dict[int, np.ndarray] = {0: dead.copy()}
    # ids that no search of a step may return: dead at the step's start and not being re-inserted by the call
    # that ends the step (an insert in flight may legitimately be found already)
    must_be_dead: dict[int, np.ndarray] = {0: dead.copy()}
    records: list[tuple[int, int, int, np.ndarray, float]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def searcher() -> None:
        rng = np.random.default_rng(7)
        try:
            while not stop.is_set():
                qi = int(rng.integers(queries.shape[0]))
                s0 = step[0]
                t = time.perf_counter()
                found = adapter.search(queries[qi:qi + 1], k)[0]
                lat = time.perf_counter() - t
                records.append((s0, step[0], qi, found, lat))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    rng = np.random.default_rng(p["seed"])
    cycles = []
    thread = threading.Thread(target=searcher, daemon=True)
    thread.start()
    try:
        for c in range(p["cycles"]):
            gone = rng.choice(n, int(n * p["fraction"]), replace=False)
            parts = np.array_split(gone, p["chunks"])
            first_record = len(records)
            t_del = 0.0
            for part in parts:
                t = time.perf_counter()
                adapter.delete(part)
                t_del += time.perf_counter() - t
                dead[part] = True
                dead_at[step[0] + 1] = dead.copy()
                must_be_dead[step[0] + 1] = dead_at[step[0] + 1]
                step[0] += 1
            t = time.perf_counter()
            adapter.settle()  # a background consolidation still running waits here (searches go on)
            t_settle = time.perf_counter() - t
            r_mid = measure()
            t_ins = 0.0
            for part in parts:
                in_flight = dead.copy()
                in_flight[part] = False
                must_be_dead[step[0]] = in_flight
                t = time.perf_counter()
                adapter.insert(base[part], ids[part])
                t_ins += time.perf_counter() - t
                dead[part] = False
                dead_at[step[0] + 1] = dead.copy()
                must_be_dead[step[0] + 1] = dead_at[step[0] + 1]
                step[0] += 1
            t = time.perf_counter()
            adapter.settle()
            t_settle += time.perf_counter() - t
            r_after = measure()
            during = records[first_record:]
            scored = [r for r in during if r[0] == r[1]]
            if scored:
                found = np.stack([r[3] for r in scored])
                # a hit is a true top-k id of the live set with or without the insert in flight
                truth = np.stack([np.concatenate([live_truth(top[r[2]:r[2] + 1], dead_at[r[0]], k)[0],
                                                  live_truth(top[r[2]:r[2] + 1], must_be_dead[r[0]], k)[0]])
                                  for r in scored])
                hits = np.array([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)])
                r_during, r_during_min_step = float(hits.mean()), _worst_step(scored, hits)
                deleted_returned = int(sum(must_be_dead[r[0]][r[3][r[3] >= 0]].sum() for r in scored))
            else:
                r_during, r_during_min_step, deleted_returned = float("nan"), float("nan"), 0
            lat = np.array([r[4] for r in during]) if during else np.array([np.nan])
            cyc = {"cycle": c + 1, "deleted": int(gone.size), "delete_seconds": t_del, "insert_seconds": t_ins,
                   "settle_seconds": t_settle, "delete_per_s": gone.size / max(t_del, 1e-9),
                   "insert_per_s": gone.size / max(t_ins, 1e-9),
                   "recall_after_delete": r_mid, "recall_after_cycle": r_after,
                   "recall_during": r_during, "recall_during_worst_step": r_during_min_step,
                   "searches_during": len(during), "searches_scored": len(scored),
                   "deleted_ids_returned": deleted_returned,
                   "latency_p50_ms": float(np.percentile(lat, 50) * 1e3),
                   "latency_p99_ms": float(np.percentile(lat, 99) * 1e3)}
            cycles.append(cyc)
            log(f"  {lib} cycle {c + 1}: recall after delete {r_mid:.4f}, after cycle {r_after:.4f}, during "
                f"{r_during:.4f} ({len(scored)} scored); delete {cyc['delete_per_s']:.0f}/s, insert "
                f"{cyc['insert_per_s']:.0f}/s; p99 {cyc['latency_p99_ms']:.2f} ms")
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
    del truth_full
    all_lat = np.array([r[4] for r in records]) if records else np.array([np.nan])
    tot_del = sum(c["delete_seconds"] for c in cycles)
    tot_ins = sum(c["insert_seconds"] for c in cycles)
    n_moved = sum(c["deleted"] for c in cycles)
    worst = min(min(c["recall_after_cycle"], c["recall_after_delete"],
                    c["recall_during"] if c["recall_during"] == c["recall_during"] else 1.0) for c in cycles)
    return {"library": lib, "params": adapter.params, "build_seconds": build_s, "recall_fresh": fresh,
            "cycles": cycles, "recall_worst": worst, "max_drop_vs_fresh": fresh - worst,
            "delete_per_s": n_moved / max(tot_del, 1e-9), "insert_per_s": n_moved / max(tot_ins, 1e-9),
            "settle_seconds_total": sum(c["settle_seconds"] for c in cycles),
            "latency_p50_ms": float(np.percentile(all_lat, 50) * 1e3),
            "latency_p99_ms": float(np.percentile(all_lat, 99) * 1e3), "searches": len(records),
            "load_average_start_end": [load_start[0], os.getloadavg()[0]],
            "deleted_ids_returned": sum(c["deleted_ids_returned"] for c in cycles)}


def _worst_step(scored: list, hits: np.ndarray) -> float:
    """Lowest mean recall over the update steps (with at least 20 scored searches) of a cycle."""
    steps: dict[int, list[float]] = {}
    for r, h in zip(scored, hits):
        steps.setdefault(r[0], []).append(float(h))
    means = [float(np.mean(v)) for v in steps.values() if len(v) >= 20]
    return min(means) if means else float("nan")


def run(dataset: str = "wordnet-minilm-384", *, n_base: int | None = None, n_queries: int = 1000,
        cycles: int = 10, fraction: float = 0.1, chunks: int = 10, k: int = 10, L: int = 64, R: int = 32,
        L_build: int = 64, alpha: float = 1.2, consolidate_threshold: float = 0.1, M: int = 16,
        ef_construction: int = 200, threads: int | None = None, libs: tuple[str, ...] = ("simdex", "hnswlib"),
        seed: int = 0, log: Callable[..., Any] = print) -> dict:
    """Run the benchmark; returns the report (see :func:`save`). ``L`` is simdex's beam and hnswlib's ef."""
    for lib in libs:
        if lib not in ADAPTERS:
            raise ValueError(f"unknown library {lib!r}; choose from {sorted(ADAPTERS)}")
    ds = datasets.load(dataset)
    base = np.ascontiguousarray(ds.base[:n_base] if n_base else ds.base, np.float32)
    queries = np.ascontiguousarray(ds.queries[:n_queries], np.float32)
    ds = datasets.Dataset(ds.name, ds.metric, base, queries, np.zeros((queries.shape[0], 1), np.int64))
    log(f"{dataset}: {base.shape[0]} base, {queries.shape[0]} queries; exact top-{GT_DEPTH} ...")
    top = exact_top(base, queries, ds.metric)
    p = {"k": k, "L": L, "R": R, "L_build": L_build, "alpha": alpha, "consolidate_threshold": consolidate_threshold,
         "M": M, "ef_construction": ef_construction, "threads": threads, "cycles": cycles, "fraction": fraction,
         "chunks": chunks, "seed": seed}
    # the search thread is a Python loop of one-query calls that holds the GIL between them; with the default
    # 5 ms switch interval every Python step of an update call can wait that long for it
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        results = [_run_one(lib, ds, top, p, log) for lib in libs]
    finally:
        sys.setswitchinterval(previous)
    return {"dataset": dataset, "n_base": int(base.shape[0]), "n_queries": int(queries.shape[0]), "k": k,
            "cycles": cycles, "fraction": fraction, "chunks": chunks, "switch_interval_s": SWITCH_INTERVAL,
            "machine": _machine(), "results": results}


def format_report(report: dict) -> str:
    lines = [f"streaming on {report['dataset']} (n={report['n_base']}, {report['cycles']} cycles of "
             f"{report['fraction']:.0%} deleted and re-inserted, recall@{report['k']})",
             "| library | fixed budget | fresh recall | worst recall (after delete / after cycle / during) | "
             "max drop | insert vec/s | delete vec/s | consolidation s (total) | search p50 / p99 ms | "
             "deleted ids returned |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        budget = f"L={r['params']['L']}" if "L" in r["params"] else f"ef={r['params']['ef']}"
        cyc = r["cycles"]
        worst = (min(c["recall_after_delete"] for c in cyc), min(c["recall_after_cycle"] for c in cyc),
                 min(c["recall_during"] for c in cyc))
        lines.append(f"| {r['library']} | {budget} | {r['recall_fresh']:.4f} | {worst[0]:.4f} / {worst[1]:.4f} / "
                     f"{worst[2]:.4f} | {r['max_drop_vs_fresh']:.4f} | {r['insert_per_s']:.0f} | "
                     f"{r['delete_per_s']:.0f} | {r['settle_seconds_total']:.1f} | {r['latency_p50_ms']:.2f} / "
                     f"{r['latency_p99_ms']:.2f} | {r['deleted_ids_returned']} |")
    return "\n".join(lines)


def save(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``streaming-<dataset>.json`` and a PNG of recall per cycle for every library."""
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"streaming-{report['dataset']}.json"
    json_path.write_text(json.dumps(report, indent=1))
    fig, ax = plt.subplots(figsize=(7, 4))
    for r, color in zip(report["results"], ("tab:blue", "tab:orange", "tab:green")):
        x = [c["cycle"] for c in r["cycles"]]
        ax.plot(x, [c["recall_after_cycle"] for c in r["cycles"]], "o-", color=color,
                label=f"{r['library']} after cycle")
        ax.plot(x, [c["recall_after_delete"] for c in r["cycles"]], "s:", color=color,
                label=f"{r['library']} after delete")
        ax.plot(x, [c["recall_during"] for c in r["cycles"]], "^--", color=color, alpha=0.6,
                label=f"{r['library']} during updates")
        ax.axhline(r["recall_fresh"], color=color, lw=0.8, ls="-.")
    ax.set_xlabel("cycle (delete 10%, re-insert)")
    ax.set_ylabel(f"recall@{report['k']} at fixed budget")
    ax.set_title(f"streaming, {report['dataset']} n={report['n_base']} (dash-dot: fresh build)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    png_path = out_dir / f"streaming-{report['dataset']}.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path
