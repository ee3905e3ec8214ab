"""Exact Jaccard on hashed sets: pairwise verification and an all-pairs similarity join (ground truth).

The join is AllPairs-style prefix filtering (Bayardo et al., WWW 2007; Chaudhuri et al., ICDE 2006): order
elements globally by frequency, rarest first; if J(x, y) >= t then the first ``|x| - ceil(t |x|) + 1`` elements of
x and the first ``|y| - ceil(t |y|) + 1`` of y share an element, and ``t |x| <= |y| <= |x| / t``. Only pairs
passing both filters are verified, each by a merge of the two sorted sets.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from .._numba import kernel, num_threads
from .._validate import check_threads
from ..errors import InvalidInputError
from .lsh import check_threshold
from .shingle import HashedSets, _sort_unique_rows, as_hashed_sets

# Tolerance when comparing a ratio with the threshold, so that 4/5 >= 0.8 holds in floating point.
_EPS = 1e-9


@kernel(inline="always")
def _intersection(values_a, a0, a1, values_b, b0, b1):
    """|A ∩ B| for sorted unique runs values_a[a0:a1] and values_b[b0:b1]."""
    n = 0
    while a0 < a1 and b0 < b1:
        x = values_a[a0]
        y = values_b[b0]
        if x == y:
            n += 1
            a0 += 1
            b0 += 1
        elif x < y:
            a0 += 1
        else:
            b0 += 1
    return n


@kernel(parallel=True)
def _pair_jaccard(indptr, values, pairs, out):
    for i in numba.prange(pairs.shape[0]):
        a, b = pairs[i, 0], pairs[i, 1]
        na = indptr[a + 1] - indptr[a]
        nb = indptr[b + 1] - indptr[b]
        if na + nb == 0:
            out[i] = 1.0
            continue
        inter = _intersection(values, indptr[a], indptr[a + 1], values, indptr[b], indptr[b + 1])
        out[i] = inter / (na + nb - inter)


def pair_jaccard(sets: HashedSets, pairs: Any, *, threads: int | None = None) -> np.ndarray:
    """Exact Jaccard similarity float64 (m,) of the row pairs (m, 2) of ``sets`` (sorted unique rows, as from
    :func:`~simdex.sets.shingle`). Two empty sets have similarity 1."""
    p = np.ascontiguousarray(pairs, np.int64).reshape(-1, 2)
    if p.size and (p.min() < 0 or p.max() >= len(sets)):
        raise InvalidInputError(f"pairs must index rows 0..{len(sets) - 1}")
    out = np.empty(p.shape[0], np.float64)
    with num_threads(check_threads(threads)):
        _pair_jaccard(sets.indptr, sets.values, p, out)
    return out


@kernel(parallel=True)
def _join(indptr, ranks, prefix, post_ptr, post_docs, threshold, counts, out_ptr, out_pairs, out_sims, fill):
    n = indptr.shape[0] - 1
    for x in numba.prange(n):
        size_x = indptr[x + 1] - indptr[x]
        if size_x == 0:
            counts[x] = 0
            continue
        total = 0
        for p in range(indptr[x], indptr[x] + prefix[x]):
            tok = ranks[p]
            total += post_ptr[tok + 1] - post_ptr[tok]
        cand = np.empty(total, np.int64)
        m = 0
        lo = threshold * size_x - 1e-9
        hi = size_x / threshold + 1e-9
        for p in range(indptr[x], indptr[x] + prefix[x]):
            tok = ranks[p]
            for q in range(post_ptr[tok], post_ptr[tok + 1]):
                y = post_docs[q]
                if y <= x:
                    continue
                size_y = indptr[y + 1] - indptr[y]
                if size_y < lo or size_y > hi:
                    continue
                cand[m] = y
                m += 1
        cand = np.sort(cand[:m])
        found = 0
        last = -1
        for c in range(m):
            y = cand[c]
            if y == last:
                continue
            last = y
            size_y = indptr[y + 1] - indptr[y]
            inter = _intersection(ranks, indptr[x], indptr[x + 1], ranks, indptr[y], indptr[y + 1])
            sim = inter / (size_x + size_y - inter)
            if sim >= threshold - 1e-9:
                if fill:
                    out_pairs[out_ptr[x] + found, 0] = x
                    out_pairs[out_ptr[x] + found, 1] = y
                    out_sims[out_ptr[x] + found] = sim
                found += 1
        counts[x] = found


def similarity_join(sets: Any, threshold: float, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of non-empty sets with exact Jaccard >= ``threshold``: ``(pairs int64 (m, 2) with i < j,
    similarities float64 (m,))``, sorted by (i, j)."""
    t = check_threshold(threshold)
    s = sets if isinstance(sets, HashedSets) else as_hashed_sets(sets)
    n = len(s)
    sizes = s.sizes()
    # Rank elements by frequency, rarest first, so that prefixes hold rare elements and posting lists are short.
    uniq, inverse, freq = np.unique(s.values, return_inverse=True, return_counts=True)
    rank_of = np.empty(uniq.shape[0], np.int64)
    rank_of[np.argsort(freq, kind="stable")] = np.arange(uniq.shape[0])
    ranks = rank_of[inverse.reshape(-1)]
    counts_tmp = np.empty(n, np.int64)
    with num_threads(check_threads(threads)):
        _sort_unique_rows(s.indptr, ranks, counts_tmp)
        need = np.ceil(t * sizes - _EPS).astype(np.int64)
        prefix = np.where(sizes > 0, np.minimum(sizes, sizes - need + 1), 0).astype(np.int64)
        starts = s.indptr[:-1]
        row = np.repeat(np.arange(n, dtype=np.int64), prefix)
        pos = np.repeat(starts, prefix) + (np.arange(row.shape[0]) - np.repeat(np.cumsum(prefix) - prefix, prefix))
        tokens = ranks[pos]
        order = np.argsort(tokens, kind="stable")
        post_docs = row[order]
        post_ptr = np.zeros(uniq.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(tokens, minlength=uniq.shape[0]), out=post_ptr[1:])
        counts = np.empty(n, np.int64)
        dummy_pairs, dummy_sims = np.empty((0, 2), np.int64), np.empty(0, np.float64)
        _join(s.indptr, ranks, prefix, post_ptr, post_docs, t, counts, counts, dummy_pairs, dummy_sims, False)
        out_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=out_ptr[1:])
        pairs = np.empty((int(out_ptr[-1]), 2), np.int64)
        sims = np.empty(int(out_ptr[-1]), np.float64)
        _join(s.indptr, ranks, prefix, post_ptr, post_docs, t, counts, out_ptr, pairs, sims, True)
    return pairs, sims


def prefix_length(size: int, threshold: float) -> int:
    """Prefix length used by :func:`similarity_join` for a set of ``size`` elements."""
    return 0 if size == 0 else min(size, size - math.ceil(threshold * size - _EPS) + 1)
