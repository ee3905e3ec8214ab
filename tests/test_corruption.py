"""Damaged files: flipped bytes and truncation in the write-ahead log, checkpoint files, manifest and metadata
store are detected with a clear error; the database then opens read-only, or repairs to the last good state, and
nothing acknowledged before the damage is lost."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import simdex
from simdex.errors import CorruptDatabaseError

from ._crash import run_then_kill

N_BATCHES = 12
BATCH = 50


@pytest.fixture(scope="module")
def vectors(wordnet_small):
    return np.ascontiguousarray(wordnet_small.base[:N_BATCHES * BATCH], np.float32)


def _ids(batch: int) -> list[str]:
    return [f"b{batch}-{i}" for i in range(BATCH)]


_WRITER = """
import sys, json, numpy as np, simdex
path, vectors, batches, checkpoint_after, durable_meta = sys.argv[1], np.load(sys.argv[2]), json.loads(sys.argv[3]), \\
    json.loads(sys.argv[4]), sys.argv[5] == "1"
db = simdex.connect(path, background=False, sync="always")
col = db.get_or_create_collection("c", dim=vectors.shape[1], M=8, ef_construction=40)
for b in batches:
    col.upsert([f"b{b}-{i}" for i in range(%d)], vectors[b * %d:(b + 1) * %d], [{"batch": b}] * %d)
    if b in checkpoint_after:
        db.optimize()
        db.checkpoint()
if durable_meta:
    col._meta.make_durable()  # fold SQLite's own log into its file
