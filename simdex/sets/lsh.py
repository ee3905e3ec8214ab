"""MinHash LSH: banded hash tables over MinHash signatures for Jaccard threshold search.

A signature of ``num_perm`` values is cut into ``b`` bands of ``r`` values; two sets become candidates when any
band matches, which happens with probability ``1 - (1 - s^r)^b`` at Jaccard ``s``. :func:`optimal_params` picks
(b, r) minimising ``w_fp * FP + w_fn * FN`` where FP and FN integrate that curve below and above the threshold
(the method of datasketch's ``_optimal_param``).

Storage is flat: band keys (n, b) uint64 per slot, and per band the keys sorted with their slots for binary
search. New slots go to an unsorted tail that queries scan linearly, merged into the sorted part when it grows
past a quarter of it, so interleaved insert/query stays amortised O(log n) per lookup.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._numba import num_threads
from .._validate import check_ids, check_int, check_positive_int, check_signatures, check_threads
from ..errors import InvalidInputError, InvalidTypeError
from ..idmap import IdMap
from ..index import BaseIndex, deprecated_alias
from . import _lsh_kernels as LK
from . import _minhash_kernels as MK
from ._hashing import derive_seed
from .minhash import MAX_NUM_PERM

_MIN_TAIL = 1024


def _integrate(f, a: float, b: float, steps: int = 1000) -> float:
    if b <= a:
        return 0.0
    x = np.linspace(a, b, steps + 1)
    y = f(x)
    return float(np.sum((y[1:] + y[:-1]) * 0.5) * (b - a) / steps)


# The defaults of every banded-LSH entry point (MinHashLSH, LSHBloom, deduplicate, ``simdex dedup``), kept here once.
# The banding is weighted towards recall: a false positive costs one exact check (or, in LSHBloom, one document
# dropped that the fp_rate budget already allows for), while a false negative is a duplicate missed for good. At
# t = 0.8 and 128 values this gives 16 bands of 8 rows: P(candidate) = 0.95 at J = 0.8 and 0.99 at J = 0.85, where
# balanced weights (datasketch's default) give 9 x 13 and P = 0.40 at J = 0.8.
DEFAULT_THRESHOLD = 0.8
DEFAULT_NUM_PERM = 128
DEFAULT_WEIGHTS = (0.05, 0.95)


def false_positive_area(threshold: float, b: int, r: int) -> float:
    return _integrate(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)


def false_negative_area(threshold: float, b: int, r: int) -> float:
    return _integrate(lambda s: (1 - s ** float(r)) ** float(b), threshold, 1.0)


def check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise InvalidTypeError(f"threshold must be a number in (0, 1); got {threshold!r}")
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise InvalidInputError(f"threshold must be in the open interval (0, 1); got {t}")
    return t


def check_weights(weights: Any) -> tuple[float, float]:
    try:
        w_fp, w_fn = (float(w) for w in weights)
    except (TypeError, ValueError):
        raise InvalidInputError(f"weights must be a pair (false_positive_weight, false_negative_weight); "
                                f"got {weights!r}") from None
    if not (np.isfinite(w_fp) and np.isfinite(w_fn)) or w_fp < 0 or w_fn < 0 or w_fp + w_fn <= 0:
        raise InvalidInputError(f"weights must be two non-negative numbers, not both zero; got {weights!r}")
    return w_fp, w_fn


@functools.lru_cache(maxsize=256)
def optimal_params(threshold: float, num_perm: int, weights: tuple[float, float] = DEFAULT_WEIGHTS) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false positive/negative areas."""
    threshold = check_threshold(threshold)
    num_perm = check_positive_int(num_perm, "num_perm", maximum=MAX_NUM_PERM)
    w_fp, w_fn = check_weights(weights)
    best, best_err = (1, 1), np.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = w_fp * false_positive_area(threshold, b, r) + w_fn * false_negative_area(threshold, b, r)
            if err < best_err:
                best, best_err = (b, r), err
    return best


class Banding:
    """The (bands, rows) split of a signature and the seeded hash of each band to a 64-bit key."""

    def __init__(self, threshold: float, num_perm: int, weights: Any = DEFAULT_WEIGHTS, params: Any = None,
                 seed: int = 1) -> None:
        self.threshold = check_threshold(threshold)
        self.num_perm = check_positive_int(num_perm, "num_perm", maximum=MAX_NUM_PERM)
        self.weights = check_weights(weights)
        if params is None:
            self.bands, self.rows = optimal_params(self.threshold, self.num_perm, self.weights)
        else:
            try:
                b, r = params
            except (TypeError, ValueError):
                raise InvalidInputError(f"params must be a pair (bands, rows); got {params!r}") from None
            self.bands, self.rows = check_positive_int(b, "bands"), check_positive_int(r, "rows")
            if self.bands * self.rows > self.num_perm:
                raise InvalidInputError(f"bands * rows = {self.bands * self.rows} exceeds num_perm={self.num_perm}")
        self.seed = check_int(seed, "seed")
        self._key_seed = derive_seed(self.seed, 20)

    def keys(self, signatures: Any, threads: int | None = None) -> np.ndarray:
        """Band keys uint64 (n, bands) of signatures (n, num_perm)."""
        sig = check_signatures(signatures, self.num_perm)
        out = np.empty((sig.shape[0], self.bands), np.uint64)
        with num_threads(threads):
            MK.band_keys(sig, self.bands, self.rows, self._key_seed, out)
        return out

    def candidate_probability(self, s: Any) -> np.ndarray:
        """Probability that two sets of Jaccard similarity ``s`` share at least one band."""
        return 1 - (1 - np.asarray(s, np.float64) ** self.rows) ** self.bands

    def _meta(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "num_perm": self.num_perm, "weights": list(self.weights),
                "bands": self.bands, "rows": self.rows, "seed": self.seed}


