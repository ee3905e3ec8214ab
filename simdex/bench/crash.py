"""Crash test: a writer process is killed with SIGKILL at random moments; after every kill the database must hold
exactly the acknowledged writes (plus, at most, the one write in flight, whole or not at all), and its search
results must equal brute force over that content.

The writer applies a deterministic random sequence of upserts and deletes (batches of 1-200 records, real WordNet
embeddings) to two collections, ``graph`` (HNSW, with background merges and checkpoints forced to happen often)
and ``exact`` (flat index), and prints ``ack <n>`` after write ``n`` returns. The parent replays the same sequence
into a model, kills the writer at a random moment, reopens the database and compares.

``python -m simdex.bench crash --kills 200`` runs the long version (numbers in docs/reliability.md);
tests/test_crash.py runs a few kills.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

COLLECTIONS = ("graph", "exact")
POOL_IDS = 3_000


@dataclass
class Op:
    kind: str  # "upsert" or "delete"
    ids: list[str]
    rows: np.ndarray | None = None  # rows of the vector pool, for upserts
    metadata: list[dict[str, Any]] | None = None


def operations(seed: int, n_vectors: int):
    """The endless, deterministic write sequence of round ``seed``."""
    rng = np.random.default_rng(seed)
    n = 0
    while True:
        n += 1
        size = int(rng.integers(1, 201))
        ids = [f"r{i}" for i in rng.choice(POOL_IDS, size, replace=False)]
        if rng.random() < 0.3:
            yield Op("delete", ids)
        else:
            rows = rng.integers(0, n_vectors, size)
            yield Op("upsert", ids, rows, [{"round": seed, "op": n, "row": int(r)} for r in rows])


def apply(model: dict[str, tuple[int, dict]], op: Op) -> None:
    if op.kind == "delete":
        for i in op.ids:
            model.pop(i, None)
    else:
        for i, r, m in zip(op.ids, op.rows.tolist(), op.metadata):
            model[i] = (r, m)


def child(db_path: str, pool_path: str, seed: int) -> None:
    """The writer: apply round ``seed``'s operations forever, acknowledging each on stdout."""
    from ..store import connect
    pool = np.load(pool_path)
    db = connect(db_path, sync="always", merge_rows=300, checkpoint_bytes=400_000)
    cols = {name: db.get_or_create_collection(name, pool.shape[1], "cosine", index=kind, **params)
            for name, kind, params in (("graph", "hnsw", {"M": 8, "ef_construction": 40}), ("exact", "flat", {}))}
    print("ready", flush=True)
    for n, op in enumerate(operations(seed, pool.shape[0]), 1):
        for name in COLLECTIONS:
            if op.kind == "delete":
                cols[name].delete(op.ids, missing_ok=True)
            else:
                cols[name].upsert(op.ids, pool[op.rows], op.metadata)
        print(f"ack {n}", flush=True)


@dataclass
class CrashStats:
    kills: int = 0
    acknowledged_writes: int = 0
    in_flight_applied: int = 0
    in_flight_absent: int = 0
    recovery_seconds: list[float] = field(default_factory=list)
    min_graph_recall: float = 1.0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rec = np.array(self.recovery_seconds or [0.0])
        return {"kills": self.kills, "acknowledged_writes": self.acknowledged_writes,
                "in_flight_write_applied": self.in_flight_applied, "in_flight_write_absent": self.in_flight_absent,
                "recovery_seconds_median": float(np.median(rec)), "recovery_seconds_max": float(rec.max()),
                "min_graph_recall_at_10": self.min_graph_recall, "failures": self.failures}


def _state(collection) -> dict[str, tuple[list[float], dict]]:
    records = collection.get(include=["metadatas", "embeddings"])
    return {r["id"]: (r["embedding"], r["metadata"]) for r in records}


def _matches(state: dict, model: dict, pool: np.ndarray) -> bool:
    if state.keys() != model.keys():
        return False
    for i, (row, meta) in model.items():
        vector, stored_meta = state[i]
        if stored_meta != meta or not np.allclose(vector, pool[row], atol=1e-6):
            return False
    return True


