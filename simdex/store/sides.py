"""Indexes kept beside a collection's records, all behind one small interface.

Every applied write reaches every side index (:meth:`SideIndex.add` for the rows of an upsert, :meth:`remove` for
the rows it replaces or deletes), under the collection's write lock. A side index that is rebuilt now and then
(the main graph folding in new rows, the window tree, the per-value label graphs) is rebuilt *aside* by
:func:`rebuild_aside`: a cheap snapshot under the write lock, the heavy build with no lock held (searches and
writes go on), then the writes that arrived meanwhile are replayed onto the new index and it is swapped in, under
the write lock again. A new kind of side index is one subclass.

Side indexes are keyed by row id (rid). They keep no files of their own except the record vectors
(:class:`~simdex.store.vectors.RecordVectors`, saved by checkpoints): the others are rebuilt from the metadata
store when the collection opens.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dense import HNSWIndex, WindowIndex
from .config import HNSW_PARAMS

if TYPE_CHECKING:
    from ._rwlock import RWLock

LABEL_GRAPH_MIN = 2000
LABEL_CHECK_SECONDS = 5.0
_BUILD_CHUNK = 50_000


def remove_present(index: Any, rids: np.ndarray) -> None:
    """Remove those of ``rids`` that ``index`` holds (a side index need not hold every record)."""
    present = rids[index._idmap.lookup(rids) >= 0]
    if present.size:
        index.remove(present)


def field_values(metadatas: list[str], field: str) -> list[Any]:
    """The value of the metadata ``field`` (``a.b`` for nested keys) in each record's JSON, None where absent."""
    path = field.split(".")
    out = []
    for meta in metadatas:
        value: Any = json.loads(meta) if meta else None
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        out.append(value)
    return out


class SideIndex:
    """An index fed by every write of a collection, and (optionally) rebuilt aside.

    ``add``/``remove`` run under the collection's write lock (or during recovery). To be rebuilt, a subclass
    implements :meth:`needs_rebuild`, :meth:`snapshot` (under the write lock: cheap; None when there is nothing to
    do), :meth:`build` (no lock: the heavy part), :meth:`replay` (one write that arrived during the build, onto
    the built index) and :meth:`install`; its ``add``/``remove`` call :meth:`record` so that :func:`rebuild_aside`
    can replay them.
    """

    # the named vector field (.fields) whose values the index takes, instead of the record's main vector
    vector_field: str | None = None

    def __init__(self) -> None:
        self.maintenance = threading.Lock()  # one rebuild at a time
        self._pending: list[tuple[str, Any]] | None = None

    def add(self, rids: np.ndarray, vectors: np.ndarray, metadatas: list[str] | None,
            documents: list[str | None] | None) -> None:
        raise NotImplementedError

    def remove(self, rids: np.ndarray) -> None:
        raise NotImplementedError

    def record(self, kind: str, args: Any) -> None:
        """Remember a write for the rebuild in progress, if there is one."""
        if self._pending is not None:
            self._pending.append((kind, args))

    def needs_rebuild(self) -> bool:
        return False

    def snapshot(self) -> Any:
        return None

    def build(self, snap: Any, threads: int | None) -> Any:
        raise NotImplementedError

    def replay(self, built: Any, kind: str, args: Any) -> None:
        raise NotImplementedError

    def install(self, built: Any) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {}


def rebuild_aside(side: SideIndex, rw: RWLock, threads: int | None = None) -> bool:
    """Rebuild ``side`` without blocking readers or writers for the build; True if it swapped a new index in."""
    with side.maintenance:
        with rw.write():  # a consistent cut; copying what the build needs is cheap
            snap = side.snapshot()
            if snap is None:
                return False
            side._pending = []
        try:
            built = side.build(snap, threads)
        except BaseException:
            with rw.write():
                side._pending = None
            raise
        with rw.write():
            for kind, args in side._pending:
                side.replay(built, kind, args)
            side._pending = None
            side.install(built)
    return True


