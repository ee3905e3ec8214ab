"""SSD-resident Vamana (DiskANN): compressed codes in memory for navigation, full vectors and adjacency lists in a
memory-mapped file, beam search re-ranked by the full vectors of the nodes it expands.

The graph, its build, FreshDiskANN updates and persistence are those of :class:`simdex.dense.VamanaIndex`; this
class only changes where the arrays live and how search scores nodes:

- the float32 vectors and the adjacency rows are two blocks of one memory-mapped file (a temporary, unlinked
  file while the index is being built or changed; the index file itself after ``load(mmap=True)``), so they take
  page cache for what is touched, not the process's own memory. Unlike DiskANN's on-disk format, a node's vector
  and its neighbour list are in separate blocks (two pages per expansion instead of one), which keeps the arrays
  contiguous for the shared build kernels;
- the codes (PQ: ``m`` bytes per vector; int8 / LVQ: about ``dim`` bytes) are in memory; search orders its beam
  by code distances and returns the expanded nodes ranked by their exact distances.

A filtered search reads full vectors for every node it scores (the in-memory index's kernels on the mapped file).
"""

from __future__ import annotations

import copy
import re
import tempfile
import threading
from typing import Any

import numpy as np

from .._numba import batch_threads
from .._validate import MAX_RESULTS, check_ids, check_metric, check_positive_int, check_vectors
from ..dense.vamana import LIVE, VamanaIndex, _Graph
from ..errors import CorruptFileError, InvalidInputError, UnsupportedOperationError
from ..index import BaseIndex, meta_int
from ..core import graph as G
from ._scorers import AffineCodes, ExactExpanded, PQCodes
from .._storage import file_mapping, drop_pages, file_backed, reserve
from .codec import Codec, TrainedOnFirstRows, make_codec, training_sample
from .pq import PQCodec
from .scalar import AffineCodec

_PAGE = 4096


