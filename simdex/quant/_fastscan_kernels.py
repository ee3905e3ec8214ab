"""FastScan (André et al., VLDB 2015; as FAISS and RaBitQ-Library use it): the inner products of one query with the
1-bit codes of 16 vectors at once, by 16-entry table look-ups done with the CPU's byte shuffle.

Layout. A *run* holds one bit plane of the codes of 16 vectors: for each pair of 4-dimension groups (dims 8p to
8p + 7) 16 bytes, byte j holding vector j's bits of dims 8p..8p+3 in its low nibble and 8p+4..8p+7 in its high
nibble (bit t of a nibble is the nibble's t-th dimension). That byte is byte p of the vector's plane as packed
little-endian words (:func:`fastscan_layout` only transposes). The query's *table* (:func:`query_table`) holds, for
each group of 4 dimensions, the sums of its 4-bit levels over the 16 subsets of those dimensions, arranged so that
one 32-byte load of a run and two of the table give two shuffles for 4 groups of 16 vectors
(:func:`lookup_add`): a 384-d run is 24 such steps, where a popcount estimate costs 24 popcounts per vector.

numba cannot emit a byte shuffle from Python code, and LLVM does not turn a 16-entry table look-up into one, so
the look-up is an LLVM intrinsic (``llvm.x86.avx2.pshuf.b``) on CPUs with AVX2 and a plain loop with the same
results elsewhere.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .._numba import kernel
from ._rabitq_kernels import query_grid, query_level

GROUP_VECTORS = 16  # vectors in a run
STEP_BYTES = 32  # run bytes per look-up step (4 groups of 4 dimensions)
TABLE_STEP_BYTES = 64  # table bytes per step: two 32-byte registers (low and high nibbles)
# steps per call: a lane of the 16-bit accumulator gains at most 2 * 60 per step
MAX_STEPS = 512


def _host_has_avx2() -> bool:
    try:
        return bool(llvm_binding.get_host_cpu_features().get("avx2", False))
    except RuntimeError:  # LLVM cannot read this host's features: take the plain loop
        return False


HAVE_AVX2 = _host_has_avx2()

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_BYTES32 = ir.VectorType(_I8, 32)
_WORDS32 = ir.VectorType(_I16, 32)
_DWORDS16 = ir.VectorType(_I32, 16)


def _splat(vty: ir.VectorType, value: int) -> ir.Constant:
    return ir.Constant(vty, [ir.Constant(vty.element, value)] * vty.count)


@intrinsic
def _lookup_add_avx2(typingctx, run, start, table, steps, out, at, shift):
    """:func:`lookup_add` with two ``vpshufb`` per step, the sums kept in 16-bit lanes of two registers."""
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (run, table, out)):
        return None
    if run.dtype != types.uint8 or table.dtype != types.uint8 or out.dtype != types.uint32:
        return None

    def codegen(context, builder, sig, args):
        def index(i):
            return context.cast(builder, args[i], sig.args[i], types.intp)

        def data(i):
            return context.make_array(sig.args[i])(context, builder, args[i]).data

        def load32(pointer, offset):
            return builder.load(builder.bitcast(builder.gep(pointer, [offset]), _BYTES32.as_pointer()), align=1)

        intp = context.get_value_type(types.intp)
        base = builder.gep(data(0), [index(1)])
        table_data = data(2)
        shuffle = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_BYTES32, [_BYTES32, _BYTES32]),
                                                 "llvm.x86.avx2.pshuf.b")
        acc = cgutils.alloca_once_value(builder, ir.Constant(_WORDS32, None))
        with cgutils.for_range(builder, index(3)) as loop:
            codes = load32(base, builder.mul(loop.index, ir.Constant(intp, STEP_BYTES)))
            row = builder.mul(loop.index, ir.Constant(intp, TABLE_STEP_BYTES))
            low_table = load32(table_data, row)
            high_table = load32(table_data, builder.add(row, ir.Constant(intp, 32)))
            low = builder.call(shuffle, [low_table, builder.and_(codes, _splat(_BYTES32, 15))])
            high = builder.call(shuffle, [high_table, builder.lshr(codes, _splat(_BYTES32, 4))])
            # two look-ups of at most 60 each fit a byte; the sum over steps needs 16 bits
            builder.store(builder.add(builder.load(acc), builder.zext(builder.add(low, high), _WORDS32)), acc)
        total = builder.load(acc)
        halves = [builder.zext(builder.shuffle_vector(total, total, ir.Constant(_DWORDS16, list(range(h, h + 16)))),
                               _DWORDS16) for h in (0, 16)]
        sums = builder.add(halves[0], halves[1])  # the two 128-bit lanes held the same vectors' other groups
        count = builder.trunc(index(6), _I32)
        sums = builder.shl(sums, _splat_value(builder, count))
        target = builder.bitcast(builder.gep(data(4), [index(5)]), _DWORDS16.as_pointer())
        builder.store(builder.add(builder.load(target, align=4), sums), target, align=4)
        return context.get_dummy_value()

    return types.void(run, start, table, steps, out, at, shift), codegen


def _splat_value(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """A <16 x i32> vector of the i32 ``value``."""
    one = builder.insert_element(ir.Constant(_DWORDS16, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(_DWORDS16, [0] * 16))


@kernel(inline="always")
def _lookup_add_plain(run, start, table, steps, out, at, shift):
    """:func:`lookup_add` without byte shuffles (CPUs without AVX2)."""
    for s in range(steps):
        for half in range(2):
            for j in range(GROUP_VECTORS):
                byte = run[start + STEP_BYTES * s + GROUP_VECTORS * half + j]
                t = TABLE_STEP_BYTES * s + GROUP_VECTORS * half
                out[at + j] += (np.uint32(table[t + (byte & 15)]) + np.uint32(table[t + 32 + (byte >> 4)])) << shift


_lookup_add = _lookup_add_avx2 if HAVE_AVX2 else _lookup_add_plain


@kernel(inline="always")
def lookup_add(run, start, table, out, at, shift):
    """``out[at + j] += (sum_i level_i * bit_ij) << shift`` for the 16 vectors j of the run that starts at byte
    ``start`` of ``run`` (uint8, 1-D, C order; :func:`fastscan_layout`), ``table`` (uint8) the query's table from
    :func:`query_table` and ``out`` uint32."""
    steps = table.shape[0] // TABLE_STEP_BYTES
    for s0 in range(0, steps, MAX_STEPS):
        n = min(MAX_STEPS, steps - s0)
        _lookup_add(run, start + STEP_BYTES * s0, table[TABLE_STEP_BYTES * s0:], n, out, at, shift)


@kernel(inline="always")
def lookup_add_plain(run, start, table, out, at, shift):
    """:func:`lookup_add` by the plain loop, whatever the CPU (to test one against the other)."""
    _lookup_add_plain(run, start, table, table.shape[0] // TABLE_STEP_BYTES, out, at, shift)


@kernel
def query_table(qp, table):
    """Quantise ``qp`` (D,) float32 (D a multiple of 16) to levels u in [0, 15] (``qp ~ low + delta * u``) and
    write the FastScan table of u into ``table`` (4 D,) uint8; returns (low, delta, sum of u), as
    :func:`simdex.quant._rabitq_kernels.quantize_query` does for its bit planes (the same grid and levels)."""
    low, delta, inv = query_grid(qp)
    total = 0
    for g in range(qp.shape[0] // 4):
        at = TABLE_STEP_BYTES * (g >> 2) + 32 * (g & 1) + GROUP_VECTORS * ((g >> 1) & 1)
        u0 = np.uint8(query_level(qp[4 * g], low, inv))
        u1 = np.uint8(query_level(qp[4 * g + 1], low, inv))
        u2 = np.uint8(query_level(qp[4 * g + 2], low, inv))
        u3 = np.uint8(query_level(qp[4 * g + 3], low, inv))
        total += np.int64(u0) + np.int64(u1) + np.int64(u2) + np.int64(u3)
        table[at] = 0
        table[at + 1] = u0
        for x in range(2, 4):
            table[at + x] = table[at + x - 2] + u1
        for x in range(4, 8):
            table[at + x] = table[at + x - 4] + u2
        for x in range(8, 16):
            table[at + x] = table[at + x - 8] + u3
    return np.float32(low), np.float32(delta), np.float32(total)


def fastscan_layout(words: np.ndarray, bits: int) -> np.ndarray:
    """Runs of the codes ``words`` (r, m, bits * W) uint64 (r nodes' codes of m vectors each, ``bits`` planes of W
    packed words) as (r, ceil(m / 16), bits, 128 W) uint8: for node v, group of 16 vectors b and plane a, the run
    that :func:`lookup_add` reads (missing vectors of a last group are zero)."""
    r, m, width = words.shape
    nwords = width // bits
    groups = -(-m // GROUP_VECTORS)
    planes = np.zeros((r, groups * GROUP_VECTORS, bits, 8 * nwords), np.uint8)
    planes[:, :m] = words.reshape(r, m, bits, nwords).view(np.uint8)
    planes = planes.reshape(r, groups, GROUP_VECTORS, bits, 8 * nwords).transpose(0, 1, 3, 4, 2)
    return np.ascontiguousarray(planes).reshape(r, groups, bits, 8 * nwords * GROUP_VECTORS)


def packed_layout(runs: np.ndarray, m: int) -> np.ndarray:
    """The inverse of :func:`fastscan_layout`: (r, m, bits * W) uint64 codes of the runs (r, groups, bits, 128 W)."""
    r, groups, bits, width = runs.shape
    planes = runs.reshape(r, groups, bits, width // GROUP_VECTORS, GROUP_VECTORS).transpose(0, 1, 4, 2, 3)
    planes = np.ascontiguousarray(planes).reshape(r, groups * GROUP_VECTORS, bits, width // GROUP_VECTORS)[:, :m]
    return np.ascontiguousarray(planes).view(np.uint64).reshape(r, m, -1)
