"""``python -m simdex.bench churn``: months of add/delete churn on one collection (issue 26, part 3).

A working set of ``working`` record ids (default 20,000) takes ``ops`` operations (default 500,000) in batches of
``batch``: each operation picks a random id of the working set and deletes it (if it exists, with probability
0.3) or upserts it with a fresh WordNet vector (a replacement or a re-insertion). The background optimizer merges
and consolidates as it would in production (checkpoints included). Every ``every`` operations the run records the
collection's size on disk, the process's resident memory and recall@10 of 200 held-out queries at ef 64 against
brute force over the records live at that moment.

At the end a **fresh** collection is built from exactly the records the churned one holds, in another process
(so that resident memory compares like with like), and the churned collection's figures are set against it:
the targets are on-disk size and resident memory <= 1.2x the fresh collection's and recall@10 within 0.01.
Each side runs in its own child process; the parent only coordinates and reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from .._proc import proc_status
from ._common import save_json

QUERY_ROW = 107_659
EF = 64




def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _vectors() -> tuple[np.ndarray, np.ndarray]:
    vec = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")
    return np.asarray(vec[:QUERY_ROW], np.float32), np.asarray(vec[QUERY_ROW:QUERY_ROW + 200], np.float32)


def _recall(col: Any, live: dict[str, int], pool: np.ndarray, queries: np.ndarray) -> float:
    ids = list(live)
    x = pool[[live[i] for i in ids]]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    hits = col.search_batch(queries, k=10, ef=EF, include=[])
    return float(np.mean([len({h["id"] for h in row} & {ids[j] for j in t}) / 10 for row, t in zip(hits, truth)]))


def _settle(db: Any, col: Any) -> None:
    """Let the background work finish (merges, consolidation), checkpoint, and compact the log as the background
    thread does after COMPACT_IDLE_SECONDS without writes: the state a quiet server reaches."""
    db.optimize(wait_idle=True)
    db.checkpoint()
    col.compact_log()


def churn_child(path: str, working: int, ops: int, batch: int, every: int, out: str) -> None:
    import simdex
    pool, queries = _vectors()
    rng = np.random.default_rng(0)
    curve = []
    with simdex.connect(path, sync="batch") as db:
        col = db.create_collection("churn", 384, M=16, ef_construction=100)
        live: dict[str, int] = {}
        ids = [f"w{i}" for i in range(working)]
        rows = rng.integers(0, pool.shape[0], working)
        for s in range(0, working, 1000):
            col.upsert(ids[s:s + 1000], pool[rows[s:s + 1000]])
        live.update(zip(ids, rows.tolist()))
        _settle(db, col)
        t0 = time.perf_counter()
        done = 0
        while done < ops:
            picked = np.unique(rng.integers(0, working, batch))
            gone = [ids[i] for i in picked if ids[i] in live and rng.random() < 0.3]
            gone_set = set(gone)
            new = [i for i in picked if ids[i] not in gone_set]
            if gone:
                col.delete(gone)
                for i in gone:
                    del live[i]
            if new:
                new_rows = rng.integers(0, pool.shape[0], len(new))
                col.upsert([ids[i] for i in new], pool[new_rows])
                live.update(zip((ids[i] for i in new), new_rows.tolist()))
            done += len(picked)
            if done // every != (done - len(picked)) // every or done >= ops:
                point = {"ops": done, "seconds": time.perf_counter() - t0, "live": len(live),
                         "disk_bytes": _disk(Path(path)), "rss_bytes": proc_status("VmRSS"),
                         "recall": _recall(col, live, pool, queries), "stats": {
                             k: col.stats()[k] for k in ("indexed", "unindexed", "deleted_in_index", "log_bytes")}}
                curve.append(point)
                print(json.dumps({k: v for k, v in point.items() if k != "stats"}), flush=True)
        _settle(db, col)
        final = {"disk_bytes": _disk(Path(path)), "rss_bytes": proc_status("VmRSS"),
                 "recall": _recall(col, live, pool, queries), "ops_per_second": done / (time.perf_counter() - t0)}
    np.save(Path(out) / "live_rows.npy", np.array([live[i] for i in sorted(live)], np.int64))
    (Path(out) / "live_ids.json").write_text(json.dumps(sorted(live)))
    (Path(out) / "churn.json").write_text(json.dumps({"curve": curve, "final": final}))


def fresh_child(path: str, out: str) -> None:
    import simdex
    pool, queries = _vectors()
    ids = json.loads((Path(out) / "live_ids.json").read_text())
    rows = np.load(Path(out) / "live_rows.npy")
    with simdex.connect(path, sync="batch") as db:
        col = db.create_collection("churn", 384, M=16, ef_construction=100)
        for s in range(0, len(ids), 1000):
            col.upsert(ids[s:s + 1000], pool[rows[s:s + 1000]])
        _settle(db, col)
        live = dict(zip(ids, rows.tolist()))
        fresh = {"disk_bytes": _disk(Path(path)), "rss_bytes": proc_status("VmRSS"),
                 "recall": _recall(col, live, pool, queries)}
    (Path(out) / "fresh.json").write_text(json.dumps(fresh))


def run(working: int = 20_000, ops: int = 500_000, batch: int = 500, every: int = 50_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="simdex-churn-") as tmp:
        tmp_path = Path(tmp)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        code = ("from simdex.bench.churn import churn_child; "
                f"churn_child({str(tmp_path / 'churned')!r}, {working}, {ops}, {batch}, {every}, {tmp!r})")
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        code = f"from simdex.bench.churn import fresh_child; fresh_child({str(tmp_path / 'fresh')!r}, {tmp!r})"
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        churned = json.loads((tmp_path / "churn.json").read_text())
        fresh = json.loads((tmp_path / "fresh.json").read_text())
    final = churned["final"]
    return {"working": working, "ops": ops, "batch": batch, "ef": EF, "curve": churned["curve"], "final": final,
            "fresh": fresh, "disk_ratio": final["disk_bytes"] / fresh["disk_bytes"],
            "rss_ratio": final["rss_bytes"] / fresh["rss_bytes"], "recall_gap": fresh["recall"] - final["recall"]}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"churn: {report['ops']:,} upserts/deletes over {report['working']:,} ids (batches of {report['batch']})",
             f"{'ops':>9} {'live':>7} {'disk MiB':>9} {'RSS MiB':>8} {'recall@10':>9}"]
    for p in report["curve"]:
        lines.append(f"{p['ops']:9,} {p['live']:7,} {p['disk_bytes'] / 2**20:9.1f} {p['rss_bytes'] / 2**20:8.1f} "
                     f"{p['recall']:9.3f}")
    f, c = report["fresh"], report["final"]
    lines.append(f"settled after churn: disk {c['disk_bytes'] / 2**20:.1f} MiB, RSS {c['rss_bytes'] / 2**20:.1f} MiB, "
                 f"recall {c['recall']:.3f}; {c['ops_per_second']:,.0f} ops/s")
    lines.append(f"fresh collection of the same records: disk {f['disk_bytes'] / 2**20:.1f} MiB, RSS "
                 f"{f['rss_bytes'] / 2**20:.1f} MiB, recall {f['recall']:.3f}")
    lines.append(f"churned / fresh: disk {report['disk_ratio']:.2f}x, RSS {report['rss_ratio']:.2f}x, recall gap "
                 f"{report['recall_gap']:+.3f} (targets <= 1.2x, <= 1.2x, <= 0.01)")
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> Path:
    return save_json(report, out, "churn.json")
