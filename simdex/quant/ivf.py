"""Inverted-file index (IVF): a k-means coarse quantizer splits the space into ``nlist`` cells; each vector is
stored, compressed by a codec, in the inverted list of its nearest centroid; a query scans the ``nprobe`` lists
whose centroids are nearest to it (Jégou et al. 2011; FAISS's ``IndexIVF``).

Codecs: ``"flat"`` (float32, exact within the probed lists), ``"pq<m>"`` / ``"opq<m>"`` (product quantization of
the residual ``x - centroid``, as FAISS's IndexIVFPQ with ``by_residual``), ``"int8"``, ``"lvq8"``, ``"lvq4"``
(scalar codes of the vector), ``"binary"`` (Hamming on sign bits; use it with ``rerank``). With ``rerank=R`` the
R best candidates by code distance are re-scored from the float32 vectors, which are kept memory-mapped on disk
(``vectors="disk"``), in RAM (``"memory"``) or not at all (``"none"``: no re-ranking, ``get_vectors`` decodes).

Lists are CSR arrays (``offsets`` (nlist + 1), entry ``codes`` and entry ``slots`` in list order), rebuilt by one
stable sort on every add. Removal marks slots deleted; once ``consolidate_threshold`` of them are, the lists and
vectors are compacted.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np

from .._numba import batch_threads, num_threads
from .._validate import MAX_RESULTS, check_positive_int, check_real, check_threads, check_vectors
from ..errors import CorruptFileError, InvalidInputError
from ..index import Index, meta_int
from ..metrics import IP, METRIC_CODES, pairwise
from ..core.exact import exact_knn_subset
from ..core.lists import grow_lists, scan_lists, select_probes
from ..core.scorer import Vectors
from ..dense.calibration import RecallCalibrated, calibrating
from ._kmeans import kmeans
from ._scorers import AffineCodes, BinaryCodes, IVFPQCodes
from .._storage import InVectorFile, VectorFile, check_reads, disk_array, row_source
from .binary import BinaryCodec
from .codec import Codec, expect_array, make_codec, outgrew_training
from .pq import KS, PQCodec
from .rabitq import RaBitQCodec
from .scalar import AffineCodec, FlatCodec

_TRAIN_PER_LIST = 256  # coarse training vectors per list (as FAISS; 64 lost 5 points of recall at nprobe 16)
_TRAIN_MAX = 200_000
_BLOCK_BYTES = 16 << 20  # of dot products with the centroids at a time
_ENCODE_ROWS = 1 << 13  # rows assigned and encoded at a time (their residuals: 12 MiB at 384-d)
_MAX_LISTS = 1 << 24  # far above any useful nlist; bounds the list offsets allocated at construction


# up to this nprobe the lists are picked by an insertion kernel (5-7x faster than np.argpartition at nprobe <= 8,
# even at 32); beyond it argpartition wins
_SELECT_PROBES_MAX = 32
# the list scan's duplicate marks, unused by IVF (each vector is in one list)
_NO_MARKS = np.zeros((1, 0), np.uint16)
_NO_TAGS = np.zeros(1, np.int64)


class IVFIndex(InVectorFile, RecallCalibrated, Index):
    """Inverted-file index over codes.

    Parameters
    ----------
    dim, metric
        Vector dimension; ``"l2"``, ``"ip"`` or ``"cosine"``.
    nlist : int, default 256
        Coarse cells. A rule of thumb is about ``4 * sqrt(n)``.
    codec : str or Codec, default "pq8"
        See the module docstring. ``"pq"`` alone picks ``m = dim // 8`` (8 dimensions per sub-quantizer).
    nprobe : int, default 8
        Lists scanned per query (``search(nprobe=...)`` overrides it).
    rerank : int, default 0
        Candidates re-scored with the float vectors (0: return code distances).
    vectors : {"disk", "memory", "none"}, default "disk"
    reads : {"mmap", "pread"}, default "mmap"
        How re-ranking reads vectors on disk: through the file's mapping (fastest while the file is in the page
        cache), or a ``pread`` system call per row (about 3 us each), which maps none of the file into the
        process (its resident set stays at the index's own memory) and reads no more than the row from disk (no
        read-ahead): for vectors larger than memory, or a memory limit that counts mapped pages.
    seed : int
    consolidate_threshold : float, default 0.1
    train_device : str, optional
        Run the training k-means (the coarse centroids and the PQ codebooks) on a torch device, e.g. "cuda"
        (:func:`simdex.gpu.train_kmeans`; needs ``simdex[gpu]``); the index itself stays on the CPU.

    The index is trained on the first ``add`` (or by :meth:`train`): k-means on up to ``256 * nlist`` vectors,
    then the codec on the residuals (k-means on up to ``256 * nlist``). Memory in RAM per vector: ``code_size + 4``
    (slot) plus ids, with the float32 vectors on disk.
    """

    _effort_param = "nprobe"

    def _effort_grid(self, k: int) -> list[int]:
        return sorted({min(self.nlist, p) for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
                                                    768, 1024)} | {self.nlist})

    kind = "IVFIndex"
    _volatile_arrays = ("deleted",)

    def __init__(self, dim: int, metric: str = "l2", nlist: int = 256, codec: Any = "pq8", nprobe: int = 8,
                 rerank: int = 0, vectors: str = "disk", reads: str = "mmap", seed: int = 0,
                 consolidate_threshold: float = 0.1, storage_dir: str | None = None,
                 train_device: str | None = None) -> None:
        super().__init__(dim, metric)
        self.nlist = check_positive_int(nlist, "nlist", maximum=_MAX_LISTS)
        self.nprobe = check_positive_int(nprobe, "nprobe")
        self.rerank = check_positive_int(rerank, "rerank", minimum=0)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        if vectors not in ("disk", "memory", "none"):
            raise InvalidInputError(f"vectors must be 'disk', 'memory' or 'none'; got {vectors!r}")
        if vectors == "none" and self.rerank:
            raise InvalidInputError("rerank needs the float vectors: use vectors='disk' or 'memory'")
        self.vector_storage = vectors
        self.reads = check_reads(reads, vectors)
        if train_device is not None and not isinstance(train_device, str):
            raise InvalidInputError(f"train_device must be a device name such as 'cuda'; got {train_device!r}")
        self.train_device = train_device
        self.storage_dir = storage_dir
        self.consolidate_threshold = check_real(consolidate_threshold, "consolidate_threshold", 0.0, 1.0,
                                                low_open=True)
        if isinstance(codec, str) and codec.lower() == "pq":
            codec = f"pq{max(1, self.dim // 8)}"
        self.codec: Codec = make_codec(codec, self.dim, self.metric)
        # residuals to the list centroids: PQ (FAISS's by_residual) and RaBitQ, whose codes are relative to a centre
        self._residual = isinstance(self.codec, (PQCodec, RaBitQCodec))
        self.centroids = np.zeros((0, self.dim), np.float32)
        self._precomputed = np.zeros((0, 0, 0), np.float32)
        self._offsets = np.zeros(self.nlist + 1, np.int64)
        self._codes = np.zeros((0, self.codec.code_size), np.uint8)
        self._slots = np.zeros(0, np.int32)
        self._n = 0
        self._n_deleted = 0
        self._deleted = np.zeros(0, np.uint8)
        self._vectors = self._new_vectors(0)
        # with vectors="disk" in a database collection: the named file the vectors are in (use_vector_file)
        self._vector_file: VectorFile | None = None
        self._write_lock = threading.RLock()
        self.trained_rows = 0  # the vectors the quantizers were trained from (see retrain)

    def __repr__(self) -> str:
        return (f"IVFIndex(dim={self.dim}, metric={self.metric!r}, nlist={self.nlist}, codec={self.codec!r}, "
                f"ntotal={self.ntotal})")

    @property
    def is_trained(self) -> bool:
        return self.centroids.shape[0] > 0

    def _num_slots(self) -> int:
        return self._n

    def _new_vectors(self, rows: int) -> np.ndarray:
        if self.vector_storage == "disk":
            return disk_array(rows, self.dim, self.storage_dir, readable=self.reads == "pread")
        return np.zeros((rows if self.vector_storage == "memory" else 0, self.dim), np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes in RAM: codes, list arrays, centroids, tables and ids (and vectors with ``vectors="memory"``)."""
        arrays = [self._codes, self._slots, self._offsets, self.centroids, self._precomputed, self._deleted]
        if self.vector_storage == "memory":
            arrays.append(self._vectors)
        return int(sum(a.nbytes for a in arrays)) + self._idmap.nbytes

    # ---- training ------------------------------------------------------------------------------------------------
    def train(self, x: Any, progress: bool | None = None) -> None:
        """Train the coarse quantizer and the codec on sample vectors (n, dim). Only before the first add."""
        if self._n:
            raise InvalidInputError("the index already holds vectors; it cannot be retrained")
        sample = check_vectors(x, self.dim, "training vectors", normalize=self.metric == "cosine")
        self._train(sample, progress)
        self.trained_rows = sample.shape[0]

    def wants_retraining(self) -> bool:
        """Whether the index has outgrown the rows its lists and codec were trained on
        (:func:`~simdex.quant.codec.outgrew_training`); see :meth:`retrain`."""
        return self.vector_storage != "none" and outgrew_training(self.trained_rows, len(self), _TRAIN_MAX)

    def retrain(self, nlist: int | None = None, threads: int | None = None, train_rows: int | None = None) -> None:
        """Train the coarse quantizer (with ``nlist`` lists, default unchanged) and a new codec of the same kind
        on (a sample of) the vectors held now, and rebuild every list: for an index that grew far past the rows it
        was trained on. Needs the float vectors (``vectors="disk"`` or ``"memory"``), which stay where they are
        (slots and ids do not change); they are encoded a chunk at a time, never all in memory. O(n * dim), plus
        the training; the recall curves are measured again with self-queries. ``train_rows``: train on at most this
        many rows (default, and at most: 200,000, or 256 per list)."""
        if self.vector_storage == "none":
            raise InvalidInputError("retraining needs the float vectors; this index keeps none (vectors='none')")
        with self._write_lock, num_threads(check_threads(threads)):
            n = self._n
            live = np.flatnonzero(self._deleted[:n] == 0)
            nlist = self.nlist if nlist is None else check_positive_int(nlist, "nlist", maximum=_MAX_LISTS)
            if live.size == 0:
                return
            limit = min(_TRAIN_MAX, _TRAIN_PER_LIST * nlist)
            if train_rows is not None:
                limit = min(limit, check_positive_int(train_rows, "train_rows"))
            rng = np.random.default_rng(self.seed)
            sample = np.sort(rng.choice(live, limit, replace=False)) if live.size > limit else live
            # the codec object is shared with the copies this one was made from: train a copy of it
            self.codec, self.nlist = copy.deepcopy(self.codec), nlist
            self._train(self._training_rows(sample), False, private=True)
            self.trained_rows = int(live.size)  # (as a first add of them all would; see wants_retraining)
            labels, codes = self._encode(self._vectors[:n])  # deleted slots too: they stay tombstones in the lists
            order = np.argsort(labels, kind="stable")
            offsets = np.zeros(nlist + 1, np.int64)
            offsets[1:] = np.cumsum(np.bincount(labels, minlength=nlist))
            self._codes, self._slots, self._offsets = codes[order], order.astype(np.int32), offsets
            self.calibrate_self(threads)

    def _training_rows(self, slots: np.ndarray) -> np.ndarray:
        """A scratch copy of the vectors of ``slots``: with ``vectors="disk"`` in an unlinked file beside them (its
        pages in the page cache, not in the process's memory: a large sample under a memory limit)."""
        if self.vector_storage != "disk":
            return np.array(self._vectors[slots])
        folder = self._vector_file.path.parent if self._vector_file is not None else self.storage_dir
        out = disk_array(slots.shape[0], self.dim, None if folder is None else str(folder))
        for s in range(0, slots.shape[0], _ENCODE_ROWS):
            out[s:s + _ENCODE_ROWS] = self._vectors[slots[s:s + _ENCODE_ROWS]]
        return out

    def _train(self, x: np.ndarray, progress: bool | None, private: bool = False) -> None:
        """Train the coarse quantizer and the codec on ``x`` (or a sample of it); ``private``: ``x`` is the
        caller's scratch copy, turned into residuals in place (no second copy of a sample that may be large)."""
        rng = np.random.default_rng(self.seed)
        limit = min(_TRAIN_MAX, _TRAIN_PER_LIST * self.nlist)
        if x.shape[0] > limit:
            sample, private = x[np.sort(rng.choice(x.shape[0], limit, replace=False))], True
        else:
            sample = x
        k = min(self.nlist, sample.shape[0])
        if self.train_device is None:
            cent = kmeans(sample, k, 20, seed=self.seed, progress=progress, desc="IVF coarse k-means")
        else:
            from ..gpu import train_kmeans
            cent = train_kmeans(sample, k, device=self.train_device, iters=20, seed=self.seed)
        if k < self.nlist:  # fewer training vectors than lists: the extra lists stay empty
            cent = np.concatenate([cent, np.repeat(cent[:1], self.nlist - k, 0)])
        codec = self.codec
        codec.train_device = self.train_device  # (the PQ codebooks' k-means too)
        if self._residual:
            labels = self._assign(sample, cent)
            train_x = sample if private else np.empty_like(sample)
            for s in range(0, sample.shape[0], _ENCODE_ROWS):
                np.subtract(sample[s:s + _ENCODE_ROWS], cent[labels[s:s + _ENCODE_ROWS]],
                            out=train_x[s:s + _ENCODE_ROWS])
        else:
            train_x = sample
        if isinstance(codec, PQCodec) and train_x.shape[0] < KS:  # tiny data: repeat it up to 256 rows
            train_x = np.concatenate([train_x] * (-(-KS // train_x.shape[0])))
        codec.train(train_x)
        self.centroids = cent
        self._precompute()

    def _precompute(self) -> None:
        """(nlist, m, 256) term ||r||^2 + 2 <c, r> of L2 IVF-PQ distances (see
        :class:`simdex.quant._scorers.IVFPQCodes`)."""
        codec = self.codec
        if not (isinstance(codec, PQCodec) and METRIC_CODES[self.metric] != IP):
            self._precomputed = np.zeros((1, 1, 1), np.float32)
            return
        ct = codec.transform(self.centroids).reshape(self.nlist, codec.m, codec.dsub)
        rn = np.einsum("jcd,jcd->jc", codec.centroids, codec.centroids)
        cross = np.einsum("ljd,jcd->ljc", ct, codec.centroids)
        self._precomputed = (rn[None] + 2.0 * cross).astype(np.float32)

    def _assign(self, x: np.ndarray, centroids: np.ndarray | None = None) -> np.ndarray:
        cent = self.centroids if centroids is None else centroids
        if METRIC_CODES[self.metric] == IP:
            # the list of a vector must be the one search ranks first for it: search orders lists by the
            # metric (inner product here), so assign by it too, not by the L2 k-means used to find them
            labels = np.empty(x.shape[0], np.int64)
            step = max(256, _BLOCK_BYTES // (4 * cent.shape[0]))  # rows whose products with the centroids
            for s in range(0, x.shape[0], step):                  # are computed at a time
                labels[s:s + step] = np.argmax(x[s:s + step] @ cent.T, axis=1)
            return labels
        from ._kmeans import assign
        return assign(x, cent)[0]

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The list (int64 (n,)) and code (uint8 (n, code_size)) of every row of ``x``, a chunk of _ENCODE_ROWS
        at a time: the residuals and their temporaries stay small whatever the number of rows (``x`` may be a
        file-backed array, read a chunk at a time)."""
        n = x.shape[0]
        labels = np.empty(n, np.int64)
        codes = np.empty((n, self.codec.code_size), np.uint8)
        for s in range(0, n, _ENCODE_ROWS):
            part = np.asarray(x[s:s + _ENCODE_ROWS])
            labels[s:s + part.shape[0]] = lab = self._assign(part)
            codes[s:s + part.shape[0]] = self.codec.encode(part - self.centroids[lab] if self._residual else part)
        return labels, codes

    # ---- add -----------------------------------------------------------------------------------------------------
    @calibrating
    def add(self, vectors: Any, ids: Any = None, *, threads: int | None = None,
            progress: bool | None = None) -> np.ndarray:
        """Add vectors (n, dim); returns their ids. The first add trains the index if :meth:`train` was not
        called (it needs at least 1 vector; quality needs many more than ``nlist``). ``threads`` bounds the
        threads of the training, assignment and encoding (default: all)."""
        x, new_ids = self._check_add(vectors, ids)
        with self._write_lock, num_threads(check_threads(threads)):
            if not self.is_trained:
                self._train(x, progress)
                self.trained_rows = x.shape[0]
            n_new = x.shape[0]
            labels, codes = self._encode(x)
            self._materialize()
            start = self._n
            if self._vector_file is not None:  # after the rows the live index reads: nothing is copied
                vectors_new = self._vector_file.write(start, x)
            elif self.vector_storage != "none":
                vectors_new = self._new_vectors(start + n_new)
                vectors_new[:start] = self._vectors[:start]
                vectors_new[start:] = x
            else:
                vectors_new = self._vectors
            # each list: its entries so far, then the new ones in the order given (one pass, no sort of the old
            # entries and no concatenated copy of them)
            order = np.argsort(labels, kind="stable")
            new_offsets = np.zeros(self.nlist + 1, np.int64)
            new_offsets[1:] = np.cumsum(np.bincount(labels, minlength=self.nlist))
            offsets = self._offsets + new_offsets
            all_codes = np.empty((offsets[-1], self.codec.code_size), np.uint8)
            all_slots = np.empty(offsets[-1], np.int32)
            grow_lists(self._offsets, self._codes, self._slots, new_offsets, codes[order],
                       (start + order).astype(np.int32), offsets, all_codes, all_slots)
            deleted = np.concatenate([self._deleted, np.zeros(n_new, np.uint8)])
            # commit
            self._vectors, self._codes, self._slots, self._offsets = vectors_new, all_codes, all_slots, offsets
            self._deleted = deleted
            self._n = start + n_new
            self._idmap.append(new_ids)
        return new_ids

    def _materialize(self) -> None:
        for name in ("_codes", "_slots", "_offsets", "_deleted"):
            arr = getattr(self, name)
            if not arr.flags.writeable or isinstance(arr, np.memmap):
                setattr(self, name, np.array(arr))
        if not self._idmap.slot_ids.flags.writeable:
            self._idmap.slot_ids = np.array(self._idmap.slot_ids)
        if self._vector_file is not None:  # its rows are only ever appended to
            pass
        elif self.vector_storage == "disk" and (not self._vectors.flags.writeable or
                                                isinstance(self._vectors, np.memmap)):
            fresh = self._new_vectors(self._vectors.shape[0])
            fresh[:] = self._vectors
            self._vectors = fresh
        elif self.vector_storage == "memory" and not self._vectors.flags.writeable:
            self._vectors = np.array(self._vectors)

    # ---- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, nprobe: int | None = None, rerank: int | None = None,
               filter: Any = None, threads: int | None = None, target_recall: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest neighbours: scan the ``nprobe`` nearest lists (or as many as the recall@k
        ``target_recall`` needs, read from the index's recall curve: :mod:`simdex.dense.calibration`).

        Returns distances float32 (nq, k) ascending (exact when re-ranked, else code distances) and ids int64
        (nq, k), padded with (inf, -1).
        """
        q, k, allowed, threads = self._check_search(queries, k, filter, threads)
        nprobe = self._effort_for(target_recall, k, nprobe)
        nprobe = min(self.nlist, self.nprobe if nprobe is None else check_positive_int(nprobe, "nprobe"))
        rerank = self.rerank if rerank is None else check_positive_int(rerank, "rerank", minimum=0,
                                                                       maximum=MAX_RESULTS)
        if rerank and self.vector_storage == "none":
            raise InvalidInputError("this index keeps no float vectors to re-rank with")
        nq = q.shape[0]
        out_d = np.empty((nq, k), np.float32)
        out_s = np.empty((nq, k), np.int32)
        invert = False
        if self._n_deleted:
            if allowed is None:
                allowed, invert = self._deleted, True
            else:
                allowed = allowed & (self._deleted == 0)
        n_allowed = self._n if allowed is None else int(np.count_nonzero(allowed))
        if invert:
            n_allowed = self._n - n_allowed
        if allowed is not None and self.vector_storage != "none" and \
                n_allowed <= max(4 * k, self._n * nprobe / self.nlist):
            # few allowed (or surviving) vectors: exact search over them beats scanning lists that hold few of
            # them, and the probed lists may not even hold k of them
            mask = (allowed == 0).view(np.uint8) if invert else allowed
            with num_threads(threads):
                out_d[:], out_s[:] = exact_knn_subset(self.metric, q, self._vectors[:self._n], mask, k)
        else:
            self._search_lists(q, k, nprobe, rerank, allowed, invert, out_d, out_s, batch_threads(threads, nq))
        return self._results(out_d, out_s)

    def _search_lists(self, q: np.ndarray, k: int, nprobe: int, rerank: int, allowed: np.ndarray | None,
                      invert: bool, out_d: np.ndarray, out_s: np.ndarray, nthreads: int) -> None:
        coarse = pairwise(self.metric, q, self.centroids)
        if nprobe <= _SELECT_PROBES_MAX and nprobe < self.nlist:
            probes = np.empty((q.shape[0], nprobe), np.int64)
            probe_d = np.empty((q.shape[0], nprobe), np.float32)
            select_probes(np.ascontiguousarray(coarse, np.float32), nprobe, probes, probe_d, nthreads)
        else:
            if nprobe < self.nlist:
                probes = np.argpartition(coarse, nprobe - 1, axis=1)[:, :nprobe]
            else:
                probes = np.broadcast_to(np.arange(self.nlist), coarse.shape)
            probes = np.ascontiguousarray(probes, dtype=np.int64)
            probe_d = np.ascontiguousarray(np.take_along_axis(coarse, probes, 1), dtype=np.float32)
        use_filter = allowed is not None
        mask = allowed if use_filter else np.zeros(1, np.uint8)
        cap = max(k, rerank)
        do_rerank = bool(rerank) and not isinstance(self.codec, FlatCodec)
        vectors = self._vectors if self.vector_storage != "none" else np.zeros((1, self.dim), np.float32)
        rows = row_source(vectors) if do_rerank and self.reads == "pread" else vectors  # (vectors holds its file)
        scan_lists(self._list_scorer(q, probe_d, nthreads), nthreads, probes, self._offsets, self._slots, cap, k,
                   mask, use_filter, invert, _NO_MARKS, _NO_TAGS, do_rerank, self._metric_code, q, rows,
                   out_d, out_s)

    def _list_scorer(self, q: np.ndarray, probe_d: np.ndarray, nthreads: int) -> Any:
        """How the list scan (:func:`simdex.core.lists.scan_lists`) scores entries for queries ``q`` whose probed
        lists are at coarse distances ``probe_d``: the codec's scorer (:mod:`simdex.quant._scorers`)."""
        codec = self.codec
        if isinstance(codec, PQCodec):
            m, _, ks = codec.centroids_t.shape
            return IVFPQCodes(codec.transform(q), codec.centroids_t, self._precomputed,
                              METRIC_CODES[self.metric] != IP, probe_d, self._codes,
                              np.empty((nthreads, m, ks), np.float32), np.empty((nthreads, m, ks), np.float32))
        if isinstance(codec, AffineCodec):
            qt, qc = codec.prepare(q)
            return AffineCodes(qt, qc, self._codes, self._codes.view(np.float32), codec.bits, codec.half)
        if isinstance(codec, FlatCodec):
            return Vectors(self._metric_code, q, self._codes.view(np.float32))
        if isinstance(codec, BinaryCodec):
            return BinaryCodes(codec.encode_words(q), self._codes.view(np.uint64))
        if isinstance(codec, RaBitQCodec):
            return codec.scorer(q, self.centroids, self._codes, nthreads)
        raise InvalidInputError(f"IVFIndex cannot search codec {codec!r}")  # pragma: no cover - make_codec

    # ---- remove --------------------------------------------------------------------------------------------------
    def remove(self, ids: Any) -> int:
        """Remove vectors by id; compacts the lists once ``consolidate_threshold`` of the slots are deleted."""
        slots = self._slots_for_removal(ids)
        with self._write_lock:
            self._tombstone(slots)
            if self._n_deleted > self.consolidate_threshold * self._n:
                self.consolidate()
        return int(slots.shape[0])

    def consolidate(self, threads: int | None = None) -> None:
        """Drop deleted entries from the lists and compact the slots (a memory-bound pass: ``threads`` is
        accepted for the index contract)."""
        with self._write_lock:
            if self._n_deleted == 0:
                return
            self._materialize()
            remap = self._idmap.compact()
            keep_entries = remap[self._slots] >= 0
            counts = np.bincount(np.repeat(np.arange(self.nlist), np.diff(self._offsets))[keep_entries],
                                 minlength=self.nlist)
            offsets = np.zeros(self.nlist + 1, np.int64)
            offsets[1:] = np.cumsum(counts)
            live = remap >= 0
            if self._vector_file is not None:  # a new file: the old one's rows are named by checkpoints
                successor = self._vector_file.successor()
                self._vectors = successor.append_rows(0, self._vectors, np.flatnonzero(live))
                self._vector_file = successor
            elif self.vector_storage != "none":
                vectors = self._new_vectors(int(live.sum()))
                vectors[:] = self._vectors[:self._n][live]
                self._vectors = vectors
            self._codes = self._codes[keep_entries]
            self._slots = remap[self._slots[keep_entries]].astype(np.int32)
            self._offsets = offsets
            self._n = int(live.sum())
            self._deleted = np.zeros(self._n, np.uint8)
            self._n_deleted = 0

    def copy(self) -> IVFIndex:
        """An independent copy, cheap: the arrays that later calls change in place (the tombstones, the ids) are
        copied; the others (codes, lists, the vector file) are shared, as every change replaces them."""
        with self._write_lock:
            clone = type(self).__new__(type(self))
            clone.__dict__.update(self.__dict__)
            clone._deleted = np.array(self._deleted)
            clone._idmap = self._idmap.copy()
            clone._write_lock = threading.RLock()
            return clone

    def keep_vectors_in(self, storage_dir: str | None) -> None:
        """Keep the float32 vectors in an unlinked file of this index in ``storage_dir`` (with
        ``vectors="disk"``), moving them there now (from memory, or file to file for an index loaded with
        ``mmap=True``), and bring the codes and lists into memory."""
        self.storage_dir = storage_dir
        if self.vector_storage == "disk" and self._n and self._vector_file is None:
            try:
                vectors = self._new_vectors(self._vectors.shape[0])
            except OSError:  # no room for a file (a full disk): in memory, so that later changes need none
                vectors = np.array(self._vectors)
            else:
                vectors[:] = self._vectors
            self._vectors = vectors
        self._materialize()  # the codes and lists into memory (an index loaded with mmap=True maps them)

    def _vectors_in(self, vector_file: VectorFile) -> np.ndarray:
        return vector_file.rows(self._n)  # (an add writes its rows through VectorFile.write)

    # ---- access --------------------------------------------------------------------------------------------------
    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored float vectors of ``ids``; with ``vectors="none"`` their reconstruction from the codes."""
        slots = self._slots_for_removal(ids)
        if self.vector_storage != "none":
            return np.array(self._vectors[slots])
        entry_of = np.empty(self._n, np.int64)
        entry_of[self._slots] = np.arange(self._slots.shape[0])
        entries = entry_of[slots]
        decoded = self.codec.decode(self._codes[entries])
        if self._residual:
            labels = np.searchsorted(self._offsets, entries, side="right") - 1
            decoded += self.centroids[labels]
        return decoded

    def list_sizes(self) -> np.ndarray:
        """Entries per inverted list (including deleted ones not yet compacted)."""
        return np.diff(self._offsets)

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"nlist": self.nlist, "nprobe": self.nprobe, "rerank": self.rerank, "seed": self.seed,
                "vector_storage": self.vector_storage, "reads": self.reads,
                "consolidate_threshold": self.consolidate_threshold,
                "count": self._n, "deleted": self._n_deleted, "trained": self.is_trained,
                "trained_rows": self.trained_rows}
        arrays = {"centroids": self.centroids, "offsets": self._offsets, "codes": self._codes, "slots": self._slots,
                  "deleted": self._deleted}
        if self._vector_file is not None:  # named, not copied: the file's first count rows never change
            meta["vector_file"] = self._vector_file.name
        elif self.vector_storage != "none":
            arrays["vectors"] = self._vectors[:self._n]
        codec_meta, codec_arrays = self.codec.state()
        meta["codec"] = codec_meta
        arrays.update({f"codec.{name}": arr for name, arr in codec_arrays.items()})
        meta.update(self._calibration_meta())
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> IVFIndex:
        dim, metric = meta_int(meta, "dim", 1), meta["metric"]
        nlist = meta_int(meta, "nlist", 1)
        trained = bool(meta["trained"])
        codec = Codec.from_state(meta["codec"], {name[6:]: a for name, a in arrays.items()
                                                 if name.startswith("codec.")})
        if codec.dim != dim or codec.metric != metric:
            raise CorruptFileError(f"codec {codec!r} does not fit the index")
        index = cls(dim, metric, nlist=nlist, codec=codec, nprobe=meta_int(meta, "nprobe", 1),
                    rerank=meta_int(meta, "rerank"), vectors=meta["vector_storage"],
                    reads=meta.get("reads", "mmap"), seed=meta_int(meta, "seed"),
                    consolidate_threshold=float(meta["consolidate_threshold"]))
        n, n_deleted = meta_int(meta, "count"), meta_int(meta, "deleted")
        n_entries = arrays["slots"].shape[0]
        index.centroids = expect_array(arrays, "centroids", (nlist if trained else 0, dim), np.float32)
        expect = {"offsets": ((nlist + 1,), np.int64), "codes": ((n_entries, codec.code_size), np.uint8),
                  "slots": ((n_entries,), np.int32), "deleted": ((n,), np.uint8)}
        external = VectorFile.check_name(meta)
        if index.vector_storage != "none" and external is None:
            expect["vectors"] = ((n, dim), np.float32)
        for name, (shape, dtype) in expect.items():
            arr = arrays[name]
            if arr.shape != shape or arr.dtype != dtype:
                raise CorruptFileError(f"array {name!r} has shape {arr.shape} {arr.dtype}, expected {shape} "
                                       f"{np.dtype(dtype)}")
        index._offsets, index._codes, index._slots = arrays["offsets"], arrays["codes"], arrays["slots"]
        index._deleted = arrays["deleted"]
        if external is not None:  # opened by load, which knows the folder
            index._pending_vector_file = external
        elif index.vector_storage != "none":
            index._vectors = arrays["vectors"]
        index._n, index._n_deleted = n, n_deleted
        index.trained_rows = meta_int(meta, "trained_rows") if "trained_rows" in meta else n
        if trained:
            index._precompute()
        index._restore_calibration(meta)
        return index

    def _check_loaded(self) -> None:
        super()._check_loaded()
        off = self._offsets
        if off[0] != 0 or off[-1] != self._slots.shape[0] or (np.diff(off) < 0).any():
            raise CorruptFileError("inverted-list offsets are inconsistent")
        if self._slots.shape[0] != self._n or self._slots.size and (np.sort(self._slots) != np.arange(self._n)).any():
            raise CorruptFileError("inverted lists do not hold every slot once")
        if int(np.count_nonzero(self._deleted)) != self._n_deleted or \
                int(np.count_nonzero(self._idmap.slot_ids < 0)) != self._n_deleted:
            raise CorruptFileError("deleted-vector bookkeeping is inconsistent")
        if self._n and not self.is_trained:
            raise CorruptFileError("an untrained index holds vectors")
