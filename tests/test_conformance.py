"""The conformance suite every vector index passes: add/search/remove/get/save/load and bad input.

A new index class joins by adding a factory to ``FACTORIES``; it then gets every check here for free.
"""

from __future__ import annotations

import numpy as np
import pytest

import simdex
from simdex import (CorruptFileError, DimensionMismatchError, DuplicateIdError, FlatIndex, HNSWIndex,
                    InvalidInputError, InvalidTypeError, LabelIndex, UnknownIdError, VamanaIndex, WindowIndex)
from simdex.quant import HNSWQuantIndex, IVFIndex, MatryoshkaIndex, VamanaDiskIndex
from tests.conftest import numpy_knn

class AttributedWindow(WindowIndex):
    """A WindowIndex under the generic calls: each added vector gets a random attribute, and a search without
    bounds covers every point; its window searches are checked in tests/test_window.py."""

    kind = "TestAttributedWindow"

    def add(self, vectors, ids=None, *, threads=None):
        try:
            rows = len(vectors) if np.ndim(vectors) == 2 else 1
        except ValueError:  # ragged: the vector validator names the problem
            rows = len(vectors)
        attributes = np.random.default_rng(len(self) + rows).random(rows)
        return super().add(vectors, attributes, ids, threads=threads)


FACTORIES = {
    "flat": lambda dim, metric: FlatIndex(dim, metric),
    "hnsw": lambda dim, metric: HNSWIndex(dim, metric, M=12, ef_construction=100, ef_search=100),
    # no labels given: a plain HNSW search; its label searches are checked in tests/test_labels.py
    "labels": lambda dim, metric: LabelIndex(dim, metric, M=12, ef_construction=100, ef_search=100),
    "hnsw-lvq8": lambda dim, metric: HNSWQuantIndex(dim, metric, M=12, ef_construction=100, ef_search=100,
                                                    codec="lvq8"),
    # 12 of 16 lists: after removing 95% of the vectors the few survivors of a neighbourhood are spread thin
    "ivf-pq": lambda dim, metric: IVFIndex(dim, metric, nlist=16, codec="pq", nprobe=12, rerank=100),
    # candidates from the first min(64, dim) PCA coordinates, exact re-rank of 100
    "matryoshka": lambda dim, metric: MatryoshkaIndex(dim, metric, rerank=100),
    "vamana": lambda dim, metric: VamanaIndex(dim, metric, R=24, L_build=64, L_search=100),
    # a tree of LVQ-8 HNSW nodes over leaves of 256 points
    "window": lambda dim, metric: AttributedWindow(dim, metric, leaf_size=256, ef_search=100,
                                                   base_params={"M": 12}),
    # LVQ-8 here: the PQ codec needs 256 vectors to train and several checks start from fewer
    "vamana-disk-lvq8": lambda dim, metric: VamanaDiskIndex(dim, metric, R=24, L_build=64, L_search=100,
                                                            codec="lvq8"),
}
# the least recall@10 each index must reach on the small real slices used here (exact ones: 1.0)
MIN_RECALL = {"flat": 1.0, "hnsw": 0.95, "labels": 0.95, "hnsw-lvq8": 0.95, "ivf-pq": 0.9, "matryoshka": 0.95,
              "vamana": 0.95, "vamana-disk-lvq8": 0.95, "window": 0.95}

N = 2000


@pytest.fixture(params=sorted(FACTORIES))
def kind(request) -> str:
    return request.param


@pytest.fixture(params=["l2", "ip", "cosine"])
def metric(request) -> str:
    return request.param


@pytest.fixture
def data(wordnet_small, fashion_small, metric):
    """Real vectors for the metric: WordNet embeddings for ip/cosine, Fashion-MNIST (scaled) for l2."""
    ds = fashion_small if metric == "l2" else wordnet_small
    base = ds.base[:N].copy()
    queries = ds.queries[:50].copy()
    if metric == "l2":
        base /= 255.0
        queries /= 255.0
    return base, queries


def snapshot(index, queries):
    d, i = index.search(queries, 5)
    return len(index), index.ids.copy(), d.copy(), i.copy()


