"""Numba kernels of the window index: exact top-k over contiguous row ranges, and merging candidate lists.

All kernels keep one max-heap of k (internal distance, slot) per query (see :mod:`simdex._heap`), so the exact
parts of a query's plan and the results of its graph searches can be pushed into the same heap in any order.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._heap import heap_replace_top
from .._numba import kernel
from ..metrics import distance, distance4


@kernel
def _scan(metric, q, vectors, skip, start, end, hd, hi):
    """Push rows [start, end) of ``vectors`` whose ``skip`` byte is 0 into the heap (hd, hi)."""
    worst = hd[0]
    j = start
    # four rows per step: q is loaded once for four sequential streams; the rows are contiguous, so the hardware
    # prefetcher keeps up without hints
    while j + 4 <= end:
        d0, d1, d2, d3 = distance4(metric, q, vectors[j], vectors[j + 1], vectors[j + 2], vectors[j + 3])
        if d0 < worst and skip[j] == 0:
            heap_replace_top(hd, hi, d0, j)
            worst = hd[0]
        if d1 < worst and skip[j + 1] == 0:
            heap_replace_top(hd, hi, d1, j + 1)
            worst = hd[0]
        if d2 < worst and skip[j + 2] == 0:
            heap_replace_top(hd, hi, d2, j + 2)
            worst = hd[0]
        if d3 < worst and skip[j + 3] == 0:
            heap_replace_top(hd, hi, d3, j + 3)
            worst = hd[0]
        j += 4
    while j < end:
        d = distance(metric, q, vectors[j])
        if d < worst and skip[j] == 0:
            heap_replace_top(hd, hi, d, j)
            worst = hd[0]
        j += 1


@kernel(parallel=True)
def ranges_topk(metric, queries, vectors, skip, ptr, starts, ends, heap_d, heap_i):
    """Exact search of row ranges: query qi scans ranges ``starts[p]:ends[p]`` for p in ``ptr[qi]:ptr[qi+1]``.

    queries (nq, dim) float32; vectors (n, dim) float32; skip (n,) uint8 (1 = deleted or filtered out);
    ptr (nq + 1,) int64; starts, ends int64; heap_d / heap_i (nq, k) max-heaps updated in place (slots).
    """
    for qi in prange(queries.shape[0]):
        for p in range(ptr[qi], ptr[qi + 1]):
            _scan(metric, queries[qi], vectors, skip, starts[p], ends[p], heap_d[qi], heap_i[qi])


@kernel(parallel=True)
def buffer_topk(metric, queries, vectors, attrs, skip, start, end, lo, hi, heap_d, heap_i):
    """Exact search of the unsorted append buffer, rows [start, end): a row counts for query qi when
    ``lo[qi] <= attrs[row] <= hi[qi]`` and its ``skip`` byte is 0. Heaps as in :func:`ranges_topk`."""
    for qi in prange(queries.shape[0]):
        q = queries[qi]
        hd = heap_d[qi]
        hid = heap_i[qi]
        a, b = lo[qi], hi[qi]
        for j in range(start, end):
            if skip[j] != 0 or attrs[j] < a or attrs[j] > b:
                continue
            d = distance(metric, q, vectors[j])
            if d < hd[0]:
                heap_replace_top(hd, hid, d, j)


@kernel
def merge_candidates(rows, cand_d, cand_s, heap_d, heap_i):
    """Push candidate row r of (cand_d, cand_s) (internal distances, slots; slot -1 = none) into the heap of
    query ``rows[r]``."""
    for r in range(rows.shape[0]):
        hd = heap_d[rows[r]]
        hid = heap_i[rows[r]]
        for c in range(cand_d.shape[1]):
            s = cand_s[r, c]
            if s >= 0 and cand_d[r, c] < hd[0]:
                heap_replace_top(hd, hid, cand_d[r, c], s)


def new_heaps(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), np.inf, np.float32), np.full((nq, k), -1, np.int64)


# a plan piece: (kind, level, node, a, b); kind 0 = exact scan of rows [a, b), 1 = search of node (level, node)
# restricted to rows [a, b) (level and node are -1 for exact scans)
PIECE_EXACT = 0
PIECE_GRAPH = 1


@kernel
def _write_piece(out, n, kind, level, j, a, b):
    if kind == PIECE_EXACT:
        level, j = -1, -1
    out[n, 0], out[n, 1], out[n, 2], out[n, 3], out[n, 4] = kind, level, j, a, b


@kernel
def _open_node(bounds, level_start, indexed, node_start, depth, branching, exact_unit, graph_unit, call, flat, level,
               j, a, b, n, out, frames, frame_costs, top):
    """Price rows [a, b) of node (level, j) without its children. When splitting cannot help, write the cheaper
    of an exact scan and a node search at row n of ``out`` and return (True, cost, n + 1); otherwise set up stack
    frame ``top`` to try the children and return (False, 0, 0)."""
    cost = exact_unit * (b - a)
    kind = PIECE_EXACT
    may_split = False
    if cost > call + graph_unit:
        may_split = level + 1 < depth
        ns = bounds[level_start[level] + j]
        ne = bounds[level_start[level] + j + 1]
        if indexed[node_start[level] + j]:
            size = ne - ns
            # exact base: the node's cost is a scan of its rows, filtered or not
            g = (exact_unit * size if flat else graph_unit * size / (b - a)) + call
            if g < cost:
                cost, kind = g, PIECE_GRAPH
            if b - a == size:  # a whole node: its children cannot beat one search of it
                may_split = False
    if not may_split:
        _write_piece(out, n, kind, level, j, a, b)
        return True, cost, n + 1
    n_children = level_start[level + 2] - level_start[level + 1] - 1
    frames[top, 0], frames[top, 1], frames[top, 2], frames[top, 3], frames[top, 4] = level, j, a, b, n
    frames[top, 5], frames[top, 6] = kind, j * branching
    frames[top, 7], frames[top, 8] = min((j + 1) * branching, n_children), n
    frame_costs[top, 0], frame_costs[top, 1] = cost, 0.0
    return False, 0.0, 0


@kernel
def _best_cover(bounds, level_start, indexed, node_start, depth, branching, exact_unit, graph_unit, call, flat, s, e,
                out, n, frames, frame_costs):
    """Cheapest cover of rows [s, e) from the root, written into ``out`` from row n; returns the rows used.

    Depth-first over the tree with an explicit stack (numba cannot cache recursive functions): a node's frame
    (level, j, a, b, first row, single-piece kind, next child, end child, next free row; costs: single piece,
    split so far) tries its children's covers, written from its first row on; when their running cost reaches
    the single piece's, or after the last child if it is not cheaper, the single piece overwrites them."""
    done, cost, m = _open_node(bounds, level_start, indexed, node_start, depth, branching, exact_unit, graph_unit,
                               call, flat, 0, 0, s, e, n, out, frames, frame_costs, 0)
    if done:
        return m
    top = 0
    have_child = False
    while True:
        if have_child:
            have_child = False
            frame_costs[top, 1] += cost
            frames[top, 8] = m
            if frame_costs[top, 1] < frame_costs[top, 0]:
                pass  # still cheaper: go on with the next child
            else:
                frames[top, 6] = frames[top, 7]  # the split lost: no more children
        level, a, b = frames[top, 0], frames[top, 2], frames[top, 3]
        child = -1
        ca = cb = 0
        while frames[top, 6] < frames[top, 7]:
            c = frames[top, 6]
            frames[top, 6] += 1
            ca = max(a, bounds[level_start[level + 1] + c])
            cb = min(b, bounds[level_start[level + 1] + c + 1])
            if ca < cb:
                child = c
                break
        if child >= 0:
            done, cost, m = _open_node(bounds, level_start, indexed, node_start, depth, branching, exact_unit,
                                       graph_unit, call, flat, level + 1, child, ca, cb, frames[top, 8], out, frames,
                                       frame_costs, top + 1)
            if done:
                have_child = True
            else:
                top += 1
            continue
        # children done (or abandoned): keep the split if it is cheaper, else the single piece
        if frame_costs[top, 1] < frame_costs[top, 0]:
            cost, m = frame_costs[top, 1], frames[top, 8]
        else:
            _write_piece(out, frames[top, 4], frames[top, 5], level, frames[top, 1], a, b)
            cost, m = frame_costs[top, 0], frames[top, 4] + 1
        top -= 1
        if top < 0:
            return m
        have_child = True


