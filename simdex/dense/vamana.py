"""Vamana graph index with FreshDiskANN updates (Subramanya et al., "DiskANN: Fast Accurate Billion-point Nearest
Neighbor Search on a Single Node", NeurIPS 2019; Singh et al., "FreshDiskANN: A Fast and Accurate Graph-Based
ANN Index for Streaming Similarity Search", 2021).

One flat graph of out-degree at most R, searched greedily from a single entry point (the medoid). It is built by
inserting every point (beam search with a pool of ``L_build``, then RobustPrune of the visited nodes with
alpha = 1), then refined by a second pass with ``alpha`` > 1, which keeps some long edges so greedy search needs
fewer hops. Later inserts run the single FreshDiskANN insert with ``alpha``.

Updates run beside searches without stopping them:

- searches take no lock. Each one reads an immutable snapshot (:class:`_Graph`) of references to the arrays; a
  writer that must grow or replace an array publishes a new snapshot with one attribute assignment;
- writers replace adjacency rows in place; a row read while it changes mixes old and new neighbours, all valid
  slots (see :mod:`simdex.dense._vamana_kernels`);
- deletes only set a tombstone, checked when results are collected: a delete that returned before a search
  started is never in its results. Tombstoned nodes still route searches until :meth:`consolidate` repairs
  their in-neighbours (FreshDiskANN Algorithm 4) and frees their slots;
- a freed slot is reused by a later insert only once every search that started before it was freed has ended
  (epoch-based reclamation), so no search can find a recycled slot holding a different vector than it expects.

Writers take two locks among themselves: ``add`` holds both; ``remove`` (tombstones and the id map) only the
short write lock; ``consolidate`` holds the graph lock and takes the write lock only to pick the tombstones it
will free and, at the end, to free them, so deletes go on while it repairs the graph.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import numba
import numpy as np

from .._numba import batch_threads, num_threads
from .._progress import progress_bar
from .._validate import MAX_DEGREE, MAX_RESULTS, check_filter, check_positive_int, check_real, check_threads
from ..errors import CorruptFileError, InvalidInputError
from ..idmap import IdMap
from ..index import Index, meta_int, write_snapshot
from ..core import graph as G
from ..core.beam import ScratchPool, thread_scratch
from ..core.scorer import Vectors
from ..metrics import public_results
from . import _vamana_kernels as K
from ..core.exact import exact_knn_subset
from .calibration import RecallCalibrated, calibrating

# Batches of parallel insertion: as in HNSWIndex, a batch is a small fraction of the nodes already linked so that
# every new point still sees a graph much larger than its batch.
_BATCH_MIN = 32
_BATCH_MAX = 128
_BATCH_FRACTION = 0.05
# the refinement pass re-links nodes that are already in the graph, so its batches can be larger
_REFINE_BATCH = 256
# consolidation rebuilds the graph instead of repairing it when more than this fraction of the nodes is deleted:
# one-hop repair cannot keep a graph connected when most of each neighbourhood is gone
_REBUILD_FRACTION = 0.5
# out-lists may grow to this multiple of R through reverse links before they are pruned back to R (DiskANN's
# slack): pruning is O(R^2) distances, so pruning at every overflow would make each insert prune ~R lists
_SLACK = 1.3

# the upper layers a flat graph passes to the graph search (:func:`simdex.core.graph.flat_layers`), made once:
# the kernel that makes them costs a single query about a microsecond
_NO_UPPER = (np.zeros((1, 1), np.int32), np.zeros(1, np.int32))

LIVE, DELETED, FREE = 0, 1, 2


class _Graph(NamedTuple):
    """What a search reads, published as one reference: arrays of ``capacity`` rows and the entry point."""

    vectors: np.ndarray  # float32 (capacity, dim)
    adj: np.ndarray  # int32 (capacity, room + 1): degree, then neighbour slots (room = R plus slack)
    state: np.ndarray  # uint8 (capacity,): LIVE, DELETED (tombstone) or FREE
    slot_ids: np.ndarray  # int64 (capacity,): the id in each slot, -1 where none
    entry: int  # slot of the entry point, -1 in an empty graph
    codes: np.ndarray | None = None  # uint8 (capacity, code_size): compressed vectors, for subclasses that use them


class _SlotMap(IdMap):
    """An :class:`IdMap` whose freed slots can be given to new ids (instead of only appending slots)."""

    keeps_sorted_index = True

    def extend(self, count: int) -> None:
        """Add ``count`` empty slots at the end."""
        self.slot_ids = np.concatenate([self.slot_ids, np.full(count, -1, np.int64)])

    def assign(self, slots: np.ndarray, ids: np.ndarray) -> None:
        """Give ``ids`` to the empty ``slots`` (the caller has checked that the ids are new and unique)."""
        slot_ids = self.slot_ids.copy()  # copy-on-write: a reader holding the old array sees it unchanged
        slot_ids[slots] = ids
        self._index_sorted(ids, slots.astype(np.int64))
        self.slot_ids = slot_ids


class VamanaIndex(RecallCalibrated, Index):
    """Approximate k-NN on a Vamana graph (DiskANN) with FreshDiskANN inserts, deletes and consolidation.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"l2", "ip", "cosine"}
        Distance; see :mod:`simdex.metrics`. The graph itself is always built in L2 (identical to cosine on the
        unit vectors cosine stores; for ``ip`` a proxy that works when norms are similar).
    R : int, default 64
        Out-degree that pruning keeps; a list may grow to ``ceil(1.3 R)`` through reverse links before it is
        pruned back. Memory ``4 * (ceil(1.3 R) + 1)`` bytes per node.
    L_build : int, default 100
        Beam (pool) size of the searches that insertion runs. Higher builds a better graph, slower.
    L_search : int, default 64
        Default beam size of ``search`` (``search(L=...)`` overrides it); at least k.
    alpha : float, default 1.2
        RobustPrune's distance factor (>= 1) for the second build pass, later inserts and consolidation.
    seed : int, default 0
        Seed of the insertion order of the first build; the same data, calls and seed build the same graph
        whatever the thread count.
    consolidate_threshold : float, default 0.1
        ``remove`` sets tombstones until this fraction of the stored nodes is deleted, then consolidates.
    background : bool, default False
        Run that automatic consolidation in a background thread (searches go on; writers wait for it) instead of
        inside ``remove``. :meth:`wait` waits for it.

    Memory per vector: ``4 * dim`` (float32 vector) ``+ 4 * (ceil(1.3 R) + 1)`` (out-list) ``+ 9`` (state, id) ``+ 16``
    (id index).
    """

    _effort_param = "L"

    kind = "VamanaIndex"
    _volatile_arrays = ("vectors", "adj", "state")

    def __init__(self, dim: int, metric: str = "l2", R: int = 64, L_build: int = 100, L_search: int = 64,
                 alpha: float = 1.2, seed: int = 0, consolidate_threshold: float = 0.1,
                 background: bool = False) -> None:
        super().__init__(dim, metric)
        self.R = check_positive_int(R, "R", minimum=2, maximum=MAX_DEGREE)
        self.room = int(np.ceil(self.R * _SLACK))
        self.L_build = check_positive_int(L_build, "L_build")
        self.L_search = check_positive_int(L_search, "L_search")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 1.0 <= float(alpha) <= 4.0:
            raise InvalidInputError(f"alpha must be a number in [1, 4]; got {alpha!r}")
        self.alpha = float(alpha)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.consolidate_threshold = check_real(consolidate_threshold, "consolidate_threshold", 0.0, 1.0,
                                                low_open=True)
        self.background = bool(background)
        self._idmap = _SlotMap()
        self._n = 0  # slots in use: live + deleted + free
        self._n_deleted = 0  # tombstones not yet consolidated
        self._g = self._empty_graph(0)
        self._graph_lock = threading.RLock()  # structure: add, consolidate (taken before _write_lock)
        self._write_lock = threading.RLock()  # ids, states, counters: add, remove, consolidate's bookkeeping
        self._scratch = ScratchPool()
        # epoch-based reclamation of freed slots (see the module docstring)
        self._epoch_lock = threading.Lock()
        self._epoch = 0
        self._readers: dict[int, int] = {}
        self._pending: list[tuple[int, np.ndarray]] = []  # (epoch freed in, slots)
        self._bg: threading.Thread | None = None
        self._bg_error: BaseException | None = None

    # ---- storage -------------------------------------------------------------------------------------------------
    def _empty_graph(self, rows: int) -> _Graph:
        vectors, adj = self._new_storage(rows)
        return _Graph(vectors, adj, np.full(rows, FREE, np.uint8), np.full(rows, -1, np.int64), -1,
                      self._grow_codes(None, rows))

    def _new_storage(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Zeroed vectors float32 (rows, dim) and adjacency int32 (rows, room + 1); subclasses place them in a
        memory-mapped file."""
        return np.zeros((rows, self.dim), np.float32), np.zeros((rows, self.room + 1), np.int32)

    def _grow_codes(self, codes: np.ndarray | None, rows: int) -> np.ndarray | None:
        """Codes array of ``rows`` rows holding the old rows (None: this index keeps no codes)."""
        return None

    def _write_vectors(self, g: _Graph, slots: np.ndarray, x: np.ndarray) -> None:
        """Store new vectors (n, dim) in ``slots`` before they are linked."""
        g.vectors[slots] = x

    def _num_slots(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return self._g.vectors.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (vectors, graph, ids)."""
        g = self._g
        arrays = (g.vectors, g.adj, g.state, g.slot_ids)
        return int(sum(a.nbytes for a in arrays)) + self._idmap.nbytes

    def _publish(self, **changes: Any) -> None:
        self._g = self._g._replace(**changes)

    def _materialize(self) -> None:
        """Copy memory-mapped (read-only) arrays into writable memory before the first change."""
        g = self._g
        if g.vectors.flags.writeable and g.adj.flags.writeable and g.state.flags.writeable:
            return
        vectors, adj = self._new_storage(g.vectors.shape[0])
        vectors[:] = g.vectors
        adj[:] = g.adj
        codes = None if g.codes is None else np.array(g.codes)
        self._publish(vectors=vectors, adj=adj, state=np.array(g.state), codes=codes)
        if not self._idmap.slot_ids.flags.writeable:
            self._idmap.slot_ids = np.array(self._idmap.slot_ids)

    def _reserve_rows(self, n: int) -> None:
        with self._graph_lock, self._write_lock:
            self._materialize()
            self._reserve(n)

    def _reserve(self, rows: int) -> None:
        """Make room for ``rows`` more slots: new, larger arrays, filled and then published in one step."""
        g = self._g
        need = self._n + rows
        if need <= g.vectors.shape[0]:
            return
        target = need if rows >= self._n else max(need, int(g.vectors.shape[0] * 1.5))
        vectors, adj = self._new_storage(target)
        vectors[:self._n] = g.vectors[:self._n]
        adj[:self._n] = g.adj[:self._n]
        state = np.full(target, FREE, np.uint8)
        state[:self._n] = g.state[:self._n]
        slot_ids = np.full(target, -1, np.int64)
        slot_ids[:self._n] = g.slot_ids[:self._n]
        self._g = _Graph(vectors, adj, state, slot_ids, g.entry, self._grow_codes(g.codes, target))

    # ---- epochs --------------------------------------------------------------------------------------------------
    def _enter(self) -> int:
        with self._epoch_lock:
            e = self._epoch
            self._readers[e] = self._readers.get(e, 0) + 1
            return e

    def _leave(self, e: int) -> None:
        with self._epoch_lock:
            left = self._readers[e] - 1
            if left:
                self._readers[e] = left
            else:
                del self._readers[e]

    def _retire(self, slots: np.ndarray) -> None:
        """Queue freed slots; searches that start from now on cannot reach them."""
        with self._epoch_lock:
            self._pending.append((self._epoch, slots))
            self._epoch += 1

    def _reusable_slots(self) -> np.ndarray:
        """Freed slots that no running search can still reach (sorted), removed from the queue."""
        with self._epoch_lock:
            oldest = min(self._readers, default=self._epoch + 1)
            ready = [s for e, s in self._pending if e < oldest]
            self._pending = [(e, s) for e, s in self._pending if e >= oldest]
        return np.sort(np.concatenate(ready)) if ready else np.empty(0, np.int64)

    # ---- add -----------------------------------------------------------------------------------------------------
    @calibrating
    def add(self, vectors: Any, ids: Any = None, *, threads: int | None = None,
            progress: bool | None = None) -> np.ndarray:
        """Insert vectors (n, dim); returns their ids (int64). ``ids`` default to the next free integers.

        Runs in parallel on ``threads`` threads (default: all) while searches go on. Into an empty index this
        is the two-pass Vamana build; otherwise the FreshDiskANN insert. ``progress`` shows a progress bar
        (default: more than 100,000 vectors from a terminal). An interrupted call leaves the vectors inserted so
        far, consistently.
        """
        threads = check_threads(threads)
        with self._graph_lock, self._write_lock:
            x, new_ids = self._check_add(vectors, ids)
            self._materialize()
            self._insert(x, new_ids, threads, progress)
        return new_ids

    def _take_slots(self, m: int) -> np.ndarray:
        """Slots for m new vectors: reusable freed slots first, then new ones at the end (marked FREE until
        linked, so an interrupted insert leaves them free)."""
        reuse = self._reusable_slots()
        take, back = reuse[:m], reuse[m:]
        if back.size:
            with self._epoch_lock:
                self._pending.insert(0, (-1, back))
        n_append = m - take.shape[0]
        self._reserve(n_append)
        appended = np.arange(self._n, self._n + n_append, dtype=np.int64)
        self._n += n_append
        self._idmap.extend(n_append)
        return np.concatenate([take.astype(np.int64), appended])

    def _insert(self, x: np.ndarray, new_ids: np.ndarray, threads: int | None, progress: bool | None) -> None:
        m = x.shape[0]
        slots = self._take_slots(m)
        first_build = self._g.entry < 0
        if first_build:
            # link the medoid first (it becomes the entry point), the rest in a seeded random order, so that
            # the graph does not depend on the order of the input
            rng = np.random.default_rng([self.seed, self._n])
            centre = x.mean(axis=0, dtype=np.float64).astype(np.float32)
            # |x - c|^2 up to the constant |c|^2, without an (n, dim) temporary
            medoid = int(np.argmin(np.einsum("ij,ij->i", x, x) - 2.0 * (x @ centre)))
            order = rng.permutation(m)
            order = np.concatenate([[medoid], order[order != medoid]])
        else:
            order = np.arange(m)
        g = self._g
        self._write_vectors(g, slots, x)
        g.slot_ids[slots] = -1
        passes = 2 if first_build and self.alpha > 1.0 else 1
        bar = progress_bar(m * passes, "Vamana build", progress)
        linked = 0
        try:
            with num_threads(threads) as nthreads:
                visited, tags = thread_scratch(nthreads, self.capacity)
                alpha2 = 1.0 if first_build else self.alpha ** 2
                while linked < m:
                    size = int(min(_BATCH_MAX, max(_BATCH_MIN, self.ntotal * _BATCH_FRACTION), m - linked))
                    batch = order[linked:linked + size]
                    nodes = slots[batch]
                    # id and state before any link: a search can reach the nodes as soon as phase B links them
                    g.slot_ids[nodes] = new_ids[batch]
                    g.state[nodes] = LIVE
                    if self._g.entry < 0:
                        self._publish(entry=int(nodes[0]))
                    self._link(nodes, alpha2, intra=True, keep_old=False, has_graph=self.ntotal > 0,
                               visited=visited, tags=tags)
                    # commit the batch: it is linked, so it counts and its ids can be looked up
                    self._idmap.assign(nodes, new_ids[batch])
                    linked += size
                    bar.update(size)
                if passes == 2:
                    refine = slots[order]
                    for s in range(0, m, _REFINE_BATCH):
                        nodes = refine[s:s + _REFINE_BATCH]
                        self._link(nodes, self.alpha ** 2, intra=False, keep_old=True, has_graph=True,
                                   visited=visited, tags=tags)
                        bar.update(nodes.shape[0])
        finally:
            bar.close()
            if linked < m:  # interrupted: the slots never linked go back to the free list
                unlinked = slots[order[linked:]]
                g.state[unlinked] = FREE
                self._retire(np.sort(unlinked))
            self._scratch.clear()

    def _link(self, nodes: np.ndarray, alpha2: float, *, intra: bool, keep_old: bool, has_graph: bool,
              visited: np.ndarray, tags: np.ndarray) -> None:
        """Phase A (new out-lists, in parallel, into scratch), commit, phase B (reverse links)."""
        g = self._g
        b = nodes.shape[0]
        new_rows = np.zeros((b, self.room + 1), np.int32)
        new_d = np.zeros((b, self.R), np.float32)
        with numba.parallel_chunksize(1):  # per-node costs vary: hand out nodes dynamically
            K.link_batch(g.vectors, g.adj, g.state, nodes, max(g.entry, 0), has_graph, self.L_build, self.R,
                         np.float32(alpha2), intra, keep_old, new_rows, new_d, visited, tags)
        g.adj[nodes] = new_rows
        n_edges = int(new_rows[:, 0].sum())
        if n_edges == 0:
            return
        dst = np.empty(n_edges, np.int32)
        src = np.empty(n_edges, np.int32)
        dist = np.empty(n_edges, np.float32)
        K.collect_reverse_edges(nodes, new_rows, new_d, dst, src, dist)
        order = np.argsort(dst, kind="stable")
        dst, src, dist = dst[order], src[order], dist[order]
        group_start = np.concatenate([[0], np.flatnonzero(dst[1:] != dst[:-1]) + 1, [n_edges]]).astype(np.int64)
        with numba.parallel_chunksize(1):
            K.add_reverse_links(g.vectors, g.adj, g.state, self.R, np.float32(alpha2), dst, src, dist, group_start)

    # ---- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, L: int | None = None, filter: Any = None,
               threads: int | None = None, target_recall: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest neighbours of each query; safe to call while other threads add and remove.

        Parameters
        ----------
        queries : array (nq, dim)
        k : int, 1 <= k <= ntotal
        L : int, optional
            Beam size (default ``L_search``; raised to k if smaller). Higher is slower and more exact.
        filter : bool array indexed by id, or array of ids, optional
            Only these ids may be returned. Exact search over them when they are few, otherwise the graph is
            traversed through all nodes and only allowed ones are collected.
        threads : int, optional
            Threads for the batch (default: all).
        target_recall : float in (0, 1], optional
            Instead of ``L``: the recall@k wanted, L read from the index's recall curve
            (:mod:`simdex.dense.calibration`).

        Returns
        -------
        distances : float32 (nq, k), ascending; ids : int64 (nq, k). Missing results are (inf, -1).
        """
        q, k, _, threads = self._check_search(queries, k, None, threads)
        L = self._effort_for(target_recall, k, L)
        L = max(k, self.L_search if L is None else check_positive_int(L, "L", maximum=MAX_RESULTS))
        epoch = self._enter()
        try:
            g = self._g
            allowed = None if filter is None else self._filter_mask(g, filter)
            if allowed is None and self._n_deleted:
                # tombstones route the walk but take room in its pool, and the finisher drops them: with most
                # nodes deleted (a database collection consolidates only when it merges) a pool of 64 held few
                # live ones (recall@10 0.29 at 94% deleted, and fewer than k results). The pool is widened so
                # that about L live nodes fit, and when the live nodes are few they are searched exactly.
                live_share = self.ntotal / self._walked()
                if self._prefer_exact(self.ntotal, L, live_share):
                    allowed = (g.state == LIVE).view(np.uint8)
                else:
                    L = min(int(np.ceil(L / live_share)), MAX_RESULTS)
            return self._search_graph(g, q, k, L, allowed, threads)
        finally:
            self._leave(epoch)

    def _search_graph(self, g: _Graph, q: np.ndarray, k: int, L: int, allowed: np.ndarray | None,
                      threads: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The public (distances, ids) (nq, k) of a search of graph ``g`` among all live slots, or those with
        ``allowed[slot] != 0``."""
        nq = q.shape[0]
        out_d = np.empty((nq, k), np.float32)
        out_s = np.empty((nq, k), np.int32)
        cap = g.vectors.shape[0]
        n_allowed = 0 if allowed is None else int(np.count_nonzero(allowed))
        if allowed is not None and self._prefer_exact(n_allowed, L, n_allowed / self._walked()):
            with num_threads(threads):
                out_d[:], out_s[:] = exact_knn_subset(self.metric, q, g.vectors, allowed, k)
            return public_results(self._metric_code, out_d, out_s, g.slot_ids)
        nthreads = batch_threads(threads, nq)
        scratch = self._scratch.take(nthreads, cap)
        ids = np.empty((nq, k), np.int64)
        try:
            # tombstones still route: the finisher drops them from the results
            sc, fin, graph = Vectors(self._metric_code, q, g.vectors), G.LiveTopK(g.state), self._graph(g)
            public = (self._metric_code, g.slot_ids, ids)
            if allowed is None:
                G.search_batch(sc, fin, *graph, k, L, False, out_d, out_s, *scratch, *public)
            else:
                G.search_batch_filtered(sc, fin, *graph, k, L, allowed, False, out_d, out_s, *scratch, *public)
        finally:
            self._scratch.give(scratch)
        return out_d, ids

    @staticmethod
    def _graph(g: _Graph) -> tuple:
        """The graph arguments of the search kernels (:mod:`simdex.core.graph`): one flat layer."""
        return (g.adj, *_NO_UPPER, g.entry, 0)

    @staticmethod
    def _filter_mask(g: _Graph, flt: Any) -> np.ndarray:
        """A uint8 mask over the snapshot's slots (1 = live and allowed) from a bool mask indexed by id or an
        array of ids; the same rules as :meth:`simdex.idmap.IdMap.allowed_mask`, read from the snapshot so that
        slots and mask always agree."""
        arr = check_filter(flt)
        sid = g.slot_ids
        live = (sid >= 0) & (g.state == LIVE)
        mask = np.zeros(sid.shape[0], np.uint8)
        if arr.dtype == np.bool_:
            inside = live & (sid < arr.shape[0])
            mask[inside] = arr[sid[inside]]
            return mask
        mask[live & np.isin(sid, arr)] = 1
        return mask

    def _walked(self) -> int:
        """The nodes a walk passes through: the live ones and the tombstones."""
        return max(1, self.ntotal + self._n_deleted)

    def _prefer_exact(self, n_allowed: int, L: int, selectivity: float) -> bool:
        """Filtered search cost model (as :meth:`HNSWIndex._prefer_exact`): a graph search that must collect L
        allowed nodes among nodes of which the fraction ``selectivity`` is allowed expands about
        L / selectivity nodes of up to R neighbours; exact search computes n_allowed distances."""
        if n_allowed == 0 or selectivity <= 0:
            return True
        return float(n_allowed) <= L * self.R / selectivity

    # ---- remove --------------------------------------------------------------------------------------------------
    def remove(self, ids: Any) -> int:
        """Remove vectors by id (lazily: tombstones, never returned by a search that starts afterwards).

        Once ``consolidate_threshold`` of the stored nodes are tombstones the graph is repaired around them and
        their slots are recycled (:meth:`consolidate`), in this call or, with ``background``, in a thread.
        """
        with self._write_lock:
            slots = self._slots_for_removal(ids)
            self._materialize()
            self._g.state[slots] = DELETED
            self._n_deleted += int(slots.shape[0])
            self._idmap.release(slots)
            due = self._n_deleted > self.consolidate_threshold * (self.ntotal + self._n_deleted)
        if due:
            if self.background:
                self._start_background()
            else:
                self.consolidate()
        return int(slots.shape[0])

    def _start_background(self) -> None:
        with self._write_lock:
            if self._bg is not None and self._bg.is_alive():
                return

            def run() -> None:
                try:
                    self.consolidate()
                except BaseException as exc:  # surfaced by wait()
                    self._bg_error = exc

            self._bg = threading.Thread(target=run, name="simdex-vamana-consolidate", daemon=True)
            self._bg.start()

    def wait(self) -> None:
        """Wait for a background consolidation to finish; re-raises its error, if any."""
        bg = self._bg
        if bg is not None:
            bg.join()
        if self._bg_error is not None:
            err, self._bg_error = self._bg_error, None
            raise err

    def consolidate(self, threads: int | None = None) -> None:
        """Repair the graph around the tombstones and free their slots (FreshDiskANN Algorithm 4).

        Every live node with deleted out-neighbours re-chooses its list by RobustPrune among its live neighbours
        and the live neighbours of its deleted ones; then the deleted slots are freed for reuse by later inserts.
        Searches and removes go on meanwhile (nodes removed during the repair stay tombstones until the next
        consolidation); adds wait. When more than half of the nodes are deleted the graph is rebuilt instead.
        O(n) time.
        """
        with self._graph_lock:
            with self._write_lock:
                if self._n_deleted == 0:
                    return
                self._materialize()
                if self._n_deleted > _REBUILD_FRACTION * (self.ntotal + self._n_deleted):
                    self._rebuild(threads)
                    return
                g = self._g
                doomed = np.flatnonzero(g.state[:self._n] == DELETED).astype(np.int64)
                live = np.flatnonzero(g.state[:self._n] == LIVE).astype(np.int64)
            with num_threads(check_threads(threads)):
                K.consolidate_deletes(g.vectors, g.adj, g.state, live, self.R, np.float32(self.alpha ** 2))
            with self._write_lock:
                if g.state[g.entry] != LIVE:
                    # the new entry point is the live node nearest the old one
                    live = np.flatnonzero(g.state[:self._n] == LIVE)
                    diff = g.vectors[live] - g.vectors[g.entry]
                    self._publish(entry=int(live[int(np.argmin(np.einsum("ij,ij->i", diff, diff)))]))
                g.state[doomed] = FREE
                self._n_deleted -= int(doomed.shape[0])
                self._retire(doomed)
            self._scratch.clear()

    def _rebuild(self, threads: int | None) -> None:
        """A fresh graph of the live vectors, published in one step (searches in flight keep the old one)."""
        g = self._g
        live = np.flatnonzero(g.state[:self._n] == LIVE)
        fresh = type(self)(**self._params())
        if live.size:
            fresh._insert(np.array(g.vectors[live]), g.slot_ids[live].copy(), check_threads(threads), None)
        with self._epoch_lock:
            self._pending = []
            self._epoch += 1
        self._adopt(fresh)

    def _adopt(self, other: VamanaIndex) -> None:
        """Take over another index's data (same parameters): the snapshot first, so searches switch at once."""
        self._g = other._g
        self._idmap = other._idmap
        self._n, self._n_deleted = other._n, other._n_deleted
        self._scratch.clear()

    def copy(self) -> VamanaIndex:
        """An independent deep copy (for copy-on-write updates while others keep searching the original), its
        vectors and links in storage of its own (a subclass's file); taken while no writer changes the graph."""
        with self._graph_lock, self._write_lock:
            g = self._g
            clone = type(self).__new__(type(self))
            clone.__dict__.update(self.__dict__)
            vectors, adj = self._new_storage(g.vectors.shape[0])
            vectors[:self._n], adj[:self._n] = g.vectors[:self._n], g.adj[:self._n]
            clone._g = _Graph(vectors, adj, np.array(g.state), np.array(g.slot_ids), g.entry,
                              None if g.codes is None else np.array(g.codes))
            clone._idmap = _SlotMap(np.array(self._idmap.slot_ids))
            clone._graph_lock, clone._write_lock = threading.RLock(), threading.RLock()
            clone._scratch = ScratchPool()
            # no search runs on the copy yet: every slot freed here is free to reuse there
            clone._epoch_lock, clone._epoch, clone._readers = threading.Lock(), 0, {}
            freed = [slots for _, slots in self._pending]
            clone._pending = [(-1, np.concatenate(freed))] if freed else []
            clone._bg, clone._bg_error = None, None
            return clone

    def _params(self) -> dict[str, Any]:
        return {"dim": self.dim, "metric": self.metric, "R": self.R, "L_build": self.L_build,
                "L_search": self.L_search, "alpha": self.alpha, "seed": self.seed,
                "consolidate_threshold": self.consolidate_threshold, "background": self.background}

    # ---- access --------------------------------------------------------------------------------------------------
    def get_vectors(self, ids: Any) -> np.ndarray:
        return np.array(self._g.vectors[self._slots_for_removal(ids)])

    def graph_stats(self) -> dict[str, float]:
        """Out-degree statistics of the live nodes and the slot counts, for diagnostics."""
        g = self._g
        live = np.flatnonzero(g.state[:self._n] == LIVE)
        deg = g.adj[live, 0]
        return {"nodes": int(live.size), "deleted": self._n_deleted,
                "free": int(np.count_nonzero(g.state[:self._n] == FREE)),
                "mean_degree": float(deg.mean()) if live.size else 0.0,
                "min_degree": int(deg.min()) if live.size else 0}

    # ---- persistence ---------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the index to ``path`` (atomically). Writers wait meanwhile, searches go on."""
        # no writer can change a row while the arrays are written, so they are written as they are instead of
        # copied first as Index.snapshot does (a copy would double the memory, and VamanaDiskIndex's vectors
        # are meant to stay on disk)
        with self._graph_lock, self._write_lock:
            meta, arrays = self._state()
            meta = {"dim": self.dim, "metric": self.metric, **meta}
            write_snapshot(path, (self.kind, meta, {"slot_ids": self._idmap.slot_ids, **arrays}))

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        n, g = self._n, self._g
        meta = {"R": self.R, "L_build": self.L_build, "L_search": self.L_search, "alpha": self.alpha,
                "seed": self.seed, "consolidate_threshold": self.consolidate_threshold, "count": n,
                "entry": g.entry, "deleted": self._n_deleted}
        arrays = {"vectors": g.vectors[:n], "adj": g.adj[:n], "state": g.state[:n]}
        meta.update(self._calibration_meta())
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> VamanaIndex:
        index = cls(**cls._params_from_meta(meta))
        n = meta_int(meta, "count")
        expect = {"vectors": ((n, index.dim), np.float32), "adj": ((n, index.room + 1), np.int32),
                  "state": ((n,), np.uint8)}
        for name, (shape, dtype) in expect.items():
            arr = arrays[name]
            if arr.shape != shape or arr.dtype != dtype:
                raise CorruptFileError(f"array {name!r} has shape {arr.shape} {arr.dtype}, expected {shape} "
                                       f"{np.dtype(dtype)}")
        entry = meta["entry"]
        if isinstance(entry, bool) or not isinstance(entry, int):
            raise CorruptFileError(f"bad value for 'entry' in file header: {entry!r}")
        index._set_loaded_arrays(arrays, n, entry)
        index._n_deleted = meta_int(meta, "deleted")
        index._restore_calibration(meta)
        return index

    @classmethod
    def _params_from_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        alpha = meta["alpha"]
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
            raise CorruptFileError(f"bad value for 'alpha' in file header: {alpha!r}")
        return {"dim": meta_int(meta, "dim", 1), "metric": meta["metric"], "R": meta_int(meta, "R", 2),
                "L_build": meta_int(meta, "L_build", 1), "L_search": meta_int(meta, "L_search", 1), "alpha": alpha,
                "seed": meta_int(meta, "seed"), "consolidate_threshold": float(meta["consolidate_threshold"])}

    def _set_loaded_arrays(self, arrays: dict[str, np.ndarray], n: int, entry: int) -> None:
        self._g = _Graph(arrays["vectors"], arrays["adj"], arrays["state"], np.full(n, -1, np.int64), entry)
        self._n = n

    def _check_loaded(self) -> None:
        """Check the graph's invariants so that a damaged or hand-made file cannot make a kernel read out of
        bounds (the kernels do not check indices)."""
        super()._check_loaded()
        self._idmap = _SlotMap(self._idmap.slot_ids)
        n, g = self._n, self._g
        state = g.state[:n]
        if state.size and state.max() > FREE:
            raise CorruptFileError("node states out of range")
        sid = self._idmap.slot_ids
        if not np.array_equal(sid >= 0, state == LIVE):
            raise CorruptFileError("ids and node states disagree")
        if int(np.count_nonzero(state == DELETED)) != self._n_deleted:
            raise CorruptFileError("deleted-vector bookkeeping is inconsistent")
        if n * self.dim < (1 << 28) and np.isnan(g.vectors).any():
            raise CorruptFileError("stored vectors contain NaN")
        has_nodes = bool(np.count_nonzero(state != FREE))
        if has_nodes and not (0 <= g.entry < n and state[g.entry] != FREE):
            raise CorruptFileError("entry point is out of range or free")
        if not has_nodes and g.entry != -1:
            raise CorruptFileError("entry point set in an empty graph")
        if n:
            deg = g.adj[:, 0]
            if deg.min() < 0 or deg.max() > self.room:
                raise CorruptFileError("adj: degree out of range")
            used = np.arange(self.room)[None, :] < deg[:, None]
            vals = g.adj[:, 1:][used]
            if vals.size and (vals.min() < 0 or vals.max() >= n):
                raise CorruptFileError("adj: neighbour slot out of range")
        self._publish(slot_ids=sid.copy())
        free = np.flatnonzero(state == FREE).astype(np.int64)
        if free.size:
            self._pending = [(-1, free)]
