"""Fusion of ranked result lists (dense + sparse hybrid search), pure numpy.

Every function takes *runs*: ``(ids, scores)`` pairs of 1-D arrays for one query, best first, where a larger
score is better (turn distances into scores before fusing, e.g. ``-distance``) and id ``-1`` marks padding.
They return fused ``(ids int64, scores float64)``, best first, ties broken by smaller id, at most ``k`` long.

- :func:`rrf`: reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): ``sum 1 / (c + rank)`` over
  the runs that hold the document, rank counted from 1, ``c = 60`` by default. Scores are ignored.
- :func:`linear`: ``alpha * norm(run0) + (1 - alpha) * norm(run1)``; ``norm`` is ``"minmax"`` (scores scaled
  to [0, 1] within the run) or ``"zscore"`` (minus the run's mean, over its standard deviation). A document
  missing from a run gets that run's lowest normalised score (0 for min-max), i.e. it is treated as ranking just
  below the run's depth.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError

NORMS = ("minmax", "zscore")
FUSIONS = ("rrf", "linear")


def _clean(run: tuple[np.ndarray, np.ndarray], what: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(run, (tuple, list)) or len(run) != 2:
        raise InvalidInputError(f"{what} must be an (ids, scores) pair")
    ids = np.asarray(run[0]).reshape(-1)
    scores = np.asarray(run[1], np.float64).reshape(-1)
    if ids.shape != scores.shape:
        raise InvalidInputError(f"{what}: ids and scores differ in length ({ids.shape[0]} vs {scores.shape[0]})")
    if ids.size and ids.dtype.kind not in "iu":
        raise InvalidInputError(f"{what}: ids must be integers; got dtype {ids.dtype}")
    keep = (ids >= 0) & np.isfinite(scores)
    ids = ids[keep].astype(np.int64)
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise InvalidInputError(f"{what} holds an id twice")
    return ids, scores[keep]


def best_first(ids: np.ndarray, scores: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` (all if None) largest ``scores`` with their ``ids``, best first; ties by smaller id."""
    order = np.lexsort((ids, -scores))
    if k is not None:
        order = order[:k]
    return ids[order], scores[order]


def _check_k(k: int | None) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
        raise InvalidInputError(f"k must be a positive integer; got {k!r}")
    return int(k)


def rrf(runs: Sequence[tuple[np.ndarray, np.ndarray]], k: int | None = None, *, c: float = 60.0,
        weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of ``runs`` (optionally weighted per run)."""
    k = _check_k(k)
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not c >= 0:
        raise InvalidInputError(f"c must be a number >= 0; got {c!r}")
    if weights is None:
        weights = [1.0] * len(runs)
    if len(weights) != len(runs):
        raise InvalidInputError(f"{len(weights)} weights for {len(runs)} runs")
    all_ids, all_s = [], []
    for j, (run, w) in enumerate(zip(runs, weights)):
        ids, _ = _clean(run, f"run {j}")
        all_ids.append(ids)
        all_s.append(float(w) / (float(c) + np.arange(1, ids.shape[0] + 1, dtype=np.float64)))
    if not all_ids:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    uid, inv = np.unique(np.concatenate(all_ids), return_inverse=True)
    score = np.bincount(inv, weights=np.concatenate(all_s), minlength=uid.shape[0])
    return best_first(uid, score, k)


def normalize(scores: np.ndarray, norm: str = "minmax") -> np.ndarray:
    """Scores of one run scaled by ``norm`` ("minmax": to [0, 1]; "zscore": zero mean, unit deviation). A run
    whose scores are all equal maps to all ones (minmax) or all zeros (zscore)."""
    if norm not in NORMS:
        raise InvalidInputError(f"norm must be one of {NORMS}; got {norm!r}")
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return s.copy()
    if norm == "minmax":
        lo, hi = s.min(), s.max()
        return (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
    sd = s.std()
    return (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)


def linear(run_a: tuple[np.ndarray, np.ndarray], run_b: tuple[np.ndarray, np.ndarray], k: int | None = None, *,
           alpha: float = 0.5, norm: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """``alpha * norm(a) + (1 - alpha) * norm(b)`` over the union of the two runs."""
    k = _check_k(k)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise InvalidInputError(f"alpha must be a number in [0, 1]; got {alpha!r}")
    if norm not in NORMS:
        raise InvalidInputError(f"norm must be one of {NORMS}; got {norm!r}")
    ids_a, s_a = _clean(run_a, "run a")
    ids_b, s_b = _clean(run_b, "run b")
    n_a, n_b = normalize(s_a, norm), normalize(s_b, norm)
    uid = np.union1d(ids_a, ids_b)
    score = np.zeros(uid.shape[0], np.float64)
    for ids, n, w in ((ids_a, n_a, float(alpha)), (ids_b, n_b, 1.0 - float(alpha))):
        filled = np.full(uid.shape[0], n.min() if n.size else 0.0)
        filled[np.searchsorted(uid, ids)] = n
        score += w * filled
    return best_first(uid, score, k)


def check_options(fusion: str, norm: str) -> None:
    """Refuse an unknown ``fusion`` or ``norm`` before any ranking is computed."""
    if fusion not in FUSIONS:
        raise InvalidInputError(f"fusion must be one of {FUSIONS}; got {fusion!r}")
    if norm not in NORMS:
        raise InvalidInputError(f"norm must be one of {NORMS}; got {norm!r}")


def fuse(dense: tuple[np.ndarray, np.ndarray], sparse: tuple[np.ndarray, np.ndarray], k: int | None = None, *,
         fusion: str = "rrf", alpha: float = 0.5, norm: str = "minmax", c: float = 60.0
         ) -> tuple[np.ndarray, np.ndarray]:
    """Hybrid fusion of one dense and one sparse run: ``fusion="rrf"`` (``alpha`` ignored) or ``"linear"``
    (``alpha`` weighs the dense run, ``1 - alpha`` the sparse one)."""
    if fusion == "rrf":
        return rrf([dense, sparse], k, c=c)
    if fusion == "linear":
        return linear(dense, sparse, k, alpha=alpha, norm=norm)
    raise InvalidInputError(f"fusion must be one of {FUSIONS}; got {fusion!r}")
