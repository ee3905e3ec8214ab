"""Crash test: a writer process is killed with SIGKILL at random moments, and (optionally) the disk it writes to
fills up and is freed again before the kill; after every kill the database must hold exactly the acknowledged
writes (plus, at most, the one write in flight, whole or not at all), and its search results must equal brute
force over that content.

The writer applies a deterministic random sequence of upserts and deletes (batches of 1-200 records, real WordNet
embeddings) to one collection per index kind: ``graph`` (HNSW), ``graph-lvq8`` and ``graph-int8`` (HNSW
over codes), ``ivf-pq`` and ``ivf-rabitq`` (IVF over PQ / RaBitQ codes), ``vamana`` and ``vamana-disk`` (a
Vamana graph, in memory, and in a file walked on PQ codes), ``spann`` (built once: merges build a new one),
each with background merges and checkpoints forced to happen often, and ``exact`` (flat index), and prints
``ok <n> <collection>``
after write ``n`` returns, or ``fail <n> <collection>`` when it raised :class:`~simdex.errors.StorageError` (a
failed write must never appear). The parent replays the same sequence into a model, kills the writer at a random
moment, reopens the database and compares.

With ``disk_full`` > 0 the database lives on a size-limited tmpfs (needs root) and that fraction of the rounds
fills the disk to within a few KiB while the writer runs, holds it full for a while, frees the space and checks
that writes resume (without reopening) before the kill.

``python -m simdex.bench crash --kills 200 [--disk-full 0.5]`` runs the long version (numbers in
docs/reliability.md); tests/test_crash.py runs a few kills.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


# the collections the writer keeps, one per index kind of the database: name -> (index kind, its parameters)
COLLECTION_KINDS = {
    "graph": ("hnsw", {"M": 8, "ef_construction": 40}),
    # the verification searches with ef 64: the code collections re-rank all 64 candidates from float32
    "graph-lvq8": ("hnsw-lvq8", {"M": 8, "ef_construction": 40, "rerank": 64}),
    "graph-int8": ("hnsw-int8", {"M": 8, "ef_construction": 40, "rerank": 64}),
    # the verification's ef 64 probes 64 lists: all of them at this size (fewer than 1,000 lists up to 250k rows)
    "ivf-pq": ("ivf-pq", {}),
    "ivf-rabitq": ("ivf-rabitq", {}),
    "vamana": ("vamana", {"R": 16, "L_build": 40}),
    "vamana-disk": ("vamana-disk", {"R": 16, "L_build": 40}),
    # built once: each merge builds a new index from every row into a new folder
    "spann": ("spann", {"list_size": 32}),
    "exact": ("flat", {}),
}
COLLECTIONS = tuple(COLLECTION_KINDS)
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
    """The writer: apply round ``seed``'s operations forever, reporting each one's outcome on stdout."""
    from ..errors import StorageError
    from ..store import connect
    pool = np.load(pool_path)
    db = connect(db_path, sync="always", merge_rows=300, checkpoint_bytes=400_000)
    cols = {name: db.get_or_create_collection(name, pool.shape[1], "cosine", index=kind, **params)
            for name, (kind, params) in COLLECTION_KINDS.items()}
    print("ready", flush=True)
    for n, op in enumerate(operations(seed, pool.shape[0]), 1):
        for name in COLLECTIONS:
            try:
                if op.kind == "delete":
                    cols[name].delete(op.ids, missing_ok=True)
                else:
                    cols[name].upsert(op.ids, pool[op.rows], op.metadata)
            except StorageError:
                print(f"fail {n} {name}", flush=True)
                time.sleep(0.01)  # a full disk: try the next write a little later
            else:
                print(f"ok {n} {name}", flush=True)


@dataclass
class CrashStats:
    kills: int = 0
    acknowledged_writes: int = 0
    in_flight_applied: int = 0
    in_flight_absent: int = 0
    full_disk_rounds: int = 0
    failed_writes: int = 0  # writes refused with StorageError (a full disk); each must be absent after recovery
    writes_after_freeing: int = 0  # acknowledged after the space was freed, in the same process
    recovery_seconds: list[float] = field(default_factory=list)
    min_graph_recall: float = 1.0
    min_recall_by_collection: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rec = np.array(self.recovery_seconds or [0.0])
        return {"kills": self.kills, "acknowledged_writes": self.acknowledged_writes,
                "in_flight_write_applied": self.in_flight_applied, "in_flight_write_absent": self.in_flight_absent,
                "full_disk_rounds": self.full_disk_rounds, "failed_writes": self.failed_writes,
                "writes_after_freeing": self.writes_after_freeing,
                "recovery_seconds_median": float(np.median(rec)), "recovery_seconds_max": float(rec.max()),
                "min_graph_recall_at_10": self.min_graph_recall,
                "min_recall_at_10_by_collection": {k: round(v, 3) for k, v in self.min_recall_by_collection.items()},
                "failures": self.failures}


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
        # by distance, not by id: records share vectors (rows are drawn with replacement), and of two records at
        # the same distance either is a right answer (the hits' distances are checked to be true just below)
        kth = true_d[:, k - 1] + 1e-5
        recall = np.mean([sum(h["distance"] <= kth[qi] for h in row) / k for qi, row in enumerate(hits)])
        stats.min_graph_recall = min(stats.min_graph_recall, float(recall))
        stats.min_recall_by_collection[name] = min(stats.min_recall_by_collection.get(name, 1.0), float(recall))
        for qi, hit_row in enumerate(hits):
            wrong = [h["id"] for h in hit_row
                     if abs(h["distance"] - (1.0 - float(pool[found[h["id"]][0]] @ queries[qi]))) > 1e-4]
            if wrong:
                stats.failures.append(f"{label}/{name}: hit {wrong[0]} has a wrong distance")
                break
        if recall < 0.9:
            stats.failures.append(f"{label}/{name}: recall@10 {recall:.3f} against brute force")
    return found


class _Writer:
    """The writer process of one round, and the outcomes it has reported: collection -> {op number: ok}."""

    def __init__(self, db_path: Path, pool_path: Path, seed: int, stderr_path: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(stderr_path, "wb") as err:  # a file, not a pipe: a writer that logs a lot must never block
            self.proc = subprocess.Popen([sys.executable, "-m", "simdex.bench.crash", str(db_path), str(pool_path),
                                          str(seed)], stdout=subprocess.PIPE, stderr=err, env=env)
        self.stderr_path = stderr_path
        self.ready = False
        self.outcomes: dict[str, dict[int, bool]] = {name: {} for name in COLLECTIONS}
        self.acknowledged = 0
        self._buffer = b""

    def _parse(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            parts = line.decode(errors="replace").split()
            if parts == ["ready"]:
                self.ready = True
            elif len(parts) == 3 and parts[0] in ("ok", "fail") and parts[2] in self.outcomes:
                self.outcomes[parts[2]][int(parts[1])] = parts[0] == "ok"
                self.acknowledged += parts[0] == "ok"

    def pump(self, seconds: float, until=None) -> bool:
        """Read its reports for ``seconds`` (or until ``until()`` holds); False if it died."""
        deadline = time.monotonic() + seconds
        while until is None or not until():
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not readable:
                break
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return False
            self._parse(chunk)
        return True

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        out, _ = self.proc.communicate()
        self._parse(out + b"\n")  # reports still in the pipe were printed before the kill: they count

    def errors(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-2000:]


def _fill_disk(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` to within ``leave`` bytes (the writer keeps writing meanwhile)."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                room = shutil.disk_usage(folder).free - leave
                if room <= 0:
                    break
                f.write(chunk[:min(len(chunk), room)])
        except OSError:
            pass  # full already
    return filler


def run(workdir: str | os.PathLike, pool: np.ndarray, queries: np.ndarray, kills: int, seed: int = 0,
        max_wait: float = 4.0, progress: bool = True, disk_full: float = 0.0, fs_size: int = 160 << 20
        ) -> CrashStats:
    """Kill a writer ``kills`` times; verify after each. ``pool``: (n, dim) unit vectors used as record vectors.
    With ``disk_full`` > 0, the database is on a tmpfs of ``fs_size`` bytes (needs root), and that fraction of
    the rounds fills it up while the writer runs (the kill lands while it is full or after it was freed)."""
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
    disk = None
    if disk_full > 0:
        if os.geteuid() != 0:
            raise PermissionError("the full-disk rounds mount a size-limited tmpfs, which needs root")
        disk = workdir / "disk"
        disk.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={fs_size}", "tmpfs", str(disk)], check=True,
                       capture_output=True)
    db_path = (disk or workdir) / "db"
    rng = np.random.default_rng(seed)
    stats = CrashStats()
    models: dict[str, dict[str, tuple[int, dict]]] = {name: {} for name in COLLECTIONS}
    bar = progress_bar(kills, "crash test", progress, unit="kill")
    try:
        for round_ in range(kills):
            round_seed = seed * 100_000 + round_ + 1
            writer = _Writer(db_path, pool_path, round_seed, workdir / "writer.err")
            label = f"kill {round_ + 1}"
            if not writer.pump(120.0, until=lambda: writer.ready):
                writer.kill()
                stats.failures.append(f"round {round_}: writer never became ready: {writer.errors()}")
                break
            filler = None
            if disk is not None and rng.random() < disk_full:
                stats.full_disk_rounds += 1
                writer.pump(rng.uniform(0.0, max_wait / 2))
                filler = _fill_disk(disk, int(rng.integers(0, 256 << 10)))
                writer.pump(rng.uniform(0.3, 1.5))
                if rng.random() < 0.5:  # free the space before the kill: writes must resume in the same process
                    filler.unlink()
                    filler = None
                    before = writer.acknowledged
                    if not writer.pump(15.0, until=lambda: writer.acknowledged > before):
                        stats.failures.append(f"{label}: the writer died after the disk filled: {writer.errors()}")
                    elif writer.acknowledged == before:
                        stats.failures.append(f"{label}: no write succeeded within 15 s after space was freed")
                    writer.pump(rng.uniform(0.0, max_wait / 2))
                    stats.writes_after_freeing += writer.acknowledged - before
            else:
                writer.pump(rng.uniform(0.0, max_wait))
            writer.kill()
            if filler is not None:
                filler.unlink()  # killed while the disk was full: the operator frees space, then it reopens
            stats.kills += 1
            t0 = time.perf_counter()
            with connect(db_path, background=False) as db:
                stats.recovery_seconds.append(time.perf_counter() - t0)
                for name in COLLECTIONS:
                    # each collection's outcomes are its own: a write may fail on one and succeed on the other
                    outcomes = writer.outcomes[name]
                    ops = operations(round_seed, pool.shape[0])
                    for n in range(1, max(outcomes, default=0) + 1):
                        op = next(ops)
                        if outcomes.get(n):
                            apply(models[name], op)
                    stats.acknowledged_writes += sum(outcomes.values())
                    stats.failed_writes += sum(not ok for ok in outcomes.values())
                    after = dict(models[name])
                    apply(after, next(ops))
                    held = verify(db.get_collection(name), models[name], after, pool, queries, stats, label)
                    if held is after and after != models[name]:
                        stats.in_flight_applied += 1
                    else:
                        stats.in_flight_absent += 1
                    models[name] = held
            bar.update(1)
            if stats.failures:
                break
    finally:
        bar.close()
        if stats.failures and db_path.exists():  # the database as the failing check found it, to look into
            shutil.copytree(db_path, workdir / "failed-db", dirs_exist_ok=True)
        if disk is not None:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return stats


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
