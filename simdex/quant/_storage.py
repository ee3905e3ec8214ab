"""Where float32 vectors live when an index keeps them only for re-ranking: an unlinked temporary file, memory-
mapped, so that they occupy page cache (reclaimable, shared) rather than the process's anonymous memory."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Any

import numpy as np


def reserve(f: Any, size: int) -> None:
    """Make the open file ``f`` ``size`` bytes long with its blocks reserved now: a sparse file on a full disk
    would kill the process with SIGBUS at the first write through a mapping of it, instead of an OSError (ENOSPC)
    here. Falls back to a sparse file where the platform or file system cannot reserve."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        f.truncate(size)


def reserved_memmap(path: str | os.PathLike, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new zeroed file at ``path`` of ``shape`` ``dtype``, its blocks reserved (:func:`reserve`: an OSError on a
    full disk now, not SIGBUS at a write later), memory-mapped for writing."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with open(path, "w+b") as f:
        reserve(f, max(size, 1))
        return np.memmap(f, dtype, mode="r+", shape=shape)


def disk_array(rows: int, dim: int, directory: str | None = None) -> np.ndarray:
    """A zeroed float32 (rows, dim) array backed by an unlinked temporary file in ``directory`` (default: the
    system's temporary folder). The file disappears when the last view of the array is garbage-collected. No file
    for no rows (an empty index, which may be opened on a full disk)."""
    if rows == 0:
        return np.zeros((0, dim), np.float32)
    with tempfile.TemporaryFile(dir=directory, prefix="simdex-vectors-") as f:
        reserve(f, max(rows, 1) * dim * 4)
        mm = np.memmap(f, np.float32, mode="r+", shape=(max(rows, 1), dim))
    return np.asarray(mm)[:rows]


def file_mapping(arr: np.ndarray) -> Any:
    """The mmap.mmap under a file-backed array (a view of an np.memmap), or None for an in-memory array."""
    import mmap
    base = arr
    while base is not None and not isinstance(base, (np.memmap, mmap.mmap)):
        base = getattr(base, "base", None)
    mm = getattr(base, "_mmap", base) if base is not None else None
    return mm if isinstance(mm, mmap.mmap) else None


def file_backed(arr: np.ndarray) -> bool:
    """Whether ``arr`` lives in a memory-mapped file (not in the process's own memory)."""
    return file_mapping(arr) is not None


def drop_pages(arr: np.ndarray) -> None:
    """Unmap a file-backed array's pages from this process (they stay in the page cache and are faulted back in
    on demand), so the resident set holds only what is touched afterwards. No-op for in-memory arrays."""
    import mmap
    mm = file_mapping(arr)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)
