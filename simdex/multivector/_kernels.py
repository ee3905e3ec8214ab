"""Numba kernels of late-interaction (multi-vector) retrieval.

Documents and queries are sets of vectors stored flat: set i is ``rows[offsets[i]:offsets[i + 1]]``. The score
of query Q and document D is Chamfer similarity (ColBERT's MaxSim): ``sum_{q in Q} max_{d in D} <q, d>``.

Document rows are float32, or float16 kept as their uint16 bit patterns (numba has no float16 type; the
conversion below is one ``vcvtph2ps`` per 8 values, so the dot product still vectorises), or int8/LVQ codes
scored with the affine kernels of :mod:`simdex.quant._scalar_kernels`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from .._numba import kernel
from ..core.codes import affine_score


@intrinsic
def as_f32(typingctx, value):
    """float32 of a float32 value, or of the float16 whose bits a uint16 holds."""
    if value == types.float32:
        def codegen(context, builder, signature, args):
            return args[0]
        return types.float32(value), codegen
    if value == types.uint16:
        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(value), codegen
    return None


@kernel
def _dot(q, rows, r):
    s = np.float32(0.0)
    for j in range(q.shape[0]):
        s += q[j] * as_f32(rows[r, j])
    return s


@kernel
def chamfer_one(q, q_start, q_end, rows, d_start, d_end):
    """Chamfer score of query rows q[q_start:q_end] against document rows rows[d_start:d_end]."""
    total = np.float32(0.0)
    for i in range(q_start, q_end):
        best = -np.inf
        qi = q[i]
        for r in range(d_start, d_end):
            s = _dot(qi, rows, r)
            if s > best:
                best = s
        total += best
    return total


@kernel(parallel=True)
def chamfer_pairs(q, q_off, rows, d_off, pair_q, pair_d, out):
    """out[p] = Chamfer(query pair_q[p], document pair_d[p]) for every pair, in parallel over pairs.

    q: (Tq, dim) float32; q_off: (nq + 1,) int64; rows: (Td, dim) float32 or uint16 (float16 bits);
    d_off: (nd + 1,) int64; pair_q, pair_d: (P,) int64; out: (P,) float32. Callers order the pairs by document
    so that consecutive pairs (one thread's chunk) re-read the same document rows from L1.
    """
    for p in prange(pair_q.shape[0]):
        qi = pair_q[p]
        d = pair_d[p]
        out[p] = chamfer_one(q, q_off[qi], q_off[qi + 1], rows, d_off[d], d_off[d + 1])


@kernel
def chamfer_pairs_serial(q, q_off, rows, d_off, pair_q, pair_d, out):
    """:func:`chamfer_pairs` on the calling thread: for small batches (one query re-ranking a few hundred
    documents) waking the thread pool costs more than the work, and far more on a loaded machine."""
    for p in range(pair_q.shape[0]):
        qi = pair_q[p]
        d = pair_d[p]
        out[p] = chamfer_one(q, q_off[qi], q_off[qi + 1], rows, d_off[d], d_off[d + 1])


@kernel
def chamfer_one_affine(qt, qc, q_start, q_end, codes, codes_f, bits, half, d_start, d_end):
    total = np.float32(0.0)
    for i in range(q_start, q_end):
        best = -np.inf
        for r in range(d_start, d_end):
            s = -affine_score(qt[i], qc[i], codes, codes_f, r, bits, half)
            if s > best:
                best = s
        total += best
    return total


@kernel(parallel=True)
def chamfer_pairs_affine(qt, qc, q_off, codes, codes_f, bits, half, d_off, pair_q, pair_d, out):
    """:func:`chamfer_pairs` over int8/LVQ codes (inner-product metric): ``qt``/``qc`` are the codec's prepared
    query rows, and ``-affine_score`` is the inner product of a query row and a coded row."""
    for p in prange(pair_q.shape[0]):
        qi = pair_q[p]
        d = pair_d[p]
        out[p] = chamfer_one_affine(qt, qc, q_off[qi], q_off[qi + 1], codes, codes_f, bits, half, d_off[d],
                                    d_off[d + 1])


@kernel
def chamfer_pairs_affine_serial(qt, qc, q_off, codes, codes_f, bits, half, d_off, pair_q, pair_d, out):
    for p in range(pair_q.shape[0]):
        qi = pair_q[p]
        d = pair_d[p]
        out[p] = chamfer_one_affine(qt, qc, q_off[qi], q_off[qi + 1], codes, codes_f, bits, half, d_off[d],
                                    d_off[d + 1])


@kernel
def pair_work(q_off, d_off, pair_q, pair_d):
    """Vector pairs (multiply-adds / dim) that scoring these pairs costs."""
    w = 0
    for p in range(pair_q.shape[0]):
        w += (q_off[pair_q[p] + 1] - q_off[pair_q[p]]) * (d_off[pair_d[p] + 1] - d_off[pair_d[p]])
    return w


# ---- fixed-dimensional encodings (MUVERA) --------------------------------------------------------------------------
@kernel
def _popcount(x):
    c = 0
    while x:
        x &= x - 1
        c += 1
    return c


@kernel
def fde_one(proj, buckets, a, b, n_buckets, average, fill_empty, out, counts):
    """Bucket aggregates of one set (rows a..b) into out (R, n_buckets, d_proj); see :func:`fde_blocks`."""
    n_rep = proj.shape[1]
    d_proj = proj.shape[2]
    for rep in range(n_rep):
        counts[:] = 0
        out[rep] = 0.0
        for t in range(a, b):
            k = buckets[t, rep]
            counts[k] += 1
            for j in range(d_proj):
                out[rep, k, j] += proj[t, rep, j]
        for k in range(n_buckets):
            if counts[k] > 0:
                if average and counts[k] > 1:
                    inv = np.float32(1.0) / np.float32(counts[k])
                    for j in range(d_proj):
                        out[rep, k, j] *= inv
            elif fill_empty and b > a:
                best_t = a
                best_h = 1 << 30
                for t in range(a, b):
                    h = _popcount(buckets[t, rep] ^ k)
                    if h < best_h:
                        best_h = h
                        best_t = t
                for j in range(d_proj):
                    out[rep, k, j] = proj[best_t, rep, j]


@kernel(parallel=True)
def fde_blocks(proj, buckets, offsets, n_buckets, average, fill_empty, out):
    """Per-set, per-repetition bucket aggregates of projected rows, in parallel over sets.

    proj: (T, R, d_proj) float32 projected rows; buckets: (T, R) int64 SimHash bucket of each row in each
    repetition; offsets: (n + 1,) int64; out: (n, R, n_buckets, d_proj) float32, overwritten.
    ``average`` (documents): a bucket holds the mean of its rows; otherwise (queries) their sum.
    ``fill_empty`` (documents): an empty bucket takes the row whose bucket id is nearest in Hamming distance
    (first such row), so that every query bucket finds a document vector to meet.
    """
    for s in prange(offsets.shape[0] - 1):
        counts = np.zeros(n_buckets, np.int64)
        fde_one(proj, buckets, offsets[s], offsets[s + 1], n_buckets, average, fill_empty, out[s], counts)


@kernel
def fde_blocks_serial(proj, buckets, offsets, n_buckets, average, fill_empty, out):
    """:func:`fde_blocks` on the calling thread (a few query sets)."""
    counts = np.zeros(n_buckets, np.int64)
    for s in range(offsets.shape[0] - 1):
        fde_one(proj, buckets, offsets[s], offsets[s + 1], n_buckets, average, fill_empty, out[s], counts)


@kernel
def project_rows(x, simhash_t, projection_t, k_sim, buckets, proj):
    """SimHash buckets (T, R) and projections (T, R, d_proj) of a few rows without BLAS (whose thread pool costs
    more than the work for a query's handful of rows). ``simhash_t`` (R * k_sim, dim) and ``projection_t``
    (R * d_proj, dim) are the transposed matrices (rows contiguous for the dot products), ``projection_t``
    (0, 0) means identity."""
    n_rep = buckets.shape[1]
    d_proj = proj.shape[2]
    for t in range(x.shape[0]):
        xt = x[t]
        for rep in range(n_rep):
            code = 0
            for b in range(k_sim):
                s = np.float32(0.0)
                g = simhash_t[rep * k_sim + b]
                for j in range(xt.shape[0]):
                    s += xt[j] * g[j]
                code = code * 2 + (1 if s > 0 else 0)
            buckets[t, rep] = code
            for o in range(d_proj):
                if projection_t.shape[0] == 0:
                    proj[t, rep, o] = xt[o]
                else:
                    s = np.float32(0.0)
                    g = projection_t[rep * d_proj + o]
                    for j in range(xt.shape[0]):
                        s += xt[j] * g[j]
                    proj[t, rep, o] = s


@kernel(parallel=True)
def count_sketch(x, target, sign, out):
    """out[i, target[j]] += sign[j] * x[i, j] for every row i: a count-sketch projection (n, D) -> (n, d_final)
    that preserves inner products in expectation."""
    for i in prange(x.shape[0]):
        out[i] = 0.0
        for j in range(x.shape[1]):
            out[i, target[j]] += sign[j] * x[i, j]
