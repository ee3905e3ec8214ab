"""Fixed-size max-heaps over parallel (distance, id) arrays, for k-selection inside numba kernels.

The root (position 0) is the worst of the k kept items, so a new item is kept only if it beats ``dist[0]``.
"""

from __future__ import annotations

import numpy as np
from ._numba import kernel


@kernel
def heap_replace_top(dist, ids, d, i):
    """Replace the root with (d, i) and sift it down (to keep the k best, the caller checks d < dist[0] first)."""
    k = dist.shape[0]
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= k:
            break
        right = left + 1
        child = left
        if right < k and dist[right] > dist[left]:
            child = right
        if dist[child] <= d:
            break
        dist[pos] = dist[child]
        ids[pos] = ids[child]
        pos = child
    dist[pos] = d
    ids[pos] = i


@kernel
def heap_push(dist, ids, n, d, i):
    """Push (d, i) onto the max-heap dist[:n], ids[:n] (the caller has checked there is room for n + 1)."""
    pos = n
    parent = (pos - 1) >> 1
    while pos > 0 and dist[parent] < d:  # sift up past the smaller parents
        dist[pos] = dist[parent]
        ids[pos] = ids[parent]
        pos = parent
        parent = (pos - 1) >> 1
    dist[pos] = d
    ids[pos] = i


@kernel
def heap_sort_ascending(dist, ids):
    """Turn a full max-heap into ascending order in place (heapsort)."""
    n = dist.shape[0]
    for end in range(n - 1, 0, -1):
        d, i = dist[end], ids[end]
        dist[end], ids[end] = dist[0], ids[0]
        heap_replace_top(dist[:end], ids[:end], d, i)  # the last item, sifted down the heap of size `end`


@kernel
def merge_block_topk(block, col_offset, heap_d, heap_i):
    """Push every entry of ``block`` (nq, nb) into row r's k-heap, with ids ``col_offset + column``.

    Serial on purpose: it runs between BLAS calls, whose worker threads keep spinning on the other cores, so
    parallel threads here would fight them. Selection is cheap next to the BLAS product that made the block.
    """
    nq, nb = block.shape
    for r in range(nq):
        hd = heap_d[r]
        hi = heap_i[r]
        worst = hd[0]
        for c in range(nb):
            d = block[r, c]
            if d < worst:
                heap_replace_top(hd, hi, d, col_offset + c)
                worst = hd[0]


@kernel
def sort_heaps(heap_d, heap_i):
    for r in range(heap_d.shape[0]):
        heap_sort_ascending(heap_d[r], heap_i[r])


def new_heaps(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), np.inf, np.float32), np.full((nq, k), -1, np.int64)


@kernel
def copy_padded(src_d, src_i, n, out_d, out_i):
    """The first min(n, len(out_d)) entries of (src_d, src_i) into (out_d, out_i); the rest of the row is
    (inf, -1), the "no result" of every search."""
    for j in range(out_d.shape[0]):
        if j < n:
            out_d[j] = src_d[j]
            out_i[j] = src_i[j]
        else:
            out_d[j] = np.inf
            out_i[j] = -1
