"""SPANN-style disk index (Chen et al., "SPANN: Highly-efficient Billion-scale Approximate Nearest Neighbor
Search", NeurIPS 2021): only the posting-list centroids live in memory; the posting lists live in a file on disk
that search memory-maps, and the float32 vectors (for exact re-ranking) live in another.

- Hierarchical balanced clustering: k-means splits a sample into ``sqrt(nlist)`` top clusters, then every top
  cluster is split into a number of leaves proportional to its share of the sample, so that leaves hold about
  ``list_size`` vectors each (balanced in expectation, without one huge k-means).
- Closure assignment: a vector goes to its nearest leaf and also to the next ones within ``(1 + closure_eps)``
  of that distance (boundary vectors are duplicated), at most ``max_replicas`` lists. SPANN's RNG rule (skip a
  leaf whose centroid is closer to an already chosen centroid than to the vector) is an option, off by default:
  in 384 dimensions a vector is farther from every centroid than centroids are from each other, so the rule
  rejects nearly every copy (measured on WordNet: 0.1% duplicates with it).
- Query-aware pruning: of the ``nprobe`` nearest centroids, search reads only the lists whose centroid distance
  is within ``(1 + eps)`` of the nearest one.

Posting entries are LVQ-8 codes (4x smaller than float32, so a query reads 4x fewer bytes); the ``rerank`` best
candidates by code distance are re-scored from the float32 vector file. The build streams the input in chunks:
resident memory is the sample, one chunk, the centroids and a (n, max_replicas) int32 assignment table, never the
data (see :meth:`SPANNIndex.build`).

On disk an index is a folder: ``index.sdx`` (simdex file format: centroids, list offsets, slot of every posting
entry, public ids, codec, CRC-32 of every list and of every 64 MiB block of vectors), ``postings.u8`` (codes in
list order) and ``vectors.f32`` (float32, one row per vector, normalised for cosine).
"""

from __future__ import annotations

import math
import operator
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .._numba import batch_threads, num_threads
from .._progress import progress_bar
from .._validate import (MAX_RESULTS, check_ids, check_k, check_metric, check_positive_int, check_real,
                         check_threads, check_vectors)
from ..errors import CorruptFileError, InvalidInputError, MissingFileError, UnsupportedOperationError
from ..fileformat import fsync_path, load_arrays, read_kind, save_arrays
from ..index import FOLDER_HEADER, BaseIndex, meta_int
from ..core.exact import exact_knn_subset
from ..core.beam import ScratchPool
from ..core.lists import scan_lists
from ..idmap import IdMap
from ..metrics import METRIC_CODES, public_results
from . import _spann_kernels as SK
from ._kmeans import assign, kmeans
from ._scorers import AffineCodes
from .._storage import drop_pages, reserved_memmap
from .codec import Codec, make_codec
from .scalar import AffineCodec

_BLOCK = 1 << 26  # bytes per CRC block of the vector file
_CANDIDATES = 16  # candidate leaves per vector for closure assignment
_TOPS_PER_VECTOR = 3  # top clusters whose leaves are candidates
# a search of at most _FEW_QUERIES queries picks lists among the leaves of its _TOP_PROBE nearest top clusters
# (vectors were assigned among the leaves of their 3 nearest tops); larger batches compute every centroid
# distance with one matrix product, which is cheap per query
_TOP_PROBE = 24
_FEW_QUERIES = 16


def _rows(data: Any, start: int, stop: int, dim: int, normalize: bool) -> np.ndarray:
    return check_vectors(np.asarray(data[start:stop]), dim, "vectors", normalize=normalize)


def _crc(arr: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))


