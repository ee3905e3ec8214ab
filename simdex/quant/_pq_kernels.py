"""Numba kernels of product quantization: lookup-table construction and asymmetric distance scans."""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import kernel


@kernel
def adc_table(metric, q, centroids_t, out):
    """Distance table of one (rotated, padded) query: out[j, c] = distance of sub-vector j to centroid c.

    ``centroids_t`` is the codebook as (m, dsub, ks) (see :meth:`PQCodec.centroids_t`): the innermost loop then
    runs over the 256 centroids of a sub-quantizer, contiguous, and vectorises. Squared L2, or minus the inner
    product (metric 1)."""
    m, dsub, ks = centroids_t.shape
    for j in range(m):
        row = out[j]
        row[:] = 0.0
        for t in range(dsub):
            qv = q[j * dsub + t]
            ct = centroids_t[j, t]
            if metric == 0:
                for c in range(ks):
                    diff = qv - ct[c]
                    row[c] += diff * diff
            else:
                for c in range(ks):
                    row[c] -= qv * ct[c]


@kernel(inline="always")
def adc_lookup(table, code):
    """sum_j table[j, code[j]] for one code row. Four running sums: one would chain every add on the previous
    one's latency, while the lookups themselves are independent."""
    m = code.shape[0]
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    j = 0
    while j + 4 <= m:
        s0 += table[j, code[j]]
        s1 += table[j + 1, code[j + 1]]
        s2 += table[j + 2, code[j + 2]]
        s3 += table[j + 3, code[j + 3]]
        j += 4
    while j < m:
        s0 += table[j, code[j]]
        j += 1
    return (s0 + s1) + (s2 + s3)


@kernel(parallel=True)
def adc_distances(tables, codes, out):
    """out[i, v] = adc_lookup(tables[i], codes[v]) for every query i and code v."""
    for i in prange(tables.shape[0]):
        for v in range(codes.shape[0]):
            out[i, v] = adc_lookup(tables[i], codes[v])


@kernel(parallel=True)
def encode_pq(x, centroids, out):
    """Nearest sub-centroid of every sub-vector: out[i, j] = argmin_c ||x_j - centroids[j, c]||^2."""
    m, ks, dsub = centroids.shape
    for i in prange(x.shape[0]):
        for j in range(m):
            best = np.inf
            arg = 0
            for c in range(ks):
                s = np.float32(0.0)
                for t in range(dsub):
                    diff = x[i, j * dsub + t] - centroids[j, c, t]
                    s += diff * diff
                if s < best:
                    best = s
                    arg = c
            out[i, j] = arg
