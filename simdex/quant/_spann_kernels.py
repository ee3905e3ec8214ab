"""Numba kernels of the SPANN-style disk index: closure assignment of vectors to posting lists at build time and
the scatter of codes into the list-ordered posting file. Its search is the list scan of :mod:`simdex.core.lists`
(LVQ / int8 codes, duplicates skipped, exact re-ranking from the float32 vector file)."""

from __future__ import annotations

from numba import prange

from .._numba import kernel


@kernel(parallel=True)
def closure_assign(cand_d, cand_l, centroids, eps, rng_rule, out):
    """Pick the posting lists of every vector from its candidate lists (``cand_d`` squared L2
    distances, ascending, with ``cand_l`` their list ids; both (n, C)): the nearest always; another candidate c
    only if ``dist(x, c) <= (1 + eps) * dist(x, nearest)`` (a boundary vector) and, as SPANN's RNG rule, only if
    with ``rng_rule``, only if no already chosen centroid p is closer to c than x is (``dist(c, p) < dist(x, c)``:
    p's list already covers that direction). ``out`` (n, R) int32 receives the chosen list ids, -1 padded."""
    n, C = cand_d.shape
    R = out.shape[1]
    dim = centroids.shape[1]
    for i in prange(n):
        out[i, :] = -1
        out[i, 0] = cand_l[i, 0]
        chosen = 1
        limit = (1.0 + eps) * (1.0 + eps) * cand_d[i, 0]
        for j in range(1, C):
            if chosen >= R or cand_d[i, j] > limit or cand_l[i, j] < 0:
                break
            c = cand_l[i, j]
            keep = True
            for p in range(chosen if rng_rule else 0):
                s = 0.0
                other = out[i, p]
                for t in range(dim):
                    diff = centroids[c, t] - centroids[other, t]
                    s += diff * diff
                if s < cand_d[i, j]:
                    keep = False
                    break
            if keep:
                out[i, chosen] = c
                chosen += 1


@kernel
def scatter_codes(assign, codes, start, cursor, out_codes, out_slots):
    """Append each row's code to every list it was assigned to: list l's next entry is ``cursor[l]``."""
    for i in range(assign.shape[0]):
        for r in range(assign.shape[1]):
            lst = assign[i, r]
            if lst < 0:
                break
            pos = cursor[lst]
            cursor[lst] = pos + 1
            out_codes[pos, :] = codes[i]
            out_slots[pos] = start + i
