"""Label-filtered k-NN: the nearest neighbours among the points that carry a given label.

After the stitched, label-aware graphs of Filtered-DiskANN (Gollapudi et al., "Filtered-DiskANN: Graph Algorithms
for Approximate Nearest Neighbor Search with Filters", WWW 2023): a filtered walk on a graph built over all points
has to cross every region that holds no point of the label, so its cost grows as the label's points get rarer
near the query (on Fashion-MNIST, a shoe's neighbourhood when the query asks for shirts). Here every label with at
least ``label_graph_min`` points gets its own HNSW graph over its members, on which the search is an unfiltered
walk; rarer labels are scanned exactly (recall 1, and cheaper than a graph walk at that size).

- every point carries zero or more labels (non-negative integers below 2**31); the index keeps each label's
  member ids, and one graph per large label (a point with two labels is in two graphs);
- the graph over all points (this class is an :class:`HNSWIndex`) serves searches without a label;
- a query names one label; ``filter=`` restricts it further (the label graph's own filtered search).

Memory on top of :class:`HNSWIndex`: each large label's graph holds a copy of its members' vectors and links
(about the size of an HNSW index over them), plus 8 bytes per (point, label) pair. Searching a label's graph
instead of the global graph with a filter is what makes this faster: measured side by side in
``python -m simdex.bench labels`` (docs/benchmarks.md). Per-label entry points on the global graph alone (the
other Filtered-DiskANN idea) were measured first and gained nothing (0.96-1.00x a plain filtered search).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from .._numba import num_threads
from .._validate import _as_numeric_array, check_positive_int, check_threads
from ..errors import CorruptFileError, InvalidInputError
from ..idmap import IdMap
from ..index import meta_int
from ..metrics import to_public
from ..core.exact import exact_knn_subset
from .hnsw import HNSWIndex

MAX_LABEL = 2**31 - 1


def _non_integral(values: np.ndarray) -> np.ndarray:
    """Mask of the entries of a numeric array that are not integers (NaN and inf included)."""
    if values.dtype.kind in "iu":
        return np.zeros(values.shape, bool)
    return ~np.isfinite(values) | (values != np.floor(values))


def check_labels(labels: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-vector labels as flat (label, row) pairs, int64 each, sorted by row then label, without repeats.

    ``labels``: a 1-D integer array (one label per vector) or a sequence of ``n`` integer sequences (any number
    of labels each, possibly none). Labels are integers in [0, 2**31); errors name the first bad vector."""
    if not isinstance(labels, np.ndarray):
        labels = list(labels) if isinstance(labels, Iterable) and not isinstance(labels, (str, bytes)) else labels
    if isinstance(labels, np.ndarray) or (isinstance(labels, list) and all(np.isscalar(x) for x in labels)):
        flat = _as_numeric_array(labels, "labels")
        if flat.ndim != 1 or flat.shape[0] != n:
            raise InvalidInputError(f"labels must have one entry per vector ({n}); got shape {flat.shape}")
        row_of = np.arange(n)
    else:
        if not isinstance(labels, list) or len(labels) != n:
            got = len(labels) if isinstance(labels, list) else type(labels).__name__
            raise InvalidInputError(f"labels must have one entry per vector ({n}); got {got}")
        parts = [np.atleast_1d(_as_numeric_array(list(x) if isinstance(x, Iterable) else x, f"labels[{i}]"))
                 for i, x in enumerate(labels)]
        for i, part in enumerate(parts):
            if part.ndim != 1:
                raise InvalidInputError(f"labels[{i}] must be a flat list of integers; got shape {part.shape}")
        flat = np.concatenate(parts) if parts else np.empty(0, np.int64)
        row_of = np.repeat(np.arange(n), [part.size for part in parts])
    for bad, what in ((_non_integral(flat), "must be integers"),
                      ((flat < 0) | (flat > MAX_LABEL), f"must be in [0, {MAX_LABEL}]")):
        if bad.any():
            i = int(row_of[np.argmax(bad)])
            raise InvalidInputError(f"labels[{i}] {what}; got {flat[row_of == i].tolist()!r}")
    flat = flat.astype(np.int64)
    order = np.lexsort((flat, row_of))
    flat, row_of = flat[order], row_of[order]
    first = np.ones(flat.size, bool)
    first[1:] = (flat[1:] != flat[:-1]) | (row_of[1:] != row_of[:-1])
    return flat[first], row_of[first]


