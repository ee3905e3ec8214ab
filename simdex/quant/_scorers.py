"""The codecs as scorers of the shared search loops (:mod:`simdex.core.scorer`): every index of this package
searches with :mod:`simdex.core.graph` or :mod:`simdex.core.lists`, handing it one of these NamedTuples.

Scorers:

- :class:`AffineCodes`: int8 / LVQ codes (:func:`simdex.core.codes.affine_score`), graphs and lists.
- :class:`PQCodes`: PQ codes against one lookup table per query (the disk Vamana index).
- :class:`IVFPQCodes`: IVF-PQ residual codes, whose table is built per probed list.
- :class:`BinaryCodes`: binary codes, Hamming distance.

Finishers of a graph search:

- :class:`Rerank`: re-score the pool's best ``n_rerank`` with full precision, from the float32 vectors (``mode``
  1) or from the LVQ residual level (``mode`` 2); ``mode`` 0 keeps the code distances.
- :class:`ExactExpanded`: DiskANN's result: the expanded nodes (their full vectors are read with their links)
  ranked by exact distance, tombstones dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._heap import copy_padded
from .._numba import inlined, prefetch_row
from ..core.codes import affine_score, affine_score4
from ..core.scorer import implement, rescore, sort_prefix
from ._binary_kernels import hamming
from ._pq_kernels import adc_lookup, adc_table
from ._scalar_kernels import lvq_full_distance

# cache lines of a code row to request before scoring it (a 384-d LVQ-8 row is 396 bytes: 7 lines); a shorter
# row is fetched whole
CODE_PREFETCH_LINES = 8


class AffineCodes(NamedTuple):
    """int8 / LVQ codes: prepared queries ``qts`` / ``qcs`` (:meth:`AffineCodec.prepare`), ``codes`` uint8
    (n, code_size) and its float32 view ``codes_f``, the codec's ``bits`` and ``half``."""

    qts: np.ndarray
    qcs: np.ndarray
    codes: np.ndarray
    codes_f: np.ndarray
    bits: int
    half: int


_affine_score4 = inlined(affine_score4)

implement(AffineCodes,
          query=lambda sc, qi, t: (sc.qts[qi], sc.qcs[qi]),
          score=lambda sc, q, v: affine_score(q[0], q[1], sc.codes, sc.codes_f, v, sc.bits, sc.half),
          score4=lambda sc, q, a, b, c, d: _affine_score4(q[0], q[1], sc.codes, sc.codes_f, a, b, c, d, sc.bits,
                                                         sc.half),
          prefetch=lambda sc, v: prefetch_row(sc.codes, v, CODE_PREFETCH_LINES))


class PQCodes(NamedTuple):
    """PQ codes ``codes`` uint8 (n, m) against the queries' lookup tables ``tables`` (nq, m, 256)."""

    tables: np.ndarray
    codes: np.ndarray


implement(PQCodes,
          query=lambda sc, qi, t: sc.tables[qi],
          score=lambda sc, q, v: adc_lookup(q, sc.codes[v]),
          prefetch=lambda sc, v: prefetch_row(sc.codes, v, CODE_PREFETCH_LINES))


class IVFPQCodes(NamedTuple):
    """IVF-PQ over residual codes. ``queries_t``: queries in the PQ's (padded, rotated) space; ``probe_d``: the
    coarse distance of each probed list, which is the constant term of every entry's distance; ``tq`` and
    ``table`` (threads, m, 256) float32 scratch.

    Squared L2 (``use_precomputed``): ||q - c - r||^2 = ||q - c||^2 + (||r||^2 + 2 <c, r>) - 2 <q, r>, the middle
    term per (list, sub-quantizer, centroid) in ``precomputed`` (nlist, m, 256). Inner product: -<q, c> - <q, r>.
    """

    queries_t: np.ndarray
    centroids_t: np.ndarray
    precomputed: np.ndarray
    use_precomputed: bool
    probe_d: np.ndarray
    codes: np.ndarray
    tq: np.ndarray
    table: np.ndarray


