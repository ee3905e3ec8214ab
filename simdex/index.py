"""The contract every simdex index keeps, and the shared plumbing behind it.

Every index -- dense or compressed vectors, texts and sparse vectors, sets, binary codes, multi-vector documents --
is a :class:`BaseIndex`. It maps non-negative int64 ids to the items it stores, and all verbs are batch-first:

- ``add(items, ids=None) -> ids``: a batch of n items of the family's input type (vectors, texts or token lists,
  MinHash signatures, packed codes, vector sets); ids default to the next free integers (one above the largest);
- ``len(index)`` (also ``ntotal``), ``index.ids`` (int64), ``id in index``;
- ``remove(ids) -> int``: unknown ids raise :class:`~simdex.errors.UnknownIdError` and nothing is removed; removed
  ids are never returned again;
- ``save(path)`` / ``Cls.load(path, mmap=True, verify=True)``, and :func:`load`, which loads any kind of index
  file in any process (the module defining the kind is imported on demand: :func:`index_class`);
- ``nbytes``: the bytes the index holds in memory;
- validation by :mod:`simdex._validate`: every bad input raises a :class:`~simdex.errors.SimdexError` subclass that
  names the problem, and a call that raises leaves the index exactly as it was.

Each family has its own query verb (``search``, or ``query`` for the LSH tables). What a family cannot do it
refuses with :class:`~simdex.errors.UnsupportedOperationError`, whose message says what to do instead: a build-once
:class:`~simdex.quant.SPANNIndex` refuses ``add`` and ``remove``; :class:`~simdex.sets.LSHBloom` refuses
``remove`` and chosen ids (its ids are insertion positions); :class:`~simdex.quant.StreamingVamanaIndex` refuses
``save`` and ``load`` (its two parts are saved apart). ``tests/test_conformance.py`` checks every family against
this contract.

Vector indexes are :class:`Index` subclasses, created with ``dim`` and ``metric``, and also provide:

- ``search(queries, k, filter=None, threads=None) -> (distances, ids)``: both of shape (nq, k), nearest first;
  when fewer than k vectors are allowed by ``filter`` the rest of the row is distance ``inf`` and id ``-1``;
- ``get_vectors(ids) -> (n, dim) float32`` (for ``cosine`` the stored, unit-length vectors).
"""

from __future__ import annotations

import abc
import importlib
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import fileformat
from ._validate import check_dim, check_ids, check_k, check_metric, check_threads, check_vectors
from .errors import CorruptFileError, InvalidInputError, UnknownKindError, UnsupportedOperationError
from .idmap import IdMap
from .metrics import METRIC_CODES, public_results

# The module that defines each kind of index. ``index_class`` (and so :func:`load`) imports it on first need, so
# a file loads in a fresh process whatever has been imported so far, and a package can name a kind that a
# package above it defines without importing it. A new kind is listed here (tests/test_layering.py checks it).
KIND_MODULES: dict[str, str] = {
    "FlatIndex": "simdex.dense.flat", "HNSWIndex": "simdex.dense.hnsw", "LabelIndex": "simdex.dense.labels",
    "VamanaIndex": "simdex.dense.vamana", "WindowIndex": "simdex.dense.window",
    "HNSWQuantIndex": "simdex.quant.hnsw", "IVFIndex": "simdex.quant.ivf",
    "MatryoshkaIndex": "simdex.quant.matryoshka", "SPANNIndex": "simdex.quant.spann",
    "VamanaDiskIndex": "simdex.quant.vamana", "StreamingVamanaIndex": "simdex.quant.vamana",
    "RaBitQGraphIndex": "simdex.quant.qgraph", "SparseIndex": "simdex.sparse.index",
    "MinHashLSH": "simdex.sets.lsh", "LSHBloom": "simdex.sets.bloom", "SimHashLSH": "simdex.sets.simhash",
    "HammingIndex": "simdex.sets.simhash",
    "MultiVectorIndex": "simdex.multivector.index",
}
_REGISTRY: dict[str, type[BaseIndex]] = {}
# an index kept as a folder (SPANN) has its header, and so its kind, in this file of the folder
FOLDER_HEADER = "index.sdx"


