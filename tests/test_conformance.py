"""The conformance suite every index passes: one suite, every index class (as scikit-learn's ``check_estimator``).

Two parts:

- the vector checks (add/search/remove/get/save/load, filters, recall against brute force, bad input) for every
  vector index of ``FACTORIES``, under each metric;
- the index contract of :mod:`simdex.index` for every index class simdex exports, whatever it stores, through
  the adapters of ``tests/_index_adapters.py`` (vectors; texts and sparse vectors; MinHash signatures; packed
  codes; multi-vector documents; build-once SPANN): ids, ``len``, ``remove``, ``save``/``load`` (also in a fresh
  process), ``nbytes``, bad input, damaged files, and the operations a family refuses.

A new vector index joins by adding a factory to ``FACTORIES``; a new class of any kind is found among the
exports, and fails here until it has an adapter.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import simdex
from simdex import (CorruptFileError, DimensionMismatchError, DuplicateIdError, FlatIndex, HNSWIndex,
                    InvalidInputError, InvalidTypeError, MissingFileError, SimdexError, UnknownIdError,
                    UnknownKindError, UnsupportedOperationError)
from simdex import fileformat
from tests._index_adapters import (ADAPTER_NAMES, FACTORIES, adapter, adapters, adapters_for,  # noqa: F401 (fixtures)
                                   exported_index_classes, family_data)
from tests.conftest import numpy_knn

# the least recall@10 each index must reach on the small real slices used here (exact ones: 1.0)
MIN_RECALL = {"flat": 1.0, "hnsw": 0.95, "labels": 0.95, "hnsw-lvq8": 0.95, "ivf-pq": 0.9, "matryoshka": 0.95,
              "vamana": 0.95, "vamana-disk-lvq8": 0.95, "window": 0.95, "ivf-rabitq": 0.9, "hnsw-rabitq4": 0.95,
              "rabitq-graph": 0.95}

N = 2000


@pytest.fixture(params=sorted(FACTORIES))
def kind(request) -> str:
    return request.param


@pytest.fixture(params=["l2", "ip", "cosine"])
def metric(request) -> str:
    return request.param


def real_slice(ds, metric: str) -> tuple[np.ndarray, np.ndarray]:
    base = ds.base[:N].copy()
    queries = ds.queries[:50].copy()
    if metric == "l2":
        base /= 255.0
        queries /= 255.0
    return base, queries


@pytest.fixture
def data(wordnet_small, fashion_small, metric):
    """Real vectors for the metric: WordNet embeddings for ip/cosine, Fashion-MNIST (scaled) for l2."""
    return real_slice(fashion_small if metric == "l2" else wordnet_small, metric)


@pytest.fixture
def l2_data(fashion_small):
    """Fashion-MNIST (scaled), for the tests that choose their own metric: they run once per index kind, not once
    per metric."""
    return real_slice(fashion_small, "l2")


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


def test_load_wrong_kind_and_corrupt(kind, l2_data, tmp_path):
    base, _ = l2_data
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
def test_bad_vectors_rejected_and_index_unchanged(kind, l2_data, case):
    base, queries = l2_data
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


def test_bad_ids_and_k_rejected_and_index_unchanged(kind, l2_data):
    base, queries = l2_data
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


def test_input_not_modified_and_not_aliased(kind, l2_data):
    base, queries = l2_data
    x = base[:100].copy()
    keep = x.copy()
    index = FACTORIES[kind](x.shape[1], "cosine")
    index.add(x)
    np.testing.assert_array_equal(x, keep)
    before = index.search(queries[:3], 3)
    x[:] = 0  # the caller reusing its buffer must not change the index (zeroed rows would score differently)
    after = index.search(queries[:3], 3)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)


def test_one_query_per_call_answers_as_the_batch(kind, metric, data):
    """A query searched alone (the single-query path: no parallel launch, one thread) gets the answer it gets in a
    batch searched with both threads, with tombstones in the index too."""
    base, queries = data
    index = FACTORIES[kind](base.shape[1], metric)
    index.add(base)
    index.remove(np.arange(0, N, 7))
    batch_d, batch_i = index.search(queries[:20], 10, threads=2)
    for q, d, i in zip(queries[:20], batch_d, batch_i):
        one_d, one_i = index.search(q[None], 10, threads=1)
        np.testing.assert_array_equal(one_i[0], i)
        np.testing.assert_allclose(one_d[0], d, rtol=1e-5, atol=1e-5)
    assert not np.isin(batch_i, np.arange(0, N, 7)).any()


def test_checked_vectors_are_normalised_row_by_row():
    """Cosine inputs are scaled to unit norm in float64 precision, each row on its own (a row's result does not
    depend on the rows beside it), tiny and huge rows included; values beyond float32 are refused."""
    from simdex._validate import check_vectors
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 33)).astype(np.float32)
    x[1] *= np.float32(1e-41)  # subnormal values: the scale overflows float32
    x[2] *= np.float32(1e30)
    out = check_vectors(x, 33, normalize=True)
    ref = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(out, ref, rtol=3e-6, atol=1e-7)
    for r in range(6):
        np.testing.assert_array_equal(check_vectors(x[r:r + 1], 33, normalize=True)[0], out[r])
    assert out is not x and not np.shares_memory(out, x)
    with pytest.raises(InvalidInputError, match="NaN or infinite values .first at row 1"):
        check_vectors(np.array([[1.0, 2.0], [1e39, 0.0]]), 2)


def test_integer_and_float64_input_accepted(kind, l2_data):
    base, queries = l2_data
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


# ---- the index contract, every family ----------------------------------------------------------------------------
N_CONTRACT = 300  # items per index: enough to train every codec (PQ needs 256)


def contract_state(index, adapter, probe):
    """What a refused call must leave as it was: the size, the ids and what the probe items find."""
    return len(index), np.sort(index.ids), adapter.query(index, probe)


def assert_same_state(a, b):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    if a[2] is not None:
        for x, y in zip(a[2], b[2]):
            np.testing.assert_array_equal(x, y)


def test_every_exported_index_class_has_an_adapter(family_data, adapters):
    assert set(adapters) == set(ADAPTER_NAMES)
    classes = exported_index_classes()
    assert {"SparseIndex", "MinHashLSH", "LSHBloom", "HammingIndex", "SPANNIndex",
            "MultiVectorIndex", "StreamingVamanaIndex", "IVFIndex"} <= {c.__name__ for c in classes}
    missing = [c.__name__ for c in classes if not adapters_for(c, list(adapters.values()), family_data)]
    assert not missing, f"index classes without an adapter in tests/_index_adapters.py: {missing}"


def test_contract_ids_and_len(adapter, tmp_path):
    index = adapter.filled(N_CONTRACT, tmp_path)
    assert len(index) == index.ntotal == N_CONTRACT
    assert index.ids.dtype == np.int64
    np.testing.assert_array_equal(np.sort(index.ids), np.arange(N_CONTRACT))
    assert 0 in index and N_CONTRACT - 1 in index and N_CONTRACT not in index
    more = adapter.items(5, N_CONTRACT)
    if "add" in adapter.refuses:
        with pytest.raises(UnsupportedOperationError, match="build"):
            index.add(more)
        assert len(index) == N_CONTRACT
        return
    new = index.add(more)
    assert new.dtype == np.int64
    np.testing.assert_array_equal(new, np.arange(N_CONTRACT, N_CONTRACT + 5))
    assert len(index) == N_CONTRACT + 5 and N_CONTRACT + 4 in index


def test_contract_chosen_ids(adapter, tmp_path):
    chosen = np.arange(N_CONTRACT, dtype=np.int64) * 7 + 3
    if "ids" in adapter.refuses:
        index = adapter.make()
        with pytest.raises(UnsupportedOperationError, match="ids"):
            index.add(adapter.items(N_CONTRACT, 0), chosen)
        assert len(index) == 0
        return
    index = adapter.filled(N_CONTRACT, tmp_path, ids=chosen)
    np.testing.assert_array_equal(np.sort(index.ids), chosen)
    assert 3 in index and 4 not in index
    found = adapter.query(index, adapter.items(20, 0))
    if found is not None:  # only stored ids come back, and an item finds itself
        assert np.isin(np.concatenate(found), np.r_[chosen, -1]).all()
        assert np.mean([chosen[i] in f for i, f in enumerate(found)]) >= 0.8
    if "add" not in adapter.refuses:  # the next default ids follow the largest
        np.testing.assert_array_equal(index.add(adapter.items(3, N_CONTRACT)), chosen[-1] + 1 + np.arange(3))


def test_contract_bad_ids_refused_and_index_unchanged(adapter, tmp_path):
    index = adapter.filled(N_CONTRACT, tmp_path)
    probe = adapter.items(5, 0)
    before = contract_state(index, adapter, probe)
    more = adapter.items(3, N_CONTRACT)
    cases = []
    if not {"add", "ids"} & adapter.refuses:
        cases += [(lambda: index.add(more, [1000, 1000, 1001]), DuplicateIdError, "duplicates"),
                  (lambda: index.add(more, [1000, 5, 1001]), DuplicateIdError, "already in the index"),
                  (lambda: index.add(more, [-1, 1000, 1001]), InvalidInputError, ">= 0"),
                  (lambda: index.add(more, [1000, 1001]), InvalidInputError, "3"),
                  (lambda: index.add(more, [1.5, 2, 3]), InvalidTypeError, "integers"),
                  (lambda: index.add(more, ["a", "b", "c"]), InvalidTypeError, "numeric")]
    if "remove" not in adapter.refuses:
        cases += [(lambda: index.remove([1, 10**9]), UnknownIdError, str(10**9)),
                  (lambda: index.remove([1, 1]), DuplicateIdError, "duplicates"),
                  (lambda: index.remove([-2]), InvalidInputError, ">= 0"),
                  (lambda: index.remove(["x"]), InvalidTypeError, "numeric")]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
        assert_same_state(before, contract_state(index, adapter, probe))


def test_contract_remove(adapter, tmp_path):
    index = adapter.filled(N_CONTRACT, tmp_path)
    gone = np.arange(0, 60, 3)
    if "remove" in adapter.refuses:
        with pytest.raises(UnsupportedOperationError, match="remove"):
            index.remove(gone)
        assert len(index) == N_CONTRACT
        return
    assert index.remove(gone) == gone.size
    assert len(index) == N_CONTRACT - gone.size and gone[0] not in index and not np.isin(gone, index.ids).any()
    found = adapter.query(index, adapter.items(60, 0))
    if found is not None:
        assert not np.isin(np.concatenate(found), gone).any(), "a removed id came back"
    if "add" not in adapter.refuses:  # a removed id may be used again
        index.add(adapter.items(1, 0), gone[:1])
        assert gone[0] in index and len(index) == N_CONTRACT - gone.size + 1


def test_contract_save_load_round_trip(adapter, tmp_path):
    index = adapter.filled(N_CONTRACT, tmp_path)
    if "remove" not in adapter.refuses:
        index.remove([5, 17])
    path = tmp_path / "saved.sdx"
    if "save" in adapter.refuses:
        with pytest.raises(UnsupportedOperationError, match="save"):
            index.save(path)
        with pytest.raises(UnsupportedOperationError):
            type(index).load(path)
        assert not path.exists()
        return
    index.save(path)
    probe = adapter.items(20, 0)
    expect = contract_state(index, adapter, probe)
    for loaded in (type(index).load(path), simdex.load(path), type(index).load(path, mmap=False, verify=False)):
        assert type(loaded) is type(index)
        assert_same_state(expect, contract_state(loaded, adapter, probe))
        assert loaded.nbytes > 0
    if "add" not in adapter.refuses:  # a loaded index can still change; its file does not
        loaded.add(adapter.items(3, N_CONTRACT))
        assert len(loaded) == len(index) + 3 and len(type(index).load(path)) == len(index)


def _flip_in_largest_array(file) -> None:
    """Flip one byte inside the largest array of a simdex file (padding is not covered by checksums)."""
    raw = bytearray(file.read_bytes())
    header_len = int.from_bytes(raw[8:16], "little")
    specs = json.loads(raw[24:24 + header_len])["arrays"]
    spec = max(specs.values(), key=lambda s: s["nbytes"])
    raw[spec["offset"] + spec["nbytes"] // 2] ^= 0xFF
    file.write_bytes(bytes(raw))


def test_contract_damaged_and_foreign_files(adapter, tmp_path):
    index = adapter.filled(N_CONTRACT, tmp_path)
    if "save" in adapter.refuses:  # nothing to damage: save and load are refused (test_contract_save_load)
        return
    cls, path = type(index), tmp_path / "saved.sdx"
    index.save(path)
    file = path / "index.sdx" if path.is_dir() else path
    good = file.read_bytes()
    # a healthy file of another kind, and one of a kind this simdex does not know: not called corrupt
    other = tmp_path / "other.sdx"
    (FlatIndex(4) if cls is not FlatIndex else HNSWIndex(4)).save(other)
    with pytest.raises(CorruptFileError, match="holds a"):
        cls.load(other)
    kind, meta, arrays = fileformat.load_arrays(file, mmap=False)
    unknown = tmp_path / "unknown.sdx"
    fileformat.save_arrays(unknown, "NoSuchIndex", meta, arrays)
    with pytest.raises(UnknownKindError, match="index kind 'NoSuchIndex' is not known to this simdex version"):
        simdex.load(unknown)
    with pytest.raises(CorruptFileError, match="holds a NoSuchIndex"):
        cls.load(unknown)
    # damaged: a flipped byte, a cut, not a simdex file at all, nothing there
    _flip_in_largest_array(file)
    for damage, message in ((None, "checksum"), (good[:len(good) // 2], "truncated"), (b"", "truncated"),
                            (b"not an index at all" * 10, "not a simdex")):
        if damage is not None:
            file.write_bytes(damage)
        for load in (cls.load, simdex.load):
            with pytest.raises(CorruptFileError, match=message):
                load(path)
    for load in (cls.load, simdex.load):
        with pytest.raises(MissingFileError):
            load(tmp_path / "nothing-here.sdx")


def test_contract_nbytes(adapter, tmp_path):
    small = adapter.filled(N_CONTRACT, tmp_path / "small")
    large = adapter.filled(2 * N_CONTRACT, tmp_path / "large")
    assert isinstance(small.nbytes, int) and 0 < small.nbytes <= large.nbytes
    if hasattr(type(small), "memory_bytes"):  # the old name, kept as a deprecated alias
        with pytest.deprecated_call():
            assert small.memory_bytes == small.nbytes


def test_contract_bad_items_refused_and_index_unchanged(adapter, tmp_path):
    index = adapter.filled(N_CONTRACT, tmp_path)
    probe = adapter.items(5, 0)
    before = contract_state(index, adapter, probe)
    assert adapter.bad_items
    for name, bad in adapter.bad_items.items():
        calls = {"query": lambda: adapter.query(index, bad)}
        if "add" not in adapter.refuses:
            calls["add"] = lambda: index.add(bad)
        for verb, call in calls.items():
            try:
                call()
            except SimdexError:
                pass
            else:
                pytest.fail(f"{verb} accepted the bad input {name!r}")
            assert_same_state(before, contract_state(index, adapter, probe))


def test_load_any_kind_in_a_fresh_process(adapters, family_data, tmp_path):
    """``simdex.load`` in a process that imported nothing else: every family's files load (files of IVFIndex used
    to be called corrupt there, because only an import of simdex.quant registered that kind), and a healthy file
    of a kind the process cannot know (a test-only class) says so."""
    files, expect = {}, {}
    for name, ad in adapters.items():
        if "save" in ad.refuses:
            continue
        index = ad.filled(N_CONTRACT, tmp_path / name)
        files[name] = str(tmp_path / f"{name}.sdx")
        index.save(files[name])
        known = type(index).kind in simdex.index.KIND_MODULES
        expect[name] = [type(index).__name__, len(index)] if known else "UnknownKindError"
    window = simdex.WindowIndex(family_data.vectors.shape[1], leaf_size=128, base_params={"M": 8})
    window.add(family_data.vectors[:N_CONTRACT], np.arange(N_CONTRACT, dtype=np.float64))
    files["plain-window"] = str(tmp_path / "plain-window.sdx")
    window.save(files["plain-window"])
    expect["plain-window"] = ["WindowIndex", N_CONTRACT]
    script = ("import json, sys, simdex\n"
              "out = {}\n"
              "for name, path in json.loads(sys.argv[1]).items():\n"
              "    try:\n"
              "        index = simdex.load(path)\n"
              "        out[name] = [type(index).__name__, len(index)]\n"
              "    except simdex.UnknownKindError as exc:\n"
              "        assert 'is not known to this simdex version' in str(exc), exc\n"
              "        out[name] = 'UnknownKindError'\n"
              "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(files)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == expect
