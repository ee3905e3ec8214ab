"""Codecs of simdex.quant on real data: reconstruction error, ADC = decoded distances, Hamming = numpy popcount,
state round trips and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from simdex import CorruptFileError, DimensionMismatchError, InvalidInputError
from simdex.metrics import pairwise
from simdex.quant import BinaryCodec, Codec, Int8Codec, LVQCodec, OPQCodec, PQCodec, RaBitQCodec, make_codec


def rel_mse(x, xh):
    return float(((x - xh) ** 2).sum(1).mean() / (x ** 2).sum(1).mean())


@pytest.fixture(scope="module")
def wordnet(wordnet_small):
    return wordnet_small.base[:4000].astype(np.float32), wordnet_small.queries[:20].astype(np.float32)


@pytest.fixture(scope="module")
def fashion(fashion_small):
    return fashion_small.base[:4000].astype(np.float32), fashion_small.queries[:20].astype(np.float32)


def test_scalar_error_ordering(wordnet, fashion):
    """LVQ adapts its range to each vector: on WordNet embeddings LVQ-8 is more exact than per-dimension int8.
    Fashion-MNIST pixels are already 8-bit integers, so per-dimension int8 (step = range / 255 <= 1) is
    lossless there and LVQ-8, whose per-vector step is not an integer, is not; the residual level makes
    LVQ-4x8 better than LVQ-8 on both."""
    for name_ds, (x, _) in (("wordnet", wordnet), ("fashion", fashion)):
        err = {}
        for name in ("int8", "lvq8", "lvq4", "lvq4x8"):
            c = make_codec(name, x.shape[1], "l2").train(x)
            err[name] = rel_mse(x, c.decode(c.encode(x)))
        if name_ds == "wordnet":
            assert err["lvq8"] < 0.8 * err["int8"], err
        else:
            assert err["int8"] < 1e-6, err
        assert err["lvq4x8"] < 0.1 * err["lvq8"], err
        assert err["lvq4"] < 0.05, err
        assert err["lvq8"] < 1e-3, err


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("name", ["int8", "lvq8", "lvq4", "pq16", "opq16"])
def test_adc_equals_decoded_distances(wordnet, metric, name):
    x, q = wordnet
    c = make_codec(name, x.shape[1], metric).train(x)
    codes = c.encode(x[:500])
    assert codes.shape == (500, c.code_size) and codes.dtype == np.uint8
    decoded = c.decode_primary(codes) if isinstance(c, LVQCodec) else c.decode(codes)
    got = c.distances(q, codes)
    want = pairwise(metric, q, decoded)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("name", ["int8", "lvq8", "lvq4"])
def test_four_row_scoring_equals_one_row(wordnet, name):
    """The graph search scores neighbours four at a time (affine_score4): same distances as one at a time, for
    8-bit and nibble-packed 4-bit rows."""
    from simdex.core.codes import affine_score, affine_score4

    x, q = wordnet
    c = make_codec(name, x.shape[1], "l2").train(x)
    codes = c.encode(x[:64])
    codes_f = codes.view(np.float32)
    qt, qc = c.prepare(q[:3])
    rows = np.random.default_rng(0).permutation(64)[:8].reshape(2, 4)
    for i in range(3):
        for a, b, r3, r4 in rows:
            four = affine_score4(qt[i], qc[i], codes, codes_f, a, b, r3, r4, c.bits, c.half)
            one = [affine_score(qt[i], qc[i], codes, codes_f, v, c.bits, c.half) for v in (a, b, r3, r4)]
            np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-5)
            assert len(set(np.round(one, 4))) > 1  # four different rows, so a kernel that scores one row fails


def test_lvq_residual_distances(wordnet):
    """The primary level of LVQ-4x8 is what traversal scores; the two levels together are nearly exact."""
    x, q = wordnet
    c = LVQCodec(x.shape[1], "l2", bits=4, residual_bits=8).train(x)
    codes = c.encode(x[:300])
    exact = pairwise("l2", q, x[:300])
    full = pairwise("l2", q, c.decode(codes))
    primary = c.distances(q, codes)
    assert np.abs(full - exact).max() < 0.05 * np.abs(primary - exact).max()


def test_pq_and_opq(wordnet):
    x, _ = wordnet
    err = {}
    for m in (8, 16, 48):
        c = PQCodec(x.shape[1], "l2", m=m, iterations=10).train(x)
        err[m] = rel_mse(x, c.decode(c.encode(x)))
    assert err[8] > err[16] > err[48]
    opq = OPQCodec(x.shape[1], "l2", m=16, iterations=10, opq_iterations=4).train(x)
    # OPQ balances the subspaces: at least as good as plain PQ (small slack for k-means noise)
    assert rel_mse(x, opq.decode(opq.encode(x))) < 1.02 * err[16]
    # non-divisible dimension: zero padding
    odd = PQCodec(50, "l2", m=8).train(x[:, :50])
    assert odd.code_size == 8 and odd.decode(odd.encode(x[:10, :50])).shape == (10, 50)


def test_binary_hamming_equals_numpy_popcount(wordnet):
    x, q = wordnet
    c = BinaryCodec(x.shape[1], "cosine").train(x)
    codes = c.encode(x[:700])
    assert codes.shape == (700, 48)
    qc = c.encode(q)
    bits_x = np.unpackbits(codes, axis=1)
    bits_q = np.unpackbits(qc, axis=1)
    want = (bits_q[:, None, :] != bits_x[None, :, :]).sum(-1)
    np.testing.assert_array_equal(c.distances(q, codes), want.astype(np.float32))
    # angles are preserved on average: Hamming correlates with cosine distance
    cos = 1 - q @ x[:700].T / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(x[:700], axis=1)[None]
    assert np.corrcoef(cos.ravel(), want.ravel())[0, 1] > 0.7


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_rabitq_estimates_are_unbiased_and_bounded(wordnet, fashion, metric, bits):
    """RaBitQ's estimate of every (query, vector) distance: unbiased (the mean error is a small share of its
    spread), more exact with more bits, and inside the error bound: eps0 = 3 standard deviations of the estimator
    hold for >= 99% of pairs, the paper's 1.9 for >= 90%."""
    x, q = fashion if metric == "l2" else wordnet
    c = RaBitQCodec(x.shape[1], metric, bits=bits).train(x)
    codes = c.encode(x[:2000])
    assert codes.shape == (2000, 8 * bits * c.words + 16)
    qq = q / np.linalg.norm(q, axis=1, keepdims=True) if metric == "cosine" else q
    xx = x[:2000] / np.linalg.norm(x[:2000], axis=1, keepdims=True) if metric == "cosine" else x[:2000]
    true = pairwise(metric, qq, xx).astype(np.float64)
    est, lo, hi = c.distance_bounds(qq, codes, eps0=3.0)
    err = est - true
    assert abs(err.mean()) < 0.1 * err.std() + 1e-6 * np.abs(true).mean()
    assert ((true >= lo) & (true <= hi)).mean() >= 0.99
    _, lo19, hi19 = c.distance_bounds(qq, codes)
    assert ((true >= lo19) & (true <= hi19)).mean() >= 0.90
    rel = np.abs(err).mean() / np.abs(true - true.mean()).mean()
    # the error halves with each bit (measured: Fashion-MNIST 0.050 / 0.025 / 0.007 of the spread of the true
    # distances, WordNet 0.42 / 0.20 / 0.058, whose distances spread far less)
    assert rel < ({1: 0.08, 2: 0.04, 4: 0.012} if metric == "l2" else {1: 0.5, 2: 0.25, 4: 0.08})[bits], rel
    np.testing.assert_allclose(c.distances(qq, codes), est, rtol=1e-5, atol=1e-5)
    # decoding projects each vector on its code's direction: closer with more bits
    limit = ({1: 0.2, 2: 0.07, 4: 0.008} if metric == "l2" else {1: 0.4, 2: 0.15, 4: 0.015})[bits]
    assert rel_mse(x[:500], c.decode(codes[:500])) < limit


