"""HNSW-specific checks on 20k slices of the real data sets, against numpy brute force."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from simdex import CorruptFileError, HNSWIndex, datasets, fileformat
from tests.conftest import numpy_knn

# recall@10 >= 0.95 must hold on every set with the defaults (M=16, ef_construction=200) at these ef values
# (GloVe words are the hardest set: hnswlib needs the same ef there, see docs/benchmarks.md)
SEARCH_EF = {"fashion-mnist-784": 64, "wordnet-minilm-384": 64, "glove-50": 200}


def recall(found, truth, k=10):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def built(dataset_slice):
    index = HNSWIndex(dataset_slice.dim, dataset_slice.metric)
    index.add(dataset_slice.base)
    return dataset_slice, index


def test_recall_on_20k_slices(built):
    ds, index = built
    ef = SEARCH_EF[ds.name]
    _, ids = index.search(ds.queries, 10, ef=ef)
    r = datasets.recall_at_k(ids, ds.ground_truth, 10, ds.base, ds.queries, ds.metric)
    assert r >= 0.95, f"{ds.name}: recall@10 {r:.3f} at ef={ef}"
    # the knob works: a tiny ef (the beam no wider than k) finds strictly fewer true neighbours on 300 queries
    _, ids_low = index.search(ds.queries, 10, ef=10)
    assert datasets.recall_at_k(ids_low, ds.ground_truth, 10) < r - 0.005
    stats = index.graph_stats()
    assert stats["min_degree"] >= 1 and stats["levels"] >= 2


@pytest.mark.parametrize("selectivity", [0.01, 0.10, 0.50])
def test_filtered_recall(built, selectivity):
    ds, index = built
    rng = np.random.default_rng(int(selectivity * 1000))
    allowed = np.sort(rng.choice(ds.base.shape[0], int(ds.base.shape[0] * selectivity), replace=False))
    _, truth = numpy_knn(ds.base[allowed], ds.queries, 10, ds.metric)
    _, ids = index.search(ds.queries, 10, ef=SEARCH_EF[ds.name], filter=allowed)
    assert np.isin(ids, allowed).all()
    r = recall(ids, allowed[truth])
    assert r >= 0.95, f"{ds.name} selectivity {selectivity}: recall {r:.3f}"


@pytest.mark.parametrize("selectivity", [0.10, 0.50])
def test_filtered_graph_traversal_recall(built, selectivity, monkeypatch):
    """The graph path alone (exact fallback disabled) keeps recall at moderate selectivity."""
    ds, index = built
    monkeypatch.setattr(index, "_prefer_exact", lambda n_allowed, ef: False)
    rng = np.random.default_rng(7)
    mask = rng.random(ds.base.shape[0]) < selectivity
    allowed = np.flatnonzero(mask)
    _, truth = numpy_knn(ds.base[allowed], ds.queries, 10, ds.metric)
    _, ids = index.search(ds.queries, 10, ef=SEARCH_EF[ds.name], filter=mask)
    assert np.isin(ids, allowed).all()
    assert recall(ids, allowed[truth]) >= 0.95


def test_deletes_tombstones_then_consolidation(wordnet_20k):
    ds = wordnet_20k
    index = HNSWIndex(ds.dim, ds.metric, consolidate_threshold=0.2)
    index.add(ds.base)
    rng = np.random.default_rng(3)
    order = rng.permutation(ds.base.shape[0])
    first, second = order[:2000], order[2000:5000]
    index.remove(first)  # 10%: tombstones only
    assert index.graph_stats()["deleted"] == 2000
    keep = np.setdiff1d(np.arange(ds.base.shape[0]), first)
    _, ids = index.search(ds.queries, 10, ef=SEARCH_EF[ds.name])
    assert not np.isin(ids, first).any()
    _, truth = numpy_knn(ds.base[keep], ds.queries, 10, ds.metric)
    assert recall(ids, keep[truth]) >= 0.95
    index.remove(second)  # 25% in total: consolidation repairs the graph and compacts the arrays
    stats = index.graph_stats()
    assert stats["deleted"] == 0 and stats["nodes"] == len(index) == 15000
    links = index._links0[:index._n]
    used = np.arange(index.M0)[None, :] < links[:, :1]
    assert links[:, 1:][used].max() < index._n, "links must point at live, renumbered nodes"
    keep = np.setdiff1d(keep, second)
    _, ids = index.search(ds.queries, 10, ef=SEARCH_EF[ds.name])
    assert np.isin(ids, keep).all()
    _, truth = numpy_knn(ds.base[keep], ds.queries, 10, ds.metric)
    assert recall(ids, keep[truth]) >= 0.95
    # removed ids can be added back, and are found again
    index.add(ds.base[second[:500]], second[:500])
    _, ids = index.search(ds.base[second[:50]], 1)
    assert (ids[:, 0] == second[:50]).mean() >= 0.95


def test_same_graph_whatever_the_thread_count(wordnet_small):
    x = wordnet_small.base[:3000]
    graphs = []
    for threads in (1, 2):
        index = HNSWIndex(x.shape[1], "cosine", M=8, ef_construction=64, seed=5)
        index.add(x[:1000], threads=threads)
        index.add(x[1000:], threads=threads)
        graphs.append((index._links0[:index._n].copy(), index._links_up[:index._n_up].copy(), index._entry))
    np.testing.assert_array_equal(graphs[0][0], graphs[1][0])
    np.testing.assert_array_equal(graphs[0][1], graphs[1][1])
    assert graphs[0][2] == graphs[1][2]


def test_tiny_and_duplicate_inputs():
    index = HNSWIndex(3, "l2")
    index.add(np.array([[1.0, 2.0, 3.0]]))
    d, i = index.search(np.array([[1.0, 2.0, 3.0]]), 1)
    assert i[0, 0] == 0 and d[0, 0] == 0
    for j in range(1, 40):  # one-vector adds
        index.add(np.array([[float(j), 0.0, 0.0]]))
    _, i = index.search(np.array([[20.2, 0.0, 0.0]]), 3)
    assert set(i[0]) == {20, 19, 21}
    dup = HNSWIndex(4, "cosine", M=4)
    dup.add(np.tile([[1.0, 2.0, 3.0, 4.0]], (300, 1)))
    d, i = dup.search(np.array([[1.0, 2.0, 3.0, 4.0]]), 10)
    assert len(set(i[0])) == 10 and np.allclose(d, 0, atol=1e-6)


@pytest.mark.parametrize("per_call", ["batch", "one query"])
def test_concurrent_python_threads_search(wordnet_small, per_call):
    # one query per call takes its visited marks from the pool without the lock: threads must never share a set
    ds = wordnet_small
    index = HNSWIndex(ds.dim, ds.metric)
    index.add(ds.base)
    expected = index.search(ds.queries, 10, threads=1)[1]
    results, errors = [None] * 6, []

    def worker(j):
        try:
            if per_call == "batch":
                results[j] = index.search(ds.queries, 10, threads=1)[1]
            else:
                results[j] = np.concatenate([index.search(q[None], 10)[1] for q in ds.queries])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(j,)) for j in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_one_query_per_call_after_the_index_grows(wordnet_small):
    # the pooled visited marks of one-query searches are sized for the index when taken: after adds, a set too
    # small must not be reused (its marks would be read past their end)
    ds = wordnet_small
    index = HNSWIndex(ds.dim, ds.metric)
    index.add(ds.base[:200])
    for q in ds.base[:20]:
        index.search(q[None], 5)
    index.add(ds.base[200:])
    found = np.concatenate([index.search(v[None], 1, ef=64)[1] for v in ds.base[-50:]])[:, 0]
    assert (found == np.arange(ds.base.shape[0] - 50, ds.base.shape[0])).mean() >= 0.95


def test_mmap_load_with_tombstones(wordnet_small, tmp_path):
    ds = wordnet_small
    index = HNSWIndex(ds.dim, ds.metric)
    index.add(ds.base)
    index.remove(np.arange(0, 100))
    path = tmp_path / "h.sdx"
    index.save(path)
    loaded = HNSWIndex.load(path, mmap=True)
    assert isinstance(loaded._vectors, np.memmap) or not loaded._vectors.flags.writeable
    assert loaded.graph_stats()["deleted"] == 100
    np.testing.assert_array_equal(loaded.search(ds.queries, 10)[1], index.search(ds.queries, 10)[1])
    loaded.remove(np.arange(100, 1500))  # triggers consolidation on the materialised copy
    assert len(loaded) == ds.base.shape[0] - 1500


def _resave(path, mutate):
    kind, meta, arrays = fileformat.load_arrays(path, mmap=False)
    mutate(meta, arrays)
    fileformat.save_arrays(path, kind, meta, arrays)


@pytest.mark.parametrize("damage", ["link out of range", "degree too large", "entry out of range",
                                    "level mismatch", "shape mismatch", "deleted count"])
def test_checksummed_but_inconsistent_graph_is_rejected(wordnet_small, tmp_path, damage):
    """A file with valid checksums but a broken graph (hand-made or from a buggy writer) must not reach the
    kernels, which do not bounds-check."""
    index = HNSWIndex(wordnet_small.dim, "cosine", M=8)
    index.add(wordnet_small.base[:500])
    path = tmp_path / "h.sdx"
    index.save(path)

    def mutate(meta, arrays):
        if damage == "link out of range":
            arrays["links0"][3, 1] = 10_000
        elif damage == "degree too large":
            arrays["links0"][3, 0] = 99
        elif damage == "entry out of range":
            meta["entry"] = 501
        elif damage == "level mismatch":
            meta["max_level"] = meta["max_level"] + 1
        elif damage == "shape mismatch":
            arrays["links0"] = arrays["links0"][:-1]
        elif damage == "deleted count":
            meta["deleted"] = 3

    _resave(path, mutate)
    with pytest.raises(CorruptFileError):
        HNSWIndex.load(path)


@pytest.mark.parametrize("kind", ["hnsw", "hnsw-lvq8", "ivf-pq", "vamana"])
def test_copy_is_consistent_while_another_thread_removes(kind):
    """The database copies its main index (any kind it offers) while its writer deletes from it: every copy must be
    one state of the index (tombstones, ids and the deletion count in step), never a mix of two, and stays
    that state when the original changes afterwards."""
    import threading

    from simdex.dense import VamanaIndex
    from simdex.quant import HNSWQuantIndex, IVFIndex
    x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)
    make = {"hnsw": lambda: HNSWIndex(32, "l2", M=8, ef_construction=32, consolidate_threshold=1.0),
            "hnsw-lvq8": lambda: HNSWQuantIndex(32, "l2", M=8, ef_construction=32, consolidate_threshold=1.0),
            "ivf-pq": lambda: IVFIndex(32, "l2", nlist=16, codec="pq8", consolidate_threshold=1.0),
            "vamana": lambda: VamanaIndex(32, "l2", R=16, L_build=32, consolidate_threshold=1.0)}
    index = make[kind]()
    index.add(x)
    stop = threading.Event()

    def remover():
        for i in np.random.default_rng(1).permutation(3000)[:2500]:
            if stop.is_set():
                return
            index.remove([int(i)])

    thread = threading.Thread(target=remover)
    thread.start()
    try:
        for _ in range(40):
            clone = index.copy()
            n = clone._n
            dead = clone._idmap.slot_ids[:n] < 0
            assert clone._n_deleted == int(dead.sum())
            if kind != "vamana":  # (a Vamana graph keeps its tombstones in its node states)
                np.testing.assert_array_equal(clone._deleted[:n] != 0, dead)
            assert len(clone._idmap) == n - int(dead.sum())
    finally:
        stop.set()
        thread.join()
    clone = index.copy()
    survivor = int(index.ids[0])
    index.remove([survivor])
    assert survivor in clone and survivor not in index
    _, ids = clone.search(x[[survivor]], 1)
    assert ids[0, 0] == survivor
