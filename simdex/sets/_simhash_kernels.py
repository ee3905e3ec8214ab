"""Kernels for random-hyperplane (SimHash) LSH and brute-force Hamming search on packed binary codes."""

from __future__ import annotations

import numba
import numpy as np

from .._numba import kernel
from ._lsh_kernels import _lower_bound


@kernel(parallel=True)
def table_keys(proj, num_tables, bits, out):
    """Key of each table: bit i set where projection t*bits + i is positive. proj (n, L*K) -> out (n, L) uint64."""
    for r in numba.prange(proj.shape[0]):
        for t in range(num_tables):
            key = np.uint64(0)
            for i in range(bits):
                if proj[r, t * bits + i] > 0:
                    key |= np.uint64(1) << np.uint64(i)
            out[r, t] = key


@kernel
def _probe_masks(absproj, probes, subset_bits):
    """Flip masks of the ``probes`` most likely neighbouring buckets (multi-probe LSH, Lv et al. 2007): subsets of
    the ``subset_bits`` bits nearest their hyperplane, ordered by the sum of |projection| of the flipped bits."""
    order = np.argsort(absproj)[:subset_bits]
    n_sub = 1 << subset_bits
    scores = np.empty(n_sub - 1, np.float32)
    for s in range(1, n_sub):
        total = np.float32(0)
        for b in range(subset_bits):
            if (s >> b) & 1:
                total += absproj[order[b]]
        scores[s - 1] = total
    best = np.argsort(scores)[:probes]
    masks = np.empty(best.shape[0], np.uint64)
    for p in range(best.shape[0]):
        s = best[p] + 1
        m = np.uint64(0)
        for b in range(subset_bits):
            if (s >> b) & 1:
                m |= np.uint64(1) << np.uint64(order[b])
        masks[p] = m
    return masks


@kernel(parallel=True)
def lsh_search(queries, proj, num_tables, bits, probes, subset_bits, sorted_keys, sorted_slots, vectors, usable,
               k, out_dist, out_slots):
    """Per query: gather the slots in its bucket and ``probes`` neighbouring buckets of every table, re-rank the
    distinct ones by exact inner product (unit vectors) and keep the k best. ``usable`` (uint8 per slot) excludes
    removed or filtered-out slots. Missing results: distance inf, slot -1."""
    n = sorted_keys.shape[1]
    for qi in numba.prange(queries.shape[0]):
        keys = np.empty(num_tables * (probes + 1), np.uint64)
        for t in range(num_tables):
            key = np.uint64(0)
            absproj = np.empty(bits, np.float32)
            for i in range(bits):
                v = proj[qi, t * bits + i]
                absproj[i] = abs(v)
                if v > 0:
                    key |= np.uint64(1) << np.uint64(i)
            keys[t * (probes + 1)] = key
            masks = _probe_masks(absproj, probes, subset_bits)
            for p in range(probes):
                keys[t * (probes + 1) + 1 + p] = key ^ masks[p] if p < masks.shape[0] else key
        lo = np.empty(keys.shape[0], np.int64)
        hi = np.empty(keys.shape[0], np.int64)
        total = 0
        for j in range(keys.shape[0]):
            t = j // (probes + 1)
            a = _lower_bound(sorted_keys[t], 0, sorted_keys[t].shape[0], keys[j])
            b = a
            while b < n and sorted_keys[t, b] == keys[j]:
                b += 1
            lo[j], hi[j] = a, b
            total += b - a
        cand = np.empty(total, np.int64)
        m = 0
        for j in range(keys.shape[0]):
            t = j // (probes + 1)
            for p in range(lo[j], hi[j]):
                s = sorted_slots[t, p]
                if usable[s]:
                    cand[m] = s
                    m += 1
        cand = np.unique(cand[:m])
        scores = np.empty(cand.shape[0], np.float32)
        for c in range(cand.shape[0]):
            dot = np.float32(0)
            for d in range(vectors.shape[1]):
                dot += queries[qi, d] * vectors[cand[c], d]
            scores[c] = -dot
        order = np.argsort(scores)
        for r in range(k):
            if r < order.shape[0]:
                out_dist[qi, r] = np.float32(1.0) + scores[order[r]]
                out_slots[qi, r] = cand[order[r]]
            else:
                out_dist[qi, r] = np.inf
                out_slots[qi, r] = -1


@kernel(inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@kernel(parallel=True)
def hamming_knn(queries, codes, usable, k, max_dist, out_dist, out_slots):
    """Exact k nearest codes by Hamming distance: distances of all rows, then a counting selection over the small
    distance range [0, max_dist] (O(n + bits) per query, no sort). Ties go to the lower slot."""
    n, words = codes.shape
    for qi in numba.prange(queries.shape[0]):
        dist = np.empty(n, np.int32)
        hist = np.zeros(max_dist + 2, np.int64)
        for r in range(n):
            if not usable[r]:
                dist[r] = max_dist + 1
                continue
            d = 0
            for w in range(words):
                d += _popcount(queries[qi, w] ^ codes[r, w])
            dist[r] = d
            hist[d] += 1
        # smallest radius whose ball holds k rows; rows at that radius fill the last places in slot order
        radius, inside = 0, 0
        while radius <= max_dist and inside + hist[radius] < k:
            inside += hist[radius]
            radius += 1
        starts = np.zeros(max_dist + 2, np.int64)
        acc = 0
        for d in range(min(radius, max_dist) + 1):
            starts[d] = acc
            acc += hist[d]
        for r in range(n):
            d = dist[r]
            if d <= radius and d <= max_dist and starts[d] < k:
                out_slots[qi, starts[d]] = r
                out_dist[qi, starts[d]] = d
                starts[d] += 1
        for j in range(min(acc, k), k):
            out_slots[qi, j] = -1
            out_dist[qi, j] = 2147483647
