"""MinHashLSH and LSHBloom: candidate recall against exact all-pairs Jaccard on gcide, verbs, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest

from simdex.errors import CorruptFileError, DuplicateIdError, InvalidInputError, InvalidTypeError, UnknownIdError
from simdex.sets import LSHBloom, MinHash, MinHashLSH, optimal_params, shingle, similarity_join
from simdex.sets.lsh import false_negative_area, false_positive_area

from ._sets_data import gcide_texts, perturbed_copies


@pytest.fixture(scope="module")
def corpus():
    texts = list(gcide_texts()) + perturbed_copies(gcide_texts(), 400, seed=7)
    sets = shingle(texts, 5)
    sig = MinHash(128).signatures(sets)
    return sets, sig


def _pair_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, np.sort(pairs, axis=1).tolist()))


def test_optimal_params():
    assert optimal_params(0.8, 128, (0.5, 0.5)) == (9, 13)  # datasketch's choice for the same inputs
    b, r = optimal_params(0.8, 128)  # the shared default weights false negatives (DEFAULT_WEIGHTS)
    assert b * r <= 128 and r < 13  # weighting false negatives buys recall with more, shorter bands
    assert MinHashLSH().bands == LSHBloom().bands == b and MinHashLSH().threshold == LSHBloom().threshold == 0.8
    for b, r in [(9, 13), (16, 8)]:
        assert 0 < false_positive_area(0.8, b, r) < 0.8 and 0 < false_negative_area(0.8, b, r) < 0.2


@pytest.mark.parametrize("threshold, weights, min_recall", [(0.5, (0.5, 0.5), 0.8), (0.8, (0.05, 0.95), 0.95)])
def test_candidate_recall_against_exact_join(corpus, threshold, weights, min_recall):
    sets, sig = corpus
    truth = _pair_set(similarity_join(sets, threshold)[0])
    assert len(truth) >= 50
    lsh = MinHashLSH(threshold, 128, weights)
    lsh.insert(sig)
    found = _pair_set(lsh.candidate_pairs())
    recall = len(found & truth) / len(truth)
    assert recall >= min_recall
    # query agrees with the self-join
    indptr, ids = lsh.query(sig[:300])
    from_query = {(min(i, int(j)), max(i, int(j))) for i in range(300) for j in ids[indptr[i]:indptr[i + 1]] if j != i}
    assert from_query <= found
    assert {p for p in found if p[0] < 300} <= from_query
    for i in range(300):
        assert i in ids[indptr[i]:indptr[i + 1]]  # every set finds itself


def test_insert_query_remove_and_incremental(corpus):
    _, sig = corpus
    lsh = MinHashLSH(0.7, 128)
    ids = lsh.insert(sig[:1500], ids=np.arange(1500) * 10)
    lsh.insert(sig[1500:1600])  # next free ids; stays in the unsorted tail
    assert len(lsh) == 1600 and 14990 in lsh
    indptr, got = lsh.query(sig[1550])
    assert 14991 + 50 in got
    before = lsh.query(sig[:50])
    assert lsh.remove(ids[:10]) == 10
    indptr, got = lsh.query(sig[:50])
    assert not np.isin(ids[:10], got).any()
    kept = set(before[1].tolist()) - set(ids[:10].tolist())
    assert set(got.tolist()) == kept
    with pytest.raises(UnknownIdError):
        lsh.remove([10**9])
    with pytest.raises(DuplicateIdError):
        lsh.insert(sig[:1], ids=[ids[20]])
    assert len(lsh) == 1590


def test_bad_input_leaves_index_unchanged(corpus):
    _, sig = corpus
    lsh = MinHashLSH(0.8, 128)
    lsh.insert(sig[:100])
    state = (len(lsh), lsh._keys.copy())
    with pytest.raises(InvalidInputError, match=r"\(n, 128\)"):
        lsh.insert(sig[:5, :64])
    with pytest.raises(InvalidTypeError, match="integer"):
        lsh.insert(sig[:5].astype(np.float32))
    with pytest.raises(InvalidInputError, match="ids"):
        lsh.insert(sig[:5], ids=[-1, 2, 3, 4, 5])
    with pytest.raises(InvalidInputError):
        lsh.query(sig[:5, :10])
    assert len(lsh) == state[0] and np.array_equal(lsh._keys, state[1])
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(InvalidInputError, match="threshold"):
            MinHashLSH(bad, 128)
    with pytest.raises(InvalidTypeError, match="threshold"):
        MinHashLSH("0.8", 128)
    with pytest.raises(InvalidInputError, match="num_perm"):
        MinHashLSH(0.8, 0)
    with pytest.raises(InvalidInputError, match="weights"):
        MinHashLSH(0.8, 128, weights=(-1, 1))
    with pytest.raises(InvalidInputError, match="exceeds"):
        MinHashLSH(0.8, 128, params=(20, 10))


def test_save_load_round_trip_and_corruption(corpus, tmp_path):
    _, sig = corpus
    lsh = MinHashLSH(0.6, 128, params=(16, 8))
    lsh.insert(sig[:800], ids=np.arange(800) + 5)
    lsh.remove([5, 6])
    path = tmp_path / "lsh.simdex"
    lsh.save(path)
    loaded = MinHashLSH.load(path)
    assert (loaded.bands, loaded.rows, loaded.threshold, len(loaded)) == (16, 8, 0.6, 798)
    for a, b in zip(lsh.query(sig[:200]), loaded.query(sig[:200])):
        np.testing.assert_array_equal(a, b)
    raw = path.read_bytes()
    (tmp_path / "trunc.simdex").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        MinHashLSH.load(tmp_path / "trunc.simdex")
    damaged = bytearray(raw)
    damaged[-100] ^= 0xFF
    (tmp_path / "bad.simdex").write_bytes(bytes(damaged))
    with pytest.raises(CorruptFileError, match="checksum"):
        MinHashLSH.load(tmp_path / "bad.simdex")
    bloom = LSHBloom(0.6, 128, capacity=100)
    bloom.save(tmp_path / "bloom.simdex")
    with pytest.raises(CorruptFileError, match="LSHBloom"):
        MinHashLSH.load(tmp_path / "bloom.simdex")


def test_lshbloom_matches_index_with_few_false_positives(corpus, tmp_path):
    sets, sig = corpus
    n = sig.shape[0]
    bloom = LSHBloom(0.8, 128, capacity=n, fp_rate=1e-3)
    index = MinHashLSH(0.8, 128)
    assert (bloom.bands, bloom.rows) == (index.bands, index.rows)
    flags = bloom.query_insert(sig)
    # exact streaming answer: an earlier set shares a band key
    keys = index.banding.keys(sig)
    exact = np.zeros(n, bool)
    for b in range(keys.shape[1]):
        _, first = np.unique(keys[:, b], return_index=True)
        seen = np.ones(n, bool)
        seen[first] = False
        exact |= seen
    assert exact.sum() >= 50
    assert not (exact & ~flags).any(), "a Bloom filter has no false negatives"
    assert (flags & ~exact).sum() <= 5  # expected about 2.4 at 1e-3
    assert bloom.nbytes < 0.5 * MinHashLSH(0.8, 128).nbytes + 200 * n
    assert bloom.expected_fp_rate() <= 1e-3 * 1.01
    assert bloom.query(sig[:10]).all()
    bloom.save(tmp_path / "b.simdex")
    again = LSHBloom.load(tmp_path / "b.simdex")
    assert again.count == n and np.array_equal(again.query(sig[:50]), bloom.query(sig[:50]))
    with pytest.raises(InvalidInputError, match="fp_rate"):
        LSHBloom(0.8, 128, fp_rate=0)
    with pytest.raises(InvalidInputError, match="capacity"):
        LSHBloom(0.8, 128, capacity=0)
    with pytest.raises(InvalidInputError):
        bloom.insert(sig[:3, :5])
    assert bloom.count == n
