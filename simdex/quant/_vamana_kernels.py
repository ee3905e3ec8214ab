"""Numba kernel of the SSD-resident Vamana search (:class:`simdex.quant.vamana.VamanaDiskIndex`), DiskANN style.

The beam is ordered by distances computed from compressed codes held in memory (PQ: a lookup table per query,
``kind`` 0; int8 / LVQ: :func:`simdex.quant._scalar_kernels.affine_score`, ``kind`` 1). Expanding a node reads
its adjacency row and its full-precision vector from the memory-mapped file; the vector gives the node's exact
distance, so the result is the k best expanded nodes by exact distance (the paper's re-ranking with the full
vectors fetched together with the neighbour lists). Graph arrays are those of
:mod:`simdex.dense._vamana_kernels`.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .._numba import kernel
from ..dense._hnsw_kernels import gather_unvisited, next_tag, next_unexpanded, pool_insert
from ..metrics import distance
from ._pq_kernels import adc_lookup
from ._scalar_kernels import affine_score


@kernel
def code_distance(kind, table, qt, qc, codes, codes_f, v, bits, half):
    if kind == 0:
        return adc_lookup(table, codes[v])
    return affine_score(qt, qc, codes, codes_f, v, bits, half)


@kernel(parallel=True)
def search_batch_codes(kind, tables, qts, qcs, codes, codes_f, bits, half, metric, queries, vectors, adj, state,
                       entry, k, L, out_d, out_i, visited, tags):
    """k-NN of every query (parallel over queries): beam of L over code distances, exact distances of the
    expanded nodes from their full vectors, the k best live ones returned (internal distances and slots, padded
    with (inf, -1))."""
    nthreads = visited.shape[0]
    exp_cap = 4 * L + 16
    pool_d = np.empty((nthreads, L), np.float32)
    pool_i = np.empty((nthreads, L), np.int32)
    pool_done = np.empty((nthreads, L), np.bool_)
    fresh = np.empty((nthreads, adj.shape[1]), np.int32)
    exp_d = np.empty((nthreads, exp_cap), np.float32)
    exp_i = np.empty((nthreads, exp_cap), np.int32)
    for qi in prange(queries.shape[0]):
        t = numba.get_thread_id()
        q = queries[qi]
        row = np.int64(qi)
        table = tables[row if kind == 0 else np.int64(0)]
        qt = qts[row if kind == 1 else np.int64(0)]
        qc = qcs[row if kind == 1 else np.int64(0)]
        tag = next_tag(visited, tags, t)
        pd = pool_d[t]
        pi = pool_i[t]
        done = pool_done[t]
        pd[0] = code_distance(kind, table, qt, qc, codes, codes_f, entry, bits, half)
        pi[0] = entry
        done[0] = False
        size = 1
        visited[t, entry] = tag
        n_exp = 0
        cur = 0
        while cur < size:
            done[cur] = True
            node = pi[cur]
            n_fresh = gather_unvisited(adj, node, visited[t], tag, codes, 1, fresh[t])
            # the node's full vector: read once, when it is expanded
            if state[node] == 0 and n_exp < exp_cap:
                exp_d[t, n_exp] = distance(metric, q, vectors[node])
                exp_i[t, n_exp] = node
                n_exp += 1
            lowest = size
            for j in range(n_fresh):
                nb = fresh[t, j]
                d = code_distance(kind, table, qt, qc, codes, codes_f, nb, bits, half)
                size, pos = pool_insert(pd, pi, done, size, L, d, nb)
                if 0 <= pos < lowest:
                    lowest = pos
            cur = next_unexpanded(done, size, cur, lowest)
        order = np.argsort(exp_d[t, :n_exp], kind="mergesort")
        for j in range(k):
            if j < n_exp:
                out_d[qi, j] = exp_d[t, order[j]]
                out_i[qi, j] = exp_i[t, order[j]]
            else:
                out_d[qi, j] = np.inf
                out_i[qi, j] = -1
