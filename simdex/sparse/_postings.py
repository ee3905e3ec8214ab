"""The postings codec: blocks of up to 128 postings, doc-id gaps and integer weights bit-packed into uint32 words.

One segment's postings for all terms live in flat arrays (no Python objects), in term order, each term's postings
in doc order and cut into blocks of ``BLOCK`` postings:

- ``block_ptr`` (n_terms + 1,) int64: term ``t`` owns blocks ``block_ptr[t]:block_ptr[t+1]``;
- ``block_first``, ``block_last`` (n_blocks,) int32: first and last doc of the block (skipping needs no decoding);
- ``block_count`` (n_blocks,) int32: postings in the block (1..BLOCK);
- ``block_dbits``, ``block_wbits`` (n_blocks,) uint8: bits per doc gap and per integer weight (0..32);
- ``block_offset`` (n_blocks,) int64: first uint32 word of the block in ``words``;
- ``words`` (n_words + 2,) uint32: per block, ``count`` doc gaps of ``dbits`` bits (gap 0 for the first posting,
  ``doc[i] - doc[i-1] - 1`` after it), then ``count`` integer weights of ``wbits`` bits (BM25: term frequency - 1;
  learned sparse: none, the float32 weights are in ``weights``); two zero words of padding let the decoder read
  64 bits at any position.

Decoding reads a 64-bit window at the bit position and masks, so a value may straddle two words.
"""

from __future__ import annotations

import numpy as np

from .._numba import kernel

BLOCK = 128


@kernel
def _bits_needed(x: np.uint64) -> int:
    n = 0
    while x:
        n += 1
        x >>= np.uint64(1)
    return n


@kernel
def plan_blocks(term_ptr, docs, values, has_values, block_ptr, block_first, block_last, block_count, block_dbits,
                block_wbits, block_offset):
    """First pass: split each term's postings into blocks and size them. Returns the number of words used.

    ``term_ptr`` (n_terms+1,) int64 into ``docs`` (int32, sorted within each term) and ``values`` (uint32).
    ``block_ptr`` must already hold each term's first block index (cumulative ceil(len/BLOCK)).
    """
    n_terms = term_ptr.shape[0] - 1
    words = 0
    for t in range(n_terms):
        start = term_ptr[t]
        end = term_ptr[t + 1]
        b = block_ptr[t]
        for s in range(start, end, BLOCK):
            e = min(s + BLOCK, end)
            maxgap = np.uint64(0)
            for i in range(s + 1, e):
                g = np.uint64(docs[i] - docs[i - 1] - 1)
                if g > maxgap:
                    maxgap = g
            maxv = np.uint64(0)
            if has_values:
                for i in range(s, e):
                    v = np.uint64(values[i])
                    if v > maxv:
                        maxv = v
            db = _bits_needed(maxgap)
            wb = _bits_needed(maxv)
            cnt = e - s
            block_first[b] = docs[s]
            block_last[b] = docs[e - 1]
            block_count[b] = cnt
            block_dbits[b] = db
            block_wbits[b] = wb
            block_offset[b] = words
            words += (cnt * db + 31) // 32 + (cnt * wb + 31) // 32
            b += 1
    return words


@kernel
def _put(words, bitpos: int, value: np.uint64, nbits: int) -> None:
    if nbits == 0:
        return
    w = bitpos >> 5
    off = bitpos & 31
    v = value << np.uint64(off)
    words[w] |= np.uint32(v & np.uint64(0xFFFFFFFF))
    hi = v >> np.uint64(32)
    if off + nbits > 32:
        words[w + 1] |= np.uint32(hi)


