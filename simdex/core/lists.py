"""Inverted-list search, written once for every list index: the IVF family (:mod:`simdex.quant.ivf`: PQ, int8 /
LVQ, float32 and binary codes) and the SPANN disk index (:mod:`simdex.quant.spann`).

A query picks the lists nearest to it (:func:`select_probes`), scans their entries with a scorer
(:mod:`simdex.core.scorer`; a scorer may prepare per list, as IVF-PQ's residual tables do), keeps the best in a
max-heap and optionally re-ranks them from the float32 vectors (:func:`scan_lists`).

Inverted lists are CSR arrays: list l's entries are rows ``offsets[l]:offsets[l+1]`` of the codes the scorer
holds and of ``slots`` (each entry's storage slot).
"""

from __future__ import annotations

import numpy as np

from .._heap import copy_padded, heap_push, heap_replace_top, heap_sort_ascending
from .._numba import kernel, run_threads
from .beam import next_tag, pair_scratch
from .scorer import list_query, query, rescore, scan_score


def select_probes(coarse, nprobe, probes, probe_d, nthreads: int = 1) -> None:
    """The ``nprobe`` nearest lists of each query, nearest first: ``coarse`` (nq, nlist) distances ->
    ``probes`` (nq, nprobe) int64 and their distances ``probe_d``, the queries spread over ``nthreads``. An
    insertion into a short sorted row, skipped for the many lists that are not closer than the row's last: about
    one comparison per list for small nprobe (np.argpartition costs several times more per row)."""
    run_threads(select_probe_rows, coarse.shape[0], nthreads, coarse, nprobe, probes, probe_d)


@kernel
def select_probe_rows(coarse, nprobe, probes, probe_d, t, lo, hi):
    """:func:`select_probes` for queries lo..hi-1."""
    nlist = coarse.shape[1]
    for qi in range(lo, hi):
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


@kernel
def offer(heap_d, heap_i, n, cap, d, slot):
    """Keep (d, slot) if it is among the ``cap`` best of a max-heap of n items. Returns the new n."""
    if n < cap:
        heap_push(heap_d, heap_i, n, d, slot)
        return n + 1
    if d < heap_d[0]:
        heap_replace_top(heap_d[:cap], heap_i[:cap], d, slot)
    return n


@kernel
def finish_heap(heap_d, heap_i, n, rerank, metric, q, vectors, out_d, out_i):
    """Sort the heap of n items; with ``rerank`` re-score them from the float vectors and sort again; write the
    best len(out_d) into out_d/out_i, padded with (inf, -1)."""
    heap_sort_ascending(heap_d[:n], heap_i[:n])
    if rerank:
        rescore(metric, q, vectors, heap_d, heap_i, n)
    copy_padded(heap_d, heap_i, n, out_d, out_i)


def scan_lists(sc, nthreads, probes, offsets, slots, cap, k, allowed, use_filter, invert, visited, tags, rerank,
               metric, queries, vectors, out_d, out_i) -> None:
    """k-NN of every query of ``sc`` over its probed lists ``probes`` (nq, nprobe; -1: skipped), keeping the
    ``cap`` best entries, then (with ``rerank``) re-ranking them from ``vectors`` in the internal ``metric`` with
    ``queries``; writes internal distances and slots, padded with (inf, -1). The queries are spread over
    ``nthreads`` threads (:func:`simdex._numba.run_threads`: a single query runs without a parallel launch,
    which cost it more than the scan of 16 lists).

    Entries are skipped when ``use_filter`` and their slot is not allowed (``allowed[slot] != 0``, or ``== 0``
    with ``invert``), and, when ``visited`` (>= nthreads, n_slots) has columns, when their slot was already scored
    for this query (SPANN's closure stores a boundary vector in several lists): the per-thread generation marks of
    the graph search (:func:`simdex.core.beam.next_tag`; ``visited``, ``tags`` from a
    :class:`~simdex.core.beam.ScratchPool`, held by this call alone).
    """
    run_threads(scan_rows, out_d.shape[0], nthreads, sc, probes, offsets, slots, cap, k, allowed, use_filter,
                invert, visited, tags, rerank, metric, queries, vectors, out_d, out_i)


@kernel
def scan_rows(sc, probes, offsets, slots, cap, k, allowed, use_filter, invert, visited, tags, rerank, metric,
              queries, vectors, out_d, out_i, t, lo, hi):
    """:func:`scan_lists` for queries lo..hi-1 on thread slot t."""
    dedup = visited.shape[1] > 0
    scratch_d, scratch_i = pair_scratch(1, cap)
    heap_d, heap_i = scratch_d[0], scratch_i[0]
    for qi in range(lo, hi):
        q = query(sc, qi, t)
        tag = next_tag(visited, tags, t) if dedup else np.uint16(0)
        n = 0
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0:
                continue
            lq = list_query(sc, q, qi, p, lst)
            for e in range(offsets[lst], offsets[lst + 1]):
                slot = slots[e]
                if use_filter and (allowed[slot] != 0) == invert:
                    continue
                if dedup:
                    if visited[t, slot] == tag:
                        continue
                    visited[t, slot] = tag
                d = scan_score(sc, lq, e)
                # skipping the heap for entries that cannot enter it is the common case once it is full
                if n < cap or d < heap_d[0]:
                    n = offer(heap_d, heap_i, n, cap, d, slot)
        finish_heap(heap_d, heap_i, n, rerank, metric, queries[qi], vectors, out_d[qi, :k], out_i[qi, :k])


@kernel
def grow_lists(old_offsets, old_codes, old_slots, new_offsets, new_codes, new_slots, offsets, codes, slots):
    """Fill ``codes``/``slots`` (CSR by ``offsets``) with each list's old entries followed by its new ones.

    ``new_codes``/``new_slots`` are sorted by list, list l's at ``new_offsets[l]:new_offsets[l + 1]``. One pass
    over the entries and no index arrays: adding to a large index costs no temporaries the size of the index.
    """
    for lst in range(offsets.shape[0] - 1):
        dst = offsets[lst]
        for e in range(old_offsets[lst], old_offsets[lst + 1]):
            codes[dst] = old_codes[e]
            slots[dst] = old_slots[e]
            dst += 1
        for e in range(new_offsets[lst], new_offsets[lst + 1]):
            codes[dst] = new_codes[e]
            slots[dst] = new_slots[e]
            dst += 1
