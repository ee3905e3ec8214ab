"""Numba kernels of HNSW search over compressed vectors (:class:`simdex.quant.hnsw.HNSWQuantIndex`).

The graph arrays are those of :mod:`simdex.dense._hnsw_kernels` (``links0``, ``links_up``, ``up_offset``); only
the distance changes: every node is scored by :func:`simdex.quant._scalar_kernels.affine_score` from its code row
(int8 or LVQ, ``codes`` uint8 (n, code_size) with ``codes_f`` its float32 view), never from a float vector.
The pool's best ``rerank`` candidates are then re-scored with full precision, either from the float32 vectors
(``mode`` 1: kept memory-mapped on disk, read only for these few rows) or from the LVQ residual level (``mode``
2), and the k best of those are returned. ``mode`` 0 returns the code distances unchanged.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .._heap import copy_padded, heap_replace_top, heap_sort_ascending
from .._numba import kernel, prefetch_row
from ..dense._hnsw_kernels import (_heap_pop_min, _heap_push_max, _heap_push_min, gather_unvisited, next_tag,
                                   next_unexpanded, open_range, pool_insert)
from ..metrics import distance
from ._scalar_kernels import affine_score, lvq_full_distance

PREFETCH_LINES = 8  # a 384-d LVQ-8 row is 396 bytes: 7 cache lines


@kernel
def greedy_descend_codes(qt, qc, codes, codes_f, bits, half, links_up, up_offset, ep, ep_d, top_layer):
    """Greedy walk on layers top_layer..1; returns the closest node found and its code distance."""
    for layer in range(top_layer, 0, -1):
        changed = True
        while changed:
            changed = False
            row = up_offset[ep] + layer - 1
            deg = links_up[row, 0]
            for j in range(1, deg + 1):
                prefetch_row(codes, links_up[row, j], PREFETCH_LINES)
            for j in range(1, deg + 1):
                nb = links_up[row, j]
                d = affine_score(qt, qc, codes, codes_f, nb, bits, half)
                if d < ep_d:
                    ep_d = d
                    ep = nb
                    changed = True
    return ep, ep_d


@kernel
def search_layer0_codes(qt, qc, codes, codes_f, bits, half, links0, ep, ep_d, ef, visited, tag,
                        pool_d, pool_i, pool_done, fresh):
    """Best-first search of layer 0 with one sorted pool of size ef (as :func:`_hnsw_kernels.search_layer`)."""
    pool_d[0] = ep_d
    pool_i[0] = ep
    pool_done[0] = False
    size = 1
    visited[ep] = tag
    cur = 0
    while cur < size:
        pool_done[cur] = True
        node = pool_i[cur]
        n_fresh = gather_unvisited(links0, node, visited, tag, codes, PREFETCH_LINES, fresh)
        lowest = size
        for j in range(n_fresh):
            nb = fresh[j]
            d = affine_score(qt, qc, codes, codes_f, nb, bits, half)
            size, pos = pool_insert(pool_d, pool_i, pool_done, size, ef, d, nb)
            if 0 <= pos < lowest:
                lowest = pos
        cur = next_unexpanded(pool_done, size, cur, lowest)
    return size


@kernel
def search_layer0_codes_filtered(qt, qc, codes, codes_f, bits, half, links0, ep, ep_d, ef, allowed, invert,
                                 visited, tag, fresh, cand_d, cand_i, res_d, res_i):
    """Two-heap search of layer 0 that traverses every node but collects only allowed ones (``allowed[v] != 0``,
    or ``== 0`` with ``invert``), as :func:`_hnsw_kernels.search_layer_heap`. Returns (n_res, cand_d, cand_i);
    results are left as a max-heap."""
    n_res = 0
    n_cand = 1
    cand_d[0] = ep_d
    cand_i[0] = ep
    visited[ep] = tag
    if (allowed[ep] != 0) != invert:
        res_d[0] = ep_d
        res_i[0] = ep
        n_res = 1
    while n_cand > 0:
        cd = cand_d[0]
        node = cand_i[0]
        if n_res == ef and cd > res_d[0]:
            break
        _heap_pop_min(cand_d, cand_i, n_cand)
        n_cand -= 1
        n_fresh = gather_unvisited(links0, node, visited, tag, codes, PREFETCH_LINES, fresh)
        for j in range(n_fresh):
            nb = fresh[j]
            d = affine_score(qt, qc, codes, codes_f, nb, bits, half)
            if n_res < ef or d < res_d[0]:
                cand_d, cand_i = _heap_push_min(cand_d, cand_i, n_cand, d, nb)
                n_cand += 1
                if (allowed[nb] != 0) != invert:
                    if n_res < ef:
                        _heap_push_max(res_d, res_i, n_res, d, nb)
                        n_res += 1
                    else:
                        heap_replace_top(res_d[:ef], res_i[:ef], d, nb)
    return n_res, cand_d, cand_i


@kernel
def rerank_into(mode, metric, q, vectors, codes, codes_f, mean, bits, half, res_bits, res_offset,
                cand_d, cand_i, n_cand, n_rerank, k, buf, out_d, out_i):
    """Re-score the first ``n_rerank`` of ``n_cand`` ascending candidates with full precision, write the k best
    (ascending) to out_d/out_i, padding with (inf, -1)."""
    r = min(n_rerank, n_cand)
    if mode != 0:
        if mode == 1:
            for j in range(r):
                prefetch_row(vectors, cand_i[j], 4)
        for j in range(r):
            v = cand_i[j]
            if mode == 1:
                cand_d[j] = distance(metric, q, vectors[v])
            else:
                cand_d[j] = lvq_full_distance(metric, q, codes, codes_f, v, mean, bits, half, res_bits, res_offset,
                                              buf)
        # insertion sort of the re-scored prefix (r is a few dozen)
        for j in range(1, r):
            d = cand_d[j]
            v = cand_i[j]
            p = j - 1
            while p >= 0 and cand_d[p] > d:
                cand_d[p + 1] = cand_d[p]
                cand_i[p + 1] = cand_i[p]
                p -= 1
            cand_d[p + 1] = d
            cand_i[p + 1] = v
    else:
        r = n_cand
    copy_padded(cand_d, cand_i, r, out_d[:k], out_i[:k])


@kernel
def filtered_codes_query(qt, qc, codes, codes_f, bits, half, links0, links_up, up_offset, entry, max_level, ef,
                         allowed, invert, visited, tags, t, fresh, pool_d, pool_i, mode, metric, q, vectors, mean,
                         res_bits, res_offset, n_rerank, k, buf, out_d, out_i):
    """One query's k-NN over the codes among slots with ``allowed[slot] != 0`` (``== 0`` with ``invert``), on
    thread t's scratch (``fresh``, ``pool_d``/``pool_i`` of size ef, ``buf``), re-ranked as ``mode`` says."""
    tag = next_tag(visited, tags, t)
    ep_d = affine_score(qt, qc, codes, codes_f, entry, bits, half)
    ep, ep_d = greedy_descend_codes(qt, qc, codes, codes_f, bits, half, links_up, up_offset, entry, ep_d, max_level)
    cand_d = np.empty(4 * ef + 64, np.float32)
    cand_i = np.empty(4 * ef + 64, np.int32)
    size, cand_d, cand_i = search_layer0_codes_filtered(qt, qc, codes, codes_f, bits, half, links0, ep, ep_d, ef,
                                                        allowed, invert, visited[t], tag, fresh, cand_d, cand_i,
                                                        pool_d, pool_i)
    heap_sort_ascending(pool_d[:size], pool_i[:size])
    rerank_into(mode, metric, q, vectors, codes, codes_f, mean, bits, half, res_bits, res_offset, pool_d, pool_i,
                size, n_rerank, k, buf, out_d, out_i)


