"""The simdex index file format (version 1): numpy arrays behind a JSON header, no pickle.

Layout of a file (all integers little-endian)::

    offset 0   8 bytes   magic  b"SIMDEX\\x00\\x01"
    offset 8   8 bytes   uint64 header length H
    offset 16  4 bytes   uint32 CRC-32 of the header bytes
    offset 20  4 bytes   reserved, zero
    offset 24  H bytes   header, UTF-8 JSON (see below)
    ...        padding to a multiple of 64, then each array's raw C-order bytes at its offset (64-byte aligned)

The header is a JSON object::

    {"format": "simdex", "format_version": 1, "kind": "HNSWIndex",
     "meta": {...index parameters and scalar state...},
     "arrays": {"name": {"dtype": "<f4", "shape": [n, d], "offset": 4096, "nbytes": ..., "crc32": ...}, ...},
     "file_size": total bytes}

Only plain little-endian numeric dtypes are accepted on load, so reading a file can never execute code. A file
shorter than ``file_size``, a header or array whose CRC-32 does not match, or any other inconsistency raises
:class:`~simdex.errors.CorruptFileError`. Files are written to a temporary name, fsynced and renamed, so a crash
while saving never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptFileError, InvalidInputError, MissingFileError

MAGIC = b"SIMDEX\x00\x01"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sQII")
_ALIGN = 64
_ALLOWED_DTYPES = {"|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8", "|b1"}
_CRC_CHUNK = 1 << 24


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _crc32(buf: np.ndarray) -> int:
    if buf.nbytes == 0:
        return 0
    mv = memoryview(np.ascontiguousarray(buf).reshape(-1).view(np.uint8))
    crc = 0
    for start in range(0, len(mv), _CRC_CHUNK):
        crc = zlib.crc32(mv[start:start + _CRC_CHUNK], crc)
    return crc


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder by its path (a folder's fsync makes the names created or renamed in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, doc: Any, *, mode: int | None = None, indent: int | None = 1) -> None:
    """Replace ``path`` by the JSON of ``doc`` atomically: a temporary file (made ``mode`` where given) fsynced and
    renamed over it, then the folder fsynced, so a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=indent)
        f.flush()
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_path(path.parent)


def save_arrays(path: str | os.PathLike, kind: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and the JSON-serialisable ``meta`` to ``path`` atomically."""
    path = Path(path)
    specs: dict[str, dict[str, Any]] = {}
    contiguous: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if a.dtype.str not in _ALLOWED_DTYPES:
            raise TypeError(f"array {name!r} has dtype {a.dtype}, which the file format does not store")
        contiguous[name] = a
        specs[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "nbytes": int(a.nbytes), "crc32": _crc32(a)}
    # Offsets depend on the header length, which depends on the offsets: iterate until stable.
    header_len_guess = 0
    while True:
        offset = _align(_PREFIX.size + header_len_guess)
        for name in specs:
            specs[name]["offset"] = offset
            offset = _align(offset + specs[name]["nbytes"])
        header = {"format": "simdex", "format_version": FORMAT_VERSION, "kind": kind, "meta": meta,
                  "arrays": specs, "file_size": offset}
        raw = json.dumps(header, separators=(",", ":")).encode()
        if len(raw) <= header_len_guess:
            raw = raw.ljust(header_len_guess)
            break
        header_len_guess = len(raw) + 256
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, len(raw), zlib.crc32(raw), 0))
            f.write(raw)
            for name, a in contiguous.items():
                f.write(b"\0" * (specs[name]["offset"] - f.tell()))
                f.write(memoryview(a.reshape(-1).view(np.uint8)) if a.nbytes else b"")
            f.write(b"\0" * (header["file_size"] - f.tell()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent if str(path.parent) else ".")


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The checked JSON header of a simdex file and the file's size."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MissingFileError(f"no index file at {path}") from None
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder, not a simdex index file")
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise CorruptFileError(f"{path}: file is truncated ({size} bytes) or not a simdex index")
        magic, header_len, header_crc, _ = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise CorruptFileError(f"{path}: not a simdex index file (bad magic bytes {magic!r})")
        if header_len > size - _PREFIX.size:
            raise CorruptFileError(f"{path}: file is truncated (header needs {header_len} bytes)")
        raw = f.read(header_len)
    if zlib.crc32(raw) != header_crc:
        raise CorruptFileError(f"{path}: header checksum mismatch; the file is corrupted")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path}: unreadable header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != "simdex":
        raise CorruptFileError(f"{path}: not a simdex index file")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CorruptFileError(f"{path}: format version {version} is not supported (this simdex reads "
                               f"version {FORMAT_VERSION})")
    return header, size


def read_kind(path: str | os.PathLike) -> str:
    """The kind of index a file holds (e.g. ``"HNSWIndex"``), from its checked header; the arrays are not read."""
    header, _ = _read_header(Path(path))
    kind = header.get("kind")
    if not isinstance(kind, str):
        raise CorruptFileError(f"{path}: malformed header (no index kind)")
    return kind


def load_arrays(path: str | os.PathLike, *, mmap: bool = True, verify: bool = True,
                expected_kind: str | None = None) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by :func:`save_arrays`. Returns ``(kind, meta, arrays)``.

    With ``mmap`` the arrays are read-only memory maps of the file; otherwise they are loaded into memory.
    ``verify`` checks every array's CRC-32 (this reads the whole file once).
    """
    path = Path(path)
    header, size = _read_header(path)
    kind = header.get("kind")
    if expected_kind is not None and kind != expected_kind:
        raise CorruptFileError(f"{path}: file holds a {kind}, not a {expected_kind}")
    if header.get("file_size") != size:
        raise CorruptFileError(f"{path}: file is {size} bytes but its header says {header.get('file_size')}; "
                               f"it was truncated or appended to")
    arrays: dict[str, np.ndarray] = {}
    base = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    try:
        for name, spec in header["arrays"].items():
            dtype, shape, offset, nbytes = spec["dtype"], tuple(spec["shape"]), spec["offset"], spec["nbytes"]
            if dtype not in _ALLOWED_DTYPES:
                raise CorruptFileError(f"{path}: array {name!r} has unsupported dtype {dtype!r}")
            dt = np.dtype(dtype)
            if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != nbytes or offset + nbytes > size \
                    or offset % _ALIGN:
                raise CorruptFileError(f"{path}: array {name!r} does not fit the file")
            view = base[offset:offset + nbytes]
            if verify and _crc32(view) != spec["crc32"]:
                raise CorruptFileError(f"{path}: checksum mismatch in array {name!r}; the file is corrupted")
            arr = view.view(dt).reshape(shape)
            arrays[name] = arr if mmap else np.array(arr)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: malformed header ({exc!r})") from None
    return kind, header.get("meta", {}), arrays
