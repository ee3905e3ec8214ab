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


@kernel
def prepare_lvq(q, mean, ip, qt, qc):
    """LVQ's prepared queries (:meth:`~simdex.quant.scalar.LVQCodec.prepare`) in one pass: ``qt[i, :d]`` the
    query (``ip``) or its difference from the mean, ``qc[i]`` = (-<q, mean> | |q - mean|^2, the sum of ``qt[i]``,
    -1 | -2). One compiled call: the numpy steps cost a single query about 5 us."""
    nq, d = q.shape
    for i in range(nq):
        sq = 0.0
        total = 0.0
        dot = 0.0
        for j in range(d):
            v = q[i, j]
            if ip:
                dot += v * mean[j]
            else:
                v -= mean[j]
                sq += v * v
            qt[i, j] = v
            total += v
        qc[i, 0] = -dot if ip else sq
        qc[i, 1] = total
        qc[i, 2] = -1.0 if ip else -2.0


@kernel
def prepare_int8(q, step, lo, ip, qt, qc):
    """Int8's prepared queries (:meth:`~simdex.quant.scalar.Int8Codec.prepare`) in one pass: ``qt = q * step``,
    ``qc[i]`` = (-<q, lo> | |q|^2 - 2 <q, lo>, 0, -1 | -2)."""
    nq, d = q.shape
    for i in range(nq):
        sq = 0.0
        dot = 0.0
        for j in range(d):
            v = q[i, j]
            dot += v * lo[j]
            sq += v * v
            qt[i, j] = v * step[j]
        qc[i, 0] = -dot if ip else sq - 2.0 * dot
        qc[i, 1] = 0.0
        qc[i, 2] = -1.0 if ip else -2.0
