"""MinHash kernels over sets in CSR form (indptr int64 (n+1,), values uint64/uint32 hashes (nnz,)).

Signatures are uint32 (n, k). Every element is first re-hashed with a seeded 64-bit finaliser, so any input
hashes (even small consecutive integers) behave like random ones.
"""

from __future__ import annotations

import numba
import numpy as np

from .._numba import kernel
from ._hashing import mix64

EMPTY = np.uint32(0xFFFFFFFF)  # every bin of the empty set's signature
_ROTATION_OFFSET = np.uint32(0x9E3779B1)  # the "C" of rotation densification: separates borrowed values


@kernel(inline="always")
def _fastrange(x: np.uint64, k: int) -> int:
    """Map a uniform 64-bit word to [0, k) by its top 32 bits (Lemire's multiply-shift, no division)."""
    return int(((x >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32))


@kernel
def _one_permutation(values, start, end, k, seed, sig, filled):
    """One-permutation hashing: bin = top bits of the element hash, value = min of the low 32 bits in the bin."""
    for j in range(k):
        sig[j] = EMPTY
        filled[j] = False
    for p in range(start, end):
        h = mix64(np.uint64(values[p]) ^ seed)
        b = _fastrange(h, k)
        v = np.uint32(h & np.uint64(0xFFFFFFFF))
        if not filled[b] or v < sig[b]:
            sig[b] = v
            filled[b] = True


PROBE_TABLE_DEPTH = 64


def probe_table(k: int, densify_seed: np.uint64) -> np.ndarray:
    """The first PROBE_TABLE_DEPTH bins of each bin's densification probe sequence, (k, depth); uint8 when
    k <= 256 so that the table (16 KiB at k = 256) stays in L1 cache."""
    out = np.empty((k, PROBE_TABLE_DEPTH), np.uint8 if k <= 256 else np.int32)
    _fill_probe_table(densify_seed, out)
    return out


@kernel(inline="always")
def _probe(densify_seed, j, t, k):
    return _fastrange(mix64(densify_seed ^ ((np.uint64(j) << np.uint64(32)) | np.uint64(t))), k)


@kernel
def _fill_probe_table(densify_seed, out):
    k = out.shape[0]
    for j in range(k):
        for t in range(out.shape[1]):
            out[j, t] = _probe(densify_seed, j, t + 1, k)


@kernel(parallel=True)
def oph_optimal(indptr, values, k, seed, densify_seed, probes, out):
    """OPH + optimal densification (Shrivastava, ICML 2017): an empty bin j takes the value of the first
    non-empty bin in the probe sequence h(j, 1), h(j, 2), ... . The sequence depends only on (j, t), so two sets
    whose bin j are both empty copy from the same bin with probability equal to their Jaccard similarity.
    Expected cost O(d + k * k / m) for m non-empty bins; O(d + k) once d >= k. The first probes of every bin come
    from the precomputed table ``probes`` (k, depth); later ones are hashed on the fly."""
    n = indptr.shape[0] - 1
    depth = probes.shape[1]
    n_chunks = min(n, 256)
    for c in numba.prange(n_chunks):
        filled = np.empty(k, np.bool_)  # scratch per chunk of rows rather than per row
        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            sig = out[i]
            _one_permutation(values, indptr[i], indptr[i + 1], k, seed, sig, filled)
            if indptr[i + 1] == indptr[i]:
                continue
            for j in range(k):
                if filled[j]:
                    continue
                t = 0
                while t < depth and not filled[probes[j, t]]:
                    t += 1
                if t < depth:
                    sig[j] = sig[probes[j, t]]
                    continue
                t += 1
                while True:
                    src = _probe(densify_seed, j, t, k)
                    if filled[src]:
                        sig[j] = sig[src]
                        break
                    t += 1


@kernel(parallel=True)
def oph_rotation(indptr, values, k, seed, out):
    """OPH + rotation densification (Shrivastava & Li, ICML 2014): an empty bin borrows from the nearest
    non-empty bin to its right (circularly), plus ``distance * C``. Kept for the ablation: its variance is higher
    than optimal densification's when many bins are empty."""
    n = indptr.shape[0] - 1
    for i in numba.prange(n):
        sig = out[i]
        filled = np.empty(k, np.bool_)
        _one_permutation(values, indptr[i], indptr[i + 1], k, seed, sig, filled)
        if indptr[i + 1] == indptr[i]:
            continue
        for j in range(k):
            if filled[j]:
                continue
            dist = 1
            while not filled[(j + dist) % k]:
                dist += 1
            sig[j] = sig[(j + dist) % k] + np.uint32(dist) * _ROTATION_OFFSET


@kernel(parallel=True)
def k_permutations(indptr, values, seed, mult, add, out):
    """Classic MinHash: k independent multiply-add-shift hash functions ((a * x + b) mod 2**64) >> 32 of the 32-bit
    element key x, a 2-independent family (Dietzfelbinger 1996). O(d * k) per set."""
    n = indptr.shape[0] - 1
    k = mult.shape[0]
    for i in numba.prange(n):
        sig = out[i]
        for j in range(k):
            sig[j] = EMPTY
        for p in range(indptr[i], indptr[i + 1]):
            x = mix64(np.uint64(values[p]) ^ seed) >> np.uint64(32)
            for j in range(k):
                v = np.uint32((mult[j] * x + add[j]) >> np.uint64(32))
                if v < sig[j]:
                    sig[j] = v


@kernel(parallel=True)
def band_keys(signatures, bands, rows, seed, out):
    """64-bit key of each band of r = ``rows`` signature values (n, bands) -> out (n, bands) uint64."""
    for i in numba.prange(signatures.shape[0]):
        for b in range(bands):
            h = mix64(seed ^ np.uint64(b))
            for r in range(rows):
                h = mix64(h ^ (np.uint64(signatures[i, b * rows + r]) + np.uint64(0x9E3779B97F4A7C15)))
            out[i, b] = h


@kernel(parallel=True)
def matching_fraction(a, b, out):
    """Fraction of equal entries in each row pair of (n, k) signatures a and b."""
    k = a.shape[1]
    for i in numba.prange(a.shape[0]):
        same = 0
        for j in range(k):
            same += a[i, j] == b[i, j]
        out[i] = same / k
