"""``SparseIndex``: an inverted index over text (BM25) or sparse vectors (dot product), in segments.

Layout: a vocabulary (term -> term id), and a list of immutable **segments**, each holding the compressed postings
(:mod:`._postings`) of a contiguous run of *slots*; an :class:`~simdex.idmap.IdMap` maps slots to user ids, and a
removed document's slot holds -1 until a merge drops it. Every :meth:`SparseIndex.add` writes one new segment; when
there are more than ``max_segments``, the newest ones are merged (log-structured, so each posting is rewritten
O(log n) times). :meth:`SparseIndex.merge` forces a merge.

Scoring: ``"bm25"`` (Lucene's BM25, see :mod:`.bm25`; documents are texts or token lists) or ``"dot"`` (documents
are sparse vectors given as ``{term: weight}`` dicts or a CSR matrix, e.g. SPLADE output; queries are sparse vectors
too, or -- inference-free -- token lists weighted by the terms' BM25 idf).

Queries, batch-first: a list of texts, of token lists, of ``{term: weight}`` dicts, or a CSR matrix.
``search(queries, k) -> (scores float32 (nq, k), ids int64 (nq, k))``, best first; rows with fewer than k matching
documents end in score ``-inf`` and id ``-1``. A call that raises leaves the index unchanged.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._numba import num_threads
from .._validate import MAX_RESULTS, check_ids, check_positive_int, check_real, check_threads
from ..errors import InvalidInputError, InvalidTypeError
from ..idmap import IdMap
from ..index import BaseIndex
from . import _kernels as K
from . import _postings as P
from .analyzer import Analyzer, Vocabulary
from .bm25 import idf, length_norm

SCORINGS = ("bm25", "dot")
METHODS = ("auto", "taat", "bmw", "bmp")
_NO_SLOT = np.iinfo(np.int64).max
_SEGMENT_ARRAYS = ("block_ptr", "block_first", "block_last", "block_count", "block_dbits", "block_wbits",
                   "block_offset", "words", "weights", "doc_len")


@dataclass
class _Segment:
    """Immutable postings of ``n_docs`` consecutive slots starting at ``base``, plus caches of derived bounds."""

    n_docs: int
    arrays: dict[str, np.ndarray]
    base: int = 0
    cache_key: Any = None
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a = self.arrays
        counts = np.asarray(a["block_count"], np.int64)
        pstart = np.zeros(counts.shape[0] + 1, np.int64)
        np.cumsum(counts, out=pstart[1:])
        self.block_pstart = pstart
        self.n_postings = int(pstart[-1])
        self.df = (pstart[a["block_ptr"]][1:] - pstart[a["block_ptr"]][:-1]).astype(np.int64)

    @property
    def n_terms(self) -> int:
        return int(self.arrays["block_ptr"].shape[0] - 1)

    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.arrays.values()))

    @classmethod
    def build(cls, n_docs: int, doc: np.ndarray, term: np.ndarray, value: np.ndarray | None, n_terms: int,
              doc_len: np.ndarray | None) -> _Segment:
        """Postings from flat (doc, term[, value]) triples. BM25 (``value`` None): repeated (doc, term) pairs are
        counted as term frequency. Dot: values of repeated pairs are summed."""
        key = term.astype(np.int64) * max(n_docs, 1) + doc
        if value is None:
            ukey, tf = np.unique(key, return_counts=True)
            weights = np.zeros(0, np.float32)
            ints = tf.astype(np.uint32)
        else:
            order = np.argsort(key, kind="stable")
            skey = key[order]
            starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]]) if skey.size else np.zeros(0, np.int64)
            ukey = skey[starts]
            weights = np.add.reduceat(value[order].astype(np.float64), starts).astype(np.float32) \
                if skey.size else np.zeros(0, np.float32)
            ints = None
        uterm = ukey // max(n_docs, 1)
        udoc = (ukey - uterm * max(n_docs, 1)).astype(np.int32)
        term_ptr = np.zeros(n_terms + 1, np.int64)
        np.cumsum(np.bincount(uterm, minlength=n_terms), out=term_ptr[1:])
        arrays = P.encode(term_ptr, udoc, ints)
        arrays["weights"] = weights
        arrays["doc_len"] = np.zeros(0, np.int32) if doc_len is None else doc_len.astype(np.int32)
        return cls(n_docs, arrays)

    def postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All postings as flat (term, doc, value) arrays; value is tf (BM25) or the float weight (dot)."""
        terms, docs, vals = P.decode(self.arrays)
        if self.arrays["weights"].shape[0]:
            vals = np.asarray(self.arrays["weights"], np.float32)
        return terms, docs, vals


