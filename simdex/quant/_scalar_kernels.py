"""Numba kernels of the scalar codecs (int8, LVQ): asymmetric distances between a prepared float query and one
coded vector.

Row layout of an "affine" code (see :mod:`simdex.quant.scalar`): bytes 0..11 hold three float32 (``a0`` scale,
``a1`` offset, ``a2`` squared norm of the reconstruction, or 0 for inner products), then the primary code (one
byte per dimension for 8 bits; for 4 bits byte j holds dimension j in its low nibble and j + half in its high
nibble, so both halves of the query are read contiguously and the loop vectorises), then an optional 8-bit
residual code, then zero padding to a multiple of 4 bytes.

A prepared query is ``qt`` (float32, the dimension padded to the code's layout) and ``qc = [c0, qs, w]``; the
internal distance of vector v is ``c0 + a2 + w * (a0 * <qt, code_v> + a1 * qs)``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import kernel
from ..metrics import distance

HEADER = 12  # bytes of the three float32 in front of every affine code
HEADER_F = 3


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


@kernel(parallel=True)
def affine_distances(qts, qcs, codes, codes_f, bits, half, out):
    """All pairs: out[i, v] = affine_score(qts[i], qcs[i], v)."""
    for i in prange(qts.shape[0]):
        for v in range(codes.shape[0]):
            out[i, v] = affine_score(qts[i], qcs[i], codes, codes_f, v, bits, half)


@kernel
def lvq_decode_into(codes, codes_f, v, mean, bits, half, res_bits, res_offset, out):
    """Reconstruct vector v of an LVQ code (both levels when ``res_bits``) into ``out`` (dim,)."""
    dim = out.shape[0]
    a0 = codes_f[v, 0]
    a1 = codes_f[v, 1]
    row = codes[v]
    for i in range(dim):
        if bits == 8:
            c = row[HEADER + i]
        elif i < half:
            c = row[HEADER + i] & 15
        else:
            c = row[HEADER + i - half] >> 4
        out[i] = mean[i] + a1 + a0 * np.float32(c)
    if res_bits:
        step2 = a0 / np.float32(255.0)
        lo2 = np.float32(-0.5) * a0
        for i in range(dim):
            out[i] += lo2 + step2 * np.float32(row[res_offset + i])


@kernel
def lvq_full_distance(metric, q, codes, codes_f, v, mean, bits, half, res_bits, res_offset, buf):
    """Distance between float query q and the two-level reconstruction of vector v (``buf``: (dim,) scratch)."""
    lvq_decode_into(codes, codes_f, v, mean, bits, half, res_bits, res_offset, buf)
    return distance(metric, q, buf)
