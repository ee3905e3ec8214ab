"""Numba kernels of binary codes: Hamming distance with the CPU's popcount instruction."""

from __future__ import annotations

import numpy as np
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from .._numba import kernel


@intrinsic
def popcount64(typingctx, value):
    """Number of set bits of a uint64 (LLVM ``ctpop``: one POPCNT instruction on x86-64)."""

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@kernel
def hamming(a, b):
    """Hamming distance between two packed uint64 code rows."""
    s = np.uint64(0)
    for w in range(a.shape[0]):
        s += popcount64(a[w] ^ b[w])
    return s


@kernel(parallel=True)
def hamming_all(qcodes, codes, out):
    """out[i, v] = hamming(qcodes[i], codes[v])."""
    for i in prange(qcodes.shape[0]):
        for v in range(codes.shape[0]):
            out[i, v] = np.float32(hamming(qcodes[i], codes[v]))
