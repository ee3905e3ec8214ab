"""A reader for ``.safetensors`` weight files: numpy views of a memory-mapped file, no pickle, no torch.

The format: an 8-byte little-endian unsigned header length ``n``, ``n`` bytes of JSON mapping each tensor name to
``{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}`` (byte offsets into the data that follows the
header; an optional ``"__metadata__"`` entry maps strings to strings), then the raw little-endian tensor data.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
    "BF16": np.dtype("<u2"),  # bfloat16 has no numpy type: read as bits, widened by float32_of()
}
# Headers beyond this are refused (real ones are tens of KiB); it stops a damaged length from reading gigabytes.
MAX_HEADER_BYTES = 100 << 20
# The fingerprint hashes this many bytes at each end of the data (1 MiB).
FINGERPRINT_BYTES = 1 << 20


def read_header(path: str | Path) -> tuple[dict, int]:
    """The parsed JSON header of a safetensors file and the byte offset of its data section.

    Raises :class:`~simdex.errors.CorruptFileError` naming the file when the header is truncated, not JSON, or
    describes tensors that do not fit the file (unknown dtype, sizes that disagree with shapes, offsets past the
    end or overlapping).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptFileError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CorruptFileError(f"{path}: not a safetensors file (header length {n} does not fit a file of "
                                   f"{size} bytes)")
        text = f.read(n)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: safetensors header is not a JSON object")
    data_start, data_size = 8 + n, size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size or \
                end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CorruptFileError(f"{path}: tensor {name!r} ({info['dtype']} {shape}, bytes {begin}..{end}) does "
                                   f"not fit the {data_size}-byte data section")
        spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CorruptFileError(f"{path}: tensors {a!r} and {b!r} overlap")
    return header, data_start


def load(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as read-only numpy arrays backed by one memory map (nothing is read
    until used). Dtypes are the file's (``BF16`` comes back as its uint16 bit patterns); arrays whose offset is
    not aligned for their dtype are copied into aligned memory."""
    header, data_start = read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        arr = np.asarray(mm[data_start + begin:data_start + end]).view(dtype).reshape(info["shape"])
        if not arr.flags.aligned:
            arr = np.require(arr, requirements="A")
            arr.setflags(write=False)
        out[name] = arr
    return out


def float32_of(arr: np.ndarray, dtype_name: str) -> np.ndarray:
    """A float32 array of a tensor read by :func:`load` (``dtype_name`` is its header dtype: F32, F16, BF16, F64)."""
    if dtype_name == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32, copy=False)


def fingerprint(path: str | Path, extra: bytes = b"") -> str:
    """A 16-hex-digit SHA-256 fingerprint of a weight file: its header, its size and the first and last MiB of
    its data (plus ``extra``). Reads at most about 2 MiB; the same file gives the same string in every process."""
    path = Path(path)
    header, data_start = read_header(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    h.update(b"safetensors\0" + str(size).encode() + b"\0")
    with open(path, "rb") as f:
        h.update(f.read(data_start))
        h.update(f.read(FINGERPRINT_BYTES))
        f.seek(max(data_start, size - FINGERPRINT_BYTES))
        h.update(f.read(FINGERPRINT_BYTES))
    h.update(extra)
    return h.hexdigest()[:16]
