"""The parts every graph search is made of: per-thread visited marks, the sorted candidate pool of the beam search,
the candidate and result heaps of the filtered search, and the gathering of a node's unvisited neighbours.

All of them are storage-blind: scoring goes through a scorer (:mod:`simdex.core.scorer`).
"""

from __future__ import annotations

import threading

import numpy as np

from .._heap import heap_push, heap_replace_top
from .._numba import kernel, move_within
from .scorer import prefetch


def thread_scratch(nthreads: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread visited arrays (uint16 generations) and their counters."""
    return np.zeros((nthreads, max(capacity, 1)), np.uint16), np.zeros(nthreads, np.int64)


class ScratchPool:
    """Reusable per-thread visited arrays, so that back-to-back searches do not re-allocate them.

    One-thread sets, what a query per call takes, are kept apart and taken without the lock: a list's ``pop`` and
    ``append`` are atomic, and the lock's two round trips cost a single query about a microsecond."""

    KEEP = 4  # sets of each kind kept free

    def __init__(self) -> None:
        self._free: list[tuple[np.ndarray, np.ndarray]] = []
        self._single: list[tuple[np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()

    def take(self, nthreads: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
        if nthreads == 1:
            try:
                scratch = self._single.pop()
            except IndexError:
                return thread_scratch(1, capacity)
            # a set too small for a grown index is dropped: the next ones are made at the new size
            return scratch if scratch[0].shape[1] >= capacity else thread_scratch(1, capacity)
        with self._lock:
            for i, (vis, tags) in enumerate(self._free):
                if vis.shape[0] == nthreads and vis.shape[1] >= capacity:
                    return self._free.pop(i)
        return thread_scratch(nthreads, capacity)

    def give(self, scratch: tuple[np.ndarray, np.ndarray]) -> None:
        if scratch[0].shape[0] == 1:
            self._single.append(scratch)
            if len(self._single) > self.KEEP:
                try:
                    self._single.pop(0)
                except IndexError:  # another thread took the rest meanwhile
                    pass
            return
        with self._lock:
            self._free.append(scratch)
            del self._free[:-self.KEEP]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._single.clear()


@kernel(inline="always")
def next_tag(visited, tags, t):
    """Advance thread t's visited-generation counter, clearing the array when the uint16 counter wraps."""
    tag = tags[t] + 1
    if tag >= 65535:
        visited[t, :] = 0
        tag = 1
    tags[t] = tag
    return np.uint16(tag)


@kernel(inline="always")
def pool_scratch(nthreads, ef, width):
    """Per-thread rows of a beam search: pool distances, nodes and expanded flags (nthreads, ef), and room for
    one node's neighbours (nthreads, width)."""
    pool_d, pool_i = pair_scratch(nthreads, ef)
    return pool_d, pool_i, np.empty((nthreads, ef), np.bool_), np.empty((nthreads, width), np.int32)


@kernel(inline="always")
def pair_scratch(nthreads, size):
    """Per-thread rows of (distance, node) pairs: float32 and int32 (nthreads, size)."""
    return np.empty((nthreads, size), np.float32), np.empty((nthreads, size), np.int32)


@kernel
def contains(arr, n, x):
    """Whether ``x`` is among ``arr[:n]``."""
    for j in range(n):
        if arr[j] == x:
            return True
    return False


@kernel
def pool_insert(pool_d, pool_i, pool_done, size, ef, d, node):
    """Insert (d, node) into the ascending pool of capacity ef. Returns (new size, position), position -1 if
    rejected."""
    if size == ef and d >= pool_d[size - 1]:
        return size, -1
    lo = 0
    hi = size
    while lo < hi:
        mid = (lo + hi) >> 1
        if pool_d[mid] <= d:
            lo = mid + 1
        else:
            hi = mid
    last = size if size < ef else ef - 1
    move_within(pool_d, lo + 1, lo, last - lo)
    move_within(pool_i, lo + 1, lo, last - lo)
    move_within(pool_done, lo + 1, lo, last - lo)
    pool_d[lo] = d
    pool_i[lo] = node
    pool_done[lo] = False
    if size < ef:
        size += 1
    return size, lo


@kernel(inline="always")
def pool_start(pool_d, pool_i, pool_done, visited, tag, ep, ep_d):
    """Open a beam search's pool with the entry point (marked visited). Returns the pool's size, 1, typed int64:
    a literal would make numba compile the callees once more."""
    pool_d[0] = ep_d
    pool_i[0] = ep
    pool_done[0] = False
    visited[ep] = tag
    return np.int64(1)


@kernel(inline="always")
def pool_offer(pool_d, pool_i, pool_done, size, ef, d, node, lowest):
    """:func:`pool_insert`, also tracking the lowest position an insertion took since the last expansion.
    Returns (size, lowest)."""
    size, pos = pool_insert(pool_d, pool_i, pool_done, size, ef, d, node)
    if 0 <= pos < lowest:
        lowest = pos
    return size, lowest


@kernel(inline="always")
def next_unexpanded(pool_done, size, cur, lowest):
    """The sorted pool's next position to expand after expanding ``cur``: the lowest position an insertion took if
    that is at or before ``cur``, else the one after; then past entries already expanded."""
    if lowest <= cur:
        cur = lowest
    else:
        cur += 1
    while cur < size and pool_done[cur]:
        cur += 1
    return cur


@kernel(inline="always")
def gather_unvisited(sc, links, row, visited, tag, fresh):
    """The neighbours in ``links[row]`` (degree first, then node ids) not yet visited by this search: marks them
    visited, starts reading what scoring them reads (the scorer's ``prefetch``) and writes them into ``fresh``.
    Returns how many. Every graph search expands a node this way."""
    n_fresh = 0
    for j in range(1, links[row, 0] + 1):
        nb = links[row, j]
        if visited[nb] != tag:
            visited[nb] = tag
            prefetch(sc, nb)
            fresh[n_fresh] = nb
            n_fresh += 1
    return n_fresh


@kernel
def record(exp_d, exp_i, n, d, node):
    """Append (d, node) to a growable list of n items. Returns (exp_d, exp_i): reallocated when full."""
    if n == exp_d.shape[0]:
        grown_d = np.empty(2 * n + 16, np.float32)
        grown_i = np.empty(2 * n + 16, np.int32)
        for j in range(n):  # element loops: a slice copy compiles numba's shape-error message (a second cold)
            grown_d[j] = exp_d[j]
            grown_i[j] = exp_i[j]
        exp_d = grown_d
        exp_i = grown_i
    exp_d[n] = d
    exp_i[n] = node
    return exp_d, exp_i


@kernel
def candidate_push(cand_d, cand_i, n, d, node):
    """Push onto the candidate queue of n items, growing it when full. Returns (cand_d, cand_i).

    The queue is a max-heap of negated distances (as hnswlib keeps it), so its root is the nearest candidate and
    one heap serves both queues of the filtered search."""
    if n == cand_d.shape[0]:
        grown_d = np.empty(2 * n, np.float32)
        grown_i = np.empty(2 * n, np.int32)
        for j in range(n):
            grown_d[j] = cand_d[j]
            grown_i[j] = cand_i[j]
        cand_d = grown_d
        cand_i = grown_i
    heap_push(cand_d, cand_i, n, -d, node)
    return cand_d, cand_i


@kernel
def candidate_pop(cand_d, cand_i, n):
    """Remove the root of the candidate queue of n items (the caller has read it: distance ``-cand_d[0]``)."""
    if n > 1:
        heap_replace_top(cand_d[:n - 1], cand_i[:n - 1], cand_d[n - 1], cand_i[n - 1])


@kernel
def consider(d, node, ef, use_filter, allowed, invert, cand_d, cand_i, n_cand, res_d, res_i, n_res):
    """Offer one scored neighbour to the candidate queue and the result max-heap of the filtered search: it is
    traversed when it could still improve the results, and collected only if allowed (``allowed[node] != 0``, or
    ``== 0`` with ``invert``). Returns (cand_d, cand_i, n_cand, n_res)."""
    if n_res < ef or d < res_d[0]:
        cand_d, cand_i = candidate_push(cand_d, cand_i, n_cand, d, node)
        n_cand += 1
        if not use_filter or (allowed[node] != 0) != invert:
            if n_res < ef:
                heap_push(res_d, res_i, n_res, d, node)
                n_res += 1
            else:
                heap_replace_top(res_d[:ef], res_i[:ef], d, node)
    return cand_d, cand_i, n_cand, n_res


@kernel
def open_range(mask, deleted, lo, hi):
    """Allow the slots lo..hi-1 that are not deleted in a thread's zeroed slot mask (``mask[lo:hi] = 0`` after
    the search restores it): O(hi - lo) byte writes instead of a fresh mask over all slots per query."""
    for s in range(lo, hi):
        mask[s] = 1 - deleted[s]
