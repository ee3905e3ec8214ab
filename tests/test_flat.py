"""Exact search equals an independent numpy brute force on real data."""

from __future__ import annotations

import numpy as np
import pytest

from simdex import FlatIndex
from simdex.core import exact as _exact
from tests.conftest import numpy_knn


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("name", ["fashion", "glove", "wordnet"])
def test_exact_equals_numpy(name, metric, fashion_small, glove_small, wordnet_small):
    ds = {"fashion": fashion_small, "glove": glove_small, "wordnet": wordnet_small}[name]
    base, queries = ds.base, ds.queries
    if name == "fashion" and metric != "l2":
        base, queries = base / 255.0, queries / 255.0
    index = FlatIndex(ds.dim, metric)
    index.add(base)
    d, i = index.search(queries, 20)
    true_d, true_i = numpy_knn(base, queries, 20, metric)
    scale = np.abs(true_d).max() + 1
    # distances match to float32 precision; ids match except where distances tie
    np.testing.assert_allclose(d, true_d, rtol=1e-4, atol=1e-5 * scale)
    mismatch = i != true_i
    if mismatch.any():
        rows, cols = np.nonzero(mismatch)
        np.testing.assert_allclose(d[rows, cols], true_d[rows, cols], rtol=1e-4, atol=1e-5 * scale)
    assert mismatch.mean() < 0.01


def test_blocking_bounds_memory(monkeypatch, wordnet_small):
    """Small blocks give the same answer as one big block: the block loop is correct at its edges."""
    ds = wordnet_small
    index = FlatIndex(ds.dim, "cosine")
    index.add(ds.base)
    expect = index.search(ds.queries, 7)
    monkeypatch.setattr(_exact, "BLOCK_ENTRIES", 1000)
    got = index.search(ds.queries, 7)
    np.testing.assert_array_equal(got[1], expect[1])
    np.testing.assert_allclose(got[0], expect[0], rtol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("selectivity", [0.0002, 0.1, 0.6])
def test_filtered_scan_equals_numpy(metric, selectivity, wordnet_small):
    """The in-place subset scan (a few queries) and the gather + BLAS path (many queries) both equal a numpy brute
    force over the allowed rows, including fewer allowed rows than k."""
    ds = wordnet_small
    index = FlatIndex(ds.dim, metric)
    index.add(ds.base)
    allowed = np.flatnonzero(np.random.default_rng(3).random(ds.base.shape[0]) < selectivity)
    k = 10
    for nq in (1, 5, _exact.SCAN_MAX_QUERIES + 1):
        queries = ds.queries[:nq]
        d, i = index.search(queries, k, filter=allowed)
        true_d, true_rows = numpy_knn(ds.base[allowed], queries, min(k, allowed.size), metric)
        assert np.array_equal(i[:, :allowed.size], allowed[true_rows]), nq
        np.testing.assert_allclose(d[:, :allowed.size], true_d, rtol=1e-4, atol=1e-5)
        assert (i[:, allowed.size:] == -1).all() and np.isinf(d[:, allowed.size:]).all()


def test_a_first_add_with_unsorted_ids_finds_them_all(fashion_small):
    """The id map kept a first add's ids as they came, unsorted, as if sorted: lookups then missed ids (found by
    IVFIndex.retrain, which re-adds the ids in storage order)."""
    from simdex import FlatIndex, HNSWIndex
    ids = np.random.default_rng(0).permutation(np.arange(100, 400))
    for index in (FlatIndex(fashion_small.dim, fashion_small.metric),
                  HNSWIndex(fashion_small.dim, fashion_small.metric)):
        index.add(fashion_small.base[:300], ids)
        assert np.array_equal(index.get_vectors(ids[::-1]), fashion_small.base[:300][::-1])
        index.remove(ids[:150])
        assert sorted(index.ids.tolist()) == sorted(ids[150:].tolist())
