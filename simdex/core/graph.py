"""Graph search, written once for every graph index and every storage: HNSW (:mod:`simdex.dense.hnsw`) and HNSW
over codes (:mod:`simdex.quant.hnsw`), Vamana in memory (:mod:`simdex.dense.vamana`) and on disk
(:mod:`simdex.quant.vamana`), and through them the window and label indexes.

How a node is scored is the scorer's business (:mod:`simdex.core.scorer`: float32 vectors, int8/LVQ codes, PQ
tables); what the search hands back is the finisher's (below: the pool as it is, its live entries, or a
re-ranking, which :mod:`simdex.quant._scorers` adds). Both are NamedTuples, so each combination compiles to one
specialised loop.

Graph layout (flat arrays, no Python objects):

- ``links0``: int32 (capacity, width + 1). Row v holds node v's adjacency in the ground layer: column 0 the
  degree, columns 1..degree the neighbours. A row is contiguous, so one node's neighbours cost a cache line or two.
- ``links_up``: int32 (rows, M + 1), the same for HNSW's layers >= 1: node v at layer l (1 <= l <= its level)
  uses row ``up_offset[v] + l - 1``. A flat graph (Vamana) passes one empty row and ``max_level`` 0.

The beam search keeps one sorted pool of size ef with "expanded" flags instead of the paper's two heaps: the next
node to expand is the nearest unexpanded one, and the search ends when every pool entry is expanded. It visits the
same nodes as the two-heap version for the same ef, with less bookkeeping. The filtered search keeps the two heaps,
because it must traverse nodes it does not collect.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._heap import copy_padded, heap_sort_ascending
from .._numba import kernel, run_threads
from ..metrics import public_into
from .beam import (candidate_pop, consider, gather_unvisited, next_tag, next_unexpanded, open_range, pair_scratch,
                   pool_offer, pool_scratch, pool_start, record)
from .scorer import finish, implement, prefetch, query, score, score4


class TopK(NamedTuple):
    """Finisher: the k nearest candidates as they are."""


class LiveTopK(NamedTuple):
    """Finisher: the k nearest candidates whose ``state`` byte is 0 (tombstones route searches but are dropped
    here, at result time, so a delete is seen by every later search)."""

    state: np.ndarray


def _topk_finish(fin, qi, t, cand_d, cand_i, n, out_d, out_i):
    copy_padded(cand_d, cand_i, n, out_d, out_i)


def _live_finish(fin, qi, t, cand_d, cand_i, n, out_d, out_i):
    k = out_d.shape[0]
    j = 0
    for c in range(n):
        if j == k:
            break
        if fin.state[cand_i[c]] == 0:
            out_d[j] = cand_d[c]
            out_i[j] = cand_i[c]
            j += 1
    copy_padded(out_d, out_i, j, out_d, out_i)


implement(TopK, finish=_topk_finish)
implement(LiveTopK, finish=_live_finish)


# Layer 0 as a typed value, not a literal: numba compiles a callee once per argument type, and a literal 0 is a type
# of its own (a second compilation of the whole search loop, about a second on a fresh install).
GROUND = np.int64(0)


@kernel
def flat_layers():
    """``links_up`` and ``up_offset`` of a graph without upper layers (Vamana)."""
    return np.zeros((1, 1), np.int32), np.zeros(1, np.int32)


@kernel
def greedy_descend(sc, q, links_up, up_offset, ep, ep_d, top_layer, stop_layer):
    """Greedy walk on layers top_layer..stop_layer+1 (descending); returns the closest node found and its distance."""
    for layer in range(top_layer, stop_layer, -1):
        changed = True
        while changed:
            changed = False
            row = up_offset[ep] + layer - 1
            deg = links_up[row, 0]
            for j in range(1, deg + 1):
                prefetch(sc, links_up[row, j])
            for j in range(1, deg + 1):
                nb = links_up[row, j]
                d = score(sc, q, nb)
                if d < ep_d:
                    ep_d = d
                    ep = nb
                    changed = True
    return ep, ep_d


@kernel(inline="always")
def descend(sc, q, links_up, up_offset, entry, max_level, stop_layer):
    """Score the entry point and walk greedily down to layer ``stop_layer + 1``: (start node, its distance)."""
    return greedy_descend(sc, q, links_up, up_offset, entry, score(sc, q, entry), max_level, stop_layer)


@kernel
def search_layer(sc, q, links0, links_up, up_offset, layer, ep, ep_d, ef, visited, tag, pool_d, pool_i, pool_done,
                 fresh, expanded, exp_d, exp_i):
    """Best-first search of one layer from ``ep`` with a sorted pool of size ef (filled ascending).

    ``visited`` is this thread's uint16 row and ``tag`` the current generation; ``fresh`` is int32 scratch of at
    least the maximum degree. With ``expanded`` every expanded node is also listed, in order, with its distance,
    in ``exp_d``/``exp_i`` (grown when full): Vamana prunes them (the visited set V of GreedySearch), and the
    disk index ranks them by the exact distances read with their links. Returns (pool size, number expanded,
    exp_d, exp_i).
    """
    links = links0 if layer == 0 else links_up
    size = pool_start(pool_d, pool_i, pool_done, visited, tag, ep, ep_d)
    n_exp = np.int64(0)  # not a literal: numba would compile the callees once more for a literal first value
    cur = 0
    while cur < size:
        pool_done[cur] = True
        node = pool_i[cur]
        if expanded:
            exp_d, exp_i = record(exp_d, exp_i, n_exp, pool_d[cur], node)
            n_exp += 1
        row = node if layer == 0 else up_offset[node] + layer - 1
        n_fresh = gather_unvisited(sc, links, row, visited, tag, fresh)
        lowest = size
        j = 0
        while j + 4 <= n_fresh:
            n0, n1, n2, n3 = fresh[j], fresh[j + 1], fresh[j + 2], fresh[j + 3]
            d0, d1, d2, d3 = score4(sc, q, n0, n1, n2, n3)
            size, lowest = pool_offer(pool_d, pool_i, pool_done, size, ef, d0, n0, lowest)
            size, lowest = pool_offer(pool_d, pool_i, pool_done, size, ef, d1, n1, lowest)
            size, lowest = pool_offer(pool_d, pool_i, pool_done, size, ef, d2, n2, lowest)
            size, lowest = pool_offer(pool_d, pool_i, pool_done, size, ef, d3, n3, lowest)
            j += 4
        while j < n_fresh:
            size, lowest = pool_offer(pool_d, pool_i, pool_done, size, ef, score(sc, q, fresh[j]), fresh[j], lowest)
            j += 1
        cur = next_unexpanded(pool_done, size, cur, lowest)
    return size, n_exp, exp_d, exp_i


@kernel
def search_layer_heap(sc, q, links0, links_up, up_offset, layer, ep, ep_d, ef, use_filter, allowed, invert,
                      visited, tag, fresh, cand_d, cand_i, res_d, res_i):
    """Best-first search of one layer with the paper's two heaps.

    Candidates form a queue (grown on demand), results a max-heap of size ef. With ``use_filter`` every node is
    traversed but only ``allowed`` ones enter the results, and the search goes on until ef of them are found, so
    its effort grows as the allowed fraction shrinks (the callers switch to exact search when that fraction is
    small). With ``invert`` the array lists excluded nodes instead (tombstones), so that deletions alone cost no
    per-query mask. Returns (number of results, cand_d, cand_i): the candidate arrays may have been reallocated.
    Results are left as a heap; sort them with ``heap_sort_ascending(res_d[:n], res_i[:n])``.
    """
    links = links0 if layer == 0 else links_up
    n_res = 0
    n_cand = 1
    cand_d[0] = -ep_d
    cand_i[0] = ep
    visited[ep] = tag
    if not use_filter or (allowed[ep] != 0) != invert:
        res_d[0] = ep_d
        res_i[0] = ep
        n_res = 1
    while n_cand > 0:
        cd = -cand_d[0]
        node = cand_i[0]
        if n_res == ef and cd > res_d[0]:
            break
        candidate_pop(cand_d, cand_i, n_cand)
        n_cand -= 1
        row = node if layer == 0 else up_offset[node] + layer - 1
        n_fresh = gather_unvisited(sc, links, row, visited, tag, fresh)
        j = 0
        while j + 4 <= n_fresh:
            n0, n1, n2, n3 = fresh[j], fresh[j + 1], fresh[j + 2], fresh[j + 3]
            d0, d1, d2, d3 = score4(sc, q, n0, n1, n2, n3)
            for d, nb in ((d0, n0), (d1, n1), (d2, n2), (d3, n3)):
                cand_d, cand_i, n_cand, n_res = consider(d, nb, ef, use_filter, allowed, invert, cand_d, cand_i,
                                                         n_cand, res_d, res_i, n_res)
            j += 4
        while j < n_fresh:
            cand_d, cand_i, n_cand, n_res = consider(score(sc, q, fresh[j]), fresh[j], ef, use_filter, allowed,
                                                     invert, cand_d, cand_i, n_cand, res_d, res_i, n_res)
            j += 1
    return n_res, cand_d, cand_i


@kernel
def search_rows(sc, fin, links0, links_up, up_offset, entry, max_level, k, ef, expanded, out_d, out_i, visited,
                tags, metric, slot_ids, ids, t, lo, hi):
    """k-NN of queries lo..hi-1 of ``sc`` on thread slot t (see :func:`search_batch`)."""
    pool_d, pool_i, pool_done, fresh = pool_scratch(1, ef, links0.shape[1])
    exp_d, exp_i = pair_scratch(1, 4 * ef + 16 if expanded else 0)
    for qi in range(lo, hi):
        q = query(sc, qi, t)
        tag = next_tag(visited, tags, t)
        ep, ep_d = descend(sc, q, links_up, up_offset, entry, max_level, GROUND)
        size, n_exp, ed, ei = search_layer(sc, q, links0, links_up, up_offset, GROUND, ep, ep_d, ef, visited[t], tag,
                                           pool_d[0], pool_i[0], pool_done[0], fresh[0], expanded, exp_d[0],
                                           exp_i[0])
        if expanded:
            finish(fin, qi, t, ed, ei, n_exp, out_d[qi, :k], out_i[qi, :k])
        else:
            finish(fin, qi, t, pool_d[0], pool_i[0], size, out_d[qi, :k], out_i[qi, :k])
        public_into(metric, out_d[qi], out_i[qi], slot_ids, ids[qi])


def search_batch(sc, fin, links0, links_up, up_offset, entry, max_level, k, ef, expanded, out_d, out_i, visited,
                 tags, metric, slot_ids, ids) -> None:
    """k-NN of every query of ``sc``: descend the upper layers, beam-search the ground layer with a pool of ef,
    and let the finisher ``fin`` write row qi of ``out_d``/``out_i`` (nq, k) from the pool, or with ``expanded``
    from the expanded nodes in order (see :func:`search_layer`). The queries are spread over one thread per row
    of ``visited``/``tags`` (:func:`simdex._numba.run_threads`).

    The answer is written in its public form (:func:`simdex.metrics.public_results` for the internal ``metric``
    code): distances in ``out_d``, the ``slot_ids`` of the slots in ``ids`` (nq, k) int64; ``out_i`` holds the
    slots. Converting inside the kernel spares one query per call a second kernel call and its Python layer."""
    args = (sc, fin, links0, links_up, up_offset, entry, max_level, k, ef, expanded, out_d, out_i, visited, tags,
            metric, slot_ids, ids)
    if visited.shape[0] == 1:  # one thread: straight to the kernel (run_threads' layer is 1.5 us of a query)
        search_rows(*args, 0, 0, out_d.shape[0])
    else:
        run_threads(search_rows, out_d.shape[0], visited.shape[0], *args)


@kernel
def filtered_query(sc, fin, qi, t, links0, links_up, up_offset, entry, max_level, k, ef, allowed, invert,
                   visited, tags, fresh, res_d, res_i, out_d, out_i):
    """Query qi's k-NN among slots with ``allowed[slot] != 0`` (``== 0`` with ``invert``), on thread t's scratch
    (``fresh``, ``res_d``/``res_i`` of size ef); the finisher writes ``out_d``/``out_i`` (k,)."""
    cand_d = np.empty(4 * ef + 64, np.float32)
    cand_i = np.empty(4 * ef + 64, np.int32)
    q = query(sc, qi, t)
    tag = next_tag(visited, tags, t)
    ep, ep_d = descend(sc, q, links_up, up_offset, entry, max_level, GROUND)
    n_res, cand_d, cand_i = search_layer_heap(sc, q, links0, links_up, up_offset, GROUND, ep, ep_d, ef, True, allowed,
                                              invert, visited[t], tag, fresh, cand_d, cand_i, res_d, res_i)
    heap_sort_ascending(res_d[:n_res], res_i[:n_res])
    finish(fin, qi, t, res_d, res_i, n_res, out_d[:k], out_i[:k])


@kernel
def filtered_rows(sc, fin, links0, links_up, up_offset, entry, max_level, k, ef, allowed, invert, out_d, out_i,
                  visited, tags, metric, slot_ids, ids, t, lo, hi):
    """:func:`filtered_query` for queries lo..hi-1 on thread slot t (see :func:`search_batch_filtered`)."""
    res_d, res_i, _, fresh = pool_scratch(1, ef, links0.shape[1])
    for qi in range(lo, hi):
        filtered_query(sc, fin, qi, t, links0, links_up, up_offset, entry, max_level, k, ef, allowed, invert,
                       visited, tags, fresh[0], res_d[0], res_i[0], out_d[qi], out_i[qi])
        public_into(metric, out_d[qi], out_i[qi], slot_ids, ids[qi])


def search_batch_filtered(sc, fin, links0, links_up, up_offset, entry, max_level, k, ef, allowed, invert, out_d,
                          out_i, visited, tags, metric, slot_ids, ids) -> None:
    """k-NN of every query restricted to slots with ``allowed[slot] != 0`` (``== 0`` with ``invert``), the
    queries spread over one thread per row of ``visited``/``tags`` (:func:`filtered_query`); the answer in its
    public form, as :func:`search_batch` writes it."""
    run_threads(filtered_rows, out_d.shape[0], visited.shape[0], sc, fin, links0, links_up, up_offset, entry,
                max_level, k, ef, allowed, invert, out_d, out_i, visited, tags, metric, slot_ids, ids)


@kernel
def range_rows(sc, fin, links0, links_up, up_offset, entry, max_level, rows, lo, hi, deleted, k, ef, out_d, out_i,
               visited, tags, t, first, last):
    """:func:`search_batch_ranges` for r in first..last-1 on thread slot t."""
    res_d, res_i, _, fresh = pool_scratch(1, ef, links0.shape[1])
    mask = np.zeros(deleted.shape[0], np.uint8)
    for r in range(first, last):
        open_range(mask, deleted, lo[r], hi[r])
        filtered_query(sc, fin, np.int64(rows[r]), t, links0, links_up, up_offset, entry, max_level, k, ef, mask,
                       False, visited, tags, fresh[0], res_d[0], res_i[0], out_d[r], out_i[r])
        mask[lo[r]:hi[r]] = 0


def search_batch_ranges(sc, fin, links0, links_up, up_offset, entry, max_level, rows, lo, hi, deleted, k, ef,
                        out_d, out_i, visited, tags) -> None:
    """k-NN of query ``rows[r]`` of ``sc`` among the slots ``lo[r] <= slot < hi[r]`` whose ``deleted`` byte is 0,
    for every r; the finisher writes row r of ``out_d``/``out_i`` (len(rows), k).

    One call serves a whole batch of queries with different ranges of one graph (a window index node): each
    thread keeps a slot mask and opens the query's range in it for the search (:func:`open_range`).
    """
    run_threads(range_rows, rows.shape[0], visited.shape[0], sc, fin, links0, links_up, up_offset, entry,
                max_level, rows, lo, hi, deleted, k, ef, out_d, out_i, visited, tags)
