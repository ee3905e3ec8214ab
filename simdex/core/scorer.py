"""Scorers: how a search loop scores one stored row against one query, chosen when the loop is compiled.

Every search loop of simdex (the graph search of :mod:`simdex.core.graph`, the list scan of
:mod:`simdex.core.lists`) is written once and takes a *scorer*: a ``typing.NamedTuple`` holding the arrays that
scoring reads (float32 vectors, codes and their prepared queries, lookup tables). numba types each NamedTuple
class on its own, so a loop compiles once per scorer family with that family's code inlined: the choice costs
nothing per node (usearch's compiled metric callback; FAISS's codec beside the structure that uses it).

A family gives its class these functions with :func:`implement` (:class:`Vectors` below; the codecs in
:mod:`simdex.quant._scorers`), each taking the arguments named here:

- ``query(sc, qi, t)``: what scoring query ``qi`` needs, prepared once per query (a float row, a prepared code
  query, a lookup table); ``t`` is the thread, for per-thread scratch the scorer holds.
- ``score(sc, q, v)``: the internal distance (float32, smaller is closer) of stored row ``v``.
- ``score4(sc, q, a, b, c, d)``: four rows at once (default: four ``score`` calls).
- ``prefetch(sc, v)``: start reading row ``v`` before it is scored (default: nothing).
- ``list_query(sc, q, qi, p, lst)``: the query state for scanning inverted list ``lst``, the query's probe p
  (default: ``q``).

The last step of a graph search is chosen the same way, by a *finisher* NamedTuple (:mod:`simdex.core.graph`):

- ``finish(fin, qi, t, cand_d, cand_i, n, out_d, out_i)``: write query qi's results (``out_d``/``out_i``, (k,))
  from its n candidates, nearest first.

The kernels that use a scorer are cached like every kernel, and numba checks only the cached function's own file:
after changing a family's functions, clear ``simdex/core/__pycache__``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba.extending import overload

from .._numba import FASTMATH, inlined, kernel, prefetch_row, read_at
from ..metrics import distance, distance4

_IMPLS: dict[tuple[str, type], Callable] = {}
_DEFAULTS: dict[str, Callable | None] = {}


def implement(cls: type, **functions: Callable) -> None:
    """Give the NamedTuple class ``cls`` the named functions (plain Python functions or lambdas, compiled into
    the kernels that call them), e.g. ``implement(MyScorer, query=..., score=...)``."""
    for name, fn in functions.items():
        if name not in _DEFAULTS:
            raise ValueError(f"unknown scorer function {name!r}; known: {sorted(_DEFAULTS)}")
        _IMPLS[name, cls] = fn


def dispatched(default: Callable | None = None, *, inline: bool = False,
               same_as: str | None = None) -> Callable[[Callable], Callable]:
    """Make the decorated stub callable from kernels: numba types a call with the function that the first
    argument's class was given by :func:`implement` (else ``default``; with neither, a typing error naming the
    class). With ``inline`` the function is inlined into its caller at numba's IR level; with ``same_as`` the
    stub calls the functions given under that other name."""

    def wrap(stub: Callable) -> Callable:
        name = same_as or stub.__name__
        if same_as is None:
            _DEFAULTS[name] = default

        def typer(*args):
            cls = getattr(args[0], "instance_class", None)
            impl = _IMPLS.get((name, cls), default)
            if impl is None:
                raise TypeError(f"{cls} has no {name} (see simdex.core.scorer.implement)")
            return impl

        def inline_here(expr, caller_info, callee_info) -> bool:
            # a default is a forward to other scorer functions (four ``score`` calls, or nothing): inlined, it
            # adds no call level of its own
            return inline or (name, getattr(callee_info.signature.args[0], "instance_class", None)) not in _IMPLS

        typer.__signature__ = inspect.signature(stub)  # numba wants the stub's arguments, by name
        overload(stub, jit_options={"fastmath": FASTMATH}, inline=inline_here)(typer)
        return stub

    return wrap


def _score4_default(sc, q, a, b, c, d):
    return score(sc, q, a), score(sc, q, b), score(sc, q, c), score(sc, q, d)


@dispatched()
def query(sc, qi, t):
    """The prepared query ``qi`` (see the module docstring)."""
    raise NotImplementedError("called from numba kernels only")


@dispatched()
def score(sc, q, v):
    """Internal distance of stored row ``v`` to the prepared query ``q``."""
    raise NotImplementedError("called from numba kernels only")


@dispatched(_score4_default)
def score4(sc, q, a, b, c, d):
    """Internal distances of rows a, b, c, d."""
    raise NotImplementedError("called from numba kernels only")


# The inverted-list scan's per-entry work is a few instructions: called as a function (LLVM kept it out of line), its
# scoring ran IVF-PQ at half the speed of the per-codec loops it replaced, so it is inlined at numba's IR level.
# The graph search calls ``score``/``score4`` as functions (inlined into it, HNSW over LVQ codes ran a third
# slower); what keeps that fast is one call level per scored row: a family's functions inline the kernels they
# call (:func:`simdex._numba.inlined`), and a default (``score4`` as four ``score`` calls) is inlined itself.
@dispatched(inline=True, same_as="score")
def scan_score(sc, q, v):
    """``score``, inlined into the list scan (:mod:`simdex.core.lists`)."""
    raise NotImplementedError("called from numba kernels only")


@dispatched(lambda sc, v: None)
def prefetch(sc, v):
    """Start reading what ``score`` of row ``v`` will read."""
    raise NotImplementedError("called from numba kernels only")


@dispatched(lambda sc, q, qi, p, lst: q)
def list_query(sc, q, qi, p, lst):
    """The query state for scanning inverted list ``lst`` (probe p of query qi)."""
    raise NotImplementedError("called from numba kernels only")


@dispatched()
def finish(fin, qi, t, cand_d, cand_i, n, out_d, out_i):
    """Write query qi's results from its n ascending candidates (thread t)."""
    raise NotImplementedError("called from numba kernels only")


