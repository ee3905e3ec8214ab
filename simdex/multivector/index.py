"""Multi-vector (late-interaction) retrieval: documents and queries are *sets* of vectors (e.g. one per token),
scored by Chamfer similarity (ColBERT's MaxSim) ``score(Q, D) = sum_{q in Q} max_{d in D} <q, d>``.

Three ways to search, all ending in the exact Chamfer score of the documents they consider:

- ``method="muvera"``: every document has one fixed-dimensional encoding (:class:`MuveraEncoder`) in a
  single-vector index (:class:`~simdex.HNSWIndex` or :class:`~simdex.FlatIndex`, inner product); the query's
  encoding retrieves ``candidates`` documents, which are re-ranked by exact Chamfer.
- ``method="tokens"``: the PLAID/ColBERTv2-style single-vector heuristic. All document vectors live in one
  token-level HNSW; every query vector fetches its ``token_k`` nearest document vectors, the union of their
  documents is re-ranked by exact Chamfer. Needs ``token_index=True``.
- ``method="exact"``: brute-force Chamfer over every document.

Document vectors are stored flat (``rows[offsets[i]:offsets[i + 1]]`` is document slot i) as float16 (default),
float32, or int8/LVQ codes of :mod:`simdex.quant`. Index-time options reduce what is stored: ``keep_fraction``
(token pruning by an importance score) and ``max_vectors`` (constant space: k-means of a document's vectors).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .._numba import num_threads
from .._validate import (MAX_RESULTS, _as_numeric_array, check_k, check_positive_int, check_real, check_threads,
                         check_vectors)
from ..dense import FlatIndex, HNSWIndex
from ..errors import CorruptFileError, DimensionMismatchError, InvalidInputError
from ..index import Index, index_class, meta_int, sub_arrays
from ..quant.codec import Codec, make_codec
from ..quant.scalar import AffineCodec
from . import _kernels as K
from .muvera import MuveraEncoder

STORAGES = ("float16", "float32", "int8", "lvq8", "lvq4")
METHODS = ("muvera", "tokens", "exact")
_FLOAT16_MAX = 65504.0
_PAIR_BLOCK = 1 << 22  # (query, document) pairs scored per kernel call in exact search: bounds the score block
_CODEC_TRAIN_MAX = 100_000
# below this many multiply-adds a re-ranking runs on the calling thread: about 2 ms of work, less than what
# waking the thread pool costs when the cores are busy
_SERIAL_WORK = 5_000_000
_SERIAL_QUERIES = 16
_KMEANS_ITERS = 10


def _sub_threads(n_queries: int, threads: int | None) -> int | None:
    """Threads for an HNSW search of ``n_queries`` vectors: one for a handful, because waking the thread pool
    for a single graph search (well under a millisecond of work) costs up to tens of milliseconds when the
    cores are busy (measured: 0.6 ms on one thread vs 27 ms on all, with other jobs running)."""
    return 1 if n_queries <= _SERIAL_QUERIES else threads


# ---- input --------------------------------------------------------------------------------------------------------
def check_sets(sets: Any, dim: int, offsets: Any = None, name: str = "documents") -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch of vector sets; returns (rows (T, dim) float32, offsets (n + 1,) int64).

    ``sets`` is a sequence of (n_i, dim) arrays, a 3-D array (n, m, dim) of equal-size sets, or, with ``offsets``
    ((n + 1,) integers from 0 to T), a flat (T, dim) array holding set i in ``rows[offsets[i]:offsets[i + 1]]``.
    Empty sets, NaN/inf, the wrong dimension and ragged vectors raise :class:`InvalidInputError` (or a subclass).
    """
    if offsets is not None:
        rows = check_vectors(sets, dim, name)
        off = _as_numeric_array(offsets, f"{name} offsets")
        if off.ndim != 1 or off.shape[0] < 2 or off.dtype.kind not in "iu":
            raise InvalidInputError(f"{name} offsets must be a 1-D integer array of length n + 1 >= 2; got "
                                    f"{off.dtype} shape {off.shape}")
        off = off.astype(np.int64)
        if off[0] != 0 or off[-1] != rows.shape[0]:
            raise InvalidInputError(f"{name} offsets must start at 0 and end at the number of rows "
                                    f"({rows.shape[0]}); got {int(off[0])}..{int(off[-1])}")
        sizes = np.diff(off)
        if (sizes <= 0).any():
            raise InvalidInputError(f"{name}: set {int(np.flatnonzero(sizes <= 0)[0])} is empty (or offsets "
                                    f"decrease); every set needs at least one vector")
        return rows, off
    if isinstance(sets, np.ndarray) and sets.dtype != object:
        if sets.ndim != 3:
            raise InvalidInputError(f"{name} as one array must be 3-D (n, m, {dim}); got shape {sets.shape}. "
                                    f"Pass a list of (n_i, {dim}) arrays, or a flat array with offsets=")
        n, m = sets.shape[:2]
        if n == 0 or m == 0:
            raise InvalidInputError(f"{name} is empty (shape {sets.shape})")
        if sets.shape[2] != dim:
            raise DimensionMismatchError(f"{name} have dimension {sets.shape[2]}, but the index has dim={dim}")
        rows = check_vectors(sets.reshape(n * m, dim), dim, name)
        return rows, np.arange(0, n * m + 1, m, dtype=np.int64)
    if isinstance(sets, (str, bytes)) or not hasattr(sets, "__len__"):
        raise InvalidInputError(f"{name} must be a list of (n_i, {dim}) arrays; got {type(sets).__name__}")
    if len(sets) == 0:
        raise InvalidInputError(f"{name} is empty (no sets)")
    parts, sizes = [], []
    for i, s in enumerate(sets):
        arr = _as_numeric_array(s, f"{name}[{i}]")
        if arr.ndim != 2:
            raise InvalidInputError(f"{name}[{i}] must be a 2-D array (n_i, {dim}); got shape {arr.shape}")
        if arr.shape[1] != dim:
            raise DimensionMismatchError(f"{name}[{i}] has dimension {arr.shape[1]}, but the index has dim={dim}")
        if arr.shape[0] == 0:
            raise InvalidInputError(f"{name}[{i}] is empty; every set needs at least one vector")
        parts.append(arr)
        sizes.append(arr.shape[0])
    rows = check_vectors(np.concatenate(parts) if len(parts) > 1 else parts[0], dim, name)
    return rows, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def idf_weights(token_ids: Any, offsets: Any) -> np.ndarray:
    """Per-row weights ``log(n / df)`` for pruning by IDF: ``token_ids`` (T,) integers (e.g. wordpiece ids) of
    flat sets delimited by ``offsets`` (n + 1,); df counts the sets that contain the id."""
    ids = np.asarray(token_ids, np.int64)
    off = np.asarray(offsets, np.int64)
    n = off.shape[0] - 1
    doc = np.repeat(np.arange(n), np.diff(off))
    pairs = np.unique(np.stack([ids, doc], 1), axis=0)
    uniq, df = np.unique(pairs[:, 0], return_counts=True)
    return np.log(n / df[np.searchsorted(uniq, ids)]).astype(np.float32)


