"""The record vectors of a collection: a *main* HNSW index over most rows and a small *growing* exact index over
the newest ones.

Writes only touch the growing part (and mark deletions in the main one), so they are cheap; the optimizer folds
the growing rows into a copy of the main index and swaps the copy in (a :class:`~simdex.store.sides.SideIndex`
rebuilt aside), so searches never wait for index building. Keyed by row id (rid): a rid's vector never changes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .._storage import InVectorFile, VectorFile, drop_pages
from .._validate import already_checked
from ..dense.calibration import check_target_recall
from ..errors import InvalidInputError
from ..dense import FlatIndex
from . import buildonce
from .config import DEVICE_KINDS, IVF_KINDS, MAIN_INDEXES, TRAINED_KINDS, new_main_index, retrain
from .device import DeviceMirror
from .sides import SideIndex, remove_present

# A codec trained on a handful of rows encodes the others badly (int8 trained on one row: recall@10 0.03 on
# WordNet), and the first build of an index that trains (codes, IVF lists) trains it: it waits for this many rows
# (fewer are searched exactly), and later merges train it again as the collection grows (``wants_retraining``).
FIRST_CODE_BUILD_ROWS = 1000
# and never fewer than a PQ codec's 256 centroids per sub-quantizer
MIN_TRAINING_ROWS = 256


def _add_to_ivf(index: Any, ids: np.ndarray, vectors: np.ndarray, threads: int | None) -> None:
    """Add a merge's rows to an IVF index without the copies of them that an add measuring the recall curve
    makes (it holds queries out of the rows): the curve, when one is due, is measured after the add with
    self-queries. (The add itself encodes a chunk at a time.)"""
    due = index._calibration_due(len(ids))
    index._calibrating = True  # (the add's own measurement off)
    try:
        index.add(vectors, ids, threads=threads)
    finally:
        index._calibrating = False
    if due and not index.wants_retraining():  # (a retraining measures it)
        index.calibrate_self(threads)


class RecordVectors(SideIndex):
    """Main index + growing exact segment. ``index_kind``: a kind of :data:`~simdex.store.config.MAIN_INDEXES`
    (HNSW over float32 vectors or codes, IVF-PQ, Vamana in memory or on disk, SPANN built once), or "flat", which
    keeps every row in the exact segment."""

    def __init__(self, dim: int, metric: str, index_kind: str, params: dict[str, Any], merge_rows: int,
                 storage_dir: str | None = None, vector_files: bool = False) -> None:
        super().__init__()
        self.dim, self.metric, self.index_kind, self.params = dim, metric, index_kind, params
        self.merge_rows = merge_rows
        self.storage_dir = storage_dir  # where a code index keeps its float32 vectors (unlinked files)
        # an IVF index keeps them in a named, append-only VectorFile there instead, which its copies share and the
        # checkpoints name (a collection's main vectors; a field's index is rebuilt on open, so it needs none)
        self.vector_files = vector_files
        self.main: Any = None  # an index of the kind's class (config.MAIN_INDEXES): the index contract plus copy()
        self.building: str | None = None  # the folder a build-once index is being built into
        self.growing = FlatIndex(dim, metric)
        self.last_write = time.monotonic()
        # a collection with device=: its rows mirrored on a GPU, which answers its plain searches
        device = params.get("device", "cpu") if index_kind in DEVICE_KINDS else "cpu"
        self.mirror = DeviceMirror(dim, metric, device, index_kind, params) if device != "cpu" else None

    def reset(self, main: Any = None, growing: FlatIndex | None = None) -> None:
        self.main, self.growing = main, growing if growing is not None else FlatIndex(self.dim, self.metric)
        if self.mirror is not None:
            self.mirror.reset()

    # ---- writes (under the collection's write lock) ----------------------------------------------------------------
    def add(self, rids, vectors, metadatas, documents) -> None:
        self.growing.add_validated(vectors, rids)
        if self.mirror is not None:
            self.mirror.add(rids, vectors)
        self.last_write = time.monotonic()

    def remove(self, rids) -> None:
        if rids.size == 0:
            return
        in_growing = self.growing._idmap.lookup(rids) >= 0
        if in_growing.any():
            self.growing.remove(rids[in_growing])
        if self.mirror is not None:
            self.mirror.remove(rids)
        rest = rids[~in_growing]
        if rest.size and self.main is not None:
            remove_present(self.main, rest)
        self.record("remove", rids)

    # ---- reads (under the read side) --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.growing) + (len(self.main) if self.main is not None else 0)

    def row_ids(self) -> np.ndarray:
        """Every row id (int64), the main index's then the growing segment's."""
        parts = [self.growing.ids] if self.main is None else [self.main.ids, self.growing.ids]
        return np.concatenate(parts).astype(np.int64, copy=False)

    def vectors_of(self, rids: np.ndarray) -> np.ndarray:
        out = np.empty((rids.shape[0], self.dim), np.float32)
        in_growing = self.growing._idmap.lookup(rids) >= 0
        if in_growing.any():
            out[in_growing] = self.growing.get_vectors(rids[in_growing])
        if (~in_growing).any():
            out[~in_growing] = self.main.get_vectors(rids[~in_growing])
        return out

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None, ef: int | None,
               threads: int | None, target_recall: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rids), (nq, <= k) each, nearest first, -1 rids for no hit. ``target_recall`` instead of
        ``ef``: the main index picks its effort (the growing segment is searched exactly anyway)."""
        if target_recall is not None:
            check_target_recall(target_recall, ef)  # here too: no main index may be there to check it
            if self.index_kind in MAIN_INDEXES and not MAIN_INDEXES[self.index_kind].calibrated:
                raise InvalidInputError(f"a {self.index_kind} collection does not search by target_recall (its "
                                        f"index has no recall curve); give ef")
        # (an IVF mirror has no recall curve; a flat one is exact, whatever recall is asked)
        gpu = self.mirror.ensure(self.row_ids, self.vectors_of) if self.mirror is not None and allowed is None \
            and (target_recall is None or self.index_kind == "flat") else None
        if gpu is not None:
            if not len(gpu):
                return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
            return self.mirror.search(gpu, q, k, ef)
        with already_checked(q):  # by the collection
            parts = self._search_parts(q, k, allowed, ef, threads, target_recall)
        if not parts:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        if len(parts) == 1:  # everything indexed (or nothing yet): already the k nearest, in order
            return parts[0]
        dist = np.concatenate([p[0] for p in parts], axis=1)
        rids = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, 1), np.take_along_axis(rids, order, 1)

    def _search_parts(self, q: np.ndarray, k: int, allowed: np.ndarray | None, ef: int | None,
                      threads: int | None, target_recall: float | None) -> list[tuple[np.ndarray, np.ndarray]]:
        parts = []
        if allowed is None or allowed.any():
            main = self.main
            n_main = 0 if main is None else len(main)
            if n_main:
                kk = min(k, n_main)
                options: dict[str, Any] = {} if ef is None else {MAIN_INDEXES[self.index_kind].breadth: ef}
                if target_recall is not None:
                    options["target_recall"] = target_recall
                if getattr(main, "rerank", 0):  # an index over codes: the distances it returns are exact
                    options["rerank"] = max(kk, main.rerank)
                parts.append(main.search(q, kk, filter=allowed, threads=threads, **options))
            if len(self.growing):
                parts.append(self.growing.search(q, min(k, len(self.growing)), filter=allowed, threads=threads))
        return parts

    def stats(self) -> dict[str, Any]:
        main = self.main
        out = {"count": len(self), "indexed": len(main) if main else 0, "unindexed": len(self.growing),
               "deleted_in_index": main._n_deleted if main else 0}
        if self.mirror is not None:
            out["device"] = self.mirror.stats()
        return out

    # ---- the merge into the main graph, rebuilt aside ---------------------------------------------------------------
    def needs_rebuild(self, idle_seconds: float = 0.5) -> bool:
        if self.index_kind == "flat":
            return False
        n = len(self.growing)
        main_n = self.main._n if self.main is not None else 0
        if self.main is not None and self.main._n_deleted > 0.2 * max(main_n, 1):
            return True
        if n == 0:
            return False
        if self._too_few_to_train(n):
            return False
        idle = time.monotonic() - self.last_write > idle_seconds
        if self.main is not None and MAIN_INDEXES[self.index_kind].rebuilds:
            # a build reads every row: wait for the growing segment to be a share of the index (whatever
            # merge_rows says)
            return n >= buildonce.REBUILD_GROWTH * main_n or (idle and n >= buildonce.IDLE_REBUILD_GROWTH * main_n)
        return n >= self.merge_rows or n >= max(2048, 0.05 * main_n) or idle

    def _too_few_to_train(self, n: int) -> bool:
        """Whether ``n`` growing rows are too few to build the first code index from (FIRST_CODE_BUILD_ROWS)."""
        return self.main is None and self.index_kind in TRAINED_KINDS and \
            n < max(min(self.merge_rows, FIRST_CODE_BUILD_ROWS), MIN_TRAINING_ROWS)

    def snapshot(self) -> Any:
        if self.index_kind == "flat" or self._too_few_to_train(len(self.growing)):
            return None
        moved, vectors = self.growing.rows()  # (a view: the build reads the rows without a copy of them)
        base = self.main
        if not moved.size and (base is None or base._n_deleted <= 0.2 * base._n):
            return None
        return moved, (vectors if moved.size else None), base

    def build(self, snap, threads) -> Any:
        moved, vectors, base = snap
        if MAIN_INDEXES[self.index_kind].rebuilds:
            self.building = buildonce.next_folder(self.storage_dir)  # kept from the checkpoints' clean-up
            return buildonce.build_main(self.dim, self.metric, self.params, self.storage_dir, base, moved, vectors,
                                        self.building), moved
        if base is None:
            new = new_main_index(self.dim, self.metric, self.index_kind, self.params, self.storage_dir, len(moved))
            if self.vector_files and self.storage_dir and isinstance(new, InVectorFile) \
                    and new.vector_storage == "disk":
                new.use_vector_file(VectorFile.create(self.storage_dir, self.dim))
        else:
            new = base.copy()
        if moved.size and self.index_kind in IVF_KINDS:
            _add_to_ivf(new, moved, vectors, threads)
        elif moved.size:
            new.add(vectors, moved, threads=threads)
        if getattr(new, "wants_retraining", lambda: False)():
            # trained on the first merge's few rows: trained again as the collection grows
            retrain(new, self.index_kind, self.params, threads)
        if new._n_deleted > 0.2 * new._n:
            if MAIN_INDEXES[self.index_kind].fresh_consolidation:
                new.consolidate(threads=threads, rebuild=True)
            else:
                new.consolidate(threads=threads)
        if isinstance(new, InVectorFile) and new.vector_file is not None:
            # retraining reads every row of the file, a calibration hundreds of rows at random: their pages leave
            # the process (they stay in the page cache), or a collection larger than memory keeps them resident
            drop_pages(new._vectors)
        return new, moved

    def replay(self, built, kind, args) -> None:
        if kind == "remove" and built[0] is not None:  # rows added meanwhile went to the growing segment: only
            remove_present(built[0], args)            # deletions carry over

    def install(self, built) -> None:
        new, moved = built
        remove_present(self.growing, moved)
        self.main = new
        self.building = None