def _ivfpq_query(sc, qi, t):
    tq = sc.tq[t]
    adc_table(1, sc.queries_t[qi], sc.centroids_t, tq)  # -<q_j, r_jc>
    if sc.use_precomputed:
        # doubled once here, so that each probed list's table below is one float32 add per entry
        tq *= np.float32(2.0)
    return tq, sc.table[t]


def _ivfpq_list_query(sc, q, qi, p, lst):
    tq, tab = q
    if sc.use_precomputed:
        size = tab.shape[0] * tab.shape[1]
        tab_flat = tab.reshape(size)
        pre_flat = sc.precomputed[lst].reshape(size)
        tq_flat = tq.reshape(size)
        for x in range(size):
            tab_flat[x] = pre_flat[x] + tq_flat[x]
    else:
        tab = tq  # inner product: the query's table serves every list as it is
    return tab, sc.probe_d[qi, p]


implement(IVFPQCodes, query=_ivfpq_query, list_query=_ivfpq_list_query,
          score=lambda sc, q, v: q[1] + adc_lookup(q[0], sc.codes[v]))


class BinaryCodes(NamedTuple):
    """Binary codes: the queries' packed words ``qwords`` (nq, w) against ``words`` (n, w) uint64."""

    qwords: np.ndarray
    words: np.ndarray


_hamming = inlined(hamming)

implement(BinaryCodes,
          query=lambda sc, qi, t: sc.qwords[qi],
          score=lambda sc, q, v: np.float32(_hamming(q, sc.words[v])))


class Rerank(NamedTuple):
    """Finisher of the graph search over codes: re-score the first ``n_rerank`` candidates (``mode`` 1: from the
    float32 ``vectors``; 2: from the LVQ residual level of ``codes``, with the codec's ``mean``, ``bits``, ``half``,
    ``res_bits``, ``res_offset``; 0: keep the code distances), sort them, write the k best. ``queries`` are the
    float queries; ``buf`` (threads, dim) float32 scratch."""

    mode: int
    n_rerank: int
    metric: int
    queries: np.ndarray
    vectors: np.ndarray
    codes: np.ndarray
    codes_f: np.ndarray
    mean: np.ndarray
    bits: int
    half: int
    res_bits: int
    res_offset: int
    buf: np.ndarray


def _rerank_finish(fin, qi, t, cand_d, cand_i, n, out_d, out_i):
    r = n
    if fin.mode == 1:
        r = min(fin.n_rerank, n)
        rescore(fin.metric, fin.queries[qi], fin.vectors, cand_d, cand_i, r)
    elif fin.mode == 2:
        r = min(fin.n_rerank, n)
        for j in range(r):
            cand_d[j] = lvq_full_distance(fin.metric, fin.queries[qi], fin.codes, fin.codes_f, cand_i[j], fin.mean,
                                          fin.bits, fin.half, fin.res_bits, fin.res_offset, fin.buf[t])
        sort_prefix(cand_d, cand_i, r)
    copy_padded(cand_d, cand_i, r, out_d, out_i)


implement(Rerank, finish=_rerank_finish)


class ExactExpanded(NamedTuple):
    """Finisher of the disk Vamana search (run with ``expanded``): the first ``limit`` live (``state`` 0) expanded
    nodes, re-scored exactly from their float32 ``vectors`` against the float ``queries``; the k best."""

    metric: int
    queries: np.ndarray
    vectors: np.ndarray
    state: np.ndarray
    limit: int


def _exact_expanded_finish(fin, qi, t, cand_d, cand_i, n, out_d, out_i):
    m = 0
    for j in range(n):
        if m == fin.limit:
            break
        v = cand_i[j]
        if fin.state[v] == 0:
            cand_i[m] = v
            m += 1
    rescore(fin.metric, fin.queries[qi], fin.vectors, cand_d, cand_i, m)
    copy_padded(cand_d, cand_i, m, out_d, out_i)


implement(ExactExpanded, finish=_exact_expanded_finish)
