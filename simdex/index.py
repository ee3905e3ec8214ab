"""The interface every simdex index implements, and the shared plumbing behind it.

An index maps non-negative int64 ids to vectors. All verbs are batch-first:

- ``add(vectors, ids=None) -> ids``: ``vectors`` has shape (n, dim); ids default to the next free integers.
- ``search(queries, k, filter=None, threads=None) -> (distances, ids)``: both of shape (nq, k), nearest first;
  when fewer than k vectors are allowed by ``filter`` the rest of the row is distance ``inf`` and id ``-1``.
- ``remove(ids) -> int``: removed ids are never returned again.
- ``get_vectors(ids) -> (n, dim) float32`` (for ``cosine`` the stored, unit-length vectors).
- ``save(path)`` / ``load(path, mmap=True)`` in the format of :mod:`simdex.fileformat`.

A call that raises leaves the index exactly as it was.
"""

from __future__ import annotations

import abc
import os
from typing import Any, ClassVar

import numpy as np

from . import fileformat
from ._validate import check_dim, check_ids, check_k, check_metric, check_threads, check_vectors
from .errors import CorruptFileError, InvalidInputError
from .idmap import IdMap
from .metrics import METRIC_CODES

_REGISTRY: dict[str, type[Index]] = {}


class Index(abc.ABC):
    """Abstract base class of all vector indexes."""

    kind: ClassVar[str] = "Index"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.kind] = cls

    def __init__(self, dim: int, metric: str = "l2") -> None:
        self.dim = check_dim(dim)
        self.metric = check_metric(metric)
        self._metric_code = METRIC_CODES[self.metric]
        self._idmap = IdMap()

    # ---- introspection -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._idmap)

    @property
    def ntotal(self) -> int:
        """Number of (live) vectors in the index."""
        return len(self._idmap)

    @property
    def ids(self) -> np.ndarray:
        """The ids in the index (a copy), in storage order."""
        return self._idmap.live_ids()

    def __contains__(self, id_: int) -> bool:
        return bool(self._idmap.lookup(np.array([id_], np.int64))[0] >= 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}, ntotal={self.ntotal})"

    # ---- shared validation ---------------------------------------------------------------------------------------
    def _check_add(self, vectors: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        x = check_vectors(vectors, self.dim, normalize=self.metric == "cosine")
        if ids is None:
            new_ids = self._idmap.new_ids(x.shape[0])
        else:
            new_ids = check_ids(ids, x.shape[0])
            self._idmap.check_absent(new_ids)
        return x, new_ids

    def _check_search(self, queries: Any, k: Any, filter: Any, threads: Any
                      ) -> tuple[np.ndarray, int, np.ndarray | None, int | None]:
        q = check_vectors(queries, self.dim, "queries", normalize=self.metric == "cosine")
        if self.ntotal == 0:
            raise InvalidInputError("the index is empty; add vectors before searching")
        k = check_k(k, self.ntotal)
        threads = check_threads(threads)
        allowed = None if filter is None else self._idmap.allowed_mask(filter)
        return q, k, allowed, threads

    def _slots_for_removal(self, ids: Any) -> np.ndarray:
        return self._idmap.slots_of(check_ids(ids))

    # ---- the verbs -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Add vectors (n, dim); returns their int64 ids."""

    @abc.abstractmethod
    def search(self, queries: Any, k: int, *, filter: Any = None, threads: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query: (distances float32 (nq, k), ids int64 (nq, k))."""

    @abc.abstractmethod
    def remove(self, ids: Any) -> int:
        """Remove vectors by id; unknown ids raise and nothing is removed. Returns the number removed."""

    @abc.abstractmethod
    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored vectors of ``ids`` as (n, dim) float32."""

    # ---- persistence ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Scalars (JSON-serialisable) and arrays that fully describe the index."""

    @classmethod
    @abc.abstractmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Index:
        """Rebuild an index from :meth:`_state`'s output. Must validate what it reads."""

    # arrays that later calls change in place (not just replace); a snapshot copies them
    _volatile_arrays: ClassVar[tuple[str, ...]] = ()

    def snapshot(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        """A consistent picture of the index for :func:`write_snapshot`, cheap to take under a lock: arrays that
        are changed in place later are copied, the others are shared (they are only ever replaced)."""
        meta, arrays = self._state()
        meta = {"dim": self.dim, "metric": self.metric, **meta}
        arrays = {"slot_ids": self._idmap.slot_ids.copy(), **arrays}
        for name in self._volatile_arrays:
            arrays[name] = arrays[name].copy()
        return self.kind, meta, arrays

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` (atomically: a crash leaves the old file or the new one)."""
        write_snapshot(path, self.snapshot())

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> Index:
        """Load an index saved with :meth:`save`.

        With ``mmap`` the large arrays stay memory-mapped (read-only, shared between processes) until the first
        change to the index, which copies them into memory. ``verify`` checks every checksum.
        ``Index.load`` returns whatever kind of index the file holds; ``HNSWIndex.load`` insists on that kind.
        """
        expected = None if cls is Index else cls.kind
        kind, meta, arrays = fileformat.load_arrays(path, mmap=mmap, verify=verify, expected_kind=expected)
        target = _REGISTRY.get(kind)
        if target is None:
            raise CorruptFileError(f"{path}: unknown index kind {kind!r}")
        try:
            index = target._from_state(meta, arrays)
            index._idmap = IdMap(arrays["slot_ids"])
            index._check_loaded()
        except CorruptFileError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CorruptFileError(f"{path}: inconsistent index file ({exc!r})") from None
        return index

    def _check_loaded(self) -> None:
        """Consistency checks after loading; subclasses extend."""
        if self._idmap.num_slots != self._num_slots():
            raise CorruptFileError("slot_ids does not match the stored vectors")

    @abc.abstractmethod
    def _num_slots(self) -> int:
        """Rows in use in the vector storage (live and removed-but-not-compacted)."""


def write_snapshot(path: str | os.PathLike, snapshot: tuple[str, dict[str, Any], dict[str, np.ndarray]]) -> None:
    """Write an :meth:`Index.snapshot` to ``path`` in the index file format."""
    kind, meta, arrays = snapshot
    fileformat.save_arrays(path, kind, meta, arrays)


def load(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> Index:
    """Load any simdex index file."""
    return Index.load(path, mmap=mmap, verify=verify)


def meta_int(meta: dict[str, Any], key: str, minimum: int = 0) -> int:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CorruptFileError(f"bad value for {key!r} in file header: {value!r}")
    return value