def index_class(kind: Any) -> type[BaseIndex] | None:
    """The class of an index kind (``"IVFIndex"`` -> :class:`~simdex.quant.IVFIndex`), importing the module that
    defines it on first use; None for a kind this simdex version does not know."""
    if not isinstance(kind, str):
        return None
    if kind not in _REGISTRY and kind in KIND_MODULES:
        importlib.import_module(KIND_MODULES[kind])
    return _REGISTRY.get(kind)


def deprecated_alias(name: str) -> property:
    """A read-only property that returns attribute ``name`` with a DeprecationWarning (for a renamed attribute)."""
    def get(self: Any) -> Any:
        warnings.warn(f"{type(self).__name__}: this attribute is deprecated, use {name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(self, name)
    return property(get, doc=f"Deprecated alias of :attr:`{name}`.")


class BaseIndex(abc.ABC):
    """Abstract base of every simdex index: the contract in the module docstring.

    Subclasses keep their ids in ``self._idmap`` (an :class:`~simdex.idmap.IdMap`) or override ``__len__``,
    ``ids`` and ``__contains__``; they persist through :meth:`_state` / :meth:`_from_state` or override
    :meth:`save` and :meth:`load`.
    """

    kind: ClassVar[str] = "BaseIndex"
    _idmap: IdMap

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # a subclass without a kind of its own saves (and loads) as its parent's kind
            _REGISTRY[cls.kind] = cls

    # ---- ids -----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._idmap)

    @property
    def ntotal(self) -> int:
        """Number of (live) items in the index."""
        return len(self)

    @property
    def ids(self) -> np.ndarray:
        """The ids in the index (a copy), in storage order."""
        return self._idmap.live_ids()

    def __contains__(self, id_: int) -> bool:
        return bool(self._idmap.lookup(np.array([id_], np.int64))[0] >= 0)

    def _new_ids(self, n: int, ids: Any) -> np.ndarray:
        """Ids for ``n`` new items: ``ids`` validated (non-negative, unique, not in the index yet) or, by default,
        the next free integers."""
        if ids is None:
            return self._idmap.new_ids(n)
        new_ids = check_ids(ids, n)
        self._idmap.check_absent(new_ids)
        return new_ids

    # ---- the verbs -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def add(self, items: Any, ids: Any = None) -> np.ndarray:
        """Add a batch of items; returns their int64 ids."""

    @abc.abstractmethod
    def remove(self, ids: Any) -> int:
        """Remove items by id; unknown ids raise and nothing is removed. Returns the number removed."""

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes the index holds in memory."""

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Scalars (JSON-serialisable) and arrays that fully describe the index."""
        raise UnsupportedOperationError(f"{type(self).__name__} cannot be saved to a file")

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> BaseIndex:
        """Rebuild an index from :meth:`_state`'s output. Must validate what it reads: CorruptFileError, or
        KeyError / TypeError / ValueError / IndexError, which :meth:`load` reports as a corrupt file."""
        raise UnsupportedOperationError(f"{cls.__name__} cannot be loaded from a file")

    @classmethod
    def _restore(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> BaseIndex:
        """The checked index of a file's (meta, arrays): what :meth:`load` returns, and what an index that saves
        others inside its own file rebuilds them with."""
        return cls._from_state(meta, arrays)

    # arrays that later calls change in place (not just replace); a snapshot copies them
    _volatile_arrays: ClassVar[tuple[str, ...]] = ()

    def snapshot(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        """A consistent picture of the index for :func:`write_snapshot`, cheap to take under a lock: arrays that
        are changed in place later are copied, the others are shared (they are only ever replaced)."""
        meta, arrays = self._state()
        arrays = dict(arrays)
        for name in self._volatile_arrays:
            arrays[name] = arrays[name].copy()
        return self.kind, meta, arrays

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` (atomically: a crash leaves the old file or the new one)."""
        write_snapshot(path, self.snapshot())

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> BaseIndex:
        """Load an index saved with :meth:`save`.

        With ``mmap`` the large arrays stay memory-mapped (read-only, shared between processes) until the first
        change to the index, which copies them into memory. ``verify`` checks every checksum.
        ``Index.load`` (like :func:`simdex.load`) returns whatever kind of index the file holds, importing the
        module that defines it; ``HNSWIndex.load`` insists on that kind.
        """
        if inspect.isabstract(cls):
            kind = fileformat.read_kind(Path(path) / FOLDER_HEADER if Path(path).is_dir() else path)
            target = index_class(kind)
            if target is None:
                raise UnknownKindError(f"{path}: index kind {kind!r} is not known to this simdex version (the file "
                                       f"was written by a newer simdex, or by a plugin that is not installed)")
            if not issubclass(target, cls):
                raise CorruptFileError(f"{path}: file holds a {kind}, not a {cls.__name__}")
            return target.load(path, mmap=mmap, verify=verify)
        _, meta, arrays = fileformat.load_arrays(path, mmap=mmap, verify=verify, expected_kind=cls.kind)
        try:
            return cls._restore(meta, arrays)
        except CorruptFileError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise CorruptFileError(f"{path}: inconsistent {cls.kind} file ({exc!r})") from None


class Index(BaseIndex):
    """Abstract base class of the vector indexes (see the module docstring)."""

    kind: ClassVar[str] = "Index"

    def __init__(self, dim: int, metric: str = "l2") -> None:
        self.dim = check_dim(dim)
        self.metric = check_metric(metric)
        self._metric_code = METRIC_CODES[self.metric]
        self._idmap = IdMap()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}, ntotal={self.ntotal})"

    # ---- shared validation ---------------------------------------------------------------------------------------
    def _check_add(self, vectors: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        x = check_vectors(vectors, self.dim, normalize=self.metric == "cosine")
        return x, self._new_ids(x.shape[0], ids)

    def _check_search(self, queries: Any, k: Any, filter: Any, threads: Any
                      ) -> tuple[np.ndarray, int, np.ndarray | None, int | None]:
        q = check_vectors(queries, self.dim, "queries", normalize=self.metric == "cosine")
        n = self.ntotal
        if n == 0:
            raise InvalidInputError("the index is empty; add vectors before searching")
        k = check_k(k, n)
        threads = check_threads(threads)
        allowed = None if filter is None else self._idmap.allowed_mask(filter)
        return q, k, allowed, threads

    def _results(self, internal: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The public ``(distances, ids)`` of a search kernel's internal distances and slots (nq, k), converted in
        place (:func:`simdex.metrics.public_results`)."""
        return public_results(self._metric_code, internal, slots, self._idmap.slot_ids)

    def _slots_for_removal(self, ids: Any) -> np.ndarray:
        return self._idmap.slots_of(check_ids(ids))

    def _tombstone(self, slots: np.ndarray) -> None:
        """Mark slots removed (caller holds the write lock): searches skip them from now on and their ids are
        free again; the index's ``consolidate`` reclaims the space. For indexes with a ``_deleted`` byte array."""
        self._materialize()
        self._deleted[slots] = 1
        self._n_deleted += int(slots.shape[0])
        self._idmap.release(slots)

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

    @classmethod
    def _restore(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Index:
        index = cls._from_state(meta, arrays)
        index._idmap = IdMap(arrays["slot_ids"])
        index._check_loaded()
        return index

    def snapshot(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        kind, meta, arrays = super().snapshot()
        return kind, {"dim": self.dim, "metric": self.metric, **meta}, \
            {"slot_ids": self._idmap.slot_ids.copy(), **arrays}

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


def load(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> BaseIndex:
    """Load any simdex index file (or index folder), whatever kind of index it holds, in any process."""
    return BaseIndex.load(path, mmap=mmap, verify=verify)


def sub_arrays(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays saved under ``prefix + "."`` (by an index that saves others inside its own file), unprefixed."""
    p = prefix + "."
    return {name[len(p):]: arr for name, arr in arrays.items() if name.startswith(p)}


def meta_int(meta: dict[str, Any], key: str, minimum: int = 0) -> int:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CorruptFileError(f"bad value for {key!r} in file header: {value!r}")
    return value
