"""Shingling, MinHash and exact Jaccard on real gcide text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from simdex.errors import InvalidInputError, InvalidTypeError
from simdex.sets import MinHash, Shingler, as_hashed_sets, jaccard, pair_jaccard, shingle, similarity_join
from simdex.sets.shingle import HashedSets

from ._sets_data import gcide_texts, perturbed_copies

_TOKEN = re.compile(r"[a-z0-9\u0080-\uffff]+")


def reference_shingles(text: str, n: int) -> set[str]:
    toks = _TOKEN.findall(text.lower())
    if not toks:
        return set()
    if len(toks) < n:
        return {" ".join(toks)}
    return {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def exact_jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


@pytest.fixture(scope="module")
def texts() -> tuple[str, ...]:
    return gcide_texts()


def test_word_shingles_match_a_python_reference(texts):
    sets = shingle(texts, 5)
    assert len(sets) == len(texts)
    assert sets.values.dtype == np.uint64
    sizes = sets.sizes()
    ref_sizes = np.array([len(reference_shingles(t, 5)) for t in texts])
    np.testing.assert_array_equal(sizes, ref_sizes)  # no hash collisions, same tokenisation
    for i in range(0, len(texts), 97):
        row = sets.row(i)
        assert np.all(row[1:] > row[:-1])  # sorted, unique


def test_shingle_jaccard_equals_reference_jaccard(texts):
    copies = perturbed_copies(texts, 100)
    originals = [t for t in texts if len(t.split()) >= 30][:100]
    sets = shingle(originals + copies, 3)
    pairs = np.stack([np.arange(100), np.arange(100) + 100], axis=1)
    got = pair_jaccard(sets, pairs)
    want = [exact_jaccard(reference_shingles(a, 3), reference_shingles(b, 3)) for a, b in zip(originals, copies)]
    np.testing.assert_allclose(got, want)


def test_shingler_options():
    s = Shingler(2)(["Hello, World!", "hello world", "", "one", "a\x00b c"])
    assert list(s.sizes()) == [1, 1, 0, 1, 2]  # NUL inside a text separates tokens like white space
    assert s.row(0)[0] == s.row(1)[0]  # lower-cased, punctuation stripped
    keep = Shingler(2, punctuation=True, lowercase=False)(["Hello, World!", "hello world"])
    assert keep.row(0)[0] != keep.row(1)[0]
    chars = Shingler(3, unit="char")(["ab  cd", "ab cd", "abcd"])
    assert chars.sizes()[0] == 3 and np.array_equal(chars.row(0), chars.row(1))  # white space runs collapse
    s32 = Shingler(5, bits=32)(["the quick brown fox jumps over the lazy dog"])
    assert s32.values.dtype == np.uint32 and s32.sizes()[0] == 5
    assert not np.array_equal(Shingler(2, seed=1)(["a b"]).values, Shingler(2, seed=2)(["a b"]).values)
    unicode = Shingler(1)(["Ünïcode wörds", "ünïcode WÖRDS"])
    assert np.array_equal(unicode.row(0), unicode.row(1))


@pytest.mark.parametrize("bad, error", [("just a string", InvalidTypeError), ([1, 2], InvalidTypeError),
                                        (None, InvalidTypeError)])
def test_shingle_bad_input(bad, error):
    with pytest.raises(error):
        shingle(bad, 5)


def test_shingler_bad_options():
    with pytest.raises(InvalidInputError, match="ngram"):
        Shingler(0)
    with pytest.raises(InvalidInputError, match="unit"):
        Shingler(3, unit="sentence")
    with pytest.raises(InvalidInputError, match="bits"):
        Shingler(3, bits=16)


def _pairs_at(sets: HashedSets, rng: np.random.Generator, target: float, count: int) -> tuple[HashedSets, np.ndarray]:
    """Pairs (A, B) from real shingle sets with |A| = |B| and Jaccard near ``target``."""
    sizes = sets.sizes()
    pool = np.flatnonzero(sizes >= 40)
    rows, exact = [], []
    for r in rng.choice(pool, count):
        a = sets.row(r)
        x = int(round(2 * a.shape[0] * target / (1 + target)))
        other = np.setdiff1d(sets.values[rng.integers(0, sets.values.shape[0], 4 * a.shape[0])], a)
        b = np.concatenate([rng.choice(a, x, replace=False), other[:a.shape[0] - x]])
        rows += [a, b]
        exact.append(x / (a.shape[0] + b.shape[0] - x))
    return as_hashed_sets(rows), np.array(exact)


@pytest.mark.parametrize("method", ["oph", "kperm", "oph-rotation"])
def test_minhash_estimates_exact_jaccard(texts, method):
    sets = shingle(texts, 5)
    rng = np.random.default_rng(1)
    mh = MinHash(128, method=method, seed=3)
    for target in (0.2, 0.5, 0.8):
        pairs, exact = _pairs_at(sets, rng, target, 200)
        sig = mh.signatures(pairs)
        assert sig.shape == (400, 128) and sig.dtype == np.uint32
        est = jaccard(sig[0::2], sig[1::2])
        assert abs(np.mean(est - exact)) < 0.015, "biased estimate"
        # the variance of a k=128 estimate is J(1-J)/128 for k-permutation MinHash; allow 2x
        assert np.mean((est - exact) ** 2) < 2 * target * (1 - target) / 128


def test_optimal_densification_beats_rotation_on_sparse_sets(texts):
    sets = shingle(texts, 5)
    rng = np.random.default_rng(2)
    small = as_hashed_sets([sets.row(i) for i in np.flatnonzero((sets.sizes() >= 10) & (sets.sizes() <= 20))])
    mse = {}
    pairs_list = []
    for target in (0.3, 0.6):
        pairs_list.append(_small_pairs(small, rng, target, 300))
    for method in ("oph", "oph-rotation"):
        errs = []
        for pairs, exact in pairs_list:
            sig = MinHash(128, method=method, seed=5).signatures(pairs)
            errs.append((jaccard(sig[0::2], sig[1::2]) - exact) ** 2)
        mse[method] = float(np.mean(np.concatenate(errs)))
    assert mse["oph"] < 0.6 * mse["oph-rotation"]


def _small_pairs(sets, rng, target, count):
    rows, exact = [], []
    for r in rng.integers(0, len(sets), count):
        a = sets.row(r)
        x = max(1, int(round(2 * a.shape[0] * target / (1 + target))))
        other = np.setdiff1d(sets.values[rng.integers(0, sets.values.shape[0], 4 * a.shape[0])], a)
        b = np.concatenate([rng.choice(a, x, replace=False), other[:a.shape[0] - x]])
        rows += [a, b]
        exact.append(x / (a.shape[0] + b.shape[0] - x))
    return as_hashed_sets(rows), np.array(exact)


def test_minhash_inputs_and_empty_sets():
    mh = MinHash(64)
    a = mh.signatures([np.array([5, 1, 1, 3], np.uint64), np.array([], np.uint64), np.array([1, 3, 5])])
    assert np.array_equal(a[0], a[2])  # duplicates do not matter, dtype does not matter
    assert np.all(a[1] == 0xFFFFFFFF)
    csr = mh.signatures((np.array([0, 3]), np.array([1, 3, 5], np.uint64)))
    assert np.array_equal(csr[0], a[0])
    assert np.array_equal(mh.signature([1, 3, 5]), a[0])
    assert jaccard(a[0], a[2]) == 1.0


def test_minhash_bad_input():
    with pytest.raises(InvalidInputError, match="num_perm"):
        MinHash(0)
    with pytest.raises(InvalidTypeError, match="num_perm"):
        MinHash(12.5)
    with pytest.raises(InvalidInputError, match="method"):
        MinHash(16, method="bbit")
    mh = MinHash(16)
    with pytest.raises(InvalidTypeError):
        mh.signatures([np.array([0.5, 1.5])])
    with pytest.raises(InvalidInputError, match="negative"):
        mh.signatures([np.array([-1, 2])])
    with pytest.raises(InvalidInputError, match="indptr"):
        mh.signatures((np.array([0, 5]), np.array([1, 2], np.uint64)))
    with pytest.raises(InvalidInputError):
        jaccard(np.zeros(4, np.uint32), np.zeros(5, np.uint32))


def test_similarity_join_matches_brute_force(texts):
    copies = perturbed_copies(texts, 150, seed=3)
    sets = shingle(list(texts[:600]) + copies, 3)
    n = len(sets)
    ii, jj = np.triu_indices(n, 1)
    all_pairs = np.stack([ii, jj], axis=1)
    sims = pair_jaccard(sets, all_pairs)
    nonempty = sets.sizes() > 0
    for t in (0.5, 0.8):
        want = all_pairs[(sims >= t - 1e-9) & nonempty[ii] & nonempty[jj]]
        got, got_sims = similarity_join(sets, t)
        assert len(want) > 20
        np.testing.assert_array_equal(got[np.lexsort((got[:, 1], got[:, 0]))], want)
        assert np.all(got_sims >= t - 1e-9)
    with pytest.raises(InvalidInputError, match="threshold"):
        similarity_join(sets, 1.5)
