"""Numba kernels of :class:`simdex.quant.qgraph.RaBitQGraphIndex`: coding each node's neighbours relative to the
node (RaBitQ codes of the edge vectors, stored in the node's own rows), and the graph search that estimates
all of a node's neighbours at once from those rows (FastScan look-ups) while it expands the node."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._heap import copy_padded, heap_sort_ascending
from .._numba import inlined, kernel, prefetch_row
from ..core.beam import next_tag, next_unexpanded, pool_offer, pool_scratch, pool_start
from ..core.graph import GROUND, descend
from ..core.lists import offer
from ..core.scorer import prefetch, query, score
from ..metrics import distance, public_into
from ._fastscan_kernels import GROUP_VECTORS, lookup_add, query_table
from ._rabitq_kernels import encode_row

# per-edge factors: the estimate's scale, its scale times the code's bit count, and the edge's constant term
FACTORS = 3
# rounds of (random signs, Walsh-Hadamard transform of a power-of-two block) in the rotation
ROUNDS = 4
# neighbours whose own links are the candidates that fill a row's empty slots
FILL_SOURCES = 8

_distance = inlined(distance)


# the 8 x 8 Hadamard matrix (Sylvester's order: entry (t, c) is -1 where t & c has an odd number of bits)
_H8 = np.array([[1.0 - 2.0 * (bin(t & c).count("1") % 2) for c in range(8)] for t in range(8)], np.float32)


@kernel(inline="always")
def _hadamard(x, lo, size):
    """The orthonormal Walsh-Hadamard transform of ``x[lo:lo + size]`` (size a power of two, at least 8), in
    place. Its first three butterfly levels are one product of each 8 entries with the 8 x 8 Hadamard matrix
    (eight broadcast multiply-adds a block, where butterflies of 1, 2 and 4 entries do not vectorise); the
    others are butterflies of whole runs."""
    h8 = _H8
    for r in range(lo, lo + size, 8):
        a0, a1, a2, a3 = x[r], x[r + 1], x[r + 2], x[r + 3]
        a4, a5, a6, a7 = x[r + 4], x[r + 5], x[r + 6], x[r + 7]
        for c in range(8):
            x[r + c] = (a0 * h8[0, c] + a1 * h8[1, c] + a2 * h8[2, c] + a3 * h8[3, c] + a4 * h8[4, c]
                        + a5 * h8[5, c] + a6 * h8[6, c] + a7 * h8[7, c])
    h = 8
    while h < size:
        for i in range(lo, lo + size, 2 * h):
            top = x[i:i + h]  # two views: the loop then vectorises
            bottom = x[i + h:i + 2 * h]
            for j in range(h):
                a = top[j]
                b = bottom[j]
                top[j] = a + b
                bottom[j] = a - b
        h *= 2
    scale = np.float32(1.0 / np.sqrt(size))
    for i in range(lo, lo + size):
        x[i] *= scale


@kernel
def rotate(x, center, signs, out):
    """``out`` (D,) = the random rotation of ``x - center`` ((dim,), zero-padded to D): ROUNDS times, flip
    signs (``signs`` (ROUNDS, D) of +-1) then apply the orthonormal Hadamard transform to the largest
    power-of-two block, alternately at the start and at the end of the vector (RaBitQ-Library's "FHT-Kac"
    rotation: O(D log D) per vector instead of a D x D product, and no BLAS call per search)."""
    dim = x.shape[0]
    dim_p = out.shape[0]
    for i in range(dim):
        out[i] = x[i] - center[i]
    for i in range(dim, dim_p):
        out[i] = np.float32(0.0)
    block = 1
    while 2 * block <= dim_p:
        block *= 2
    for r in range(signs.shape[0]):
        for i in range(dim_p):
            out[i] *= signs[r, i]
        _hadamard(out, 0 if r % 2 == 0 else dim_p - block, block)


@kernel(parallel=True)
def rotate_rows(x, center, signs, out):
    """:func:`rotate` of every row of ``x`` (n, dim) into ``out`` (n, D)."""
    for v in prange(x.shape[0]):
        rotate(x[v], center, signs, out[v])


@kernel
def fill_edges(vectors, metric, links0, rows, edges, visited, tags, t, lo, hi):
    """``edges[v]`` (degree first, then nodes) of each node v of ``rows[lo:hi]``: v's layer-0 links, then as many
    of the nodes two hops away (through its first FILL_SOURCES links) as fill the row (``edges.shape[1] - 1``),
    nearest to v first (``vectors`` (n, dim) float32, internal ``metric``). A search estimates a whole group of 16
    neighbours for the price of one, so slots the graph leaves empty (a third of them on WordNet) are filled with
    the candidates its pruning dropped: more of the neighbourhood is seen per expansion (SymphonyQG fills its rows
    likewise). ``visited``, ``tags``: the per-thread marks of :mod:`simdex.core.beam` (thread slot t of
    :func:`~simdex._numba.run_threads`)."""
    width = edges.shape[1] - 1
    seen = visited[t]
    best_d = np.empty(width, np.float32)
    best_i = np.empty(width, np.int32)
    for ri in range(lo, hi):
        v = rows[ri]
        deg = links0[v, 0]
        for j in range(deg + 1):
            edges[v, j] = links0[v, j]
        room = width - deg
        if room <= 0 or deg == 0:
            continue
        stamp = next_tag(visited, tags, t)
        seen[v] = stamp
        for j in range(deg):
            seen[links0[v, 1 + j]] = stamp
        x = vectors[v]
        n_best = np.int64(0)
        for j in range(min(deg, FILL_SOURCES)):
            u = links0[v, 1 + j]
            for i in range(links0[u, 0]):  # the two-hop rows are random reads: start them all first
                prefetch_row(vectors, links0[u, 1 + i], 2)
            for i in range(links0[u, 0]):
                w = links0[u, 1 + i]
                if seen[w] == stamp:
                    continue
                seen[w] = stamp
                n_best = offer(best_d[:room], best_i[:room], n_best, room, _distance(metric, x, vectors[w]), w)
        heap_sort_ascending(best_d[:n_best], best_i[:n_best])
        for j in range(n_best):
            edges[v, 1 + deg + j] = best_i[j]
        edges[v, 0] = deg + n_best


@kernel(parallel=True)
def encode_edges(rot, pos, cdot, links0, rows, l2, bits, words, fac):
    """Code the layer-0 edges of ``rows``: for the i-th row's node v and its j-th neighbour u, the edge
    ``r = u - v`` in the rotated space (``rot[pos[x]]``: the rotated, centred vector of node x, (D,) float32)
    becomes a RaBitQ code of ``bits`` planes in ``words[i, j]`` (bits * D / 64 uint64;
    :func:`~simdex.quant._rabitq_kernels.encode_row`) and three factors in ``fac[v, j]``:

    - ``a = |r| / (|y| <y/|y|, r/|r|>)``, so that ``<r, q> ~ a <y, q>`` (RaBitQ's unbiased estimator; ``y`` the
      code's centred levels);
    - ``b = a * (sum of the levels)`` (the query's quantisation offset enters through it);
    - ``e``: with ``l2``, ``|r|^2 + 2 <v - c, r>``, so ``|q - u|^2 = |q - v|^2 + e - 2 <q - c, r>``; else
      ``-<c, r>`` from ``cdot[pos[x]] = <c, x>``, so ``-<q, u> = -<q, v> + e - <q - c, r>``.
    """
    dim_p = rot.shape[1]
    nwords = words.shape[2] // bits
    for ri in prange(rows.shape[0]):
        v = rows[ri]
        yv = rot[pos[v]]
        unit = np.empty(dim_p, np.float32)
        deg = links0[v, 0]
        for j in range(deg):
            u = links0[v, 1 + j]
            yu = rot[pos[u]]
            norm2 = np.float64(0.0)
            cross = np.float64(0.0)
            abs_sum = np.float64(0.0)
            for i in range(dim_p):
                r = np.float64(yu[i]) - np.float64(yv[i])
                norm2 += r * r
                cross += np.float64(yv[i]) * r
                abs_sum += abs(r)
            norm = np.sqrt(norm2)
            if bits == 1:  # the signs; |y| <y/|y|, r/|r|> = sum |r_i| / (2 |r|): no unit vector needed
                ones = 0
                for w in range(nwords):
                    word = np.uint64(0)
                    for b in range(64):
                        if yu[64 * w + b] > yv[64 * w + b]:
                            word |= np.uint64(1) << np.uint64(b)
                            ones += 1
                    words[ri, j, w] = word
                a = norm2 / (0.5 * abs_sum) if abs_sum > 0 else 0.0
                ysum = np.float64(ones)
            else:
                for i in range(dim_p):
                    unit[i] = (yu[i] - yv[i]) / norm if norm > 0 else np.float32(0.0)
                if norm == 0:
                    unit[0] = np.float32(1.0)  # a duplicate neighbour: any direction (its scale is 0)
                fcos, ynorm, ysum = encode_row(unit, bits, words[ri, j].reshape((bits, nwords)))
                a = norm / (ynorm * max(fcos, 1e-6))
            fac[v, j, 0] = a
            fac[v, j, 1] = a * ysum
            fac[v, j, 2] = norm2 + 2.0 * cross if l2 else -(cdot[pos[u]] - cdot[pos[v]])
        for j in range(deg, words.shape[1]):
            for w in range(words.shape[2]):
                words[ri, j, w] = np.uint64(0)
            for f in range(FACTORS):
                fac[v, j, f] = np.float32(0.0)


@kernel
def search_one(sc, q, table, low, delta, offset, twice, links0, links_up, up_offset, entry, max_level, bits, runs,
               fac, block, deleted, ef, visited, tag, pool_d, pool_i, pool_done, sums, res_d, res_i, out_d, out_i):
    """k-NN (k = ``out_d.shape[0]``) of one query on the graph, ``sc`` scoring nodes exactly (float32 vectors).

    Upper layers: greedy, exact. Layer 0: a beam search whose pool of size ef is ordered by *estimated* distances;
    expanding a node computes its exact distance (it enters the results, a max-heap of k, unless ``deleted``) and
    estimates all its unvisited neighbours from the node's own code rows: ``d_u ~ d_v + e - m <q - c, r>``
    (``m`` = 2 with ``twice``, else 1), the inner product from the 4-bit query levels in FastScan ``table``
    (``low``, ``delta``; ``offset`` = h (delta sum u + D low); codes of ``bits`` planes in ``runs`` (n, groups,
    bits, run bytes), :func:`~simdex.quant._fastscan_kernels.fastscan_layout`). So one expansion reads one node's
    rows, sequentially, and never the neighbours' vectors. ``block`` is ``runs`` viewed as one row per node;
    ``sums`` (groups * 16,) uint32 scratch.
    """
    k = out_d.shape[0]
    ep, ep_d = descend(sc, q, links_up, up_offset, entry, max_level, GROUND)
    m = np.float32(2.0) if twice else np.float32(1.0)
    run_bytes = runs.shape[3]
    size = pool_start(pool_d, pool_i, pool_done, visited, tag, ep, ep_d)
    n_res = np.int64(0)
    cur = 0
    while cur < size:
        pool_done[cur] = True
        v = pool_i[cur]
        if v >= runs.shape[0]:  # a node an add linked after this search took the code arrays: not coded yet
            cur = next_unexpanded(pool_done, size, cur, size)
            continue
        dv = ep_d if v == ep else score(sc, q, v)
        if deleted[v] == 0:
            n_res = offer(res_d, res_i, n_res, k, dv, v)
        lowest = size
        deg = links0[v, 0]
        row = block[v]
        sums[:] = 0
        for g in range((deg + GROUP_VECTORS - 1) // GROUP_VECTORS):
            for a in range(bits):
                lookup_add(row, (g * bits + a) * run_bytes, table, sums, GROUP_VECTORS * g, a)
        for j in range(deg):
            u = links0[v, 1 + j]
            if visited[u] == tag:
                continue
            visited[u] = tag
            inner = fac[v, j, 0] * (delta * np.float32(sums[j]) - offset) + fac[v, j, 1] * low
            est = dv + fac[v, j, 2] - m * inner
            size, lowest = pool_offer(pool_d, pool_i, pool_done, size, ef, est, u, lowest)
        cur = next_unexpanded(pool_done, size, cur, lowest)
        if cur < size:  # start reading the next node's rows while this loop's bookkeeping ends
            nxt = pool_i[cur]
            prefetch(sc, nxt)
            prefetch_row(block, nxt, 16)
            prefetch_row(links0, nxt, 1)
    heap_sort_ascending(res_d[:n_res], res_i[:n_res])
    copy_padded(res_d, res_i, n_res, out_d, out_i)


@kernel
def search_rows(sc, center, signs, twice, links0, links_up, up_offset, entry, max_level, bits, runs, fac, block,
                deleted, ef, out_d, out_i, visited, tags, metric, slot_ids, ids, t, lo, hi):
    """:func:`search_one` for queries lo..hi-1 of ``sc`` on thread slot t, each rotated (:func:`rotate`); the
    answer in its public form, as :func:`simdex.core.graph.search_batch` writes it."""
    pool_d, pool_i, pool_done, _ = pool_scratch(1, ef, 1)
    k = out_d.shape[1]
    res_d = np.empty(k, np.float32)
    res_i = np.empty(k, np.int32)
    table = np.empty(4 * signs.shape[1], np.uint8)
    sums = np.empty(runs.shape[1] * GROUP_VECTORS, np.uint32)
    h = np.float32((2 ** bits - 1) / 2)
    qrot = np.empty(signs.shape[1], np.float32)
    dim_p = np.float32(qrot.shape[0])
    for qi in range(lo, hi):
        q = query(sc, qi, t)
        rotate(q, center, signs, qrot)
        low, delta, sum_u = query_table(qrot, table)
        offset = h * (delta * sum_u + dim_p * low)
        tag = next_tag(visited, tags, t)
        search_one(sc, q, table, low, delta, offset, twice, links0, links_up, up_offset, entry, max_level, bits,
                   runs, fac, block, deleted, ef, visited[t], tag, pool_d[0], pool_i[0], pool_done[0], sums, res_d,
                   res_i, out_d[qi], out_i[qi])
        public_into(metric, out_d[qi], out_i[qi], slot_ids, ids[qi])
