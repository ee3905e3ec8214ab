"""Exact (brute-force) index: the reference every approximate index is checked against."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._numba import num_threads
from ..index import Index, meta_int
from ..core.exact import exact_knn, exact_knn_subset


class FlatIndex(Index):
    """Exact k-NN by blocked BLAS distance computation and heap k-selection.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"l2", "ip", "cosine"}
        See :mod:`simdex.metrics` for the distance conventions.

    Memory is ``4 * dim + 12`` bytes per vector plus the id index. Search costs O(nq * n * dim) and uses at most
    64 MiB of scratch space whatever the sizes.
    """

    kind = "FlatIndex"

    def __init__(self, dim: int, metric: str = "l2") -> None:
        super().__init__(dim, metric)
        self._n = 0
        # storage grows by 1.5x so that a stream of small adds costs amortised O(1) per vector
        self._store = np.empty((0, self.dim), np.float32)
        self._sqnorm_store = np.empty(0, np.float32)

    @property
    def _vectors(self) -> np.ndarray:
        return self._store[:self._n]

    @property
    def _sqnorms(self) -> np.ndarray:
        return self._sqnorm_store[:self._n]

    def _num_slots(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return int(self._store.nbytes + self._sqnorm_store.nbytes + self._idmap.nbytes)

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        x, new_ids = self._check_add(vectors, ids)
        self._append(x, new_ids)
        return new_ids

    def add_validated(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Append rows that the caller has already validated (float32 (n, dim), finite, unit length for cosine)
        under new int64 ids: the database's write path, which checks each batch once before logging it."""
        ids = np.asarray(ids, np.int64)
        self._idmap.check_absent(ids)
        self._append(np.asarray(vectors, np.float32), ids)

    def _append(self, x: np.ndarray, new_ids: np.ndarray) -> None:
        need = self._n + x.shape[0]
        if need > self._store.shape[0] or not self._store.flags.writeable:
            cap = max(need, self._store.shape[0] + self._store.shape[0] // 2)
            store = np.empty((cap, self.dim), np.float32)
            store[:self._n] = self._vectors
            sq = np.empty(cap, np.float32)
            sq[:self._n] = self._sqnorms
            self._store, self._sqnorm_store = store, sq
        self._store[self._n:need] = x
        self._sqnorm_store[self._n:need] = np.einsum("ij,ij->i", x, x)
        self._n = need
        self._idmap.append(new_ids)

    def search(self, queries: Any, k: int, *, filter: Any = None, threads: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        q, k, allowed, threads = self._check_search(queries, k, filter, threads)
        with num_threads(threads):
            if allowed is None:
                dist, rows = exact_knn(self.metric, q, self._vectors, k, self._sqnorms)
                slots = rows
            else:
                dist, slots = exact_knn_subset(self.metric, q, self._vectors, allowed, k, self._sqnorms)
        return self._results(dist, slots)

    def remove(self, ids: Any) -> int:
        slots = self._slots_for_removal(ids)
        self._idmap.release(slots)
        keep = self._idmap.compact() >= 0
        vectors, sqnorms = self._vectors[keep], self._sqnorms[keep]
        self._store, self._sqnorm_store, self._n = vectors, sqnorms, vectors.shape[0]
        return int(slots.shape[0])

    def get_vectors(self, ids: Any) -> np.ndarray:
        return np.array(self._vectors[self._slots_for_removal(ids)])

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,), vectors (n, dim)) of every vector, in the same order: a copy of the ids and a view of the
        vectors, not a copy. Stored rows are never changed in place (an add writes after them, a removal compacts
        into new arrays), so the view keeps what it shows while the index changes."""
        return np.array(self._idmap.slot_ids[:self._n]), self._vectors

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"count": self._vectors.shape[0]}, {"vectors": self._vectors}

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FlatIndex:
        index = cls(meta_int(meta, "dim", 1), meta["metric"])
        vectors = arrays["vectors"]
        if vectors.dtype != np.float32 or vectors.shape != (meta_int(meta, "count"), index.dim):
            raise ValueError("vectors array has the wrong dtype or shape")
        index._store = vectors
        index._sqnorm_store = np.einsum("ij,ij->i", vectors, vectors)
        index._n = vectors.shape[0]
        return index
