"""Numba kernels of the HNSW index (Malkov & Yashunin, 2018).

Graph layout (flat arrays, no Python objects):

- ``links0``: int32 (capacity, M0 + 1). Row v holds node v's layer-0 adjacency: column 0 is the degree, columns
  1..degree the neighbour slots. One row is contiguous, so a node's neighbours cost one or two cache lines.
- ``links_up``: int32 (rows, M + 1), the same for layers >= 1. Node v at layer l (1 <= l <= levels[v]) uses row
  ``up_offset[v] + l - 1``.
- ``vectors``: float32 (capacity, dim); for ip/cosine the kernels score ``-<q, x>`` (see :mod:`simdex.metrics`).

Search keeps one sorted candidate pool of size ef with "expanded" flags instead of the paper's two heaps: the
next node to expand is the nearest unexpanded one, and the search ends when every pool entry is expanded. It
visits the same nodes as the two-heap version for the same ef, with less bookkeeping.

Construction inserts points in batches so that it can run in parallel and stays deterministic: phase A searches
the graph as it was before the batch (read-only) for every new point in parallel, adds the batch's own points
as candidates by brute force, and writes each new point's out-links; phase B groups the reverse links by target
and lets one thread update each target, pruning with the same heuristic when a list overflows.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .._heap import heap_push as _heap_push_max
from .._heap import copy_padded, heap_replace_top, heap_sort_ascending
from .._numba import kernel, move_within, prefetch_row
from ..metrics import distance, distance4

# cache lines of each neighbour's vector to request before computing distances
PREFETCH_LINES = 4


@kernel
def next_tag(visited, tags, t):
    """Advance thread t's visited-generation counter, clearing the array when the uint16 counter wraps."""
    tag = tags[t] + 1
    if tag >= 65535:
        visited[t, :] = 0
        tag = 1
    tags[t] = tag
    return np.uint16(tag)


@kernel
def greedy_descend(vectors, metric, links_up, up_offset, q, ep, ep_d, top_layer, stop_layer):
    """Greedy walk on layers top_layer..stop_layer+1 (descending); returns the closest node found and its distance."""
    for layer in range(top_layer, stop_layer, -1):
        changed = True
        while changed:
            changed = False
            row = up_offset[ep] + layer - 1
            deg = links_up[row, 0]
            for j in range(1, deg + 1):
                nb = links_up[row, j]
                d = distance(metric, q, vectors[nb])
                if d < ep_d:
                    ep_d = d
                    ep = nb
                    changed = True
    return ep, ep_d


@kernel
def pool_insert(pool_d, pool_i, pool_done, size, ef, d, node):
    """Insert (d, node) into the ascending pool of capacity ef. Returns (new size, position); position -1 if rejected."""
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
def gather_unvisited(links, row, visited, tag, prefetch_src, lines, fresh):
    """The neighbours in ``links[row]`` (degree first, then node ids) not yet visited by this search: marks them
    visited, starts fetching the first ``lines`` cache lines of their rows of ``prefetch_src`` (vectors or codes)
    and writes them into ``fresh``. Returns how many. Every graph search here expands a node this way."""
    n_fresh = 0
    for j in range(1, links[row, 0] + 1):
        nb = links[row, j]
        if visited[nb] != tag:
            visited[nb] = tag
            prefetch_row(prefetch_src, nb, lines)
            fresh[n_fresh] = nb
            n_fresh += 1
    return n_fresh


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


