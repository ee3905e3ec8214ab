"""FastScan look-ups (simdex.quant._fastscan_kernels): the byte-shuffle path and the plain loop give the inner
products of popcounts exactly, on codes of real edge vectors and on random ones, for every code width."""

from __future__ import annotations

import numpy as np
import pytest

from simdex import datasets
from simdex._numba import kernel
from simdex.quant import RaBitQGraphIndex
from simdex.quant import _fastscan_kernels as F
from simdex.quant._rabitq_kernels import code_dot, quantize_query


@kernel
def _sums(runs, table, bits, out, plain):
    """The look-up sums of every group of node 0's runs (``runs`` (1, groups, bits, run bytes))."""
    row = runs[0].reshape(-1)
    for g in range(runs.shape[1]):
        for a in range(bits):
            if plain:
                F.lookup_add_plain(row, (g * bits + a) * runs.shape[3], table, out, F.GROUP_VECTORS * g, a)
            else:
                F.lookup_add(row, (g * bits + a) * runs.shape[3], table, out, F.GROUP_VECTORS * g, a)


def _popcount_sums(words, query, bits):
    planes = np.zeros((4, query.shape[0] // 64), np.uint64)
    quantize_query(query, planes)
    return np.array([code_dot(planes, words[0], j, bits, query.shape[0] // 64) for j in range(words.shape[1])])


@pytest.mark.parametrize("dim,bits,vectors", [(384, 1, 32), (64, 4, 32), (128, 2, 20), (832, 1, 7),
                                              (9024, 1, 16)])
def test_lookups_equal_popcounts_on_random_codes(dim, bits, vectors):
    """Random codes of ``vectors`` vectors (a last group part empty), one random query; 9,024 dimensions take
    more steps than one 16-bit accumulator pass holds."""
    rng = np.random.default_rng(dim + bits)
    words = rng.integers(0, 2 ** 63, (1, vectors, bits * dim // 64), dtype=np.uint64)
    runs = F.fastscan_layout(words, bits)
    np.testing.assert_array_equal(F.packed_layout(runs, vectors), words)
    query = rng.standard_normal(dim).astype(np.float32)
    table = np.zeros(4 * dim, np.uint8)
    planes = np.zeros((4, dim // 64), np.uint64)
    assert F.query_table(query, table) == quantize_query(query, planes)  # (low, delta, sum of levels)
    expected = _popcount_sums(words, query, bits)
    for plain in (False, True):
        out = np.zeros(runs.shape[1] * F.GROUP_VECTORS, np.uint32)
        _sums(runs, table, bits, out, plain)
        np.testing.assert_array_equal(out[:vectors], expected)
        assert not out[vectors:].any()  # the empty slots of the last group add nothing


def test_lookups_equal_popcounts_on_a_graphs_edge_codes():
    """The edge codes of a RaBitQGraphIndex on 2,000 WordNet vectors, 30 real queries rotated as a search does."""
    ds = datasets.load("wordnet-minilm-384").subset(2_000, 30)
    index = RaBitQGraphIndex(ds.dim, ds.metric, M=8, ef_construction=64)
    index.add(ds.base)
    index.search(ds.queries[:1], 1)  # codes made
    words = F.packed_layout(index._edge_runs[:index._n], index.M0)
    queries = index.rotate(ds.queries)
    for v in range(0, index._n, 97):
        runs = index._edge_runs[v:v + 1]
        for query in queries:
            table = np.zeros(4 * index.padded, np.uint8)
            F.query_table(query, table)
            expected = _popcount_sums(words[v:v + 1], query, index.bits)
            out = np.zeros(runs.shape[1] * F.GROUP_VECTORS, np.uint32)
            _sums(runs, table, index.bits, out, False)
            np.testing.assert_array_equal(out[:index.M0], expected)
