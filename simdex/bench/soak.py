"""``python -m simdex.bench soak``: a bounded load test of the server on loopback (issue 26, part 4).

A ``simdex serve`` process (its own interpreter, ``sync="always"``) holds one collection of ``n`` WordNet
records (HNSW). ``clients`` threads, each with its own :class:`~simdex.Client`, send requests back to back for
``minutes`` minutes: 70% searches (k = 10), 10% upserts (10 records: replacements of existing ids), 10% gets
(5 ids), 10% deletes (1-5 ids, upserted again at once so that the working set stays). Recorded: every request's
latency and outcome (any exception is a failed request), and the server's resident memory every 5 seconds.

Reported: failed requests (target 0), p50/p99 per minute (target: the last minute's p99 within 1.5x of the
first's), and the server's resident memory growth from the end of the first minute (warm-up) to the end
(target < 10%).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from .._proc import proc_status
from ._common import save_json

QUERY_ROW = 107_659


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_loop(url: str, seed: int, ids: list[str], pool: np.ndarray, queries: np.ndarray, stop: threading.Event,
                 out: list[tuple[float, float, str, bool]], errors: list[str]) -> None:
    from ..server.client import Client
    rng = np.random.default_rng(seed)
    col = Client(url, timeout=120).get_collection("soak")
    while not stop.is_set():
        r = rng.random()
        t = time.perf_counter()
        kind = "search" if r < 0.7 else "upsert" if r < 0.8 else "get" if r < 0.9 else "delete"
        ok = True
        try:
            if kind == "search":
                col.search(queries[rng.integers(0, queries.shape[0])], k=10)
            elif kind == "upsert":
                pick = rng.choice(len(ids), 10, replace=False)
                col.upsert([ids[i] for i in pick], pool[rng.integers(0, pool.shape[0], 10)])
            elif kind == "get":
                col.get([ids[i] for i in rng.choice(len(ids), 5, replace=False)])
            else:
                pick = rng.choice(len(ids), int(rng.integers(1, 6)), replace=False)
                chosen = [ids[i] for i in pick]
                col.delete(chosen, missing_ok=True)
                col.upsert(chosen, pool[rng.integers(0, pool.shape[0], len(chosen))])
        except Exception as exc:  # a failed request, whatever the cause: counted, and the load goes on
            ok = False
            errors.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
        out.append((time.time(), time.perf_counter() - t, kind, ok))


def run(n: int = 20_000, clients: int = 16, minutes: float = 10.0) -> dict[str, Any]:
    import simdex
    vec = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")
    pool = np.asarray(vec[:QUERY_ROW], np.float32)
    queries = np.asarray(vec[QUERY_ROW:QUERY_ROW + 1000], np.float32)
    ids = [f"s{i}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="simdex-soak-") as tmp:
        path = Path(tmp) / "db"
        with simdex.connect(path) as db:
            col = db.create_collection("soak", 384, M=16, ef_construction=100)
            for s in range(0, n, 2000):
                col.upsert(ids[s:s + 2000], pool[s:min(n, s + 2000)])
            db.optimize(wait_idle=True)
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "simdex", "serve", "--path", str(path), "--port", str(port),
                                   "--log-level", "error"], env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            client = simdex.Client(url)
            for _ in range(600):
                try:
                    client.health()
                    break
                except Exception:
                    time.sleep(0.5)
            stop = threading.Event()
            records: list[list[tuple[float, float, str, bool]]] = [[] for _ in range(clients)]
            errors: list[str] = []
            threads = [threading.Thread(target=_client_loop, args=(url, i, ids, pool, queries, stop, records[i],
                                                                   errors)) for i in range(clients)]
            start = time.time()
            for th in threads:
                th.start()
            rss: list[tuple[float, int]] = []
            while time.time() - start < minutes * 60:
                rss.append((time.time() - start, proc_status("VmRSS", server.pid)))
                time.sleep(5.0)
            stop.set()
            for th in threads:
                th.join()
            rss.append((time.time() - start, proc_status("VmRSS", server.pid)))
        finally:
            server.terminate()
            server.wait(timeout=60)
    rows = np.array([(ts - start, lat) for part in records for ts, lat, _, _ in part])
    failed = sum(not ok for part in records for *_, ok in part)
    per_minute = []
    for m in range(int(np.ceil(minutes))):
        sel = rows[(rows[:, 0] >= 60 * m) & (rows[:, 0] < 60 * (m + 1)), 1] * 1e3
        if sel.size:
            per_minute.append({"minute": m + 1, "requests": int(sel.size), "p50_ms": float(np.percentile(sel, 50)),
                               "p99_ms": float(np.percentile(sel, 99))})
    warm = next((r for t, r in rss if t >= 60), rss[0][1])
    by_kind = {}
    for part in records:
        for _, lat, kind, _ in part:
            by_kind.setdefault(kind, []).append(lat * 1e3)
    return {"n": n, "clients": clients, "minutes": minutes, "requests": int(rows.shape[0]), "failed": failed,
            "errors": errors[:20],
            "per_minute": per_minute, "p99_ratio_last_first": per_minute[-1]["p99_ms"] / per_minute[0]["p99_ms"],
            "rss": rss, "rss_after_warmup": warm, "rss_end": rss[-1][1], "rss_growth": rss[-1][1] / warm - 1,
            "by_kind": {k: {"count": len(v), "p50_ms": float(np.percentile(v, 50)),
                            "p99_ms": float(np.percentile(v, 99))} for k, v in sorted(by_kind.items())}}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"soak: {report['clients']} clients, {report['minutes']:g} min, {report['requests']:,} requests, "
             f"{report['failed']} failed",
             f"{'minute':>6} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8}"]
    lines += [f"{m['minute']:6d} {m['requests']:9,} {m['p50_ms']:8.1f} {m['p99_ms']:8.1f}"
              for m in report["per_minute"]]
    lines += [f"failed: {e}" for e in report["errors"][:5]]
    lines += [f"{k:>7}: {v['count']:,} requests, p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms"
              for k, v in report["by_kind"].items()]
    lines.append(f"p99 last minute / first: {report['p99_ratio_last_first']:.2f}x (target <= 1.5x); server RSS "
                 f"{report['rss_after_warmup'] / 2**20:.0f} MiB after warm-up, {report['rss_end'] / 2**20:.0f} MiB "
                 f"at the end: {100 * report['rss_growth']:+.1f}% (target < 10%)")
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> Path:
    return save_json(report, out, "soak.json")
