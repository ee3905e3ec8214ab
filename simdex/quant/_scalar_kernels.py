"""Numba kernels of the scalar codecs (int8, LVQ) beyond scoring one row (which is
:func:`simdex.core.codes.affine_score`, where the code layout is described): all-pairs distances, decoding, and
full two-level LVQ distances."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import kernel
from ..core.codes import HEADER, affine_score
from ..metrics import distance


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
