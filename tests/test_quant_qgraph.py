"""RaBitQGraphIndex (an HNSW graph searched through RaBitQ codes of its edges) on real slices: the edge codes'
estimates against exact distances, recall against brute force next to the float32 HNSW on the same graph, codes
kept right through incremental adds, deletes and consolidation, and a saved index answering as before."""

from __future__ import annotations

import numpy as np
import pytest

from simdex import datasets
from simdex.dense import HNSWIndex
from simdex.index import load
from simdex.quant import RaBitQGraphIndex
from simdex.quant._fastscan_kernels import packed_layout
from simdex.quant._qgraph_kernels import FILL_SOURCES
from simdex.quant.rabitq import EPS0


def recall(ds, slots):
    return datasets.recall_at_k(slots, ds.ground_truth, 10, ds.base, ds.queries, ds.metric)


@pytest.fixture(scope="module", params=["wordnet", "fashion", "glove"])
def built(request, wordnet_20k, fashion_small):
    # GloVe's 50 dimensions get 4-bit edge codes by default, the others 1 bit
    ds = {"wordnet": wordnet_20k, "fashion": fashion_small}.get(request.param)
    if ds is None:
        ds = datasets.load("glove-50").subset(20_000, 200)
    index = RaBitQGraphIndex(ds.dim, ds.metric, M=16, ef_construction=100)
    assert index.bits == (4 if request.param == "glove" else 1)
    index.add(ds.base)
    return ds, index


def test_edge_estimates_are_unbiased_and_within_the_error_bound(built):
    """For every edge (v, u) of 300 nodes and one query: d(q, v) + e - m a <y, q - c> estimates d(q, u)."""
    ds, index = built
    l2 = ds.metric == "l2"
    x = index._vectors[:index._n].astype(np.float64)
    q = x[0] * 0.5 + x[1] * 0.5 if l2 else ds.queries[0] / np.linalg.norm(ds.queries[0])
    q = q.astype(np.float32)
    qrot = index.rotate(q[None, :])[0].astype(np.float64)
    padded = index.padded
    exact = ((x - q) ** 2).sum(1) if l2 else -(x @ q)
    est, truth, bound = [], [], []
    nbits = index.bits
    for v in range(300):
        deg = index._links0[v, 0]
        planes = packed_layout(index._edge_runs[v:v + 1], index.M0)[0, :deg].reshape(deg, nbits, -1)
        bits = np.unpackbits(planes.view(np.uint8), axis=2, bitorder="little")[:, :, :padded]
        levels = (bits.astype(np.float64) * (2.0 ** np.arange(nbits))[None, :, None]).sum(1)
        y = levels - (2 ** nbits - 1) / 2
        a, _, e = index._edge_factors[v, :deg].T.astype(np.float64)
        est.append(exact[v] + e - (2.0 if l2 else 1.0) * a * (y @ qrot))
        nbrs = index._links0[v, 1:deg + 1]
        truth.append(exact[nbrs])
        # RaBitQ's bound on <r, q>: eps0 |q| |r| sqrt(1 - cos^2) / cos / sqrt(D - 1), cos = <y/|y|, r/|r|>
        r = x[nbrs] - x[v]
        rn = np.linalg.norm(r, axis=1)
        rotated = (index.rotate(x[nbrs]) - index.rotate(x[v:v + 1])).astype(np.float64)
        cos = (y * rotated).sum(1) / np.linalg.norm(y, axis=1) / np.maximum(rn, 1e-30)
        bound.append((2.0 if l2 else 1.0) * 3.0 * np.linalg.norm(qrot) * rn * np.sqrt(1 - cos ** 2) / cos
                     / np.sqrt(padded - 1))
    est, truth, bound = np.concatenate(est), np.concatenate(truth), np.concatenate(bound)
    err = est - truth
    assert abs(err.mean()) < 0.1 * err.std() + 1e-6 * np.abs(truth).mean()  # unbiased
    assert np.mean(np.abs(err) <= bound) >= 0.99  # 3 standard deviations
    assert np.mean(np.abs(err) <= bound * EPS0 / 3.0) >= 0.85


def test_rotation_is_orthogonal_and_spreads_a_vector(built):
    ds, index = built
    x = ds.base[:200].astype(np.float32)
    rot = index.rotate(x).astype(np.float64)
    centred = x.astype(np.float64) - index.center
    # distances and inner products of the centred rows are kept
    np.testing.assert_allclose(rot @ rot.T, centred @ centred.T, rtol=1e-4, atol=1e-3 * np.abs(centred).max() ** 2)
    # a basis vector comes out spread over every coordinate, as RaBitQ's analysis needs: its largest coordinate
    # near that of a random unit vector, sqrt(2 ln(2D) / D)
    e = np.zeros((1, ds.dim), np.float32)
    e[0, 0] = 1.0
    spread = index.rotate(e + index.center)[0]
    d = index.padded
    assert np.abs(spread).max() < 1.5 * np.sqrt(2 * np.log(2 * d) / d)
    assert np.count_nonzero(np.abs(spread) > 1e-4) > 0.9 * d


def test_recall_matches_the_float32_graph_and_distances_are_exact(built):
    ds, index = built
    hnsw = HNSWIndex(ds.dim, ds.metric, M=16, ef_construction=100)
    hnsw.add(ds.base)
    for ef, floor in ((64, 0.80), (200, 0.95)):  # (GloVe is the hard one: the float32 graph's 0.83 at ef 64)
        d, ids = index.search(ds.queries, 10, ef=ef)
        r = recall(ds, ids)
        _, ids_h = hnsw.search(ds.queries, 10, ef=ef)
        assert r >= floor, (ef, r)
        assert r >= recall(ds, ids_h) - 0.05, (ef, r)
    found = ids >= 0
    x = ds.base[ids[found]].astype(np.float64)
    qs = np.repeat(ds.queries, 10, axis=0)[found.ravel()].astype(np.float64)
    if ds.metric == "l2":
        truth = ((x - qs) ** 2).sum(1)
    else:
        truth = 1 - (x * qs).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(qs, axis=1)
    np.testing.assert_allclose(d[found], truth, rtol=1e-4, atol=1e-4)