# ---- index-time reduction -----------------------------------------------------------------------------------------
def prune_sets(rows: np.ndarray, offsets: np.ndarray, weights: np.ndarray, keep_fraction: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``ceil(keep_fraction * n_i)`` highest-weight rows of every set (at least one), in their order."""
    sizes = np.diff(offsets)
    keep_n = np.maximum(1, np.ceil(sizes * keep_fraction).astype(np.int64))
    set_of = np.repeat(np.arange(sizes.shape[0]), sizes)
    # rank within each set by descending weight: sort by (set, -weight), then position in set = rank
    order = np.lexsort((-weights.astype(np.float64), set_of))
    rank = np.empty(rows.shape[0], np.int64)
    rank[order] = np.arange(rows.shape[0]) - offsets[set_of[order]]
    keep = rank < keep_n[set_of]
    return rows[keep], np.concatenate([[0], np.cumsum(keep_n)]).astype(np.int64)


def reduce_sets_kmeans(rows: np.ndarray, offsets: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace every set larger than ``m`` by the ``m`` centroids of a k-means (inner-product assignment, mean
    update, initialised with m evenly spaced rows, 10 iterations); smaller sets are kept as they are."""
    out_rows, sizes = [], []
    for i in range(offsets.shape[0] - 1):
        x = rows[offsets[i]:offsets[i + 1]]
        if x.shape[0] <= m:
            out_rows.append(x)
            sizes.append(x.shape[0])
            continue
        c = x[np.linspace(0, x.shape[0] - 1, m).astype(np.int64)].copy()
        for _ in range(_KMEANS_ITERS):
            label = np.argmax(x @ c.T, axis=1)
            counts = np.bincount(label, minlength=m)
            sums = np.zeros_like(c)
            np.add.at(sums, label, x)
            used = counts > 0
            c[used] = sums[used] / counts[used, None]
        out_rows.append(c)
        sizes.append(m)
    return np.concatenate(out_rows).astype(np.float32), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


class MultiVectorIndex(Index):
    """Late-interaction retrieval over sets of vectors (see the module docstring).

    Parameters
    ----------
    dim : int
        Dimension of every vector of every set.
    storage : {"float16", "float32", "int8", "lvq8", "lvq4"}, default "float16"
        How document vectors are kept: 2 bytes per value (exact scores up to float16 rounding, about 1e-3
        relative), 4 bytes, or ``dim + 12`` bytes per vector (int8 / LVQ-8) / ``dim / 2 + 12`` (LVQ-4), trained on
        the first ``add``. Codes make the exact Chamfer score approximate.
    encoder : MuveraEncoder or dict, optional
        The MUVERA fixed-dimensional encoding, or keyword arguments for one (default
        ``MuveraEncoder(dim, k_sim=3, d_proj=32, r_reps=16)``: 4,096 dimensions).
    fde_index : {"hnsw", "flat", "none"}, default "hnsw"
        Single-vector index of the document encodings (inner product). "none" disables ``method="muvera"``.
    token_index : bool, default False
        Keep a token-level HNSW of all document vectors for ``method="tokens"`` (costs a graph over every
        vector: build time and ``4 * dim + 8 * M0`` bytes per vector).
    M, ef_construction : int
        Parameters of the HNSW graphs (FDE and token).
    keep_fraction : float in (0, 1], default 1.0
        Token pruning at ``add``: keep the top ``ceil(keep_fraction * n_i)`` vectors of each document by
        importance, i.e. ``weights`` given to :meth:`add` (e.g. :func:`idf_weights`) or else the vector norm.
    max_vectors : int, optional
        Constant space: documents with more vectors are replaced by ``max_vectors`` k-means centroids.
    seed : int, default 0

    Ids are int64 as everywhere in simdex. ``search`` returns *scores* (higher is better, best first), unlike the
    distance-returning single-vector indexes.
    """

    kind = "MultiVectorIndex"

    def __init__(self, dim: int, *, storage: str = "float16", encoder: MuveraEncoder | dict | None = None,
                 fde_index: str = "hnsw", token_index: bool = False, M: int = 16, ef_construction: int = 100,
                 keep_fraction: float = 1.0, max_vectors: int | None = None, seed: int = 0) -> None:
        super().__init__(dim, "ip")
        if storage not in STORAGES:
            raise InvalidInputError(f"storage must be one of {STORAGES}; got {storage!r}")
        self.storage = storage
        if encoder is None:
            encoder = MuveraEncoder(self.dim, seed=seed)
        elif isinstance(encoder, dict):
            encoder = MuveraEncoder(self.dim, **{"seed": seed, **encoder})
        if not isinstance(encoder, MuveraEncoder) or encoder.dim != self.dim:
            raise InvalidInputError(f"encoder must be a MuveraEncoder of dim={self.dim} or a dict of its "
                                    f"parameters; got {encoder!r}")
        self.encoder = encoder
        if fde_index not in ("hnsw", "flat", "none"):
            raise InvalidInputError(f"fde_index must be 'hnsw', 'flat' or 'none'; got {fde_index!r}")
        self.fde_index_kind = fde_index
        self.M = check_positive_int(M, "M", minimum=2)
        self.ef_construction = check_positive_int(ef_construction, "ef_construction")
        self.keep_fraction = check_real(keep_fraction, "keep_fraction", 0.0, 1.0, low_open=True)
        self.max_vectors = None if max_vectors is None else check_positive_int(max_vectors, "max_vectors")
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.codec: Codec | None = None
        self._n = 0
        self._rows = self._empty_rows()
        self._offsets = np.zeros(1, np.int64)
        self._fde = self._new_fde_index()
        self._tokens: HNSWIndex | None = self._new_token_index() if token_index else None
        self._write_lock = threading.RLock()

    # ---- storage helpers -----------------------------------------------------------------------------------------
    def _empty_rows(self) -> np.ndarray:
        if self.storage == "float16":
            return np.empty((0, self.dim), np.uint16)
        if self.storage == "float32":
            return np.empty((0, self.dim), np.float32)
        return np.empty((0, 0), np.uint8)

    def _new_fde_index(self) -> Index | None:
        if self.fde_index_kind == "hnsw":
            return HNSWIndex(self.encoder.dim_fde, "ip", M=self.M, ef_construction=self.ef_construction,
                             seed=self.seed)
        if self.fde_index_kind == "flat":
            return FlatIndex(self.encoder.dim_fde, "ip")
        return None

    def _new_token_index(self) -> HNSWIndex:
        return HNSWIndex(self.dim, "ip", M=self.M, ef_construction=self.ef_construction, seed=self.seed)

    def _num_slots(self) -> int:
        return self._n

    @property
    def num_vectors(self) -> int:
        """Document vectors stored (live and removed)."""
        return int(self._offsets[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored document vectors and offsets (not counting the FDE and token indexes)."""
        return int(self._rows.nbytes + self._offsets.nbytes)

    def _encode_rows(self, x: np.ndarray) -> np.ndarray:
        if self.storage == "float16":
            return x.astype(np.float16).view(np.uint16)
        if self.storage == "float32":
            return x
        return self.codec.encode(x)

    def _decode_rows(self, stored: np.ndarray) -> np.ndarray:
        if self.storage == "float16":
            return stored.view(np.float16).astype(np.float32)
        if self.storage == "float32":
            return np.array(stored, np.float32)
        return self.codec.decode(stored)

    # ---- add -----------------------------------------------------------------------------------------------------
    def add(self, documents: Any, ids: Any = None, *, offsets: Any = None, weights: Any = None,
            threads: int | None = None) -> np.ndarray:
        """Add documents; returns their ids (int64).

        Parameters
        ----------
        documents : list of (n_i, dim) arrays, a 3-D array (n, m, dim), or a flat (T, dim) array with ``offsets``
        ids : (n,) int64-like, optional; default: the next free integers
        offsets : (n + 1,) integers, optional; see :func:`check_sets`
        weights : (T,) importance of each vector for ``keep_fraction`` pruning (default: the vector norm)
        threads : int, optional

        Everything is validated before anything changes: a call that raises leaves the index as it was.
        """
        rows, off = check_sets(documents, self.dim, offsets)
        new_ids = self._new_ids(off.shape[0] - 1, ids)
        n = new_ids.shape[0]
        if weights is not None:
            w = _as_numeric_array(weights, "weights")
            if w.shape != (rows.shape[0],) or not np.isfinite(w).all():
                raise InvalidInputError(f"weights must be {rows.shape[0]} finite numbers, one per vector; got "
                                        f"shape {w.shape}")
        else:
            w = None
        if self.storage == "float16" and np.abs(rows).max() > _FLOAT16_MAX:
            raise InvalidInputError(f"documents hold values beyond float16's range (+-{_FLOAT16_MAX:g}); use "
                                    f"storage='float32'")
        threads = check_threads(threads)
        if self.keep_fraction < 1.0:
            rows, off = prune_sets(rows, off, np.linalg.norm(rows, axis=1) if w is None else w, self.keep_fraction)
        if self.max_vectors is not None:
            rows, off = reduce_sets_kmeans(rows, off, self.max_vectors)
        with self._write_lock, num_threads(threads):
            codec = self.codec
            if self.storage in ("int8", "lvq8", "lvq4") and codec is None:
                codec = make_codec(self.storage, self.dim, "ip")
                step = max(1, rows.shape[0] // _CODEC_TRAIN_MAX)
                codec.train(rows[::step])
            stored = self._encode_rows(rows) if codec is None else codec.encode(rows)
            fde = self.encoder.encode_documents(rows, off) if self._fde is not None else None
            slots = np.arange(self._n, self._n + n, dtype=np.int64)
            token_rows = np.arange(self.num_vectors, self.num_vectors + rows.shape[0], dtype=np.int64)
            # the sub-indexes are the only steps that can fail late (e.g. memory); they go first and are undone
            if self._fde is not None:
                self._fde.add(fde, slots)
            if self._tokens is not None:
                try:
                    self._tokens.add(rows, token_rows, threads=threads)
                except BaseException:
                    if self._fde is not None:
                        self._fde.remove(slots)
                    raise
            self.codec = codec
            self._rows = stored if self._n == 0 else np.concatenate([self._rows, stored])
            self._offsets = np.concatenate([self._offsets, self._offsets[-1] + off[1:]])
            self._idmap.append(new_ids)
            self._n += n
        return new_ids

    # ---- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, offsets: Any = None, method: str = "muvera",
               candidates: int | None = None, ef: int | None = None, token_k: int = 32,
               threads: int | None = None, return_candidates: bool = False):
        """Top-k documents of each query set by Chamfer score.

        Parameters
        ----------
        queries : list of (m_i, dim) arrays, a 3-D array, or a flat (T, dim) array with ``offsets``
        k : int, 1 <= k <= ntotal
        method : {"muvera", "tokens", "exact"}
        candidates : int, optional (muvera)
            Documents retrieved by the FDE index and re-ranked exactly (default ``max(k, 100)``). More raises
            recall, costs one exact Chamfer score (``m_i * n_j * dim`` multiply-adds) each.
        ef : int, optional
            HNSW search pool (FDE index: default ``candidates``; token index: default ``max(token_k, 64)``).
        token_k : int, default 32 (tokens)
            Nearest document vectors fetched per query vector; the union of their documents is re-ranked.
        return_candidates : bool
            Also return the number of distinct documents re-ranked per query ((nq,) int64).

        Returns
        -------
        scores : float32 (nq, k), Chamfer scores, best (largest) first; ids : int64 (nq, k).
        Rows with fewer than k candidates end in (-inf, -1).
        """
        q, q_off = check_sets(queries, self.dim, offsets, "queries")
        if self.ntotal == 0:
            raise InvalidInputError("the index is empty; add documents before searching")
        k = check_k(k, self.ntotal)
        if method not in METHODS:
            raise InvalidInputError(f"method must be one of {METHODS}; got {method!r}")
        threads = check_threads(threads)
        # checked whatever the method, as every argument is
        ef = None if ef is None else check_positive_int(ef, "ef", maximum=MAX_RESULTS)
        token_k = check_positive_int(token_k, "token_k", maximum=MAX_RESULTS)
        nq = q_off.shape[0] - 1
        with num_threads(threads):
            if method == "exact":
                return self._search_exact(q, q_off, k, return_candidates)
            if method == "muvera":
                if self._fde is None:
                    raise InvalidInputError("this index has no FDE index (fde_index='none'); use method='exact'")
                n_cand = max(k, 100) if candidates is None else check_positive_int(candidates, "candidates",
                                                                                    maximum=MAX_RESULTS)
                n_cand = min(n_cand, self._fde.ntotal)
                fde = self.encoder.encode_queries(q, q_off)
                if isinstance(self._fde, HNSWIndex):
                    ef_ = n_cand if ef is None else max(n_cand, ef)
                    _, slots = self._fde.search(fde, n_cand, ef=ef_, threads=_sub_threads(nq, threads))
                else:
                    _, slots = self._fde.search(fde, n_cand)
                ptr = np.arange(0, nq * n_cand + 1, n_cand, dtype=np.int64)
                cand = slots.reshape(-1)
                valid = cand >= 0
                if not valid.all():
                    counts = np.add.reduceat(valid.astype(np.int64), ptr[:-1])
                    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                    cand = cand[valid]
            else:
                if self._tokens is None:
                    raise InvalidInputError("method='tokens' needs token_index=True when the index is created")
                token_k = min(token_k, self._tokens.ntotal)
                ef_ = None if ef is None else max(token_k, ef)  # None: the graph's ef_search
                _, rows = self._tokens.search(q, token_k, ef=ef_, threads=_sub_threads(q.shape[0], threads))
                doc = np.where(rows >= 0, np.searchsorted(self._offsets, rows, side="right") - 1, -1)
                qi = np.repeat(np.arange(nq), np.diff(q_off) * token_k)
                key = np.unique(qi * np.int64(self._n + 1) + (doc.reshape(-1) + 1))
                key = key[key % (self._n + 1) != 0]
                cand = key % (self._n + 1) - 1
                counts = np.bincount(key // (self._n + 1), minlength=nq)
                ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            scores, ids = self._rerank(q, q_off, ptr, cand.astype(np.int64), k)
        if return_candidates:
            return scores, ids, np.diff(ptr)
        return scores, ids

    def _score_pairs(self, q: np.ndarray, q_off: np.ndarray, pair_q: np.ndarray, pair_d: np.ndarray) -> np.ndarray:
        out = np.empty(pair_q.shape[0], np.float32)
        if pair_q.shape[0] == 0:
            return out
        small = K.pair_work(q_off, self._offsets, pair_q, pair_d) * self.dim < _SERIAL_WORK
        if isinstance(self.codec, AffineCodec):
            qt, qc = self.codec.prepare(q)
            fn = K.chamfer_pairs_affine_serial if small else K.chamfer_pairs_affine
            fn(qt, qc, q_off, self._rows, self._rows.view(np.float32), self.codec.bits, self.codec.half,
               self._offsets, pair_q, pair_d, out)
        else:
            fn = K.chamfer_pairs_serial if small else K.chamfer_pairs
            fn(q, q_off, self._rows, self._offsets, pair_q, pair_d, out)
        return out

    def _rerank(self, q: np.ndarray, q_off: np.ndarray, ptr: np.ndarray, cand: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
        nq = ptr.shape[0] - 1
        pair_q = np.repeat(np.arange(nq, dtype=np.int64), np.diff(ptr))
        scores = self._score_pairs(q, q_off, pair_q, cand)
        out_s = np.full((nq, k), -np.inf, np.float32)
        out_i = np.full((nq, k), -1, np.int64)
        for r in range(nq):
            s, c = scores[ptr[r]:ptr[r + 1]], cand[ptr[r]:ptr[r + 1]]
            order = np.lexsort((c, -s))[:k]  # best score first, ties by slot: deterministic
            out_s[r, :order.shape[0]] = s[order]
            out_i[r, :order.shape[0]] = self._idmap.slot_ids[c[order]]
        return out_s, out_i

    def _search_exact(self, q: np.ndarray, q_off: np.ndarray, k: int, return_candidates: bool):
        nq = q_off.shape[0] - 1
        live = np.flatnonzero(self._idmap.slot_ids[:self._n] >= 0).astype(np.int64)
        out_s = np.full((nq, k), -np.inf, np.float32)
        out_i = np.full((nq, k), -1, np.int64)
        # a block of queries meets every live document; pairs go document-major so that a thread's chunk of
        # pairs re-reads one document's rows while they are in L1
        q_block = max(1, min(nq, _PAIR_BLOCK // max(1, live.shape[0]), 64))
        for s in range(0, nq, q_block):
            e = min(nq, s + q_block)
            b = e - s
            pair_d = np.repeat(live, b)
            pair_q = np.tile(np.arange(s, e, dtype=np.int64), live.shape[0])
            scores = self._score_pairs(q, q_off, pair_q, pair_d).reshape(live.shape[0], b).T
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < live.shape[0] else \
                np.tile(np.arange(live.shape[0]), (b, 1))
            for r in range(b):
                c = part[r]
                order = np.lexsort((live[c], -scores[r, c]))
                out_s[s + r] = scores[r, c[order]]
                out_i[s + r] = self._idmap.slot_ids[live[c[order]]]
        if return_candidates:
            return out_s, out_i, np.full(nq, live.shape[0], np.int64)
        return out_s, out_i

    def score(self, queries: Any, doc_ids: Any, *, offsets: Any = None) -> np.ndarray:
        """Chamfer scores (nq, len(doc_ids)) float32 of every query against the given documents."""
        q, q_off = check_sets(queries, self.dim, offsets, "queries")
        slots = self._slots_for_removal(doc_ids)
        nq = q_off.shape[0] - 1
        pair_q = np.repeat(np.arange(nq, dtype=np.int64), slots.shape[0])
        pair_d = np.tile(slots.astype(np.int64), nq)
        return self._score_pairs(q, q_off, pair_q, pair_d).reshape(nq, slots.shape[0])

    # ---- remove --------------------------------------------------------------------------------------------------
    def remove(self, ids: Any) -> int:
        """Remove documents by id; unknown ids raise and nothing is removed. Their vectors stay in storage
        (never returned) until the index is rebuilt."""
        slots = self._slots_for_removal(ids)
        with self._write_lock:
            if self._fde is not None:
                self._fde.remove(slots)
            if self._tokens is not None:
                rows = np.concatenate([np.arange(self._offsets[s], self._offsets[s + 1]) for s in slots])
                self._tokens.remove(rows)
            self._idmap.release(slots)
        return int(slots.shape[0])

    def get_vectors(self, ids: Any) -> np.ndarray:
        """The stored vectors (after pruning/reduction, decoded to float32) of the given documents, concatenated
        in the order of ``ids``; see :meth:`get_documents` for one array per document."""
        return np.concatenate(self.get_documents(ids))

    def get_documents(self, ids: Any) -> list[np.ndarray]:
        """One (n_i, dim) float32 array per id."""
        slots = self._slots_for_removal(ids)
        return [self._decode_rows(self._rows[self._offsets[s]:self._offsets[s + 1]]) for s in slots]

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        enc_meta, enc_arrays = self.encoder.state()
        meta: dict[str, Any] = {"storage": self.storage, "fde_index": self.fde_index_kind, "M": self.M,
                                "ef_construction": self.ef_construction, "keep_fraction": self.keep_fraction,
                                "max_vectors": self.max_vectors, "seed": self.seed, "count": self._n,
                                "encoder": enc_meta, "token_index": self._tokens is not None}
        arrays = {"rows": self._rows, "offsets": self._offsets}
        arrays.update({f"enc.{k}": v for k, v in enc_arrays.items()})
        if self.codec is not None:
            codec_meta, codec_arrays = self.codec.state()
            meta["codec"] = codec_meta
            arrays.update({f"codec.{k}": v for k, v in codec_arrays.items()})
        for prefix, sub in (("fde", self._fde), ("tok", self._tokens)):
            if sub is not None:
                kind, sub_meta, sub_arrays = sub.snapshot()
                meta[f"{prefix}_state"] = {"kind": kind, "meta": sub_meta}
                arrays.update({f"{prefix}.{k}": v for k, v in sub_arrays.items()})
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> MultiVectorIndex:
        encoder = MuveraEncoder.from_state(meta["encoder"], sub_arrays(arrays, "enc"))
        max_vectors = meta["max_vectors"]
        index = cls(meta_int(meta, "dim", 1), storage=meta["storage"], encoder=encoder,
                    fde_index=meta["fde_index"], token_index=False, M=meta_int(meta, "M", 2),
                    ef_construction=meta_int(meta, "ef_construction", 1), keep_fraction=float(meta["keep_fraction"]),
                    max_vectors=None if max_vectors is None else int(max_vectors), seed=meta_int(meta, "seed"))
        if "codec" in meta:
            index.codec = Codec.from_state(meta["codec"], sub_arrays(arrays, "codec"))
            if not isinstance(index.codec, AffineCodec) or index.codec.dim != index.dim:
                raise CorruptFileError("the stored codec does not fit the index")
        elif index.storage not in ("float16", "float32"):
            raise CorruptFileError(f"storage {index.storage!r} needs a stored codec")
        n = meta_int(meta, "count")
        offsets, rows = arrays["offsets"], arrays["rows"]
        if offsets.dtype != np.int64 or offsets.shape != (n + 1,):
            raise CorruptFileError(f"offsets have shape {offsets.shape} {offsets.dtype}, expected ({n + 1},) int64")
        if offsets[0] != 0 or (np.diff(offsets) <= 0).any() or offsets[-1] != rows.shape[0]:
            raise CorruptFileError("offsets are not strictly increasing from 0 to the number of stored vectors")
        want_dtype, want_cols = {"float16": (np.uint16, index.dim), "float32": (np.float32, index.dim)}.get(
            index.storage, (np.uint8, index.codec.code_size if index.codec is not None else -1))
        if rows.dtype != want_dtype or rows.ndim != 2 or (rows.shape[0] and rows.shape[1] != want_cols):
            raise CorruptFileError(f"stored vectors have shape {rows.shape} {rows.dtype}, expected (T, {want_cols}) "
                                   f"{np.dtype(want_dtype)}")
        if rows.dtype.kind == "f" and not np.isfinite(rows).all():
            raise CorruptFileError("stored vectors contain NaN or inf")
        if rows.dtype == np.uint16 and ((rows & 0x7C00) == 0x7C00).any():
            raise CorruptFileError("stored float16 vectors contain NaN or inf")
        index._rows, index._offsets, index._n = rows, offsets, n
        for prefix, attr in (("fde", "_fde"), ("tok", "_tokens")):
            state = meta.get(f"{prefix}_state")
            if state is None:
                setattr(index, attr, None)
                continue
            target = index_class(state["kind"])
            if target not in (HNSWIndex, FlatIndex):
                raise CorruptFileError(f"unexpected sub-index kind {state['kind']!r}")
            setattr(index, attr, target._restore(state["meta"], sub_arrays(arrays, prefix)))
        if bool(meta["token_index"]) != (index._tokens is not None):
            raise CorruptFileError("token index flag does not match the stored arrays")
        return index

    def _check_loaded(self) -> None:
        super()._check_loaded()
        live = np.flatnonzero(self._idmap.slot_ids >= 0)
        if self._fde is not None:
            if self._fde.dim != self.encoder.dim_fde or self._fde.ntotal != live.shape[0] or \
                    not np.array_equal(np.sort(self._fde.ids), live):
                raise CorruptFileError("the FDE index does not hold exactly the live documents")
        if self._tokens is not None:
            n_live_rows = int(np.diff(self._offsets)[live].sum())
            if self._tokens.dim != self.dim or self._tokens.ntotal != n_live_rows or \
                    (n_live_rows and self._tokens.ids.max() >= self.num_vectors):
                raise CorruptFileError("the token index does not hold exactly the live document vectors")