@kernel
def search_layer(vectors, metric, links0, links_up, up_offset, layer, q, ep, ep_d, ef,
                 visited, tag, pool_d, pool_i, pool_done, fresh):
    """Best-first search of one layer from ``ep``. Fills the pool (ascending) and returns its size.

    ``visited`` is this thread's uint16 row and ``tag`` the current generation; ``fresh`` is int32 scratch of at
    least the maximum degree.
    """
    links = links0 if layer == 0 else links_up
    pool_d[0] = ep_d
    pool_i[0] = ep
    pool_done[0] = False
    size = 1
    visited[ep] = tag
    cur = 0
    while cur < size:
        pool_done[cur] = True
        node = pool_i[cur]
        row = node if layer == 0 else up_offset[node] + layer - 1
        n_fresh = gather_unvisited(links, row, visited, tag, vectors, PREFETCH_LINES, fresh)
        lowest = size
        j = 0
        while j + 4 <= n_fresh:
            n0, n1, n2, n3 = fresh[j], fresh[j + 1], fresh[j + 2], fresh[j + 3]
            d0, d1, d2, d3 = distance4(metric, q, vectors[n0], vectors[n1], vectors[n2], vectors[n3])
            size, pos = pool_insert(pool_d, pool_i, pool_done, size, ef, d0, n0)
            if 0 <= pos < lowest:
                lowest = pos
            size, pos = pool_insert(pool_d, pool_i, pool_done, size, ef, d1, n1)
            if 0 <= pos < lowest:
                lowest = pos
            size, pos = pool_insert(pool_d, pool_i, pool_done, size, ef, d2, n2)
            if 0 <= pos < lowest:
                lowest = pos
            size, pos = pool_insert(pool_d, pool_i, pool_done, size, ef, d3, n3)
            if 0 <= pos < lowest:
                lowest = pos
            j += 4
        while j < n_fresh:
            nb = fresh[j]
            d = distance(metric, q, vectors[nb])
            size, pos = pool_insert(pool_d, pool_i, pool_done, size, ef, d, nb)
            if 0 <= pos < lowest:
                lowest = pos
            j += 1
        cur = next_unexpanded(pool_done, size, cur, lowest)
    return size


@kernel
def _heap_push_min(heap_d, heap_i, n, d, node):
    """Push onto a binary min-heap of n items, growing the arrays when full. Returns (heap_d, heap_i)."""
    if n == heap_d.shape[0]:
        grown_d = np.empty(2 * n, np.float32)
        grown_i = np.empty(2 * n, np.int32)
        grown_d[:n] = heap_d
        grown_i[:n] = heap_i
        heap_d = grown_d
        heap_i = grown_i
    pos = n
    while pos > 0:
        parent = (pos - 1) >> 1
        if heap_d[parent] <= d:
            break
        heap_d[pos] = heap_d[parent]
        heap_i[pos] = heap_i[parent]
        pos = parent
    heap_d[pos] = d
    heap_i[pos] = node
    return heap_d, heap_i


@kernel
def _heap_pop_min(heap_d, heap_i, n):
    """Remove the root of a min-heap of n items (the caller has read it)."""
    n -= 1
    last_d = heap_d[n]
    last_i = heap_i[n]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        if child + 1 < n and heap_d[child + 1] < heap_d[child]:
            child += 1
        if heap_d[child] >= last_d:
            break
        heap_d[pos] = heap_d[child]
        heap_i[pos] = heap_i[child]
        pos = child
    heap_d[pos] = last_d
    heap_i[pos] = last_i


@kernel
def _consider(d, node, ef, use_filter, allowed, invert, cand_d, cand_i, n_cand, res_d, res_i, n_res):
    """Offer one evaluated neighbour to the candidate and result heaps."""
    if n_res < ef or d < res_d[0]:
        cand_d, cand_i = _heap_push_min(cand_d, cand_i, n_cand, d, node)
        n_cand += 1
        if not use_filter or (allowed[node] != 0) != invert:
            if n_res < ef:
                _heap_push_max(res_d, res_i, n_res, d, node)
                n_res += 1
            else:
                heap_replace_top(res_d[:ef], res_i[:ef], d, node)
    return cand_d, cand_i, n_cand, n_res