class MinHashLSH(BaseIndex):
    """Index of MinHash signatures answering "which stored sets probably have Jaccard >= threshold with this one".

    Parameters: ``threshold`` in (0, 1); ``num_perm``: signature length (must match the signatures);
    ``weights=(w_fp, w_fn)`` for the parameter choice, or explicit ``params=(bands, rows)``. The defaults
    (threshold 0.8, 128 values, weights 0.05/0.95) are shared by every LSH entry point: :data:`DEFAULT_WEIGHTS`.

    Verbs are batch-first (the index contract of :mod:`simdex.index`): ``insert(signatures, ids=None) -> ids``
    (also named ``add``), ``query(signatures) -> (indptr, ids)`` (CSR: candidates of query i are
    ``ids[indptr[i]:indptr[i+1]]``, ascending), ``remove(ids)``, ``candidate_pairs()`` for a self-join,
    ``save(path)`` / ``MinHashLSH.load(path)``. Memory: 16 bytes per band per set plus the id map (see
    :attr:`nbytes`). A call that raises leaves the index unchanged.
    """

    kind = "MinHashLSH"

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, num_perm: int = DEFAULT_NUM_PERM,
                 weights: Any = DEFAULT_WEIGHTS, *,
                 params: Any = None, seed: int = 1) -> None:
        self.banding = Banding(threshold, num_perm, weights, params, seed)
        self._idmap = IdMap()
        self._key_buffer = np.empty((0, self.banding.bands), np.uint64)  # per slot; rows past _n_keys are spare
        self._n_keys = 0
        self._n_sorted = 0
        self._sorted_keys = np.empty((self.banding.bands, 0), np.uint64)
        self._sorted_slots = np.empty((self.banding.bands, 0), np.int64)
        self._sorted_tail: tuple[np.ndarray, np.ndarray] | None = None  # the tail's own sorted run, until it grows

    @property
    def _keys(self) -> np.ndarray:
        return self._key_buffer[:self._n_keys]

    @_keys.setter
    def _keys(self, keys: np.ndarray) -> None:
        self._key_buffer = np.ascontiguousarray(keys, np.uint64)
        self._n_keys = keys.shape[0]
        self._sorted_tail = None

    # ---- introspection -------------------------------------------------------------------------------------------
    threshold = property(lambda self: self.banding.threshold)
    num_perm = property(lambda self: self.banding.num_perm)
    bands = property(lambda self: self.banding.bands)
    rows = property(lambda self: self.banding.rows)

    def __repr__(self) -> str:
        return (f"MinHashLSH(threshold={self.threshold}, num_perm={self.num_perm}, bands={self.bands}, "
                f"rows={self.rows}, size={len(self)})")

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (keys, sorted keys and slots, id map)."""
        idm = self._idmap
        tail = sum(a.nbytes for a in self._sorted_tail) if self._sorted_tail is not None else 0
        return int(self._key_buffer.nbytes + tail + self._sorted_keys.nbytes + self._sorted_slots.nbytes
                   + idm.nbytes)

    memory_bytes = deprecated_alias("nbytes")

    # ---- verbs ---------------------------------------------------------------------------------------------------
    def insert(self, signatures: Any, ids: Any = None, *, threads: int | None = None) -> np.ndarray:
        """Add signatures (n, num_perm); ``ids`` default to the next free integers. Returns the int64 ids."""
        threads = check_threads(threads)
        keys = self.banding.keys(signatures, threads)
        new_ids = self._new_ids(keys.shape[0], ids)
        self.insert_keys(keys, new_ids, threads=threads)
        return new_ids

    add = insert

    def insert_keys(self, keys: np.ndarray, ids: np.ndarray, *, threads: int | None = None) -> None:
        """Add precomputed band keys (n, bands) uint64 with new, unique int64 ids (validated by the caller)."""
        n, grow = self._n_keys, keys.shape[0]
        if n + grow > self._key_buffer.shape[0]:  # amortised growth: a stream of small batches stays linear
            bigger = np.empty((max(n + grow, 2 * n), self.bands), np.uint64)
            bigger[:n] = self._key_buffer[:n]
            self._key_buffer = bigger
        self._key_buffer[n:n + grow] = keys
        self._n_keys = n + grow
        self._sorted_tail = None
        self._idmap.append(ids)
        if self._keys.shape[0] - self._n_sorted > max(_MIN_TAIL, self._n_sorted // 4):
            self._merge_tail()

    @staticmethod
    def _sorted_run(keys: np.ndarray, first_slot: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows ``keys`` (of slots ``first_slot``...) as one sorted run per band: (keys, slots), (bands, n)."""
        # numpy's introsort (SIMD-accelerated in recent numpy) beats a jitted argsort several times over here
        order = np.argsort(keys.T, axis=1)
        return np.take_along_axis(keys.T, order, axis=1), order.astype(np.int64, copy=False) + first_slot

    def _merge_tail(self) -> None:
        self._sorted_keys, self._sorted_slots = self._sorted_run(self._keys, 0)
        self._n_sorted = self._keys.shape[0]
        self._sorted_tail = None

    def _tail_run(self) -> tuple[np.ndarray, np.ndarray]:
        """The keys added since the last merge as a second sorted run per band (with absolute slots), so that a
        lookup is a binary search in both runs; sorted again only after the tail grew."""
        if self._sorted_tail is None:
            self._sorted_tail = self._sorted_run(self._keys[self._n_sorted:], self._n_sorted)
        return self._sorted_tail

    def query(self, signatures: Any, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidates sharing a band with each query signature: ``(indptr int64 (nq+1,), ids int64)``."""
        threads = check_threads(threads)
        return self.query_keys(self.banding.keys(signatures, threads), threads=threads)

    def query_keys(self, qkeys: np.ndarray, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        nq = qkeys.shape[0]
        alive = self._idmap.slot_ids >= 0
        tail_keys, tail_slots = self._tail_run()
        counts = np.empty(nq, np.int64)
        with num_threads(threads):
            LK.count_candidates(qkeys, self._sorted_keys, self._sorted_slots, tail_keys, tail_slots, alive, counts)
            indptr = np.zeros(nq + 1, np.int64)
            np.cumsum(counts, out=indptr[1:])
            slots = np.empty(int(indptr[-1]), np.int64)
            uniq = np.empty(nq, np.int64)
            LK.fill_candidates(qkeys, self._sorted_keys, self._sorted_slots, tail_keys, tail_slots, alive, indptr,
                               slots, uniq)
        # each query's run holds its unique candidates first (fill_candidates compacts in place); drop the rest
        offset_in_run = np.arange(slots.shape[0]) - np.repeat(indptr[:-1], counts)
        mask = offset_in_run < np.repeat(uniq, counts)
        out_indptr = np.zeros(nq + 1, np.int64)
        np.cumsum(uniq, out=out_indptr[1:])
        ids = self._idmap.slot_ids[slots[mask]]
        return out_indptr, ids

    def remove(self, ids: Any) -> int:
        """Remove sets by id; unknown ids raise and nothing is removed. Returns the number removed."""
        slots = self._idmap.slots_of(check_ids(ids))
        self._idmap.release(slots)
        if self._idmap.num_slots > 2 * max(len(self), _MIN_TAIL):
            self._compact()
        return int(slots.shape[0])

    def _compact(self) -> None:
        live = self._idmap.slot_ids >= 0
        self._keys = self._keys[live]
        self._idmap.compact()
        self._n_sorted = 0
        self._merge_tail()

    def candidate_pairs(self, *, max_bucket: int = 2000) -> np.ndarray:
        """All distinct id pairs (m, 2) sharing a band, smaller id first. Buckets with more than ``max_bucket``
        members contribute only the pairs of their first member (still connecting them all)."""
        max_bucket = min(check_positive_int(max_bucket, "max_bucket"), np.iinfo(np.int64).max)
        if self._n_sorted < self._keys.shape[0]:
            self._merge_tail()
        alive = self._idmap.slot_ids >= 0
        empty = np.empty((0, 2), np.int64)
        n = LK.bucket_pairs(self._sorted_keys, self._sorted_slots, alive, max_bucket, empty, True)
        pairs = np.empty((n, 2), np.int64)
        LK.bucket_pairs(self._sorted_keys, self._sorted_slots, alive, max_bucket, pairs, False)
        pairs = self._idmap.slot_ids[pairs]
        pairs.sort(axis=1)
        return np.unique(pairs, axis=0) if pairs.shape[0] else pairs

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        live = self._idmap.slot_ids >= 0  # removed slots are not saved
        return self.banding._meta(), {"keys": self._keys[live], "ids": self._idmap.slot_ids[live]}

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> MinHashLSH:
        index = cls(meta["threshold"], meta["num_perm"], tuple(meta["weights"]), params=(meta["bands"], meta["rows"]),
                    seed=meta["seed"])
        keys, ids = arrays["keys"], arrays["ids"]
        if keys.dtype != np.uint64 or keys.ndim != 2 or keys.shape[1] != index.bands \
                or ids.shape != (keys.shape[0],) or ids.dtype != np.int64:
            raise ValueError("keys/ids arrays have the wrong dtype or shape")
        index._keys = np.array(keys)
        index._idmap = IdMap(check_ids(ids, keys.shape[0]))  # a copy: removal changes it in place
        index._merge_tail()
        return index
