"""The Triton kernel of the exact GPU search: distances by tiled dot products and a k-selection fused after them,
so that no (queries x vectors) distance matrix is ever written to memory.

Each program takes a block of queries and a contiguous chunk of the stored rows, scans the chunk a tile of rows at
a time (``tl.dot`` of the query block with the tile, over the dimensions a block at a time, accumulated in float32),
turns the products into internal distances (``||x||^2 - 2 <q, x>`` for L2, ``-<q, x>`` otherwise) and keeps each
query's k best of the chunk in registers: distance and row packed into one int64 key (the float's bits made
order-preserving as a signed int in the high half, the row in the low half), so that one ``tl.topk`` over keys
selects both. A tile is K rows (k rounded up to a power of two, at least 16): the k kept and the tile's K are
merged by one ``tl.topk`` of 2K keys, and only when a key of the tile beats the k-th kept, which after the first
tiles few do (FAISS's warp-select filters on the same threshold). It writes its k best keys; the caller merges
the chunks' keys (``torch.topk`` over chunks x k) and unpacks them (:func:`unpack_keys`). Splitting the rows
into chunks gives a single query as many programs as the device has cores, so it reads the vectors once at
memory bandwidth; a batch splits over query blocks as well.

Triton is imported when a kernel is first asked for (:func:`scan_topk_kernel`), reading ``TRITON_INTERPRET`` then:
under the interpreter the same kernel runs on the CPU (tests/test_gpu.py).
"""

from __future__ import annotations

import functools
from typing import Any

NO_KEY = (1 << 63) - 1  # an empty slot of the running k best (larger than every real key)


@functools.lru_cache(maxsize=2)
def _build(interpret: bool) -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def scan_topk(Q, X, XN, PART, nq, n, dim, rows_per_chunk, n_chunks, stride_q, stride_x,
                  IS_L2: tl.constexpr, K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
                  IEEE: tl.constexpr):
        BLOCK_N: tl.constexpr = K
        pid_q = tl.program_id(0)
        pid_c = tl.program_id(1)
        qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q_ok = qs < nq
        lo = pid_c * rows_per_chunk
        hi = tl.minimum(lo + rows_per_chunk, n)
        best = tl.full((BLOCK_Q, K), NO_KEY, tl.int64)
        for start in range(lo, hi, BLOCK_N):
            rows = start + tl.arange(0, BLOCK_N)
            r_ok = rows < hi
            acc = tl.zeros((BLOCK_Q, BLOCK_N), tl.float32)
            for d0 in range(0, dim, BLOCK_D):
                ds = d0 + tl.arange(0, BLOCK_D)
                d_ok = ds < dim
                qt = tl.load(Q + qs[:, None] * stride_q + ds[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
                xt = tl.load(X + rows[:, None] * stride_x + ds[None, :], mask=r_ok[:, None] & d_ok[None, :],
                             other=0.0)
                if IEEE:
                    acc += tl.dot(qt, tl.trans(xt), input_precision="ieee")
                else:
                    acc += tl.dot(qt, tl.trans(xt))
            if IS_L2:
                xn = tl.load(XN + rows, mask=r_ok, other=0.0)
                dist = xn[None, :] - 2.0 * acc
            else:
                dist = -acc
            dist = tl.where(r_ok[None, :], dist, float("inf"))
            bits = dist.to(tl.int32, bitcast=True)
            ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # signed-int order = float order
            keys = (ordered.to(tl.int64) << 32) | rows[None, :].to(tl.int64)
            # (a tile is K rows.) Merge only when some key beats the k-th kept: after the first tiles most do not
            kth = tl.max(best, axis=1)
            if tl.sum((keys < kth[:, None]).to(tl.int32)) > 0:
                both = tl.reshape(tl.join(best, keys), (BLOCK_Q, 2 * K))
                best = tl.topk(both, K, dim=1, descending=False)
        ks = tl.arange(0, K)
        out = PART + (qs[:, None] * n_chunks + pid_c) * K + ks[None, :]
        tl.store(out, best, mask=q_ok[:, None])

    return scan_topk


def scan_topk_kernel() -> Any:
    """The compiled (or, with ``TRITON_INTERPRET=1``, interpreted) scan-and-select kernel."""
    import os
    return _build(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))


def unpack_keys(keys: Any) -> tuple[Any, Any]:
    """(internal float32 distances, int64 rows; -1 where empty) of packed int64 ``keys`` (a torch tensor)."""
    import torch
    rows = (keys & 0xFFFFFFFF).to(torch.int64)
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    dist = bits.view(torch.float32)
    empty = keys == NO_KEY
    return torch.where(empty, torch.full_like(dist, float("inf")), dist), torch.where(empty, -1, rows)
