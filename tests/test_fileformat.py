"""The on-disk format: round trips, and a clear error for every kind of damage."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from simdex import CorruptFileError, fileformat


@pytest.fixture
def saved(tmp_path):
    arrays = {"a": np.arange(1000, dtype=np.float32).reshape(100, 10), "b": np.arange(7, dtype=np.int64),
              "empty": np.zeros((0, 3), np.int32)}
    path = tmp_path / "x.sdx"
    fileformat.save_arrays(path, "Thing", {"answer": 42}, arrays)
    return path, arrays


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(saved, mmap):
    path, arrays = saved
    kind, meta, got = fileformat.load_arrays(path, mmap=mmap)
    assert kind == "Thing" and meta == {"answer": 42}
    for name, arr in arrays.items():
        np.testing.assert_array_equal(got[name], arr)
        assert got[name].dtype == arr.dtype
    assert not list(path.parent.glob("*.tmp*")), "no temporary file may be left behind"


def test_arrays_are_aligned(saved):
    path, _ = saved
    raw = path.read_bytes()
    header = json.loads(raw[24:24 + struct.unpack("<Q", raw[8:16])[0]])
    assert all(spec["offset"] % 64 == 0 for spec in header["arrays"].values())


def _patch(path, offset, byte):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= byte
    path.write_bytes(bytes(raw))


def test_flipped_byte_in_array(saved):
    path, _ = saved
    _patch(path, path.stat().st_size - 200, 0x01)
    with pytest.raises(CorruptFileError, match="checksum mismatch in array"):
        fileformat.load_arrays(path)


def test_flipped_byte_in_header(saved):
    path, _ = saved
    _patch(path, 30, 0x20)
    with pytest.raises(CorruptFileError, match="header checksum"):
        fileformat.load_arrays(path)


def test_truncated_and_appended(saved):
    path, _ = saved
    raw = path.read_bytes()
    for cut in (0, 5, 20, 100, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(CorruptFileError, match="truncated"):
            fileformat.load_arrays(path)
    path.write_bytes(raw + b"junk")
    with pytest.raises(CorruptFileError, match="appended"):
        fileformat.load_arrays(path)


def test_not_a_simdex_file(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(10))
    with pytest.raises(CorruptFileError, match="magic"):
        fileformat.load_arrays(path)
    with pytest.raises(FileNotFoundError, match="no index file"):
        fileformat.load_arrays(tmp_path / "missing.sdx")


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[8:16])[0]
    header = json.loads(raw[24:24 + n])
    edit(header)
    new = json.dumps(header).encode().ljust(n)
    assert len(new) == n
    path.write_bytes(raw[:8] + struct.pack("<QII", n, zlib.crc32(new), 0) + new + raw[24 + n:])


def test_future_version_rejected(saved):
    path, _ = saved
    _rewrite_header(path, lambda h: h.update(format_version=99))
    with pytest.raises(CorruptFileError, match="version 99"):
        fileformat.load_arrays(path)


def test_object_dtype_never_loaded(saved):
    """A header that asks for Python objects (what pickle would need) is refused."""
    path, _ = saved
    _rewrite_header(path, lambda h: h["arrays"]["b"].update(dtype="|O"))
    with pytest.raises(CorruptFileError, match="unsupported dtype"):
        fileformat.load_arrays(path)
    with pytest.raises(TypeError, match="does not store"):
        fileformat.save_arrays(path.with_name("y.sdx"), "T", {}, {"o": np.array([object()])})


def test_array_outside_file_rejected(saved):
    path, _ = saved
    _rewrite_header(path, lambda h: h["arrays"]["a"].update(shape=[100000, 10], nbytes=4000000))
    with pytest.raises(CorruptFileError, match="does not fit"):
        fileformat.load_arrays(path)


def test_save_over_existing_file_is_atomic(saved):
    path, arrays = saved
    fileformat.save_arrays(path, "Thing", {"answer": 43}, arrays)
    assert fileformat.load_arrays(path)[1] == {"answer": 43}
