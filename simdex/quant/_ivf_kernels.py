"""Numba kernels of the IVF index: scan the probed inverted lists of each query, keep the best candidates in a
max-heap, re-rank them with full precision.

Inverted lists are CSR arrays: list l's entries are rows ``offsets[l]:offsets[l+1]`` of ``codes`` (entry codes)
and ``slots`` (the entry's storage slot). One kernel per codec family, sharing the heap and re-ranking helpers.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .._heap import copy_padded, heap_push, heap_replace_top, heap_sort_ascending
from .._numba import kernel
from ..metrics import distance
from ._binary_kernels import hamming
from ._pq_kernels import adc_lookup, adc_table
from ._scalar_kernels import affine_score


@kernel
def _offer(heap_d, heap_i, n, cap, d, slot):
    if n < cap:
        heap_push(heap_d, heap_i, n, d, slot)
        return n + 1
    if d < heap_d[0]:
        heap_replace_top(heap_d[:cap], heap_i[:cap], d, slot)
    return n


@kernel
def _usable(slot, allowed, use_filter, invert):
    return not use_filter or (allowed[slot] != 0) != invert


@kernel
def _finish(heap_d, heap_i, n, k, rerank, metric, q, vectors, out_d, out_i):
    """Sort the heap; with ``rerank`` re-score its items from the float vectors and sort again; write k best."""
    heap_sort_ascending(heap_d[:n], heap_i[:n])
    if rerank:
        for j in range(n):
            heap_d[j] = distance(metric, q, vectors[heap_i[j]])
        order = np.argsort(heap_d[:n], kind="mergesort")
        sd = heap_d[:n][order]
        si = heap_i[:n][order]
        heap_d[:n] = sd
        heap_i[:n] = si
    copy_padded(heap_d, heap_i, n, out_d[:k], out_i[:k])


@kernel(parallel=True)
def select_probes(coarse, nprobe, probes, probe_d):
    """The ``nprobe`` nearest lists of each query, nearest first: ``coarse`` (nq, nlist) distances ->
    ``probes`` (nq, nprobe) int64 and their distances ``probe_d``. An insertion into a short sorted row, skipped
    for the many lists that are not closer than the row's last: about one comparison per list for small nprobe
    (np.argpartition costs several times more per row)."""
    nlist = coarse.shape[1]
    for qi in prange(coarse.shape[0]):
        row = coarse[qi]
        bd = probe_d[qi]
        bi = probes[qi]
        n = 0
        for lst in range(nlist):
            d = row[lst]
            if n == nprobe and d >= bd[n - 1]:
                continue
            pos = n if n < nprobe else nprobe - 1
            while pos > 0 and bd[pos - 1] > d:
                if pos < nprobe:
                    bd[pos] = bd[pos - 1]
                    bi[pos] = bi[pos - 1]
                pos -= 1
            bd[pos] = d
            bi[pos] = lst
            if n < nprobe:
                n += 1


@kernel(parallel=True)
def search_pq(nthreads, metric, queries_t, probes, probe_d, offsets, codes, slots, centroids_t, precomputed, use_precomputed,
              cap, k, rerank, queries, vectors, allowed, use_filter, invert, out_d, out_i):
    """IVF-PQ over residual codes. ``queries_t``: queries in the PQ's (padded, rotated) space; ``probe_d``: the
    coarse distance of each probed list, which is the constant term of every entry's distance.

    Squared L2 (``use_precomputed``): ||q - c - r||^2 = ||q - c||^2 + (||r||^2 + 2 <c, r>) - 2 <q, r>, the middle
    term per (list, sub-quantizer, centroid) in ``precomputed`` (nlist, m, 256). Inner product: -<q, c> - <q, r>.
    """
    m, _, ks = centroids_t.shape
    heap_d = np.empty((nthreads, cap), np.float32)
    heap_i = np.empty((nthreads, cap), np.int32)
    tq = np.empty((nthreads, m, ks), np.float32)
    table = np.empty((nthreads, m, ks), np.float32)
    for qi in prange(queries_t.shape[0]):
        t = numba.get_thread_id()
        adc_table(1, queries_t[qi], centroids_t, tq[t])  # -<q_j, r_jc>
        if use_precomputed:
            # doubled once here, so that each probed list's table below is one float32 add per entry
            tq[t] *= np.float32(2.0)
        tq_flat = tq[t].reshape(m * ks)
        n = 0
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0:
                continue
            if use_precomputed:
                tab = table[t]
                tab_flat = tab.reshape(m * ks)
                pre_flat = precomputed[lst].reshape(m * ks)
                for x in range(m * ks):
                    tab_flat[x] = pre_flat[x] + tq_flat[x]
            else:
                tab = tq[t]  # inner product: the query's table serves every list as it is
            base = probe_d[qi, p]
            for e in range(offsets[lst], offsets[lst + 1]):
                slot = slots[e]
                if not _usable(slot, allowed, use_filter, invert):
                    continue
                s = base + adc_lookup(tab, codes[e])
                # skipping the heap for entries that cannot enter it is the common case once it is full
                if n < cap or s < heap_d[t, 0]:
                    n = _offer(heap_d[t], heap_i[t], n, cap, s, slot)
        _finish(heap_d[t], heap_i[t], n, k, rerank, metric, queries[qi], vectors, out_d[qi], out_i[qi])


@kernel(parallel=True)
def search_affine(nthreads, qts, qcs, bits, half, probes, offsets, codes, codes_f, slots, cap, k, rerank, metric, queries,
                  vectors, allowed, use_filter, invert, out_d, out_i):
    """IVF over int8 / LVQ codes of the vectors themselves (not residuals); ``codes_f`` is the float32 view."""
    heap_d = np.empty((nthreads, cap), np.float32)
    heap_i = np.empty((nthreads, cap), np.int32)
    for qi in prange(qts.shape[0]):
        t = numba.get_thread_id()
        n = 0
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0:
                continue
            for e in range(offsets[lst], offsets[lst + 1]):
                slot = slots[e]
                if _usable(slot, allowed, use_filter, invert):
                    d = affine_score(qts[qi], qcs[qi], codes, codes_f, e, bits, half)
                    n = _offer(heap_d[t], heap_i[t], n, cap, d, slot)
        _finish(heap_d[t], heap_i[t], n, k, rerank, metric, queries[qi], vectors, out_d[qi], out_i[qi])


@kernel(parallel=True)
def search_flat(nthreads, metric, probes, offsets, codes_f, slots, cap, k, queries, out_d, out_i, allowed, use_filter,
                invert):
    """IVF over float32 codes (exact distances, no re-ranking needed)."""
    heap_d = np.empty((nthreads, cap), np.float32)
    heap_i = np.empty((nthreads, cap), np.int32)
    for qi in prange(queries.shape[0]):
        t = numba.get_thread_id()
        n = 0
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0:
                continue
            for e in range(offsets[lst], offsets[lst + 1]):
                slot = slots[e]
                if _usable(slot, allowed, use_filter, invert):
                    n = _offer(heap_d[t], heap_i[t], n, cap, distance(metric, queries[qi], codes_f[e]), slot)
        _finish(heap_d[t], heap_i[t], n, k, False, metric, queries[qi], codes_f, out_d[qi], out_i[qi])


@kernel(parallel=True)
def search_binary(nthreads, qwords, probes, offsets, words, slots, cap, k, rerank, metric, queries, vectors, allowed,
                  use_filter, invert, out_d, out_i):
    """IVF over binary codes: Hamming distance, then (with ``rerank``) float re-ranking of the best ``cap``."""
    heap_d = np.empty((nthreads, cap), np.float32)
    heap_i = np.empty((nthreads, cap), np.int32)
    for qi in prange(qwords.shape[0]):
        t = numba.get_thread_id()
        n = 0
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0:
                continue
            for e in range(offsets[lst], offsets[lst + 1]):
                slot = slots[e]
                if _usable(slot, allowed, use_filter, invert):
                    d = np.float32(hamming(qwords[qi], words[e]))
                    n = _offer(heap_d[t], heap_i[t], n, cap, d, slot)
        _finish(heap_d[t], heap_i[t], n, k, rerank, metric, queries[qi], vectors, out_d[qi], out_i[qi])