def _codes_from_scratch(index):
    """The index's edges coded again, every row at once (its filled rows as they are)."""
    fresh = index.copy()
    fresh._mark_all_stale()
    fresh._encode_stale(refill=False)
    return fresh


def _check_filled_rows(index, rows):
    """Each row's edges: its layer-0 links, then the nodes two hops away (through its first FILL_SOURCES links)
    nearest to it, as many as fill the row."""
    x = np.asarray(index._vectors[:index._n], np.float64)
    for v in rows:
        deg = index._links0[v, 0]
        links = index._links0[v, 1:deg + 1]
        count = index._edges[v, 0]
        np.testing.assert_array_equal(index._edges[v, 1:deg + 1], links)
        hops = np.setdiff1d(np.concatenate([index._links0[u, 1:index._links0[u, 0] + 1]
                                            for u in links[:FILL_SOURCES]]),
                            np.append(links, v))
        assert count == min(index.M0, deg + hops.size)
        extra = index._edges[v, deg + 1:count + 1]
        d = ((x[hops] - x[v]) ** 2).sum(1) if index.metric == "l2" else -(x[hops] @ x[v])
        np.testing.assert_array_equal(np.sort(extra), np.sort(hops[np.argsort(d, kind="stable")[:extra.size]]))


def test_codes_follow_incremental_adds_and_consolidation(wordnet_small):
    ds = wordnet_small
    index = RaBitQGraphIndex(ds.dim, ds.metric, M=8, ef_construction=64)
    for lo, hi in ((0, 700), (700, 1400), (1400, 2100), (2100, 2800), (2800, 3000)):
        index.add(ds.base[lo:hi], np.arange(lo, hi))  # the later batches rewire the links of the earlier nodes
    n = index._n
    ref = _codes_from_scratch(index)
    np.testing.assert_array_equal(index._edge_runs[:n], ref._edge_runs[:n])
    np.testing.assert_allclose(index._edge_factors[:n], ref._edge_factors[:n], rtol=1e-5, atol=1e-6)
    # every row's edges start with its current links (a row whose links change is filled again)
    starts = np.arange(1, index.M0 + 1)[None, :] <= index._links0[:n, :1]
    np.testing.assert_array_equal(np.where(starts, index._edges[:n, 1:], 0), np.where(starts, index._links0[:n, 1:], 0))
    assert (index._edges[:n, 0] > index._links0[:n, 0]).mean() > 0.5  # most rows had empty slots to fill
    refilled = index.copy()
    refilled._mark_all_stale()
    refilled._encode_stale()
    _check_filled_rows(refilled, range(0, n, 37))
    index.remove(np.arange(0, 3000, 3))
    index.consolidate()
    n = index._n
    assert n == 2000
    ref = _codes_from_scratch(index)
    np.testing.assert_array_equal(index._edge_runs[:n], ref._edge_runs[:n])
    survivors = np.setdiff1d(np.arange(3000), np.arange(0, 3000, 3))
    _, ids = index.search(ds.queries, 10, ef=100)
    assert np.isin(ids, survivors).all()
    truth = datasets.brute_force_knn(ds.base[survivors], ds.queries, 10, ds.metric)
    hits = np.mean([len(np.intersect1d(a, survivors[b])) / 10 for a, b in zip(ids, truth)])
    assert hits >= 0.9


def test_saved_index_answers_as_before(wordnet_small, tmp_path):
    ds = wordnet_small
    index = RaBitQGraphIndex(ds.dim, ds.metric, M=8, ef_construction=64)
    index.add(ds.base[:2000])
    index.remove([3, 5, 8])
    before = index.search(ds.queries, 10, ef=50)
    index.save(tmp_path / "qg.sdx")
    for mmap in (False, True):
        again = load(tmp_path / "qg.sdx", mmap=mmap)
        assert isinstance(again, RaBitQGraphIndex)
        after = again.search(ds.queries, 10, ef=50)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_allclose(after[0], before[0], rtol=1e-6)


def test_unfilled_rows_hold_the_links_alone_and_the_choice_is_saved(wordnet_small, tmp_path):
    ds = wordnet_small
    index = RaBitQGraphIndex(ds.dim, ds.metric, M=8, ef_construction=64, fill=False)
    index.add(ds.base[:1500])
    before = index.search(ds.queries, 10, ef=50)
    n = index._n
    np.testing.assert_array_equal(index._edges[:n], index._links0[:n])
    index.save(tmp_path / "plain.sdx")
    again = load(tmp_path / "plain.sdx")
    assert again.fill is False
    after = again.search(ds.queries, 10, ef=50)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(again._edges[:n], again._links0[:n])
    filled = RaBitQGraphIndex(ds.dim, ds.metric, M=8, ef_construction=64)
    filled.add(ds.base[:1500])
    filled.save(tmp_path / "filled.sdx")
    assert load(tmp_path / "filled.sdx").fill is True
    truth = datasets.brute_force_knn(ds.base[:1500], ds.queries, 10, ds.metric)
    recall = {name: np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ix.search(ds.queries, 10, ef=20)[1],
                                                                               truth)])
              for name, ix in (("plain", index), ("filled", filled))}
    assert recall["filled"] >= recall["plain"] - 0.01, recall