def assert_unchanged(index, queries, snap):
    now = snapshot(index, queries)
    assert now[0] == snap[0]
    np.testing.assert_array_equal(now[1], snap[1])
    np.testing.assert_array_equal(now[3], snap[3])
    np.testing.assert_allclose(now[2], snap[2], rtol=1e-6, atol=1e-6)


def recall(found, truth, k):
    return np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)])


def test_add_search_matches_brute_force(kind, metric, data):
    base, queries = data
    index = FACTORIES[kind](base.shape[1], metric)
    ids = index.add(base)
    np.testing.assert_array_equal(ids, np.arange(N))
    assert len(index) == index.ntotal == N
    d, i = index.search(queries, 10)
    assert d.shape == i.shape == (queries.shape[0], 10)
    assert d.dtype == np.float32 and i.dtype == np.int64
    assert np.all(np.diff(d, axis=1) >= -1e-5), "distances must be ascending"
    true_d, true_i = numpy_knn(base, queries, 10, metric)
    assert recall(i, true_i, 10) >= MIN_RECALL[kind]
    # the reported distances are the true distances of the returned ids
    _, all_d = None, numpy_knn(base, queries, N, metric)
    full_d = np.empty((queries.shape[0], N))
    np.put_along_axis(full_d, all_d[1], all_d[0], 1)
    np.testing.assert_allclose(d, np.take_along_axis(full_d, i, 1), rtol=1e-4, atol=1e-4)


