"""Search by target recall: ``index.search(q, k, target_recall=0.95)`` picks the search effort itself.

When an index is built (an ``add`` of at least 5,000 vectors to an index without a recall curve, or one that
takes it past twice the size it was measured at), 500 of the new vectors are held out: the others are added, the
held-out ones are searched as queries at each effort of a grid (HNSW's ``ef``, a Vamana graph's ``L``, the lists
an IVF index probes) for k = 1, 10 and 100, their exact neighbours found by brute force, and then they are added
too. A target recall then maps to the smallest effort whose measured recall, less 1.645 standard errors, reaches
it, interpolated between grid points (the curve of the nearest measured k). Held-out queries matter: a vector
already in a graph finds itself and the neighbours it was linked to, which made self-queries promise recall 0.97
where real queries got 0.48 (GloVe, HNSW, ef 10). A target above what the index reaches at any effort (codes
without re-ranking) gets the largest effort measured. The curves are saved with the index;
:meth:`RecallCalibrated.info` reports them, and :meth:`RecallCalibrated.calibrate` measures them again on queries
the caller gives.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._heap import merge_block_topk, new_heaps, sort_heaps
from .._validate import check_vectors
from ..errors import CorruptFileError, InvalidInputError
from ..metrics import pairwise

log = logging.getLogger(__name__)

SAMPLE_QUERIES = 500
# an effort is chosen when its measured recall less this many standard errors (of the mean over the sample
# queries) reaches the target: one-sided 95%, so that a sample's luck does not pick too small an effort
CONFIDENCE_Z = 1.645
MIN_BUILD_ROWS = 10 * SAMPLE_QUERIES  # an add this large (or a first index this large) is a build: calibrated
CALIBRATION_KS = (1, 10, 100)
_EXACT_BLOCK_BYTES = 16 << 20  # of vectors read, and of distances, at a time for the exact neighbours


def check_target_recall(target: Any, effort: Any = None, effort_name: str = "ef") -> float:
    """``target`` as a recall in (0, 1]; an explicit ``effort`` beside it is an error naming ``effort_name``."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < float(target) <= 1:
        raise InvalidInputError(f"target_recall must be a number in (0, 1]; got {target!r}")
    if effort is not None:
        raise InvalidInputError(f"give {effort_name} or target_recall, not both")
    return float(target)