def _sqdist(x: np.ndarray, c: np.ndarray, cn: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + cn[None, :]
    return np.maximum(d, 0.0, out=d)



def _prune_factor(eps: float) -> np.float32:
    """(1 + eps)^2 as float32: distances are compared squared. Any eps above 1e18 (inf included) keeps every list."""
    return np.float32((1.0 + min(eps, 1e18)) ** 2)

_OPTION_CHECKS: dict[str, Any] = {
    "list_size": lambda v: check_positive_int(v, "list_size"),
    "closure_eps": lambda v: check_real(v, "closure_eps", 0.0),
    "max_replicas": lambda v: check_positive_int(v, "max_replicas", maximum=1024),
    "nprobe": lambda v: check_positive_int(v, "nprobe"),
    "eps": lambda v: check_real(v, "eps", 0.0),
    "rerank": lambda v: check_positive_int(v, "rerank"),
    "sample": lambda v: check_positive_int(v, "sample"),
    "chunk_rows": lambda v: check_positive_int(v, "chunk_rows"),
    "seed": lambda v: check_positive_int(v, "seed", minimum=0),
}


def check_build_options(dim: int, metric: str, **options: Any) -> dict[str, Any]:
    """The given options of :meth:`SPANNIndex.build`, checked (an error names a bad one), in the order given;
    ``codec`` becomes the codec. For a caller that builds later (a database collection, at its first merge)."""
    return {name: _codec(value, dim, metric) if name == "codec" else _OPTION_CHECKS[name](value)
            for name, value in options.items()}


def _codec(spec: Any, dim: int, metric: str) -> AffineCodec:
    codec = make_codec(spec, dim, metric)
    if not isinstance(codec, AffineCodec):
        raise InvalidInputError(f"SPANNIndex stores int8 or LVQ codes; got {codec!r}")
    return codec


class SPANNIndex(BaseIndex):
    """A read-only disk index built by :meth:`build` and opened by :meth:`open` (or :meth:`load`).

    Search: ``distances, ids = index.search(queries, k, nprobe=64, eps=0.6, rerank=64)``; distances float32
    (nq, k) ascending in simdex's public convention (:mod:`simdex.metrics`), ids int64, padded with (inf, -1).
    Memory held by the process: centroids (nlist x dim float32), list offsets, the slot of every posting entry
    (int32), public ids (int64 per vector) and a per-thread visited table (int32 per vector): see :attr:`nbytes`.

    Under the index contract (:mod:`simdex.index`) it is build-once: ``add`` and ``remove`` raise
    :class:`~simdex.errors.UnsupportedOperationError` (build a new index instead); ``save(path)`` copies the
    index's folder to ``path``.
    """

    kind = "SPANNIndex"

    def __init__(self, path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], codec: AffineCodec,
                 postings: np.ndarray, vectors: np.ndarray) -> None:
        self.path = path
        self.dim = int(meta["dim"])
        self.metric = str(meta["metric"])
        self.nprobe = int(meta["nprobe"])
        self.eps = float(meta["eps"])
        self.rerank = int(meta["rerank"])
        self.codec = codec
        self.centroids = np.ascontiguousarray(arrays["centroids"])
        self._cnorms = np.einsum("ij,ij->i", self.centroids, self.centroids)
        self.offsets = np.ascontiguousarray(arrays["offsets"])
        self.slots = np.ascontiguousarray(arrays["slots"])
        self._ids = np.ascontiguousarray(arrays["ids"])
        self._list_crc = arrays["list_crc"]
        self._block_crc = arrays["block_crc"]
        self._postings = postings
        self._vectors = vectors
        # per-thread marks of the entries a query has scored (closure stores a vector in several lists), taken
        # by one search at a time: concurrent searches sharing one set skipped each other's entries or scored
        # an entry twice
        self._scratch = ScratchPool()
        # the top level of the build's clustering: a few queries pick their lists among the leaves of their
        # nearest tops instead of scanning every centroid (which is tens of MiB of memory traffic per query)
        self._tops = np.ascontiguousarray(arrays["tops"]) if "tops" in arrays else None
        self._leaf_start = np.ascontiguousarray(arrays["leaf_start"]) if "tops" in arrays else None
        self._tnorms = np.einsum("ij,ij->i", self._tops, self._tops) if self._tops is not None else None
        self.top_probe = _TOP_PROBE
        self._idmap: IdMap | None = None  # id -> vector, built on the first filtered search

    # ---- build ---------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, path: str | os.PathLike, data: Any, metric: str = "l2", *, ids: Any = None,
              list_size: int = 256, closure_eps: float = 0.1, max_replicas: int = 8, rng_rule: bool = False,
              nprobe: int = 64,
              eps: float = 0.6, rerank: int = 64, codec: Any = "lvq8", sample: int = 100_000,
              chunk_rows: int = 32_768, seed: int = 0, progress: bool | None = None) -> SPANNIndex:
        """Build an index of ``data`` into the folder ``path`` (created; must not hold an index yet).

        ``data``: any (n, dim) array-like that can be sliced by rows, typically an ``np.memmap`` larger than
        memory; it is read in ``chunk_rows`` slices, twice (assignment, then nothing else: the second pass reads
        the normalised copy this build writes to ``vectors.f32``). ``ids``: int64 public ids (default 0..n-1).
        ``list_size``: target vectors per leaf before closure. ``closure_eps``, ``max_replicas``, ``rng_rule``:
        the closure assignment (module docstring). ``sample``: vectors k-means and the codec are
        trained on. The search defaults (``nprobe``, ``eps``, ``rerank``) are stored in the index.
        """
        metric = check_metric(metric)
        shape = getattr(data, "shape", None)
        if shape is None or len(shape) != 2:
            raise InvalidInputError(f"data must be a 2-D array-like of shape (n, dim); got shape {shape}")
        n, dim = int(shape[0]), int(shape[1])
        if n == 0 or dim == 0:
            raise InvalidInputError(f"data is empty (shape {shape})")
        opts = check_build_options(dim, metric, list_size=list_size, closure_eps=closure_eps,
                                   max_replicas=max_replicas, nprobe=nprobe, eps=eps, rerank=rerank, codec=codec,
                                   sample=sample, chunk_rows=chunk_rows, seed=seed)
        list_size, closure_eps, max_replicas, nprobe, eps, rerank, coder, sample, chunk_rows, seed = opts.values()
        public_ids = np.arange(n, dtype=np.int64) if ids is None else check_ids(ids, n)
        folder = Path(path)
        if (folder / "index.sdx").exists():
            raise InvalidInputError(f"{folder} already holds an index")
        folder.mkdir(parents=True, exist_ok=True)
        normalize = metric == "cosine"
        rng = np.random.default_rng(seed)

        # 1. sample -> codec and hierarchical balanced clustering (the only k-means; the data is never in RAM)
        take = np.sort(rng.choice(n, min(n, sample), replace=False))
        xs = np.empty((take.shape[0], dim), np.float32)
        for s in range(0, take.shape[0], chunk_rows):  # in chunks: a gathered copy of the whole sample is not needed
            xs[s:s + chunk_rows] = check_vectors(np.asarray(data[take[s:s + chunk_rows]]), dim, "vectors",
                                                 normalize=normalize)
            drop_pages(data)  # random rows touch a page each: unmapped again, or they add up to the whole file
        if not coder.is_trained:
            coder.train(xs)
        nlist = max(1, min(xs.shape[0], -(-n // list_size)))
        n_top = max(1, min(int(round(math.sqrt(nlist))), xs.shape[0]))
        tops = kmeans(xs, n_top, 10, seed=seed, progress=progress, desc="SPANN top clusters")
        top_of, _ = assign(xs, tops)
        counts = np.bincount(top_of, minlength=n_top)
        leaves_per_top = np.maximum(1, np.round(counts * nlist / xs.shape[0])).astype(np.int64)
        leaves_per_top = np.minimum(leaves_per_top, np.maximum(counts, 1))
        leaf_start = np.zeros(n_top + 1, np.int64)
        leaf_start[1:] = np.cumsum(leaves_per_top)
        nlist = int(leaf_start[-1])
        centroids = np.empty((nlist, dim), np.float32)
        bar = progress_bar(n_top, "SPANN leaves", progress, unit="top")
        for j in range(n_top):
            members = xs[top_of == j]
            kj = int(leaves_per_top[j])
            if members.shape[0] == 0:
                centroids[leaf_start[j]:leaf_start[j + 1]] = tops[j]
            elif kj == 1:
                centroids[leaf_start[j]] = members.mean(0)
            else:
                centroids[leaf_start[j]:leaf_start[j + 1]] = kmeans(members, kj, 10, seed=seed + j, progress=False)
            bar.update(1)
        bar.close()
        del xs
        cnorms = np.einsum("ij,ij->i", centroids, centroids)
        tnorms = np.einsum("ij,ij->i", tops, tops)

        # 2. pass over the data: closure assignment, and the normalised float32 copy for re-ranking
        vec_path, post_path = folder / "vectors.f32", folder / "postings.u8"
        vmm = reserved_memmap(vec_path, np.float32, (n, dim))
        table = np.empty((n, max_replicas), np.int32)
        ntop = min(_TOPS_PER_VECTOR, n_top)
        bar = progress_bar(n, "SPANN assignment", progress, unit="vec")
        for s in range(0, n, chunk_rows):
            x = _rows(data, s, min(n, s + chunk_rows), dim, normalize)
            vmm[s:s + x.shape[0]] = x
            near = np.argpartition(_sqdist(x, tops, tnorms), ntop - 1, axis=1)[:, :ntop] if ntop < n_top else \
                np.broadcast_to(np.arange(n_top), (x.shape[0], n_top))
            cand_d = np.full((x.shape[0], _CANDIDATES), np.inf, np.float32)
            cand_l = np.full((x.shape[0], _CANDIDATES), -1, np.int64)
            for j in np.unique(near):
                rows = np.flatnonzero((near == j).any(1))
                lo, hi = leaf_start[j], leaf_start[j + 1]
                d = _sqdist(x[rows], centroids[lo:hi], cnorms[lo:hi])
                both_d = np.concatenate([cand_d[rows], d], axis=1)
                both_l = np.concatenate([cand_l[rows], np.broadcast_to(np.arange(lo, hi), d.shape)], axis=1)
                if both_d.shape[1] > _CANDIDATES:
                    part = np.argpartition(both_d, _CANDIDATES - 1, axis=1)[:, :_CANDIDATES]
                    both_d = np.take_along_axis(both_d, part, 1)
                    both_l = np.take_along_axis(both_l, part, 1)
                cand_d[rows, :both_d.shape[1]] = both_d
                cand_l[rows, :both_l.shape[1]] = both_l
            order = np.argsort(cand_d, axis=1)
            SK.closure_assign(np.ascontiguousarray(np.take_along_axis(cand_d, order, 1)),
                              np.ascontiguousarray(np.take_along_axis(cand_l, order, 1)), centroids,
                              np.float32(closure_eps), bool(rng_rule), table[s:s + x.shape[0]])
            # the file pages just read or written leave the process (they stay in the page cache), so the
            # resident set stays one chunk however large the data is
            drop_pages(vmm)
            drop_pages(data)
            bar.update(x.shape[0])
        bar.close()
        vmm.flush()

        # 3. pass over the normalised copy: encode and scatter the codes into list order
        sizes = np.bincount(table[table >= 0], minlength=nlist)
        offsets = np.zeros(nlist + 1, np.int64)
        offsets[1:] = np.cumsum(sizes)
        total = int(offsets[-1])
        pmm = reserved_memmap(post_path, np.uint8, (max(total, 1), coder.code_size))
        slots = np.empty(total, np.int32)
        cursor = offsets[:-1].copy()
        bar = progress_bar(n, "SPANN postings", progress, unit="vec")
        # small steps: the scattered writes of one step touch about one page per entry, all of which stay mapped
        # until the step's drop_pages
        step = max(1, min(chunk_rows, 4096))
        for s in range(0, n, step):
            x = np.asarray(vmm[s:s + step])
            SK.scatter_codes(table[s:s + x.shape[0]], coder.encode(x), s, cursor, pmm, slots)
            drop_pages(pmm)
            drop_pages(vmm)
            bar.update(x.shape[0])
        bar.close()
        del table
        pmm.flush()
        list_crc = np.empty(nlist, np.uint32)
        for i in range(nlist):
            list_crc[i] = zlib.crc32(memoryview(pmm[offsets[i]:offsets[i + 1]]).cast("B"))
            if i % 64 == 63:
                drop_pages(pmm)
        rows_per_block = max(1, _BLOCK // (4 * dim))
        block_crc = np.empty(-(-n // rows_per_block), np.uint32)
        for b in range(block_crc.shape[0]):
            block_crc[b] = _crc(np.asarray(vmm[b * rows_per_block:(b + 1) * rows_per_block]))
            drop_pages(vmm)
        vmm.flush()
        del pmm, vmm
        for p in (post_path, vec_path):
            fsync_path(p)
        codec_meta, codec_arrays = coder.state()
        meta = {"dim": dim, "metric": metric, "count": n, "entries": total, "nlist": nlist, "n_top": n_top,
                "list_size": list_size, "closure_eps": float(closure_eps), "max_replicas": max_replicas,
                "rng_rule": bool(rng_rule),
                "nprobe": nprobe, "eps": float(eps), "rerank": rerank, "codec": codec_meta,
                "block_rows": rows_per_block}
        arrays = {"centroids": centroids, "offsets": offsets, "slots": slots, "ids": public_ids,
                  "list_crc": list_crc, "block_crc": block_crc, "tops": tops, "leaf_start": leaf_start,
                  **{f"codec.{k}": v for k, v in codec_arrays.items()}}
        save_arrays(folder / "index.sdx", cls.kind, meta, arrays)
        return cls.open(folder)

    # ---- open ----------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = False) -> SPANNIndex:
        """Open a built index. The small in-memory part is always checksummed; ``verify=True`` also checks every
        posting list and vector block (reads the whole files; :meth:`verify` does it later)."""
        folder = Path(path)
        if not folder.is_dir():
            raise MissingFileError(f"no SPANN index folder at {folder}")
        _, meta, arrays = load_arrays(folder / FOLDER_HEADER, mmap=False, verify=True, expected_kind=cls.kind)
        try:
            dim, n, total, nlist = (int(meta[k]) for k in ("dim", "count", "entries", "nlist"))
            meta_int(meta, "nprobe", 1), meta_int(meta, "rerank", 1), check_real(meta["eps"], "eps", 0.0)
            codec = Codec.from_state(meta["codec"], {k[6:]: v for k, v in arrays.items() if k.startswith("codec.")})
            if not isinstance(codec, AffineCodec) or codec.dim != dim:
                raise ValueError(f"codec {codec!r} does not fit the index")
            rows = max(1, _BLOCK // (4 * dim))
            want = {"centroids": ((nlist, dim), np.float32), "offsets": ((nlist + 1,), np.int64),
                    "slots": ((total,), np.int32), "ids": ((n,), np.int64), "list_crc": ((nlist,), np.uint32),
                    "block_crc": ((-(-n // rows),), np.uint32)}
            for name, (shape, dtype) in want.items():
                if arrays[name].shape != shape or arrays[name].dtype != dtype:
                    raise ValueError(f"array {name!r} has shape {arrays[name].shape} {arrays[name].dtype}, "
                                     f"expected {shape} {np.dtype(dtype)}")
            if "tops" in arrays:  # the top level of the clustering (absent in files of older builds)
                ls = arrays["leaf_start"]
                if arrays["tops"].ndim != 2 or arrays["tops"].shape[1] != dim or arrays["tops"].dtype != np.float32 \
                        or ls.dtype != np.int64 or \
                        ls.shape != (arrays["tops"].shape[0] + 1,) or ls[0] != 0 or ls[-1] != nlist or \
                        (np.diff(ls) < 0).any():
                    raise ValueError("the top-level clustering (tops, leaf_start) is inconsistent")
            off = arrays["offsets"]
            if off[0] != 0 or off[-1] != total or (np.diff(off) < 0).any():
                raise ValueError("posting-list offsets are inconsistent")
            if total and (arrays["slots"].min() < 0 or arrays["slots"].max() >= n):
                raise ValueError("a posting entry points outside the vectors")
            sizes = {"postings.u8": max(total, 1) * codec.code_size, "vectors.f32": n * dim * 4}
            for name, size in sizes.items():
                actual = (folder / name).stat().st_size
                if actual != size:
                    raise ValueError(f"{name} is {actual} bytes, expected {size} (truncated or foreign file)")
        except FileNotFoundError as exc:
            raise CorruptFileError(f"{folder}: missing file ({exc.filename})") from None
        except (KeyError, TypeError, ValueError, CorruptFileError) as exc:
            raise CorruptFileError(f"{folder}: inconsistent SPANN index ({exc})") from None
        postings = np.memmap(folder / "postings.u8", np.uint8, mode="r", shape=(max(total, 1), codec.code_size))
        vectors = np.memmap(folder / "vectors.f32", np.float32, mode="r", shape=(n, dim))
        index = cls(folder, meta, arrays, codec, postings, vectors)
        if verify:
            index.verify()
        return index

    def verify(self) -> None:
        """Check the CRC-32 of every posting list and vector block; raises CorruptFileError naming the first bad
        one. Reads both files once."""
        for i in range(self.nlist):
            chunk = self._postings[self.offsets[i]:self.offsets[i + 1]]
            if zlib.crc32(memoryview(np.ascontiguousarray(chunk)).cast("B")) != int(self._list_crc[i]):
                raise CorruptFileError(f"{self.path}: posting list {i} is corrupted (checksum mismatch)")
        rows = max(1, _BLOCK // (4 * self.dim))
        for b, start in enumerate(range(0, self.ntotal, rows)):
            if _crc(np.asarray(self._vectors[start:start + rows])) != int(self._block_crc[b]):
                raise CorruptFileError(f"{self.path}: vector block {b} (rows {start}..) is corrupted")

    # ---- the index contract --------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> SPANNIndex:
        """:meth:`open` under the index contract's name and defaults: ``path`` is the index folder (or its
        ``index.sdx``); ``verify`` checks every posting list and vector block; without ``mmap`` the postings and
        vectors are read into memory."""
        folder = Path(path)
        if folder.is_file():  # the folder's header, or a file of another kind
            kind = read_kind(folder)
            if kind != cls.kind:
                raise CorruptFileError(f"{path}: file holds a {kind}, not a {cls.kind}")
            folder = folder.parent
        index = cls.open(folder, verify)
        if not mmap:
            index._postings, index._vectors = np.array(index._postings), np.array(index._vectors)
        return index

    def save(self, path: str | os.PathLike) -> None:
        """Copy the index to the folder ``path`` (created; must not hold an index yet). The header is written
        last, so an interrupted copy is a folder without an index, never a damaged one."""
        folder = Path(path)
        if folder.resolve() == self.path.resolve():
            return
        if (folder / FOLDER_HEADER).exists():
            raise InvalidInputError(f"{folder} already holds an index")
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in (("postings.u8", self._postings), ("vectors.f32", self._vectors)):
            if isinstance(arr, np.memmap):
                shutil.copyfile(self.path / name, folder / name)
            else:  # loaded with mmap=False
                arr.tofile(folder / name)
        shutil.copyfile(self.path / FOLDER_HEADER, folder / FOLDER_HEADER)

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        raise UnsupportedOperationError("SPANNIndex is built once (SPANNIndex.build) and cannot add vectors; "
                                        "build a new index with them")

    def remove(self, ids: Any) -> int:
        raise UnsupportedOperationError("SPANNIndex is built once (SPANNIndex.build) and cannot remove vectors; "
                                        "build a new index without them, or filter its results")

    @property
    def ids(self) -> np.ndarray:
        """Public ids, one per vector, in vector order (read-only; not a copy)."""
        return self._ids

    def __contains__(self, id_: int) -> bool:
        try:
            return bool((self._ids == operator.index(id_)).any())
        except TypeError:
            return False

    # ---- properties ----------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.ids.shape[0])

    def __len__(self) -> int:
        return self.ntotal

    @property
    def nlist(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes this index holds in the process's own memory (not the memory-mapped files)."""
        return int(sum(a.nbytes for a in (self.centroids, self._cnorms, self.offsets, self.slots, self.ids)))

    @property
    def disk_nbytes(self) -> int:
        return int(self._postings.nbytes + self._vectors.nbytes)

    def list_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __repr__(self) -> str:
        return (f"SPANNIndex({str(self.path)!r}, dim={self.dim}, metric={self.metric!r}, ntotal={self.ntotal}, "
                f"nlist={self.nlist}, entries={self.slots.shape[0]})")

    # ---- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, nprobe: int | None = None, eps: float | None = None,
               rerank: int | None = None, filter: Any = None, threads: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours: read the lists of the ``nprobe`` nearest centroids whose distance is within
        ``(1 + eps)`` of the nearest's, score their codes, re-rank the best ``rerank`` (>= k) exactly.
        ``filter`` (a bool array indexed by id, or an array of ids): only these ids may be returned (exact search
        over them when they are few)."""
        q = check_vectors(queries, self.dim, "queries", normalize=self.metric == "cosine")
        k = check_k(k, self.ntotal)
        allowed = None if filter is None else self._slots_map().allowed_mask(filter)
        return self.search_masked(q, k, nprobe, eps, rerank, allowed, False, threads)

    def _slots_map(self) -> IdMap:
        if self._idmap is None:
            self._idmap = IdMap(np.array(self._ids))
        return self._idmap

    def search_masked(self, q: np.ndarray, k: int, nprobe: int | None, eps: float | None, rerank: int | None,
                     allowed: np.ndarray | None, invert: bool, threads: int | None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` of checked queries ``q`` among the vectors (slots) where the uint8 mask ``allowed``
        is non-zero (zero with ``invert``; None: all): for an owner that keeps its own tombstones (a database
        collection's build-once index)."""
        nprobe = min(self.nlist, self.nprobe if nprobe is None else check_positive_int(nprobe, "nprobe"))
        eps = self.eps if eps is None else check_real(eps, "eps", 0.0)
        cap = max(k, self.rerank if rerank is None else check_positive_int(rerank, "rerank", maximum=MAX_RESULTS))
        threads = check_threads(threads)
        nq = q.shape[0]
        if allowed is not None and not invert:
            n_allowed = int(np.count_nonzero(allowed))
            if n_allowed <= max(4 * k, self.ntotal * nprobe / max(1, self.nlist)):
                # few allowed vectors: exact search over them beats reading lists that hold few of them
                with num_threads(threads):
                    d, s = exact_knn_subset(self.metric, q, self._vectors, allowed, k)
                return public_results(METRIC_CODES[self.metric], d, s, np.asarray(self.ids))
        probes, pd = self._nearest_lists(q, nprobe)
        # pruning compares distances, not squared distances: (1 + eps) on the distance is (1 + eps)^2 here
        probes[pd > _prune_factor(eps) * pd[:, :1]] = -1
        qt, qc = self.codec.prepare(q)
        out_d = np.empty((nq, k), np.float32)
        out_s = np.empty((nq, k), np.int32)
        nthreads = batch_threads(threads, nq)
        postings = np.asarray(self._postings)  # a plain ndarray view: numba caches kernels typed on those
        sc = AffineCodes(qt, qc, postings, postings.view(np.float32), self.codec.bits, self.codec.half)
        visited, tags = self._scratch.take(nthreads, self.ntotal)
        try:
            scan_lists(sc, nthreads, probes, self.offsets, self.slots, cap, k,
                       np.zeros(1, np.uint8) if allowed is None else allowed, allowed is not None, invert,
                       visited, tags, True, METRIC_CODES[self.metric], q, np.asarray(self._vectors), out_d, out_s)
        finally:
            self._scratch.give((visited, tags))
        return public_results(METRIC_CODES[self.metric], out_d, out_s, np.asarray(self.ids))

    def _nearest_lists(self, q: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``nprobe`` nearest lists of each query, nearest first, and their squared centroid distances;
        (nq, nprobe) each, padded with (-1, inf) where fewer lists were considered."""
        n_top = 0 if self._tops is None else self._tops.shape[0]
        if q.shape[0] > _FEW_QUERIES or not 0 < self.top_probe < n_top:
            d = _sqdist(q, self.centroids, self._cnorms)
            probes = np.argpartition(d, nprobe - 1, axis=1)[:, :nprobe] if nprobe < self.nlist else \
                np.broadcast_to(np.arange(self.nlist), d.shape)
            pd = np.take_along_axis(d, probes, 1)
            order = np.argsort(pd, axis=1)
            return (np.ascontiguousarray(np.take_along_axis(probes, order, 1), dtype=np.int64),
                    np.take_along_axis(pd, order, 1))
        near = np.argpartition(_sqdist(q, self._tops, self._tnorms), self.top_probe - 1, axis=1)[:, :self.top_probe]
        probes = np.full((q.shape[0], nprobe), -1, np.int64)
        pd = np.full((q.shape[0], nprobe), np.inf, np.float32)
        for i in range(q.shape[0]):
            leaves = np.concatenate([np.arange(self._leaf_start[t], self._leaf_start[t + 1]) for t in near[i]])
            d = _sqdist(q[i:i + 1], self.centroids[leaves], self._cnorms[leaves])[0]
            take = min(nprobe, leaves.shape[0])
            best = np.argpartition(d, take - 1)[:take] if take < leaves.shape[0] else np.arange(take)
            best = best[np.argsort(d[best])]
            probes[i, :take] = leaves[best]
            pd[i, :take] = d[best]
        return probes, pd

    def lists_read(self, queries: Any, *, nprobe: int | None = None, eps: float | None = None) -> np.ndarray:
        """How many lists each query would read after pruning (for tuning ``eps``)."""
        q = check_vectors(queries, self.dim, "queries", normalize=self.metric == "cosine")
        nprobe = min(self.nlist, self.nprobe if nprobe is None else check_positive_int(nprobe, "nprobe"))
        eps = self.eps if eps is None else check_real(eps, "eps", 0.0)
        d = np.sort(_sqdist(q, self.centroids, self._cnorms), axis=1)[:, :nprobe]
        return (d <= _prune_factor(eps) * d[:, :1]).sum(1)

    def release_pages(self) -> None:
        """Unmap the file pages search has touched from this process (they stay in the OS page cache)."""
        drop_pages(self._postings)
        drop_pages(self._vectors)