@kernel
def search_layer_heap(vectors, metric, links0, links_up, up_offset, layer, q, ep, ep_d, ef, use_filter, allowed,
                      invert, visited, tag, fresh, cand_d, cand_i, res_d, res_i):
    """Best-first search of one layer with the paper's two heaps; best when ef is large (construction).

    Candidates form a min-heap (grown on demand), results a max-heap of size ef. With ``use_filter`` every node
    is traversed but only ``allowed`` ones enter the results, and the search goes on until ef of them are found,
    so its effort grows as the allowed fraction shrinks (the caller switches to exact search when that fraction
    is small). With ``invert`` the array lists excluded nodes instead (tombstones), so that deletions alone cost
    no per-query mask. Returns (number of results, cand_d, cand_i): the candidate arrays may have been reallocated.
    Results are left as a heap; sort them with ``heap_sort_ascending(res_d[:n], res_i[:n])``.
    """
    links = links0 if layer == 0 else links_up
    n_res = 0
    n_cand = 1
    cand_d[0] = ep_d
    cand_i[0] = ep
    visited[ep] = tag
    if not use_filter or (allowed[ep] != 0) != invert:
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
        row = node if layer == 0 else up_offset[node] + layer - 1
        n_fresh = gather_unvisited(links, row, visited, tag, vectors, PREFETCH_LINES, fresh)
        j = 0
        while j + 4 <= n_fresh:
            n0, n1, n2, n3 = fresh[j], fresh[j + 1], fresh[j + 2], fresh[j + 3]
            d0, d1, d2, d3 = distance4(metric, q, vectors[n0], vectors[n1], vectors[n2], vectors[n3])
            cand_d, cand_i, n_cand, n_res = _consider(d0, n0, ef, use_filter, allowed, invert, cand_d, cand_i, n_cand,
                                                      res_d, res_i, n_res)
            cand_d, cand_i, n_cand, n_res = _consider(d1, n1, ef, use_filter, allowed, invert, cand_d, cand_i, n_cand,
                                                      res_d, res_i, n_res)
            cand_d, cand_i, n_cand, n_res = _consider(d2, n2, ef, use_filter, allowed, invert, cand_d, cand_i, n_cand,
                                                      res_d, res_i, n_res)
            cand_d, cand_i, n_cand, n_res = _consider(d3, n3, ef, use_filter, allowed, invert, cand_d, cand_i, n_cand,
                                                      res_d, res_i, n_res)
            j += 4
        while j < n_fresh:
            nb = fresh[j]
            d = distance(metric, q, vectors[nb])
            cand_d, cand_i, n_cand, n_res = _consider(d, nb, ef, use_filter, allowed, invert, cand_d, cand_i, n_cand,
                                                      res_d, res_i, n_res)
            j += 1
    return n_res, cand_d, cand_i


@kernel(parallel=True)
def search_batch(vectors, metric, links0, links_up, up_offset, entry, max_level, queries, k, ef,
                 out_d, out_i, visited, tags):
    """Unfiltered k-NN for every query (parallel over queries). Writes internal distances and slots.

    ``visited`` and ``tags`` have one row per thread of the current numba thread count.
    """
    nthreads = visited.shape[0]
    pool_d = np.empty((nthreads, ef), np.float32)
    pool_i = np.empty((nthreads, ef), np.int32)
    pool_done = np.empty((nthreads, ef), np.bool_)
    fresh = np.empty((nthreads, links0.shape[1]), np.int32)
    for qi in prange(queries.shape[0]):
        t = numba.get_thread_id()
        q = queries[qi]
        tag = next_tag(visited, tags, t)
        ep_d = distance(metric, q, vectors[entry])
        ep, ep_d = greedy_descend(vectors, metric, links_up, up_offset, q, entry, ep_d, max_level, 0)
        size = search_layer(vectors, metric, links0, links_up, up_offset, 0, q, ep, ep_d, ef,
                            visited[t], tag, pool_d[t], pool_i[t], pool_done[t], fresh[t])
        copy_padded(pool_d[t], pool_i[t], size, out_d[qi, :k], out_i[qi, :k])


@kernel
def filtered_query(vectors, metric, links0, links_up, up_offset, entry, max_level, q, k, ef, allowed, invert,
                   visited, tags, t, fresh, res_d, res_i, out_d, out_i):
    """One query's k-NN among slots with ``allowed[slot] != 0`` (``== 0`` with ``invert``), on thread t's
    scratch (``fresh``, ``res_d``/``res_i`` of size ef); writes ``out_d``/``out_i`` (k,), (inf, -1) padded."""
    cand_d = np.empty(4 * ef + 64, np.float32)
    cand_i = np.empty(4 * ef + 64, np.int32)
    tag = next_tag(visited, tags, t)
    ep_d = distance(metric, q, vectors[entry])
    ep, ep_d = greedy_descend(vectors, metric, links_up, up_offset, q, entry, ep_d, max_level, 0)
    n_res, cand_d, cand_i = search_layer_heap(vectors, metric, links0, links_up, up_offset, 0, q, ep, ep_d, ef, True,
                                              allowed, invert, visited[t], tag, fresh, cand_d, cand_i, res_d, res_i)
    heap_sort_ascending(res_d[:n_res], res_i[:n_res])
    copy_padded(res_d, res_i, n_res, out_d[:k], out_i[:k])


