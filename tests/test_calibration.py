"""Search by target recall (simdex.dense.calibration): a build holds out vectors to measure its recall curve, and
``search(target_recall=...)`` then reaches about that recall on real held-out queries (brute-force ground truth),
for HNSW, Vamana and IVF; the curves survive save/load; collections take ``target_recall`` too."""

from __future__ import annotations

import numpy as np
import pytest

import simdex
from simdex.datasets import recall_at_k
from simdex.quant import IVFIndex

from ._live import local_or_remote
from .conftest import numpy_knn


def _recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


INDEXES = {
    "hnsw": lambda d: simdex.HNSWIndex(d.base.shape[1], d.metric, M=16, ef_construction=100),
    "vamana": lambda d: simdex.VamanaIndex(d.base.shape[1], d.metric, R=24, L_build=48),
    "ivf": lambda d: IVFIndex(d.base.shape[1], d.metric, nlist=128, rerank=100),  # re-ranked, as in collections
}


@pytest.mark.parametrize("kind", sorted(INDEXES))
def test_target_recall_is_reached_on_real_queries(kind, fashion_small, tmp_path):
    data = fashion_small  # 5,000 real vectors and 100 held-out real queries
    index = INDEXES[kind](data)
    index.add(data.base)
    assert len(index) == data.base.shape[0]  # the held-out vectors were added too
    curve = index.recall_curve(10)
    assert curve is not None and curve.queries == 500 and set(index.info()["recall_curves"]) == {1, 10, 100}
    assert all(b >= a - 0.02 for a, b in zip(curve.recalls, curve.recalls[1:]))  # more effort, more recall
    truth = numpy_knn(data.base, data.queries, 10, data.metric)[1]
    for target in (0.9, 0.97):
        _, ids = index.search(data.queries, 10, target_recall=target)
        assert target - 0.04 <= _recall(ids, truth) <= 1.0, (kind, target)
    low = index.search(data.queries, 10, target_recall=0.5)[1]
    assert _recall(low, truth) < _recall(index.search(data.queries, 10, target_recall=0.99)[1], truth) + 1e-9
    index.save(tmp_path / "i.sdx")
    again = type(index).load(tmp_path / "i.sdx")
    assert again.recall_curve(10) == curve
    assert np.array_equal(again.search(data.queries, 10, target_recall=0.9)[1],
                          index.search(data.queries, 10, target_recall=0.9)[1])


def test_bad_targets_and_small_indexes(fashion_small):
    data = fashion_small
    index = simdex.HNSWIndex(data.base.shape[1], data.metric)
    for start in range(0, 3000, 1000):  # built in small adds: no curve
        index.add(data.base[start:start + 1000])
    assert index.recall_curve(10) is None
    truth = numpy_knn(data.base[:3000], data.queries, 10, data.metric)[1]
    assert _recall(index.search(data.queries, 10, target_recall=0.95)[1], truth) >= 0.99  # small: near exact
    for bad in (0, 1.5, "high", True):
        with pytest.raises(simdex.InvalidInputError, match="target_recall"):
            index.search(data.queries, 10, target_recall=bad)
    with pytest.raises(simdex.InvalidInputError, match="not both"):
        index.search(data.queries, 10, ef=32, target_recall=0.9)
    big = simdex.HNSWIndex(data.base.shape[1], data.metric)
    for start in range(0, 5000, 1000):
        big.add(data.base[start:start + 1000])
    with pytest.raises(simdex.InvalidInputError, match="calibrate"):
        big.search(data.queries, 10, target_recall=0.9)
    big.calibrate(data.queries[:50])  # the caller's own sample queries
    assert big.recall_curve(10).queries == 50
    assert big.search(data.queries, 10, target_recall=0.9)[1].shape == (100, 10)


@pytest.mark.parametrize("side", ["local", "remote"])
def test_collections_search_by_target_recall(tmp_path, fashion_small, side):
    data = fashion_small
    ids = [f"r{i}" for i in range(data.base.shape[0])]
    truth = numpy_knn(data.base, data.queries, 10, data.metric)[1]
    with local_or_remote(side, tmp_path / "db") as db:
        col = db.create_collection("c", data.base.shape[1], data.metric, M=16, ef_construction=100)
        col.upsert(ids, data.base)
        if side == "local":
            col.merge()  # one build of every row: calibrated (over HTTP the rows stay exactly searched)
        hits = col.search_batch(data.queries, 10, target_recall=0.95, include=[])
        found = np.array([[int(h["id"][1:]) for h in row] for row in hits])
        assert _recall(found, truth) >= 0.9
        with pytest.raises(simdex.InvalidInputError, match="not both"):
            col.search(data.queries[0], 10, ef=16, target_recall=0.9)
        with pytest.raises(simdex.InvalidInputError, match="target_recall"):
            col.search(data.queries[0], 10, target_recall=2)
        spann = db.create_collection("s", data.base.shape[1], data.metric, index="spann")
        spann.upsert(ids[:300], data.base[:300])
        with pytest.raises(simdex.InvalidInputError, match="spann"):
            spann.search(data.queries[0], 5, target_recall=0.9)


def test_retraining_an_ivf_index_measures_its_curve_again(fashion_small):
    """Retraining with another number of lists rebuilds the lists: the curve is measured again, on the new lists
    (an nprobe of the old curve would mean another share of the lists), with self-queries (each query's own row
    left out of its neighbours), and it predicts the recall of real queries."""
    data = fashion_small
    index = IVFIndex(data.base.shape[1], data.metric, nlist=128, rerank=100)
    index.add(data.base)
    assert max(index.recall_curve(10).efforts) <= 128
    index.retrain(nlist=16)
    curve = index.recall_curve(10)
    assert curve is not None and max(curve.efforts) <= 16 and curve.rows == data.base.shape[0]
    truth = numpy_knn(data.base, data.queries, 10, data.metric)[1]
    for nprobe, predicted in zip(curve.efforts, curve.recalls):
        found = index.search(data.queries, 10, nprobe=nprobe)[1]
        assert abs(recall_at_k(found, truth, 10) - predicted) < 0.06, nprobe
    small = IVFIndex(data.base.shape[1], data.metric, nlist=32, rerank=100)
    small.add(data.base)
    small.remove(np.arange(1000, 5000))  # 1,000 left: too few to measure at the retrain
    small.retrain(nlist=8)
    assert small.recall_curve(10) is None


def test_a_failed_measurement_never_fails_the_build(fashion_small, monkeypatch):
    from simdex.dense import calibration

    def no_memory(*args, **kwargs):
        raise MemoryError("no room for the exact neighbours")

    monkeypatch.setattr(calibration, "_exact_neighbours", no_memory)
    index = simdex.HNSWIndex(fashion_small.base.shape[1], fashion_small.metric)
    index.add(fashion_small.base)
    assert len(index) == fashion_small.base.shape[0] and index.recall_curve(10) is None
