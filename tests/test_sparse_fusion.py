"""Fusion of dense and sparse result lists: reciprocal rank fusion and normalised linear fusion."""

from __future__ import annotations

import numpy as np
import pytest

from simdex.errors import InvalidInputError
from simdex.sparse.fusion import fuse, linear, normalize, rrf


def test_rrf_by_hand():
    a = (np.array([10, 20, 30]), np.array([0.9, 0.8, 0.1]))
    b = (np.array([30, 40, 10, -1]), np.array([5.0, 4.0, 3.0, -np.inf]))
    ids, scores = rrf([a, b], c=60)
    expected = {10: 1 / 61 + 1 / 63, 20: 1 / 62, 30: 1 / 63 + 1 / 61, 40: 1 / 62}
    assert dict(zip(ids.tolist(), scores.tolist())) == pytest.approx(expected)
    # 10 and 30 tie: smaller id first; then 20 and 40 tie
    assert ids.tolist() == [10, 30, 20, 40]
    assert rrf([a, b], 2)[0].tolist() == [10, 30]
    # weights scale each run's contribution
    w_ids, _ = rrf([a, b], weights=[1.0, 0.0])
    assert w_ids[:3].tolist() == [10, 20, 30]


def test_normalize():
    s = np.array([3.0, 1.0, 2.0])
    np.testing.assert_allclose(normalize(s, "minmax"), [1.0, 0.0, 0.5])
    z = normalize(s, "zscore")
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    assert normalize(np.array([2.0, 2.0]), "minmax").tolist() == [1.0, 1.0]
    assert normalize(np.array([2.0, 2.0]), "zscore").tolist() == [0.0, 0.0]
    assert normalize(np.zeros(0)).shape == (0,)


def test_linear_by_hand_and_alpha_extremes():
    dense = (np.array([1, 2, 3]), np.array([-0.1, -0.3, -0.5]))  # negated distances
    sparse = (np.array([3, 4]), np.array([12.0, 2.0]))
    ids, scores = linear(dense, sparse, alpha=0.5, norm="minmax")
    # dense norm: 1 -> 1, 2 -> .5, 3 -> 0, 4 -> 0 (missing); sparse norm: 3 -> 1, 4 -> 0, 1, 2 -> 0 (missing)
    expected = {1: 0.5, 2: 0.25, 3: 0.5, 4: 0.0}
    assert dict(zip(ids.tolist(), scores.tolist())) == pytest.approx(expected)
    assert ids.tolist() == [1, 3, 2, 4]
    assert linear(dense, sparse, alpha=1.0)[0][:3].tolist() == [1, 2, 3]
    assert linear(dense, sparse, alpha=0.0)[0][0] == 3
    # z-scores by hand: dense (-0.1, -0.3, -0.5) -> (+z, 0, -z) with z = 0.2 / std = 1.2247; sparse (12, 2) ->
    # (+1, -1); a document missing from a run takes that run's lowest z-score
    z = 0.2 / np.std([-0.1, -0.3, -0.5])
    by_hand = {1: 0.5 * z - 0.5, 2: -0.5, 3: -0.5 * z + 0.5, 4: -0.5 * z - 0.5}
    zs_ids, zs = linear(dense, sparse, 4, alpha=0.5, norm="zscore")
    assert zs_ids.tolist() == [1, 3, 2, 4]
    assert dict(zip(zs_ids.tolist(), zs.tolist())) == pytest.approx(by_hand)
    assert linear(dense, sparse, 2, alpha=0.5, norm="zscore")[0].tolist() == [1, 3]


def test_fusion_of_real_runs_prefers_agreement(wordnet_small):
    """Dense run = exact cosine neighbours of real embeddings; sparse run = the same ids in another order."""
    base, q = wordnet_small.base[:2000].astype(np.float32), wordnet_small.queries[0].astype(np.float32)
    sims = base @ q
    d_ids = np.argsort(-sims)[:50]
    dense = (d_ids, sims[d_ids])
    s_ids = d_ids[::-1][:30].copy()
    sparse = (s_ids, np.linspace(10, 1, 30))
    for method in ("rrf", "linear"):
        ids, scores = fuse(dense, sparse, 10, fusion=method)
        assert ids.shape == (10,) and np.all(np.diff(scores) <= 0) and len(set(ids.tolist())) == 10
        assert set(ids.tolist()) <= set(d_ids.tolist())
    # a document at the top of both runs wins
    both = (np.r_[d_ids[0], s_ids], np.r_[11.0, sparse[1]])
    assert fuse(dense, both, 1, fusion="rrf")[0][0] == d_ids[0]


@pytest.mark.parametrize("call, message", [
    (lambda: fuse((np.array([1]), np.array([1.0])), (np.array([2]), np.array([1.0])), fusion="max"), "fusion"),
    (lambda: linear((np.array([1]), np.array([1.0])), (np.array([2]), np.array([1.0])), alpha=1.5), "alpha"),
    (lambda: linear((np.array([1]), np.array([1.0])), (np.array([2]), np.array([1.0])), norm="l2"), "norm"),
    (lambda: rrf([(np.array([1, 2]), np.array([1.0]))]), "differ in length"),
    (lambda: rrf([(np.array([1, 1]), np.array([1.0, 0.5]))]), "twice"),
    (lambda: rrf([(np.array([1.5]), np.array([1.0]))]), "integers"),
    (lambda: rrf([(np.array([1]), np.array([1.0]))], k=0), "k"),
    (lambda: rrf([(np.array([1]), np.array([1.0]))], c=-1), "c"),
])
def test_bad_input(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()