@kernel(parallel=True)
def search_batch_filtered(vectors, metric, links0, links_up, up_offset, entry, max_level, queries, k, ef,
                          allowed, invert, out_d, out_i, visited, tags):
    """k-NN restricted to slots with ``allowed[slot] != 0`` (``== 0`` with ``invert``), parallel over queries."""
    nthreads = visited.shape[0]
    res_d = np.empty((nthreads, ef), np.float32)
    res_i = np.empty((nthreads, ef), np.int32)
    fresh = np.empty((nthreads, links0.shape[1]), np.int32)
    for qi in prange(queries.shape[0]):
        t = numba.get_thread_id()
        filtered_query(vectors, metric, links0, links_up, up_offset, entry, max_level, queries[qi], k, ef, allowed,
                       invert, visited, tags, t, fresh[t], res_d[t], res_i[t], out_d[qi], out_i[qi])


@kernel
def open_range(mask, deleted, lo, hi):
    """Allow the slots lo..hi-1 that are not deleted in a thread's zeroed slot mask (``mask[lo:hi] = 0`` after
    the search restores it): O(hi - lo) byte writes instead of a fresh mask over all slots per query."""
    for s in range(lo, hi):
        mask[s] = 1 - deleted[s]


@kernel(parallel=True)
def search_batch_ranges(vectors, metric, links0, links_up, up_offset, entry, max_level, queries, rows, lo, hi,
                        deleted, k, ef, out_d, out_i, visited, tags):
    """k-NN of ``queries[rows[r]]`` among the slots ``lo[r] <= slot < hi[r]`` whose ``deleted`` byte is 0, for
    every r in parallel; writes row r of ``out_d``/``out_i`` (len(rows), k).

    One call serves a whole batch of queries with different ranges of one graph (a window index node): each
    thread keeps a slot mask and opens the query's range in it for the search (:func:`open_range`).
    """
    nthreads = visited.shape[0]
    res_d = np.empty((nthreads, ef), np.float32)
    res_i = np.empty((nthreads, ef), np.int32)
    fresh = np.empty((nthreads, links0.shape[1]), np.int32)
    masks = np.zeros((nthreads, deleted.shape[0]), np.uint8)
    for r in prange(rows.shape[0]):
        t = numba.get_thread_id()
        mask = masks[t]
        open_range(mask, deleted, lo[r], hi[r])
        filtered_query(vectors, metric, links0, links_up, up_offset, entry, max_level, queries[rows[r]], k, ef, mask,
                       False, visited, tags, t, fresh[t], res_d[t], res_i[t], out_d[r], out_i[r])
        mask[lo[r]:hi[r]] = 0


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


@kernel(parallel=True)
def connect_batch(vectors, metric, links0, links_up, up_offset, levels, deleted, entry, max_level, has_graph,
                  batch_start, batch_end, ef, m, fwd_d0, fwd_dup, visited, tags):
    """Phase A of batch insertion: choose out-links of the new nodes batch_start..batch_end-1.

    Reads only the graph as it was before the batch (no existing node links to a new one yet); the batch's own
    nodes are added as candidates by brute force. Writes the new nodes' adjacency rows and the distances of the
    chosen links (``fwd_d0`` (B, m) for layer 0, ``fwd_dup`` per upper row).

    The brute-force part runs here rather than as one BLAS product: OpenBLAS worker threads keep spinning after
    a call and would compete with this kernel's threads for the cores.
    """
    nb = batch_end - batch_start
    nthreads = visited.shape[0]
    cap = ef + nb
    pool_d = np.empty((nthreads, cap), np.float32)
    pool_i = np.empty((nthreads, cap), np.int32)
    pool_done = np.empty((nthreads, cap), np.bool_)
    fresh = np.empty((nthreads, links0.shape[1]), np.int32)
    sel_d = np.empty((nthreads, cap), np.float32)
    sel_i = np.empty((nthreads, cap), np.int32)
    chosen = np.empty((nthreads, m), np.int32)
    intra = np.empty((nthreads, nb), np.float32)
    for b in prange(nb):
        t = numba.get_thread_id()
        _connect_one(vectors, metric, links0, links_up, up_offset, levels, deleted, entry, max_level, has_graph,
                     batch_start, nb, b, ef, m, fwd_d0, fwd_dup, visited, tags, t,
                     pool_d[t], pool_i[t], pool_done[t], fresh[t], sel_d[t], sel_i[t], chosen[t], intra[t])