def test_custom_ids_and_incremental_add(kind, metric, data):
    base, queries = data
    index = FACTORIES[kind](base.shape[1], metric)
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    index.add(base[:N // 2], ids[:N // 2])
    index.add(base[N // 2:], ids[N // 2:])
    assert 3 in index and 4 not in index
    d, i = index.search(queries, 10)
    _, true_i = numpy_knn(base, queries, 10, metric)
    assert recall(i, ids[true_i], 10) >= MIN_RECALL[kind]
    auto = index.add(base[:3])
    np.testing.assert_array_equal(auto, [ids[-1] + 1, ids[-1] + 2, ids[-1] + 3])


def test_remove_never_returned(kind, metric, data):
    base, queries = data
    index = FACTORIES[kind](base.shape[1], metric)
    index.add(base)
    _, before = index.search(queries, 10)
    gone = np.unique(before[:, :3])
    assert index.remove(gone) == gone.size
    assert len(index) == N - gone.size
    _, after = index.search(queries, 10)
    assert not np.isin(after, gone).any()
    keep = np.setdiff1d(np.arange(N), gone)
    _, true_i = numpy_knn(base[keep], queries, 10, metric)
    assert recall(after, keep[true_i], 10) >= MIN_RECALL[kind] - 0.02
    with pytest.raises(UnknownIdError):
        index.get_vectors(gone[:1])
    # re-adding a removed id is allowed and it comes back
    index.add(base[gone[:1]], gone[:1])
    _, again = index.search(base[gone[:1]], 1)
    assert again[0, 0] == gone[0]


def test_remove_most_then_search(kind, metric, data):
    base, queries = data
    index = FACTORIES[kind](base.shape[1], metric)
    index.add(base)
    rng = np.random.default_rng(1)
    gone = rng.choice(N, N - 100, replace=False)
    index.remove(gone)
    keep = np.setdiff1d(np.arange(N), gone)
    d, i = index.search(queries, 10)
    assert np.isin(i, keep).all()
    _, true_i = numpy_knn(base[keep], queries, 10, metric)
    assert recall(i, keep[true_i], 10) >= MIN_RECALL[kind] - 0.05


def test_get_vectors(kind, metric, data):
    base, _ = data
    index = FACTORIES[kind](base.shape[1], metric)
    index.add(base[:100], np.arange(100) + 1000)
    got = index.get_vectors([1005, 1000])
    expect = base[[5, 0]]
    if metric == "cosine":
        expect = expect / np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)


def test_filter_mask_and_id_list(kind, metric, data):
    base, queries = data
    index = FACTORIES[kind](base.shape[1], metric)
    index.add(base)
    rng = np.random.default_rng(2)
    for fraction in (0.01, 0.3):
        allowed = np.sort(rng.choice(N, int(N * fraction), replace=False))
        mask = np.zeros(N, bool)
        mask[allowed] = True
        _, true_i = numpy_knn(base[allowed], queries, 10, metric)
        for flt in (mask, allowed):
            _, i = index.search(queries, 10, filter=flt)
            assert np.isin(i, allowed).all()
            assert recall(i, allowed[true_i], 10) >= MIN_RECALL[kind] - 0.02
    # fewer allowed than k: the rest of each row is (inf, -1)
    d, i = index.search(queries[:2], 5, filter=[1, 2])
    assert set(i[0, :2]) == {1, 2} and (i[:, 2:] == -1).all() and np.isinf(d[:, 2:]).all()
    # an empty allow-set returns nothing, and unknown ids in it are ignored
    d, i = index.search(queries[:2], 3, filter=[N + 10])
    assert (i == -1).all()


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(kind, metric, data, tmp_path, mmap):
    base, queries = data
    index = FACTORIES[kind](base.shape[1], metric)
    index.add(base[:N - 100])
    index.remove([5, 17, 400])
    path = tmp_path / "index.sdx"
    index.save(path)
    loaded = type(index).load(path, mmap=mmap)
    generic = simdex.load(path)
    assert type(generic) is type(index)
    d0, i0 = index.search(queries, 10)
    for other in (loaded, generic):
        d1, i1 = other.search(queries, 10)
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_array_equal(d0, d1)
        assert len(other) == len(index)
    # the loaded index can still change; the file it came from does not
    size_before = path.stat().st_size
    loaded.add(base[N - 100:])
    loaded.remove([0])
    assert len(loaded) == len(index) + 99
    assert path.stat().st_size == size_before
    again = type(index).load(path)
    np.testing.assert_array_equal(again.search(queries, 10)[1], i0)


def test_load_wrong_kind_and_corrupt(kind, data, tmp_path):
    base, _ = data
    index = FACTORIES[kind](base.shape[1], "l2")
    index.add(base[:200])
    path = tmp_path / "index.sdx"
    index.save(path)
    other = HNSWIndex if kind == "flat" else FlatIndex
    with pytest.raises(CorruptFileError, match="holds a"):
        other.load(path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="checksum"):
        type(index).load(path)
    path.write_bytes(bytes(raw[:len(raw) // 2]))
    with pytest.raises(CorruptFileError, match="truncated"):
        type(index).load(path)


BAD_VECTORS = {
    "wrong dimension": (lambda b: b[:, :-1], DimensionMismatchError, "dimension"),
    "NaN": (lambda b: np.where(np.arange(b.size).reshape(b.shape) == 7, np.nan, b), InvalidInputError, "NaN"),
    "inf": (lambda b: np.where(np.arange(b.size).reshape(b.shape) == 7, np.inf, b), InvalidInputError, "infinite"),
    "float64 overflow": (lambda b: b.astype(np.float64) * 1e300, InvalidInputError, "infinite"),
    "1-D": (lambda b: b[0], InvalidInputError, "2-D"),
    "3-D": (lambda b: b[None], InvalidInputError, "2-D"),
    "strings": (lambda b: b.astype(str), InvalidTypeError, "numeric"),
    "objects": (lambda b: np.array([list(r) for r in b[:2]] + [[1.0]], dtype=object), InvalidTypeError, "objects"),
    "complex": (lambda b: b.astype(np.complex64), InvalidTypeError, "real"),
    "empty": (lambda b: b[:0], InvalidInputError, "empty"),
    "ragged list": (lambda b: [[1.0, 2.0], [3.0]], InvalidInputError, "array|objects"),
}


@pytest.mark.parametrize("case", sorted(BAD_VECTORS))
def test_bad_vectors_rejected_and_index_unchanged(kind, data, case):
    base, queries = data
    index = FACTORIES[kind](base.shape[1], "l2")
    index.add(base[:300])
    snap = snapshot(index, queries)
    make, error, message = BAD_VECTORS[case]
    bad = make(base[:5].copy())
    with pytest.raises((error, InvalidInputError, InvalidTypeError), match=message):
        index.add(bad)
    with pytest.raises((error, InvalidInputError, InvalidTypeError), match=message):
        index.search(bad, 3)
    assert_unchanged(index, queries, snap)


def test_bad_ids_and_k_rejected_and_index_unchanged(kind, data):
    base, queries = data
    index = FACTORIES[kind](base.shape[1], "l2")
    index.add(base[:300])
    snap = snapshot(index, queries)
    x = base[300:303]
    cases = [
        (lambda: index.add(x, [1000, 1000, 1001]), DuplicateIdError, "duplicates"),
        (lambda: index.add(x, [1000, 5, 1001]), DuplicateIdError, "already in the index"),
        (lambda: index.add(x, [-1, 1000, 1001]), InvalidInputError, ">= 0"),
        (lambda: index.add(x, [1000, 1001]), InvalidInputError, "3 vectors"),
        (lambda: index.add(x, [1.5, 2, 3]), InvalidTypeError, "integers"),
        (lambda: index.add(x, ["a", "b", "c"]), InvalidTypeError, "numeric"),
        (lambda: index.remove([1, 999999]), UnknownIdError, "999999"),
        (lambda: index.remove([1, 1]), DuplicateIdError, "duplicates"),
        (lambda: index.get_vectors([123456]), UnknownIdError, "123456"),
        (lambda: index.search(queries, 0), InvalidInputError, "k must be >= 1"),
        (lambda: index.search(queries, -3), InvalidInputError, "k must be >= 1"),
        (lambda: index.search(queries, 301), InvalidInputError, "larger than the number"),
        (lambda: index.search(queries, 2.5), InvalidTypeError, "k must be an integer"),
        (lambda: index.search(queries, True), InvalidTypeError, "k must be an integer"),
        (lambda: index.search(queries, 3, threads=0), InvalidInputError, "threads"),
        (lambda: index.search(queries, 3, filter=np.zeros((2, 2), bool)), ValueError, "1-D"),
        (lambda: index.search(queries, 3, filter=[-5]), InvalidInputError, ">= 0"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
        assert_unchanged(index, queries, snap)


def test_bad_construction_arguments(kind):
    with pytest.raises(InvalidInputError, match="metric"):
        FACTORIES[kind](8, "manhattan")
    with pytest.raises(InvalidInputError, match="dim"):
        FACTORIES[kind](0, "l2")
    with pytest.raises(InvalidTypeError, match="dim"):
        FACTORIES[kind]("8", "l2")


def test_empty_index_and_cosine_zero_vector(kind):
    index = FACTORIES[kind](4, "cosine")
    with pytest.raises(InvalidInputError, match="empty"):
        index.search(np.ones((1, 4)), 1)
    with pytest.raises(InvalidInputError, match="zero vector"):
        index.add(np.zeros((2, 4)))
    assert len(index) == 0
    index.add(np.eye(4))
    with pytest.raises(InvalidInputError, match="zero vector"):
        index.search(np.zeros((1, 4)), 1)


def test_input_not_modified_and_not_aliased(kind, data):
    base, queries = data
    x = base[:100].copy()
    keep = x.copy()
    index = FACTORIES[kind](x.shape[1], "cosine")
    index.add(x)
    np.testing.assert_array_equal(x, keep)
    x[:] = 0  # the caller reusing its buffer must not change the index
    assert np.isfinite(index.search(queries[:3], 3)[0]).all()


def test_integer_and_float64_input_accepted(kind, data):
    base, queries = data
    index = FACTORIES[kind](base.shape[1], "l2")
    index.add((base[:200] * 255).astype(np.uint8))
    index.add(base[200:400].astype(np.float64) * 255)
    d, i = index.search((queries[:5] * 255).astype(np.int32), 3)
    assert i.shape == (5, 3) and (i >= 0).all()


def test_absurd_dimension_is_refused(kind):
    """A dimension beyond MAX_DIM is an input error (not a failed allocation, which an HTTP API turns into a 500)."""
    from simdex._validate import MAX_DIM
    with pytest.raises(InvalidInputError, match="dim must be <="):
        FACTORIES[kind](MAX_DIM + 1, "l2")
    with pytest.raises(InvalidInputError, match="dim must be <="):
        FACTORIES[kind](10 ** 18, "l2")
