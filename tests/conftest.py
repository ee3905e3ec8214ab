"""Shared fixtures: slices of the real data sets in ../shared/data, with numpy brute-force ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from simdex import datasets

SLICE_BASE = 20_000
SLICE_QUERIES = 300


@pytest.fixture(scope="session", params=sorted(datasets.DATASETS))
def dataset_slice(request) -> datasets.Dataset:
    """A 20k-vector slice of each real data set, 300 queries, exact top-100 by numpy brute force."""
    return _slice(request.param, SLICE_BASE, SLICE_QUERIES)


_CACHE: dict = {}


def _slice(name: str, n_base: int, n_queries: int) -> datasets.Dataset:
    key = (name, n_base, n_queries)
    if key not in _CACHE:
        if name not in _CACHE:
            _CACHE[name] = datasets.load(name)
        _CACHE[key] = _CACHE[name].subset(n_base, n_queries)
    return _CACHE[key]


@pytest.fixture(scope="session")
def fashion_small() -> datasets.Dataset:
    return _slice("fashion-mnist-784", 5_000, 100)


@pytest.fixture(scope="session")
def glove_small() -> datasets.Dataset:
    return _slice("glove-50", 5_000, 100)


@pytest.fixture(scope="session")
def wordnet_small() -> datasets.Dataset:
    return _slice("wordnet-minilm-384", 5_000, 100)


@pytest.fixture(scope="session")
def wordnet_20k() -> datasets.Dataset:
    return _slice("wordnet-minilm-384", SLICE_BASE, SLICE_QUERIES)


def numpy_knn(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 brute force returning (distances in simdex's public convention, ids)."""
    x = base.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1) if x.shape[0] * q.shape[0] * x.shape[1] < 5e7 else \
            (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
    else:
        d = 1.0 - q @ x.T
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, 1), ids


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """A simdex server over a fresh database, shared by the tests of a module (each uses its own collections)."""
    from ._live import served_database
    with served_database(tmp_path_factory.mktemp("served") / "db") as live:
        yield live
