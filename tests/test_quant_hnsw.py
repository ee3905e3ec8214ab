"""HNSW over LVQ / int8 codes on a 20k slice of WordNet embeddings: recall vs brute force, memory, persistence."""

from __future__ import annotations

import numpy as np
import pytest

import simdex
from simdex import CorruptFileError, HNSWIndex, InvalidInputError
from simdex import datasets
from simdex.quant import HNSWQuantIndex


@pytest.fixture(scope="module")
def graph(wordnet_20k):
    index = HNSWIndex(wordnet_20k.dim, "cosine", M=16, ef_construction=100)
    index.add(wordnet_20k.base)
    return index


def recall(ds, ids):
    return datasets.recall_at_k(ids, ds.ground_truth, 10, ds.base, ds.queries, ds.metric)


# ef 80: the float graph reaches recall@10 0.95-0.96 at ef 64 on this slice (seeds 0-2), too near the 0.95 asked of
# the re-ranked codes for a test that must not depend on the build's luck
@pytest.mark.parametrize("codec,rerank_from,ef,min_recall", [
    ("lvq8", "vectors", 80, 0.95), ("int8", "vectors", 80, 0.95), ("lvq4", "vectors", 64, 0.9),
    ("lvq4x8", "residual", 64, 0.9), ("lvq8", "none", 64, 0.93)])
def test_recall_vs_brute_force(wordnet_20k, graph, codec, rerank_from, ef, min_recall):
    ds = wordnet_20k
    index = HNSWQuantIndex.from_hnsw(graph, codec=codec, rerank_from=rerank_from)
    d, i = index.search(ds.queries, 10, ef=ef)
    r = recall(ds, i)
    assert r >= min_recall, r
    # the float graph at the same ef, for scale: codes lose little
    _, fi = graph.search(ds.queries, 10, ef=ef)
    assert r >= recall(ds, fi) - 0.06
    if rerank_from == "vectors":  # re-ranked distances are exact
        x = ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True)
        q = ds.queries / np.linalg.norm(ds.queries, axis=1, keepdims=True)
        exact = 1 - np.einsum("qd,qkd->qk", q, x[i])
        np.testing.assert_allclose(d, exact, atol=1e-5)


def test_few_live_rows_after_deletes_are_searched_exactly(wordnet_20k, graph):
    """Tombstones leaving 60 live rows of 20,000: the search scans them exactly (the graph walk would see few
    of them), as the float32 graph does: the ids and distances of brute force over the live rows."""
    from .conftest import numpy_knn
    ds = wordnet_20k
    index = HNSWQuantIndex.from_hnsw(graph, codec="lvq8")
    index.consolidate_threshold = 1.0  # (the deleted stay tombstones)
    live = np.random.default_rng(3).choice(ds.base.shape[0], 60, replace=False)
    index.remove(np.setdiff1d(np.arange(ds.base.shape[0]), live))
    assert index._n_deleted == ds.base.shape[0] - 60
    d, i = index.search(ds.queries[:50], 10, ef=16)
    d_ref, i_ref = numpy_knn(ds.base[live], ds.queries[:50], 10, "cosine")
    np.testing.assert_array_equal(i, live[i_ref])
    np.testing.assert_allclose(d, d_ref, atol=1e-5)


def test_memory_and_built_index_matches_from_hnsw(wordnet_20k, graph):
    ds = wordnet_20k
    index = HNSWQuantIndex(ds.dim, "cosine", M=16, ef_construction=100, codec="lvq8")
    index.add(ds.base)
    # same graph as the float index (same seed and data), so the same search results
    twin = HNSWQuantIndex.from_hnsw(graph, codec="lvq8")
    np.testing.assert_array_equal(index.search(ds.queries, 10)[1], twin.search(ds.queries, 10)[1])
    # trained on every live row of the graph (it counted the rows' slot numbers once, so one short: slot 0)
    assert twin.trained_rows == index.trained_rows == len(graph)
    # RAM: codes + graph, float vectors on disk
    assert index.nbytes < 0.35 * graph.nbytes
    assert index.disk_nbytes == ds.base.shape[0] * ds.dim * 4
    lvq4 = HNSWQuantIndex.from_hnsw(graph, codec="lvq4")
    assert lvq4.nbytes < 0.25 * graph.nbytes