@kernel
def pack_blocks(term_ptr, docs, values, has_values, block_ptr, block_dbits, block_wbits, block_offset, words):
    """Second pass: write the gaps and values of every block into ``words`` (zero-filled by the caller)."""
    n_terms = term_ptr.shape[0] - 1
    for t in range(n_terms):
        start = term_ptr[t]
        end = term_ptr[t + 1]
        b = block_ptr[t]
        for s in range(start, end, BLOCK):
            e = min(s + BLOCK, end)
            cnt = e - s
            db = np.int64(block_dbits[b])
            wb = np.int64(block_wbits[b])
            pos = block_offset[b] * 32
            for i in range(s + 1, e):
                _put(words, pos + (i - s) * db, np.uint64(docs[i] - docs[i - 1] - 1), db)
            pos = (block_offset[b] + (cnt * db + 31) // 32) * 32
            if has_values:
                for i in range(s, e):
                    _put(words, pos + (i - s) * wb, np.uint64(values[i]), wb)
            b += 1


@kernel(inline="always")
def _get(words, bitpos: int, nbits: int) -> np.uint64:
    w = bitpos >> 5
    window = (np.uint64(words[w + 1]) << np.uint64(32)) | np.uint64(words[w])
    return (window >> np.uint64(bitpos & 31)) & ((np.uint64(1) << np.uint64(nbits)) - np.uint64(1))


@kernel(inline="always")
def decode_block(b, block_first, block_count, block_dbits, block_wbits, block_offset, words, out_docs, out_vals):
    """Decode block ``b`` into ``out_docs[:count]`` (int32) and ``out_vals[:count]`` (float32; the stored integer
    + 1, i.e. the term frequency; 1.0 when the block stores no values). Returns count."""
    cnt = np.int64(block_count[b])
    db = np.int64(block_dbits[b])
    wb = np.int64(block_wbits[b])
    pos = block_offset[b] * 32
    d = np.int64(block_first[b])
    out_docs[0] = d
    if db == 0:
        for i in range(1, cnt):
            d += 1
            out_docs[i] = d
    else:
        for i in range(1, cnt):
            d += np.int64(_get(words, pos + i * db, db)) + 1
            out_docs[i] = d
    pos = (block_offset[b] + (cnt * db + 31) // 32) * 32
    if wb == 0:
        for i in range(cnt):
            out_vals[i] = 1.0
    else:
        for i in range(cnt):
            out_vals[i] = np.float32(_get(words, pos + i * wb, wb)) + np.float32(1.0)
    return cnt


@kernel
def decode_all(block_ptr, block_first, block_count, block_dbits, block_wbits, block_offset, words, n_postings):
    """Every posting of a segment as flat (term, doc, tf) arrays, term-major (for merging and tests)."""
    terms = np.empty(n_postings, np.int64)
    docs = np.empty(n_postings, np.int32)
    vals = np.empty(n_postings, np.float32)
    bd = np.empty(BLOCK, np.int32)
    bv = np.empty(BLOCK, np.float32)
    p = 0
    for t in range(block_ptr.shape[0] - 1):
        for b in range(block_ptr[t], block_ptr[t + 1]):
            cnt = decode_block(b, block_first, block_count, block_dbits, block_wbits, block_offset, words, bd, bv)
            for i in range(cnt):
                terms[p] = t
                docs[p] = bd[i]
                vals[p] = bv[i]
                p += 1
    return terms, docs, vals


def encode(term_ptr: np.ndarray, docs: np.ndarray, values: np.ndarray | None) -> dict[str, np.ndarray]:
    """Compress postings: ``term_ptr`` (n_terms+1,) int64 offsets into ``docs`` (int32, strictly increasing within
    a term) and ``values`` (uint32 integer weights >= 1, e.g. term frequencies; None for no integer weights).
    Returns the block arrays described in the module docstring."""
    term_ptr = np.ascontiguousarray(term_ptr, np.int64)
    docs = np.ascontiguousarray(docs, np.int32)
    has_values = values is not None
    vals = np.ascontiguousarray(values, np.uint32) - np.uint32(1) if has_values else np.zeros(0, np.uint32)
    lengths = np.diff(term_ptr)
    block_ptr = np.zeros(term_ptr.shape[0], np.int64)
    block_ptr[1:] = np.cumsum((lengths + BLOCK - 1) // BLOCK)
    nb = int(block_ptr[-1])
    block_first = np.empty(nb, np.int32)
    block_last = np.empty(nb, np.int32)
    block_count = np.empty(nb, np.int32)
    block_dbits = np.empty(nb, np.uint8)
    block_wbits = np.empty(nb, np.uint8)
    block_offset = np.empty(nb, np.int64)
    n_words = plan_blocks(term_ptr, docs, vals, has_values, block_ptr, block_first, block_last, block_count,
                          block_dbits, block_wbits, block_offset)
    words = np.zeros(n_words + 2, np.uint32)
    pack_blocks(term_ptr, docs, vals, has_values, block_ptr, block_dbits, block_wbits, block_offset, words)
    return {"block_ptr": block_ptr, "block_first": block_first, "block_last": block_last,
            "block_count": block_count, "block_dbits": block_dbits, "block_wbits": block_wbits,
            "block_offset": block_offset, "words": words}


def decode(blocks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`encode`: flat (term int64, doc int32, value float32) arrays, term-major."""
    n = int(np.asarray(blocks["block_count"], np.int64).sum())
    return decode_all(blocks["block_ptr"], blocks["block_first"], blocks["block_count"], blocks["block_dbits"],
                      blocks["block_wbits"], blocks["block_offset"], blocks["words"], n)
