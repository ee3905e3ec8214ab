"""Exact (brute-force) index: the reference every approximate index is checked against."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._numba import num_threads
from ..index import Index, meta_int
from ..metrics import to_public
from ._exact import exact_knn, exact_knn_subset


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
        self._vectors = np.empty((0, self.dim), np.float32)
        self._sqnorms = np.empty(0, np.float32)

    def _num_slots(self) -> int:
        return self._vectors.shape[0]

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        x, new_ids = self._check_add(vectors, ids)
        self._vectors = np.concatenate([self._vectors, x])
        self._sqnorms = np.concatenate([self._sqnorms, np.einsum("ij,ij->i", x, x)])
        self._idmap.append(new_ids)
        return new_ids

    def search(self, queries: Any, k: int, *, filter: Any = None, threads: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        q, k, allowed, threads = self._check_search(queries, k, filter, threads)
        with num_threads(threads):
            if allowed is None:
                dist, rows = exact_knn(self.metric, q, self._vectors, k, self._sqnorms)
                slots = rows
            else:
                dist, slots = exact_knn_subset(self.metric, q, self._vectors, allowed, k, self._sqnorms)
        ids = np.where(slots >= 0, self._idmap.slot_ids[np.maximum(slots, 0)], -1)
        return to_public(self.metric, dist), ids

    def remove(self, ids: Any) -> int:
        slots = self._slots_for_removal(ids)
        self._idmap.release(slots)
        remap = self._idmap.compact()
        keep = remap >= 0
        self._vectors = self._vectors[keep]
        self._sqnorms = self._sqnorms[keep]
        return int(slots.shape[0])

    def get_vectors(self, ids: Any) -> np.ndarray:
        return np.array(self._vectors[self._slots_for_removal(ids)])

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"count": self._vectors.shape[0]}, {"vectors": self._vectors}

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FlatIndex:
        index = cls(meta_int(meta, "dim", 1), meta["metric"])
        vectors = arrays["vectors"]
        if vectors.dtype != np.float32 or vectors.shape != (meta_int(meta, "count"), index.dim):
            raise ValueError("vectors array has the wrong dtype or shape")
        index._vectors = vectors
        index._sqnorms = np.einsum("ij,ij->i", vectors, vectors)
        return index
