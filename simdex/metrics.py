"""Distance metrics.

Public convention (smaller is always more similar):

- ``l2``: squared Euclidean distance ``||q - x||^2``.
- ``ip``: ``1 - <q, x>`` (the hnswlib convention; for unit vectors equal to the cosine distance).
- ``cosine``: ``1 - cos(q, x)``; vectors are normalised to unit length when added and when queried.

Inside the kernels ``ip`` and ``cosine`` are scored as ``-<q, x>``, which orders the same way and is one
instruction cheaper; :func:`to_public` adds the 1 back.
"""

from __future__ import annotations

import numpy as np

from ._numba import kernel

L2 = 0
IP = 1
METRIC_CODES = {"l2": L2, "ip": IP, "cosine": IP}


@kernel
def l2sq(a, b):
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        t = a[i] - b[i]
        s += t * t
    return s


@kernel
def neg_dot(a, b):
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return -s


@kernel
def distance(metric, a, b):
    """Internal distance between two 1-D float32 vectors: squared L2, or minus the inner product."""
    if metric == L2:
        return l2sq(a, b)
    return neg_dot(a, b)


@kernel
def distance4(metric, q, a, b, c, d):
    """Internal distances from q to four vectors in one pass: q is loaded once and four independent memory
    streams are in flight, which hides more of the latency of reading graph neighbours."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    if metric == L2:
        for i in range(q.shape[0]):
            qi = q[i]
            t0 = qi - a[i]
            t1 = qi - b[i]
            t2 = qi - c[i]
            t3 = qi - d[i]
            s0 += t0 * t0
            s1 += t1 * t1
            s2 += t2 * t2
            s3 += t3 * t3
        return s0, s1, s2, s3
    for i in range(q.shape[0]):
        qi = q[i]
        s0 += qi * a[i]
        s1 += qi * b[i]
        s2 += qi * c[i]
        s3 += qi * d[i]
    return -s0, -s1, -s2, -s3


def to_public(metric: str, internal: np.ndarray) -> np.ndarray:
    """Convert internal scores to the public convention (in place when possible)."""
    if metric == "l2":
        return internal
    internal += np.float32(1.0)
    return internal


def public_results(metric_code: int, internal: np.ndarray, slots: np.ndarray, slot_ids: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A search's answer as the public ``(distances, ids)``: ``internal`` distances (any shape) converted in place
    as :func:`to_public` does, and the ids of ``slots`` (int, same shape) read from ``slot_ids``, -1 where a slot
    is negative ("no result"). One compiled pass: numpy's where/take/add cost a single query 5 us."""
    ids = np.empty(slots.shape, np.int64)
    public_into(metric_code, internal.reshape(-1), slots.reshape(-1), slot_ids, ids.reshape(-1))
    return internal, ids


@kernel
def public_into(metric_code, internal, slots, slot_ids, ids):
    """:func:`public_results` of flat arrays, writing ``ids``: for kernels that end a search with it."""
    for i in range(slots.shape[0]):
        s = slots[i]
        ids[i] = slot_ids[s] if s >= 0 else -1
        if metric_code != L2:
            internal[i] += np.float32(1.0)


def pairwise(metric: str, queries: np.ndarray, vectors: np.ndarray,
             vector_sqnorms: np.ndarray | None = None) -> np.ndarray:
    """Internal distances of all query/vector pairs with one BLAS call: shape (len(queries), len(vectors)).

    For ``l2`` this is ``|q|^2 - 2 q.x + |x|^2``, clipped at 0 (rounding can make it slightly negative).
    """
    dots = queries @ vectors.T
    if METRIC_CODES[metric] == IP:
        np.negative(dots, out=dots)
        return dots
    if vector_sqnorms is None:
        vector_sqnorms = np.einsum("ij,ij->i", vectors, vectors)
    qn = np.einsum("ij,ij->i", queries, queries)
    dots *= np.float32(-2.0)
    dots += vector_sqnorms[None, :]
    dots += qn[:, None]
    np.maximum(dots, 0, out=dots)
    return dots