print("done", flush=True)
sys.stdin.read()  # killed here, with everything acknowledged and nothing closed
""" % ((BATCH,) * 4)


def _write(path: Path, vectors: np.ndarray, batches: range, checkpoint_after: tuple[int, ...] = (),
           durable_meta: bool = False) -> None:
    """Upsert one batch per log record in a writer process; optionally checkpoint after some batches; then kill
    the writer with SIGKILL (no close, no final checkpoint), as a crash would leave the folder."""
    import json
    pool = path.parent / "vectors.npy"
    np.save(pool, vectors)
    run_then_kill(_WRITER, str(path), str(pool), json.dumps(list(batches)), json.dumps(list(checkpoint_after)),
                  "1" if durable_meta else "0")


def _present_batches(col) -> set[int]:
    got = {r["metadata"]["batch"] for r in col.get(include=["metadatas"])}
    for b in got:  # every record of a present batch, with its own vector as nearest neighbour
        assert len(col.get(_ids(b), include=[])) == BATCH
    return got


def _log_files(path: Path) -> list[Path]:
    return sorted((path / "collections" / "c" / "wal").glob("*.log"))


def _record_offsets(data: bytes) -> list[int]:
    import struct
    offsets, pos = [], 0
    while pos + 20 <= len(data):
        _, _, length, _ = struct.unpack_from("<IQII", data, pos)
        offsets.append(pos)
        pos += 20 + length
    return offsets


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def test_torn_log_tail_is_cut_silently(tmp_path, vectors):
    path = tmp_path / "db"
    _write(path, vectors, range(4))
    log = _log_files(path)[-1]
    size = log.stat().st_size
    with open(log, "r+b") as f:
        f.truncate(size - 100)  # the last record was torn mid-write
    with simdex.connect(path, background=False) as db:
        col = db.get_collection("c")
        assert _present_batches(col) == {0, 1, 2}
        assert any("cut" in n for n in col.recovery_notes)
        col.upsert(_ids(9), vectors[:BATCH], [{"batch": 9}] * BATCH)  # and it goes on working
    with simdex.connect(path, background=False) as db:
        assert _present_batches(db.get_collection("c")) == {0, 1, 2, 9}


def test_flipped_byte_mid_log_refuses_then_read_only_and_repair(tmp_path, vectors):
    path = tmp_path / "db"
    _write(path, vectors, range(6))
    log = _log_files(path)[-1]
    offsets = _record_offsets(log.read_bytes())
    assert len(offsets) == 6
    _flip(log, offsets[3] + 200)  # inside record 4's payload; records 5 and 6 follow intact
    damaged = log.read_bytes()
    with pytest.raises(CorruptDatabaseError, match=r"damaged at .*\.log at byte \d+ \(record 4\).*repair=True"):
        simdex.connect(path, background=False)
    with simdex.connect(path, read_only=True) as db:
        assert _present_batches(db.get_collection("c")) == {0, 1, 2}
    assert log.read_bytes() == damaged  # read-only changed nothing: the damaged byte and everything else stay
    with pytest.raises(CorruptDatabaseError):
        simdex.connect(path, background=False)
    with simdex.connect(path, background=False, repair=True) as db:
        col = db.get_collection("c")
        assert _present_batches(col) == {0, 1, 2}
        assert any("restored" in n for n in col.recovery_notes)  # SQLite had applied records 4-6: rolled back
        hits = col.search(vectors[5], k=1)
        assert hits[0]["id"] == "b0-5"
    with simdex.connect(path, background=False) as db:  # repaired for good
        assert _present_batches(db.get_collection("c")) == {0, 1, 2}


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, vectors):
    path = tmp_path / "db"
    _write(path, vectors, range(8), checkpoint_after=(2, 5))
    folder = path / "collections" / "c"
    newest = max(folder.glob("main-*.sdx"), key=lambda p: int(p.stem.split("-")[1]))
    _flip(newest, newest.stat().st_size // 2)
    with simdex.connect(path, background=False) as db:
        col = db.get_collection("c")
        assert _present_batches(col) == set(range(8))
        assert any("damaged" in n and "falling back" in n for n in col.recovery_notes)
        assert col.search(vectors[7 * BATCH + 3], k=1)[0]["id"] == "b7-3"


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path, vectors):
    path = tmp_path / "db"
    _write(path, vectors, range(8), checkpoint_after=(2, 5))
    folder = path / "collections" / "c"
    for growing in folder.glob("growing-*.sdx"):
        with open(growing, "r+b") as f:
            f.truncate(growing.stat().st_size // 2)
    with pytest.raises(CorruptDatabaseError, match=r"every checkpoint is damaged \(checkpoint 2 is damaged "
                                                   r"\(.*truncated.*checkpoint 1 is damaged \(.*truncated"):
        simdex.connect(path, background=False)


def test_damaged_manifest_uses_the_previous_one(tmp_path, vectors):
    path = tmp_path / "db"
    _write(path, vectors, range(8), checkpoint_after=(2, 5))
    manifest = path / "collections" / "c" / "MANIFEST"
    _flip(manifest, manifest.stat().st_size // 2)
    with simdex.connect(path, background=False) as db:
        col = db.get_collection("c")
        assert _present_batches(col) == set(range(8))
        assert any("MANIFEST" in n for n in col.recovery_notes)


def test_damaged_metadata_store_is_restored_from_the_checkpoint(tmp_path, vectors):
    path = tmp_path / "db"
    _write(path, vectors, range(8), checkpoint_after=(5,), durable_meta=True)
    meta = path / "collections" / "c" / "meta.sqlite"
    size = meta.stat().st_size
    with open(meta, "r+b") as f:  # wreck the middle pages
        f.seek(size // 3)
        f.write(os.urandom(size // 3))
    with simdex.connect(path, background=False) as db:
        col = db.get_collection("c")
        assert _present_batches(col) == set(range(8))
        assert any("metadata store" in n and "restored" in n for n in col.recovery_notes)


_SMALL_LOG_WRITER = """
import sys, numpy as np, simdex
vectors = np.load(sys.argv[2])
db = simdex.connect(sys.argv[1], background=False, log_segment_bytes=20_000)  # one log file per record here
col = db.create_collection("c", dim=vectors.shape[1], index="flat")
for b in range(4):
    col.upsert([f"b{b}-{i}" for i in range(30)], vectors[b * 30:(b + 1) * 30])
    if b == 1:
        db.checkpoint()  # holds records 1-2
print("done", flush=True)
sys.stdin.read()
"""


def test_missing_log_file_and_unusable_metadata_are_clear_errors(tmp_path, vectors):
    """Recovery cannot invent records: log records missing after the checkpoint, or a metadata store that is
    unusable while the checkpoint's copy of it is gone, are refused with what is wrong."""
    path = tmp_path / "db"
    np.save(tmp_path / "v.npy", vectors)
    run_then_kill(_SMALL_LOG_WRITER, str(path), str(tmp_path / "v.npy"))
    logs = _log_files(path)
    assert [int(p.stem) for p in logs] == [1, 2, 3, 4]
    for p in logs[:3]:  # records 1-3 gone: the checkpoint holds 1-2, so record 3 is missing
        p.unlink()
    with pytest.raises(CorruptDatabaseError, match=r"log records 3\.\.3 are missing"):
        simdex.connect(path, background=False)

    path2 = tmp_path / "db2"
    _write(path2, vectors, range(4), checkpoint_after=(1,), durable_meta=True)
    folder2 = path2 / "collections" / "c"
    for copy in folder2.glob("meta-*.sqlite"):
        copy.unlink()
    meta = folder2 / "meta.sqlite"
    meta.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptDatabaseError, match=r"(?s)metadata store is unusable .*checkpoint copy meta-\d+\.sqlite "
                                                   r"is missing"):
        simdex.connect(path2, background=False)