@kernel
def _connect_one(vectors, metric, links0, links_up, up_offset, levels, deleted, entry, max_level, has_graph,
                 batch_start, nb, b, ef, m, fwd_d0, fwd_dup, visited, tags, t, pool_d, pool_i, pool_done,
                 fresh, sel_d, sel_i, chosen, intra):
    """Phase A for one new node (batch position b); see :func:`connect_batch`."""
    cap = pool_d.shape[0]
    u = batch_start + b
    q = vectors[u]
    level_u = levels[u]
    for c in range(nb):
        if c != b:
            intra[c] = distance(metric, q, vectors[batch_start + c])
    ep = entry
    ep_d = np.float32(0.0)
    if has_graph:
        ep_d = distance(metric, q, vectors[entry])
        ep, ep_d = greedy_descend(vectors, metric, links_up, up_offset, q, entry, ep_d, max_level, level_u)
    for layer in range(level_u, -1, -1):
        size = 0
        if has_graph and layer <= max_level:
            tag = next_tag(visited, tags, t)
            size = search_layer(vectors, metric, links0, links_up, up_offset, layer, q, ep, ep_d, ef,
                                visited[t], tag, pool_d, pool_i, pool_done, fresh)
            # the next layer starts from the nearest node of the old graph; never from a node of this batch,
            # whose links other threads are writing
            ep = pool_i[0]
            ep_d = pool_d[0]
        # the batch's own nodes that reach this layer are candidates too
        for c in range(nb):
            if c != b and levels[batch_start + c] >= layer:
                size, _ = pool_insert(pool_d, pool_i, pool_done, size, cap, intra[c], batch_start + c)
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


@kernel(parallel=True)
def add_reverse_links(vectors, metric, links, up_offset, layer, cap, dst, src_node, dist, group_start):
    """Phase B: link each target ``dst`` back to its new in-neighbours, one thread per target.

    Edges are sorted by target; group g spans dst[group_start[g]:group_start[g+1]]. When the target's list
    overflows, its old and new neighbours are pooled, sorted by distance and pruned with the heuristic.
    """
    n_groups = group_start.shape[0] - 1
    for g in prange(n_groups):
        lo = group_start[g]
        hi = group_start[g + 1]
        v = dst[lo]
        row = v if layer == 0 else up_offset[v] + layer - 1
        deg = links[row, 0]
        n_in = hi - lo
        cand_d = np.empty(deg + n_in, np.float32)
        cand_i = np.empty(deg + n_in, np.int32)
        n = 0
        for j in range(1, deg + 1):
            cand_i[n] = links[row, j]
            n += 1
        n_old = n
        for e in range(lo, hi):
            s = src_node[e]
            dup = False
            for j in range(n):
                if cand_i[j] == s:
                    dup = True
                    break
            if not dup:
                cand_i[n] = s
                cand_d[n] = dist[e]
                n += 1
        if n <= cap:
            for j in range(n_old, n):
                links[row, 1 + j] = cand_i[j]
            links[row, 0] = n
            continue
        for j in range(n_old):
            cand_d[j] = distance(metric, vectors[v], vectors[cand_i[j]])
        order = np.argsort(cand_d[:n], kind="mergesort")
        sorted_d = cand_d[:n][order]
        sorted_i = cand_i[:n][order]
        chosen = np.empty(cap, np.int32)
        count = select_neighbors(vectors, metric, sorted_d, sorted_i, n, cap, chosen)
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
                    dup = False
                    for z in range(n):
                        if cand_i[z] == y:
                            dup = True
                            break
                    if not dup and n < scratch_cap:
                        cand_i[n] = y
                        n += 1
        cand_d = np.empty(n, np.float32)
        for j in range(n):
            cand_d[j] = distance(metric, vectors[p], vectors[cand_i[j]])
        order = np.argsort(cand_d, kind="mergesort")
        sorted_d = cand_d[order]
        sorted_i = cand_i[:n][order]
        chosen = np.empty(cap, np.int32)
        count = select_neighbors(vectors, metric, sorted_d, sorted_i, n, cap, chosen)
        # The heuristic alone leaves fewer links than the node had (its list had grown through reverse links);
        # top it up with the nearest unchosen candidates so that deletions do not thin the graph out.
        target = min(deg, n)
        c = 0
        while count < target and c < n:
            x = sorted_i[c]
            taken = False
            for j in range(count):
                if chosen[j] == x:
                    taken = True
                    break
            if not taken:
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


def thread_scratch(nthreads: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread visited arrays (uint16 generations) and their counters."""
    return np.zeros((nthreads, max(capacity, 1)), np.uint16), np.zeros(nthreads, np.int64)


def current_threads() -> int:
    return numba.get_num_threads()