def verify(col, model_before: dict, model_after: dict, pool: np.ndarray, queries: np.ndarray,
           stats: CrashStats, label: str) -> dict:
    """Check one collection against the model; returns the model it turned out to hold."""
    name = col.name
    state = _state(col)
    if _matches(state, model_after, pool):
        found = model_after
    elif _matches(state, model_before, pool):
        found = model_before
    else:
        missing = len(model_before.keys() - state.keys())
        stats.failures.append(f"{label}/{name}: content matches neither the acknowledged writes nor them plus "
                              f"the write in flight ({len(state)} records, {missing} acknowledged ids missing)")
        return model_before
    if not found:
        return found
    ids = sorted(found)
    base = pool[[found[i][0] for i in ids]]
    k = min(10, len(ids))
    sims = queries @ base.T
    truth = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    true_d = 1.0 - np.take_along_axis(sims, truth, 1)
    hits = col.search_batch(queries, k=k, include=["distances"], ef=64)
    got_d = np.array([[h["distance"] for h in row] for row in hits])
    if name == "exact":
        if got_d.shape != true_d.shape or not np.allclose(got_d, true_d, atol=1e-4):
            stats.failures.append(f"{label}/{name}: search differs from brute force over the content")
    else:
        found_ids = [{h["id"] for h in row} for row in hits]
        recall = np.mean([len(f & {ids[j] for j in t}) / k for f, t in zip(found_ids, truth)])
        stats.min_graph_recall = min(stats.min_graph_recall, float(recall))
        for qi, hit_row in enumerate(hits):
            wrong = [h["id"] for h in hit_row
                     if abs(h["distance"] - (1.0 - float(pool[found[h["id"]][0]] @ queries[qi]))) > 1e-4]
            if wrong:
                stats.failures.append(f"{label}/{name}: hit {wrong[0]} has a wrong distance")
                break
        if recall < 0.9:
            stats.failures.append(f"{label}/{name}: recall@10 {recall:.3f} against brute force")
    return found


def run(workdir: str | os.PathLike, pool: np.ndarray, queries: np.ndarray, kills: int, seed: int = 0,
        max_wait: float = 4.0, progress: bool = True) -> CrashStats:
    """Kill a writer ``kills`` times; verify after each. ``pool``: (n, dim) unit vectors used as record vectors."""
    from .._progress import progress_bar
    from ..store import connect
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pool = np.asarray(pool, np.float64)
    pool = np.ascontiguousarray(pool / np.linalg.norm(pool, axis=1, keepdims=True), np.float32)
    queries = np.asarray(queries, np.float64)
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), np.float32)
    pool_path = workdir / "pool.npy"
    np.save(pool_path, pool)
    db_path = workdir / "db"
    rng = np.random.default_rng(seed)
    stats = CrashStats()
    models: dict[str, dict[str, tuple[int, dict]]] = {name: {} for name in COLLECTIONS}
    bar = progress_bar(kills, "crash test", progress, unit="kill")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for round_ in range(kills):
        round_seed = seed * 100_000 + round_ + 1
        proc = subprocess.Popen([sys.executable, "-m", "simdex.bench.crash", str(db_path), str(pool_path),
                                 str(round_seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        acked = 0
        ready = False
        deadline = None
        buffer = b""
        while True:
            timeout = 120.0 if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([proc.stdout], [], [], timeout)
            if not readable:
                break  # the kill moment
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break  # the writer died by itself
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line == b"ready":
                    ready = True
                    deadline = time.monotonic() + rng.uniform(0.0, max_wait)
                elif line.startswith(b"ack "):
                    acked = int(line.split()[1])
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        # acks still in the pipe were printed before the kill: they count as acknowledged
        for line in buffer.split(b"\n"):
            if line.startswith(b"ack "):
                acked = max(acked, int(line.split()[1]))
        if not ready:
            stats.failures.append(f"round {round_}: writer never became ready: {err.decode()[-2000:]}")
            break
        stats.kills += 1
        stats.acknowledged_writes += acked
        t0 = time.perf_counter()
        with connect(db_path, background=False) as db:
            stats.recovery_seconds.append(time.perf_counter() - t0)
            for name in COLLECTIONS:
                # the collections are written one after the other, so each may or may not hold the write in flight
                ops = operations(round_seed, pool.shape[0])
                for _ in range(acked):
                    apply(models[name], next(ops))
                after = dict(models[name])
                apply(after, next(ops))
                held = verify(db.get_collection(name), models[name], after, pool, queries, stats,
                              f"kill {round_ + 1}")
                if held is after and after != models[name]:
                    stats.in_flight_applied += 1
                else:
                    stats.in_flight_absent += 1
                models[name] = held
        bar.update(1)
        if stats.failures:
            break
    bar.close()
    return stats


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
