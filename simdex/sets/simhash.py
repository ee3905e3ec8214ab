"""Random-hyperplane LSH for cosine similarity (SimHash, Charikar 2002) and exact Hamming search on binary codes.

- :func:`simhash`: sign bits of projections on random Gaussian hyperplanes, packed into bytes (n, nbits / 8).
  Two vectors at angle theta differ in each bit with probability theta / pi.
- :class:`SimHashLSH`: an :class:`~simdex.Index` (metric ``cosine``) with L tables keyed by K sign bits each.
  A query probes its own bucket and the ``probes`` buckets reached by flipping the bits nearest their hyperplane
  (multi-probe), then re-ranks the candidates by exact cosine. Returns (distances, ids) like every index.
- :class:`HammingIndex`: brute-force k-NN by Hamming distance on packed codes (FAISS ``IndexBinaryFlat``-like).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._numba import num_threads
from .._validate import (MAX_DIM, MAX_RESULTS, check_codes, check_ids, check_k, check_positive_int, check_threads,
                         check_vectors)
from ..errors import InvalidInputError
from ..idmap import IdMap
from ..index import BaseIndex, Index, meta_int
from . import _simhash_kernels as SK


def _hyperplanes(dim: int, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 31]).standard_normal((dim, count)).astype(np.float32)


def simhash(vectors: Any, nbits: int = 64, *, seed: int = 0) -> np.ndarray:
    """SimHash codes of vectors (n, dim): uint8 (n, ceil(nbits / 8)), bit i of a vector = sign of its projection
    on hyperplane i (little-endian bit order within bytes). Equal ``seed`` and dim give comparable codes."""
    nbits = check_positive_int(nbits, "nbits")
    seed = check_positive_int(seed, "seed", minimum=0)
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise InvalidInputError(f"vectors must be a 2-D array (n, dim); got shape {x.shape}")
    x = check_vectors(x, x.shape[1], allow_empty=True)
    proj = x @ _hyperplanes(x.shape[1], nbits, seed)
    return np.packbits(proj > 0, axis=1, bitorder="little")


class SimHashLSH(Index):
    """Approximate cosine k-NN with random-hyperplane LSH tables and multi-probe.

    Parameters
    ----------
    dim : vector dimension.
    num_tables : L, number of hash tables (more: higher recall, more memory and candidates).
    bits_per_table : K <= 64, sign bits per table key (more: smaller buckets, fewer candidates).
    probes : extra buckets probed per table at query time (default; ``search(probes=...)`` overrides).
    seed : seeds the hyperplanes.

    Memory: ``4 * dim`` bytes per vector (kept for exact re-ranking) plus ``24 * L`` bytes per vector of keys.
    """

    kind = "SimHashLSH"

    def __init__(self, dim: int, num_tables: int = 16, bits_per_table: int = 10, probes: int = 8, *,
                 seed: int = 0) -> None:
        super().__init__(dim, "cosine")
        self.num_tables = check_positive_int(num_tables, "num_tables", maximum=1 << 12)
        self.bits_per_table = check_positive_int(bits_per_table, "bits_per_table")
        if self.bits_per_table > 64:
            raise InvalidInputError(f"bits_per_table must be <= 64; got {self.bits_per_table}")
        self.probes = check_positive_int(probes, "probes", minimum=0, maximum=MAX_RESULTS)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self._planes = _hyperplanes(self.dim, self.num_tables * self.bits_per_table, self.seed)
        self._vectors = np.empty((0, self.dim), np.float32)
        self._keys = np.empty((0, self.num_tables), np.uint64)
        self._rebuild_tables()

    def __repr__(self) -> str:
        return (f"SimHashLSH(dim={self.dim}, num_tables={self.num_tables}, bits_per_table={self.bits_per_table}, "
                f"probes={self.probes}, ntotal={self.ntotal})")

    def _num_slots(self) -> int:
        return self._vectors.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: vectors, hyperplanes, table keys and their sorted copies, ids."""
        arrays = (self._vectors, self._planes, self._keys, self._sorted_keys, self._sorted_slots)
        return int(sum(a.nbytes for a in arrays)) + self._idmap.nbytes

    def _table_keys(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        proj = np.ascontiguousarray(x @ self._planes)
        keys = np.empty((x.shape[0], self.num_tables), np.uint64)
        SK.table_keys(proj, self.num_tables, self.bits_per_table, keys)
        return proj, keys

    def _rebuild_tables(self) -> None:
        order = np.argsort(self._keys.T, axis=1)
        self._sorted_keys = np.ascontiguousarray(np.take_along_axis(self._keys.T, order, axis=1))
        self._sorted_slots = np.ascontiguousarray(order.astype(np.int64, copy=False))

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        x, new_ids = self._check_add(vectors, ids)
        _, keys = self._table_keys(x)
        self._vectors = np.concatenate([self._vectors, x])
        self._keys = np.concatenate([self._keys, keys])
        self._idmap.append(new_ids)
        self._rebuild_tables()
        return new_ids

    def search(self, queries: Any, k: int, *, filter: Any = None, threads: int | None = None,
               probes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest by cosine among the candidates: (distances float32 (nq, k) = 1 - cos, ids int64 (nq, k));
        id -1 and distance inf where fewer than k candidates were found."""
        q, k, allowed, threads = self._check_search(queries, k, filter, threads)
        probes = self.probes if probes is None else check_positive_int(probes, "probes", minimum=0,
                                                                       maximum=MAX_RESULTS)
        usable = (self._idmap.slot_ids >= 0).astype(np.uint8)
        if allowed is not None:
            usable &= allowed
        # enough low-margin bits that their subsets cover the wanted number of probes
        subset_bits = min(self.bits_per_table, max(1, math.ceil(math.log2(probes + 1)) + 1)) if probes else 1
        proj, _ = self._table_keys(q)
        dist = np.empty((q.shape[0], k), np.float32)
        slots = np.empty((q.shape[0], k), np.int64)
        with num_threads(threads):
            SK.lsh_search(q, proj, self.num_tables, self.bits_per_table, probes, subset_bits, self._sorted_keys,
                          self._sorted_slots, self._vectors, usable, k, dist, slots)
        ids = np.where(slots >= 0, self._idmap.slot_ids[np.maximum(slots, 0)], -1)
        return dist, ids

    def remove(self, ids: Any) -> int:
        slots = self._slots_for_removal(ids)
        self._idmap.release(slots)
        keep = self._idmap.compact() >= 0
        self._vectors = self._vectors[keep]
        self._keys = self._keys[keep]
        self._rebuild_tables()
        return int(slots.shape[0])

    def get_vectors(self, ids: Any) -> np.ndarray:
        return np.array(self._vectors[self._slots_for_removal(ids)])

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return ({"count": self._vectors.shape[0], "num_tables": self.num_tables,
                 "bits_per_table": self.bits_per_table, "probes": self.probes, "seed": self.seed},
                {"vectors": self._vectors, "planes": self._planes})

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> SimHashLSH:
        index = cls(meta_int(meta, "dim", 1), meta_int(meta, "num_tables", 1), meta_int(meta, "bits_per_table", 1),
                    meta_int(meta, "probes", 0), seed=int(meta["seed"]))
        vectors, planes = arrays["vectors"], arrays["planes"]
        if vectors.dtype != np.float32 or vectors.shape != (meta_int(meta, "count"), index.dim):
            raise ValueError("vectors array has the wrong dtype or shape")
        if planes.dtype != np.float32 or planes.shape != index._planes.shape:
            raise ValueError("planes array has the wrong dtype or shape")
        index._planes = np.array(planes)
        index._vectors = np.array(vectors)
        _, index._keys = index._table_keys(index._vectors)
        index._rebuild_tables()
        return index


class HammingIndex(BaseIndex):
    """Exact k-NN by Hamming distance over binary codes of ``nbits`` bits, given packed as uint8 (n, code_size)
    with ``code_size = ceil(nbits / 8)`` (e.g. from :func:`simhash` or ``np.packbits``). ``search`` returns
    (distances int32, ids int64), nearest first; missing results have id -1 and distance 2**31 - 1. Memory
    (:attr:`nbytes`): ``ceil(nbits / 64) * 8`` bytes per code plus the id map."""

    kind = "HammingIndex"

    def __init__(self, nbits: int) -> None:
        self.nbits = check_positive_int(nbits, "nbits", maximum=MAX_DIM)
        self.code_size = (self.nbits + 7) // 8
        self._words = (self.code_size + 7) // 8
        self._codes = np.empty((0, self._words), np.uint64)
        self._idmap = IdMap()

    def __repr__(self) -> str:
        return f"HammingIndex(nbits={self.nbits}, ntotal={self.ntotal})"

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the codes (padded to 64-bit words) and the id map."""
        idm = self._idmap
        return int(self._codes.nbytes + idm.nbytes)

    def _pack(self, codes: Any, name: str) -> np.ndarray:
        arr = check_codes(codes, self.code_size, name, single=True, allow_empty=False)
        padded = np.zeros((arr.shape[0], self._words * 8), np.uint8)
        padded[:, :self.code_size] = arr
        if self.nbits % 8:  # bits beyond nbits must not count
            padded[:, self.code_size - 1] &= np.uint8((1 << (self.nbits % 8)) - 1)
        return padded.view("<u8").astype(np.uint64)

    def add(self, codes: Any, ids: Any = None) -> np.ndarray:
        packed = self._pack(codes, "codes")
        new_ids = self._new_ids(packed.shape[0], ids)
        self._codes = np.concatenate([self._codes, packed])
        self._idmap.append(new_ids)
        return new_ids

    def search(self, queries: Any, k: int, *, filter: Any = None, threads: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query code: (distances int32 (nq, k), ids int64 (nq, k)). ``filter``: a
        boolean mask indexed by id or an array of allowed ids, as for every index."""
        q = self._pack(queries, "queries")
        if self.ntotal == 0:
            raise InvalidInputError("the index is empty; add codes before searching")
        k = check_k(k, self.ntotal)
        threads = check_threads(threads)
        usable = (self._idmap.slot_ids >= 0).astype(np.uint8)
        if filter is not None:
            usable &= self._idmap.allowed_mask(filter)
        dist = np.empty((q.shape[0], k), np.int32)
        slots = np.empty((q.shape[0], k), np.int64)
        with num_threads(threads):
            SK.hamming_knn(q, self._codes, usable, k, self._words * 64, dist, slots)
        ids = np.where(slots >= 0, self._idmap.slot_ids[np.maximum(slots, 0)], -1)
        return dist, ids

    def remove(self, ids: Any) -> int:
        slots = self._idmap.slots_of(check_ids(ids))
        self._idmap.release(slots)
        keep = self._idmap.compact() >= 0
        self._codes = self._codes[keep]
        return int(slots.shape[0])

    def get_codes(self, ids: Any) -> np.ndarray:
        slots = self._idmap.slots_of(check_ids(ids))
        return np.ascontiguousarray(self._codes[slots]).view(np.uint8)[:, :self.code_size].copy()

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"nbits": self.nbits}, {"codes": self._codes, "ids": self._idmap.slot_ids}

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> HammingIndex:
        index = cls(meta_int(meta, "nbits", 1))
        codes, ids = arrays["codes"], arrays["ids"]
        if codes.dtype != np.uint64 or codes.ndim != 2 or codes.shape[1] != index._words \
                or ids.shape != (codes.shape[0],):
            raise ValueError("codes/ids arrays have the wrong dtype or shape")
        index._codes = np.array(codes)
        index._idmap = IdMap(check_ids(ids, codes.shape[0]))
        return index
