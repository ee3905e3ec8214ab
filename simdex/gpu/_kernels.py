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


def pow2_block(n: int, low: int = 16) -> int:
    """The smallest power of two >= ``n`` and >= ``low``: Triton's block sizes and ``tl.topk``'s k."""
    return max(low, 1 << (max(n, 1) - 1).bit_length())


@functools.lru_cache(maxsize=2)
def _build(interpret: bool) -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def scan_topk(Q, X, XN, PART, nq, n, dim, rows_per_chunk, n_chunks, stride_q, stride_x,
                  IS_L2: tl.constexpr, K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
                  IEEE: tl.constexpr, EMPTY: tl.constexpr):
        pid_q = tl.program_id(0)
        pid_c = tl.program_id(1)
        qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q_ok = qs < nq
        lo = pid_c * rows_per_chunk
        hi = tl.minimum(lo + rows_per_chunk, n)
        best = tl.full((BLOCK_Q, K), EMPTY, tl.int64)
        for start in range(lo, hi, K):  # a tile is K rows
            rows = start + tl.arange(0, K)
            r_ok = rows < hi
            acc = tl.zeros((BLOCK_Q, K), tl.float32)
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
            # merge only when some key beats the k-th kept: after the first tiles most do not
            kth = tl.max(best, axis=1)
            if tl.sum((keys < kth[:, None]).to(tl.int32)) > 0:
                both = tl.reshape(tl.join(best, keys), (BLOCK_Q, 2 * K))
                best = tl.topk(both, K, dim=1, descending=False)
        ks = tl.arange(0, K)
        out = PART + (qs[:, None] * n_chunks + pid_c) * K + ks[None, :]
        tl.store(out, best, mask=q_ok[:, None])

    @triton.jit
    def list_scan_topk(Q, LUT, TAB, CODES, VECS, XN, OFFSETS, PROBES, PROBE_D, PART, nprobe, dim, m,
                       IS_PQ: tl.constexpr, IS_L2: tl.constexpr, K: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_D: tl.constexpr, EMPTY: tl.constexpr):
        """One (query, probe) per program: the K best entries of the probed inverted list, scored from PQ codes
        (the query's table ``LUT`` (nq, m, 256) plus the list's ``TAB`` (nlist, m, 256) on L2) or from float
        vectors, each entry's internal distance offset by the list's coarse distance ``PROBE_D``."""
        qi = tl.program_id(0)
        p = tl.program_id(1)
        lst = tl.load(PROBES + qi * nprobe + p)
        best = tl.full((1, K), EMPTY, tl.int64)
        if lst >= 0:
            lo = tl.load(OFFSETS + lst)
            hi = tl.load(OFFSETS + lst + 1)
            d0 = tl.load(PROBE_D + qi * nprobe + p)
            for start in range(lo, hi, K):
                es = start + tl.arange(0, K)
                e_ok = es < hi
                if IS_PQ:
                    js = tl.arange(0, BLOCK_M)
                    j_ok = js < m
                    ok = e_ok[:, None] & j_ok[None, :]
                    codes = tl.load(CODES + es[:, None] * m + js[None, :], mask=ok, other=0).to(tl.int32)
                    parts = tl.load(LUT + (qi * m + js[None, :]) * 256 + codes, mask=ok, other=0.0)
                    if IS_L2:
                        parts += tl.load(TAB + (lst * m + js[None, :]) * 256 + codes, mask=ok, other=0.0)
                    dist = d0 + tl.sum(parts, axis=1)
                else:
                    acc = tl.zeros((K,), tl.float32)
                    for c0 in range(0, dim, BLOCK_D):
                        cs = c0 + tl.arange(0, BLOCK_D)
                        c_ok = cs < dim
                        qv = tl.load(Q + qi * dim + cs, mask=c_ok, other=0.0).to(tl.float32)
                        xv = tl.load(VECS + es[:, None] * dim + cs[None, :], mask=e_ok[:, None] & c_ok[None, :],
                                     other=0.0).to(tl.float32)
                        acc += tl.sum(xv * qv[None, :], axis=1)
                    if IS_L2:
                        dist = tl.load(XN + es, mask=e_ok, other=0.0) - 2.0 * acc
                    else:
                        dist = -acc
                dist = tl.where(e_ok, dist, float("inf"))
                bits = dist.to(tl.int32, bitcast=True)
                ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
                keys = ((ordered.to(tl.int64) << 32) | es.to(tl.int64))[None, :]
                kth = tl.max(best, axis=1)
                if tl.sum((keys < kth[:, None]).to(tl.int32)) > 0:
                    both = tl.reshape(tl.join(best, keys), (1, 2 * K))
                    best = tl.topk(both, K, dim=1, descending=False)
        ks = tl.arange(0, K)
        tl.store(PART + (qi * nprobe + p) * K + ks[None, :], best)

    return scan_topk, list_scan_topk


def _interpreting() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def scan_topk_kernel() -> Any:
    """The compiled (or, with ``TRITON_INTERPRET=1``, interpreted) scan-and-select kernel."""
    return _build(_interpreting())[0]


def list_scan_kernel() -> Any:
    """The inverted-list scan-and-select kernel of :mod:`simdex.gpu.ivf`."""
    return _build(_interpreting())[1]


def unpack_keys(keys: Any) -> tuple[Any, Any]:
    """(internal float32 distances, int64 rows; -1 where empty) of packed int64 ``keys`` (a torch tensor)."""
    import torch
    rows = (keys & 0xFFFFFFFF).to(torch.int64)
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    dist = bits.view(torch.float32)
    empty = keys == NO_KEY
    return torch.where(empty, torch.full_like(dist, float("inf")), dist), torch.where(empty, -1, rows)