@kernel(parallel=True)
def search_batch_codes(qts, qcs, codes, codes_f, bits, half, links0, links_up, up_offset, entry, max_level,
                       ef, k, n_rerank, mode, metric, queries, vectors, mean, res_bits, res_offset,
                       allowed, use_filter, invert, out_d, out_i, visited, tags):
    """k-NN of every query over the codes (parallel over queries), re-ranked as ``mode`` says.

    With ``use_filter`` only slots with ``allowed[slot] != 0`` (``== 0`` with ``invert``) are returned.
    """
    nthreads = visited.shape[0]
    pool_d = np.empty((nthreads, ef), np.float32)
    pool_i = np.empty((nthreads, ef), np.int32)
    pool_done = np.empty((nthreads, ef), np.bool_)
    fresh = np.empty((nthreads, links0.shape[1]), np.int32)
    buf = np.empty((nthreads, queries.shape[1]), np.float32)
    for qi in prange(qts.shape[0]):
        t = numba.get_thread_id()
        qt = qts[qi]
        qc = qcs[qi]
        if use_filter:
            filtered_codes_query(qt, qc, codes, codes_f, bits, half, links0, links_up, up_offset, entry, max_level,
                                 ef, allowed, invert, visited, tags, t, fresh[t], pool_d[t], pool_i[t], mode, metric,
                                 queries[qi], vectors, mean, res_bits, res_offset, n_rerank, k, buf[t], out_d[qi],
                                 out_i[qi])
            continue
        tag = next_tag(visited, tags, t)
        ep_d = affine_score(qt, qc, codes, codes_f, entry, bits, half)
        ep, ep_d = greedy_descend_codes(qt, qc, codes, codes_f, bits, half, links_up, up_offset, entry, ep_d,
                                        max_level)
        size = search_layer0_codes(qt, qc, codes, codes_f, bits, half, links0, ep, ep_d, ef, visited[t], tag,
                                   pool_d[t], pool_i[t], pool_done[t], fresh[t])
        rerank_into(mode, metric, queries[qi], vectors, codes, codes_f, mean, bits, half, res_bits, res_offset,
                    pool_d[t], pool_i[t], size, n_rerank, k, buf[t], out_d[qi], out_i[qi])