@kernel
def plan_batch(bounds, level_start, indexed, node_start, branching, exact_unit, graph_unit, call, flat, starts,
               ends, ptr, out):
    """Plans of every query's rows [starts[q], ends[q]) (empty when ends <= starts): query q's pieces end up in
    ``out[ptr[q]:ptr[q + 1]]`` (``out`` (capacity, 5) int64, at least ``len(starts) * 4 * branching * depth`` rows;
    ``ptr`` (nq + 1,) written here). Returns the number of rows used."""
    depth = level_start.shape[0] - 1
    n = 0
    ptr[0] = 0
    # a cover has at most 2 * branching pieces per level; the split being tried may hold as many again
    per_query = 4 * branching * max(depth, 1)
    frames = np.empty((depth + 1, 9), np.int64)
    frame_costs = np.empty((depth + 1, 2), np.float64)
    for q in range(starts.shape[0]):
        if n + per_query > out.shape[0]:
            raise ValueError("plan_batch: out has too few rows")
        if ends[q] > starts[q]:
            if depth == 0:
                out[n, 0], out[n, 1], out[n, 2], out[n, 3], out[n, 4] = PIECE_EXACT, -1, -1, starts[q], ends[q]
                n += 1
            else:
                n = _best_cover(bounds, level_start, indexed, node_start, depth, branching, exact_unit, graph_unit,
                                call, flat, starts[q], ends[q], out, n, frames, frame_costs)
        ptr[q + 1] = n
    return n
