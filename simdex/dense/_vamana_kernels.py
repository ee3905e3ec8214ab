"""Numba kernels that build and repair the Vamana / FreshDiskANN graph (Subramanya et al., "DiskANN", NeurIPS 2019;
Singh et al., "FreshDiskANN", 2021); searching it is :mod:`simdex.core.graph` (``adj`` is its ``links0``).

Graph layout (flat arrays, no Python objects):

- ``adj``: int32 (capacity, room + 1), room = R plus some slack. Row v is node v's out-list: column 0 the
  degree, columns 1..degree the neighbour slots. Every value a row has ever held is a valid slot below the
  capacity, so a search that reads a row while a writer replaces it sees a mix of old and new neighbours, never an
  out-of-range slot.
- ``vectors``: float32 (capacity, dim).
- ``state``: uint8 (capacity): 0 live, 1 deleted (a tombstone: still traversed, never returned), 2 free (unlinked
  by consolidation, waiting to be reused).

The graph is built and repaired in squared L2 whatever the search metric (for cosine, unit vectors, this orders
exactly as the cosine distance); ``alpha2`` is the square of the paper's alpha, so that alpha keeps its meaning
for unsquared distances.

Building is batch-parallel and deterministic, like the HNSW build: phase A (:func:`link_batch`) computes the new
out-lists of a batch of nodes in parallel while reading the graph as it was before the batch, into scratch rows;
the caller commits them; phase B (:func:`add_reverse_links`) groups the reverse edges by target and lets one
thread update each target, pruning with RobustPrune when a list overflows.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from .._numba import kernel, prefetch_row
from ..core.beam import contains, next_tag, pair_scratch, pool_scratch
from ..core.graph import descend, flat_layers, search_layer
from ..core.scorer import VECTOR_PREFETCH_LINES, implement
from ..metrics import l2sq
from ._hnsw_kernels import merge_in_links


class BuildL2(NamedTuple):
    """Scorer of the build's searches (:mod:`simdex.core.scorer`): squared L2 between stored rows, one row at a
    time with :func:`simdex.metrics.l2sq`, the distance RobustPrune and the other candidates are scored with."""

    vectors: np.ndarray


implement(BuildL2,
          query=lambda sc, qi, t: sc.vectors[qi],
          score=lambda sc, q, v: l2sq(q, sc.vectors[v]),
          prefetch=lambda sc, v: prefetch_row(sc.vectors, v, VECTOR_PREFETCH_LINES))


@kernel
def robust_prune(vectors, cand_d, cand_i, n, alpha2, R, occ, out_pos):
    """RobustPrune (DiskANN Algorithm 2) over candidates sorted by ascending squared distance to the node p.

    A candidate c is occluded by a kept neighbour s when ``d(p, c) / d(s, c)`` reaches the current factor: s
    covers c's direction. As in the DiskANN code, a first round at factor 1 keeps the diverse core, and only if
    it leaves room a second round at ``alpha2`` adds the candidates that alpha > 1 spares (the long edges that
    shorten greedy paths); a single round at alpha2 would fill the list with near, redundant points before it
    reached the diverse ones. ``occ`` (n,) float32 is scratch. Writes the kept candidates' positions, ascending,
    into ``out_pos``; returns how many (at most R).
    """
    for c in range(n):
        occ[c] = 0.0
    count = 0
    rounds = 2 if alpha2 > 1.0 else 1
    for rnd in range(rounds):
        factor = np.float32(1.0) if rnd == 0 else alpha2
        for c in range(n):
            if count >= R:
                break
            if occ[c] > factor or occ[c] < 0:  # occluded, or already kept (marked -1)
                continue
            occ[c] = -1.0
            out_pos[count] = c
            count += 1
            e = cand_i[c]
            for t in range(c + 1, n):
                if occ[t] < 0 or occ[t] > alpha2:  # kept, or occluded for good: no need to look again
                    continue
                djk = l2sq(vectors[e], vectors[cand_i[t]])
                ratio = np.float32(np.inf) if djk <= 0 else cand_d[t] / djk
                if ratio > occ[t]:
                    occ[t] = ratio
    out_pos[:count].sort()
    return count


@kernel
def _prune_into_row(vectors, cand_d, cand_i, n, alpha2, R, row_out, d_out):
    """Sort n candidates, RobustPrune them and write the result as an adjacency row (+ the kept distances)."""
    order = np.argsort(cand_d[:n], kind="mergesort")
    sd = cand_d[:n][order]
    si = cand_i[:n][order]
    occ = np.empty(n, np.float32)
    pos = np.empty(R, np.int64)
    count = robust_prune(vectors, sd, si, n, alpha2, R, occ, pos)
    row_out[0] = count
    for j in range(count):
        row_out[1 + j] = si[pos[j]]
        d_out[j] = sd[pos[j]]
    return count


@kernel
def _prune_in_place(vectors, adj, v, cand_d, cand_i, n, alpha2, R):
    """RobustPrune n candidates of node v and replace its row with the result (entries first, then the degree, so
    a concurrent reader never sees a degree covering unwritten entries)."""
    row = np.empty(R + 1, np.int32)
    row_d = np.empty(R, np.float32)
    count = _prune_into_row(vectors, cand_d, cand_i, n, alpha2, R, row, row_d)
    for j in range(count):
        adj[v, 1 + j] = row[1 + j]
    adj[v, 0] = count


@kernel(parallel=True)
def link_batch(vectors, adj, state, nodes, entry, has_graph, L, R, alpha2, intra, keep_old, new_rows, new_d,
               visited, tags):
    """Phase A: new out-lists of ``nodes`` (int64 (B,)) into ``new_rows`` (B, R + 1) and ``new_d`` (B, R).

    Each node searches the graph from ``entry`` for its own vector and prunes the expanded nodes (plus, with
    ``keep_old``, its current neighbours: the second build pass; plus, with ``intra``, the other nodes of the
    batch by brute force, which are not in the graph yet). Deleted and free nodes are never chosen. Reads the
    graph only; the caller commits the rows.
    """
    nb = nodes.shape[0]
    nthreads = visited.shape[0]
    exp_cap = 4 * L + 16
    cand_cap = exp_cap + adj.shape[1] + (nb if intra else 0)
    sc = BuildL2(vectors)
    up, up_offset = flat_layers()
    pool_d, pool_i, pool_done, fresh = pool_scratch(nthreads, L, adj.shape[1])
    exp_d, exp_i = pair_scratch(nthreads, exp_cap)
    cand_d, cand_i = pair_scratch(nthreads, cand_cap)
    for b in prange(nb):
        t = numba.get_thread_id()
        u = nodes[b]
        q = vectors[u]
        n = 0
        if has_graph:
            tag = next_tag(visited, tags, t)
            # the expanded nodes are the visited set V that RobustPrune chooses from (the first exp_cap of them)
            ep, ep_d = descend(sc, q, up, up_offset, entry, 0, 0)
            _, n_exp, ed, ei = search_layer(sc, q, adj, up, up_offset, 0, ep, ep_d, L, visited[t], tag, pool_d[t],
                                            pool_i[t], pool_done[t], fresh[t], True, exp_d[t], exp_i[t])
            for j in range(min(n_exp, exp_cap)):
                v = ei[j]
                if v != u and state[v] == 0:
                    cand_d[t, n] = ed[j]
                    cand_i[t, n] = v
                    n += 1
        if keep_old:
            n_searched = n
            for j in range(1, adj[u, 0] + 1):
                v = adj[u, j]
                if v != u and state[v] == 0 and not contains(cand_i[t], n_searched, v):
                    cand_d[t, n] = l2sq(q, vectors[v])
                    cand_i[t, n] = v
                    n += 1
        if intra:
            for c in range(nb):
                if c != b:
                    v = nodes[c]
                    cand_d[t, n] = l2sq(q, vectors[v])
                    cand_i[t, n] = v
                    n += 1
        _prune_into_row(vectors, cand_d[t], cand_i[t], n, alpha2, R, new_rows[b], new_d[b])


@kernel
def collect_reverse_edges(nodes, new_rows, new_d, dst, src, dist):
    """List (target, source, distance) of every out-link in ``new_rows``. Returns the number of edges."""
    n = 0
    for b in range(nodes.shape[0]):
        for j in range(new_rows[b, 0]):
            dst[n] = new_rows[b, 1 + j]
            src[n] = nodes[b]
            dist[n] = new_d[b, j]
            n += 1
    return n


@kernel(parallel=True)
def add_reverse_links(vectors, adj, state, R, alpha2, dst, src, dist, group_start):
    """Phase B: link each target back to its new in-neighbours, one thread per target.

    Edges are sorted by target; group g spans ``dst[group_start[g]:group_start[g + 1]]``. A list that stays
    within the row's room (``adj.shape[1] - 1``, some slack above R) gets the new sources appended (entries
    first, then the degree, so a concurrent reader never sees a degree covering unwritten entries); one that
    overflows is re-chosen by RobustPrune from old and new, down to R. The slack is DiskANN's: pruning a full
    list costs O(R^2) distances, and without room to grow every insert would prune all R of its neighbours.
    """
    room = adj.shape[1] - 1
    n_groups = group_start.shape[0] - 1
    for g in prange(n_groups):
        lo = group_start[g]
        hi = group_start[g + 1]
        v = dst[lo]
        fits, cand_d, cand_i, n, n_old = merge_in_links(adj, v, src, dist, lo, hi, room)
        if fits:
            continue
        # overflow: drop dead neighbours, score the old ones and prune
        m = 0
        for j in range(n):
            x = cand_i[j]
            if state[x] != 0:
                continue
            cand_i[m] = x
            cand_d[m] = l2sq(vectors[v], vectors[x]) if j < n_old else cand_d[j]
            m += 1
        _prune_in_place(vectors, adj, v, cand_d, cand_i, m, alpha2, R)


@kernel(parallel=True)
def consolidate_deletes(vectors, adj, state, nodes, R, alpha2):
    """FreshDiskANN Algorithm 4 over the live ``nodes``: a node with deleted out-neighbours re-chooses its list
    by RobustPrune from its live neighbours and the live neighbours of its deleted ones.

    Only rows of live nodes are written and only rows of deleted nodes are read besides a node's own, so the
    result does not depend on the order the threads run in. Returns nothing; rows are replaced in place.
    """
    for r in prange(nodes.shape[0]):
        p = nodes[r]
        deg = adj[p, 0]
        touched = False
        for j in range(1, deg + 1):
            if state[adj[p, j]] != 0:
                touched = True
                break
        if not touched:
            continue
        cand_i = np.empty(deg * adj.shape[1], np.int32)
        n = 0
        for j in range(1, deg + 1):
            x = adj[p, j]
            if state[x] == 0:
                if not contains(cand_i, n, x):
                    cand_i[n] = x
                    n += 1
            elif state[x] == 1:
                for jj in range(1, adj[x, 0] + 1):
                    y = adj[x, jj]
                    if state[y] == 0 and y != p and not contains(cand_i, n, y):
                        cand_i[n] = y
                        n += 1
        cand_d = np.empty(n, np.float32)
        for j in range(n):
            cand_d[j] = l2sq(vectors[p], vectors[cand_i[j]])
        _prune_in_place(vectors, adj, p, cand_d, cand_i, n, alpha2, R)
