"""SimHashLSH (cosine, multi-probe) and HammingIndex against brute force on real embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from simdex import load
from simdex.errors import CorruptFileError, DimensionMismatchError, InvalidInputError, InvalidTypeError, \
    UnknownIdError
from simdex.sets import HammingIndex, SimHashLSH, simhash

from .conftest import numpy_knn


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def test_simhash_lsh_recall_and_multiprobe(wordnet_small):
    base, queries = wordnet_small.base, wordnet_small.queries
    _, truth = numpy_knn(base, queries, 10, "cosine")
    index = SimHashLSH(base.shape[1], num_tables=16, bits_per_table=8, probes=8, seed=1)
    index.add(base)
    dist, ids = index.search(queries, 10)
    assert dist.shape == ids.shape == (queries.shape[0], 10) and dist.dtype == np.float32
    r_probe = recall(ids, truth, 10)
    r_plain = recall(index.search(queries, 10, probes=0)[1], truth, 10)
    assert r_probe >= 0.85, (r_probe, r_plain)
    assert r_probe > r_plain + 0.05, (r_probe, r_plain)  # multi-probe finds neighbours in adjacent buckets
    # distances are exact cosine distances of the returned ids, ascending
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    x = base / np.linalg.norm(base, axis=1, keepdims=True)
    valid = ids >= 0
    exact = 1 - np.einsum("qd,qkd->qk", q, x[np.maximum(ids, 0)])
    np.testing.assert_allclose(dist[valid], exact[valid], atol=1e-4)
    assert np.all(np.diff(np.where(valid, dist, np.inf), axis=1) >= -1e-6)


def test_simhash_lsh_remove_filter_save_load(wordnet_small, tmp_path):
    base = wordnet_small.base[:2000]
    index = SimHashLSH(base.shape[1], probes=4)
    ids = index.add(base, ids=np.arange(2000) + 100)
    _, before = index.search(base[:20], 5)
    assert np.array_equal(before[:, 0], ids[:20])  # a stored vector is its own nearest neighbour
    index.remove(ids[:10])
    _, after = index.search(base[:20], 5)
    assert not np.isin(ids[:10], after).any()
    _, filtered = index.search(base[20:40], 5, filter=ids[20:40])
    assert set(filtered[filtered >= 0].tolist()) <= set(ids[20:40].tolist())
    index.save(tmp_path / "s.simdex")
    loaded = load(tmp_path / "s.simdex")
    assert isinstance(loaded, SimHashLSH) and loaded.ntotal == 1990
    for a, b in zip(index.search(base[:50], 5), loaded.search(base[:50], 5)):
        np.testing.assert_array_equal(a, b)
    raw = (tmp_path / "s.simdex").read_bytes()
    (tmp_path / "t.simdex").write_bytes(raw[:-1000])
    with pytest.raises(CorruptFileError):
        SimHashLSH.load(tmp_path / "t.simdex")


def test_simhash_lsh_bad_input_leaves_index_unchanged(wordnet_small):
    base = wordnet_small.base[:500]
    index = SimHashLSH(base.shape[1])
    index.add(base)
    bad = base[:3].copy()
    bad[1, 5] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        index.add(bad)
    with pytest.raises(InvalidInputError, match="zero vectors"):
        index.add(np.zeros((2, base.shape[1]), np.float32))
    with pytest.raises(DimensionMismatchError):
        index.add(base[:3, :10])
    with pytest.raises(InvalidInputError, match="NaN"):
        index.search(bad, 3)
    with pytest.raises(UnknownIdError):
        index.remove([10**6])
    assert index.ntotal == 500
    with pytest.raises(InvalidInputError, match="bits_per_table"):
        SimHashLSH(8, bits_per_table=65)
    with pytest.raises(InvalidInputError, match="num_tables"):
        SimHashLSH(8, num_tables=0)


def test_hamming_index_matches_brute_force(wordnet_small, tmp_path):
    codes = simhash(wordnet_small.base, 100, seed=3)
    qcodes = simhash(wordnet_small.queries, 100, seed=3)
    assert codes.shape == (wordnet_small.base.shape[0], 13) and codes.dtype == np.uint8
    index = HammingIndex(100)
    index.add(codes)
    dist, ids = index.search(qcodes, 10)
    bits = np.unpackbits(qcodes[:, None, :] ^ codes[None, :, :], axis=2, bitorder="little")[:, :, :100]
    brute = bits.sum(axis=2)
    np.testing.assert_array_equal(dist, np.sort(brute, axis=1, kind="stable")[:, :10])
    np.testing.assert_array_equal(np.take_along_axis(brute, ids, 1), dist)
    index.remove(ids[:, 0][:5])
    assert not np.isin(ids[:, 0][:5], index.search(qcodes[:5], 10)[1]).any()
    index.save(tmp_path / "h.simdex")
    loaded = HammingIndex.load(tmp_path / "h.simdex")
    for a, b in zip(index.search(qcodes, 4), loaded.search(qcodes, 4)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InvalidTypeError, match="uint8"):
        index.add(codes.astype(np.int64))
    with pytest.raises(InvalidInputError, match=r"\(n, 13\)"):
        index.add(codes[:, :8])
    with pytest.raises(InvalidInputError, match="k="):
        index.search(qcodes[:1], 10**7)
    small = HammingIndex(16)
    small.add(np.array([[0, 0], [255, 0]], np.uint8))
    d, i = small.search(np.array([[1, 0]], np.uint8), 2)
    assert d.tolist() == [[1, 7]] and i.tolist() == [[0, 1]]