@kernel(parallel=True)
def search_batch_codes_ranges(qts, qcs, codes, codes_f, bits, half, links0, links_up, up_offset, entry, max_level,
                              ef, k, n_rerank, mode, metric, queries, vectors, mean, res_bits, res_offset, rows, lo,
                              hi, deleted, out_d, out_i, visited, tags):
    """k-NN of ``queries[rows[r]]`` among the slots ``lo[r] <= slot < hi[r]`` whose ``deleted`` byte is 0, for
    every r in parallel (a window index node; see :func:`simdex.dense._hnsw_kernels.search_batch_ranges`);
    writes row r of ``out_d``/``out_i`` (len(rows), k)."""
    nthreads = visited.shape[0]
    pool_d = np.empty((nthreads, ef), np.float32)
    pool_i = np.empty((nthreads, ef), np.int32)
    fresh = np.empty((nthreads, links0.shape[1]), np.int32)
    buf = np.empty((nthreads, queries.shape[1]), np.float32)
    masks = np.zeros((nthreads, deleted.shape[0]), np.uint8)
    for r in prange(rows.shape[0]):
        t = numba.get_thread_id()
        mask = masks[t]
        open_range(mask, deleted, lo[r], hi[r])
        qi = rows[r]
        filtered_codes_query(qts[qi], qcs[qi], codes, codes_f, bits, half, links0, links_up, up_offset, entry,
                             max_level, ef, mask, False, visited, tags, t, fresh[t], pool_d[t], pool_i[t], mode,
                             metric, queries[qi], vectors, mean, res_bits, res_offset, n_rerank, k, buf[t], out_d[r],
                             out_i[r])
        mask[lo[r]:hi[r]] = 0
