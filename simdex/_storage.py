"""Where float32 vectors live when an index keeps them only for re-ranking: an unlinked temporary file, memory-
mapped, so that they occupy page cache (reclaimable, shared) rather than the process's anonymous memory; or, in a
database collection, a named :class:`VectorFile` that the copies of its index share and its checkpoints name."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptFileError, InvalidInputError


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


def disk_array(rows: int, dim: int, directory: str | None = None, *, readable: bool = False) -> np.ndarray:
    """A zeroed float32 (rows, dim) array backed by an unlinked temporary file in ``directory`` (default: the
    system's temporary folder). The file disappears when the last view of the array is garbage-collected. No file
    for no rows (an empty index, which may be opened on a full disk). With ``readable`` the file's rows can also
    be read with system calls (:func:`row_source`)."""
    if rows == 0:
        return np.zeros((0, dim), np.float32)
    with tempfile.TemporaryFile(dir=directory, prefix="simdex-vectors-") as f:
        reserve(f, max(rows, 1) * dim * 4)
        mm = np.memmap(f, np.float32, mode="r+", shape=(max(rows, 1), dim))
        if readable:
            mm._simdex_reads = RandomReads(f)
    return np.asarray(mm)[:rows]


class RandomReads:
    """A read-only descriptor of an open file (``fd``), its own open file description, advised for random reads
    (no read-ahead: a re-ranked row is read alone); closed when the last object holding it is collected."""

    def __init__(self, f: Any) -> None:
        try:  # a description of its own (the advice then leaves the file's mapping alone); works when unlinked
            self.fd = os.open(f"/proc/self/fd/{f.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # pragma: no cover - no /proc
            self.fd = os.dup(f.fileno())
        else:
            with contextlib.suppress(AttributeError, OSError):
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        weakref.finalize(self, os.close, self.fd)


READS = ("mmap", "pread")


def check_reads(reads: Any, vector_storage: str) -> str:
    """Validate an index's ``reads`` (how re-ranking reads its float32 vectors on disk: ``"mmap"`` or
    ``"pread"``, :func:`row_source`) for its ``vector_storage``."""
    if reads not in READS:
        raise InvalidInputError(f"reads must be one of {READS}; got {reads!r}")
    if reads == "pread" and vector_storage != "disk":
        raise InvalidInputError(f"reads='pread' reads vectors kept on disk; this index keeps them "
                                f"vectors={vector_storage!r}")
    return reads


def row_source(arr: np.ndarray) -> Any:
    """What a re-ranking kernel should read the float32 rows ``arr`` (n, dim) from: their file, a system call per
    row (:class:`simdex.core.scorer.FileRows`), when ``arr`` starts a mapping made readable that way
    (:func:`disk_array` with ``readable``, a :class:`VectorFile`); else ``arr`` itself. Reading rows this way maps
    none of the file into the process: on Linux a page fault maps a whole large folio of the page cache (up to
    2 MiB for a 1.5 KiB row), so re-ranking through a mapping grows the resident set by far more than it reads.
    The caller keeps ``arr`` referenced while the kernel runs (it holds the file open)."""
    from .core.scorer import FileRows
    base = arr
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    reads = getattr(base, "_simdex_reads", None)
    if reads is None or base.offset != 0 or arr.ctypes.data != base.ctypes.data or arr.ndim != 2 \
            or not arr.flags.c_contiguous:
        return arr
    return FileRows(reads.fd, arr.shape[1])


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


def drop_pages(arr: np.ndarray, start: int = 0, stop: int | None = None) -> None:
    """Unmap a file-backed array's pages from this process (they stay in the page cache, written back if dirty,
    and are faulted back in on demand), so the resident set holds only what is touched afterwards: all of the
    mapping, or the whole pages within its bytes ``start:stop``. No-op for in-memory arrays."""
    import mmap
    mm = file_mapping(arr)
    if mm is None or not hasattr(mm, "madvise"):
        return
    if start == 0 and stop is None:
        mm.madvise(mmap.MADV_DONTNEED)
        return
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, (len(mm) if stop is None else min(len(mm), stop)) // page * page
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


VECTOR_FILE = re.compile(r"^vectors-(\d+)\.f32$")
_COPY_ROWS = 1 << 15  # rows per chunk when vectors are copied between files (bounded memory)


class VectorFile:
    """A named file of float32 rows (n, dim) that grows only at its end, for the float32 vectors of an index over
    codes in a database collection (``vectors-<n>.f32`` in its folder).

    The copies of one index that a collection builds aside share it: a copy appends its new rows after those the
    live index reads (which never change), so a merge writes only the new rows, and a checkpoint names the file
    and a row count instead of writing the vectors again. Rows that a checkpoint names are never written again:
    compaction (consolidation) writes a :meth:`successor`. Capacity is reserved ahead (a quarter more each time),
    so that a full disk raises OSError at the reservation instead of SIGBUS at a write through the mapping. The file
    is opened for reading; the first write opens it for writing (a read-only database never does)."""

    def __init__(self, path: str | os.PathLike, dim: int, rows: int = 0, *, create: bool = False) -> None:
        self.path, self.dim = Path(path), int(dim)
        self._writable = create
        if create:
            self._file = open(self.path, "x+b")
        else:
            try:
                self._file = open(self.path, "rb")
            except FileNotFoundError:
                raise CorruptFileError(f"{self.path}: the vector file that the index names is missing") from None
        size = os.fstat(self._file.fileno()).st_size
        self._capacity = size // (4 * self.dim)
        if self._capacity < rows:
            self._file.close()
            raise CorruptFileError(f"{self.path}: holds {self._capacity} vectors of dimension {self.dim}; the index "
                                   f"names {rows}")
        self._reads = RandomReads(self._file)
        self._map = self._mapping()
        self._lock = threading.Lock()

    @classmethod
    def create(cls, folder: str | os.PathLike, dim: int) -> VectorFile:
        """A new empty vector file in ``folder``, numbered after every one there."""
        numbers = [int(m.group(1)) for p in Path(folder).iterdir() if (m := VECTOR_FILE.match(p.name))]
        return cls(Path(folder) / f"vectors-{max(numbers, default=0) + 1}.f32", dim, create=True)

    def successor(self) -> VectorFile:
        """A new empty vector file beside this one (for a compacted copy of the rows)."""
        return VectorFile.create(self.path.parent, self.dim)

    @property
    def name(self) -> str:
        return self.path.name

    def _mapping(self) -> np.ndarray:
        if self._capacity == 0:
            return np.zeros((0, self.dim), np.float32)
        mm = np.memmap(self._file, np.float32, mode="r+" if self._writable else "r", shape=(self._capacity, self.dim))
        mm._simdex_reads = self._reads  # (held by the mapping: views of it outlive this object)
        return np.asarray(mm)

    def rows(self, n: int) -> np.ndarray:
        """The first ``n`` rows, a view of the file's mapping (its pages in the page cache, not in the process's
        own memory)."""
        return self._map[:n]

    def writable(self, rows: int) -> np.ndarray:
        """The first ``rows`` rows, reserved on disk (zero where never written) and writable: for an index that
        writes its new rows in place. Only rows that no reader uses may be written: those after every live
        index's count."""
        with self._lock:
            if not self._writable:
                self._file.close()
                self._file, self._writable = open(self.path, "r+b"), True
                self._map = self._mapping()
            if rows > self._capacity:
                capacity = max(rows, self._capacity + self._capacity // 4, 1024)
                reserve(self._file, capacity * self.dim * 4)
                self._capacity = capacity
                self._map = self._mapping()  # older views keep the old mapping alive while they are used
            return self._map[:rows]

    def write(self, start: int, x: np.ndarray) -> np.ndarray:
        """Write ``x`` (m, dim) as rows ``start..start+m`` (see :meth:`writable`) and return the first
        ``start + m`` rows."""
        out = self.writable(start + x.shape[0])
        out[start:] = x
        # the written pages leave the process (not the page cache): a load of a collection larger than memory
        # would otherwise keep every row it wrote resident until the mapping goes
        row = 4 * self.dim
        drop_pages(self._map, start * row, (start + x.shape[0]) * row)
        return out

    def append_rows(self, start: int, source: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Write ``source`` (or its rows ``rows``) from row ``start`` on, a chunk at a time (never all of it in
        memory); returns the first ``start + count`` rows."""
        count = source.shape[0] if rows is None else rows.shape[0]
        out = self.rows(start)
        for s in range(0, count, _COPY_ROWS):
            chunk = source[s:s + _COPY_ROWS] if rows is None else source[rows[s:s + _COPY_ROWS]]
            out = self.write(start + s, np.asarray(chunk, np.float32))
        return out

    @staticmethod
    def check_name(meta: dict[str, Any]) -> str | None:
        """The vector file an index snapshot's meta names (``vector_file``), or None; ValueError if malformed."""
        name = meta.get("vector_file")
        if name is not None and (not isinstance(name, str) or not VECTOR_FILE.match(name)):
            raise ValueError(f"bad vector file name {name!r}")
        return name

    @classmethod
    def open_named(cls, index: Any, path: str | os.PathLike) -> VectorFile | None:
        """For an index just loaded from the snapshot file ``path``: the vector file that its snapshot names
        (beside ``path``, holding at least its rows), or None when the snapshot holds the vectors itself."""
        name = vars(index).pop("_pending_vector_file", None)
        return None if name is None else cls(Path(path).parent / name, index.dim, index._n)

    def sync(self) -> None:
        """Make the rows written so far durable (the mapping's dirty pages and the file's size)."""
        if self._writable:
            os.fsync(self._file.fileno())


class InVectorFile:
    """Mixin of an index over codes whose float32 vectors (``_vectors``, its first ``_n`` rows) may be kept in a
    :class:`VectorFile` (a database collection's): :meth:`use_vector_file`, the file, and a ``load`` that opens
    the file a snapshot names, beside the snapshot (for reading, until the index writes to it). The index says
    which view of the file is its ``_vectors`` (:meth:`_vectors_in`) and what its other arrays need then
    (``_materialize``)."""

    _vector_file: VectorFile | None = None

    @property
    def vector_file(self) -> VectorFile | None:
        """The :class:`VectorFile` the vectors are in, or None."""
        return self._vector_file

    def _vectors_in(self, vector_file: VectorFile) -> np.ndarray:
        """The view of ``vector_file`` that the index keeps as ``_vectors`` (it holds the index's rows)."""
        raise NotImplementedError

    def use_vector_file(self, vector_file: VectorFile) -> None:
        """Keep the float32 vectors (``vectors="disk"``) in ``vector_file``, which the copies of this index share
        (a database collection's): later adds write after the rows the index holds, compaction writes a successor,
        and ``snapshot`` names the file instead of holding the vectors. The rows held now are copied into it (a
        chunk at a time) unless it already holds them (an index loaded from a snapshot that names it)."""
        if self.vector_storage != "disk":
            raise InvalidInputError(f"only an index with vectors='disk' keeps them in a vector file, not "
                                    f"vectors={self.vector_storage!r}")
        with self._write_lock:
            if vector_file is not self._vector_file:
                vector_file.append_rows(0, self._vectors[:self._n])
                self._vector_file = vector_file
            self._vectors = self._vectors_in(vector_file)
            self._materialize()

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> Any:
        index = super().load(path, mmap=mmap, verify=verify)  # type: ignore[misc]
        vf = VectorFile.open_named(index, path)
        if vf is not None:
            index._vector_file, index._vectors = vf, vf.rows(index._n)
        return index
