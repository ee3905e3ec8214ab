"""Blocked exact k-NN: BLAS distance blocks and heap k-selection, never a full (nq, n) matrix in memory."""

from __future__ import annotations

import numpy as np

import numba

from .._heap import merge_block_topk, new_heaps, sort_heaps
from ..metrics import METRIC_CODES, pairwise
from .subset import subset_topk

# One distance block holds at most this many float32 entries (64 MiB).
BLOCK_ENTRIES = 1 << 24
# Up to this many queries, a filtered exact search scans the allowed rows in place instead of gathering them.
SCAN_MAX_QUERIES = 8


def exact_knn(metric: str, queries: np.ndarray, vectors: np.ndarray, k: int,
              sqnorms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``vectors`` for each query, internal distances.

    Returns (distances (nq, k) float32 ascending, row numbers (nq, k) int64); rows beyond ``len(vectors)`` are
    (inf, -1). Memory: O(nq * k + BLOCK_ENTRIES).
    """
    nq, n = queries.shape[0], vectors.shape[0]
    heap_d, heap_i = new_heaps(nq, k)
    if n == 0:
        return heap_d, heap_i
    if metric == "l2" and sqnorms is None:
        sqnorms = np.einsum("ij,ij->i", vectors, vectors)
    q_block = min(nq, 1024)
    n_block = max(256, min(n, BLOCK_ENTRIES // q_block))
    for qs in range(0, nq, q_block):
        qe = min(nq, qs + q_block)
        for ns in range(0, n, n_block):
            ne = min(n, ns + n_block)
            block = pairwise(metric, queries[qs:qe], vectors[ns:ne],
                             None if sqnorms is None else sqnorms[ns:ne])
            merge_block_topk(block, ns, heap_d[qs:qe], heap_i[qs:qe])
    sort_heaps(heap_d, heap_i)
    return heap_d, heap_i


def exact_knn_subset(metric: str, queries: np.ndarray, vectors: np.ndarray, allowed: np.ndarray, k: int,
                     sqnorms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN among the rows of ``vectors`` where ``allowed`` is non-zero; returns (distances, row numbers
    into ``vectors``), padded with (inf, -1) when fewer than k rows are allowed."""
    subset = np.flatnonzero(allowed)
    if queries.shape[0] <= SCAN_MAX_QUERIES and subset.size:
        # a few queries: reading the rows in place beats copying the subset for one BLAS call
        threads = numba.get_num_threads()
        n_chunks = max(1, min(threads, subset.size // 4096))
        dist, rows = subset_topk(METRIC_CODES[metric], queries, vectors, subset, k, n_chunks)
        if subset.size < k:
            rows[:, subset.size:] = -1
        return dist, rows
    dist, rows = exact_knn(metric, queries, vectors[subset], k, None if sqnorms is None else sqnorms[subset])
    if subset.size == 0:
        return dist, rows
    return dist, np.where(rows >= 0, subset[np.maximum(rows, 0)], -1)
