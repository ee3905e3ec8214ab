"""HNSW over compressed vectors: the graph of :class:`simdex.dense.HNSWIndex`, traversed on int8 or LVQ codes.

Graph construction is the float32 algorithm unchanged (same kernels, same graph): it reads the float vectors
once. Search scores nodes from their codes only (a 384-d LVQ-8 code is 396 bytes instead of 1,536), then
re-ranks the best ``rerank`` candidates with full precision, from

- the float32 vectors, which live in a memory-mapped file on disk (``vectors="disk"``, the default: a temporary
  file while the index is in memory, the index file itself after ``load(mmap=True)``), so they take page cache
  for the few rows re-ranking reads, not the process's own memory; or in RAM with ``vectors="memory"``;
- or the LVQ residual level (``rerank_from="residual"`` with codec ``"lvq4x8"``), so that search reads no float
  vector at all.

Deletes, consolidation, filters and persistence behave as in :class:`~simdex.dense.HNSWIndex`; consolidation
works on the float vectors and re-encodes the survivors.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from .._validate import MAX_RESULTS, check_positive_int
from ..dense.hnsw import HNSWIndex
from ..errors import CorruptFileError, InvalidInputError
from ..idmap import IdMap
from ..index import meta_int
from ..core import graph as G
from ._scorers import AffineCodes, Rerank
from .._storage import InVectorFile, VectorFile, disk_array, drop_pages
from .codec import Codec, TrainedOnFirstRows, make_codec, training_sample
from .rabitq import RaBitQCodec
from .scalar import AffineCodec, LVQCodec

_RERANK_MODES = {"none": 0, "vectors": 1, "residual": 2}


class HNSWQuantIndex(InVectorFile, TrainedOnFirstRows, HNSWIndex):
    """Approximate k-NN on an HNSW graph whose traversal uses int8 / LVQ codes.

    Parameters
    ----------
    dim, metric, M, ef_construction, ef_search, seed, consolidate_threshold
        As for :class:`simdex.dense.HNSWIndex`.
    codec : str or Codec, default "lvq8"
        ``"lvq8"``, ``"lvq4"``, ``"lvq4x8"`` (4-bit traversal + 8-bit residual) or ``"int8"``, or an untrained or
        trained :class:`~simdex.quant.scalar.LVQCodec` / :class:`~simdex.quant.scalar.Int8Codec`. An untrained
        codec is trained on (a sample of up to 100,000 vectors of) the first ``add``.
    rerank : int, default 40
        Candidates re-scored with full precision per query (``search(rerank=...)`` overrides it; at least k).
    rerank_from : {"vectors", "residual", "none"}, default "vectors"
        What re-ranking reads: the float32 vectors (exact distances), the LVQ residual level (codec lvq4x8 only;
        distances within the residual's error), or nothing (code distances are returned as they are).
    vectors : {"disk", "memory"}, default "disk"
        Where the float32 vectors (for building, re-ranking, ``get_vectors`` and consolidation) are kept.
    storage_dir : str, optional
        Folder for the temporary vector file of ``vectors="disk"`` (default: the system's temporary folder).

    Memory resident in RAM per vector: ``code_size`` (e.g. 396 bytes for 384-d LVQ-8) ``+ 8 * M + 4`` (layer-0
    links) ``+ 30`` (ids, level, flags), plus the upper layers; see :attr:`nbytes` and :attr:`disk_nbytes`.
    """

    kind = "HNSWQuantIndex"

    def __init__(self, dim: int, metric: str = "l2", M: int = 16, ef_construction: int = 200,
                 ef_search: int = 64, seed: int = 0, consolidate_threshold: float = 0.1, *, codec: Any = "lvq8",
                 rerank: int = 40, rerank_from: str = "vectors", vectors: str = "disk",
                 storage_dir: str | None = None) -> None:
        super().__init__(dim, metric, M=M, ef_construction=ef_construction, ef_search=ef_search, seed=seed,
                         consolidate_threshold=consolidate_threshold)
        codec = make_codec(codec, self.dim, self.metric)
        if not isinstance(codec, (AffineCodec, RaBitQCodec)):
            raise InvalidInputError(f"HNSWQuantIndex traverses int8, LVQ or RaBitQ codes; got {codec!r}")
        self.codec: AffineCodec | RaBitQCodec = codec
        self.rerank = check_positive_int(rerank, "rerank")
        if rerank_from not in _RERANK_MODES:
            raise InvalidInputError(f"rerank_from must be one of {sorted(_RERANK_MODES)}; got {rerank_from!r}")
        if rerank_from == "residual" and not (isinstance(codec, LVQCodec) and codec.residual_bits):
            raise InvalidInputError("rerank_from='residual' needs an LVQ codec with a residual level (lvq4x8)")
        self.rerank_from = rerank_from
        if vectors not in ("disk", "memory"):
            raise InvalidInputError(f"vectors must be 'disk' or 'memory'; got {vectors!r}")
        self.vector_storage = vectors
        self.storage_dir = storage_dir
        self._codes = np.zeros((0, self.codec.code_size), np.uint8)
        self._vectors = self._new_vectors(0)
        # with vectors="disk" in a database collection: the named file the vectors are in (use_vector_file)
        self._vector_file: VectorFile | None = None
        self.trained_rows = 0  # how many vectors the codec was trained on (see retrain)

    def __repr__(self) -> str:
        return (f"HNSWQuantIndex(dim={self.dim}, metric={self.metric!r}, codec={self.codec!r}, "
                f"ntotal={self.ntotal})")

    @classmethod
    def shared_codec_factory(cls, dim: int, metric: str, params: dict[str, Any], vectors: np.ndarray
                             ) -> tuple[Callable[[int, str], HNSWQuantIndex], np.ndarray]:
        """For an index made of many of these over slices of the same rows (:class:`~simdex.dense.WindowIndex`):
        a factory of indexes with ``params`` that all share one codec, trained here on ``vectors``, and the codes
        of all ``vectors``, which the nodes can then share as they share the rows."""
        codec = cls(dim, metric, **params).codec
        codec.train(training_sample(vectors, 0))
        return functools.partial(cls, **{**params, "codec": codec}), codec.encode(vectors)

    # ---- storage -------------------------------------------------------------------------------------------------
    def _new_vectors(self, rows: int) -> np.ndarray:
        if self.vector_storage == "disk":
            return disk_array(rows, self.dim, self.storage_dir)
        return np.zeros((rows, self.dim), np.float32)

    def _grow_to(self, arr: np.ndarray, rows: int) -> np.ndarray:  # type: ignore[override]
        if arr is self._vectors:  # the vectors move to a larger file; the codes grow with them
            self._codes = HNSWIndex._grow_to(self._codes, rows)
            if self._vector_file is not None:  # (which only grows: nothing is copied)
                return self._vector_file.writable(rows)
            out = self._new_vectors(rows)
            out[:arr.shape[0]] = arr
            return out
        return HNSWIndex._grow_to(arr, rows)

    def _materialize(self) -> None:
        vectors = self._vectors
        if self._vector_file is not None:
            if not vectors.flags.writeable:  # (mapped for reading since it was loaded)
                self._vectors = self._vector_file.writable(vectors.shape[0])
        elif not vectors.flags.writeable or isinstance(vectors, np.memmap):
            fresh = self._new_vectors(vectors.shape[0])
            fresh[:] = vectors
            self._vectors = fresh
        if not self._codes.flags.writeable or isinstance(self._codes, np.memmap):
            self._codes = np.array(self._codes)
        super()._materialize()

    @property
    def nbytes(self) -> int:
        """Bytes held in RAM: codes, graph and ids (plus the float vectors only with ``vectors="memory"``)."""
        arrays = (self._codes, self._links0, self._links_up, self._up_offset, self._levels, self._deleted)
        ram = int(sum(a.nbytes for a in arrays)) + self._idmap.nbytes
        return ram + (self._vectors.nbytes if self.vector_storage == "memory" else 0)

    @property
    def disk_nbytes(self) -> int:
        """Bytes of float32 vectors kept in a memory-mapped file (0 with ``vectors="memory"``)."""
        return 0 if self.vector_storage == "memory" else int(self._vectors.nbytes)

    def drop_vector_pages(self) -> None:
        """Ask the kernel to unmap the vector file's pages from this process (they stay in the page cache and are
        read back on demand): after a build, the resident set then holds only what search touches."""
        drop_pages(self._vectors)

    def keep_vectors_in(self, storage_dir: str | None) -> None:
        """Move the float32 vectors to an unlinked file of this index in ``storage_dir`` (with
        ``vectors="disk"``) and keep later ones there, their pages out of this process's resident set; the
        codes and the graph come into memory. For an index just loaded: with ``mmap=True`` the vectors go from
        file to file, never all in memory."""
        self.storage_dir = storage_dir
        if self.vector_storage == "disk" and self._vector_file is None:
            try:
                self._vectors = self._copy_vectors()
            except OSError:  # no room for a file (a full disk): in memory, so that later changes need none
                self._vectors = np.array(self._vectors)
            self.drop_vector_pages()
        self._materialize()

    def _vectors_in(self, vector_file: VectorFile) -> np.ndarray:
        # the graph's capacity, writable: an insert writes its rows in place
        return vector_file.writable(max(self._vectors.shape[0], self._n))

    @classmethod
    def from_hnsw(cls, index: HNSWIndex, codec: Any = "lvq8", **kwargs: Any) -> HNSWQuantIndex:
        """An index over codes that reuses the graph of a float32 :class:`HNSWIndex` (no rebuild): the vectors
        are encoded (an untrained codec is trained on them) and copied to the vector storage. ``kwargs`` are
        the constructor's keyword arguments (rerank, rerank_from, vectors, storage_dir)."""
        q = cls(index.dim, index.metric, M=index.M, ef_construction=index.ef_construction,
                ef_search=index.ef_search, seed=index.seed, consolidate_threshold=index.consolidate_threshold,
                codec=codec, **kwargs)
        n = index._n
        src = index._vectors[:n]
        if not q.codec.is_trained:
            live = training_sample(np.flatnonzero(index._deleted[:n] == 0), index.seed)
            q.codec.train(src[live])
            q.trained_rows = int(live.shape[0])
        q._vectors = q._new_vectors(n)
        q._vectors[:] = src
        q._codes = q.codec.encode(src) if n else np.zeros((0, q.codec.code_size), np.uint8)
        q._links0, q._links_up = np.array(index._links0[:n]), np.array(index._links_up[:index._n_up])
        q._up_offset, q._levels = np.array(index._up_offset[:n]), np.array(index._levels[:n])
        q._deleted = np.array(index._deleted[:n])
        q._n, q._n_up, q._n_deleted, q._consolidated = n, index._n_up, index._n_deleted, index._consolidated
        q._entry, q._max_level = index._entry, index._max_level
        q._idmap = IdMap(np.array(index._idmap.slot_ids))
        return q

    # ---- add -----------------------------------------------------------------------------------------------------
    def retrain(self) -> None:
        """Train a new codec of the same kind on (a sample of up to 100,000 of) the vectors held now and re-encode
        them all; the graph stays. For an index that grew far past the rows its codec was trained on: an int8
        codec's per-dimension ranges come from its training rows, and values outside them are clipped (a database
        collection trains on its first few hundred rows). O(n * dim)."""
        with self._write_lock:
            n = self._n
            live = np.flatnonzero(self._deleted[:n] == 0)
            if live.size == 0:
                return
            self._materialize()
            codec = copy.deepcopy(self.codec)  # a copy of this index may share the old one
            codec.train(training_sample(np.asarray(self._vectors[live]), self.seed))
            self._codes[:n] = codec.encode(self._vectors[:n])
            self.codec = codec
            self.trained_rows = int(live.size)

    def _insert(self, x: np.ndarray, new_ids: np.ndarray, threads: int | None, progress: bool | None) -> None:
        if not self.codec.is_trained:
            sample = training_sample(x, self.seed)
            self.codec.train(sample)
            self.trained_rows = sample.shape[0]
        codes = self.codec.encode(x)
        self._reserve(x.shape[0], 0)
        self._codes[self._n:self._n + x.shape[0]] = codes
        super()._insert(x, new_ids, threads, progress)

    # ---- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, ef: int | None = None, rerank: int | None = None, filter: Any = None,
               threads: int | None = None, target_recall: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest neighbours of each query.

        Parameters
        ----------
        queries : array (nq, dim)
        k : int, 1 <= k <= ntotal
        ef : int, optional
            Candidate pool size of the traversal over codes (default ``ef_search``; at least k).
        rerank : int, optional
            Candidates re-scored with full precision (default the index's ``rerank``; at least k, at most ef).
        filter : bool array indexed by id, or array of ids, optional
            Only these ids may be returned (exact search over them when they are few).
        threads : int, optional
        target_recall : float in (0, 1], optional
            Instead of ``ef``: the recall@k wanted (see :class:`~simdex.dense.HNSWIndex`).

        Returns
        -------
        distances : float32 (nq, k), ascending; ids : int64 (nq, k). Missing results are (inf, -1). Distances
        are exact with ``rerank_from="vectors"``.
        """
        return self._search(queries, k, ef, rerank, filter, threads, target_recall)

    def _rerank_count(self, k: int, ef: int, rerank: int | None) -> int:
        return max(k, self.rerank if rerank is None else check_positive_int(rerank, "rerank", maximum=MAX_RESULTS))

    def _ranges_kernel(self, q: np.ndarray, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int, ef: int,
                       dist: np.ndarray, slots: np.ndarray, scratch: tuple[np.ndarray, np.ndarray]) -> None:
        """As :meth:`HNSWIndex._ranges_kernel`, traversing the codes and re-ranking ``rerank`` candidates."""
        sub = np.ascontiguousarray(q[rows])  # prepare only the queries that search this graph
        sc, fin = self._searcher(sub, ef, max(k, self.rerank), scratch[0].shape[0])
        G.search_batch_ranges(sc, fin, *self._graph(), np.arange(rows.shape[0], dtype=np.int64), lo, hi,
                              self._deleted[:self._n], k, ef, dist, slots, *scratch)

    def _searcher(self, q: np.ndarray, ef: int, n_rerank: int, nthreads: int) -> tuple[AffineCodes, Rerank]:
        """The graph search's scorer (the codes) and finisher (re-ranking ``n_rerank`` candidates as
        ``rerank_from`` says), see :mod:`simdex.quant._scorers`."""
        codec = self.codec
        codes_f = self._codes.view(np.float32)
        if isinstance(codec, RaBitQCodec):  # re-ranked from the float32 vectors
            return (codec.point_scorer(q, self._codes, nthreads),
                    Rerank(_RERANK_MODES[self.rerank_from], min(n_rerank, ef), self._metric_code, q, self._vectors,
                           self._codes, codes_f, np.zeros(self.dim, np.float32), 0, 0, 0, 0,
                           np.empty((nthreads, self.dim), np.float32)))
        qt, qc = codec.prepare(q)
        lvq = isinstance(codec, LVQCodec)
        mean = codec.mean if lvq else np.zeros(self.dim, np.float32)
        return (AffineCodes(qt, qc, self._codes, codes_f, codec.bits, codec.half),
                Rerank(_RERANK_MODES[self.rerank_from], min(n_rerank, ef), self._metric_code, q, self._vectors,
                       self._codes, codes_f, mean, codec.bits, codec.half, codec.residual_bits if lvq else 0,
                       codec.residual_offset, np.empty((nthreads, self.dim), np.float32)))

    # ---- remove --------------------------------------------------------------------------------------------------
    def consolidate(self, threads: int | None = None, rebuild: bool = False) -> None:
        """Repair (or ``rebuild``) the graph around deleted nodes and compact (see :meth:`HNSWIndex.consolidate`);
        the surviving vectors are re-encoded, which gives the same codes as before."""
        with self._write_lock:
            if self._n_deleted == 0:
                return
            super().consolidate(threads, rebuild)
            n = self._n
            if self._vector_file is not None:  # a new file: the old one's rows are named by checkpoints
                successor = self._vector_file.successor()
                successor.append_rows(0, self._vectors[:n])
                self._vector_file, self._vectors = successor, successor.writable(n)
            else:
                vectors = self._new_vectors(n)
                vectors[:] = self._vectors[:n]
                self._vectors = vectors
            vectors = self._vectors[:n]
            self._codes = self.codec.encode(vectors) if n else np.zeros((0, self.codec.code_size), np.uint8)

    def _copy_extra(self, clone: HNSWIndex) -> None:
        clone._codes = np.array(self._codes)

    def _copy_vectors(self) -> np.ndarray:
        if self._vector_file is not None:  # shared: a copy writes only after the rows this one reads
            return self._vectors
        vectors = self._new_vectors(self._vectors.shape[0])  # on disk for vectors="disk", never a copy in memory
        vectors[:] = self._vectors
        return vectors

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = super()._state()
        codec_meta, codec_arrays = self.codec.state()
        meta.update({"codec": codec_meta, "rerank": self.rerank, "rerank_from": self.rerank_from,
                     "trained_rows": self.trained_rows,
                     "vector_storage": self.vector_storage})
        arrays["codes"] = self._codes[:self._n]
        if self._vector_file is not None:  # named, not copied: the file's first count rows never change
            del arrays["vectors"]
            meta["vector_file"] = self._vector_file.name
        arrays.update({f"codec.{name}": arr for name, arr in codec_arrays.items()})
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> HNSWQuantIndex:
        codec = Codec.from_state(meta["codec"], {name[6:]: arr for name, arr in arrays.items()
                                                 if name.startswith("codec.")})
        external = VectorFile.check_name(meta)
        if external is not None:  # the graph's checks see zeros; load opens the file, knowing the folder
            shape = (meta_int(meta, "count"), meta_int(meta, "dim", 1))
            arrays = {**arrays, "vectors": np.broadcast_to(np.zeros((1, 1), np.float32), shape)}
        index = super()._from_state(meta, arrays)
        if external is not None:
            index._pending_vector_file = external
        if not isinstance(codec, (AffineCodec, RaBitQCodec)) or codec.dim != index.dim or codec.metric != index.metric:
            raise CorruptFileError(f"codec {codec!r} does not fit the index")
        index.codec = codec
        index.rerank = meta_int(meta, "rerank", 1)
        index.trained_rows = meta_int(meta, "trained_rows", 0) if "trained_rows" in meta else index._n
        if meta["rerank_from"] not in _RERANK_MODES or meta["vector_storage"] not in ("disk", "memory"):
            raise CorruptFileError("bad rerank_from or vector_storage in file header")
        if meta["rerank_from"] == "residual" and not (isinstance(codec, LVQCodec) and codec.residual_bits):
            raise CorruptFileError("rerank_from='residual' without a residual level")
        index.rerank_from = meta["rerank_from"]
        index.vector_storage = meta["vector_storage"]
        codes = arrays["codes"]
        if codes.shape != (index._n, codec.code_size) or codes.dtype != np.uint8:
            raise CorruptFileError(f"array 'codes' has shape {codes.shape} {codes.dtype}, expected "
                                   f"{(index._n, codec.code_size)} uint8")
        index._codes = codes if codes.flags.c_contiguous else np.ascontiguousarray(codes)
        return index

    def _check_loaded(self) -> None:
        super()._check_loaded()
        codes = self._codes[:self._n]
        # the float32 parts of the codes: an affine code's header, a RaBitQ code's factors
        floats = self.codec.factors(codes) if isinstance(self.codec, RaBitQCodec) else codes.view(np.float32)[:, :3]
        if self._n and not np.isfinite(floats).all():
            raise CorruptFileError("code headers hold NaN or inf")

