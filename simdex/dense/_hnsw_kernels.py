"""Numba kernels that build the HNSW graph (Malkov & Yashunin, 2018); searching it is :mod:`simdex.core.graph`.

Graph layout (flat arrays, no Python objects):

- ``links0``: int32 (capacity, M0 + 1). Row v holds node v's layer-0 adjacency: column 0 is the degree, columns
  1..degree the neighbour slots. One row is contiguous, so a node's neighbours cost one or two cache lines.
- ``links_up``: int32 (rows, M + 1), the same for layers >= 1. Node v at layer l (1 <= l <= levels[v]) uses row
  ``up_offset[v] + l - 1``.
- ``vectors``: float32 (capacity, dim); for ip/cosine the kernels score ``-<q, x>`` (see :mod:`simdex.metrics`).

Construction inserts points in batches so that it can run in parallel and stays deterministic: phase A searches
the graph as it was before the batch (read-only) for every new point in parallel, adds the batch's own points
as candidates by brute force, and writes each new point's out-links; phase B groups the reverse links by target
and lets one thread update each target, pruning with the same heuristic when a list overflows.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import kernel
from ..core.beam import contains, next_tag, pair_scratch, pool_insert, pool_scratch
from ..core.graph import descend, search_layer
from ..core.scorer import Vectors, sort_pairs, sort_prefix
from ..metrics import distance


# ``expanded=False`` as a typed value: the searches pass a bool, and a literal False would compile the whole search
# loop a second time
NO_RECORD = np.bool_(False)


@kernel
def select_neighbors(vectors, metric, cand_d, cand_i, n_cand, m, out):
    """The HNSW neighbour-selection heuristic (the paper's Algorithm 4 without extension).

    Candidates are in ascending distance order. A candidate is kept only if it is closer to the base point than
    to every neighbour already kept, which spreads links over directions instead of clustering them. Writes at
    most m slots into ``out`` and returns how many.
    """
    count = 0
    for c in range(n_cand):
        e = cand_i[c]
        de = cand_d[c]
        keep = True
        for s in range(count):
            if distance(metric, vectors[e], vectors[out[s]]) < de:
                keep = False
                break
        if keep:
            out[count] = e
            count += 1
            if count >= m:
                break
    return count


@kernel
def connect_rows(vectors, metric, links0, links_up, up_offset, levels, deleted, entry, max_level, has_graph,
                 batch_start, batch_end, ef, m, fwd_d0, fwd_dup, visited, tags, t, lo, hi):
    """Phase A of batch insertion for the batch positions lo..hi-1, on thread slot t: choose out-links of the new
    nodes batch_start+lo..batch_start+hi-1 of the batch batch_start..batch_end-1 (the caller spreads the batch
    over threads with :func:`simdex._numba.run_threads`).

    Reads only the graph as it was before the batch (no existing node links to a new one yet); the batch's own
    nodes are added as candidates by brute force. Writes the new nodes' adjacency rows and the distances of the
    chosen links (``fwd_d0`` (B, m) for layer 0, ``fwd_dup`` per upper row).

    The brute-force part runs here rather than as one BLAS product: OpenBLAS worker threads keep spinning after
    a call and would compete with this kernel's threads for the cores.
    """
    nb = batch_end - batch_start
    cap = ef + nb
    pool_d, pool_i, pool_done, fresh = pool_scratch(1, cap, links0.shape[1])
    sel_d, sel_i = pair_scratch(1, cap)
    chosen = np.empty(m, np.int32)
    intra = np.empty(nb, np.float32)
    for b in range(lo, hi):
        _connect_one(vectors, metric, links0, links_up, up_offset, levels, deleted, entry, max_level, has_graph,
                     batch_start, nb, b, ef, m, fwd_d0, fwd_dup, visited, tags, t,
                     pool_d[0], pool_i[0], pool_done[0], fresh[0], sel_d[0], sel_i[0], chosen, intra)


@kernel
def _connect_one(vectors, metric, links0, links_up, up_offset, levels, deleted, entry, max_level, has_graph,
                 batch_start, nb, b, ef, m, fwd_d0, fwd_dup, visited, tags, t, pool_d, pool_i, pool_done,
                 fresh, sel_d, sel_i, chosen, intra):
    """Phase A for one new node (batch position b); see :func:`connect_batch`."""
    cap = pool_d.shape[0]
    sc = Vectors(metric, vectors, vectors)
    u = batch_start + b
    q = vectors[u]
    level_u = np.int64(levels[u])
    for c in range(nb):
        if c != b:
            intra[c] = distance(metric, q, vectors[batch_start + c])
    ep = entry
    ep_d = np.float32(0.0)
    if has_graph:
        ep, ep_d = descend(sc, q, links_up, up_offset, entry, max_level, level_u)
    for layer in range(level_u, -1, -1):
        size = 0
        if has_graph and layer <= max_level:
            tag = next_tag(visited, tags, t)
            size, _, _, _ = search_layer(sc, q, links0, links_up, up_offset, layer, ep, ep_d, ef, visited[t], tag,
                                         pool_d, pool_i, pool_done, fresh, NO_RECORD, sel_d[:0], sel_i[:0])
            # the next layer starts from the nearest node of the old graph; never from a node of this batch,
            # whose links other threads are writing
            ep = pool_i[0]
            ep_d = pool_d[0]
        # the batch's own nodes that reach this layer are candidates too
        for c in range(nb):
            if c != b and levels[batch_start + c] >= layer:
                size, _ = pool_insert(pool_d, pool_i, pool_done, size, cap, intra[c], np.int32(batch_start + c))
        n_sel = 0
        for c in range(size):
            if deleted[pool_i[c]] == 0:
                sel_d[n_sel] = pool_d[c]
                sel_i[n_sel] = pool_i[c]
                n_sel += 1
                if n_sel == ef:
                    break
        count = select_neighbors(vectors, metric, sel_d, sel_i, n_sel, m, chosen)
        row = u if layer == 0 else up_offset[u] + layer - 1
        links = links0 if layer == 0 else links_up
        links[row, 0] = count
        for j in range(count):
            links[row, 1 + j] = chosen[j]
        # distances of the chosen links, for phase B (chosen is a subsequence of sel)
        c = 0
        for j in range(count):
            while sel_i[c] != chosen[j]:
                c += 1
            if layer == 0:
                fwd_d0[b, j] = sel_d[c]
            else:
                fwd_dup[row, j] = sel_d[c]


@kernel
def collect_reverse_edges(links, rows, nodes, fwd_d, fwd_rows, dst, src, dist):
    """List (target, source node, distance) for the out-links in adjacency rows ``rows`` of one layer.

    ``nodes[r]`` is the node owning ``rows[r]`` and ``fwd_d[fwd_rows[r]]`` the distances of its links.
    Returns the number of edges written.
    """
    n = 0
    for r in range(rows.shape[0]):
        row = rows[r]
        deg = links[row, 0]
        for j in range(deg):
            dst[n] = links[row, 1 + j]
            src[n] = nodes[r]
            dist[n] = fwd_d[fwd_rows[r], j]
            n += 1
    return n


@kernel
def merge_in_links(links, row, src, dist, lo, hi, room):
    """Phase B for one node: its out-list ``links[row]`` pooled with its new in-neighbours ``src[lo:hi]`` (at
    distances ``dist[lo:hi]``), duplicates skipped. When the pool fits in ``room`` slots the row is extended in
    place (entries first, then the degree, so a concurrent reader never sees a degree covering unwritten
    entries). Returns (fits, cand_d, cand_i, n, n_old): the pool of n, its first n_old the old neighbours (their
    distances not filled in), for the caller to prune when it does not fit."""
    deg = links[row, 0]
    cand_d = np.empty(deg + hi - lo, np.float32)
    cand_i = np.empty(deg + hi - lo, np.int32)
    for j in range(deg):
        cand_i[j] = links[row, 1 + j]
    n = np.int64(deg)
    for e in range(lo, hi):
        s = src[e]
        if not contains(cand_i, n, s):
            cand_i[n] = s
            cand_d[n] = dist[e]
            n += 1
    fits = n <= room
    if fits:
        for j in range(deg, n):
            links[row, 1 + j] = cand_i[j]
        links[row, 0] = n
    return fits, cand_d, cand_i, n, deg


@kernel
def add_reverse_links(vectors, metric, links, up_offset, layer, cap, dst, src_node, dist, group_start, t, first,
                      last):
    """Phase B for the groups first..last-1: link each target ``dst`` back to its new in-neighbours (groups are
    spread over threads with :func:`simdex._numba.run_threads`; ``t`` is unused, every group writes only its
    target's row).

    Edges are sorted by target; group g spans dst[group_start[g]:group_start[g+1]]. When the target's list
    overflows, its old and new neighbours are pooled, sorted by distance and pruned with the heuristic.
    """
    for g in range(first, last):
        lo = group_start[g]
        hi = group_start[g + 1]
        v = dst[lo]
        row = v if layer == 0 else up_offset[v] + layer - 1
        fits, cand_d, cand_i, n, n_old = merge_in_links(links, row, src_node, dist, lo, hi, cap)
        if fits:
            continue
        for j in range(n_old):
            cand_d[j] = distance(metric, vectors[v], vectors[cand_i[j]])
        sort_prefix(cand_d, cand_i, n)
        chosen = np.empty(cap, np.int32)
        count = select_neighbors(vectors, metric, cand_d, cand_i, n, cap, chosen)
        links[row, 0] = count
        for j in range(count):
            links[row, 1 + j] = chosen[j]


@kernel(parallel=True)
def repair_deleted(vectors, metric, links, up_offset, layer, nodes, deleted, cap, scratch_cap):
    """Remove links to deleted nodes from ``nodes``' rows in one layer (FreshDiskANN's delete consolidation).

    A live node p that linked to deleted nodes takes the deleted nodes' live neighbours as candidates together
    with its own live neighbours, and keeps the heuristic's choice of them. Deleted nodes' rows are only read.
    """
    for r in prange(nodes.shape[0]):
        p = nodes[r]
        row = p if layer == 0 else up_offset[p] + layer - 1
        deg = links[row, 0]
        touched = False
        for j in range(1, deg + 1):
            if deleted[links[row, j]]:
                touched = True
                break
        if not touched:
            continue
        cand_i = np.empty(scratch_cap, np.int32)
        n = 0
        for j in range(1, deg + 1):
            x = links[row, j]
            if deleted[x] == 0:
                cand_i[n] = x
                n += 1
            else:
                xrow = x if layer == 0 else up_offset[x] + layer - 1
                for jj in range(1, links[xrow, 0] + 1):
                    y = links[xrow, jj]
                    if deleted[y] or y == p:
                        continue
                    if not contains(cand_i, n, y) and n < scratch_cap:
                        cand_i[n] = y
                        n += 1
        cand_d = np.empty(n, np.float32)
        for j in range(n):
            cand_d[j] = distance(metric, vectors[p], vectors[cand_i[j]])
        sort_pairs(cand_d, cand_i, n)
        chosen = np.empty(cap, np.int32)
        count = select_neighbors(vectors, metric, cand_d, cand_i, n, cap, chosen)
        # The heuristic alone leaves fewer links than the node had (its list had grown through reverse links);
        # top it up with the nearest unchosen candidates so that deletions do not thin the graph out.
        target = min(deg, n)
        c = 0
        while count < target and c < n:
            x = cand_i[c]
            if not contains(chosen, count, x):
                chosen[count] = x
                count += 1
            c += 1
        links[row, 0] = count
        for j in range(count):
            links[row, 1 + j] = chosen[j]


@kernel(parallel=True)
def remap_links(links, remap):
    """Rewrite neighbour slots through ``remap`` (old slot -> new slot) in place; rows keep their order."""
    for row in prange(links.shape[0]):
        deg = links[row, 0]
        for j in range(1, deg + 1):
            links[row, j] = remap[links[row, j]]
