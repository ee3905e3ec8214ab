"""Numba kernels of RaBitQ codes (:mod:`simdex.quant.rabitq`): encoding a rotated unit vector into ``bits`` bit
planes with the scale that best keeps its direction, and the estimated inner product of a code with a query
quantised to 4-bit planes (popcounts of ANDed words)."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import kernel
from ._binary_kernels import popcount64

# the query's coordinates are quantised to this many bits per list it scans (RaBitQ's B_q); code_dot reads
# exactly 4 planes
QUERY_BITS = 4
QUERY_TOP = (1 << QUERY_BITS) - 1  # the highest level
SCALES = 64  # scales tried per vector by a multi-bit encoding


@kernel(parallel=True)
def encode_unit(o, bits, planes, fcos, ynorm, ysum):
    """Codes of the rotated unit vectors ``o`` (n, D) into ``planes`` (n, bits, D / 64) uint64 (:func:`encode_row`
    of each row), writing each row's ``fcos``, ``ynorm`` and ``ysum``."""
    for v in prange(o.shape[0]):
        fcos[v], ynorm[v], ysum[v] = encode_row(o[v], bits, planes[v])


@kernel
def encode_row(row, bits, planes):
    """The code of one rotated unit vector ``row`` (D,): level ``x_i`` in [0, 2^bits) of each coordinate, stored as
    ``bits`` planes of packed words ``planes`` (bits, D / 64) uint64; the grid vector ``y = x - h`` (h =
    (2^bits - 1) / 2) is the one, among ``SCALES`` scales of ``row``, whose direction is closest to it.
    Returns (<y / |y|, row>, |y|, sum of the levels)."""
    dim = row.shape[0]
    h = (2.0 ** bits - 1.0) / 2.0
    top = 1e-30
    for i in range(dim):
        a = abs(row[i])
        if a > top:
            top = a
    best_t = 0.0
    best_c = -2.0
    if bits == 1:
        best_t = 1.0
    else:
        for s in range(SCALES):
            t = (0.05 + 1.45 * s / (SCALES - 1)) * (h + 0.5) / top
            dot = 0.0
            sq = 0.0
            for i in range(dim):
                y = np.floor(t * row[i]) + 0.5
                if y > h:
                    y = h
                elif y < -h:
                    y = -h
                dot += y * row[i]
                sq += y * y
            c = dot / np.sqrt(sq)
            if c > best_c:
                best_c = c
                best_t = t
    dot = 0.0
    sq = 0.0
    total = 0.0
    for w in range(planes.shape[1]):
        for a in range(bits):
            planes[a, w] = np.uint64(0)
    for i in range(dim):
        if bits == 1:
            y = 0.5 if row[i] > 0 else -0.5
        else:
            y = np.floor(best_t * row[i]) + 0.5
            if y > h:
                y = h
            elif y < -h:
                y = -h
        level = np.int64(y + h)
        dot += y * row[i]
        sq += y * y
        total += level
        w = i >> 6
        bit = np.uint64(1) << np.uint64(i & 63)
        for a in range(bits):
            if (level >> a) & 1:
                planes[a, w] |= bit
    return dot / np.sqrt(sq), np.sqrt(sq), total


@kernel(inline="always")
def query_grid(qp):
    """The grid a query ``qp`` (D,) float32 is quantised on: (low, delta, 1 / delta), ``qp ~ low + delta * u``
    for levels u in [0, QUERY_TOP]. Every query quantisation (bit planes here, FastScan tables in
    :mod:`simdex.quant._fastscan_kernels`) takes its levels from this grid and :func:`query_level`."""
    low = qp[0]
    high = qp[0]
    for i in range(qp.shape[0]):
        low = min(low, qp[i])
        high = max(high, qp[i])
    delta = (high - low) / QUERY_TOP if high > low else np.float32(1.0)
    return low, delta, np.float32(1.0) / delta


@kernel(inline="always")
def query_level(x, low, inv):
    """The level in [0, QUERY_TOP] of a query coordinate ``x`` on the grid (low, 1 / delta) of :func:`query_grid`."""
    return min(np.int64((x - low) * inv + np.float32(0.5)), QUERY_TOP)


@kernel
def quantize_query(qp, planes):
    """Quantise ``qp`` (D,) float32 to levels u in [0, 15] (``qp ~ low + delta * u``) written as QUERY_BITS planes
    of packed words ``planes`` (QUERY_BITS, D / 64); returns (low, delta, sum of u). Branch-free: each word of
    each plane is assembled in a register."""
    low, delta, inv = query_grid(qp)
    total = 0
    for w in range(planes.shape[1]):
        p0 = np.uint64(0)
        p1 = np.uint64(0)
        p2 = np.uint64(0)
        p3 = np.uint64(0)
        for b in range(64):
            u = np.uint64(query_level(qp[64 * w + b], low, inv))
            total += u
            sh = np.uint64(b)
            p0 |= (u & np.uint64(1)) << sh
            p1 |= ((u >> np.uint64(1)) & np.uint64(1)) << sh
            p2 |= ((u >> np.uint64(2)) & np.uint64(1)) << sh
            p3 |= ((u >> np.uint64(3)) & np.uint64(1)) << sh
        planes[0, w] = p0
        planes[1, w] = p1
        planes[2, w] = p2
        planes[3, w] = p3
    return np.float32(low), np.float32(delta), np.float32(total)


@kernel
def code_dot(qplanes, words, v, bits, nwords):
    """sum_i x_i u_i of code row ``v`` (its ``bits`` planes of ``nwords`` words first in ``words[v]``) and the
    query levels in ``qplanes`` (QUERY_BITS planes): each code word is read once and ANDed with the 4 planes."""
    s = np.uint64(0)
    for a in range(bits):
        base = a * nwords
        part = np.uint64(0)
        for w in range(nwords):
            cw = words[v, base + w]
            part += popcount64(cw & qplanes[0, w]) + (popcount64(cw & qplanes[1, w]) << np.uint64(1)) \
                + (popcount64(cw & qplanes[2, w]) << np.uint64(2)) + (popcount64(cw & qplanes[3, w]) << np.uint64(3))
        s += part << np.uint64(a)
    return s
