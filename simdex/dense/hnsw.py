"""Hierarchical Navigable Small World graph index (Malkov & Yashunin, "Efficient and robust approximate nearest
neighbor search using Hierarchical Navigable Small World graphs", 2018).

The whole algorithm lives in two files: this one holds the arrays and the rules (validation, batching, deletes,
persistence); :mod:`simdex.dense._hnsw_kernels` holds the numba kernels that build the graph, and the graph search
shared by every graph index (:mod:`simdex.core.graph`) searches it, scoring float32 vectors.
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np

from .._numba import batch_threads, num_threads, run_threads
from .._progress import progress_bar
from .._validate import MAX_DEGREE, MAX_RESULTS, check_positive_int, check_real, check_threads
from ..errors import CorruptFileError
from ..index import Index, meta_int
from ..core import graph as G
from ..core.beam import ScratchPool, thread_scratch
from ..core.scorer import Vectors
from . import _hnsw_kernels as K
from ..core.exact import exact_knn_subset
from .calibration import RecallCalibrated, calibrating

# Batches of parallel insertion grow with the graph (a batch never exceeds this fraction of the nodes already
# linked, so each new point still sees a graph much larger than its batch) and are capped so the brute-force
# distances inside a batch stay a small part of the work.
_BATCH_MIN = 32
_BATCH_MAX = 128
_CONNECT_CHUNK = 4  # new nodes handed to a thread at a time
_BATCH_FRACTION = 0.05
# consolidation rebuilds the graph instead of repairing it when more than this fraction of the nodes is deleted
_REBUILD_FRACTION = 0.5


class HNSWIndex(RecallCalibrated, Index):
    """Approximate k-NN on a layered proximity graph.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"l2", "ip", "cosine"}
        Distance; see :mod:`simdex.metrics` for what ``search`` returns.
    M : int, default 16
        Links per node on the upper layers; layer 0 keeps up to ``2 * M``. More links raise recall at a given
        ``ef`` and cost memory (``8 * M + 4`` bytes per node) and build time.
    ef_construction : int, default 200
        Candidate pool size while inserting. Higher builds a better graph, linearly slower.
    ef_search : int, default 64
        Default pool size while searching (``search(ef=...)`` overrides it); always at least k.
    seed : int, default 0
        Seed of the level draw; the same data, calls and seed build the same graph whatever the thread count.
    consolidate_threshold : float, default 0.1
        ``remove`` only marks vectors deleted (they are never returned) until this fraction of the stored vectors
        is deleted; then the graph is repaired around them and their space is reclaimed (see :meth:`consolidate`).

    Memory per vector: ``4 * dim`` (float32 vector) ``+ 8 * M + 4`` (layer-0 links) ``+ 30`` (ids, level,
    flags, id index), plus about ``(4 * M + 4) / (M - 1)`` for the upper layers.
    """

    kind = "HNSWIndex"
    _volatile_arrays = ("deleted",)

    def __init__(self, dim: int, metric: str = "l2", M: int = 16, ef_construction: int = 200,
                 ef_search: int = 64, seed: int = 0, consolidate_threshold: float = 0.1) -> None:
        super().__init__(dim, metric)
        self.M = check_positive_int(M, "M", minimum=2, maximum=MAX_DEGREE)
        self.M0 = 2 * self.M
        self.ef_construction = check_positive_int(ef_construction, "ef_construction")
        self.ef_search = check_positive_int(ef_search, "ef_search")
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.consolidate_threshold = check_real(consolidate_threshold, "consolidate_threshold", 0.0, 1.0,
                                                low_open=True)
        self._level_mult = 1.0 / np.log(self.M)
        self._n = 0  # slots in use (live + deleted-not-yet-consolidated)
        self._n_up = 0  # upper-layer rows in use
        self._n_deleted = 0
        self._consolidated = 0  # slots dropped by consolidation over the index's life
        self._entry = -1
        self._max_level = -1
        self._vectors = np.empty((0, self.dim), np.float32)
        self._links0 = np.empty((0, self.M0 + 1), np.int32)
        self._links_up = np.empty((0, self.M + 1), np.int32)
        self._up_offset = np.empty(0, np.int32)
        self._levels = np.empty(0, np.int8)
        self._deleted = np.empty(0, np.uint8)
        self._scratch = ScratchPool()
        self._write_lock = threading.RLock()

    # ---- storage helpers -----------------------------------------------------------------------------------------
    def _num_slots(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return self._vectors.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (vectors, graph, ids)."""
        arrays = (self._vectors, self._links0, self._links_up, self._up_offset, self._levels, self._deleted)
        return int(sum(a.nbytes for a in arrays)) + self._idmap.nbytes

    def _materialize(self) -> None:
        """Copy memory-mapped (read-only) arrays into memory before the first change."""
        for name in ("_vectors", "_links0", "_links_up", "_up_offset", "_levels", "_deleted"):
            arr = getattr(self, name)
            if not arr.flags.writeable or isinstance(arr, np.memmap):
                setattr(self, name, np.array(arr))
        if not self._idmap.slot_ids.flags.writeable:
            self._idmap.slot_ids = np.array(self._idmap.slot_ids)

    def _reserve(self, n_new: int, n_up_new: int) -> None:
        need = self._n + n_new
        if need > self._vectors.shape[0]:
            # exact growth when one call adds most of the data, 1.5x amortised growth for streams of small adds
            target = need if n_new >= self._n else max(need, int(self._vectors.shape[0] * 1.5))
            self._vectors = self._grow_to(self._vectors, target)
            self._links0 = self._grow_to(self._links0, target)
            self._up_offset = self._grow_to(self._up_offset, target)
            self._levels = self._grow_to(self._levels, target)
            self._deleted = self._grow_to(self._deleted, target)
        need_up = self._n_up + n_up_new
        if need_up > self._links_up.shape[0]:
            self._links_up = self._grow_to(self._links_up, max(need_up, int(self._links_up.shape[0] * 1.5)))

    def _reserve_rows(self, n: int) -> None:
        with self._write_lock:
            self._materialize()
            self._reserve(n, 0)

    @staticmethod
    def _grow_to(arr: np.ndarray, rows: int) -> np.ndarray:
        out = np.zeros((rows,) + arr.shape[1:], arr.dtype)  # zeros: saved files hold no stale bytes
        out[:arr.shape[0]] = arr
        return out

    # ---- add -----------------------------------------------------------------------------------------------------
    @calibrating
    def add(self, vectors: Any, ids: Any = None, *, threads: int | None = None,
            progress: bool | None = None) -> np.ndarray:
        """Insert vectors (n, dim); returns their ids (int64). ``ids`` default to the next free integers.

        Runs in parallel on ``threads`` threads (default: all). ``progress`` shows a progress bar (default: when
        adding more than 100,000 vectors from a terminal). If the call is interrupted between batches, the index
        holds a prefix of the vectors, consistently.
        """
        x, new_ids = self._check_add(vectors, ids)
        threads = check_threads(threads)
        with self._write_lock:
            self._materialize()
            self._insert(x, new_ids, threads, progress)
            self._scratch.clear()
        return new_ids

    def _draw_levels(self, n: int) -> np.ndarray:
        # seeded by the number of slots ever used, so levels never repeat between calls or after consolidation
        rng = np.random.default_rng([self.seed, self._n + self._consolidated])
        u = rng.random(n)
        levels = np.floor(-np.log1p(-u) * self._level_mult)
        return np.minimum(levels, 60).astype(np.int8)

    def _insert(self, x: np.ndarray, new_ids: np.ndarray, threads: int | None, progress: bool | None) -> None:
        n_new = x.shape[0]
        levels = self._draw_levels(n_new)
        n_up_new = int(levels.astype(np.int64).sum())
        self._reserve(n_new, n_up_new)
        start = self._n
        self._vectors[start:start + n_new] = x
        self._levels[start:start + n_new] = levels
        self._deleted[start:start + n_new] = 0
        self._links0[start:start + n_new, 0] = 0
        offsets = np.full(n_new, -1, np.int64)
        has_up = levels > 0
        offsets[has_up] = self._n_up + np.concatenate([[0], np.cumsum(levels[has_up].astype(np.int64))[:-1]])
        self._up_offset[start:start + n_new] = offsets
        self._links_up[self._n_up:self._n_up + n_up_new, 0] = 0
        fwd_dup = np.zeros((self._links_up.shape[0], self.M), np.float32)
        fwd_d0 = np.zeros((_BATCH_MAX, self.M), np.float32)
        bar = progress_bar(n_new, "HNSW build", progress)
        with num_threads(threads) as nthreads:
            visited, tags = thread_scratch(nthreads, self._vectors.shape[0])
            pos = 0
            while pos < n_new:
                linked = self._n
                size = int(min(_BATCH_MAX, max(_BATCH_MIN, linked * _BATCH_FRACTION), n_new - pos))
                s, e = start + pos, start + pos + size
                # per-node costs vary (levels, neighbourhoods): nodes are handed out a few at a time
                run_threads(K.connect_rows, e - s, nthreads, self._vectors, self._metric_code, self._links0,
                            self._links_up, self._up_offset, self._levels, self._deleted, max(self._entry, 0),
                            self._max_level, self._entry >= 0, s, e, self.ef_construction, self.M, fwd_d0, fwd_dup,
                            visited, tags, chunk=_CONNECT_CHUNK)
                self._link_back(s, e, fwd_d0, fwd_dup, nthreads)
                top = int(np.argmax(self._levels[s:e]))
                if self._levels[s + top] > self._max_level:
                    self._entry = s + top
                    self._max_level = int(self._levels[s + top])
                # commit the batch: it is now fully linked and searchable
                self._n = e
                self._n_up += int(levels[pos:pos + size].astype(np.int64).sum())
                self._idmap.append(new_ids[pos:pos + size])
                pos += size
                bar.update(size)
        bar.close()

    def _link_back(self, s: int, e: int, fwd_d0: np.ndarray, fwd_dup: np.ndarray, nthreads: int) -> None:
        """Phase B of a batch: add the reverse links of the batch's out-links, layer by layer."""
        nodes_all = np.arange(s, e, dtype=np.int64)
        top = int(self._levels[s:e].max())
        for layer in range(top + 1):
            if layer == 0:
                links, cap = self._links0, self.M0
                nodes = nodes_all
                rows = nodes
                fwd, fwd_rows = fwd_d0, np.arange(e - s, dtype=np.int64)
            else:
                links, cap = self._links_up, self.M
                nodes = nodes_all[self._levels[s:e] >= layer]
                rows = self._up_offset[nodes].astype(np.int64) + layer - 1
                fwd, fwd_rows = fwd_dup, rows
            n_edges = int(links[rows, 0].sum())
            if n_edges == 0:
                continue
            dst = np.empty(n_edges, np.int32)
            src = np.empty(n_edges, np.int32)
            dist = np.empty(n_edges, np.float32)
            K.collect_reverse_edges(links, rows, nodes, fwd, fwd_rows, dst, src, dist)
            order = np.argsort(dst, kind="stable")
            dst, src, dist = dst[order], src[order], dist[order]
            group_start = np.concatenate([[0], np.flatnonzero(dst[1:] != dst[:-1]) + 1, [n_edges]])
            run_threads(K.add_reverse_links, len(group_start) - 1, nthreads, self._vectors, self._metric_code, links,
                        self._up_offset, layer, cap, dst, src, dist, group_start.astype(np.int64), chunk=256)

    # ---- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, ef: int | None = None, filter: Any = None,
               threads: int | None = None, target_recall: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest neighbours of each query.

        Parameters
        ----------
        queries : array (nq, dim)
        k : int, 1 <= k <= ntotal
        ef : int, optional
            Candidate pool size (default ``ef_search``; raised to k if smaller). Higher is slower and more exact.
        filter : bool array indexed by id, or array of ids, optional
            Only these ids may be returned. When few vectors are allowed the search is exact over them;
            otherwise the graph is traversed through all nodes and only allowed ones are collected.
        threads : int, optional
            Threads for the batch (default: all).
        target_recall : float in (0, 1], optional
            Instead of ``ef``: the recall@k wanted; ef is read from the index's recall curve (measured on self-
            queries the first time, :mod:`simdex.dense.calibration`).

        Returns
        -------
        distances : float32 (nq, k), ascending; ids : int64 (nq, k). Missing results are (inf, -1).
        """
        return self._search(queries, k, ef, None, filter, threads, target_recall)

    def _rerank_count(self, k: int, ef: int, rerank: int | None) -> int:
        """Candidates a search re-scores at the end: a float32 graph's pool is scored exactly already."""
        return ef

    def _search(self, queries: Any, k: int, ef: int | None, rerank: int | None, filter: Any, threads: int | None,
                target_recall: float | None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search`, and :class:`~simdex.quant.HNSWQuantIndex`'s with its ``rerank``: an exact scan when
        few slots are allowed, else the graph search."""
        q, k, allowed, threads = self._check_search(queries, k, filter, threads)
        ef = self._effort_for(target_recall, k, ef)
        ef = max(k, self.ef_search if ef is None else check_positive_int(ef, "ef", maximum=MAX_RESULTS))
        n_rerank = self._rerank_count(k, ef, rerank)
        nq = q.shape[0]
        out_d = np.empty((nq, k), np.float32)
        out_s = np.empty((nq, k), np.int32)
        invert = False
        if self._n_deleted:
            if allowed is None:  # tombstones only: the kernel skips deleted slots, no per-query mask
                allowed, invert = self._deleted[:self._n], True
            else:
                allowed = allowed & (self._deleted[:self._n] == 0)
        if allowed is not None and self._prefer_exact(
                self._n - self._n_deleted if invert else int(np.count_nonzero(allowed)), ef):
            if invert:
                allowed = (allowed == 0).view(np.uint8)
            with num_threads(threads):
                out_d[:], out_s[:] = exact_knn_subset(self.metric, q, self._vectors[:self._n], allowed, k)
            return self._results(out_d, out_s)
        ids = np.empty((nq, k), np.int64)
        self._search_graph(q, k, ef, n_rerank, allowed, invert, batch_threads(threads, nq), out_d, out_s, ids)
        return out_d, ids

    def _search_slot_ranges(self, q: np.ndarray, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int, ef: int
                            ) -> tuple[np.ndarray, np.ndarray]:
        """k-NN of ``q[rows[r]]`` among the live slots ``lo[r] <= slot < hi[r]``, for a window index node (one
        kernel call for a batch of queries with their own ranges; threads as set by the caller). Returns internal
        distances float32 (len(rows), k) and slots int32, (inf, -1) padded."""
        dist = np.empty((rows.shape[0], k), np.float32)
        slots = np.empty((rows.shape[0], k), np.int32)
        scratch = self._scratch.take(max(1, min(numba.get_num_threads(), rows.shape[0])), self._n)
        try:
            self._ranges_kernel(q, rows, lo, hi, k, ef, dist, slots, scratch)
        finally:
            self._scratch.give(scratch)
        return dist, slots

    def _ranges_kernel(self, q: np.ndarray, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int, ef: int,
                       dist: np.ndarray, slots: np.ndarray, scratch: tuple[np.ndarray, np.ndarray]) -> None:
        """The kernel call of :meth:`_search_slot_ranges`, writing ``dist`` / ``slots``."""
        sc, fin = self._searcher(q, ef, ef, scratch[0].shape[0])
        G.search_batch_ranges(sc, fin, *self._graph(), rows, lo, hi, self._deleted[:self._n], k, ef, dist, slots,
                              *scratch)

    def _search_graph(self, q: np.ndarray, k: int, ef: int, n_rerank: int, allowed: np.ndarray | None,
                      invert: bool, nthreads: int, out_d: np.ndarray, out_s: np.ndarray, ids: np.ndarray) -> None:
        """Graph search of every query among all slots, or those with ``allowed[slot] != 0`` (``== 0`` with
        ``invert``), writing the public distances to ``out_d`` and the ids to ``ids`` (nq, k); ``out_s`` takes the
        slots."""
        sc, fin = self._searcher(q, ef, n_rerank, nthreads)
        scratch = self._scratch.take(nthreads, self._n)
        public = (self._metric_code, self._idmap.slot_ids, ids)
        try:
            if allowed is None:
                G.search_batch(sc, fin, *self._graph(), k, ef, False, out_d, out_s, *scratch, *public)
            else:
                G.search_batch_filtered(sc, fin, *self._graph(), k, ef, allowed, invert, out_d, out_s, *scratch,
                                        *public)
        finally:
            self._scratch.give(scratch)

    def _searcher(self, q: np.ndarray, ef: int, n_rerank: int, nthreads: int) -> tuple[Any, Any]:
        """The scorer and the finisher of a graph search for queries ``q`` (:mod:`simdex.core.graph`): nodes are
        scored from the float32 vectors and the pool's best are returned as they are (no re-ranking)."""
        return Vectors(self._metric_code, q, self._vectors), G.TopK()

    def _graph(self) -> tuple:
        """The graph arguments of the search kernels (:mod:`simdex.core.graph`)."""
        return self._links0, self._links_up, self._up_offset, self._entry, self._max_level

    def _prefer_exact(self, n_allowed: int, ef: int) -> bool:
        """Cost model for filtered search: a graph search that must collect ef allowed nodes expands about
        ef / selectivity nodes of degree up to M0, each distance a random memory access; exact search computes
        n_allowed distances. Measured on wordnet-minilm-384 (107k rows, single queries; table in
        docs/benchmarks.md), a graph "unit" and an exact distance cost about the same: exact wins below about 3%
        selectivity at ef=10-16, the graph above about 10%."""
        if n_allowed == 0:
            return True
        selectivity = n_allowed / max(1, self._n)
        graph_cost = ef * self.M0 / selectivity
        exact_cost = float(n_allowed)
        return exact_cost <= graph_cost

    # ---- remove --------------------------------------------------------------------------------------------------
    def remove(self, ids: Any) -> int:
        """Remove vectors by id. They are never returned again; their space is reclaimed by :meth:`consolidate`,
        which runs automatically once ``consolidate_threshold`` of the stored vectors are deleted."""
        slots = self._slots_for_removal(ids)
        with self._write_lock:
            self._tombstone(slots)
            if self._n_deleted > self.consolidate_threshold * self._n:
                self.consolidate()
        return int(slots.shape[0])

    def consolidate(self, threads: int | None = None, rebuild: bool = False) -> None:
        """Repair the graph around deleted nodes and compact the arrays (FreshDiskANN-style consolidation).

        Every live node that linked to a deleted node re-selects its links among its live neighbours and the
        deleted nodes' live neighbours; then deleted slots are dropped and the rest renumbered. O(n) time. With
        ``rebuild`` (and whenever more than half the nodes are deleted) a fresh graph of the live vectors is built
        instead: slower (a build), but under heavy churn repeated one-hop repairs wear a graph down (a database
        collection's graph after many rounds of churn: recall@10 0.67 repaired, 0.96 rebuilt, at ef 64).
        """
        with self._write_lock:
            if self._n_deleted == 0:
                return
            self._materialize()
            if rebuild or self._n_deleted > _REBUILD_FRACTION * self._n:
                self._rebuild(threads)
                return
            n = self._n
            deleted = self._deleted[:n]
            live_nodes = np.flatnonzero(deleted == 0).astype(np.int64)
            with num_threads(check_threads(threads)):
                K.repair_deleted(self._vectors, self._metric_code, self._links0, self._up_offset, 0, live_nodes,
                                 deleted, self.M0, self.M0 * (self.M0 + 1))
                for layer in range(1, self._max_level + 1):
                    nodes = live_nodes[self._levels[live_nodes] >= layer]
                    K.repair_deleted(self._vectors, self._metric_code, self._links_up, self._up_offset, layer,
                                     nodes, deleted, self.M, self.M * (self.M + 1))
                remap = self._idmap.compact()
                keep = remap[:n] >= 0
                levels = self._levels[:n][keep]
                old_offsets = self._up_offset[:n][keep].astype(np.int64)
                up_rows = np.concatenate([np.arange(o, o + lv) for o, lv in zip(old_offsets[levels > 0],
                                                                                 levels[levels > 0])]
                                         ) if (levels > 0).any() else np.empty(0, np.int64)
                new_offsets = np.full(levels.shape[0], -1, np.int64)
                new_offsets[levels > 0] = np.concatenate(
                    [[0], np.cumsum(levels[levels > 0].astype(np.int64))[:-1]])
                self._vectors = self._vectors[:n][keep]
                self._links0 = self._links0[:n][keep]
                self._links_up = self._links_up[up_rows.astype(np.int64)]
                K.remap_links(self._links0, remap.astype(np.int32))
                K.remap_links(self._links_up, remap.astype(np.int32))
            self._levels = levels
            self._up_offset = new_offsets.astype(np.int32)
            self._deleted = np.zeros(levels.shape[0], np.uint8)
            self._consolidated += self._n_deleted
            self._n = int(levels.shape[0])
            self._n_up = int(up_rows.shape[0])
            self._n_deleted = 0
            if self._n == 0:
                self._entry, self._max_level = -1, -1
            elif remap[self._entry] >= 0:
                self._entry = int(remap[self._entry])
            else:
                self._entry = int(np.argmax(self._levels))
                self._max_level = int(self._levels[self._entry])
            self._scratch.clear()

    def _rebuild(self, threads: int | None) -> None:
        """Build a fresh graph from the live vectors: when most nodes are deleted, one-hop repair cannot keep the
        survivors connected, and re-inserting the few that are left is cheaper anyway."""
        live = np.flatnonzero(self._deleted[:self._n] == 0)
        vectors = np.array(self._vectors[live])
        ids = self._idmap.slot_ids[live].copy()
        consolidated = self._consolidated + self._n_deleted
        fresh = HNSWIndex(self.dim, self.metric, M=self.M, ef_construction=self.ef_construction,
                          ef_search=self.ef_search, seed=self.seed, consolidate_threshold=self.consolidate_threshold)
        fresh._consolidated = consolidated
        if live.size:
            fresh._insert(vectors, ids, check_threads(threads), None)
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k not in ("_write_lock",)})

    def copy(self) -> HNSWIndex:
        """An independent deep copy (for copy-on-write updates while others keep searching the original).

        Taken under the write lock: a ``remove`` meanwhile (the database deletes from its main index while the
        optimizer copies it) would otherwise land between the copies of the arrays, leaving the copy's tombstones,
        ids and deletion count out of step (numpy releases the GIL while it copies large arrays)."""
        with self._write_lock:
            clone = type(self).__new__(type(self))  # a subclass's copy stays one (HNSWQuantIndex)
            clone.__dict__.update(self.__dict__)
            for name in ("_links0", "_links_up", "_up_offset", "_levels", "_deleted"):
                setattr(clone, name, np.array(getattr(self, name)))
            clone._vectors = self._copy_vectors()
            clone._idmap = self._idmap.copy()
            clone._scratch = ScratchPool()
            clone._write_lock = threading.RLock()
            self._copy_extra(clone)
            return clone

    def _copy_extra(self, clone: HNSWIndex) -> None:
        """Copy a subclass's own arrays into ``clone`` (under the write lock of :meth:`copy`)."""

    def _copy_vectors(self) -> np.ndarray:
        return np.array(self._vectors)

    # ---- access --------------------------------------------------------------------------------------------------
    def get_vectors(self, ids: Any) -> np.ndarray:
        return np.array(self._vectors[self._slots_for_removal(ids)])

    def graph_stats(self) -> dict[str, float]:
        """Degree statistics of layer 0 and the layer count, for diagnostics."""
        deg = self._links0[:self._n, 0]
        return {"nodes": self._n, "deleted": self._n_deleted, "levels": self._max_level + 1,
                "mean_degree": float(deg.mean()) if self._n else 0.0,
                "min_degree": int(deg.min()) if self._n else 0}

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        n = self._n
        meta = {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "seed": self.seed, "consolidate_threshold": self.consolidate_threshold, "count": n,
                "upper_rows": self._n_up, "entry": self._entry, "max_level": self._max_level,
                "deleted": self._n_deleted, "consolidated": self._consolidated}
        arrays = {"vectors": self._vectors[:n], "links0": self._links0[:n], "links_up": self._links_up[:self._n_up],
                  "up_offset": self._up_offset[:n], "levels": self._levels[:n], "deleted": self._deleted[:n]}
        meta.update(self._calibration_meta())
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> HNSWIndex:
        index = cls(meta_int(meta, "dim", 1), meta["metric"], M=meta_int(meta, "M", 2),
                    ef_construction=meta_int(meta, "ef_construction", 1), ef_search=meta_int(meta, "ef_search", 1),
                    seed=meta_int(meta, "seed"), consolidate_threshold=float(meta["consolidate_threshold"]))
        n, n_up = meta_int(meta, "count"), meta_int(meta, "upper_rows")
        expect = {"vectors": ((n, index.dim), np.float32), "links0": ((n, index.M0 + 1), np.int32),
                  "links_up": ((n_up, index.M + 1), np.int32), "up_offset": ((n,), np.int32),
                  "levels": ((n,), np.int8), "deleted": ((n,), np.uint8)}
        for name, (shape, dtype) in expect.items():
            arr = arrays[name]
            if arr.shape != shape or arr.dtype != dtype:
                raise CorruptFileError(f"array {name!r} has shape {arr.shape} {arr.dtype}, expected {shape} "
                                       f"{np.dtype(dtype)}")
        index._vectors, index._links0, index._links_up = arrays["vectors"], arrays["links0"], arrays["links_up"]
        index._up_offset, index._levels, index._deleted = arrays["up_offset"], arrays["levels"], arrays["deleted"]
        index._n, index._n_up = n, n_up
        index._entry, index._max_level = int(meta["entry"]), int(meta["max_level"])
        index._n_deleted = meta_int(meta, "deleted")
        index._consolidated = meta_int(meta, "consolidated")
        index._restore_calibration(meta)
        return index

    def _check_loaded(self) -> None:
        """Check the graph's invariants so that a damaged or hand-made file cannot make a kernel read out of
        bounds (the kernels do not check indices)."""
        super()._check_loaded()
        n, n_up = self._n, self._n_up
        if np.isnan(self._vectors).any() if n * self.dim < (1 << 28) else False:
            raise CorruptFileError("stored vectors contain NaN")
        if int(np.count_nonzero(self._deleted)) != self._n_deleted or \
                int(np.count_nonzero(self._idmap.slot_ids < 0)) != self._n_deleted:
            raise CorruptFileError("deleted-vector bookkeeping is inconsistent")
        levels = self._levels.astype(np.int64)
        if n and (levels.min() < 0 or levels.max() != self._max_level or not 0 <= self._entry < n
                  or levels[self._entry] != self._max_level):
            raise CorruptFileError("levels or entry point are inconsistent")
        if n == 0 and (self._entry != -1 or self._max_level != -1):
            raise CorruptFileError("entry point set in an empty index")
        has_up = levels > 0
        if int(levels.sum()) != n_up or (self._up_offset[~has_up] != -1).any():
            raise CorruptFileError("upper-layer offsets are inconsistent")
        if has_up.any():
            offs = self._up_offset[has_up].astype(np.int64)
            expected = np.concatenate([[0], np.cumsum(levels[has_up])[:-1]])
            if not np.array_equal(np.sort(offs), np.sort(expected)) or (offs + levels[has_up] > n_up).any():
                raise CorruptFileError("upper-layer offsets are inconsistent")
        for name, links, cap, limit in (("links0", self._links0, self.M0, n), ("links_up", self._links_up,
                                                                                 self.M, n)):
            if links.shape[0] == 0:
                continue
            deg = links[:, 0]
            if deg.min() < 0 or deg.max() > cap:
                raise CorruptFileError(f"{name}: degree out of range")
            used = np.arange(cap)[None, :] < deg[:, None]
            vals = links[:, 1:][used]
            if vals.size and (vals.min() < 0 or vals.max() >= limit):
                raise CorruptFileError(f"{name}: neighbour slot out of range")
