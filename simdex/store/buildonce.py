"""A collection's main index of a kind that is built once and never changed: SPANN (``index="spann"``).

New rows wait in the growing segment, searched exactly beside the main index, as in every collection; a merge
builds a new SPANN index from every live row (the old index's and the growing segment's) into a new folder of the
collection and swaps it in (an LSM store's compaction). Deletes are tombstones kept here, written to the
checkpoints' tombstone files like every kind's; the folder itself is never written again once built, so a
checkpoint names it instead of copying it.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import check_ids, check_k, check_vectors
from ..idmap import IdMap

if TYPE_CHECKING:  # the store imports an index family when a collection uses it
    from ..quant import SPANNIndex

FOLDER = re.compile(r"^spann-(\d+)$")
# what a merge waits for before building again from every row: a tenth of the index's rows (each build reads all
# of them), or 1% once the writes have stopped
REBUILD_GROWTH = 0.1
IDLE_REBUILD_GROWTH = 0.01


class _Rows:
    """The rows of several (n_i, dim) arrays, each optionally through a row selection, as one array-like that
    SPANNIndex.build reads by slices: the build streams them instead of holding a copy of all."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray | None]], dim: int) -> None:
        self.parts = [(arr, rows, arr.shape[0] if rows is None else rows.shape[0]) for arr, rows in parts]
        self.shape = (sum(n for _, _, n in self.parts), dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                return self._range(start, stop)
            key = np.arange(start, stop, step)
        keys = np.asarray(key, np.int64)  # rows by number (the build's training sample)
        out = np.empty((keys.shape[0], self.shape[1]), np.float32)
        offset = 0
        for arr, rows, n in self.parts:
            mine = (keys >= offset) & (keys < offset + n)
            if mine.any():
                local = keys[mine] - offset
                out[mine] = arr[local] if rows is None else arr[rows[local]]
            offset += n
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        out, offset = [], 0
        for arr, rows, n in self.parts:
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                out.append(np.asarray(arr[lo:hi] if rows is None else arr[rows[lo:hi]], np.float32))
            offset += n
        return np.concatenate(out) if out else np.zeros((0, self.shape[1]), np.float32)


class SPANNMain:
    """A SPANN index built into the folder ``folder`` of a collection, and the tombstones of the records deleted
    from it since; under the contract a collection's main index keeps (search, remove, get_vectors, ids)."""

    def __init__(self, spann: SPANNIndex, folder: str) -> None:
        self.spann, self.folder = spann, folder
        self.dim, self.metric = spann.dim, spann.metric
        self._idmap = IdMap(np.array(spann.ids))
        self._n = spann.ntotal
        self._n_deleted = 0
        self._deleted = np.zeros(self._n, np.uint8)
        self.consolidate_threshold = 1.0  # (never consolidated: a merge builds a new one)
        self._lock = threading.Lock()  # a remove by the writer against a merge reading the live rows

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True, verify: bool = True) -> SPANNMain:
        """The index in the folder ``path``, without tombstones (the caller applies those of its checkpoint)."""
        from ..quant import SPANNIndex
        return cls(SPANNIndex.load(path, mmap=True, verify=verify), Path(path).name)

    @property
    def rerank(self) -> int:
        return self.spann.rerank

    @property
    def trained_rows(self) -> int:
        """The rows its clustering and codec were trained on (at most the build's sample): every row it holds."""
        return self.spann.ntotal

    @property
    def nbytes(self) -> int:
        return self.spann.nbytes + self._deleted.nbytes + self._idmap.nbytes

    def __len__(self) -> int:
        return len(self._idmap)

    @property
    def ids(self) -> np.ndarray:
        return self._idmap.live_ids()

    def remove(self, ids: Any) -> int:
        with self._lock:
            slots = self._idmap.slots_of(check_ids(ids))
            self._deleted[slots] = 1
            self._n_deleted += int(slots.shape[0])
            self._idmap.release(slots)
        return int(slots.shape[0])

    def get_vectors(self, ids: Any) -> np.ndarray:
        return np.array(self.spann._vectors[self._idmap.slots_of(check_ids(ids))])

    def search(self, queries: Any, k: int, *, nprobe: int | None = None, rerank: int | None = None,
               filter: Any = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = check_vectors(queries, self.dim, "queries", normalize=self.metric == "cosine")
        k = check_k(k, len(self))
        if filter is not None:
            allowed, invert = self._idmap.allowed_mask(filter), False  # (released slots are never allowed)
        elif self._n_deleted:
            allowed, invert = self._deleted, True
        else:
            allowed, invert = None, False
        return self.spann.search_masked(q, k, nprobe, None, rerank, allowed, invert, threads)

    def live_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, slots) of the live records, consistent with each other while the writer deletes."""
        with self._lock:
            slots = np.flatnonzero(self._deleted == 0)
            return np.array(self._idmap.slot_ids[slots]), slots


def next_folder(storage_dir: str) -> str:
    """A new folder name for the next build in ``storage_dir`` (numbered after every one there)."""
    numbers = [int(m.group(1)) for p in Path(storage_dir).iterdir() if (m := FOLDER.match(p.name))]
    return f"spann-{max(numbers, default=0) + 1}"


def build_main(dim: int, metric: str, params: dict[str, Any], storage_dir: str, base: SPANNMain | None,
               moved: np.ndarray, vectors: np.ndarray | None, folder: str) -> SPANNMain | None:
    """A new SPANN main index over the live rows of ``base`` and the rows ``moved`` (their ``vectors``), built
    into ``storage_dir/folder``; None when there is no row. A failed build leaves no folder behind."""
    parts: list[tuple[np.ndarray, np.ndarray | None]] = []
    ids = [np.zeros(0, np.int64)]
    if base is not None:
        live_ids, slots = base.live_rows()
        parts.append((base.spann._vectors, slots))
        ids.append(live_ids)
    if moved.size:
        parts.append((vectors, None))
        ids.append(moved)
    all_ids = np.concatenate(ids)
    if all_ids.size == 0:
        return None
    from ..quant import SPANNIndex
    path = Path(storage_dir) / folder
    options = {"list_size": 64, **params}
    try:
        spann = SPANNIndex.build(path, _Rows(parts, dim), metric, ids=all_ids, progress=False, **options)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return SPANNMain(spann, folder)


def check_build_params(params: dict[str, Any], dim: int, metric: str) -> None:
    """Refuse bad SPANN build parameters when the collection is created, not at its first merge."""
    from ..quant.spann import check_build_options
    check_build_options(dim, metric, **params)