class SparseIndex(BaseIndex):
    """Inverted index with BM25 or dot-product scoring, compressed block postings and block-max pruning.

    Parameters: ``scoring`` ("bm25" or "dot"); ``k1``, ``b`` (BM25); ``analyzer`` (an :class:`Analyzer`, a dict of
    its parameters, ``"default"`` for ``Analyzer()`` in BM25 mode, or None: then texts cannot be given, only token
    lists); ``range_size`` (documents per Block-Max Pruning range, a power of two); ``max_segments`` (merge the
    newest segments when there are more).
    """

    kind = "SparseIndex"

    def __init__(self, scoring: str = "bm25", *, k1: float = 1.2, b: float = 0.75,
                 analyzer: Analyzer | dict | str | None = "default", range_size: int = 64,
                 max_segments: int = 8) -> None:
        if scoring not in SCORINGS:
            raise InvalidInputError(f"scoring must be one of {SCORINGS}; got {scoring!r}")
        k1, b = check_real(k1, "k1", 0.0), check_real(b, "b", 0.0, 1.0)
        range_size = check_positive_int(range_size, "range_size")
        if range_size & (range_size - 1):
            raise InvalidInputError(f"range_size must be a power of two; got {range_size}")
        self.scoring = scoring
        self.k1 = float(k1)
        self.b = float(b)
        if analyzer == "default":
            analyzer = Analyzer() if scoring == "bm25" else None
        elif isinstance(analyzer, dict):
            analyzer = Analyzer(**analyzer)
        elif analyzer is not None and not isinstance(analyzer, Analyzer):
            raise InvalidTypeError(f"analyzer must be an Analyzer, a dict of its parameters, 'default' or None; "
                                   f"got {type(analyzer).__name__}")
        self.analyzer: Analyzer | None = analyzer
        self.range_shift = int(range_size).bit_length() - 1
        self.max_segments = check_positive_int(max_segments, "max_segments")
        self.vocabulary = Vocabulary()
        self._segments: list[_Segment] = []
        self._idmap = IdMap()
        self._df = np.zeros(0, np.int64)
        self._n_stats = 0  # documents counted by the statistics (deleted ones too, until merged away)
        self._total_len = 0
        self._live: np.ndarray | None = None
        self._pending_terms: list[str] = []

    # ---- introspection -------------------------------------------------------------------------------------------
    @property
    def num_segments(self) -> int:
        return len(self._segments)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the postings of every segment, the document frequencies, the id map, and the
        vocabulary's terms (counted as their UTF-8 bytes plus 8 per term, not Python's object overhead)."""
        idm = self._idmap
        terms = sum(len(t.encode("utf-8")) + 8 for t in self.vocabulary.terms)
        return int(sum(s.nbytes() for s in self._segments) + self._df.nbytes + idm.nbytes + terms)

    def __repr__(self) -> str:
        return (f"SparseIndex(scoring={self.scoring!r}, ntotal={self.ntotal}, terms={len(self.vocabulary)}, "
                f"segments={self.num_segments})")

    def stats(self) -> dict[str, Any]:
        postings = sum(s.n_postings for s in self._segments)
        nbytes = sum(s.nbytes() for s in self._segments)
        return {"documents": self.ntotal, "slots": self._idmap.num_slots, "terms": len(self.vocabulary),
                "segments": [s.n_docs for s in self._segments], "postings": postings,
                "postings_bytes": nbytes, "bytes_per_posting": nbytes / max(postings, 1)}

    def idf(self, terms: list[str]) -> np.ndarray:
        """BM25 idf of ``terms`` in the current statistics (0 for unknown terms)."""
        ids = np.array([self.vocabulary.get(t) for t in terms], np.int64)
        out = idf(np.where(ids >= 0, self._df[np.maximum(ids, 0)] if self._df.size else 0, 0), self._n_stats)
        return np.where(ids >= 0, out, 0.0)

    # ---- input conversion ----------------------------------------------------------------------------------------
    def _token_lists(self, items: list[Any], what: str) -> list[list[str]]:
        """Texts or token lists -> token lists."""
        out: list[list[str]] = []
        texts = []
        for i, x in enumerate(items):
            if isinstance(x, str):
                texts.append(i)
                out.append([])
            elif isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x):
                out.append(list(x))
            else:
                hint = " (a dict is a sparse vector: this index takes a list of texts or token lists)" \
                    if isinstance(x, dict) else ""
                raise InvalidTypeError(f"{what}[{i}] must be a str (text) or a list of str (tokens); got "
                                       f"{type(x).__name__}{hint}")
        if texts:
            if self.analyzer is None:
                raise InvalidInputError(f"this index has no analyzer: give {what} as token lists")
            for i, terms in zip(texts, self.analyzer.analyze_batch([items[i] for i in texts])):
                out[i] = terms
        return out

    @staticmethod
    def _csr_parts(x: Any, what: str = "input") -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """A scipy.sparse matrix or an ``(indptr, indices, data)`` tuple of arrays -> checked CSR parts; None for
        anything else. Column ``j`` is term ``"j"``."""
        if hasattr(x, "tocsr") and hasattr(x, "shape"):
            csr = x.tocsr()
            parts = (csr.indptr, csr.indices, csr.data)
        elif isinstance(x, tuple) and len(x) == 3 and all(isinstance(p, np.ndarray) for p in x):
            parts = x
        else:
            return None
        indptr, indices, data = (np.asarray(p) for p in parts)
        if indptr.ndim != 1 or indices.ndim != 1 or data.ndim != 1:
            raise InvalidInputError(f"{what}: CSR indptr, indices and data must be 1-D")
        if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
            raise InvalidTypeError(f"{what}: CSR indptr and indices must be integer arrays; got {indptr.dtype} "
                                   f"and {indices.dtype}")
        if data.dtype.kind not in "iuf":
            raise InvalidTypeError(f"{what} must have a numeric dtype; got {data.dtype}")
        indptr = indptr.astype(np.int64)
        if indptr.shape[0] < 1 or indptr[0] != 0 or (np.diff(indptr) < 0).any() \
                or indptr[-1] != indices.shape[0] or indices.shape[0] != data.shape[0]:
            raise InvalidInputError(f"{what}: inconsistent CSR arrays (indptr must start at 0, not decrease and "
                                    f"end at len(indices) == len(data))")
        if indices.size and indices.min() < 0:
            raise InvalidInputError(f"{what} hold a negative term id ({int(indices.min())})")
        return indptr, indices.astype(np.int64), data

    def _sparse_rows(self, items: Any, what: str, *, grow: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dicts or a CSR matrix -> (indptr, term ids, float64 weights); terms are str (CSR column j is "j").

        Unknown terms get ids when ``grow``, else they are dropped. Weights must be finite and >= 0; zeros are
        dropped.
        """
        csr = self._csr_parts(items, what)
        if csr is not None:
            indptr, cols, data = csr
            if data.dtype.kind not in "iuf":
                raise InvalidTypeError(f"{what} must have a numeric dtype; got {data.dtype}")
            ucols, inverse = np.unique(cols, return_inverse=True)
            keys = [str(c) for c in ucols.tolist()]
            row_of = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
            values = data.astype(np.float64)
        else:
            if not isinstance(items, (list, tuple)):
                raise InvalidTypeError(f"{what} must be a list of dicts or a CSR matrix; got {type(items).__name__}")
            flat_keys: list[str] = []
            vals: list[float] = []
            lens = np.empty(len(items), np.int64)
            for i, d in enumerate(items):
                if not isinstance(d, dict):
                    raise InvalidTypeError(f"{what}[{i}] must be a dict {{term: weight}}; got {type(d).__name__}")
                for key, w in d.items():
                    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, numbers.Integral)):
                        raise InvalidTypeError(f"{what}[{i}] has a key of type {type(key).__name__}; terms are "
                                               f"str or int")
                    if not isinstance(key, str) and key < 0:
                        raise InvalidInputError(f"{what}[{i}] has a negative term id ({key})")
                    if isinstance(w, (bool, np.bool_)) or not isinstance(w, numbers.Real):
                        raise InvalidTypeError(f"{what}[{i}][{key!r}] must be a number; got {type(w).__name__}")
                    flat_keys.append(str(key))
                    vals.append(float(w))
                lens[i] = len(d)
            ukeys, inverse = np.unique(np.array(flat_keys, dtype=object), return_inverse=True) if flat_keys \
                else (np.zeros(0, object), np.zeros(0, np.int64))
            keys = list(ukeys)
            values = np.array(vals, np.float64)
            row_of = np.repeat(np.arange(len(items)), lens)
            indptr = np.zeros(len(items) + 1, np.int64)
            np.cumsum(lens, out=indptr[1:])
        if values.size:
            bad = ~np.isfinite(values)
            if bad.any():
                raise InvalidInputError(f"{what} hold NaN or infinite weights (row {int(row_of[bad][0])})")
            neg = values < 0
            if neg.any():
                raise InvalidInputError(f"{what} hold negative weights (row {int(row_of[neg][0])}); block-max "
                                        f"pruning needs weights >= 0")
            if values.max() > np.finfo(np.float32).max:
                raise InvalidInputError(f"{what} hold weights beyond float32's range")
        vocab = self.vocabulary
        if grow:
            new = [k for k in keys if k not in vocab]
            new_id = {k: len(vocab) + j for j, k in enumerate(new)}
            tid_of = np.array([vocab.get(k) if k in vocab else new_id[k] for k in keys], np.int64)
            self._pending_terms = new
        else:
            tid_of = np.array([vocab.get(k) for k in keys], np.int64)
        terms = tid_of[inverse] if len(keys) else np.zeros(0, np.int64)
        keep = (terms >= 0) & (values > 0)
        rows = row_of[keep]
        indptr = np.zeros(indptr.shape[0], np.int64)
        np.cumsum(np.bincount(rows, minlength=indptr.shape[0] - 1), out=indptr[1:])
        return indptr, terms[keep], values[keep]

    def _term_ids(self, token_lists: list[list[str]], *, grow: bool) -> tuple[np.ndarray, np.ndarray]:
        """Token lists -> (indptr, term ids). Unknown terms get new ids (``grow``, listed in ``_pending_terms``)
        or are dropped."""
        lens = np.fromiter(map(len, token_lists), np.int64, len(token_lists))
        flat = list(itertools.chain.from_iterable(token_lists))
        ids = self.vocabulary._ids
        if grow:
            new = [t for t in dict.fromkeys(flat) if t not in ids]
            lookup = dict(ids)
            lookup.update((t, len(ids) + j) for j, t in enumerate(new))
            self._pending_terms = new
            tids = np.fromiter(map(lookup.__getitem__, flat), np.int64, len(flat))
        else:
            tids = np.fromiter((ids.get(t, -1) for t in flat), np.int64, len(flat))
            keep = tids >= 0
            if not keep.all():
                lens = np.bincount(np.repeat(np.arange(len(token_lists)), lens)[keep], minlength=len(token_lists))
                tids = tids[keep]
        indptr = np.zeros(len(token_lists) + 1, np.int64)
        np.cumsum(lens, out=indptr[1:])
        return indptr, tids

    def _commit_terms(self) -> None:
        for t in self._pending_terms:
            self.vocabulary.add(t)
        self._pending_terms = []
        if self._df.shape[0] < len(self.vocabulary):
            self._df = np.concatenate([self._df, np.zeros(len(self.vocabulary) - self._df.shape[0], np.int64)])
        self.vocabulary.df = self._df

    # ---- writes --------------------------------------------------------------------------------------------------
    def add(self, documents: Any, ids: Any = None) -> np.ndarray:
        """Add documents; returns their int64 ids (default: the next free integers).

        BM25: a list of texts (analysed with the index's analyzer) or of token lists. Dot: a list of
        ``{term: weight}`` dicts or a CSR matrix (rows = documents), weights finite and >= 0.
        """
        self._pending_terms = []
        n = self._count(documents, "documents")
        if n == 0:
            raise InvalidInputError("documents is empty")
        new_ids = self._new_ids(n, ids)
        if self.scoring == "bm25":
            if self._csr_parts(documents) is not None or not isinstance(documents, (list, tuple)):
                raise InvalidTypeError("a bm25 index takes a list of texts or token lists")
            indptr, tids = self._term_ids(self._token_lists(list(documents), "documents"), grow=True)
            values = None
            doc_len = np.diff(indptr)
        else:
            indptr, tids, values = self._sparse_rows(documents, "documents", grow=True)
            doc_len = None
        doc = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        n_terms = len(self.vocabulary) + len(self._pending_terms)
        segment = _Segment.build(n, doc, tids, values, n_terms, doc_len)
        # nothing above changed the index; from here on nothing raises on bad input
        self._commit_terms()
        segment.base = self._idmap.num_slots
        self._idmap.append(new_ids)
        self._segments.append(segment)
        self._account(segment, +1)
        self._live = None
        if len(self._segments) > self.max_segments:
            self._merge_tail(self._tail_to_merge())
        return new_ids

    @staticmethod
    def _count(documents: Any, what: str) -> int:
        if hasattr(documents, "tocsr") and hasattr(documents, "shape"):
            return int(documents.shape[0])
        if isinstance(documents, tuple) and len(documents) == 3 and all(isinstance(p, np.ndarray)
                                                                         for p in documents):
            return max(int(np.asarray(documents[0]).shape[0]) - 1, 0)
        if isinstance(documents, (str, bytes, dict)) or not hasattr(documents, "__len__"):
            raise InvalidTypeError(f"{what} must be a list (batch-first); got {type(documents).__name__} -- "
                                   f"wrap a single item in a list")
        return len(documents)

    def _account(self, seg: _Segment, sign: int) -> None:
        self._df[:seg.n_terms] += sign * seg.df
        self._n_stats += sign * seg.n_docs
        if self.scoring == "bm25":
            self._total_len += sign * int(np.asarray(seg.arrays["doc_len"], np.int64).sum())
        self.vocabulary.df = self._df

    def remove(self, ids: Any) -> int:
        """Remove documents by id; unknown ids raise :class:`~simdex.errors.UnknownIdError` and nothing is removed.
        Returns the number removed. Statistics keep counting them until their segment is merged."""
        slots = self._idmap.slots_of(check_ids(ids))
        self._idmap.release(slots)
        self._live = None
        return int(slots.shape[0])

    def _tail_to_merge(self) -> int:
        """First segment of the newest run to merge: the run grows backwards while it is at least half as large
        as the segment before it, so merged segments grow geometrically."""
        segs = self._segments
        start = len(segs) - 2
        total = segs[-1].n_docs + segs[-2].n_docs
        while start > 0 and 2 * total >= segs[start - 1].n_docs:
            start -= 1
            total += segs[start].n_docs
        return start

    def merge(self, max_segments: int = 1) -> None:
        """Merge the newest segments until at most ``max_segments`` remain, dropping removed documents from the
        merged ones (statistics then forget them)."""
        max_segments = check_positive_int(max_segments, "max_segments")
        if len(self._segments) > max_segments:
            self._merge_tail(max_segments - 1)
        elif len(self._segments) == 1 and (self._idmap.slot_ids < 0).any() and max_segments == 1:
            self._merge_tail(0)

    def _merge_tail(self, start: int) -> None:
        segs = self._segments[start:]
        base = segs[0].base
        old_slots = self._idmap.slot_ids
        docs, terms, vals, lens, keep_ids = [], [], [], [], []
        offset = 0
        for s in segs:
            alive = old_slots[s.base:s.base + s.n_docs] >= 0
            remap = np.full(s.n_docs, -1, np.int64)
            remap[alive] = np.arange(offset, offset + int(alive.sum()))
            t, d, v = s.postings()
            keep = alive[d]
            terms.append(t[keep])
            docs.append(remap[d[keep]])
            vals.append(v[keep])
            if self.scoring == "bm25":
                lens.append(np.asarray(s.arrays["doc_len"])[alive])
            keep_ids.append(old_slots[s.base:s.base + s.n_docs][alive])
            offset += int(alive.sum())
        n = offset
        term = np.concatenate(terms)
        doc = np.concatenate(docs)
        val = np.concatenate(vals)
        if self.scoring == "bm25":
            # rebuild from (doc, term, tf) by repeating each pair tf times would be wasteful: encode directly
            merged = self._build_weighted(n, doc, term, val.astype(np.uint32), np.concatenate(lens))
        else:
            merged = _Segment.build(n, doc, term, val, len(self.vocabulary), None)
        for s in segs:
            self._account(s, -1)
        merged.base = base
        self._segments = self._segments[:start] + [merged]
        self._account(merged, +1)
        self._idmap = IdMap(np.concatenate([old_slots[:base], *keep_ids]))
        self._live = None

    def _build_weighted(self, n: int, doc: np.ndarray, term: np.ndarray, tf: np.ndarray,
                        doc_len: np.ndarray) -> _Segment:
        key = term * max(n, 1) + doc
        order = np.argsort(key, kind="stable")
        term_ptr = np.zeros(len(self.vocabulary) + 1, np.int64)
        np.cumsum(np.bincount(term, minlength=len(self.vocabulary)), out=term_ptr[1:])
        arrays = P.encode(term_ptr, doc[order].astype(np.int32), tf[order])
        arrays["weights"] = np.zeros(0, np.float32)
        arrays["doc_len"] = doc_len.astype(np.int32)
        return _Segment(n, arrays)

    # ---- search --------------------------------------------------------------------------------------------------
    def encode_queries(self, queries: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Queries -> CSR (indptr, term ids, float32 weights) as the kernels take them.

        Texts and token lists: each term weighs (count in the query) x idf. Dicts / CSR rows: the given weight
        (x idf under BM25, where a dict weight is a boost).
        """
        n = self._count(queries, "queries")
        if n == 0:
            raise InvalidInputError("queries is empty")
        if self._csr_parts(queries) is None and all(isinstance(q, dict) for q in queries):
            for i, q in enumerate(queries):
                if not q:
                    raise InvalidInputError(f"query {i} is empty")
            indptr, terms, w = self._sparse_rows(queries, "queries", grow=False)
            if self.scoring == "bm25":
                w = w * idf(self._df[terms], self._n_stats)
        elif self._csr_parts(queries) is not None:
            indptr, terms, w = self._sparse_rows(queries, "queries", grow=False)
        else:
            items = list(queries)
            for i, q in enumerate(items):
                # an empty string is a mistake; a token list may come out of an analyzer empty (a query of only
                # stop words), and like a text whose terms are all unknown it simply matches nothing
                if isinstance(q, str) and not q.strip():
                    raise InvalidInputError(f"query {i} is empty")
            indptr, terms = self._term_ids(self._token_lists(items, "queries"), grow=False)
            w = idf(self._df[terms], self._n_stats) if terms.size else np.zeros(0)
        # merge repeated terms of a query (weights add: a term said twice counts twice)
        row = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        key = row * max(len(self.vocabulary), 1) + terms
        ukey, inverse = np.unique(key, return_inverse=True)
        qw = np.bincount(inverse, weights=w, minlength=ukey.shape[0]).astype(np.float32)
        urow = ukey // max(len(self.vocabulary), 1)
        qterms = ukey - urow * max(len(self.vocabulary), 1)
        qptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(urow, minlength=n), out=qptr[1:])
        keep = qw > 0
        if not keep.all():
            qptr = np.zeros(n + 1, np.int64)
            np.cumsum(np.bincount(urow[keep], minlength=n), out=qptr[1:])
            qterms, qw = qterms[keep], qw[keep]
        return qptr, qterms.astype(np.int64), qw

    def _live_mask(self, filter: Any) -> np.ndarray:
        if filter is None:
            if self._live is None:
                self._live = (self._idmap.slot_ids >= 0).astype(np.uint8)
            return self._live
        return self._idmap.allowed_mask(filter)

    def _prepare(self, seg: _Segment, need_ranges: bool) -> dict[str, Any]:
        """The segment's search caches under the current statistics: BM25 length norms, the decoded postings with
        their impacts (taat, bmp), block and term upper bounds (bmw) and the range table (bmp)."""
        key = (self._n_stats, self._total_len) if self.scoring == "bm25" else 0
        if seg.cache_key != key:
            seg.cache = {}
            seg.cache_key = key
        c = seg.cache
        a = seg.arrays
        bm25 = self.scoring == "bm25"
        if "norm" not in c:
            c["norm"] = length_norm(a["doc_len"], self._total_len / max(self._n_stats, 1), self.k1, self.b) \
                if bm25 else np.zeros(0, np.float32)
        if "pimp" not in c:
            c["pdocs"], c["pimp"] = K.decode_impacts(
                bm25, c["norm"], a["block_first"], a["block_count"], a["block_dbits"], a["block_wbits"],
                a["block_offset"], a["words"], seg.block_pstart, a["weights"])
            c["tstart"] = np.ascontiguousarray(seg.block_pstart[np.asarray(a["block_ptr"])])
            c["block_ub"], c["term_max"] = K.block_upper_bounds(a["block_ptr"], seg.block_pstart, c["pimp"])
        if need_ranges and "rptr" not in c:
            c["rptr"], c["rid"], c["rmax"], c["rpos"] = K.range_upper_bounds(self.range_shift, c["tstart"],
                                                                              c["pdocs"], c["pimp"])
        return c

    def search(self, queries: Any, k: int = 10, *, method: str = "auto", approx: float = 1.0, filter: Any = None,
               threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents of each query: (scores float32 (nq, k), ids int64 (nq, k)), best first.

        ``method``: "taat" (exhaustive term-at-a-time), "bmw" (block-max WAND), "bmp" (Block-Max Pruning) or
        "auto" (taat for exact search, bmp when ``approx`` > 1: on gcide taat is the fastest exact method at every
        query cost, from 1.15x bmp on the cheapest queries to 6x on the dearest, see docs/benchmarks.md). All give
        the same results when ``approx`` is 1.
        ``approx`` >= 1 trades recall for speed in bmw/bmp: blocks whose upper bound is below ``approx`` times
        the current k-th score are skipped (1.0: exact). ``filter``: a boolean mask indexed by id or an array of
        allowed ids. Ties are broken by internal slot (older documents first).
        """
        k = check_positive_int(k, "k", maximum=MAX_RESULTS)
        if method not in METHODS:
            raise InvalidInputError(f"method must be one of {METHODS}; got {method!r}")
        if isinstance(approx, bool) or not isinstance(approx, numbers.Real) or not (1.0 <= float(approx) < 1e6):
            raise InvalidInputError(f"approx must be a number >= 1 (1 = exact); got {approx!r}")
        threads = check_threads(threads)
        qptr, qterms, qw = self.encode_queries(queries)
        nq = qptr.shape[0] - 1
        live = self._live_mask(filter)
        heap_s = np.full((nq, k), -np.inf, np.float32)
        heap_i = np.full((nq, k), _NO_SLOT, np.int64)
        if method == "auto":
            method = "taat" if float(approx) == 1.0 else "bmp"
        bm25 = self.scoring == "bm25"
        with num_threads(threads) as used:
            nchunks = max(1, min(nq, used * 4 if used > 1 else 1))
            for seg in self._segments:
                if seg.n_docs == 0 or seg.n_postings == 0:
                    continue
                self._run(method, seg, qptr, qterms, qw, float(approx), bm25, live, heap_s, heap_i, nchunks)
        K.sort_heaps(heap_s, heap_i)
        found = heap_i != _NO_SLOT
        ids = np.full(heap_i.shape, -1, np.int64)
        ids[found] = self._idmap.slot_ids[heap_i[found]]
        return heap_s, ids

    def _run(self, meth: str, seg: _Segment, qptr, qterms, qw, approx, bm25, live, hs, hi, nchunks) -> None:
        a = seg.arrays
        c = self._prepare(seg, meth == "bmp")
        if meth == "taat":
            K.search_taat(qptr, qterms, qw, live, seg.base, c["tstart"], c["pdocs"], c["pimp"], seg.n_docs, hs, hi,
                          nchunks)
        elif meth == "bmw":
            K.search_bmw(qptr, qterms, qw, np.float32(approx), bm25, c["norm"], live, seg.base, a["block_ptr"],
                         a["block_first"], a["block_last"], a["block_count"], a["block_dbits"], a["block_wbits"],
                         a["block_offset"], a["words"], seg.block_pstart, a["weights"], c["block_ub"],
                         c["term_max"], hs, hi, nchunks)
        else:
            K.search_bmp(qptr, qterms, qw, np.float32(approx), self.range_shift, live, seg.base, c["tstart"],
                         c["pdocs"], c["pimp"], c["rptr"], c["rid"], c["rmax"], c["rpos"], seg.n_docs, hs, hi,
                         nchunks)

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"scoring": self.scoring, "k1": self.k1, "b": self.b, "range_shift": self.range_shift,
                "max_segments": self.max_segments,
                "analyzer": self.analyzer.config() if self.analyzer is not None else None,
                "segments": [s.n_docs for s in self._segments]}
        arrays = {"slot_ids": self._idmap.slot_ids, **self.vocabulary.to_arrays()}
        for i, s in enumerate(self._segments):
            for name in _SEGMENT_ARRAYS:
                arrays[f"s{i}.{name}"] = s.arrays[name]
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> SparseIndex:
        """The index of a saved file; with ``load(mmap=True)`` the postings stay memory-mapped (read-only)."""
        index = cls(meta["scoring"], k1=meta["k1"], b=meta["b"], range_size=1 << int(meta["range_shift"]),
                    max_segments=meta["max_segments"], analyzer=meta["analyzer"])
        index.vocabulary = Vocabulary.from_arrays(arrays["vocab_bytes"], arrays["vocab_offsets"],
                                                  np.zeros(len(arrays["vocab_offsets"]) - 1, np.int64))
        index._df = np.zeros(len(index.vocabulary), np.int64)
        index._idmap = IdMap(np.array(arrays["slot_ids"], np.int64))
        base = 0
        for i, n_docs in enumerate(meta["segments"]):
            seg_arrays = {name: arrays[f"s{i}.{name}"] for name in _SEGMENT_ARRAYS}
            seg = _Segment(int(n_docs), seg_arrays, base=base)
            index._check_segment(seg)
            index._segments.append(seg)
            index._account(seg, +1)
            base += seg.n_docs
        if base != index._idmap.num_slots:
            raise ValueError("segments do not cover the slots")
        return index

    def _check_segment(self, seg: _Segment) -> None:
        """Bounds checks, so that a damaged file loaded with ``verify=False`` cannot make a kernel read outside
        its arrays."""
        a = seg.arrays
        ptr = np.asarray(a["block_ptr"], np.int64)
        nb = a["block_first"].shape[0]
        if ptr.ndim != 1 or ptr.shape[0] - 1 > len(self.vocabulary) or ptr[0] != 0 or ptr[-1] != nb \
                or (np.diff(ptr) < 0).any():
            raise ValueError("block_ptr is inconsistent")
        for name in ("block_last", "block_count", "block_dbits", "block_wbits", "block_offset"):
            if a[name].shape != (nb,):
                raise ValueError(f"{name} has the wrong shape")
        cnt = np.asarray(a["block_count"], np.int64)
        db = np.asarray(a["block_dbits"], np.int64)
        wb = np.asarray(a["block_wbits"], np.int64)
        if nb and ((cnt < 1).any() or (cnt > P.BLOCK).any() or (db > 32).any() or (wb > 32).any()
                   or (np.asarray(a["block_first"]) < 0).any() or (np.asarray(a["block_last"]) >= seg.n_docs).any()):
            raise ValueError("block headers out of range")
        end = np.asarray(a["block_offset"], np.int64) + (cnt * db + 31) // 32 + (cnt * wb + 31) // 32
        if nb and (end.max() > a["words"].shape[0] - 2 or np.asarray(a["block_offset"]).min() < 0):
            raise ValueError("blocks point outside the postings words")
        if self.scoring == "dot" and a["weights"].shape[0] != seg.n_postings:
            raise ValueError("weights do not match the postings")
        if self.scoring == "bm25" and a["doc_len"].shape[0] != seg.n_docs:
            raise ValueError("doc_len does not match the documents")
