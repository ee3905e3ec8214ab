"""k-means (Lloyd) for the coarse quantizer of IVF and the sub-quantizers of PQ: BLAS for the distance blocks,
numba for the assignment and the centroid update."""

from __future__ import annotations

import numpy as np

from .._numba import kernel
from .._progress import progress_bar

_BLOCK_BYTES = 16 << 20  # of distances computed at a time (rows per block: this over 4 k)


# One thread on purpose: this runs right after a BLAS product, and numba's worker threads then compete with
# OpenBLAS's spinning ones. Parallel, a 2,000 x 256 block took 8 ms instead of 0.4 ms (and PQ training with it).
@kernel
def _argmin_rows(block, xn, cn, out_i, out_d, start):
    """out[start + i] = argmin_c (xn[i] - 2 block[i, c] + cn[c]) for a block of dot products."""
    for i in range(block.shape[0]):
        best = np.inf
        arg = 0
        for c in range(block.shape[1]):
            d = cn[c] - 2.0 * block[i, c]
            if d < best:
                best = d
                arg = c
        out_i[start + i] = arg
        out_d[start + i] = max(best + xn[i], 0.0)


def assign(x: np.ndarray, centroids: np.ndarray, cnorms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (squared L2) of every row: (labels int64 (n,), squared distances float32 (n,))."""
    n = x.shape[0]
    labels = np.empty(n, np.int64)
    dists = np.empty(n, np.float32)
    if cnorms is None:
        cnorms = np.einsum("ij,ij->i", centroids, centroids)
    block = max(256, _BLOCK_BYTES // (4 * centroids.shape[0]))
    for s in range(0, n, block):
        xb = x[s:s + block]
        _argmin_rows(xb @ centroids.T, np.einsum("ij,ij->i", xb, xb), cnorms, labels, dists, s)
    return labels, dists


@kernel
def _update(x, labels, k, sums, counts):
    sums[:] = 0.0
    counts[:] = 0
    for i in range(x.shape[0]):
        c = labels[i]
        counts[c] += 1
        for j in range(x.shape[1]):
            sums[c, j] += x[i, j]


def kmeans(x: np.ndarray, k: int, iterations: int = 20, seed: int = 0, progress: bool | None = None,
           desc: str = "k-means") -> np.ndarray:
    """Lloyd's k-means on rows of ``x`` (n, d) float32; returns centroids (k, d) float32.

    Initial centroids are k distinct random rows. An empty cluster is re-seeded with the point farthest from its
    centroid among a random sample (so every centroid is used). Needs n >= k.
    """
    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means needs at least k={k} training vectors; got {n}")
    rng = np.random.default_rng(seed)
    centroids = np.array(x[rng.choice(n, k, replace=False)], np.float32)
    sums = np.zeros((k, d), np.float64)
    counts = np.zeros(k, np.int64)
    bar = progress_bar(iterations, desc, progress, unit="iter")
    for _ in range(iterations):
        labels, dists = assign(x, centroids)
        _update(x, labels, k, sums, counts)
        nonempty = counts > 0
        centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        empty = np.flatnonzero(~nonempty)
        if empty.size:
            far = np.argsort(-dists)[:empty.size]
            centroids[empty] = x[far]
        bar.update(1)
    bar.close()
    return centroids
