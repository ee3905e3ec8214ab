"""Window-filtered k-NN: the nearest neighbours among the points whose numeric attribute lies in ``[lo, hi]``.

The structure follows the window search tree of Engels, Landrum, Yu, Dhulipala and Shun, "Approximate Nearest
Neighbor Search with Window Filters" (ICML 2024):

- the points are stored sorted by attribute, so every window is one contiguous block ``[s, e)`` of rows, found by
  two binary searches;
- a segment tree with branching factor ``b`` splits the rows into ``b ** level`` equal blocks per level; every
  block larger than ``leaf_size`` holds its own base ANN index over its rows (by default an HNSW graph walked on
  LVQ-8 codes, :class:`~simdex.quant.HNSWQuantIndex`; or float32 :class:`HNSWIndex`, or any simdex
  :class:`~simdex.index.Index` made by a factory). The quant package builds on this one, so this module names
  its base kinds and the index registry (:func:`~simdex.index.index_class`) finds their classes when needed;
- a query plans how to cover ``[s, e)``: with an exact scan of the (contiguous) rows, with one search of a node
  that contains the rows and restricts it to them (the paper's post-filtering on a node only somewhat larger than
  the window: "optimized post-filtering" / the beta idea), or by splitting into the node's children. A small cost
  model picks the cheapest cover per query (see :meth:`WindowIndex._plan`); the parts are merged into one top k.

Points added after the tree was built go to an append buffer that is searched exactly (with the attribute test
inside the scan); when it grows past ``rebuild_fraction`` of the tree, the tree is rebuilt from all live points.
Removal marks points deleted (they are never returned) and removes them from every node index holding them.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .._numba import num_threads
from .._validate import _as_numeric_array, check_positive_int, check_real, check_threads
from ..errors import CorruptFileError, InvalidInputError
from ..idmap import IdMap
from ..index import Index, index_class, meta_int, sub_arrays
from . import _window_kernels as K
from .hnsw import HNSWIndex

DEFAULT_HNSW_PARAMS = {"M": 16, "ef_construction": 100}
# quantized nodes keep their float vectors in RAM for re-ranking: a temporary file per node would be one open
# memory map for each of the tree's nodes
DEFAULT_QUANT_PARAMS = {**DEFAULT_HNSW_PARAMS, "codec": "lvq8", "vectors": "memory"}
# base name -> (kind of the node index, resolved by simdex.index.index_class; its default parameters)
BASES = {"hnsw": ("HNSWIndex", DEFAULT_HNSW_PARAMS), "hnsw-quant": ("HNSWQuantIndex", DEFAULT_QUANT_PARAMS),
         "flat": ("FlatIndex", {})}
BASE_KINDS = tuple(BASES)


def check_attributes(attributes: Any, n: int, name: str = "attributes") -> np.ndarray:
    """Validate per-vector attributes: a 1-D array of ``n`` finite numbers, returned as float64."""
    arr = _as_numeric_array(attributes, name)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidInputError(f"{name} must be a 1-D array with one value per vector ({n}); got shape "
                                f"{arr.shape}")
    out = np.array(arr, np.float64)
    if out.size and not np.isfinite(out).all():
        raise InvalidInputError(f"{name} contain NaN or infinite values (first at row "
                                f"{int(np.flatnonzero(~np.isfinite(out))[0])})")
    return out


def check_bounds(lo: Any, hi: Any, nq: int) -> tuple[np.ndarray, np.ndarray]:
    """Window bounds as float64 arrays of shape (nq,): scalars are broadcast; NaN, shape errors and lo > hi
    raise. Infinite bounds are allowed (an open side)."""
    out = []
    for value, name in ((lo, "lo"), (hi, "hi")):
        arr = np.array(_as_numeric_array(value, name), np.float64)
        if arr.ndim == 0:
            arr = np.full(nq, float(arr))
        if arr.ndim != 1 or arr.shape[0] != nq:
            raise InvalidInputError(f"{name} must be a number or a 1-D array with one value per query ({nq}); "
                                    f"got shape {arr.shape}")
        if np.isnan(arr).any():
            raise InvalidInputError(f"{name} contains NaN (first at query {int(np.flatnonzero(np.isnan(arr))[0])})")
        out.append(arr)
    bad = out[0] > out[1]
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"lo > hi for {int(bad.sum())} quer(ies), first at query {first}: "
                                f"lo={out[0][first]!r}, hi={out[1][first]!r}")
    return out[0], out[1]


class WindowIndex(Index):
    """Approximate k-NN restricted to an attribute window ``lo <= attribute <= hi``.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"l2", "ip", "cosine"}
        See :mod:`simdex.metrics`.
    base : "hnsw-quant", "hnsw", "flat" or callable, default "hnsw-quant"
        Index of each tree node: ``"hnsw-quant"`` (:class:`~simdex.quant.HNSWQuantIndex`: an HNSW graph walked
        on LVQ-8 (or int8) codes, the best ``rerank`` (40) candidates re-scored from float32, so the returned
        distances are exact; one codec for all nodes, trained at each tree build), ``"hnsw"``
        (:class:`HNSWIndex` on float32: node searches about 1.4x slower at the same recall, no codes),
        ``"flat"`` (exact), or a factory ``f(dim, metric) -> Index`` for any other simdex index. A factory is not
        saved with the index: a loaded one keeps its saved nodes and searches points added later exactly until
        given ``base=`` again.
    base_params : dict, optional
        Parameters of the HNSW nodes, over the defaults ``M=16, ef_construction=100`` (for ``"hnsw-quant"``
        also ``codec="lvq8"`` and ``vectors="memory"``; see :class:`~simdex.quant.HNSWQuantIndex`).
    branching : int, default 2
        Children per tree node. A tree over n points has about ``log_b(n / leaf_size)`` indexed levels, each a
        graph over all points: memory and build time grow with the levels, query plans get tighter.
    leaf_size : int, default 1024
        Blocks of at most this many rows get no index; they are scanned exactly.
    ef_search : int, default 64
        Candidate pool of the node searches (``search(ef=...)`` overrides it).
    rebuild_fraction : float, default 0.1
        Points added after the build are scanned exactly until they exceed this fraction of the tree (and
        ``leaf_size``); then the tree is rebuilt from all live points, which also drops removed ones.
    auto_rebuild : bool, default True
        Rebuild inside ``add`` / ``remove`` when the buffer or the deletions grow past their limits. Off: the
        owner calls :meth:`rebuild` (or builds a replacement in the background) when :meth:`needs_rebuild` says.

    Memory: ``4 * dim + 17`` bytes per point for the sorted storage (plus ``dim + 12`` for its LVQ-8 codes with
    ``"hnsw-quant"``), and one graph per tree level of about ``8 * M + 40`` bytes per point: HNSW nodes read their
    vectors (and codes) from the sorted storage instead of keeping a copy per level, in memory and in the file.
    """

    kind = "WindowIndex"
    _volatile_arrays = ("deleted",)
    # cost model of a query plan, in units of one distance computation; see _plan
    EXACT_UNIT = 1.0  # a row of a contiguous exact scan
    GRAPH_UNIT = 1.5  # a distance during a graph walk (random reads)
    CODE_GRAPH_UNIT = 1.0  # the same on LVQ-8 / int8 codes (base="hnsw-quant")
    CALL_COST = 150.0  # fixed cost of one node search (Python call, filter mask, merge)

    def __init__(self, dim: int, metric: str = "l2", *, base: str | Callable[[int, str], Index] = "hnsw-quant",
                 base_params: dict[str, Any] | None = None, branching: int = 2, leaf_size: int = 1024,
                 ef_search: int = 64, rebuild_fraction: float = 0.1, auto_rebuild: bool = True) -> None:
        super().__init__(dim, metric)
        if callable(base):
            if base_params:
                raise InvalidInputError("base_params apply to base='hnsw'; a factory takes its own parameters")
            self.base: str = "custom"
            self._factory: Callable[[int, str], Index] | None = base
            self.base_params: dict[str, Any] = {}
        elif base in BASE_KINDS:
            self.base = base
            if base == "flat":
                if base_params:
                    raise InvalidInputError("a flat base index takes no parameters")
                self.base_params = {}
            else:
                self.base_params = {**BASES[base][1], **(base_params or {})}
            self._factory = self._builtin_factory
            self._factory(dim, metric)  # validates the parameters now
        else:
            raise InvalidInputError(f"base must be one of {BASE_KINDS} or a callable (dim, metric) -> Index; "
                                    f"got {base!r}")
        self.branching = check_positive_int(branching, "branching", minimum=2)
        self.leaf_size = check_positive_int(leaf_size, "leaf_size")
        self.ef_search = check_positive_int(ef_search, "ef_search")
        self.rebuild_fraction = check_real(rebuild_fraction, "rebuild_fraction", 0.0, 1.0, low_open=True)
        if not isinstance(auto_rebuild, bool):
            raise InvalidInputError(f"auto_rebuild must be True or False; got {auto_rebuild!r}")
        self.auto_rebuild = auto_rebuild
        self._n = 0  # slots in use
        self._n_built = 0  # slots [0, n_built) are sorted by attribute and indexed by the tree
        self._n_deleted = 0
        self._vectors = np.empty((0, self.dim), np.float32)
        self._attrs = np.empty(0, np.float64)
        self._deleted = np.empty(0, np.uint8)
        # level l: (bounds int64 (b**l + 1,), node indexes or None for blocks of at most leaf_size rows)
        self._levels: list[tuple[np.ndarray, list[Index | None]]] = []
        self._codes: np.ndarray | None = None  # codes of the sorted rows, shared by "hnsw-quant" nodes
        self._write_lock = threading.RLock()

    def _builtin_factory(self, dim: int, metric: str) -> Index:
        return index_class(BASES[self.base][0])(dim, metric, **self.base_params)

    # ---- introspection -------------------------------------------------------------------------------------------
    def _num_slots(self) -> int:
        return self._n

    @property
    def attributes(self) -> np.ndarray:
        """Attributes of the live points, in the order of :attr:`ids` (a copy)."""
        return self._attrs[:self._n][self._idmap.slot_ids >= 0]

    @property
    def n_buffered(self) -> int:
        """Points added since the tree was last built (searched exactly)."""
        return self._n - self._n_built

    def tree_stats(self) -> dict[str, Any]:
        """Levels and indexed node counts, for diagnostics."""
        return {"levels": len(self._levels), "built": self._n_built, "buffered": self.n_buffered,
                "deleted": self._n_deleted,
                "nodes_per_level": [sum(n is not None for n in nodes) for _, nodes in self._levels]}

    @property
    def nbytes(self) -> int:
        own = self._vectors.nbytes + self._attrs.nbytes + self._deleted.nbytes + self._idmap.nbytes
        own += 0 if self._codes is None else self._codes.nbytes
        nodes = 0
        for bounds, level in self._levels:
            for j, node in enumerate(level):
                if node is not None:
                    shared = self._shared_arrays(node, bounds, j)
                    nodes += getattr(node, "nbytes", 0) - sum(getattr(node, f"_{name}").nbytes for name in shared)
        return int(own + nodes)

    def _shared_arrays(self, node: Index, bounds: np.ndarray, j: int) -> list[str]:
        """Which of node j's arrays ("vectors", "codes") are its block ``bounds[j]:bounds[j + 1]`` of the sorted
        storage (see :meth:`_build_levels`) rather than its own copy."""
        out = []
        for name, whole in (("vectors", self._vectors), ("codes", self._codes)):
            mine = getattr(node, f"_{name}", None)
            if mine is None or whole is None:
                continue
            rows = whole[int(bounds[j]):int(bounds[j + 1])]
            if mine.shape == rows.shape and mine.dtype == rows.dtype and \
                    mine.__array_interface__["data"][0] == rows.__array_interface__["data"][0]:
                out.append(name)
        return out

    # ---- add -----------------------------------------------------------------------------------------------------
    def add(self, vectors: Any, attributes: Any = None, ids: Any = None, *, threads: int | None = None
            ) -> np.ndarray:
        """Add vectors (n, dim) with their attributes (n,) (any finite numbers, e.g. Unix timestamps in
        seconds); returns their int64 ids. ``threads`` is used for node index builds (default: all)."""
        if attributes is None:
            raise InvalidInputError("WindowIndex.add needs attributes: one number per vector")
        x, new_ids = self._check_add(vectors, ids)
        attrs = check_attributes(attributes, x.shape[0])
        threads = check_threads(threads)
        with self._write_lock:
            self._materialize()
            n_new = x.shape[0]
            need = self._n + n_new
            if need > self._vectors.shape[0]:
                cap = need if n_new >= self._n else max(need, int(self._vectors.shape[0] * 1.5))
                self._vectors = _grow(self._vectors, cap)
                self._attrs = _grow(self._attrs, cap)
                self._deleted = _grow(self._deleted, cap)
            self._vectors[self._n:need] = x
            self._attrs[self._n:need] = attrs
            self._deleted[self._n:need] = 0
            self._n = need
            self._idmap.append(new_ids)
            if self.auto_rebuild and self._factory is not None and self.needs_rebuild():
                self.rebuild(threads=threads)
        return new_ids

    def needs_rebuild(self) -> bool:
        """Whether the append buffer has outgrown ``rebuild_fraction`` of the tree, or half the points are
        removed."""
        return self.n_buffered > max(self.leaf_size, self.rebuild_fraction * self._n_built) or \
            self._n_deleted > 0.5 * self._n

    def rebuild(self, threads: int | None = None) -> None:
        """Sort all live points by attribute, drop removed ones and build the tree again (O(levels) base index
        builds over all points). Runs automatically when the append buffer or the deletions grow large."""
        if self._factory is None:
            raise InvalidInputError("this index was loaded without its base factory; load it with "
                                    "WindowIndex.load(path, base=factory) to rebuild")
        threads = check_threads(threads)
        with self._write_lock:
            live = np.flatnonzero(self._deleted[:self._n] == 0)
            order = live[np.argsort(self._attrs[live], kind="stable")]
            vectors = np.ascontiguousarray(self._vectors[order])
            attrs = self._attrs[order].copy()
            slot_ids = self._idmap.slot_ids[order].copy()
            levels, codes = self._build_levels(vectors, threads)
            # commit only after every node is built: an interrupted rebuild leaves the index as it was
            self._vectors, self._attrs, self._codes = vectors, attrs, codes
            self._deleted = np.zeros(vectors.shape[0], np.uint8)
            self._n = self._n_built = vectors.shape[0]
            self._n_deleted = 0
            self._idmap = IdMap(slot_ids)
            self._levels = levels

    def _level_bounds(self, n: int) -> list[np.ndarray]:
        """Block boundaries of each indexed level of a tree over n rows (levels whose blocks all fit in a leaf
        are not indexed). Level l has b**l blocks; its block j holds rows ``bounds[j]:bounds[j+1]``."""
        out = []
        nodes = 1
        while n > self.leaf_size and nodes <= n:
            bounds = np.arange(nodes + 1, dtype=np.int64) * n // nodes
            if int(np.diff(bounds).max()) <= self.leaf_size:
                break
            out.append(bounds)
            nodes *= self.branching
        return out

    def _build_levels(self, vectors: np.ndarray, threads: int | None
                      ) -> tuple[list[tuple[np.ndarray, list[Index | None]]], np.ndarray | None]:
        """The tree's node indexes over ``vectors`` (sorted by attribute), and the codes of all rows that
        ``"hnsw-quant"`` nodes share (else None)."""
        all_bounds = self._level_bounds(vectors.shape[0])
        factory, codes = self._factory, None
        node_class = index_class(BASES[self.base][0]) if self.base in BASES else None
        if all_bounds and hasattr(node_class, "shared_codec_factory"):
            # one codec for every node, trained once: then a row's code is the same in every level and the nodes
            # share one array of codes, as they share the vectors
            factory, codes = node_class.shared_codec_factory(self.dim, self.metric, self.base_params, vectors)
        levels = []
        for bounds in all_bounds:
            nodes: list[Index | None] = []
            for j in range(bounds.shape[0] - 1):
                s, e = int(bounds[j]), int(bounds[j + 1])
                if e - s <= self.leaf_size:
                    nodes.append(None)
                    continue
                node = factory(self.dim, self.metric)
                kwargs = {"threads": threads} if _accepts(type(node), "add", "threads") else {}
                node.add(vectors[s:e], np.arange(e - s, dtype=np.int64), **kwargs)
                if _can_share_rows(node, e - s):
                    # the node reads its rows from the sorted storage instead of keeping a copy per level; a
                    # node only ever replaces these arrays (consolidation compacts into new ones)
                    node._vectors = vectors[s:e]
                    if codes is not None:
                        node._codes = codes[s:e]
                nodes.append(node)
            levels.append((bounds, nodes))
        return levels, codes

    # ---- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, lo: Any = -np.inf, hi: Any = np.inf, *, ef: int | None = None,
               filter: Any = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query among the points with ``lo <= attribute <= hi``.

        Parameters
        ----------
        queries : array (nq, dim)
        k : int, 1 <= k <= ntotal
        lo, hi : float or array (nq,)
            Inclusive window bounds, per query or for all; ``-inf`` / ``inf`` leave a side open.
        ef : int, optional
            Candidate pool of the node searches (default ``ef_search``, at least k).
        filter : bool mask indexed by id, or array of ids, optional
            Only these ids may be returned, on top of the window. Such searches scan the window exactly.
        threads : int, optional
            Threads for the exact scans and node searches (default: all).

        Returns
        -------
        distances : float32 (nq, k), ascending; ids : int64 (nq, k). When fewer than k live points lie in a
        window, the rest of its row is (inf, -1).
        """
        q, k, allowed, threads = self._check_search(queries, k, filter, threads)
        lo, hi = check_bounds(lo, hi, q.shape[0])
        ef = max(k, self.ef_search if ef is None else check_positive_int(ef, "ef"))
        nq = q.shape[0]
        heap_d, heap_s = K.new_heaps(nq, k)
        skip = self._deleted[:self._n]
        if allowed is not None:
            skip = skip | (allowed == 0).view(np.uint8)
        sorted_attrs = self._attrs[:self._n_built]
        starts = np.searchsorted(sorted_attrs, lo, "left")
        ends = np.searchsorted(sorted_attrs, hi, "right")
        with num_threads(threads):
            # every query's plan in one kernel call; its exact pieces go into one scan call, and its graph pieces
            # are grouped by node so that one call per node serves all the queries that search it
            if allowed is not None or not self._levels:  # filtered searches scan their window exactly
                pieces = np.zeros((nq, 5), np.int64)
                pieces[:, 3], pieces[:, 4] = starts, np.maximum(ends, starts)
                ptr = np.arange(nq + 1, dtype=np.int64)
            else:
                pieces, ptr = self._plan_batch(starts, ends, ef)
            exact = pieces[:, 0] == K.PIECE_EXACT
            K.ranges_topk(self._metric_code, q, self._vectors, skip, ptr, np.where(exact, pieces[:, 3], 0),
                          np.where(exact, pieces[:, 4], 0), heap_d, heap_s)
            graph = np.flatnonzero(~exact)
            if graph.size:
                query_of = np.repeat(np.arange(nq, dtype=np.int64), np.diff(ptr))[graph]
                _, node_start = self._plan_arrays()[2:4]
                node_key = node_start[pieces[graph, 1]] + pieces[graph, 2]
                order = np.argsort(node_key, kind="stable")
                graph, query_of, node_key = graph[order], query_of[order], node_key[order]
                cuts = np.flatnonzero(np.diff(node_key)) + 1
                for lo_i, hi_i in zip(np.r_[0, cuts], np.r_[cuts, graph.size]):
                    g = graph[lo_i:hi_i]
                    self._search_node(int(pieces[g[0], 1]), int(pieces[g[0], 2]), pieces[g, 3], pieces[g, 4], q,
                                      query_of[lo_i:hi_i], k, ef, threads, heap_d, heap_s)
            if self._n > self._n_built:
                K.buffer_topk(self._metric_code, q, self._vectors, self._attrs, skip, self._n_built, self._n,
                              lo, hi, heap_d, heap_s)
        order = np.argsort(heap_d, axis=1, kind="stable")
        dist = np.take_along_axis(heap_d, order, 1)
        slots = np.take_along_axis(heap_s, order, 1)
        return self._results(dist, slots)

    def _plan(self, s: int, e: int, ef: int) -> list[tuple]:
        """Cheapest cover of rows [s, e) by exact scans ``("x", a, b)`` and node searches ``("g", level, j, a, b)``.

        Costs in units of one exact-scan row (the model of :meth:`HNSWIndex._prefer_exact`): an exact scan of m
        rows costs ``EXACT_UNIT * m``; a graph search of a node of size S restricted to m of its rows expands
        about ``ef / (m / S)`` nodes of degree ``M0``, so costs ``GRAPH_UNIT * ef * M0 * S / m`` (a graph
        distance reads a random row, hence dearer than a scanned one); every node search adds ``CALL_COST``. The
        units were fitted to single-query timings on fashion-mnist-784 and wordnet-minilm-384. Splitting a node
        costs the sum of its children's best covers. A window that covers most of a node is thus answered by
        that node with a post-filter (the paper's beta rule, with beta set by the costs), a narrow one by its
        children or an exact scan.
        """
        pieces, _ = self._plan_batch(np.array([s], np.int64), np.array([e], np.int64), ef)
        return [("x", int(a), int(b)) if kind == K.PIECE_EXACT else ("g", int(level), int(j), int(a), int(b))
                for kind, level, j, a, b in pieces]

    def _plan_batch(self, starts: np.ndarray, ends: np.ndarray, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """Plans of rows [starts[q], ends[q]) for every query (see :meth:`_plan`): pieces (rows, 5) int64 as
        (kind, level, node, a, b) and ptr (nq + 1,), query q's pieces being ``pieces[ptr[q]:ptr[q + 1]]``."""
        bounds, level_start, indexed, node_start = self._plan_arrays()
        flat = self.base == "flat"
        unit = self.CODE_GRAPH_UNIT if self.base == "hnsw-quant" else self.GRAPH_UNIT
        graph_unit = 0.0 if flat else unit * ef * 2 * int(self.base_params.get("M", 16))
        depth = max(1, len(self._levels))
        out = np.empty((starts.shape[0] * 4 * self.branching * depth + 1, 5), np.int64)
        ptr = np.empty(starts.shape[0] + 1, np.int64)
        n = K.plan_batch(bounds, level_start, indexed, node_start, self.branching, self.EXACT_UNIT, graph_unit,
                         self.CALL_COST, flat, np.ascontiguousarray(starts, np.int64),
                         np.ascontiguousarray(ends, np.int64), ptr, out)
        return out[:n], ptr

    def _plan_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The tree as flat arrays for the planner, cached per tree: every level's block bounds concatenated
        (level l's at ``bounds[level_start[l]:level_start[l + 1]]``) and "has an index" flags (node j of level l
        at ``indexed[node_start[l] + j]``)."""
        cached = self.__dict__.get("_plan_cache")
        if cached is None or cached[0] is not self._levels:
            bounds = [b for b, _ in self._levels]
            sizes = [0] + [len(b) for b in bounds]
            node_sizes = [0] + [len(nodes) for _, nodes in self._levels]
            cached = (self._levels,
                      np.concatenate(bounds).astype(np.int64) if bounds else np.zeros(0, np.int64),
                      np.cumsum(sizes).astype(np.int64),
                      np.array([node is not None for _, nodes in self._levels for node in nodes], np.bool_),
                      np.cumsum(node_sizes).astype(np.int64))
            self._plan_cache = cached
        return cached[1], cached[2], cached[3], cached[4]

    def _search_node(self, level: int, j: int, a: np.ndarray, b: np.ndarray, q: np.ndarray, rows: np.ndarray, k: int,
                     ef: int, threads: int | None, heap_d: np.ndarray, heap_s: np.ndarray) -> None:
        """Search node (level, j) for queries ``q[rows]``, query ``rows[r]`` restricted to the tree's rows
        [a[r], b[r]); push the results into the heaps."""
        bounds, nodes = self._levels[level]
        node = nodes[j]
        ns, ne = int(bounds[j]), int(bounds[j + 1])
        live = len(node)
        if live == 0:
            return
        kk = min(k, live)
        if isinstance(node, HNSWIndex) and node._consolidated == 0 and node._n == ne - ns:
            # built by one add of ids 0..size-1 and never consolidated: slot == local id, so one kernel call
            # serves every query of the batch with its own range
            dist, slots = node._search_slot_ranges(q, rows, a - ns, b - ns, kk, ef)
            K.merge_candidates(rows, dist, np.where(slots >= 0, slots.astype(np.int64) + ns, -1), heap_d, heap_s)
            return
        # any other base index (or an HNSW node whose slots no longer equal its ids): its public search with a
        # filter mask, one call per distinct range
        groups: dict[tuple[int, int], list[int]] = {}
        for r in range(rows.shape[0]):
            groups.setdefault((int(a[r]), int(b[r])), []).append(int(rows[r]))
        kwargs: dict[str, Any] = {"threads": threads}
        if _accepts(type(node), "search", "ef"):
            kwargs["ef"] = ef
        for (ga, gb), grows in groups.items():
            if ga > ns or gb < ne:
                mask = np.zeros(ne - ns, bool)
                mask[ga - ns:gb - ns] = True
                kwargs["filter"] = mask
            else:
                kwargs.pop("filter", None)
            sub = np.array(grows, np.int64)
            dist, local = node.search(q[sub], kk, **kwargs)
            if self.metric != "l2":  # back to the internal convention of the heaps (see simdex.metrics)
                dist = dist - np.float32(1.0)
            K.merge_candidates(sub, dist, np.where(local >= 0, local + ns, -1), heap_d, heap_s)

    # ---- remove --------------------------------------------------------------------------------------------------
    def remove(self, ids: Any) -> int:
        """Remove points by id; they are never returned again. Unknown ids raise and nothing is removed. When
        more than half of the stored points are removed the tree is rebuilt without them."""
        slots = self._slots_for_removal(ids)
        with self._write_lock:
            self._tombstone(slots)
            built = np.sort(slots[slots < self._n_built])
            for bounds, nodes in self._levels:
                owner = np.searchsorted(bounds, built, "right") - 1
                for j in np.unique(owner):
                    node = nodes[int(j)]
                    if node is not None:
                        node.remove(built[owner == j] - bounds[j])
            if self.auto_rebuild and self._factory is not None and self._n_deleted > 0.5 * self._n:
                self.rebuild()
        return int(slots.shape[0])

    def get_vectors(self, ids: Any) -> np.ndarray:
        return np.array(self._vectors[self._slots_for_removal(ids)])

    def get_attributes(self, ids: Any) -> np.ndarray:
        """Attributes (float64) of ``ids``."""
        return np.array(self._attrs[self._slots_for_removal(ids)])

    def _materialize(self) -> None:
        """Copy memory-mapped (read-only) arrays into memory before the first change."""
        for name in ("_vectors", "_attrs", "_deleted"):
            arr = getattr(self, name)
            if not arr.flags.writeable or isinstance(arr, np.memmap):
                setattr(self, name, np.array(arr))
        if not self._idmap.slot_ids.flags.writeable:
            self._idmap.slot_ids = np.array(self._idmap.slot_ids)

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        n = self._n
        nodes_meta = []
        arrays = {"vectors": self._vectors[:n], "attrs": self._attrs[:n], "deleted": self._deleted[:n]}
        if self._codes is not None:
            arrays["codes"] = self._codes
        for level, (bounds, nodes) in enumerate(self._levels):
            row = []
            for j, node in enumerate(nodes):
                if node is None:
                    row.append(None)
                    continue
                kind, meta, node_arrays = node.snapshot()
                spec = {"kind": kind, "meta": meta}
                for name in self._shared_arrays(node, bounds, j):  # saved once, as the index's own array
                    del node_arrays[name]
                    spec[f"shared_{name}"] = True
                row.append(spec)
                arrays.update({f"node{level}_{j}.{name}": arr for name, arr in node_arrays.items()})
            nodes_meta.append(row)
        meta = {"base": self.base, "base_params": self.base_params, "branching": self.branching,
                "leaf_size": self.leaf_size, "ef_search": self.ef_search, "rebuild_fraction": self.rebuild_fraction,
                "auto_rebuild": self.auto_rebuild,
                "count": n, "built": self._n_built, "deleted": self._n_deleted, "nodes": nodes_meta}
        return meta, arrays

    @classmethod
    def load(cls, path: Any, mmap: bool = True, verify: bool = True, base: Callable[[int, str], Index] | None = None
             ) -> WindowIndex:
        """Load a saved window index (see :meth:`Index.load`). ``base``: the factory of an index built with a
        custom one, needed only to rebuild its tree later."""
        index = super().load(path, mmap=mmap, verify=verify)
        if not isinstance(index, WindowIndex):
            raise CorruptFileError(f"{path}: file holds a {type(index).__name__}, not a WindowIndex")
        if base is not None:
            if not callable(base):
                raise InvalidInputError("base must be a callable (dim, metric) -> Index")
            index._factory = base
        return index

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> WindowIndex:
        base = meta["base"]
        if base not in BASE_KINDS + ("custom",):
            raise CorruptFileError(f"unknown base index kind {base!r}")
        index = cls(meta_int(meta, "dim", 1), meta["metric"], base="hnsw" if base == "custom" else base,
                    base_params=dict(meta["base_params"]) if base in ("hnsw", "hnsw-quant") else None,
                    branching=meta_int(meta, "branching", 2), leaf_size=meta_int(meta, "leaf_size", 1),
                    ef_search=meta_int(meta, "ef_search", 1), rebuild_fraction=float(meta["rebuild_fraction"]),
                    auto_rebuild=bool(meta.get("auto_rebuild", True)))
        if base == "custom":
            index.base, index._factory, index.base_params = "custom", None, {}
        n, built = meta_int(meta, "count"), meta_int(meta, "built")
        expect = {"vectors": ((n, index.dim), np.float32), "attrs": ((n,), np.float64), "deleted": ((n,), np.uint8)}
        for name, (shape, dtype) in expect.items():
            arr = arrays[name]
            if arr.shape != shape or arr.dtype != dtype:
                raise CorruptFileError(f"array {name!r} has shape {arr.shape} {arr.dtype}, expected {shape} "
                                       f"{np.dtype(dtype)}")
        if built > n:
            raise CorruptFileError("more sorted rows than rows")
        index._vectors, index._attrs, index._deleted = arrays["vectors"], arrays["attrs"], arrays["deleted"]
        codes = arrays.get("codes")
        if codes is not None and (codes.ndim != 2 or codes.dtype != np.uint8 or codes.shape[0] != built):
            raise CorruptFileError(f"array 'codes' has shape {codes.shape} {codes.dtype}, expected ({built}, "
                                   f"code size) uint8")
        index._codes = codes
        index._n, index._n_built, index._n_deleted = n, built, meta_int(meta, "deleted")
        all_bounds = index._level_bounds(built)
        nodes_meta = meta["nodes"]
        if not isinstance(nodes_meta, list) or len(nodes_meta) != len(all_bounds):
            raise CorruptFileError("the tree's levels do not match the number of sorted rows")
        for level, (bounds, row) in enumerate(zip(all_bounds, nodes_meta)):
            if not isinstance(row, list) or len(row) != bounds.shape[0] - 1:
                raise CorruptFileError(f"tree level {level} has the wrong number of nodes")
            nodes: list[Index | None] = []
            for j, spec in enumerate(row):
                size = int(bounds[j + 1] - bounds[j])
                if spec is None:
                    if size > index.leaf_size:
                        raise CorruptFileError(f"tree node {level}/{j} of {size} rows has no index")
                    nodes.append(None)
                    continue
                target = index_class(spec["kind"])
                if target is None or not issubclass(target, Index) or target is WindowIndex:
                    raise CorruptFileError(f"tree node {level}/{j}: unknown index kind {spec['kind']!r}")
                sub = sub_arrays(arrays, f"node{level}_{j}")
                for name, whole in (("vectors", index._vectors), ("codes", index._codes)):
                    if spec.get(f"shared_{name}") is True:
                        if name in sub or whole is None or bounds[j + 1] > whole.shape[0]:
                            raise CorruptFileError(f"tree node {level}/{j}: shared {name} do not fit")
                        sub[name] = whole[int(bounds[j]):int(bounds[j + 1])]
                node = target._restore(spec["meta"], sub)
                live = node._idmap.live_ids()
                if node.dim != index.dim or node.metric != index.metric or \
                        (live.size and (live.min() < 0 or live.max() >= size)):
                    raise CorruptFileError(f"tree node {level}/{j} does not match its block of rows")
                nodes.append(node)
            index._levels.append((bounds, nodes))
        return index

    def _check_loaded(self) -> None:
        super()._check_loaded()
        n, built = self._n, self._n_built
        if not np.isfinite(self._attrs).all() or (built > 1 and (np.diff(self._attrs[:built]) < 0).any()):
            raise CorruptFileError("attributes are not finite or the tree's rows are not sorted by attribute")
        deleted = self._deleted != 0
        if int(deleted.sum()) != self._n_deleted or not np.array_equal(deleted, self._idmap.slot_ids < 0):
            raise CorruptFileError("deleted-point bookkeeping is inconsistent")
        if n * self.dim < (1 << 28) and np.isnan(self._vectors).any():
            raise CorruptFileError("stored vectors contain NaN")


def _can_share_rows(node: Index, rows: int) -> bool:
    """Whether a freshly built node can read its float32 rows from the window's storage: an HNSW node (or one
    over codes keeping its vectors in RAM) holding exactly those rows in slot order."""
    return isinstance(node, HNSWIndex) and node._n == rows and node._n_deleted == 0 and \
        getattr(node, "vector_storage", "memory") == "memory"


@functools.lru_cache(maxsize=None)
def _accepts(cls: type, method: str, parameter: str) -> bool:
    return parameter in inspect.signature(getattr(cls, method)).parameters


def _grow(arr: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + arr.shape[1:], arr.dtype)  # zeros: saved files hold no stale bytes
    out[:arr.shape[0]] = arr[:rows]
    return out

