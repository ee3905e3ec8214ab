"""Shingling: text -> sets of 32/64-bit n-gram hashes, in CSR form, with no per-token Python work.

Texts are lower-cased with ``str.lower`` (one C call per document), joined with NUL separators and encoded once
as UTF-8; a parallel numba kernel then decodes code points, finds tokens, hashes them (FNV-1a over code points,
then a 64-bit finaliser), combines ``n`` consecutive token hashes into an n-gram hash, and sorts and de-duplicates
each document's hashes in place.

Normalisation rules (``unit="word"``): a token is a maximal run of letters/digits (any non-ASCII code point counts
as a letter; ASCII punctuation separates tokens) or, with ``punctuation=True``, a maximal run of non-space
characters. ``unit="char"``: runs of white space become one space, the ends are stripped, ASCII punctuation is
dropped unless ``punctuation=True``, and n-grams are over code points. A document with at least one token but
fewer than ``n`` gives one shingle of all its tokens (so short texts can still match); an empty one gives the empty
set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numba
import numpy as np

from .._numba import kernel
from .._validate import check_positive_int
from ..errors import InvalidInputError, InvalidTypeError
from ._hashing import FNV_OFFSET, FNV_PRIME, combine, derive_seed, mix64

# Characters handled per kernel call: bounds the scratch memory of shingle() to ~8 bytes per byte of a chunk
# rather than of the whole input.
_CHUNK_CODEPOINTS = 1 << 22
_ROLL_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication mod 2**64 is invertible


class HashedSets(NamedTuple):
    """A batch of sets in CSR form: set ``i`` is ``values[indptr[i]:indptr[i+1]]``, sorted ascending, unique.

    ``indptr``: int64 (n + 1,); ``values``: uint64 or uint32 (nnz,).
    """

    indptr: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.indptr.shape[0]) - 1

    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.indptr[i]:self.indptr[i + 1]]

    def take(self, rows: np.ndarray) -> HashedSets:
        """The sets at ``rows`` (int array), in that order."""
        rows = np.asarray(rows, np.int64)
        sizes = self.sizes()[rows]
        indptr = np.zeros(rows.shape[0] + 1, np.int64)
        np.cumsum(sizes, out=indptr[1:])
        values = np.empty(int(indptr[-1]), self.values.dtype)
        _gather_rows(self.indptr, self.values, rows, indptr, values)
        return HashedSets(indptr, values)


@kernel(parallel=True)
def _gather_rows(src_indptr, src_values, rows, dst_indptr, dst_values):
    for i in numba.prange(rows.shape[0]):
        s = src_indptr[rows[i]]
        d = dst_indptr[i]
        for j in range(dst_indptr[i + 1] - d):
            dst_values[d + j] = src_values[s + j]


@kernel(inline="always")
def _is_space(cp: np.uint32) -> bool:
    return cp <= 32 or cp == 0x85 or cp == 0xA0 or (0x2000 <= cp <= 0x200A) or cp == 0x2028 or cp == 0x2029 \
        or cp == 0x3000


@kernel(inline="always")
def _is_word(cp: np.uint32) -> bool:
    return (48 <= cp <= 57) or (97 <= cp <= 122) or (65 <= cp <= 90) or cp >= 128 and not _is_space(cp)


@kernel(inline="always")
def _decode(text, p, end):
    """The code point starting at byte ``p`` of UTF-8 ``text`` and the byte after it (invalid bytes: U+FFFD)."""
    b0 = np.uint32(text[p])
    if b0 < 0x80:
        return b0, p + 1
    if b0 >= 0xF0 and p + 3 < end:
        return ((b0 & 7) << 18) | ((np.uint32(text[p + 1]) & 63) << 12) | ((np.uint32(text[p + 2]) & 63) << 6) \
            | (np.uint32(text[p + 3]) & 63), p + 4
    if b0 >= 0xE0 and p + 2 < end:
        return ((b0 & 15) << 12) | ((np.uint32(text[p + 1]) & 63) << 6) | (np.uint32(text[p + 2]) & 63), p + 3
    if b0 >= 0xC0 and p + 1 < end:
        return ((b0 & 31) << 6) | (np.uint32(text[p + 1]) & 63), p + 2
    return np.uint32(0xFFFD), p + 1


@kernel
def _shingle_one(text, start, end, ngram, char_mode, keep_punct, seed, shift, out, base):
    """Write the sorted unique shingle hashes of UTF-8 ``text[start:end]`` to ``out[base:]``; return their count.

    ``out[base:base + (end - start)]`` is scratch: token hashes (or normalised code points) are written there and
    turned into n-gram hashes in place, since n-gram ``i`` only reads positions ``>= i``.
    """
    m = 0  # tokens (word mode) or normalised code points (char mode) written so far
    p = start
    if char_mode:
        pending_space = False
        while p < end:
            cp, p = _decode(text, p, end)
            if _is_space(cp):
                pending_space = m > 0
                continue
            if not keep_punct and not _is_word(cp):
                continue
            if pending_space:
                out[base + m] = 32
                m += 1
                pending_space = False
            out[base + m] = cp
            m += 1
    else:
        in_token = False
        h = FNV_OFFSET
        while p < end:
            cp, p = _decode(text, p, end)
            inside = (not _is_space(cp)) if keep_punct else _is_word(cp)
            if inside:
                if not in_token:
                    h = FNV_OFFSET
                    in_token = True
                h = (h ^ np.uint64(cp)) * FNV_PRIME
            elif in_token:
                out[base + m] = mix64(h)
                m += 1
                in_token = False
        if in_token:
            out[base + m] = mix64(h)
            m += 1
    if m == 0:
        return 0
    if m < ngram:
        h = seed
        for j in range(m):
            h = combine(h, out[base + j])
        out[base] = h >> shift
        return 1
    # Rolling polynomial hash of the n token hashes (mod 2**64), then one finaliser per shingle: O(1) per shingle.
    top = np.uint64(1)
    for j in range(ngram - 1):
        top *= _ROLL_BASE
    poly = np.uint64(0)
    for j in range(ngram):
        poly = poly * _ROLL_BASE + out[base + j]
    count = m - ngram + 1
    for i in range(count):
        leaving = out[base + i]
        out[base + i] = mix64(poly ^ seed) >> shift
        if i + ngram < m:
            poly = (poly - leaving * top) * _ROLL_BASE + out[base + i + ngram]
    seg = out[base:base + count]
    seg.sort()
    unique = 1
    for i in range(1, count):
        if seg[i] != seg[unique - 1]:
            seg[unique] = seg[i]
            unique += 1
    return unique


@kernel(parallel=True)
def _shingle_batch(text, offsets, ends, ngram, char_mode, keep_punct, seed, shift, scratch, counts):
    for d in numba.prange(offsets.shape[0] - 1):
        counts[d] = _shingle_one(text, offsets[d], ends[d], ngram, char_mode, keep_punct, seed, shift,
                                 scratch, offsets[d] - offsets[0])


@kernel(parallel=True)
def _compact(scratch, offsets, indptr, values):
    for d in numba.prange(offsets.shape[0] - 1):
        s = offsets[d] - offsets[0]
        o = indptr[d]
        for j in range(indptr[d + 1] - o):
            values[o + j] = scratch[s + j]


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise InvalidTypeError("texts must be a sequence of strings, not a single string (wrap it in a list)")
    try:
        items = list(texts)
    except TypeError:
        raise InvalidTypeError(f"texts must be a sequence of strings; got {type(texts).__name__}") from None
    if all(type(t) is str for t in items):
        return items
    for i, t in enumerate(items):
        if isinstance(t, bytes):
            items[i] = t.decode("utf-8", errors="replace")
        elif not isinstance(t, str):
            raise InvalidTypeError(f"texts[{i}] is a {type(t).__name__}, not a string")
    return items


class Shingler:
    """Turns texts into :class:`HashedSets` of n-gram hashes.

    ``ngram``: tokens (``unit="word"``) or code points (``unit="char"``) per shingle; ``bits``: 64 or 32 (the top
    bits of the 64-bit hash); ``seed``: changes every hash. Equal settings give equal hashes across runs and
    machines.
    """

    def __init__(self, ngram: int = 5, *, unit: str = "word", lowercase: bool = True, punctuation: bool = False,
                 bits: int = 64, seed: int = 0) -> None:
        self.ngram = check_positive_int(ngram, "ngram")
        if unit not in ("word", "char"):
            raise InvalidInputError(f"unit must be 'word' or 'char'; got {unit!r}")
        if bits not in (32, 64):
            raise InvalidInputError(f"bits must be 32 or 64; got {bits!r}")
        self.unit, self.lowercase, self.punctuation, self.bits = unit, bool(lowercase), bool(punctuation), bits
        self.seed = int(seed)
        self._seed64 = derive_seed(self.seed, 1)

    def __repr__(self) -> str:
        return (f"Shingler(ngram={self.ngram}, unit={self.unit!r}, lowercase={self.lowercase}, "
                f"punctuation={self.punctuation}, bits={self.bits}, seed={self.seed})")

    def __call__(self, texts: Sequence[str]) -> HashedSets:
        items = _check_texts(texts)
        dtype = np.uint64 if self.bits == 64 else np.uint32
        parts_indptr, parts_values = [np.zeros(1, np.int64)], []
        lengths = np.fromiter(map(len, items), np.int64, len(items))
        ends = np.cumsum(lengths)
        start, nnz = 0, 0
        while start < len(items):
            base = ends[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + _CHUNK_CODEPOINTS, side="right")))
            indptr, values = self._chunk(items[start:stop], dtype)
            parts_indptr.append(indptr[1:] + nnz)
            parts_values.append(values)
            nnz += values.shape[0]
            start = stop
        values = np.concatenate(parts_values) if parts_values else np.zeros(0, dtype)
        return HashedSets(np.concatenate(parts_indptr), values)

    def _chunk(self, items: list[str], dtype: type) -> tuple[np.ndarray, np.ndarray]:
        if self.lowercase:
            items = [t.lower() for t in items]
        joined = "\x00".join(items)
        raw = joined.encode("utf-8", errors="replace")
        if joined.count("\x00") == len(items) - 1:  # no NUL inside a text: the separators mark the boundaries
            buf = np.frombuffer(raw, np.uint8)
            offsets = np.empty(len(items) + 1, np.int64)
            offsets[0], offsets[-1] = -1, buf.shape[0]
            offsets[1:-1] = np.flatnonzero(buf == 0)
            offsets[:-1] += 1
            ends = offsets[1:] - np.r_[np.ones(len(items) - 1, np.int64), np.zeros(1, np.int64)][:len(items)]
        else:
            lengths = np.fromiter((len(t.encode("utf-8", errors="replace")) for t in items), np.int64, len(items))
            buf = np.frombuffer(raw, np.uint8)
            offsets = np.zeros(len(items) + 1, np.int64)
            np.cumsum(lengths + 1, out=offsets[1:])
            ends = offsets[1:] - 1
            offsets[-1] = buf.shape[0]
        scratch = np.empty(max(buf.shape[0], 1), np.uint64)
        counts = np.empty(len(items), np.int64)
        _shingle_batch(buf, offsets, ends, self.ngram, self.unit == "char", self.punctuation, self._seed64,
                       np.uint64(64 - self.bits), scratch, counts)
        indptr = np.zeros(len(items) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        values = np.empty(int(indptr[-1]), np.uint64)
        _compact(scratch, offsets, indptr, values)
        return indptr, values.astype(dtype, copy=False)


def shingle(texts: Sequence[str], ngram: int = 5, **options: Any) -> HashedSets:
    """Shingle ``texts`` with a :class:`Shingler` (``options``: unit, lowercase, punctuation, bits, seed)."""
    return Shingler(ngram, **options)(texts)


def as_hashed_sets(sets: Any, name: str = "sets") -> HashedSets:
    """Validate sets given as :class:`HashedSets`, a ``(indptr, values)`` pair or a list of integer arrays, and
    return them as HashedSets with uint64/uint32 values sorted and unique within each set."""
    from .._validate import check_csr_sets
    if isinstance(sets, tuple) and len(sets) == 2 and not np.isscalar(sets[0]):
        indptr, values = check_csr_sets(sets[0], sets[1], name)
    else:
        if isinstance(sets, (str, bytes)) or not hasattr(sets, "__len__"):
            raise InvalidTypeError(f"{name} must be HashedSets, (indptr, values) or a list of integer arrays")
        rows = []
        for i, s in enumerate(sets):
            a = np.asarray(s)
            if a.size == 0 and a.ndim == 1:
                a = a.astype(np.uint64)
            if a.dtype == object or a.dtype.kind not in "iu" or a.ndim != 1:
                raise InvalidTypeError(f"{name}[{i}] must be a 1-D array of non-negative integers; got dtype "
                                       f"{a.dtype}, shape {a.shape}")
            if a.dtype.kind == "i" and a.size and a.min() < 0:
                raise InvalidInputError(f"{name}[{i}] holds negative values; elements must be non-negative hashes")
            rows.append(a.astype(np.uint64))
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([r.shape[0] for r in rows], out=indptr[1:])
        values = np.concatenate(rows) if rows else np.zeros(0, np.uint64)
        indptr, values = check_csr_sets(indptr, values, name)
    values = values.copy()
    counts = np.empty(indptr.shape[0] - 1, np.int64)
    _sort_unique_rows(indptr, values, counts)
    new_indptr = np.zeros_like(indptr)
    np.cumsum(counts, out=new_indptr[1:])
    out = np.empty(int(new_indptr[-1]), values.dtype)
    _compact_rows(values, indptr, new_indptr, out)
    return HashedSets(new_indptr, out)


@kernel(parallel=True)
def _sort_unique_rows(indptr, values, counts):
    for d in numba.prange(indptr.shape[0] - 1):
        seg = values[indptr[d]:indptr[d + 1]]
        if seg.shape[0] == 0:
            counts[d] = 0
            continue
        seg.sort()
        unique = 1
        for i in range(1, seg.shape[0]):
            if seg[i] != seg[unique - 1]:
                seg[unique] = seg[i]
                unique += 1
        counts[d] = unique


@kernel(parallel=True)
def _compact_rows(values, indptr, new_indptr, out):
    for d in numba.prange(indptr.shape[0] - 1):
        s = indptr[d]
        o = new_indptr[d]
        for j in range(new_indptr[d + 1] - o):
            out[o + j] = values[s + j]
