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

N_BATCHES = 12
BATCH = 50


@pytest.fixture(scope="module")
def vectors(wordnet_small):
    return np.ascontiguousarray(wordnet_small.base[:N_BATCHES * BATCH], np.float32)


def _ids(batch: int) -> list[str]:
    return [f"b{batch}-{i}" for i in range(BATCH)]


def _write(path: Path, vectors: np.ndarray, batches: range, checkpoint_after: tuple[int, ...] = ()) -> None:
    """Upsert one batch per log record; optionally checkpoint after some batches; close without checkpointing
    (as a killed process would leave it)."""
    db = simdex.connect(path, background=False, sync="always")
    col = db.get_or_create_collection("c", dim=vectors.shape[1], M=8, ef_construction=40)
    for b in batches:
        col.upsert(_ids(b), vectors[b * BATCH:(b + 1) * BATCH], [{"batch": b}] * BATCH)
        if b in checkpoint_after:
            db.optimize()
            db.checkpoint()
    _abandon(db)


def _abandon(db) -> None:
    db._stop.set()
    for c in db._collections.values():
        c._wal.close()
        c._meta.close()
    os.close(db._lock_fd)


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
    with pytest.raises(CorruptDatabaseError, match=r"damaged at .*\.log at byte \d+ \(record 4\).*repair=True"):
        simdex.connect(path, background=False)
    with simdex.connect(path, read_only=True) as db:
        assert _present_batches(db.get_collection("c")) == {0, 1, 2}
    assert log.read_bytes()[offsets[3] + 200] != 0  # read-only changed nothing: still damaged
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
    with pytest.raises(CorruptDatabaseError, match=r"every checkpoint is damaged.*truncated|every checkpoint"):
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
    _write(path, vectors, range(8), checkpoint_after=(5,))
    meta = path / "collections" / "c" / "meta.sqlite"
    db = simdex.connect(path, background=False)  # fold SQLite's own log into the file
    db.get_collection("c")._meta.make_durable()
    _abandon(db)
    size = meta.stat().st_size
    with open(meta, "r+b") as f:  # wreck the middle pages
        f.seek(size // 3)
        f.write(os.urandom(size // 3))
    with simdex.connect(path, background=False) as db:
        col = db.get_collection("c")
        assert _present_batches(col) == set(range(8))
        assert any("metadata store" in n and "restored" in n for n in col.recovery_notes)
