"""Numba kernels of the window index: exact top-k over contiguous row ranges, and merging candidate lists.

All kernels keep one max-heap of k (internal distance, slot) per query (see :mod:`simdex._heap`), so the exact
parts of a query's plan and the results of its graph searches can be pushed into the same heap in any order.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._heap import heap_replace_top
from .._numba import kernel
from ..metrics import distance, distance4


@kernel
def _scan(metric, q, vectors, skip, start, end, hd, hi):
    """Push rows [start, end) of ``vectors`` whose ``skip`` byte is 0 into the heap (hd, hi)."""
    worst = hd[0]
    j = start
    # four rows per step: q is loaded once for four sequential streams; the rows are contiguous, so the hardware
    # prefetcher keeps up without hints
    while j + 4 <= end:
        d0, d1, d2, d3 = distance4(metric, q, vectors[j], vectors[j + 1], vectors[j + 2], vectors[j + 3])
        if d0 < worst and skip[j] == 0:
            heap_replace_top(hd, hi, d0, j)
            worst = hd[0]
        if d1 < worst and skip[j + 1] == 0:
            heap_replace_top(hd, hi, d1, j + 1)
            worst = hd[0]
        if d2 < worst and skip[j + 2] == 0:
            heap_replace_top(hd, hi, d2, j + 2)
            worst = hd[0]
        if d3 < worst and skip[j + 3] == 0:
            heap_replace_top(hd, hi, d3, j + 3)
            worst = hd[0]
        j += 4
    while j < end:
        d = distance(metric, q, vectors[j])
        if d < worst and skip[j] == 0:
            heap_replace_top(hd, hi, d, j)
            worst = hd[0]
        j += 1


@kernel(parallel=True)
def ranges_topk(metric, queries, vectors, skip, ptr, starts, ends, heap_d, heap_i):
    """Exact search of row ranges: query qi scans ranges ``starts[p]:ends[p]`` for p in ``ptr[qi]:ptr[qi+1]``.

    queries (nq, dim) float32; vectors (n, dim) float32; skip (n,) uint8 (1 = deleted or filtered out);
    ptr (nq + 1,) int64; starts, ends int64; heap_d / heap_i (nq, k) max-heaps updated in place (slots).
    """
    for qi in prange(queries.shape[0]):
        for p in range(ptr[qi], ptr[qi + 1]):
            _scan(metric, queries[qi], vectors, skip, starts[p], ends[p], heap_d[qi], heap_i[qi])


@kernel(parallel=True)
def buffer_topk(metric, queries, vectors, attrs, skip, start, end, lo, hi, heap_d, heap_i):
    """Exact search of the unsorted append buffer, rows [start, end): a row counts for query qi when
    ``lo[qi] <= attrs[row] <= hi[qi]`` and its ``skip`` byte is 0. Heaps as in :func:`ranges_topk`."""
    for qi in prange(queries.shape[0]):
        q = queries[qi]
        hd = heap_d[qi]
        hid = heap_i[qi]
        a, b = lo[qi], hi[qi]
        for j in range(start, end):
            if skip[j] != 0 or attrs[j] < a or attrs[j] > b:
                continue
            d = distance(metric, q, vectors[j])
            if d < hd[0]:
                heap_replace_top(hd, hid, d, j)


@kernel
def merge_candidates(rows, cand_d, cand_s, heap_d, heap_i):
    """Push candidate row r of (cand_d, cand_s) (internal distances, slots; slot -1 = none) into the heap of
    query ``rows[r]``."""
    for r in range(rows.shape[0]):
        hd = heap_d[rows[r]]
        hid = heap_i[rows[r]]
        for c in range(cand_d.shape[1]):
            s = cand_s[r, c]
            if s >= 0 and cand_d[r, c] < hd[0]:
                heap_replace_top(hd, hid, cand_d[r, c], s)


def new_heaps(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), np.inf, np.float32), np.full((nq, k), -1, np.int64)