def test_save_load_identical_and_corrupt(wordnet_20k, graph, tmp_path):
    ds = wordnet_20k
    index = HNSWQuantIndex.from_hnsw(graph, codec="lvq4x8", rerank_from="residual")
    index.remove(np.arange(0, 500, 7))
    path = tmp_path / "q.sdx"
    index.save(path)
    d0, i0 = index.search(ds.queries, 10)
    for loaded in (HNSWQuantIndex.load(path), simdex.load(path, mmap=False)):
        assert isinstance(loaded, HNSWQuantIndex) and loaded.codec.residual_bits == 8
        d1, i1 = loaded.search(ds.queries, 10)
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_array_equal(d0, d1)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        HNSWQuantIndex.load(path)


def test_bad_parameters():
    with pytest.raises(InvalidInputError, match="int8, LVQ or RaBitQ"):
        HNSWQuantIndex(16, "l2", codec="pq4")
    with pytest.raises(InvalidInputError, match="residual"):
        HNSWQuantIndex(16, "l2", codec="lvq8", rerank_from="residual")
    with pytest.raises(InvalidInputError, match="vectors"):
        HNSWQuantIndex(16, "l2", vectors="cloud")
    index = HNSWQuantIndex(16, "l2")
    index.add(np.random.default_rng(0).random((50, 16)))
    with pytest.raises(InvalidInputError, match="rerank"):
        index.search(np.ones((1, 16)), 3, rerank=0)
    with pytest.raises(InvalidInputError, match="codec is fixed"):
        index.train(np.ones((5, 16)))


def test_copy_is_independent_and_of_the_same_kind(wordnet_20k, tmp_path):
    """The database merges new rows into a copy of its main index: the copy must be an index over codes too
    (its vectors in a file, as the original's), equal to the original, and changing it must not touch it."""
    import mmap
    x, q = wordnet_20k.base[:3000], wordnet_20k.queries[:20]
    index = HNSWQuantIndex(x.shape[1], "cosine", M=8, ef_construction=64, codec="lvq8", storage_dir=str(tmp_path))
    index.add(x[:2000])
    before = index.search(q, 10)
    clone = index.copy()
    assert type(clone) is HNSWQuantIndex
    np.testing.assert_array_equal(clone.search(q, 10)[1], before[1])
    clone.add(x[2000:], ids=np.arange(2000, 3000))
    clone.remove(np.arange(50))
    assert len(index) == 2000 and len(clone) == 2950
    np.testing.assert_array_equal(index.search(q, 10)[1], before[1])
    base = clone._vectors
    while base is not None and not isinstance(base, (np.memmap, mmap.mmap)):
        base = base.base
    assert base is not None  # file-backed, not a copy in memory


def test_retrain_after_growth_fits_the_codes_to_all_rows(wordnet_20k):
    """An int8 codec trained on a few unrepresentative first rows clips the rows that come later (its ranges come
    from its training rows): retraining on what the index holds then cuts the code error, and leaves the graph
    and the search results' ids valid."""
    x = wordnet_20k.base[:4000]
    first = x[np.argsort(x[:, 0])[:200]]  # the 200 rows lowest in one dimension: a narrow range there
    index = HNSWQuantIndex(x.shape[1], "l2", M=8, ef_construction=32, codec="int8", vectors="memory")
    index.add(first)
    index.add(x)
    assert index.trained_rows == 200 and index.wants_retraining()

    def code_error():
        n = index._n
        return float(np.abs(index.codec.decode(index._codes[:n]) - index._vectors[:n]).mean())

    before = code_error()
    index.retrain()
    assert index.trained_rows == 4200 and not index.wants_retraining()
    assert code_error() < 0.8 * before  # clipping was about half of the error here (0.62e-3 -> 0.33e-3)
    _, ids = index.search(wordnet_20k.queries[:20], 10)
    assert (ids >= 0).all()