@dataclass
class RecallCurve:
    """Recall@``k`` (mean over ``queries`` held-out queries, and its standard error) at each effort of
    ``param``, measured on an index of ``rows`` vectors."""

    k: int
    param: str
    efforts: list[int]
    recalls: list[float]
    errors: list[float]
    rows: int
    queries: int

    def effort_for(self, target: float) -> int:
        """The smallest effort whose recall, less :data:`CONFIDENCE_Z` standard errors, reaches ``target``
        (linear in log effort between the grid points around it; the largest effort measured when none does)."""
        efforts = self.efforts
        recalls = [r - CONFIDENCE_Z * e for r, e in zip(self.recalls, self.errors)]
        for i, (effort, recall) in enumerate(zip(efforts, recalls)):
            if recall >= target:
                if i == 0 or recalls[i - 1] >= recall:
                    return effort
                lo, hi = math.log(efforts[i - 1]), math.log(effort)
                share = (target - recalls[i - 1]) / (recall - recalls[i - 1])
                return min(effort, math.ceil(math.exp(lo + share * (hi - lo))))
        return efforts[-1]

    def to_meta(self) -> dict[str, Any]:
        return {"k": self.k, "param": self.param, "efforts": self.efforts, "recalls": self.recalls,
                "errors": self.errors, "rows": self.rows, "queries": self.queries}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RecallCurve:
        try:
            curve = cls(int(meta["k"]), str(meta["param"]), [int(e) for e in meta["efforts"]],
                        [float(r) for r in meta["recalls"]], [float(e) for e in meta["errors"]], int(meta["rows"]),
                        int(meta["queries"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"bad recall curve in file header ({exc!r})") from None
        if not len(curve.efforts) == len(curve.recalls) == len(curve.errors) or not curve.efforts:
            raise CorruptFileError("bad recall curve in file header (efforts and recalls differ in length)")
        return curve


def _exact_neighbours(index: Any, queries: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The ids (nq, k) of the exact k nearest of ``ids`` to each query, nearest first, by the index's metric: the
    index's vectors read in chunks (never all copied at once) and merged into one heap per query."""
    heap_d, heap_i = new_heaps(queries.shape[0], k)
    chunk = max(256, _EXACT_BLOCK_BYTES // (4 * max(index.dim, queries.shape[0])))
    for start in range(0, ids.shape[0], chunk):
        block = pairwise(index.metric, queries, index.get_vectors(ids[start:start + chunk]))
        merge_block_topk(block, start, heap_d, heap_i)
    sort_heaps(heap_d, heap_i)
    return ids[heap_i]  # k <= len(ids): every slot of the heaps is filled


def _needs_training(index: Any) -> bool:
    """Whether ``index`` trains on its first add (an index over codes) and has not been trained yet."""
    if not hasattr(index, "train"):
        return False
    trained = getattr(index, "is_trained", None)
    if trained is None:
        codec = getattr(index, "codec", None)
        trained = True if codec is None else codec.is_trained
    return not trained


def calibrating(add: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Decorator of an index's ``add``: an add that builds the index holds out :data:`SAMPLE_QUERIES` of its
    vectors, measures the recall curves with them once the others are in, then adds them (see the module)."""
    @functools.wraps(add)
    def add_calibrated(self: Any, vectors: Any, ids: Any = None, **options: Any) -> np.ndarray:
        try:
            n = np.shape(vectors)[0] if np.ndim(vectors) == 2 else 0
        except (ValueError, TypeError):  # ragged or not numbers: add's own checks say what is wrong
            n = 0
        if getattr(self, "_calibrating", False) or not self._calibration_due(n):
            return add(self, vectors, ids, **options)
        x = check_vectors(vectors, self.dim, normalize=self.metric == "cosine")
        new_ids = self._new_ids(n, ids)
        if len(self) == 0 and _needs_training(self):
            self.train(x)  # on every row of the build, the held-out ones too, as the add itself would have
        self._reserve_rows(n)  # room for the whole batch now: two adds must not grow the arrays twice
        held = np.zeros(n, bool)
        held[np.random.default_rng(len(self)).choice(n, SAMPLE_QUERIES, replace=False)] = True
        self._calibrating = True
        try:
            add(self, x[~held], new_ids[~held], **options)
            try:
                self.calibrate(x[held], threads=options.get("threads"))
            except (MemoryError, OSError) as exc:  # the add must not fail for want of a curve
                log.warning("measuring the recall curve failed (%s); the index has none", exc)
                self._calibration_failed_rows = len(self)
            add(self, x[held], new_ids[held], **options)
        finally:
            self._calibrating = False
        return new_ids
    return add_calibrated


class RecallCalibrated:
    """Mixin of the indexes that search by target recall. A subclass names its effort parameter
    (``_effort_param``) and grid (:meth:`_effort_grid`), decorates its ``add`` with :func:`calibrating`, passes a
    search's ``target_recall`` through :meth:`_effort_for`, and keeps the curves in its file
    (``_calibration_meta`` / ``_restore_calibration``)."""

    _effort_param: ClassVar[str] = "ef"

    def _effort_grid(self, k: int) -> list[int]:
        return sorted({max(k, e) for e in (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)})

    def _reserve_rows(self, n: int) -> None:
        """Make room for ``n`` more vectors at once (an index whose arrays grow geometrically)."""

    def _curves(self) -> dict[int, RecallCurve]:
        curves = getattr(self, "_recall_curves", None)
        if curves is None:
            curves = self._recall_curves = {}
        return curves

    def _calibration_due(self, n_new: int) -> bool:
        if n_new < MIN_BUILD_ROWS:
            return False
        curve = self._curves().get(10)
        # after a measurement that failed (no memory), the next try waits for the index to double as well
        rows = curve.rows if curve is not None else getattr(self, "_calibration_failed_rows", 0)
        return len(self) + n_new >= 2 * rows

    def calibrate(self, queries: Any, *, ks: tuple[int, ...] = CALIBRATION_KS, threads: int | None = None,
                  query_ids: np.ndarray | None = None) -> dict[int, RecallCurve]:
        """Measure the recall@k curves with ``queries`` (n, dim), which should be like the real queries and not
        in the index (a build holds out some of its vectors for this), against exact neighbours; they replace the
        curves the index had. ``query_ids``: the queries are the index's own vectors of these ids, and each one's
        own id is left out of its neighbours, found and exact (self-queries). Returns them by k."""
        q = check_vectors(queries, self.dim, "queries", normalize=self.metric == "cosine")
        live = self.ids
        own = 0 if query_ids is None else 1
        ks = tuple(k for k in ks if k + own <= live.shape[0])
        if not ks:
            raise InvalidInputError(f"the index holds {live.shape[0]} vectors: too few to calibrate")
        truth = _exact_neighbours(self, q, live, max(ks) + own)
        if query_ids is not None:
            truth = [row[row != self_id] for row, self_id in zip(truth, query_ids)]
        curves = {}
        for k in ks:
            exact = [set(row[:k].tolist()) for row in truth]
            efforts, recalls, errors = [], [], []
            for effort in self._effort_grid(k):
                _, found = self.search(q, k + own, threads=threads, **{self._effort_param: effort})
                if query_ids is not None:
                    found = [row[row != self_id][:k] for row, self_id in zip(found, query_ids)]
                per_query = np.array([len(set(row.tolist()) & t) / k for row, t in zip(found, exact)])
                efforts.append(int(effort))
                recalls.append(float(per_query.mean()))
                errors.append(float(per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0.0)
                if recalls[-1] >= 0.9995:
                    break
            curves[k] = RecallCurve(k, self._effort_param, efforts, recalls, errors, int(live.shape[0]),
                                    int(q.shape[0]))
        self._recall_curves = curves
        return curves

    def calibrate_self(self, threads: int | None = None) -> None:
        """Measure the recall curves again with :data:`SAMPLE_QUERIES` of the index's own vectors as queries (each
        one's own id left out: :meth:`calibrate`'s ``query_ids``), after a change of the index that no add held
        queries out for (a retraining, an add in chunks). Too few vectors, or no memory for it: no curve."""
        self._recall_curves = {}
        live = self.ids
        if live.shape[0] < MIN_BUILD_ROWS:
            return
        chosen = np.sort(np.random.default_rng(live.shape[0]).choice(live, SAMPLE_QUERIES, replace=False))
        try:
            self.calibrate(self.get_vectors(chosen), threads=threads, query_ids=chosen)
        except (MemoryError, OSError) as exc:  # the change must not fail for want of a curve
            log.warning("measuring the recall curve failed (%s); the index has none", exc)
            self._calibration_failed_rows = live.shape[0]

    def recall_curve(self, k: int = 10) -> RecallCurve | None:
        """The curve measured for ``k``, or None."""
        return self._curves().get(k)

    def _effort_for(self, target_recall: Any, k: int, effort: Any) -> Any:
        """The effort of a search asked for ``target_recall`` (``effort``, the explicit one, must then be None):
        from the curve of the measured k nearest to ``k`` (in ratio). A small index never built in one go has none:
        it is searched at the grid's largest effort (nearly exact, and cheap at that size)."""
        if target_recall is None:
            return effort
        target = check_target_recall(target_recall, effort, self._effort_param)
        curves = self._curves()
        if not curves:
            if len(self) < MIN_BUILD_ROWS:
                return self._effort_grid(k)[-1]
            raise InvalidInputError(f"this index has no recall curve, so target_recall cannot be met: curves are "
                                    f"measured when at least {MIN_BUILD_ROWS} vectors are added at once, or by "
                                    f"index.calibrate(sample_queries)")
        nearest = min(curves, key=lambda m: abs(math.log(m / k)))
        return curves[nearest].effort_for(target)

    def info(self) -> dict[str, Any]:
        """What the index knows of itself: its size and its recall curves (by k)."""
        return {"kind": type(self).kind, "ntotal": len(self),
                "recall_curves": {k: c.to_meta() for k, c in sorted(self._curves().items())}}

    def _calibration_meta(self) -> dict[str, Any]:
        return {"recall_curves": [c.to_meta() for _, c in sorted(self._curves().items())]}

    def _restore_calibration(self, meta: dict[str, Any]) -> None:
        self._recall_curves = {c.k: c for c in map(RecallCurve.from_meta, meta.get("recall_curves", ()))}
