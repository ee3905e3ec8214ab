"""Adaptive-dimension (AdANNS / matryoshka) search on WordNet embeddings: prefix candidates + full re-rank vs
brute force."""

from __future__ import annotations

import numpy as np
import pytest

from simdex import DimensionMismatchError, DuplicateIdError, InvalidInputError
from simdex import datasets
from simdex.quant import MatryoshkaIndex


def recall(ds, ids):
    return datasets.recall_at_k(ids, ds.ground_truth, 10, ds.base, ds.queries, ds.metric)


def test_prefix_search_with_full_rerank(wordnet_20k):
    ds = wordnet_20k
    index = MatryoshkaIndex(ds.dim, "cosine", prefix=128, rerank=200)
    ids = index.add(ds.base)
    d, i = index.search(ds.queries, 10)
    r = recall(ds, i)
    # the method's recall is that of its candidates (the re-rank is exact): the brute-force top 200 by inner
    # product of the first 128 coordinates of the unit vectors after the PCA rotation (the uncentred second
    # moment's eigenvectors), computed here
    x = ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True)
    q = ds.queries / np.linalg.norm(ds.queries, axis=1, keepdims=True)
    rotation = np.linalg.eigh(x.astype(np.float64).T @ x / len(x))[1][:, ::-1][:, :128]
    xp, qp = x @ rotation, q @ rotation
    candidates = np.argsort(-(qp @ xp.T), axis=1)[:, :200]
    r_ref = np.mean([len(set(c) & set(t)) / 10 for c, t in zip(candidates.tolist(), ds.ground_truth[:, :10].tolist())])
    assert abs(r - r_ref) <= 0.005 and r >= 0.9, (r, r_ref)  # a third of the dimensions find the candidates
    # re-ranked distances are the exact full-dimension cosine distances
    np.testing.assert_allclose(d, 1 - np.einsum("qd,qkd->qk", q, x[i]), atol=1e-5)
    # fewer candidates lose recall; the prefix order alone (rerank = k) loses more
    assert recall(ds, index.search(ds.queries, 10, rerank=10)[1]) < r
    # the PCA rotation is what makes a prefix informative for a model not trained as a matryoshka
    plain = MatryoshkaIndex(ds.dim, "cosine", prefix=128, rerank=200, pca=False)
    plain.add(ds.base)
    assert recall(ds, plain.search(ds.queries, 10)[1]) < r - 0.02
    assert ids.shape == (ds.base.shape[0],)


def test_ivf_prefix_and_l2(fashion_small, tmp_path):
    ds = fashion_small
    index = MatryoshkaIndex(ds.dim, "l2", prefix=48, rerank=100, nlist=32, nprobe=8)
    index.add(ds.base, ids=np.arange(ds.base.shape[0]) + 1000)
    d, i = index.search(ds.queries, 10)
    assert recall(ds, i - 1000) >= 0.9
    np.testing.assert_allclose(d, ((ds.queries[:, None, :] - ds.base[i - 1000]) ** 2).sum(-1), rtol=1e-4)
    # the IVF prefix index travels with the file: same answers after a round trip, and removals stay removed
    gone = np.unique(i[:, 0])
    index.remove(gone)
    index.save(tmp_path / "m.sdx")
    loaded = MatryoshkaIndex.load(tmp_path / "m.sdx")
    a, b = index.search(ds.queries, 10), loaded.search(ds.queries, 10)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.isin(b[1], gone).any()
    assert loaded.search(ds.queries, 10, nprobe=32)[1].shape == (ds.queries.shape[0], 10)


def test_bad_input(wordnet_small):
    ds = wordnet_small
    with pytest.raises(InvalidInputError, match="prefix"):
        MatryoshkaIndex(16, prefix=32)
    index = MatryoshkaIndex(ds.dim, prefix=32)
    index.add(ds.base[:500])
    with pytest.raises(DimensionMismatchError):
        index.search(np.ones((1, 10)), 5)
    with pytest.raises(InvalidInputError, match="NaN"):
        index.add(np.full((1, ds.dim), np.nan))
    with pytest.raises(DuplicateIdError):
        index.add(ds.base[:2], ids=[0, 1])
    assert len(index) == 500
