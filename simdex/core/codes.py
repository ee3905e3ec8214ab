"""Scoring a prepared float query against one affine code (int8, LVQ): the kernel the scalar codecs
(:mod:`simdex.quant.scalar`) and multi-vector documents stored as codes (:mod:`simdex.multivector`) share.

Row layout of an affine code: bytes 0..11 hold three float32 (``a0`` scale, ``a1`` offset, ``a2`` squared norm of
the reconstruction, or 0 for inner products), then the primary code (one byte per dimension for 8 bits; for 4 bits
byte j holds dimension j in its low nibble and j + half in its high nibble, so both halves of the query are read
contiguously and the loop vectorises), then an optional 8-bit residual code, then zero padding to a multiple of 4
bytes. A prepared query is ``qt`` (float32, the dimension padded to the code's layout) and ``qc = [c0, qs, w]``;
the internal distance of vector v is ``c0 + a2 + w * (a0 * <qt, code_v> + a1 * qs)``.
"""

from __future__ import annotations

import numpy as np

from .._numba import kernel

HEADER = 12  # bytes of the three float32 in front of every affine code


@kernel
def dot8(qt, row):
    s = np.float32(0.0)
    for i in range(qt.shape[0]):
        s += qt[i] * np.float32(row[HEADER + i])
    return s


@kernel
def dot4(qt, row, half):
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    for j in range(half):
        b = row[HEADER + j]
        s0 += qt[j] * np.float32(b & 15)
        s1 += qt[half + j] * np.float32(b >> 4)
    return s0 + s1


@kernel
def affine_score(qt, qc, codes, codes_f, v, bits, half):
    """Internal distance between a prepared query and coded vector ``v``."""
    if bits == 8:
        dot = dot8(qt, codes[v])
    else:
        dot = dot4(qt, codes[v], half)
    return qc[0] + codes_f[v, 2] + qc[2] * (codes_f[v, 0] * dot + codes_f[v, 1] * qc[1])


@kernel
def affine_score4(qt, qc, codes, codes_f, a, b, c, d, bits, half):
    """:func:`affine_score` of rows a, b, c, d in one pass: the query is read once for four code rows, and four
    independent streams are in flight (as :func:`simdex.metrics.distance4` does for float rows)."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    ra = codes[a]
    rb = codes[b]
    rc = codes[c]
    rd = codes[d]
    if bits == 8:
        for i in range(qt.shape[0]):
            x = qt[i]
            s0 += x * np.float32(ra[HEADER + i])
            s1 += x * np.float32(rb[HEADER + i])
            s2 += x * np.float32(rc[HEADER + i])
            s3 += x * np.float32(rd[HEADER + i])
    else:
        for j in range(half):
            lo = qt[j]
            hi = qt[half + j]
            s0 += lo * np.float32(ra[HEADER + j] & 15) + hi * np.float32(ra[HEADER + j] >> 4)
            s1 += lo * np.float32(rb[HEADER + j] & 15) + hi * np.float32(rb[HEADER + j] >> 4)
            s2 += lo * np.float32(rc[HEADER + j] & 15) + hi * np.float32(rc[HEADER + j] >> 4)
            s3 += lo * np.float32(rd[HEADER + j] & 15) + hi * np.float32(rd[HEADER + j] >> 4)
    base = qc[0]
    w = qc[2]
    qs = qc[1]
    return (base + codes_f[a, 2] + w * (codes_f[a, 0] * s0 + codes_f[a, 1] * qs),
            base + codes_f[b, 2] + w * (codes_f[b, 0] * s1 + codes_f[b, 1] * qs),
            base + codes_f[c, 2] + w * (codes_f[c, 0] * s2 + codes_f[c, 1] * qs),
            base + codes_f[d, 2] + w * (codes_f[d, 0] * s3 + codes_f[d, 1] * qs))