@pytest.mark.parametrize("name", ["int8", "lvq8", "lvq4x8", "pq16", "opq8", "binary", "flat", "rabitq", "rabitq3"])
def test_state_round_trip(wordnet, name):
    x, q = wordnet
    c = make_codec(name, x.shape[1], "cosine").train(x[:1000])
    meta, arrays = c.state()
    c2 = Codec.from_state(meta, arrays)
    assert type(c2) is type(c) and c2.code_size == c.code_size
    np.testing.assert_array_equal(c2.encode(x[:50]), c.encode(x[:50]))
    np.testing.assert_array_equal(c2.distances(q, c.encode(x[:50])), c.distances(q, c.encode(x[:50])))
    if arrays:
        bad = {k: v[..., :-1] if v.ndim else v for k, v in arrays.items()}
        with pytest.raises(CorruptFileError):
            Codec.from_state(meta, bad)
    with pytest.raises(CorruptFileError):
        Codec.from_state({**meta, "codec": "nope"}, arrays)


def test_bad_input():
    c = Int8Codec(8, "l2")
    with pytest.raises(InvalidInputError, match="not trained"):
        c.encode(np.ones((2, 8)))
    c.train(np.random.default_rng(0).random((20, 8)))
    with pytest.raises(DimensionMismatchError):
        c.encode(np.ones((2, 7)))
    with pytest.raises(InvalidInputError, match="NaN"):
        c.encode(np.full((2, 8), np.nan))
    with pytest.raises(InvalidInputError, match="codes must be"):
        c.decode(np.zeros((2, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="at least 256"):
        PQCodec(8, "l2", m=2).train(np.ones((10, 8)))
    with pytest.raises(InvalidInputError, match="bits"):
        LVQCodec(8, "l2", bits=5)
    with pytest.raises(InvalidInputError, match="unknown codec"):
        make_codec("zip", 8, "l2")
    with pytest.raises(InvalidInputError, match="1 to 8 bits"):
        make_codec("rabitq9", 8, "l2")
    with pytest.raises(InvalidInputError, match="dim >= m"):
        PQCodec(4, "l2", m=8)