class TextSide(SideIndex):
    """BM25 over the records' documents (``text=True``)."""

    def __init__(self, rids: np.ndarray, documents: list[str]) -> None:
        from ..sparse import SparseIndex
        super().__init__()
        self.index = SparseIndex("bm25")
        for start in range(0, len(rids), _BUILD_CHUNK):
            self.index.add(documents[start:start + _BUILD_CHUNK], rids[start:start + _BUILD_CHUNK])
        self.index.merge(1)

    def add(self, rids, vectors, metadatas, documents) -> None:
        if documents is None:
            return
        with_doc = [j for j, d in enumerate(documents) if d is not None]
        if with_doc:
            self.index.add([documents[j] for j in with_doc], rids[with_doc])

    def remove(self, rids) -> None:
        remove_present(self.index, rids)


class WindowSide(SideIndex):
    """A :class:`~simdex.dense.WindowIndex` over the records whose ``field`` is a number (``window_field``): it
    answers ``where`` filters that are only a range on that field. Opened with every point in its exactly scanned
    buffer; the optimizer builds the tree."""

    def __init__(self, field: str, dim: int, metric: str, params: dict[str, Any], rids: np.ndarray,
                 values: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__()
        self.field, self.dim, self.metric = field, dim, metric
        self.params = {"M": 16, "ef_construction": 100,
                       **{k: v for k, v in params.items() if k in ("M", "ef_construction")}}
        self.index = self._new()
        for start in range(0, rids.shape[0], _BUILD_CHUNK):
            part = rids[start:start + _BUILD_CHUNK]
            self.index.add(vectors_of(part), values[start:start + _BUILD_CHUNK], part)

    def _new(self) -> WindowIndex:
        return WindowIndex(self.dim, self.metric, base_params=self.params, auto_rebuild=False)

    def add(self, rids, vectors, metadatas, documents) -> None:
        if metadatas is None:
            return
        keep, values = [], []
        for j, value in enumerate(field_values(metadatas, self.field)):
            # the same records the SQL filter sees as numbers (JSON true/false are not numbers there)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                keep.append(j)
                values.append(float(value))
        if keep:
            args = (vectors[keep], np.array(values), rids[keep])
            self.index.add(*args)
            self.record("add", args)

    def remove(self, rids) -> None:
        remove_present(self.index, rids)
        self.record("remove", rids)

    def needs_rebuild(self) -> bool:
        return len(self.index) > 0 and self.index.needs_rebuild()

    def snapshot(self) -> Any:
        if len(self.index) == 0:
            return None
        ids = self.index.ids
        return ids, self.index.get_vectors(ids), self.index.get_attributes(ids)

    def build(self, snap, threads) -> WindowIndex:
        ids, vectors, attrs = snap
        new = self._new()
        new.add(vectors, attrs, ids)
        new.rebuild(threads=threads)
        return new

    def replay(self, built, kind, args) -> None:
        if kind == "add":
            built.add(*args)
        else:
            remove_present(built, args)

    def install(self, built) -> None:
        self.index = built

    def search(self, q: np.ndarray, k: int, bounds: tuple[float, float], ef: int | None,
               threads: int | None) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = bounds
        if len(self.index) == 0 or lo > hi:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        return self.index.search(q, min(k, len(self.index)), lo, hi, ef=ef, threads=threads)

    def stats(self) -> dict[str, Any]:
        return {"window": self.index.tree_stats()}


class LabelSide(SideIndex):
    """One HNSW graph per string value of ``field`` (``label_field``) with at least ``LABEL_GRAPH_MIN`` records,
    as in :class:`~simdex.dense.LabelIndex`: a ``where`` that is only that value is an unfiltered walk on the
    value's own graph instead of a filtered walk on the main graph. The optimizer builds the graphs (after open,
    and when a value grows past the threshold); until then such filters take the general path."""

    def __init__(self, field: str, dim: int, metric: str, params: dict[str, Any],
                 values_of: Callable[[], tuple[np.ndarray, list[str]]],
                 vectors_of: Callable[[np.ndarray], np.ndarray], applied_lsn: Callable[[], int], rw: RWLock) -> None:
        super().__init__()
        self._rw = rw
        self.field, self.dim, self.metric = field, dim, metric
        # the label graphs are float32 HNSW graphs, whatever the collection's main index: its HNSW parameters
        self.params = {k: v for k, v in params.items() if k in HNSW_PARAMS and k != "seed"}
        self.min_records = LABEL_GRAPH_MIN
        self.graphs: dict[str, HNSWIndex] = {}
        self._values_of, self._vectors_of, self._applied_lsn = values_of, vectors_of, applied_lsn
        self._checked: tuple[int, float] = (-1, -float("inf"))  # (lsn, time) of the last check that found none

    def add(self, rids, vectors, metadatas, documents) -> None:
        if metadatas is None or not (self.graphs or self._pending is not None):
            return
        rows: dict[str, list[int]] = {}
        for j, value in enumerate(field_values(metadatas, self.field)):
            if isinstance(value, str):
                rows.setdefault(value, []).append(j)
        for value, js in rows.items():
            graph = self.graphs.get(value)
            if graph is not None:
                graph.add(vectors[js], rids[js])
            self.record("add", (value, vectors[js], rids[js]))

    def remove(self, rids) -> None:
        for graph in self.graphs.values():
            remove_present(graph, rids)
        self.record("remove", rids)

    def _to_build(self) -> dict[str, np.ndarray]:
        """Values with at least min_records records and no graph yet -> their rids (caller holds a lock side)."""
        rids, values = self._values_of()
        if not rids.size:
            return {}
        names, inverse, counts = np.unique(np.array(values, dtype=object), return_inverse=True, return_counts=True)
        return {str(names[i]): rids[inverse == i] for i in np.flatnonzero(counts >= self.min_records)
                if str(names[i]) not in self.graphs}

    def needs_rebuild(self) -> bool:
        """Whether a value has grown past min_records without a graph. The check reads the field of every record,
        so after one that found nothing it is repeated only when the data changed and LABEL_CHECK_SECONDS have
        passed (a steady stream of writes costs one scan per interval)."""
        lsn, when = self._checked
        if lsn == self._applied_lsn() or time.monotonic() - when < LABEL_CHECK_SECONDS:
            return False
        with self._rw.read():
            lsn, todo = self._applied_lsn(), self._to_build()
        if not todo:
            self._checked = (lsn, time.monotonic())
        return bool(todo)

    def snapshot(self) -> Any:
        todo = self._to_build()
        return {value: (rids, self._vectors_of(rids)) for value, rids in todo.items()} or None

    def build(self, snap, threads) -> dict[str, HNSWIndex]:
        built = {}
        for value, (rids, vectors) in snap.items():
            graph = HNSWIndex(self.dim, self.metric, **self.params)
            graph.add(vectors, rids, threads=threads)
            built[value] = graph
        return built

    def replay(self, built, kind, args) -> None:
        if kind == "add":
            value, vecs, rids = args
            if value in built:
                built[value].add(vecs, rids)
        else:
            for graph in built.values():
                remove_present(graph, args)

    def install(self, built) -> None:
        self.graphs.update(built)

    def graph_for(self, value: str | None) -> HNSWIndex | None:
        """The graph of ``value`` if it has one with records: it holds exactly the live records with that value
        (the ones the SQL filter would allow)."""
        graph = self.graphs.get(value) if value is not None else None
        return graph if graph is not None and len(graph) else None

    def stats(self) -> dict[str, Any]:
        return {"label_graphs": {v: len(g) for v, g in sorted(self.graphs.items())}}
