"""The search core's sorts (simdex.core.scorer): stable, only the prefix touched, equal to numpy's stable sort."""

from __future__ import annotations

import numpy as np
import pytest

from simdex.core.scorer import sort_pairs, sort_prefix


@pytest.mark.parametrize("sort", [sort_prefix, sort_pairs])
@pytest.mark.parametrize("r", [0, 1, 5, 16, 17, 64, 65, 100, 1000, 4097])
def test_sorts_equal_numpy_stable_sort(sort, r):
    rng = np.random.default_rng(r)
    # few distinct values, so that ties are common and stability is checked
    d = rng.integers(0, 50, r + 7).astype(np.float32)
    ids = rng.permutation(r + 7).astype(np.int32)
    order = np.argsort(d[:r], kind="stable")
    want_d, want_i, tail_d, tail_i = d[:r][order], ids[:r][order], d[r:].copy(), ids[r:].copy()
    sort(d, ids, r)
    np.testing.assert_array_equal(d[:r], want_d)
    np.testing.assert_array_equal(ids[:r], want_i)
    np.testing.assert_array_equal(d[r:], tail_d)
    np.testing.assert_array_equal(ids[r:], tail_i)
