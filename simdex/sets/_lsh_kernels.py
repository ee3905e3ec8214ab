"""Kernels for banded LSH tables: sorted band keys per band, batch lookup, all pairs sharing a bucket."""

from __future__ import annotations

import numba
import numpy as np

from .._numba import kernel


@kernel
def _lower_bound(keys, lo, hi, key):
    """First position in keys[lo:hi] (sorted) whose key is >= key."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@kernel
def _collect_run(key, keys, slots, slot_alive, out, pos, counting):
    """Append the live slots of the sorted run ``keys``/``slots`` (one band) whose key equals ``key``."""
    n = keys.shape[0]
    p = _lower_bound(keys, 0, n, key)
    while p < n and keys[p] == key:
        s = slots[p]
        if slot_alive[s]:
            if not counting:
                out[pos] = s
            pos += 1
        p += 1
    return pos


@kernel
def _collect(qkeys, sorted_keys, sorted_slots, tail_keys, tail_slots, slot_alive, out, start):
    """Slots sharing a band key with query ``qkeys`` (bands,) appended at out[start:]; returns the new end.
    Two sorted runs per band are searched: the main one and the recent tail. With ``out`` of length 0 it only
    counts."""
    pos = start
    counting = out.shape[0] == 0
    for b in range(qkeys.shape[0]):
        pos = _collect_run(qkeys[b], sorted_keys[b], sorted_slots[b], slot_alive, out, pos, counting)
        pos = _collect_run(qkeys[b], tail_keys[b], tail_slots[b], slot_alive, out, pos, counting)
    return pos


@kernel(parallel=True)
def count_candidates(qkeys, sorted_keys, sorted_slots, tail_keys, tail_slots, slot_alive, counts):
    empty = np.empty(0, np.int64)
    for i in numba.prange(qkeys.shape[0]):
        counts[i] = _collect(qkeys[i], sorted_keys, sorted_slots, tail_keys, tail_slots, slot_alive, empty, 0)


@kernel(parallel=True)
def fill_candidates(qkeys, sorted_keys, sorted_slots, tail_keys, tail_slots, slot_alive, indptr, out, uniq):
    """Fill candidates (with repeats across bands) then sort and de-duplicate each query's run in place."""
    for i in numba.prange(qkeys.shape[0]):
        if indptr[i + 1] == indptr[i]:  # counted none (the usual answer in dedup): no second search
            uniq[i] = 0
            continue
        end = _collect(qkeys[i], sorted_keys, sorted_slots, tail_keys, tail_slots, slot_alive, out, indptr[i])
        seg = out[indptr[i]:end]
        if seg.shape[0] == 0:
            uniq[i] = 0
            continue
        seg.sort()
        u = 1
        for j in range(1, seg.shape[0]):
            if seg[j] != seg[u - 1]:
                seg[u] = seg[j]
                u += 1
        uniq[i] = u


@kernel
def bucket_pairs(sorted_keys, sorted_slots, slot_alive, max_bucket, out, count_only):
    """All pairs (i < j) of live slots sharing a bucket in any band (repeats across bands included).

    Buckets larger than ``max_bucket`` contribute the star of pairs (first member, other) instead of all pairs,
    which keeps the count linear for runaway buckets while leaving them connected."""
    bands, n = sorted_keys.shape
    pos = 0
    for b in range(bands):
        p = 0
        while p < n:
            q = p + 1
            while q < n and sorted_keys[b, q] == sorted_keys[b, p]:
                q += 1
            size = q - p
            if size > 1:
                star = size > max_bucket
                for x in range(p, q):
                    sx = sorted_slots[b, x]
                    if not slot_alive[sx]:
                        continue
                    for y in range(x + 1, q):
                        sy = sorted_slots[b, y]
                        if not slot_alive[sy]:
                            continue
                        if not count_only:
                            out[pos, 0] = min(sx, sy)
                            out[pos, 1] = max(sx, sy)
                        pos += 1
                    if star:
                        break
            p = q
    return pos


@kernel(inline="always")
def _bloom_probe(key, i, words_per_band):
    """Bit position of the i-th probe for ``key`` (Kirsch-Mitzenmacher double hashing on a remixed key)."""
    h1 = key
    h2 = ((key >> np.uint64(33)) | (key << np.uint64(31))) * np.uint64(0x9E3779B97F4A7C15) | np.uint64(1)
    x = h1 + np.uint64(i) * h2
    nbits = np.uint64(words_per_band) * np.uint64(64)
    return int(((x >> np.uint64(32)) * nbits) >> np.uint64(32)) if nbits <= np.uint64(0xFFFFFFFF) \
        else int(x % nbits)


@kernel
def bloom_query_insert(bits, keys, num_probes, do_query, do_insert, out):
    """For each row of keys (n, bands): out[i] = some band's key is (probably) in that band's filter; then add
    the row's keys. Rows are processed in order, so row i sees rows < i of the same batch."""
    bands = keys.shape[1]
    words = bits.shape[1]
    for i in range(keys.shape[0]):
        hit = False
        if do_query:
            for b in range(bands):
                present = True
                for j in range(num_probes):
                    pos = _bloom_probe(keys[i, b], j, words)
                    if (bits[b, pos >> 6] >> np.uint64(pos & 63)) & np.uint64(1) == 0:
                        present = False
                        break
                if present:
                    hit = True
                    break
        out[i] = hit
        if do_insert:
            for b in range(bands):
                for j in range(num_probes):
                    pos = _bloom_probe(keys[i, b], j, words)
                    bits[b, pos >> 6] |= np.uint64(1) << np.uint64(pos & 63)
