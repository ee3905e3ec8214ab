"""Query processing kernels over one segment's compressed postings (see :mod:`._postings` for the layout).

Scores are sums of per-term contributions ``w_q * f(posting)``, where ``w_q`` is the query term's weight and
``f`` is either BM25's saturation ``tf / (tf + norm[doc])`` (``norm[doc] = k1 * (1 - b + b * len / avglen)``,
precomputed per segment) or the stored float weight (learned sparse vectors). All three strategies return the same
top k, ordered by score descending and then doc slot ascending, so that ties break the same way everywhere:

- ``taat``: term-at-a-time accumulation into a dense score array; exhaustive. Best for 1-2 term queries.
- ``bmw``: block-max WAND (Ding & Suel, SIGIR 2011), document-at-a-time with per-list and per-block upper bounds.
- ``bmp``: Block-Max Pruning (Mallia, Suel & Tonellotto, SIGIR 2024): documents are cut into ranges of
  ``2**range_shift`` docs with a per-(term, range) upper bound; ranges are visited by decreasing query upper bound
  and the search stops when the next bound cannot beat the k-th score.

Approximation: with ``approx > 1`` a block, range or candidate is skipped when its upper bound is below
``approx * theta`` (theta = current k-th score) instead of below ``theta``. ``approx = 1`` is safe (exact).
Upper bounds are compared with a relative slack of ``_SLACK`` so that float rounding in a different summation
order can never prune a document that exhaustive search would return.

Heaps hold the k best (score, slot) pairs with the *worst* at the root, as parallel arrays.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._numba import kernel
from ._postings import BLOCK, decode_block

_SLACK = np.float32(1e-4)
_END = np.int64(1) << np.int64(62)


# ---- heap of the k best (score desc, slot asc); root = worst -----------------------------------------------------
@kernel(inline="always")
def _worse(s1, d1, s2, d2) -> bool:
    return s1 < s2 or (s1 == s2 and d1 > d2)


@kernel
def _sift_down(hs, hi, end, s, d) -> None:
    """Put (s, d) at the root of the heap hs[:end], hi[:end] and sift it down to its place."""
    pos = 0
    while True:
        c = 2 * pos + 1
        if c >= end:
            break
        if c + 1 < end and _worse(hs[c + 1], hi[c + 1], hs[c], hi[c]):
            c += 1
        if not _worse(hs[c], hi[c], s, d):
            break
        hs[pos] = hs[c]
        hi[pos] = hi[c]
        pos = c
    hs[pos] = s
    hi[pos] = d


@kernel
def heap_push(hs, hi, s, d) -> None:
    """Replace the root with (s, d) and sift down. Caller has checked that (s, d) beats the root."""
    _sift_down(hs, hi, hs.shape[0], s, d)


@kernel
def sort_heaps(hs, hi) -> None:
    """Order each row best first (heapsort of the worst-at-root heap)."""
    for r in range(hs.shape[0]):
        s_row = hs[r]
        i_row = hi[r]
        for end in range(s_row.shape[0] - 1, 0, -1):
            s, d = s_row[end], i_row[end]
            s_row[end], i_row[end] = s_row[0], i_row[0]
            _sift_down(s_row, i_row, end, s, d)


@kernel(inline="always")
def _offer(hs, hi, s, d) -> None:
    if _worse(hs[0], hi[0], s, d):
        heap_push(hs, hi, s, d)


# ---- per-posting contribution ----------------------------------------------------------------------------------
@kernel(inline="always")
def _load(b, bm25, block_first, block_count, block_dbits, block_wbits, block_offset, words, block_pstart, weights,
          out_docs, out_vals):
    cnt = decode_block(b, block_first, block_count, block_dbits, block_wbits, block_offset, words, out_docs,
                       out_vals)
    if not bm25:
        p = block_pstart[b]
        for i in range(cnt):
            out_vals[i] = weights[p + i]
    return cnt


@kernel(inline="always")
def _contrib(bm25, v, nd):
    """Query-weight-free contribution of one posting: BM25 saturation or the stored weight."""
    if bm25:
        return v / (v + nd)
    return v


# ---- per-segment caches (recomputed when collection statistics change) ---------------------------------------------
@kernel(parallel=True)
def decode_impacts(bm25, norm, block_first, block_count, block_dbits, block_wbits, block_offset, words,
                   block_pstart, weights):
    """Every posting decoded: doc (int32) and impact (float32: the query-weight-free contribution), flat, in
    posting order. This is the search-time cache that taat and bmp read; the compressed blocks stay the stored
    form (and bmw reads them directly)."""
    nb = block_first.shape[0]
    n = block_pstart[nb]
    pdocs = np.empty(n, np.int32)
    pimp = np.empty(n, np.float32)
    for b in prange(nb):
        p = block_pstart[b]
        cnt = _load(b, bm25, block_first, block_count, block_dbits, block_wbits, block_offset, words, block_pstart,
                    weights, pdocs[p:], pimp[p:])
        if bm25:
            for i in range(p, p + cnt):
                pimp[i] = _contrib(bm25, pimp[i], norm[pdocs[i]])
    return pdocs, pimp


@kernel
def block_upper_bounds(block_ptr, block_pstart, pimp):
    """Per block the largest impact, and per term the largest over its blocks."""
    n_terms = block_ptr.shape[0] - 1
    nb = block_pstart.shape[0] - 1
    ub = np.zeros(nb, np.float32)
    tmax = np.zeros(n_terms, np.float32)
    for t in range(n_terms):
        m_t = np.float32(0.0)
        for b in range(block_ptr[t], block_ptr[t + 1]):
            m = np.float32(0.0)
            for i in range(block_pstart[b], block_pstart[b + 1]):
                if pimp[i] > m:
                    m = pimp[i]
            ub[b] = m
            if m > m_t:
                m_t = m
        tmax[t] = m_t
    return ub, tmax


@kernel
def range_upper_bounds(range_shift, tstart, pdocs, pimp):
    """BMP's table: for each term, the doc ranges (``doc >> range_shift``) it occurs in, the largest impact there
    and the position of its first posting in the range (into ``pdocs``). CSR over terms: (rptr, rid, rmax, rpos)."""
    n_terms = tstart.shape[0] - 1
    rptr = np.zeros(n_terms + 1, np.int64)
    for t in range(n_terms):
        n = 0
        last = -1
        for p in range(tstart[t], tstart[t + 1]):
            r = pdocs[p] >> range_shift
            if r != last:
                n += 1
                last = r
        rptr[t + 1] = rptr[t] + n
    total = rptr[n_terms]
    rid = np.empty(total, np.int32)
    rmax = np.zeros(total, np.float32)
    rpos = np.empty(total, np.int64)
    for t in range(n_terms):
        e = rptr[t] - 1
        last = -1
        for p in range(tstart[t], tstart[t + 1]):
            r = pdocs[p] >> range_shift
            if r != last:
                e += 1
                rid[e] = r
                rpos[e] = p
                last = r
            if pimp[p] > rmax[e]:
                rmax[e] = pimp[p]
    return rptr, rid, rmax, rpos


# ---- term-at-a-time ---------------------------------------------------------------------------------------------
@kernel(parallel=True)
def search_taat(qptr, qterms, qw, live, base, tstart, pdocs, pimp, n_docs, heap_s, heap_i, nchunks):
    """Exhaustive top-k of every query against one segment; results are merged into ``heap_s``/``heap_i``.

    ``live`` (slots,) uint8: 1 where a slot may be returned; segment doc ``d`` is slot ``base + d``.
    """
    nq = qptr.shape[0] - 1
    n_terms = tstart.shape[0] - 1
    for c in prange(nchunks):
        acc = np.zeros(n_docs, np.float32)
        touched = np.empty(n_docs + 1, np.int32)  # one spare: the branch-free append below writes ahead
        for q in range(c, nq, nchunks):
            m = 0
            for j in range(qptr[q], qptr[q + 1]):
                t = qterms[j]
                if t >= n_terms:
                    continue
                w = qw[j]
                for p in range(tstart[t], tstart[t + 1]):
                    # whether a doc is new is unpredictable, so the append is branch-free: always write, advance
                    # only if new (about a quarter faster than a branch on gcide)
                    d = pdocs[p]
                    a = acc[d]
                    touched[m] = d
                    m += a == 0
                    acc[d] = a + w * pimp[p]
            hs = heap_s[q]
            hi = heap_i[q]
            for j in range(m):
                d = touched[j]
                s = acc[d]
                acc[d] = 0
                slot = base + d
                if s > 0 and live[slot]:
                    _offer(hs, hi, s, slot)


# ---- block-max WAND -------------------------------------------------------------------------------------------
@kernel(inline="always")
def _bmw_advance(i, target, cur, blk, bend, pos, bdocs, bvals, bm25, block_first, block_last, block_count,
                 block_dbits, block_wbits, block_offset, words, block_pstart, weights):
    """Move cursor ``i`` to its first doc >= target (decoding at most the one block that holds it)."""
    b = blk[i]
    if block_last[b] < target:
        b += 1
        # gallop, then binary search, over the block last-docs
        step = 1
        while b + step < bend[i] and block_last[b + step] < target:
            b += step
            step *= 2
        lo = b
        hi = min(b + step, bend[i])
        while lo < hi:
            mid = (lo + hi) >> 1
            if block_last[mid] < target:
                lo = mid + 1
            else:
                hi = mid
        b = lo
        if b >= bend[i]:
            cur[i] = _END
            blk[i] = bend[i] - 1
            return
        _load(b, bm25, block_first, block_count, block_dbits, block_wbits, block_offset, words, block_pstart,
              weights, bdocs[i], bvals[i])
        blk[i] = b
        pos[i] = 0
    p = pos[i]
    row = bdocs[i]
    while row[p] < target:
        p += 1
    pos[i] = p
    cur[i] = row[p]


@kernel(inline="always")
def _bmw_next(i, cur, blk, bend, pos, bdocs, bvals, bm25, block_first, block_count, block_dbits, block_wbits,
              block_offset, words, block_pstart, weights):
    p = pos[i] + 1
    b = blk[i]
    if p >= block_count[b]:
        b += 1
        if b >= bend[i]:
            cur[i] = _END
            return
        _load(b, bm25, block_first, block_count, block_dbits, block_wbits, block_offset, words, block_pstart,
              weights, bdocs[i], bvals[i])
        blk[i] = b
        p = 0
    pos[i] = p
    cur[i] = bdocs[i][p]


@kernel
def _bmw_query(terms, wq, approx, bm25, norm, live, base, block_ptr, block_first, block_last, block_count,
               block_dbits, block_wbits, block_offset, words, block_pstart, weights, block_ub, term_max, hs, hi,
               bdocs, bvals):
    nt = terms.shape[0]
    cur = np.empty(nt, np.int64)
    blk = np.empty(nt, np.int64)
    bend = np.empty(nt, np.int64)
    pos = np.zeros(nt, np.int64)
    shallow = np.empty(nt, np.int64)
    lmax = np.empty(nt, np.float32)
    order = np.arange(nt)
    for i in range(nt):
        t = terms[i]
        blk[i] = block_ptr[t]
        bend[i] = block_ptr[t + 1]
        lmax[i] = wq[i] * term_max[t]
        if blk[i] == bend[i]:
            cur[i] = _END
        else:
            _load(blk[i], bm25, block_first, block_count, block_dbits, block_wbits, block_offset, words,
                  block_pstart, weights, bdocs[i], bvals[i])
            cur[i] = bdocs[i][0]
    slack = np.float32(1.0) + _SLACK
    while True:
        # insertion sort by current doc: cursors move a little at a time, so the order is nearly sorted
        for a in range(1, nt):
            x = order[a]
            j = a - 1
            while j >= 0 and cur[order[j]] > cur[x]:
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = x
        theta = hs[0] * approx
        # pivot: the first cursor at which the list upper bounds can reach theta
        acc = np.float32(0.0)
        p = -1
        for j in range(nt):
            i = order[j]
            if cur[i] >= _END:
                break
            acc += lmax[i]
            if acc * slack >= theta:
                p = j
                break
        if p < 0:
            break
        pivot = cur[order[p]]
        while p + 1 < nt and cur[order[p + 1]] == pivot:
            p += 1
        # shallow move to the blocks holding the pivot; their bounds are tighter than the list bounds
        ub = np.float32(0.0)
        for j in range(p + 1):
            i = order[j]
            b = blk[i]
            while b < bend[i] and block_last[b] < pivot:
                b += 1
            shallow[i] = b
            if b < bend[i]:
                ub += wq[i] * block_ub[b]
        if ub * slack >= theta:
            if cur[order[0]] == pivot:
                slot = base + pivot
                if live[slot]:
                    s = np.float32(0.0)
                    for i in range(nt):  # query order, as in taat, so that the sums are identical
                        if cur[i] == pivot:
                            bv = bvals[i][pos[i]]
                            s += wq[i] * _contrib(bm25, bv, norm[pivot] if bm25 else np.float32(0.0))
                    if s > 0:
                        _offer(hs, hi, s, slot)
                for j in range(p + 1):
                    _bmw_next(order[j], cur, blk, bend, pos, bdocs, bvals, bm25, block_first, block_count,
                              block_dbits, block_wbits, block_offset, words, block_pstart, weights)
            else:
                for j in range(p + 1):
                    i = order[j]
                    if cur[i] < pivot:
                        _bmw_advance(i, pivot, cur, blk, bend, pos, bdocs, bvals, bm25, block_first, block_last,
                                     block_count, block_dbits, block_wbits, block_offset, words, block_pstart,
                                     weights)
        else:
            # nothing up to the end of the shortest current block can make it: jump past it
            nxt = _END
            for j in range(p + 1):
                i = order[j]
                b = shallow[i]
                if b < bend[i] and block_last[b] + 1 < nxt:
                    nxt = block_last[b] + 1
            if p + 1 < nt and cur[order[p + 1]] < nxt:
                nxt = cur[order[p + 1]]
            for j in range(p + 1):
                i = order[j]
                if nxt >= _END:
                    cur[i] = _END
                else:
                    _bmw_advance(i, nxt, cur, blk, bend, pos, bdocs, bvals, bm25, block_first, block_last,
                                 block_count, block_dbits, block_wbits, block_offset, words, block_pstart, weights)


@kernel(parallel=True)
def search_bmw(qptr, qterms, qw, approx, bm25, norm, live, base, block_ptr, block_first, block_last, block_count,
               block_dbits, block_wbits, block_offset, words, block_pstart, weights, block_ub, term_max, heap_s,
               heap_i, nchunks):
    """Block-max WAND top-k of every query against one segment, merged into the heaps."""
    nq = qptr.shape[0] - 1
    n_terms = block_ptr.shape[0] - 1
    max_nt = 1
    for q in range(nq):
        max_nt = max(max_nt, qptr[q + 1] - qptr[q])
    for c in prange(nchunks):
        bdocs = np.empty((max_nt, BLOCK), np.int32)
        bvals = np.empty((max_nt, BLOCK), np.float32)
        for q in range(c, nq, nchunks):
            n = 0
            for j in range(qptr[q], qptr[q + 1]):
                if qterms[j] < n_terms and block_ptr[qterms[j] + 1] > block_ptr[qterms[j]]:
                    n += 1
            if n == 0:
                continue
            terms = np.empty(n, np.int64)
            wq = np.empty(n, np.float32)
            n = 0
            for j in range(qptr[q], qptr[q + 1]):
                if qterms[j] < n_terms and block_ptr[qterms[j] + 1] > block_ptr[qterms[j]]:
                    terms[n] = qterms[j]
                    wq[n] = qw[j]
                    n += 1
            _bmw_query(terms, wq, approx, bm25, norm, live, base, block_ptr, block_first, block_last,
                       block_count, block_dbits, block_wbits, block_offset, words, block_pstart, weights, block_ub,
                       term_max, heap_s[q], heap_i[q], bdocs, bvals)


# ---- Block-Max Pruning ------------------------------------------------------------------------------------------
_BUCKETS = 256


@kernel(parallel=True)
def search_bmp(qptr, qterms, qw, approx, range_shift, live, base, tstart, pdocs, pimp, rptr, rid, rmax, rpos,
               n_docs, heap_s, heap_i, nchunks):
    """Block-Max Pruning top-k of every query against one segment, merged into the heaps.

    Per query: the upper bound of every doc range is the sum over query terms of weight x the term's largest
    impact in the range. Ranges are bucketed by bound (256 buckets; a counting sort instead of a full sort) and
    visited from the best bucket down; the search stops at the first bucket whose top edge cannot beat the k-th
    score (times ``approx``), and skips single ranges whose own bound cannot.
    """
    nq = qptr.shape[0] - 1
    n_terms = tstart.shape[0] - 1
    n_ranges = ((n_docs - 1) >> range_shift) + 1
    rsize = 1 << range_shift
    slack = np.float32(1.0) + _SLACK
    max_nt = 1
    for q in range(nq):
        max_nt = max(max_nt, qptr[q + 1] - qptr[q])
    for c in prange(nchunks):
        ub = np.zeros(n_ranges, np.float32)
        touched = np.empty(n_ranges, np.int64)
        order = np.empty(n_ranges, np.int64)
        bucket_of = np.empty(n_ranges, np.int32)
        count = np.zeros(_BUCKETS + 1, np.int64)
        # entry[j * n_ranges + r]: the range-table entry of the query's j-th term for range r; stale values from
        # earlier queries are recognised because they fall outside the term's entries or name another range
        entry = np.full(max_nt * n_ranges, -1, np.int64)
        acc = np.zeros(rsize, np.float32)
        for q in range(c, nq, nchunks):
            hs = heap_s[q]
            hi = heap_i[q]
            q0 = qptr[q]
            nt = qptr[q + 1] - q0
            m = 0
            top = np.float32(0.0)
            for j in range(nt):
                t = qterms[q0 + j]
                if t >= n_terms:
                    continue
                w = qw[q0 + j]
                row = j * n_ranges
                for e in range(rptr[t], rptr[t + 1]):
                    r = rid[e]
                    if ub[r] == 0:
                        touched[m] = r
                        m += 1
                    ub[r] += w * rmax[e]
                    entry[row + r] = e
            if m == 0:
                continue
            for x in range(m):
                if ub[touched[x]] > top:
                    top = ub[touched[x]]
            # counting sort of the touched ranges into buckets by bound, best bucket first
            scale = np.float32(_BUCKETS) / top
            count[:] = 0
            for x in range(m):
                bk = _BUCKETS - 1 - min(np.int64(ub[touched[x]] * scale), _BUCKETS - 1)
                bucket_of[x] = bk
                count[bk + 1] += 1
            for bk in range(_BUCKETS):
                count[bk + 1] += count[bk]
            for x in range(m):
                bk = bucket_of[x]
                order[count[bk]] = touched[x]
                count[bk] += 1
            # count[bk] is now the end of bucket bk in order
            start = 0
            for bk in range(_BUCKETS):
                end = count[bk]
                edge = top * np.float32(_BUCKETS - bk) / np.float32(_BUCKETS)
                if edge * slack < hs[0] * approx:
                    break  # no range in this or any later bucket can make it
                for x in range(start, end):
                    r = order[x]
                    if ub[r] * slack < hs[0] * approx:
                        continue
                    lo_doc = r << range_shift
                    hi_doc = lo_doc + rsize
                    for j in range(nt):
                        t = qterms[q0 + j]
                        if t >= n_terms:
                            continue
                        e = entry[j * n_ranges + r]
                        if e < rptr[t] or e >= rptr[t + 1] or rid[e] != r:
                            continue
                        w = qw[q0 + j]
                        tend = tstart[t + 1]
                        p = rpos[e]
                        while p < tend:
                            d = pdocs[p]
                            if d >= hi_doc:
                                break
                            acc[d - lo_doc] += w * pimp[p]
                            p += 1
                    for y in range(rsize):
                        s = acc[y]
                        if s > 0:
                            acc[y] = 0
                            slot = base + lo_doc + y
                            if live[slot]:
                                _offer(hs, hi, s, slot)
                start = end
            for x in range(m):
                ub[touched[x]] = 0
