"""Numba plumbing shared by all kernels: the jit decorator, a prefetch intrinsic and thread-count control."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import _cache

_cache.install()  # before any kernel below or in other modules is decorated

# fastmath lets LLVM reorder float reductions into SIMD lanes. Inputs are validated as finite, so the
# no-NaN/no-inf assumptions it adds are true.
FASTMATH = True


def kernel(*args, parallel: bool = False, **kwargs):
    """``numba.njit`` with the project's defaults: cached, GIL released, fastmath."""
    opts = dict(cache=True, nogil=True, fastmath=FASTMATH, parallel=parallel)
    opts.update(kwargs)
    if args and callable(args[0]):
        return numba.njit(**opts)(args[0])
    return numba.njit(*args, **opts)


def inlined(fn):
    """The kernel ``fn`` inlined at numba's IR level into every kernel that calls it.

    For the functions a scorer family gives :func:`simdex.core.scorer.implement`: each of them is compiled as a
    function of its own, and a kernel it calls would add a second call per scored row. The two levels ran the
    float32 graph search 8-10% slower than one (1 thread, wordnet, ef 64).
    """
    return numba.njit(inline="always", cache=True, nogil=True, fastmath=FASTMATH)(fn.py_func)


@intrinsic
def prefetch_item(typingctx, array, row, col):
    """Hint the CPU to fetch the cache line holding ``array[row, col]`` (2-D array) into L1."""

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        idx = [context.cast(builder, args[1], signature.args[1], types.intp),
               context.cast(builder, args[2], signature.args[2], types.intp)]
        ptr = cgutils.get_item_pointer2(context, builder, data=ary.data,
                                        shape=cgutils.unpack_tuple(builder, ary.shape),
                                        strides=cgutils.unpack_tuple(builder, ary.strides),
                                        layout=aty.layout, inds=idx, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read access, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, row, col), codegen


@numba.njit(inline="always")
def prefetch_row(array, row, lines):
    """Prefetch the first ``lines`` cache lines (64 bytes each) of ``array[row]``."""
    step = 64 // array.itemsize
    for c in range(0, min(lines * step, array.shape[1]), step):
        prefetch_item(array, row, c)


@intrinsic
def move_within(typingctx, array, dst, src, count):
    """``array[dst:dst+count] = array[src:src+count]`` for a 1-D array, overlap allowed, as one memmove.

    LLVM does not turn numba's element loops for overlapping shifts into memmove; the libc call is about ten
    times faster for the few hundred bytes a sorted candidate pool shifts per insertion.
    """

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        shape = cgutils.unpack_tuple(builder, ary.shape)
        strides = cgutils.unpack_tuple(builder, ary.strides)

        def pointer(value, vty):
            idx = context.cast(builder, value, vty, types.intp)
            return cgutils.get_item_pointer2(context, builder, data=ary.data, shape=shape, strides=strides,
                                             layout=aty.layout, inds=[idx], wraparound=False)

        count = context.cast(builder, args[3], signature.args[3], types.intp)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(aty.dtype)))
        cgutils.raw_memmove(builder, pointer(args[1], signature.args[1]), pointer(args[2], signature.args[2]),
                            count, itemsize)
        return context.get_dummy_value()

    return types.void(array, dst, src, count), codegen


# pread(2) of libc, called from kernels by its name (a declared symbol, not a ctypes address, so that the kernels
# that call it stay cacheable)
_pread = types.ExternalFunction("pread", types.intp(types.int32, types.voidptr, types.uintp, types.int64))


@intrinsic
def _data_pointer(typingctx, array):
    """The address of a contiguous array's first item, as a ``void *``."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.bitcast(ary.data, cgutils.voidptr_t)

    return types.voidptr(array), codegen


@numba.njit(inline="always")
def read_at(fd, out, offset):
    """Fill the contiguous array ``out`` with the bytes of the open file ``fd`` from byte ``offset`` on (pread,
    repeated after a short read). Raises OSError when the file ends first or the read fails."""
    size = out.size * out.itemsize
    done = 0
    while done < size:
        got = _pread(np.int32(fd), _data_pointer(out.view(np.uint8)[done:]), size - done, offset + done)
        if got <= 0:
            raise OSError("reading float32 rows from their file failed (the file is shorter than the index, "
                          "or unreadable)")
        done += got


def max_threads() -> int:
    return numba.config.NUMBA_NUM_THREADS


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run parallel kernels with ``threads`` threads (None: all). Yields the number used."""
    if threads is None:
        yield numba.get_num_threads()
        return
    previous = numba.get_num_threads()
    used = max(1, min(int(threads), max_threads()))
    if used == previous:
        yield used
        return
    numba.set_num_threads(used)
    try:
        yield used
    finally:
        numba.set_num_threads(previous)


def batch_threads(threads: int | None, rows: int) -> int:
    """How many threads :func:`run_threads` should spread ``rows`` rows over: ``threads`` (None: numba's current
    setting), at most ``rows``. Unlike :func:`num_threads` this leaves numba's own setting alone (changing it and
    back costs 5 us, a tenth of a single query): for loops that only ``run_threads`` parallelises."""
    if rows <= 1:
        return 1
    used = numba.get_num_threads() if threads is None else min(int(threads), max_threads())
    return max(1, min(used, rows))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=max(64, 2 * cpu_count()), thread_name_prefix="simdex")
        return _EXECUTOR


def run_threads(kernel: Callable, n: int, nthreads: int, *args: Any, chunk: int = 0) -> None:
    """Call ``kernel(*args, t, lo, hi)`` over the rows 0..n-1 on up to ``nthreads`` threads; ``t`` numbers the
    threads from 0 (it picks each thread's scratch row) and every row is in exactly one [lo, hi).

    The batch kernels are serial, GIL-free kernels spread over Python threads instead of numba ``prange`` loops:
    numba compiles a parallel kernel at about three times the cost of the same loop serial (a second per kernel on
    a fresh install), and a single query then runs without a parallel launch. ``chunk`` 0 gives each thread one
    contiguous range (rows of even cost); ``chunk`` > 0 hands out ranges of that many rows as threads become free
    (uneven costs, e.g. inserting nodes of random levels). The calling thread works too.
    """
    nthreads = max(1, min(int(nthreads), n))
    if nthreads == 1:
        kernel(*args, 0, 0, n)
        return
    if chunk > 0:
        counter = itertools.count()

        def work(t: int) -> None:
            while True:
                lo = next(counter) * chunk  # next() on a count is atomic under the GIL
                if lo >= n:
                    return
                kernel(*args, t, lo, min(n, lo + chunk))
    else:
        bounds = [n * t // nthreads for t in range(nthreads + 1)]

        def work(t: int) -> None:
            kernel(*args, t, bounds[t], bounds[t + 1])

    futures = [_executor().submit(work, t) for t in range(1, nthreads)]
    try:
        work(0)
    finally:
        for future in futures:
            future.result()