def disk_graph_storage(rows: int, dim: int, width: int, directory: str | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Zeroed vectors float32 (rows, dim) and adjacency int32 (rows, width), two page-aligned blocks of one
    unlinked temporary file in ``directory`` (default: the system's temporary folder), memory-mapped; no file for
    no rows."""
    if rows == 0:
        return np.zeros((0, dim), np.float32), np.zeros((0, width), np.int32)
    r = rows
    offset = -(-r * dim * 4 // _PAGE) * _PAGE
    with tempfile.TemporaryFile(dir=directory, prefix="simdex-vamana-") as f:
        reserve(f, offset + r * width * 4)
        vectors = np.memmap(f, np.float32, mode="r+", shape=(r, dim))
        adj = np.memmap(f, np.int32, mode="r+", offset=offset, shape=(r, width))
    return np.asarray(vectors)[:rows], np.asarray(adj)[:rows]


def advise_random(arr: np.ndarray) -> None:
    """Tell the kernel a file-backed array is read at random (no readahead; pages are brought in one at a time,
    not in large folios), as graph search reads it. No-op for in-memory arrays."""
    import mmap
    mm = file_mapping(arr)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_RANDOM)


class VamanaDiskIndex(TrainedOnFirstRows, VamanaIndex):
    """Vamana graph with full vectors and adjacency on disk (memory-mapped) and compressed codes in memory.

    Parameters
    ----------
    dim, metric, R, L_build, L_search, alpha, seed, consolidate_threshold, background
        As for :class:`simdex.dense.VamanaIndex`.
    codec : str or Codec, default "pq48"
        ``"pq<m>"`` / ``"opq<m>"`` (m bytes per vector), ``"int8"``, ``"lvq8"``, ``"lvq4"``, or a Codec instance.
        An untrained codec is trained on (up to 100,000 vectors of) the first ``add``.
    storage_dir : str, optional
        Folder of the temporary file that holds vectors and adjacency while the index is built or changed.

    Memory resident in RAM per vector: ``code_size`` bytes plus about 25 bytes of ids and state; on disk
    ``4 * dim + 4 * (ceil(1.3 R) + 1)`` bytes. See :attr:`nbytes` and :attr:`disk_nbytes`.
    """

    kind = "VamanaDiskIndex"

    def __init__(self, dim: int, metric: str = "l2", R: int = 64, L_build: int = 100, L_search: int = 64,
                 alpha: float = 1.2, seed: int = 0, consolidate_threshold: float = 0.1, background: bool = False,
                 *, codec: Any = "pq48", storage_dir: str | None = None) -> None:
        dim, metric = check_positive_int(dim, "dim"), check_metric(metric)
        named = re.fullmatch(r"(o?pq)(\d+)", codec.lower()) if isinstance(codec, str) else None
        if named and int(named.group(2)) > dim:  # small dimensions: at most one sub-quantizer per dimension
            codec = f"{named.group(1)}{dim}"
        self.codec: Codec = make_codec(codec, dim, metric)
        if not isinstance(self.codec, (PQCodec, AffineCodec)):
            raise InvalidInputError(f"VamanaDiskIndex navigates on PQ, int8 or LVQ codes; got {self.codec!r}")
        self.storage_dir = storage_dir
        self.trained_rows = 0  # the vectors the codec was trained on (see retrain)
        super().__init__(dim, metric, R=R, L_build=L_build, L_search=L_search, alpha=alpha, seed=seed,
                         consolidate_threshold=consolidate_threshold, background=background)

    def __repr__(self) -> str:
        return f"VamanaDiskIndex(dim={self.dim}, metric={self.metric!r}, codec={self.codec!r}, ntotal={self.ntotal})"

    # ---- storage -------------------------------------------------------------------------------------------------
    def _new_storage(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        vectors, adj = disk_graph_storage(rows, self.dim, self.room + 1, self.storage_dir)
        advise_random(vectors)
        return vectors, adj

    def _grow_codes(self, codes: np.ndarray | None, rows: int) -> np.ndarray:
        out = np.zeros((rows, self.codec.code_size), np.uint8)
        if codes is not None:
            out[:codes.shape[0]] = codes[:rows]
        return out

    def _write_vectors(self, g: _Graph, slots: np.ndarray, x: np.ndarray) -> None:
        if not self.codec.is_trained:
            sample = training_sample(x, self.seed)
            self.codec.train(sample)
            self.trained_rows = sample.shape[0]
        g.codes[slots] = self.codec.encode(x)
        g.vectors[slots] = x

    def _check_add(self, vectors: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        x, new_ids = super()._check_add(vectors, ids)
        if not self.codec.is_trained and isinstance(self.codec, PQCodec) and x.shape[0] < 256:
            raise InvalidInputError(f"the first add trains the PQ codec and needs at least 256 vectors; got "
                                    f"{x.shape[0]} (or call train(x) first)")
        return x, new_ids

    def retrain(self) -> None:
        """Train a new codec of the same kind on (a sample of up to 100,000 of) the live vectors and re-encode
        every node; the graph stays. For an index that grew far past the rows its codec was trained on (a
        database collection trains on its first rows). O(n * dim), reading the vectors from the file."""
        with self._graph_lock, self._write_lock:
            g = self._g
            live = np.flatnonzero(g.state[:self._n] == LIVE)
            if live.size == 0:
                return
            self._materialize()
            g = self._g
            codec = copy.deepcopy(self.codec)  # a copy of this index may share the old one
            codec.train(training_sample(np.asarray(g.vectors[live]), self.seed))
            codes = self._grow_codes(None, g.vectors.shape[0])
            for start in range(0, self._n, 65536):
                codes[start:start + 65536] = codec.encode(np.asarray(g.vectors[start:min(start + 65536, self._n)]))
            self.codec = codec
            self._publish(codes=codes)
            self.trained_rows = int(live.size)
            self._scratch.clear()

    def keep_vectors_in(self, storage_dir: str | None) -> None:
        """Keep the vectors and links in an unlinked file of this index in ``storage_dir``, moving them there now
        (from memory, or file to file for an index loaded with ``mmap=True``)."""
        self.storage_dir = storage_dir
        with self._graph_lock, self._write_lock:
            g = self._g
            if file_backed(g.vectors) and g.vectors.flags.writeable:
                return  # already in a file of its own
            try:
                vectors, adj = self._new_storage(g.vectors.shape[0])
            except OSError:  # no room for a file (a full disk): in memory, so that later changes need none
                vectors, adj = np.array(g.vectors), np.array(g.adj)
            else:
                vectors[:self._n], adj[:self._n] = g.vectors[:self._n], g.adj[:self._n]
            self._publish(vectors=vectors, adj=adj, state=np.array(g.state))
            if not self._idmap.slot_ids.flags.writeable:
                self._idmap.slot_ids = np.array(self._idmap.slot_ids)

    @property
    def nbytes(self) -> int:
        """Bytes held in RAM: codes, states and ids (the vectors and adjacency are in the mapped file)."""
        g = self._g
        arrays = (g.codes, g.state, g.slot_ids)
        return int(sum(a.nbytes for a in arrays if a is not None)) + self._idmap.nbytes

    @property
    def disk_nbytes(self) -> int:
        """Bytes of vectors and adjacency in the memory-mapped file."""
        return int(self._g.vectors.nbytes + self._g.adj.nbytes)

    def release_pages(self) -> None:
        """Unmap the file pages that searches touched from this process (they stay in the OS page cache and are
        read back on demand), so the resident set holds only the in-memory part and what the next query reads."""
        drop_pages(self._g.vectors)
        drop_pages(self._g.adj)

    # ---- search --------------------------------------------------------------------------------------------------
    def _search_graph(self, g: _Graph, q: np.ndarray, k: int, L: int, allowed: np.ndarray | None,
                      threads: int | None) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None:
            return super()._search_graph(g, q, k, L, allowed, threads)
        nq = q.shape[0]
        out_d = np.empty((nq, k), np.float32)
        out_s = np.empty((nq, k), np.int32)
        codec = self.codec
        if isinstance(codec, PQCodec):
            sc = PQCodes(codec.tables(q), g.codes)
        else:
            qt, qc = codec.prepare(q)
            sc = AffineCodes(qt, qc, g.codes, g.codes.view(np.float32), codec.bits, codec.half)
        # the beam is ordered by code distances; the result is the best expanded nodes by exact distance, from the
        # vectors read with their links (the first 4 L + 16 live ones: a bound kept from the fixed-size list)
        fin = ExactExpanded(self._metric_code, q, g.vectors, g.state, 4 * L + 16)
        nthreads = batch_threads(threads, nq)
        scratch = self._scratch.take(nthreads, g.vectors.shape[0])
        ids = np.empty((nq, k), np.int64)
        try:
            G.search_batch(sc, fin, *self._graph(g), k, L, True, out_d, out_s, *scratch, self._metric_code,
                           g.slot_ids, ids)
        finally:
            self._scratch.give(scratch)
        return out_d, ids

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "codec": self.codec, "storage_dir": self.storage_dir}

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = super()._state()
        codec_meta, codec_arrays = self.codec.state()
        meta["codec"] = codec_meta
        meta["trained_rows"] = self.trained_rows
        arrays["codes"] = self._g.codes[:self._n]
        arrays.update({f"codec.{name}": arr for name, arr in codec_arrays.items()})
        return meta, arrays

    _volatile_arrays = VamanaIndex._volatile_arrays + ("codes",)

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> VamanaDiskIndex:
        codec = Codec.from_state(meta["codec"], {name[6:]: arr for name, arr in arrays.items()
                                                 if name.startswith("codec.")})
        index = super()._from_state({**meta, "codec": codec}, arrays)
        index.trained_rows = meta_int(meta, "trained_rows") if "trained_rows" in meta else index._n
        return index  # type: ignore[return-value]

    @classmethod
    def _params_from_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        params = super()._params_from_meta(meta)
        codec = meta["codec"]
        if codec.dim != params["dim"] or codec.metric != params["metric"]:
            raise CorruptFileError(f"codec {codec!r} does not fit the index")
        return {**params, "codec": codec}

    def _set_loaded_arrays(self, arrays: dict[str, np.ndarray], n: int, entry: int) -> None:
        super()._set_loaded_arrays(arrays, n, entry)
        codes = arrays["codes"]
        if codes.shape != (n, self.codec.code_size) or codes.dtype != np.uint8:
            raise CorruptFileError(f"array 'codes' has shape {codes.shape} {codes.dtype}, expected "
                                   f"{(n, self.codec.code_size)} uint8")
        # the codes are what search keeps in memory; vectors and adjacency stay mapped from the file
        self._publish(codes=np.array(codes), state=np.array(self._g.state))
        advise_random(self._g.vectors)




class StreamingVamanaIndex(BaseIndex):
    """FreshDiskANN's update path: a large :class:`VamanaDiskIndex` (long-term, vectors and graph on disk), a small
    in-memory :class:`~simdex.dense.VamanaIndex` that takes new inserts, and a delete list; :meth:`merge` (the
    paper's StreamingMerge) folds both into the disk index.

    - ``add`` goes to the in-memory index (fast, no disk writes); once it holds ``merge_threshold`` vectors,
      ``add`` merges.
    - ``remove`` of an id in the in-memory index removes it there; of an id on disk, sets its tombstone in the disk
      index's in-memory state array (the delete list: checked at result time, no disk write).
    - ``search`` queries both and merges the two result lists by distance.
    - ``merge``: the delete phase (FreshDiskANN Algorithm 4 over the disk graph: ``consolidate``), then the insert
      phase (the in-memory index's vectors inserted into the disk graph with the batch insert), then a fresh,
      empty in-memory index. Searches go on during a merge (an id may be in both parts meanwhile; results are
      de-duplicated); adds and removes wait for it.

    Unlike the paper, the merge updates the memory-mapped file in place rather than writing a new copy of it in
    one sequential pass, and the pieces are not persisted together: ``save`` and ``load`` raise
    :class:`~simdex.errors.UnsupportedOperationError` (``merge()``, then save the disk index).
    """

    kind = "StreamingVamanaIndex"

    def __init__(self, disk: VamanaDiskIndex, merge_threshold: int = 10_000) -> None:
        if not isinstance(disk, VamanaDiskIndex):
            raise InvalidInputError(f"disk must be a VamanaDiskIndex; got {type(disk).__name__}")
        self.disk = disk
        self.merge_threshold = check_positive_int(merge_threshold, "merge_threshold")
        # the delete list is merged explicitly, never by the disk index's automatic consolidation
        disk.consolidate_threshold = 1.0
        disk.background = False
        self.front = self._new_front()
        self._lock = threading.RLock()

    def _new_front(self) -> VamanaIndex:
        d = self.disk
        return VamanaIndex(d.dim, d.metric, R=d.R, L_build=d.L_build, L_search=d.L_search, alpha=d.alpha,
                           seed=d.seed)

    def __len__(self) -> int:
        return len(self.disk) + len(self.front)

    @property
    def ids(self) -> np.ndarray:
        return np.concatenate([self.disk.ids, self.front.ids])

    def __contains__(self, id_: int) -> bool:
        return id_ in self.disk or id_ in self.front

    @property
    def nbytes(self) -> int:
        """Bytes held in memory by both parts (see :attr:`VamanaDiskIndex.nbytes`)."""
        return self.disk.nbytes + self.front.nbytes

    def save(self, path: Any) -> None:
        raise UnsupportedOperationError("a StreamingVamanaIndex is not saved as one file: call merge(), then save "
                                        "its disk index (index.disk.save(path))")

    @classmethod
    def load(cls, path: Any, mmap: bool = True, verify: bool = True) -> StreamingVamanaIndex:
        raise UnsupportedOperationError("a StreamingVamanaIndex is not saved as one file: load its disk index "
                                        "(VamanaDiskIndex.load(path)) and wrap it: StreamingVamanaIndex(disk)")

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Insert vectors (n, dim) into the in-memory part; returns their ids. Merges once it is full."""
        with self._lock:
            x = check_vectors(vectors, self.disk.dim, normalize=self.disk.metric == "cosine")
            if ids is None:
                start = max(self.disk._idmap.next_id(), self.front._idmap.next_id())
                ids = np.arange(start, start + x.shape[0], dtype=np.int64)
            ids = check_ids(ids, x.shape[0])
            self.disk._idmap.check_absent(ids)
            new_ids = self.front.add(x, ids)
            if len(self.front) >= self.merge_threshold:
                self.merge()
        return new_ids

    def remove(self, ids: Any) -> int:
        """Remove ids from whichever part holds them (unknown ids raise and nothing is removed)."""
        with self._lock:
            ids = check_ids(ids)
            in_front = self.front._idmap.lookup(ids) >= 0
            self.disk._idmap.slots_of(ids[~in_front])  # raises UnknownIdError before anything changes
            if in_front.any():
                self.front.remove(ids[in_front])
            if (~in_front).any():
                self.disk.remove(ids[~in_front])
        return int(ids.shape[0])

    def search(self, queries: Any, k: int, *, L: int | None = None, threads: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours (nq, k) over both parts: (distances float32, ids int64), (inf, -1) padded."""
        k = check_positive_int(k, "k", maximum=MAX_RESULTS)
        front, disk = self.front, self.disk
        parts = []
        for part in (disk, front):
            if len(part):
                parts.append(part.search(queries, min(k, len(part)), L=L, threads=threads))
        if not parts:
            raise InvalidInputError("the index is empty; add vectors before searching")
        d = np.concatenate([p[0] for p in parts], axis=1)
        i = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(d, axis=1, kind="stable")
        d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
        out_d = np.full((d.shape[0], k), np.inf, np.float32)
        out_i = np.full((d.shape[0], k), -1, np.int64)
        for r in range(d.shape[0]):  # keep each id once (during a merge it can be in both parts)
            _, first = np.unique(i[r], return_index=True)
            keep = np.sort(first[i[r, first] >= 0])[:k]
            out_d[r, :keep.size], out_i[r, :keep.size] = d[r, keep], i[r, keep]
        return out_d, out_i

    def merge(self, threads: int | None = None) -> None:
        """StreamingMerge: repair the disk graph around the delete list, insert the in-memory vectors into it,
        start a new in-memory index."""
        with self._lock:
            self.disk.consolidate(threads)
            front = self.front
            if len(front):
                ids = front.ids
                self.disk.add(front.get_vectors(ids), ids, threads=threads)
            self.front = self._new_front()