class Vectors(NamedTuple):
    """float32 rows: ``queries`` (nq, dim) against ``vectors`` (n, dim), in the internal ``metric`` of
    :mod:`simdex.metrics` (squared L2, or minus the inner product). Four rows are scored in one pass."""

    metric: int
    queries: np.ndarray
    vectors: np.ndarray


# cache lines of a float32 row to request before scoring it (a 384-d row is 24 lines; the first few start the
# stream)
VECTOR_PREFETCH_LINES = 4

_distance = inlined(distance)
_distance4 = inlined(distance4)

implement(Vectors,
          query=lambda sc, qi, t: sc.queries[qi],
          score=lambda sc, q, v: _distance(sc.metric, q, sc.vectors[v]),
          score4=lambda sc, q, a, b, c, d: _distance4(sc.metric, q, sc.vectors[a], sc.vectors[b], sc.vectors[c],
                                                      sc.vectors[d]),
          prefetch=lambda sc, v: prefetch_row(sc.vectors, v, VECTOR_PREFETCH_LINES))


@kernel
def sort_prefix(cand_d, cand_i, r):
    """Sort the first r (distance, id) pairs by distance, stably (equal distances keep their order), by insertion:
    for the candidates a re-ranking or a link pruning sorts, a few dozen to a few hundred that arrive nearly
    sorted. Arbitrary orders of many pairs: :func:`sort_pairs`. (Both are written out rather than
    ``np.argsort(kind="mergesort")``, whose compilation alone took a second of a fresh install's first add.)"""
    _insertion_sort(cand_d, cand_i, 0, r)


@kernel(inline="always")
def _insertion_sort(cand_d, cand_i, lo, hi):
    """Stable insertion sort of the pairs lo..hi-1 by distance."""
    for j in range(lo + 1, hi):
        d = cand_d[j]
        v = cand_i[j]
        p = j - 1
        while p >= lo and cand_d[p] > d:
            cand_d[p + 1] = cand_d[p]
            cand_i[p + 1] = cand_i[p]
            p -= 1
        cand_d[p + 1] = d
        cand_i[p + 1] = v


@kernel
def sort_pairs(cand_d, cand_i, r):
    """:func:`sort_prefix` for pairs in any order: a bottom-up stable merge sort (runs of 16 sorted by insertion
    first)."""
    run = 16
    for lo in range(0, r, run):
        _insertion_sort(cand_d, cand_i, lo, min(lo + run, r))
    src_d = np.empty(r, np.float32)
    src_i = np.empty(r, np.int32)
    for j in range(r):
        src_d[j] = cand_d[j]
        src_i[j] = cand_i[j]
    dst_d = np.empty(r, np.float32)
    dst_i = np.empty(r, np.int32)
    width = run
    while width < r:
        for lo in range(0, r, 2 * width):
            mid = min(lo + width, r)
            hi = min(lo + 2 * width, r)
            a, b = lo, mid
            for o in range(lo, hi):
                # the right item only when strictly nearer: ties keep the earlier item first (stable)
                if b < hi and (a >= mid or src_d[b] < src_d[a]):
                    dst_d[o] = src_d[b]
                    dst_i[o] = src_i[b]
                    b += 1
                else:
                    dst_d[o] = src_d[a]
                    dst_i[o] = src_i[a]
                    a += 1
        src_d, dst_d = dst_d, src_d
        src_i, dst_i = dst_i, src_i
        width *= 2
    for j in range(r):
        cand_d[j] = src_d[j]
        cand_i[j] = src_i[j]


class FileRows(NamedTuple):
    """float32 rows of ``dim`` items in the open file ``fd`` (row i at byte ``4 * dim * i``), read with a system
    call per row instead of through a mapping: where a kernel takes ``vectors`` for re-ranking, this may stand in
    for the array (:func:`simdex._storage.row_source`)."""

    fd: int
    dim: int


def _rescore_mapped(vectors, metric, q, cand_d, cand_i, r):
    for j in range(r):
        prefetch_row(vectors, cand_i[j], VECTOR_PREFETCH_LINES)
    for j in range(r):
        cand_d[j] = _distance(metric, q, vectors[cand_i[j]])


def _rescore_read(vectors, metric, q, cand_d, cand_i, r):
    row = np.empty(vectors.dim, np.float32)
    for j in range(r):
        read_at(vectors.fd, row, np.int64(cand_i[j]) * vectors.dim * 4)
        cand_d[j] = _distance(metric, q, row)


@dispatched(_rescore_mapped)
def rescore_rows(vectors, metric, q, cand_d, cand_i, r):
    """Exact distances of the first r candidates, from an array of rows or :class:`FileRows`."""
    raise NotImplementedError("called from numba kernels only")


implement(FileRows, rescore_rows=_rescore_read)


@kernel
def rescore(metric, q, vectors, cand_d, cand_i, r):
    """Re-score the first r candidates from their float32 ``vectors`` (full precision: an array, or
    :class:`FileRows`) and sort them."""
    rescore_rows(vectors, metric, q, cand_d, cand_i, r)
    sort_prefix(cand_d, cand_i, r)
