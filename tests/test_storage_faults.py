"""Storage faults: a full disk, I/O errors and failed fsyncs at every write point of the database (issue 18).

Each case makes one write point fail while a collection is written: the log append, the log fsync, the SQLite
insert and commit, the checkpoint's array files and metadata copy, the manifest switch, and the log cut after a
checkpoint. Then, for every case:

- the failing call raises ``StorageError`` naming the file and the cause (a checkpoint's failure is raised by
  ``checkpoint()``; the log cut's is only logged, because the checkpoint stands);
- reads go on while the fault lasts, and give brute force over the acknowledged writes;
- a copy of the folder taken while the fault lasts (what a crash at that moment leaves) opens without repair and
  holds exactly the acknowledged writes;
- once the fault is gone, writes succeed again without reopening, and after close and reopen (without repair)
  the content equals the acknowledged writes, the failed write is absent, searches equal brute force, and a new
  write succeeds.

Faults are injected at the operating-system calls (``os.write`` returning a short count and then ENOSPC, as a
nearly full disk does; ``os.fsync`` failing after the pages written since the file's last good fsync were lost;
``os.replace``; ``os.unlink``) for the files of one write point, or in SQLite's calls. ``test_real_full_disk``
fills a real size-limited tmpfs (when the tests run as root).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import simdex
from simdex.errors import StorageError
from simdex.store.metadata import MetadataStore

from .conftest import numpy_knn

BATCH = 40
DIM = 384


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class FaultInjector:
    """Wraps ``os.write``, ``os.fsync``, ``os.replace`` and ``os.unlink`` so that, while armed, the chosen call on
    files whose path matches a pattern fails with an errno, as a full or failing disk makes it fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rule: tuple[str, re.Pattern, int] | None = None
        self.hits = 0
        self.synced: dict[str, int] = {}  # path -> its size at its last successful fsync
        self._short_written = False
        self._real = {name: getattr(os, name) for name in ("write", "fsync", "replace", "unlink")}
        for name in self._real:
            monkeypatch.setattr(os, name, getattr(self, f"_{name}"))

    def arm(self, call: str, pattern: str, err: int = errno.ENOSPC) -> None:
        self.rule, self.hits, self._short_written = (call, re.compile(pattern), err), 0, False

    def disarm(self) -> None:
        self.rule = None

    def _hit(self, call: str, path: str) -> bool:
        return self.rule is not None and self.rule[0] == call and self.rule[1].search(path) is not None

    def _fail(self, path: str) -> None:
        self.hits += 1
        err = self.rule[2]
        raise OSError(err, os.strerror(err), path)

    def _write(self, fd: int, data) -> int:
        path = _fd_path(fd)
        if self._hit("write", path):
            if not self._short_written and len(data) > 1:  # a nearly full disk takes part of it, then refuses
                self._short_written = True
                return self._real["write"](fd, memoryview(data)[:len(data) // 2])
            self._fail(path)
        return self._real["write"](fd, data)

    def _fsync(self, fd: int) -> None:
        path = _fd_path(fd)
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if self._hit("fsync", path):
            if regular:  # the kernel dropped the dirty pages: what was written since the last good fsync is gone
                size, good = os.fstat(fd).st_size, self.synced.get(path, 0)
                if size > good:
                    zero_fd = os.open(path, os.O_WRONLY)  # pwrite on an O_APPEND descriptor would append
                    try:
                        os.pwrite(zero_fd, b"\0" * (size - good), good)
                    finally:
                        os.close(zero_fd)
            self._fail(path)
        self._real["fsync"](fd)
        if regular:
            self.synced[path] = os.fstat(fd).st_size

    def _replace(self, src, dst, **kwargs) -> None:
        if self._hit("replace", str(dst)):
            self._fail(str(dst))
        self._real["replace"](src, dst, **kwargs)

    def _unlink(self, path, **kwargs) -> None:
        if self._hit("unlink", str(path)):
            self._fail(str(path))
        self._real["unlink"](path, **kwargs)


@pytest.fixture()
def faults(monkeypatch) -> FaultInjector:
    return FaultInjector(monkeypatch)


@pytest.fixture(scope="module")
def data(wordnet_small):
    vectors = np.ascontiguousarray(wordnet_small.base[:1_000], np.float32)
    return vectors, np.ascontiguousarray(wordnet_small.queries[:20], np.float32)


class Model:
    """The acknowledged writes: id -> (row of the vector pool, metadata)."""

    def __init__(self, pool: np.ndarray) -> None:
        self.pool = pool
        self.records: dict[str, tuple[int, dict]] = {}

    def upsert(self, col, batch: int, apply: bool = True) -> None:
        rows = [(batch * 7 + j) % self.pool.shape[0] for j in range(BATCH)]
        ids = [f"r{(batch * 13 + j) % 300}" for j in range(BATCH)]  # batches overlap: upserts replace
        metas = [{"batch": batch, "row": r} for r in rows]
        col.upsert(ids, self.pool[rows], metas)
        if apply:
            self.records.update({i: (r, m) for i, r, m in zip(ids, rows, metas)})

    def delete(self, col, batch: int) -> None:
        ids = sorted(self.records)[batch % 5::5][:BATCH]
        col.delete(ids)
        for i in ids:
            del self.records[i]

    def snapshot(self) -> Model:
        copy = Model(self.pool)
        copy.records = dict(self.records)
        return copy

    def check(self, col, queries: np.ndarray) -> None:
        """Content equals the acknowledged writes; search equals brute force over them."""
        got = {r["id"]: r for r in col.get(include=["metadatas", "embeddings"])}
        assert got.keys() == self.records.keys()
        for i, (row, meta) in self.records.items():
            assert got[i]["metadata"] == meta
            np.testing.assert_allclose(got[i]["embedding"], self.pool[row] / np.linalg.norm(self.pool[row]),
                                       atol=1e-6)
        ids = sorted(self.records)
        true_d, _ = numpy_knn(self.pool[[self.records[i][0] for i in ids]], queries, 10, "cosine")
        # at most 300 records and ef 300: the graph search is exhaustive, so its distances are brute force's
        hits = col.search_batch(queries, k=10, ef=300, include=["distances"])
        np.testing.assert_allclose([[h["distance"] for h in row] for row in hits], true_d, atol=1e-4)


def _open(path: Path, **options):
    return simdex.connect(path, background=False, sync=options.pop("sync", "always"), **options)


def _fill(db, model: Model, batches: range, checkpoint: bool = True):
    col = db.get_or_create_collection("c", dim=DIM, metric="cosine", M=8, ef_construction=64)
    for b in batches:
        model.upsert(col, b)
        if b % 4 == 3:
            model.delete(col, b)
    if checkpoint:
        db.optimize()
        db.checkpoint()
    return col


def _crash_copy(src: Path, dst: Path) -> Path:
    """What a process killed at this moment leaves on disk (the folder as it is, lock and all)."""
    shutil.copytree(src, dst)
    return dst


def _reopen_and_check(path: Path, model: Model, queries: np.ndarray, extra_batch: int) -> None:
    db = _open(path)
    try:
        col = db.get_collection("c")
        assert not any("cut" in n or "damaged" in n for n in col.recovery_notes), col.recovery_notes
        model.check(col, queries)
        model.upsert(col, extra_batch)
        model.check(col, queries)
    finally:
        db.close()


# (write point, how to make it fail, the words its StorageError must carry)
WRITE_POINTS = {
    "log append ENOSPC": (("write", r"/wal/\d+\.log$", errno.ENOSPC), r"write-ahead log .*\.log: the disk is full"),
    "log append EIO": (("write", r"/wal/\d+\.log$", errno.EIO), r"write-ahead log .*\.log: an I/O error"),
    "log fsync EIO": (("fsync", r"/wal/\d+\.log$", errno.EIO), r"fsync the write-ahead log .*\.log: an I/O error"),
    "log fsync ENOSPC": (("fsync", r"/wal/\d+\.log$", errno.ENOSPC), r"fsync the write-ahead log .*: the disk is full"),
    "sqlite insert": ("stage", r"metadata store .*meta\.sqlite: the disk is full"),
    "sqlite commit": ("commit", r"metadata store .*meta\.sqlite: the disk is full"),
}


def _arm_write_point(point, faults: FaultInjector, monkeypatch) -> None:
    if point == "stage":
        real = MetadataStore.stage_upsert, MetadataStore.stage_delete

        def staged_then_full(real_stage):
            def stage(self, *args):
                real_stage(self, *args)  # the rows are in the open transaction when the disk fills
                raise sqlite3.OperationalError("database or disk is full")
            return stage
        monkeypatch.setattr(MetadataStore, "stage_upsert", staged_then_full(real[0]))
        monkeypatch.setattr(MetadataStore, "stage_delete", staged_then_full(real[1]))
    elif point == "commit":
        def commit(self):
            raise sqlite3.OperationalError("database or disk is full")
        monkeypatch.setattr(MetadataStore, "commit", commit)
    else:
        faults.arm(*point)


@pytest.mark.parametrize("op", ["upsert", "delete"])
@pytest.mark.parametrize("case", sorted(WRITE_POINTS))
def test_failed_write_is_absent_and_nothing_acknowledged_is_lost(tmp_path, data, faults, monkeypatch, case, op):
    pool, queries = data
    point, message = WRITE_POINTS[case]
    model = Model(pool)
    db = _open(tmp_path / "db")
    col = _fill(db, model, range(6))
    model.upsert(col, 6)  # one acknowledged write after the checkpoint, in the log only
    with monkeypatch.context() as patch:
        _arm_write_point(point, faults, patch)
        for attempt in range(2):  # the disk stays full: every write fails alike, none of them lands
            with pytest.raises(StorageError, match=message) as failure:
                if op == "upsert":
                    model.upsert(col, 7 + attempt, apply=False)
                else:
                    col.delete(sorted(model.records)[:BATCH])
            assert failure.value.filename and failure.value.errno in (errno.ENOSPC, errno.EIO)
        model.check(col, queries)  # reads go on
        crashed, at_crash = _crash_copy(tmp_path / "db", tmp_path / "crashed"), model.snapshot()
    faults.disarm()
    model.upsert(col, 10)  # writes resume without a reopen
    model.check(col, queries)
    assert col.stats()["storage_error"] is None
    db.close()
    _reopen_and_check(tmp_path / "db", model, queries, 11)
    _reopen_and_check(crashed, at_crash, queries, 12)


# (checkpoint point, how to make it fail, the words its StorageError must carry)
CHECKPOINT_POINTS = {
    "array file": (("fsync", r"\.sdx\.tmp\d+$", errno.EIO), r"checkpoint 2 of .*: an I/O error"),
    "array file ENOSPC": (("fsync", r"growing-2\.sdx\.tmp\d+$", errno.ENOSPC), r"checkpoint 2 of .*: the disk is full"),
    "metadata copy": (("fsync", r"meta-2\.sqlite$", errno.ENOSPC), r"checkpoint 2 of .*: the disk is full"),
    "manifest file": (("fsync", r"MANIFEST\.tmp$", errno.EIO), r"checkpoint 2 of .*: an I/O error"),
    "manifest switch": (("replace", r"/MANIFEST$", errno.ENOSPC), r"checkpoint 2 of .*: the disk is full"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_POINTS))
def test_failed_checkpoint_keeps_the_previous_one(tmp_path, data, faults, case):
    pool, queries = data
    point, message = CHECKPOINT_POINTS[case]
    model = Model(pool)
    db = _open(tmp_path / "db")
    col = _fill(db, model, range(5))  # checkpoint 1
    before = sorted(p.name for p in col.path.iterdir())
    _fill(db, model, range(5, 9), checkpoint=False)
    db.optimize()
    faults.arm(*point)
    with pytest.raises(StorageError, match=message):
        col.checkpoint()
    assert faults.hits >= 1
    model.check(col, queries)
    model.upsert(col, 9)  # the log takes writes meanwhile
    crashed, at_crash = _crash_copy(tmp_path / "db", tmp_path / "crashed"), model.snapshot()
    leftovers = {p.name for p in col.path.iterdir()} - set(before) - {"MANIFEST.prev"}
    assert not {n for n in leftovers if "-2." in n or n.startswith("MANIFEST")}, leftovers  # its files are gone
    faults.disarm()
    assert col.checkpoint()  # the next one succeeds, under a new number
    assert col._manifest["gen"] == 3
    model.check(col, queries)
    db.close()
    _reopen_and_check(tmp_path / "db", model, queries, 10)
    _reopen_and_check(crashed, at_crash, queries, 11)


def test_failed_log_cut_after_checkpoint_is_harmless(tmp_path, data, faults, caplog):
    pool, queries = data
    model = Model(pool)
    db = _open(tmp_path / "db", log_segment_bytes=64 << 10)
    col = _fill(db, model, range(6))
    _fill(db, model, range(6, 12), checkpoint=False)
    logs_before = sorted(p.name for p in (col.path / "wal").glob("*.log"))
    assert len(logs_before) > 3
    faults.arm("unlink", r"/wal/\d+\.log$", errno.EIO)
    with caplog.at_level(logging.WARNING, logger="simdex.store"):
        assert col.checkpoint()  # the checkpoint stands; the old log files stay until the next one
    assert "removing what it replaces failed" in caplog.text and "I/O error" in caplog.text
    assert sorted(p.name for p in (col.path / "wal").glob("*.log")) == logs_before
    assert col._manifest["gen"] == 2
    model.upsert(col, 12)
    crashed, at_crash = _crash_copy(tmp_path / "db", tmp_path / "crashed"), model.snapshot()
    faults.disarm()
    _fill(db, model, range(13, 15), checkpoint=False)
    assert col.checkpoint()
    assert len(list((col.path / "wal").glob("*.log"))) < len(logs_before)
    model.check(col, queries)
    db.close()
    _reopen_and_check(tmp_path / "db", model, queries, 20)
    _reopen_and_check(crashed, at_crash, queries, 21)


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_failed_fsync_in_batch_mode_writes_acknowledged_records_again(tmp_path, data, faults):
    """sync="batch" acknowledges before the fsync. When the flusher's fsync fails, the pages written since the
    last good fsync may be lost (the injector zeroes them): the log is cut back to that point and the acknowledged
    records are written again from memory, not trusted to the retried fsync (the PostgreSQL fsync lesson). Until
    that succeeds, writes are refused and reads go on."""
    pool, queries = data
    model = Model(pool)
    db = _open(tmp_path / "db", sync="batch")
    col = _fill(db, model, range(6))
    col._wal.batch_interval = 0.5  # several acknowledged records wait for one fsync
    time.sleep(0.6)
    faults.arm("fsync", r"/wal/\d+\.log$", errno.EIO)
    for b in range(6, 10):
        model.upsert(col, b)  # acknowledged at once
    _wait_for(lambda: faults.hits >= 1)
    with pytest.raises(StorageError, match=r"write-ahead log .* cannot be restored .*I/O error"):
        model.upsert(col, 10, apply=False)
    assert "I/O error" in col.stats()["storage_error"]
    model.check(col, queries)  # reads go on
    faults.disarm()
    _wait_for(lambda: col.stats()["storage_error"] is None)  # the flusher rewrote them
    model.upsert(col, 11)
    db.close()
    _reopen_and_check(tmp_path / "db", model, queries, 12)


def test_http_answers_507_for_a_full_disk_and_503_for_an_io_error(tmp_path, data, faults):
    from simdex.server.app import create_app

    from ._live import LiveServer
    pool, queries = data
    model = Model(pool)
    db = _open(tmp_path / "db")
    _fill(db, model, range(3))
    with LiveServer(create_app(db)) as live:
        client = simdex.Client(live.url)
        remote = client.get_collection("c")
        for err, status in ((errno.ENOSPC, 507), (errno.EIO, 503)):
            faults.arm("write", r"/wal/\d+\.log$", err)
            with pytest.raises(StorageError) as failure:
                remote.upsert(["new"], pool[:1])
            assert failure.value.disk_full == (status == 507)
            assert ("the disk is full" if status == 507 else "an I/O error") in str(failure.value)
            import http.client
            conn = http.client.HTTPConnection("127.0.0.1", live.port)
            conn.request("POST", "/api/v1/collections/c/upsert", body=json.dumps(
                {"ids": ["new"], "vectors": pool[:1].tolist()}), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == status and body["error"]["type"] == "StorageError"
            assert resp.getheader("Retry-After")
            conn.close()
            assert [h["id"] for h in remote.search(pool[0], k=3)] == \
                [h["id"] for h in db.get_collection("c").search(pool[0], k=3)]  # reads go on
            faults.disarm()
        assert remote.upsert(["new"], pool[:1]) == 1
    db.close()


@pytest.fixture()
def small_disk(tmp_path):
    """A real file system of 12 MiB (tmpfs), so that the disk really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; the injected faults of the other tests in this file "
                    "cover every write point without it")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected faults cover every write "
                    f"point without it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_real_full_disk(small_disk, data):
    """The scenario of issue 18 on a real file system: fill the disk while writing, fail a checkpoint, free space,
    write on without reopening, and reopen without repair."""
    pool, queries = data
    model = Model(pool)
    db = _open(small_disk / "db")
    col = _fill(db, model, range(4))
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (shutil.disk_usage(small_disk).free - (1 << 20)))
    batch, failure = 4, None
    while failure is None:
        try:
            model.upsert(col, batch)  # applied to the model only when acknowledged
        except StorageError as exc:
            failure = exc
        batch += 1
        assert batch < 200, "the disk never filled up"
    assert failure.disk_full and "the disk is full" in str(failure) and str(small_disk) in str(failure)
    model.check(col, queries)  # reads go on
    for _ in range(3):  # the disk stays full: writes keep failing cleanly
        with pytest.raises(StorageError, match="the disk is full"):
            model.upsert(col, batch, apply=False)
    free = shutil.disk_usage(small_disk).free
    with pytest.raises(StorageError, match=r"checkpoint .*the disk is full"):
        db.optimize()
        col.checkpoint()
    assert shutil.disk_usage(small_disk).free >= free - (64 << 10)  # the failed checkpoint left nothing behind
    crashed, at_crash = _crash_copy(small_disk / "db", small_disk.parent / "crashed"), model.snapshot()
    filler.unlink()  # the operator frees space
    model.upsert(col, batch + 1)  # and writes go on, without a reopen
    assert col.checkpoint()
    model.check(col, queries)
    db.close()
    _reopen_and_check(small_disk / "db", model, queries, batch + 2)
    _reopen_and_check(crashed, at_crash, queries, batch + 3)


def test_writes_wait_for_a_checkpoint_when_the_log_outgrows_failing_checkpoints(tmp_path, data, faults):
    """While checkpoints fail, the log grows; past 4 checkpoint intervals a write runs the checkpoint itself
    first, so that the log cannot fill the disk on its own and the checkpoint gets freed space first."""
    pool, queries = data
    model = Model(pool)
    db = _open(tmp_path / "db", checkpoint_bytes=100_000)
    col = _fill(db, model, range(2))
    assert not col.needs_checkpoint()  # right after a checkpoint (the log still holds the interval before it)
    faults.arm("fsync", r"\.sdx\.tmp\d+$", errno.ENOSPC)
    batch = 2
    with pytest.raises(StorageError, match=r"writes wait for a checkpoint: .*the disk is full"):
        while batch < 100:
            model.upsert(col, batch)
            batch += 1
    assert 4 * 100_000 < col._wal.appended_bytes - col._log_mark < 6 * 100_000
    model.check(col, queries)
    faults.disarm()
    gen = col._manifest["gen"]
    model.upsert(col, batch + 1)  # checkpoints first, then writes
    assert col._manifest["gen"] > gen and not col.needs_checkpoint()
    db.close()
    _reopen_and_check(tmp_path / "db", model, queries, batch + 2)


@pytest.mark.parametrize("kind, params", [("hnsw-lvq8", {"M": 8, "ef_construction": 32}), ("ivf-pq", {}),
                                           ("vamana-disk", {"R": 16, "L_build": 32, "codec": "pq8"}),
                                           ("spann", {"list_size": 32})])
def test_code_collection_merge_on_a_full_disk(tmp_path, monkeypatch, kind, params):
    """A collection over codes keeps its float32 vectors (a vamana-disk one also its links) in files: when there is
    no room for them the merge fails with a StorageError naming the cause (not SIGBUS at a write through a sparse
    mapping), searches go on over what is there, and the merge succeeds once there is room again."""
    x = np.random.default_rng(0).standard_normal((1500, 32)).astype(np.float32)
    ids = [f"r{i}" for i in range(1500)]
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        col = db.create_collection("c", 32, "l2", index=kind, **params)
        col.upsert(ids, x)

        def no_room(fd, offset, length):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "posix_fallocate", no_room)
        with pytest.raises(StorageError, match="the disk is full"):
            db.optimize()
        assert col.stats()["indexed"] == 0 and col.count() == 1500
        assert col.search(x[7], k=1)[0]["id"] == "r7"  # exact over the unindexed rows
        monkeypatch.undo()
        db.optimize()
        assert col.stats()["indexed"] == 1500 and col.search(x[7], k=1)[0]["id"] == "r7"


@pytest.mark.parametrize("kind, params", [("hnsw-lvq8", {"M": 8, "ef_construction": 32}), ("ivf-pq", {}),
                                           ("vamana-disk", {"R": 16, "L_build": 32, "codec": "pq8"}),
                                           ("spann", {"list_size": 32})])
def test_code_collection_reopens_on_a_full_disk(tmp_path, monkeypatch, kind, params):
    """A collection over codes maps its main index from the checkpoint when it opens and moves the float32
    vectors file to file. With no room for that file it keeps them in memory instead: deletes, which change the
    index, must not need a file then (a failure there would leave a logged delete unapplied)."""
    x = np.random.default_rng(0).standard_normal((1500, 32)).astype(np.float32)
    ids = [f"r{i}" for i in range(1500)]
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        col = db.create_collection("c", 32, "l2", index=kind, **params)
        col.upsert(ids, x)
        db.optimize()
        db.checkpoint()

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        col = db.get_collection("c")
        assert col.stats()["indexed"] == 1500
        assert col.delete(ids[:100]) == 100 and col.count() == 1400
        assert col.search(x[7], k=1)[0]["id"] != "r7" and col.search(x[700], k=1)[0]["id"] == "r700"
    monkeypatch.undo()
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        col = db.get_collection("c")
        assert col.count() == 1400 and col.search(x[700], k=1)[0]["id"] == "r700"
        assert col.delete(ids[100:200]) == 100
