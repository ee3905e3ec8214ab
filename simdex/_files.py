"""Reading input files that may be compressed (gzip, bzip2, xz), told by their first bytes, not their names."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from pathlib import Path
from typing import IO

_MAGIC = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")


def data_suffix(path: str | os.PathLike) -> str:
    """The suffix that names the data format, under any compression suffix: ``a.jsonl.gz`` -> ``.jsonl``."""
    path = Path(path)
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return Path(name[:-len(suffix)]).suffix
    return path.suffix.lower()


# the data format each file suffix names (under any compression suffix)
_FORMATS = {".npy": "npy", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


def data_format(path: str | os.PathLike) -> str | None:
    """``"jsonl"``, ``"parquet"`` or ``"npy"`` as the name of ``path`` says (``a.ndjson.gz`` -> ``"jsonl"``), else
    None."""
    return _FORMATS.get(data_suffix(path))


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """``path`` opened for reading bytes, decompressed when it is gzip, bzip2 or xz."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            return opener(path, "rb")
    return open(path, "rb")


def open_text(path: str | os.PathLike, errors: str = "strict") -> IO[str]:
    """``path`` as UTF-8 text, decompressed when it is gzip, bzip2 or xz. With ``errors="strict"`` a byte that
    is not UTF-8 raises UnicodeDecodeError (callers name the file); ``"replace"`` substitutes it."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors=errors)