class LabelIndex(HNSWIndex):
    """HNSW index whose points carry integer labels, searched per label (see the module docstring).

    Takes every parameter of :class:`HNSWIndex`, and ``label_graph_min``: a label gets its own graph once it has
    that many points (fewer: exact scan of its members). ``add(vectors, ids, labels=...)`` attaches labels;
    ``search(queries, k, label=...)`` restricts each query to one label's points; without ``label`` it is a plain
    HNSW search.
    """

    kind = "LabelIndex"

    def __init__(self, dim: int, metric: str = "l2", M: int = 16, ef_construction: int = 200,
                 ef_search: int = 64, seed: int = 0, consolidate_threshold: float = 0.1,
                 label_graph_min: int = 2000) -> None:
        super().__init__(dim, metric, M=M, ef_construction=ef_construction, ef_search=ef_search, seed=seed,
                         consolidate_threshold=consolidate_threshold)
        self.label_graph_min = check_positive_int(label_graph_min, "label_graph_min")
        self._members: dict[int, np.ndarray] = {}  # label -> sorted live ids
        self._graphs: dict[int, HNSWIndex] = {}  # label -> graph over its members (ids as here)
        self._masks: dict[int, np.ndarray] = {}  # label -> member mask over slots, for exact scans; cached
        self._label_lock = threading.Lock()

    def _new_graph(self) -> HNSWIndex:
        return HNSWIndex(self.dim, self.metric, M=self.M, ef_construction=self.ef_construction,
                         ef_search=self.ef_search, seed=self.seed, consolidate_threshold=self.consolidate_threshold)

    @property
    def labels(self) -> np.ndarray:
        """The labels in use, ascending."""
        return np.array(sorted(self._members), np.int64)

    @property
    def label_graphs(self) -> dict[int, int]:
        """Labels that have their own graph -> points in it."""
        return {label: len(graph) for label, graph in sorted(self._graphs.items())}

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays: the graph over all points, the label graphs and the member lists."""
        return super().nbytes + sum(g.nbytes for g in self._graphs.values()) + \
            sum(m.nbytes for m in self._members.values())

    def label_count(self, label: int) -> int:
        """Number of live points carrying ``label``."""
        return int(self._members.get(int(label), np.empty(0)).size)

    def add(self, vectors: Any, ids: Any = None, *, labels: Any = None, threads: int | None = None,
            progress: bool | None = None) -> np.ndarray:
        """Insert vectors (n, dim) with their labels (see :func:`check_labels`; default: none); returns their
        ids. Bad labels raise before anything is stored. A label reaching ``label_graph_min`` points gets its
        graph in this call (built from all its points); labels with a graph have the new points inserted."""
        x, new_ids = self._check_add(vectors, ids)
        pairs = check_labels(labels, x.shape[0]) if labels is not None else None
        threads = check_threads(threads)
        with self._write_lock:
            self._materialize()
            self._insert(x, new_ids, threads, progress)
            self._scratch.clear()
            if pairs is None:
                return new_ids
            pairs_label, pairs_row = pairs
            for label in np.unique(pairs_label).tolist():
                got = pairs_row[pairs_label == label]
                old = self._members.get(label)
                members = np.sort(new_ids[got] if old is None else np.concatenate([old, new_ids[got]]))
                graph = self._graphs.get(label)
                if graph is not None:
                    graph.add(self._vectors[self._idmap.slots_of(new_ids[got])], new_ids[got], threads=threads)
                elif members.size >= self.label_graph_min:
                    graph = self._new_graph()
                    graph.add(self._vectors[self._idmap.slots_of(members)], members, threads=threads)
                with self._label_lock:
                    self._members[label] = members
                    if graph is not None:
                        self._graphs[label] = graph
                    self._masks.pop(label, None)
        return new_ids

    def remove(self, ids: Any) -> int:
        removed = super().remove(ids)
        gone = np.asarray(ids, np.int64).ravel()
        with self._write_lock, self._label_lock:
            for label in list(self._members):
                hit = np.isin(self._members[label], gone)
                if not hit.any():
                    continue
                graph = self._graphs.get(label)
                if graph is not None:
                    graph.remove(self._members[label][hit])
                keep = self._members[label][~hit]
                if keep.size:
                    self._members[label] = keep
                else:
                    del self._members[label]
                    self._graphs.pop(label, None)
                self._masks.pop(label, None)
        return removed

    def consolidate(self, threads: int | None = None) -> None:
        super().consolidate(threads)
        with self._label_lock:
            self._masks.clear()  # slots were renumbered

    def get_labels(self, id: int) -> np.ndarray:
        """Labels of one stored id, ascending."""
        self._idmap.slots_of(np.array([id], np.int64))  # raises UnknownIdError
        return np.array([lab for lab, ids in sorted(self._members.items())
                         if np.searchsorted(ids, id) < ids.size and ids[np.searchsorted(ids, id)] == id], np.int64)

    def _label_mask(self, label: int) -> np.ndarray:
        """Member mask over slots of a label without a graph, cached until its members or the slots change."""
        with self._label_lock:
            mask = self._masks.get(label)
            if mask is not None and mask.shape[0] == self._n:
                return mask
            ids = self._members.get(label, np.empty(0, np.int64))
            mask = self._idmap.allowed_mask(ids) if ids.size else np.zeros(self._n, np.uint8)
            mask = np.ascontiguousarray(mask[:self._n], np.uint8)
            self._masks[label] = mask
            return mask

    def search(self, queries: Any, k: int, *, label: Any = None, ef: int | None = None, filter: Any = None,
               threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query among the points carrying its label.

        Parameters
        ----------
        queries : array (nq, dim)
        k : int, 1 <= k <= ntotal
        label : int or int array (nq,), optional
            The label each query is restricted to (one for all, or one per query). None: no label restriction.
            A label no point carries gives no results ((inf, -1) rows).
        ef : int, optional
            Candidate pool of the graph searches (default ``ef_search``).
        filter : bool mask indexed by id, or array of ids, optional
            Only these ids may be returned, on top of the label.
        threads : int, optional

        Returns
        -------
        distances : float32 (nq, k), ascending; ids : int64 (nq, k); fewer than k members: (inf, -1) padding.
        """
        if label is None:
            return super().search(queries, k, ef=ef, filter=filter, threads=threads)
        q, k, allowed, threads = self._check_search(queries, k, filter, threads)
        nq = q.shape[0]
        lab = _as_numeric_array(label, "label")
        if lab.ndim == 0:
            lab = np.full(nq, lab)
        if lab.ndim != 1 or lab.shape[0] != nq:
            raise InvalidInputError(f"label must be an integer or one integer per query ({nq}); got shape "
                                    f"{lab.shape}")
        if _non_integral(lab).any():
            raise InvalidInputError("label must hold integers")
        lab = lab.astype(np.int64)
        out_d = np.full((nq, k), np.inf, np.float32)
        out_i = np.full((nq, k), -1, np.int64)
        for value in np.unique(lab).tolist():
            rows = np.flatnonzero(lab == value)
            graph = self._graphs.get(value)
            if graph is not None and len(graph):
                kk = min(k, len(graph))
                d, i = graph.search(q[rows], kk, ef=ef, filter=filter, threads=threads)
                out_d[rows, :kk], out_i[rows, :kk] = d, i
                continue
            mask = self._label_mask(value)
            if allowed is not None:
                mask = mask & allowed[:self._n]
            if not mask.any():
                continue
            with num_threads(threads):
                d, s = exact_knn_subset(self.metric, q[rows], self._vectors[:self._n], mask, k)
            out_d[rows] = to_public(self.metric, d)
            out_i[rows] = np.where(s >= 0, self._idmap.slot_ids[np.maximum(s, 0)], -1)
        return out_d, out_i

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = super()._state()
        keys = np.array(sorted(self._members), np.int64)
        sizes = [self._members[int(key)].size for key in keys]
        meta["label_count"] = int(keys.size)
        meta["label_graph_min"] = self.label_graph_min
        labels = {"label_keys": keys, "label_ptr": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                  "label_ids": (np.concatenate([self._members[int(key)] for key in keys]) if keys.size
                                else np.empty(0, np.int64))}
        graphs_meta = {}
        for label, graph in sorted(self._graphs.items()):
            _, sub_meta, sub_arrays = graph.snapshot()
            graphs_meta[str(label)] = sub_meta
            labels.update({f"label{label}/{name}": arr for name, arr in sub_arrays.items()})
        meta["label_graphs"] = graphs_meta
        # the label arrays go first, so that the file ends with the graph's arrays as an HNSWIndex's does
        return meta, {**labels, **arrays}

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> LabelIndex:
        index = super()._from_state(meta, arrays)
        index.label_graph_min = meta_int(meta, "label_graph_min", 1)
        n_labels = meta_int(meta, "label_count")
        keys, ptr, ids = arrays["label_keys"], arrays["label_ptr"], arrays["label_ids"]
        if keys.shape != (n_labels,) or ptr.shape != (n_labels + 1,) or keys.dtype != np.int64 or \
                ptr.dtype != np.int64 or ids.dtype != np.int64 or ids.ndim != 1:
            raise CorruptFileError("label arrays have the wrong shape or type")
        if n_labels and (ptr[0] != 0 or ptr[-1] != ids.shape[0] or (np.diff(ptr) <= 0).any()
                         or keys.min() < 0 or keys.max() > MAX_LABEL or (np.diff(keys) <= 0).any()):
            raise CorruptFileError("label arrays are inconsistent")
        index._members = {int(key): np.array(ids[ptr[i]:ptr[i + 1]]) for i, key in enumerate(keys)}
        graphs_meta = meta["label_graphs"]
        if not isinstance(graphs_meta, dict):
            raise CorruptFileError("label_graphs must be a mapping")
        for key, sub_meta in graphs_meta.items():
            label = int(key)
            if label not in index._members or not isinstance(sub_meta, dict) or \
                    sub_meta.get("dim") != index.dim or sub_meta.get("metric") != index.metric:
                raise CorruptFileError(f"label graph {key!r} does not match the index")
            prefix = f"label{label}/"
            sub_arrays = {name[len(prefix):]: arr for name, arr in arrays.items() if name.startswith(prefix)}
            graph = HNSWIndex._from_state(sub_meta, sub_arrays)
            graph._idmap = IdMap(sub_arrays["slot_ids"])
            graph._check_loaded()
            index._graphs[label] = graph
        return index

    def _check_loaded(self) -> None:
        super()._check_loaded()
        for label, ids in self._members.items():
            if (self._idmap.lookup(ids) < 0).any():
                raise CorruptFileError(f"label {label} lists ids that are not stored")
        for label, graph in self._graphs.items():
            if len(graph) != self._members[label].size or (self._idmap.lookup(graph._idmap.live_ids()) < 0).any():
                raise CorruptFileError(f"label {label}'s graph does not hold the label's points")
