"""WindowIndex: k-NN among the points whose attribute lies in [lo, hi], checked against brute force inside the
window on real data (exact where the path is exact, recall thresholds where it is approximate)."""

from __future__ import annotations

import numpy as np
import pytest

import simdex
from simdex import (CorruptFileError, DimensionMismatchError, FlatIndex, InvalidInputError, InvalidTypeError,
                    UnknownIdError, WindowIndex)
from tests.conftest import numpy_knn

N = 3000
LEAF = 256
PARAMS = {"M": 12, "ef_construction": 60}


def window_truth(base, attrs, queries, lo, hi, k, metric, ids=None):
    """Brute force inside each query's window: list of (distances, ids) per query, at most k each."""
    ids = np.arange(base.shape[0]) if ids is None else ids
    out = []
    for r in range(queries.shape[0]):
        inside = np.flatnonzero((attrs >= lo[r]) & (attrs <= hi[r]))
        if inside.size == 0:
            out.append((np.zeros(0), np.zeros(0, np.int64)))
            continue
        d, i = numpy_knn(base[inside], queries[r:r + 1], min(k, inside.size), metric)
        out.append((d[0], ids[inside[i[0]]]))
    return out


def window_recall(found, truth):
    scores = [len(set(f[f >= 0].tolist()) & set(t.tolist())) / t.size for f, (_, t) in zip(found, truth) if t.size]
    return float(np.mean(scores))


def random_windows(rng, nq, width):
    lo = rng.random(nq) * (1 - width)
    return lo, lo + width


@pytest.fixture(scope="module")
def wordnet(wordnet_small):
    rng = np.random.default_rng(0)
    base = wordnet_small.base[:N].copy()
    attrs = rng.random(N)
    return base, attrs, wordnet_small.queries[:60].copy()


def make_window(**kwargs):
    kwargs.setdefault("base_params", PARAMS)
    index = WindowIndex(384, "cosine", leaf_size=LEAF, **kwargs)
    # at 3000 points an exact scan beats any graph search, so the cost model would scan every window; make
    # scanning dear so that these small tests go through the tree's node searches and post-filters
    index.EXACT_UNIT = 8.0
    return index


@pytest.fixture(scope="module", params=["hnsw", "hnsw-quant"])
def hnsw_window(wordnet, request):
    """A tree of HNSW nodes, on float32 vectors or walked on LVQ-8 codes."""
    base, attrs, _ = wordnet
    index = make_window(base=request.param)
    index.add(base, attrs)
    return index


def test_tree_shape_and_plans_cover_the_window_exactly(hnsw_window):
    stats = hnsw_window.tree_stats()
    assert stats["built"] == N and stats["buffered"] == 0 and stats["levels"] >= 4
    assert stats["nodes_per_level"][0] == 1
    rng = np.random.default_rng(1)
    used_graph = used_partial = 0
    for _ in range(300):
        s, e = np.sort(rng.integers(0, N + 1, 2))
        if s == e:
            continue
        pieces = hnsw_window._plan(int(s), int(e), 64)
        covered = np.zeros(N, int)
        for p in pieces:
            a, b = p[-2], p[-1]
            covered[a:b] += 1
            if p[0] == "g":
                used_graph += 1
                bounds = hnsw_window._levels[p[1]][0]
                ns, ne = bounds[p[2]], bounds[p[2] + 1]
                assert ns <= a < b <= ne
                used_partial += (a, b) != (ns, ne)
        assert (covered[s:e] == 1).all() and covered[:s].sum() == 0 and covered[e:].sum() == 0
    assert used_graph > 0 and used_partial > 0, "the planner never used a node search, or never a post-filter"


@pytest.mark.parametrize("width", [0.002, 0.02, 0.2, 0.6, 1.0])
def test_recall_against_brute_force_in_window(hnsw_window, wordnet, width):
    base, attrs, queries = wordnet
    rng = np.random.default_rng(int(width * 1000))
    lo, hi = random_windows(rng, queries.shape[0], width)
    d, i = hnsw_window.search(queries, 10, lo, hi)
    assert d.shape == i.shape == (queries.shape[0], 10) and d.dtype == np.float32 and i.dtype == np.int64
    if width >= 0.2:  # these windows must go through node searches, not only exact scans
        s, e = np.searchsorted(np.sort(attrs), [lo[0], hi[0]], side="left")
        assert any(p[0] == "g" for p in hnsw_window._plan(int(s), int(e), hnsw_window.ef_search))
    truth = window_truth(base, attrs, queries, lo, hi, 10, "cosine")
    for r, (td, ti) in enumerate(truth):
        got = i[r][i[r] >= 0]
        assert ((attrs[got] >= lo[r]) & (attrs[got] <= hi[r])).all(), "a result lies outside its window"
        assert got.size == min(10, ti.size)
        assert np.all(np.diff(d[r][:got.size]) >= -1e-6)
    assert window_recall(i, truth) >= 0.95
    # the reported distances are the true distances of the returned ids
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    x = base / np.linalg.norm(base, axis=1, keepdims=True)
    for r in range(5):
        got = i[r][i[r] >= 0]
        np.testing.assert_allclose(d[r][:got.size], 1 - x[got] @ q[r], atol=1e-4)


def test_small_windows_are_exact(hnsw_window, wordnet):
    """Windows of up to a few hundred rows are scanned exactly: same ids and distances as brute force."""
    base, attrs, queries = wordnet
    lo, hi = random_windows(np.random.default_rng(5), queries.shape[0], 0.05)
    d, i = hnsw_window.search(queries, 10, lo, hi)
    truth = window_truth(base, attrs, queries, lo, hi, 10, "cosine")
    for r, (td, ti) in enumerate(truth):
        np.testing.assert_array_equal(i[r], ti)
        np.testing.assert_allclose(d[r], td, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_base_is_exact_everywhere(fashion_small, wordnet_small, metric):
    ds = fashion_small if metric == "l2" else wordnet_small
    base, queries = ds.base[:2000].copy(), ds.queries[:30].copy()
    if metric == "l2":
        base /= 255.0
        queries /= 255.0
    attrs = np.random.default_rng(3).integers(0, 500, base.shape[0]).astype(float)  # many ties
    index = WindowIndex(base.shape[1], metric, base="flat", leaf_size=100)
    index.add(base, attrs)
    for width in (0.0, 5.0, 60.0, 400.0, 1000.0):
        lo = np.random.default_rng(7).integers(0, 500, queries.shape[0]).astype(float)
        hi = lo + width
        d, i = index.search(queries, 7, lo, hi)
        for r, (td, ti) in enumerate(window_truth(base, attrs, queries, lo, hi, 7, metric)):
            assert set(i[r][:ti.size].tolist()) == set(ti.tolist()), (width, r)
            np.testing.assert_allclose(d[r][:ti.size], td, rtol=1e-4, atol=1e-4)
            assert (i[r][ti.size:] == -1).all() and np.isinf(d[r][ti.size:]).all()


def test_empty_and_short_windows(hnsw_window, wordnet):
    base, attrs, queries = wordnet
    order = np.argsort(attrs)
    # between two neighbouring attributes: nothing inside
    gap_lo = attrs[order[10]] + 1e-12
    gap_hi = attrs[order[11]] - 1e-12
    d, i = hnsw_window.search(queries[:4], 5, gap_lo, gap_hi)
    assert (i == -1).all() and np.isinf(d).all()
    d, i = hnsw_window.search(queries[:4], 5, 2.0, 3.0)  # beyond every attribute
    assert (i == -1).all()
    # exactly three points inside (inclusive bounds): they come first, the rest is (inf, -1)
    lo, hi = attrs[order[100]], attrs[order[102]]
    d, i = hnsw_window.search(queries[:4], 5, lo, hi)
    assert (np.sort(i[:, :3], axis=1) == np.sort(order[100:103])).all()
    assert (i[:, 3:] == -1).all() and np.isinf(d[:, 3:]).all() and np.isfinite(d[:, :3]).all()
    # per-query bounds: one empty, one open
    d, i = hnsw_window.search(queries[:2], 3, [5.0, -np.inf], [6.0, np.inf])
    assert (i[0] == -1).all() and (i[1] >= 0).all()


@pytest.mark.parametrize("kind", ["hnsw", "hnsw-quant"])
def test_remove_never_returned_and_rebuild(wordnet, kind):
    base, attrs, queries = wordnet
    n = 2000
    base, attrs = base[:n], attrs[:n]
    index = make_window(base=kind)
    ids = np.arange(n) * 3 + 1
    index.add(base, attrs, ids)
    lo, hi = random_windows(np.random.default_rng(9), queries.shape[0], 0.3)
    _, before = index.search(queries, 10, lo, hi)
    gone = np.unique(before[:, :4])
    assert index.remove(gone) == gone.size and len(index) == n - gone.size
    _, after = index.search(queries, 10, lo, hi)
    assert not np.isin(after, gone).any()
    keep = ~np.isin(ids, gone)
    truth = window_truth(base[keep], attrs[keep], queries, lo, hi, 10, "cosine", ids[keep])
    assert window_recall(after, truth) >= 0.93
    with pytest.raises(UnknownIdError):
        index.remove(gone[:1])
    # removing most points rebuilds the tree without them
    rng = np.random.default_rng(4)
    live = ids[keep]
    more = rng.choice(live, int(0.6 * n), replace=False)
    index.remove(more)
    assert index.tree_stats()["deleted"] == 0 and index.tree_stats()["built"] == len(index)
    keep = np.isin(ids, np.setdiff1d(live, more))
    _, i = index.search(queries, 10, lo, hi)
    assert np.isin(i[i >= 0], ids[keep]).all()
    truth = window_truth(base[keep], attrs[keep], queries, lo, hi, 10, "cosine", ids[keep])
    assert window_recall(i, truth) >= 0.95


@pytest.mark.parametrize("kind", ["hnsw", "hnsw-quant"])
def test_consolidated_nodes_are_searched_through_their_ids(wordnet, kind):
    """Batched node searches assume a node's slots equal its local ids; once a node consolidates its deletions
    they do not, and the node must be searched through its id map instead. Results must stay correct."""
    base, attrs, queries = wordnet
    n = 2000
    base, attrs = base[:n], attrs[:n]
    index = make_window(base=kind)
    index.add(base, attrs)
    sorted_rows = np.array(index._vectors)
    sorted_codes = None if index._codes is None else np.array(index._codes)
    gone = np.random.default_rng(5).choice(n, 300, replace=False)
    index.remove(gone)
    nodes = [node for _, level in index._levels for node in level if node is not None]
    for node in nodes:
        if node._n_deleted:
            node.consolidate()
    assert all(node._consolidated > 0 for node in nodes)
    # nodes shared the sorted rows until they consolidated: compacting must not have written into them
    np.testing.assert_array_equal(index._vectors, sorted_rows)
    if kind == "hnsw-quant":
        np.testing.assert_array_equal(index._codes, sorted_codes)
    lo, hi = random_windows(np.random.default_rng(6), queries.shape[0], 0.3)
    _, i = index.search(queries, 10, lo, hi)
    assert not np.isin(i, gone).any()
    keep = ~np.isin(np.arange(n), gone)
    truth = window_truth(base[keep], attrs[keep], queries, lo, hi, 10, "cosine", np.arange(n)[keep])
    assert window_recall(i, truth) >= 0.95


def test_nodes_share_the_sorted_rows(hnsw_window, tmp_path):
    """HNSW nodes read their vectors from the index's sorted storage instead of a copy per level: in memory
    and in the saved file, which must then still load into the same searches."""
    index = hnsw_window
    nodes = [(bounds, j, node) for bounds, level in index._levels for j, node in enumerate(level) if node is not None]
    assert len(nodes) > 1
    shared = ["vectors", "codes"] if index.base == "hnsw-quant" else ["vectors"]
    for bounds, j, node in nodes:
        assert index._shared_arrays(node, bounds, j) == shared
        assert np.shares_memory(node._vectors, index._vectors)
    copies = sum(node._vectors.nbytes for _, _, node in nodes)
    assert index.nbytes < sum(node.nbytes for _, _, node in nodes)
    path = tmp_path / "window.sdx"
    index.save(path)
    assert path.stat().st_size < index._vectors.nbytes + copies / 2
    loaded = WindowIndex.load(path)
    loaded.EXACT_UNIT = index.EXACT_UNIT  # the same plans (see make_window)
    for bounds, level in loaded._levels:
        for j, node in enumerate(level):
            if node is not None:
                assert loaded._shared_arrays(node, bounds, j) == shared
    q = np.random.default_rng(3).standard_normal((20, 384)).astype(np.float32)
    lo, hi = random_windows(np.random.default_rng(4), 20, 0.4)
    for a, b in zip(index.search(q, 10, lo, hi), loaded.search(q, 10, lo, hi)):
        np.testing.assert_array_equal(a, b)


def test_incremental_add_buffer_then_rebuild(wordnet):
    base, attrs, queries = wordnet
    index = make_window(rebuild_fraction=0.25)
    index.add(base[:1000], attrs[:1000])
    assert index.n_buffered == 0
    index.add(base[1000:1200], attrs[1000:1200])  # 200 <= max(leaf_size, 0.25 * 1000): buffered, scanned exactly
    assert index.n_buffered == 200
    lo, hi = random_windows(np.random.default_rng(2), queries.shape[0], 0.05)
    d, i = index.search(queries, 10, lo, hi)
    truth = window_truth(base[:1200], attrs[:1200], queries, lo, hi, 10, "cosine")
    for r, (td, ti) in enumerate(truth):
        np.testing.assert_array_equal(i[r], ti)  # small windows + exact buffer: exact results
    # a removed buffered point is never returned, even to a query that is the point itself
    victim = 1100
    probe = (base[victim:victim + 1], 10, attrs[victim] - 0.05, attrs[victim] + 0.05)
    assert index.search(*probe)[1][0, 0] == victim
    index.remove([victim])
    assert victim not in index.search(*probe)[1]
    index.add(base[1200:1500], attrs[1200:1500])  # past the threshold: rebuilt, the removed point dropped
    assert index.n_buffered == 0 and len(index) == 1499 and index.tree_stats()["deleted"] == 0
    lo, hi = random_windows(np.random.default_rng(3), queries.shape[0], 0.4)
    _, i = index.search(queries, 10, lo, hi)
    keep = np.arange(1500) != victim
    truth = window_truth(base[:1500][keep], attrs[:1500][keep], queries, lo, hi, 10, "cosine",
                         np.arange(1500)[keep])
    assert window_recall(i, truth) >= 0.95
    auto = index.add(base[:2], [0.5, 0.5])
    np.testing.assert_array_equal(auto, [1500, 1501])


def test_filter_on_top_of_window(hnsw_window, wordnet):
    base, attrs, queries = wordnet
    allowed = np.flatnonzero(np.random.default_rng(6).random(N) < 0.3)
    lo, hi = random_windows(np.random.default_rng(8), queries.shape[0], 0.5)
    d, i = hnsw_window.search(queries, 10, lo, hi, filter=allowed)
    truth = window_truth(base[allowed], attrs[allowed], queries, lo, hi, 10, "cosine", allowed)
    for r, (td, ti) in enumerate(truth):
        np.testing.assert_array_equal(i[r], ti)


def test_custom_factory_base(wordnet, tmp_path):
    base, attrs, queries = wordnet
    made = []

    def factory(dim, metric):
        made.append(1)
        return FlatIndex(dim, metric)

    index = WindowIndex(base.shape[1], "cosine", base=factory, leaf_size=400)
    index.add(base[:2000], attrs[:2000])
    assert len(made) == sum(index.tree_stats()["nodes_per_level"]) > 3
    lo, hi = random_windows(np.random.default_rng(1), queries.shape[0], 0.5)
    _, i = index.search(queries, 10, lo, hi)
    truth = window_truth(base[:2000], attrs[:2000], queries, lo, hi, 10, "cosine")
    assert window_recall(i, truth) == 1.0
    # the factory is not saved: a loaded index keeps its nodes, buffers new points, and rebuilds only when given it
    path = tmp_path / "custom.sdx"
    index.save(path)
    loaded = WindowIndex.load(path)
    assert loaded.base == "custom"
    loaded.add(base[2000:2500], attrs[2000:2500])
    assert loaded.n_buffered == 500
    _, i = loaded.search(queries, 10, lo, hi)
    truth = window_truth(base[:2500], attrs[:2500], queries, lo, hi, 10, "cosine")
    assert window_recall(i, truth) == 1.0
    with pytest.raises(InvalidInputError, match="factory"):
        loaded.rebuild()
    again = WindowIndex.load(path, base=factory)
    again.add(base[2000:2500], attrs[2000:2500])
    assert again.n_buffered == 0


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(wordnet, tmp_path, mmap):
    base, attrs, queries = wordnet
    n = 1500
    index = WindowIndex(base.shape[1], "cosine", leaf_size=LEAF, base_params={"M": 8, "ef_construction": 40})
    index.add(base[:n - 100], attrs[:n - 100])
    index.add(base[n - 100:n - 50], attrs[n - 100:n - 50])  # buffered
    index.remove([5, 17, 400, n - 60])
    path = tmp_path / "window.sdx"
    index.save(path)
    loaded = WindowIndex.load(path, mmap=mmap)
    generic = simdex.load(path)
    assert type(generic) is WindowIndex
    lo, hi = random_windows(np.random.default_rng(11), queries.shape[0], 0.3)
    d0, i0 = index.search(queries, 10, lo, hi)
    for other in (loaded, generic):
        d1, i1 = other.search(queries, 10, lo, hi)
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_array_equal(d0, d1)
        assert len(other) == len(index) and other.n_buffered == 50
        np.testing.assert_array_equal(other.get_attributes([0, 1]), attrs[:2])
    size_before = path.stat().st_size
    loaded.add(base[n - 50:n], attrs[n - 50:n])
    loaded.remove([0])
    assert len(loaded) == len(index) + 49
    assert path.stat().st_size == size_before
    np.testing.assert_array_equal(WindowIndex.load(path).search(queries, 10, lo, hi)[1], i0)


def test_load_corrupt_and_wrong_kind(wordnet, tmp_path):
    base, attrs, _ = wordnet
    index = WindowIndex(base.shape[1], "cosine", leaf_size=LEAF, base_params={"M": 8, "ef_construction": 40})
    index.add(base[:600], attrs[:600])
    path = tmp_path / "window.sdx"
    index.save(path)
    with pytest.raises(CorruptFileError, match="holds a"):
        FlatIndex.load(path)
    flat_path = tmp_path / "flat.sdx"
    FlatIndex(base.shape[1], "cosine").save(flat_path)
    with pytest.raises(CorruptFileError, match="holds a"):
        WindowIndex.load(flat_path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="checksum"):
        WindowIndex.load(path)
    path.write_bytes(bytes(raw[:len(raw) // 2]))
    with pytest.raises(CorruptFileError, match="truncated"):
        WindowIndex.load(path)


def test_load_rejects_unsorted_rows(wordnet, tmp_path):
    """A file whose rows are not sorted by attribute (hand-made or damaged before its checksums were written)
    would return wrong windows; loading refuses it."""
    from simdex import fileformat
    base, attrs, _ = wordnet
    index = WindowIndex(base.shape[1], "cosine", base="flat", leaf_size=100)
    index.add(base[:300], attrs[:300])
    kind, meta, arrays = index.snapshot()
    arrays["attrs"] = arrays["attrs"][::-1].copy()
    fileformat.save_arrays(tmp_path / "bad.sdx", kind, meta, arrays)
    with pytest.raises(CorruptFileError, match="sorted"):
        WindowIndex.load(tmp_path / "bad.sdx")


def snapshot(index, queries):
    d, i = index.search(queries, 5, 0.2, 0.7)
    return len(index), index.ids.copy(), index.n_buffered, d.copy(), i.copy()


def test_bad_input_rejected_and_index_unchanged(hnsw_window, wordnet):
    base, attrs, queries = wordnet
    index = hnsw_window
    snap = snapshot(index, queries)
    x = base[:3]
    nan_x = x.copy()
    nan_x[1, 4] = np.nan
    cases = [
        (lambda: index.add(x[:, :-1], [0.1, 0.2, 0.3]), DimensionMismatchError, "dimension"),
        (lambda: index.add(nan_x, [0.1, 0.2, 0.3]), InvalidInputError, "NaN"),
        (lambda: index.add(x, [0.1, np.nan, 0.3]), InvalidInputError, "NaN"),
        (lambda: index.add(x, [0.1, np.inf, 0.3]), InvalidInputError, "infinite"),
        (lambda: index.add(x, [0.1, 0.2]), InvalidInputError, "one value per vector"),
        (lambda: index.add(x, ["a", "b", "c"]), InvalidTypeError, "numeric"),
        (lambda: index.add(x), InvalidInputError, "attributes"),
        (lambda: index.add(x, [0.1, 0.2, 0.3], [1, 2, 3]), InvalidInputError, "already in the index"),
        (lambda: index.search(queries[:, :-1], 3, 0, 1), DimensionMismatchError, "dimension"),
        (lambda: index.search(np.full((1, base.shape[1]), np.nan), 3, 0, 1), InvalidInputError, "NaN"),
        (lambda: index.search(queries, 3, 0.8, 0.2), InvalidInputError, "lo > hi"),
        (lambda: index.search(queries[:2], 3, [0.1, 0.9], [0.5, 0.5]), InvalidInputError, "lo > hi"),
        (lambda: index.search(queries, 3, np.nan, 1.0), InvalidInputError, "lo contains NaN"),
        (lambda: index.search(queries, 3, 0.0, np.nan), InvalidInputError, "hi contains NaN"),
        (lambda: index.search(queries, 3, [0.0, 0.1], 1.0), InvalidInputError, "one value per query"),
        (lambda: index.search(queries, 3, "a", 1.0), InvalidTypeError, "numeric"),
        (lambda: index.search(queries, 0, 0, 1), InvalidInputError, "k must be >= 1"),
        (lambda: index.search(queries, N + 1, 0, 1), InvalidInputError, "larger than"),
        (lambda: index.search(queries, 3, 0, 1, ef=0), InvalidInputError, "ef"),
        (lambda: index.remove([1, 10 ** 9]), UnknownIdError, "1000000000"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
        now = snapshot(index, queries)
        assert now[0] == snap[0] and now[2] == snap[2]
        np.testing.assert_array_equal(now[1], snap[1])
        np.testing.assert_array_equal(now[4], snap[4])


def test_bad_construction_and_empty_index():
    with pytest.raises(InvalidInputError, match="base"):
        WindowIndex(8, "l2", base="ivf")
    with pytest.raises(InvalidInputError, match="branching"):
        WindowIndex(8, "l2", branching=1)
    with pytest.raises(InvalidInputError, match="rebuild_fraction"):
        WindowIndex(8, "l2", rebuild_fraction=0)
    with pytest.raises(InvalidInputError, match="flat"):
        WindowIndex(8, "l2", base="flat", base_params={"M": 4})
    with pytest.raises(TypeError):
        WindowIndex(8, "l2", base_params={"bogus": 1})
    index = WindowIndex(4, "cosine")
    with pytest.raises(InvalidInputError, match="empty"):
        index.search(np.ones((1, 4)), 1, 0, 1)
    with pytest.raises(InvalidInputError, match="zero vector"):
        index.add(np.zeros((2, 4)), [1.0, 2.0])
    assert len(index) == 0
    index.add(np.eye(4), [1.0, 2.0, 3.0, 4.0])  # below leaf_size: no tree, everything scanned exactly
    d, i = index.search(np.eye(4)[[2]], 2, 2.5, 10)
    assert i[0, 0] == 2 and i[0, 1] == 3


# ---- collections: numeric range filters on a window field --------------------------------------------------------
def _collection_truth(vectors, ts, queries, lo, hi, k, lo_strict=False, hi_strict=False):
    ok = np.array([t is not None and (t > lo if lo_strict else t >= lo) and (t < hi if hi_strict else t <= hi)
                   for t in ts])
    sel = np.flatnonzero(ok)
    if sel.size == 0:
        return [[] for _ in queries]
    _, pos = numpy_knn(vectors[sel], queries, min(k, sel.size), "cosine")
    return [[f"r{sel[p]}" for p in row] for row in pos]


def test_collection_window_field_answers_range_filters(tmp_path, wordnet):
    base, attrs, queries = wordnet
    n = 1500
    vectors = base[:n]
    ts = [round(float(a) * 1000, 3) for a in attrs[:n]]
    metas = [{"ts": t, "tag": i % 3} for i, t in enumerate(ts)]
    for i in range(0, n, 50):  # some records have no number in the field: never in a range
        metas[i] = {"ts": "not a number"} if i % 100 else {"other": 1}
        ts[i] = None
    ids = [f"r{i}" for i in range(n)]
    q = queries[:20]
    path = tmp_path / "db"
    with simdex.connect(path, background=False, sync="off") as db:
        col = db.create_collection("events", dim=384, window_field="ts", M=12, ef_construction=60)
        plain = db.create_collection("plain", dim=384, M=12, ef_construction=60)
        for c in (col, plain):
            c.upsert(ids, vectors, metas)
        with pytest.raises(simdex.CollectionExistsError):
            db.create_collection("events", dim=384, window_field="other", exist_ok=True, M=12, ef_construction=60)
        with pytest.raises(InvalidInputError, match="window_field"):
            db.create_collection("bad", dim=384, window_field="a b")

        def check(where, lo, hi, lo_strict=False, hi_strict=False, exact=True):
            truth = _collection_truth(vectors, ts, q, lo, hi, 10, lo_strict, hi_strict)
            got = col.search_batch(q, k=10, where=where)
            reference = plain.search_batch(q, k=10, where=where)  # the SQL allow-list path
            found = sum(len({h["id"] for h in g} & set(t)) for g, t in zip(got, truth))
            assert [len(g) for g in got] == [len(t) for t in truth] == [len(r) for r in reference]
            if exact:
                assert _hit_ids(got) == truth
            else:
                assert found >= 0.95 * sum(len(t) for t in truth)
            return got

        assert col.stats()["window"]["buffered"] == n - n // 50  # all in the exactly scanned buffer for now
        sql_filters = []
        allowed = col._allowed
        col._allowed = lambda where: sql_filters.append(where) or allowed(where)
        check({"ts": {"$gte": 200.0, "$lte": 450.0}}, 200.0, 450.0)
        inner = sorted(t for t in ts if t is not None)[100:400]
        check({"ts": {"$gt": inner[0], "$lt": inner[-1]}}, inner[0], inner[-1], True, True)
        check({"$and": [{"ts": {"$gte": 100}}, {"ts": {"$lt": 900}}]}, 100, 900, False, True)
        check({"ts": ts[3]}, ts[3], ts[3])
        assert col.search_batch(q, k=5, where={"ts": {"$gte": 5000}}) == [[] for _ in q]
        assert col.search_batch(q, k=5, where={"ts": {"$gte": 600, "$lte": 500}}) == [[] for _ in q]
        assert sql_filters == [], "a range on the window field went through the SQL allow-list"
        # a filter on other fields (or mixing fields) goes through SQL and stays correct
        mixed = col.search_batch(q, k=5, where={"ts": {"$gte": 100}, "tag": 1})
        assert all(h["metadata"]["tag"] == 1 and h["metadata"]["ts"] >= 100 for row in mixed for h in row)
        assert len(sql_filters) == 1

        db.optimize()  # builds the window tree in place of the buffer
        stats = col.stats()["window"]
        assert stats["buffered"] == 0 and stats["levels"] >= 1
        check({"ts": {"$gte": 0.0, "$lte": 700.0}}, 0.0, 700.0, exact=False)

        # upserts move a record's attribute; deletes remove it; both are seen at once
        col.upsert(["r5"], vectors[[5]], [{"ts": 2000.0}])
        hits = col.search(vectors[5], k=3, where={"ts": {"$gte": 1500}})
        assert [h["id"] for h in hits] == ["r5"]
        assert "r5" not in _hit_ids(col.search_batch(vectors[[5]], k=10, where={"ts": {"$lte": 1000}}))[0]
        col.delete(["r5"])
        assert col.search(vectors[5], k=3, where={"ts": {"$gte": 1500}}) == []
        ts[5] = None
        truth_after = check({"ts": {"$gte": 300.0, "$lte": 310.0}}, 300.0, 310.0)
    # reopened: the window index is rebuilt from the metadata store and answers the same
    with simdex.connect(path, background=False, sync="off") as db:
        col = db.get_collection("events")
        assert col.window_field == "ts"
        again = col.search_batch(q, k=10, where={"ts": {"$gte": 300.0, "$lte": 310.0}})
        assert _hit_ids(again) == _hit_ids(truth_after)
        assert col.search(vectors[5], k=3, where={"ts": {"$gte": 1500}}) == []


def _hit_ids(hits):
    return [[h["id"] for h in row] for row in hits]


def test_window_bounds_of_where_filters():
    from simdex.store.filters import window_bounds
    assert window_bounds({"ts": {"$gte": 1, "$lte": 2}}, "ts") == (1.0, 2.0)
    assert window_bounds({"ts": 3}, "ts") == (3.0, 3.0)
    lo, hi = window_bounds({"ts": {"$gt": 1.0, "$lt": 2.0}}, "ts")
    assert 1.0 < lo < 1.0 + 1e-15 and 2.0 - 1e-15 < hi < 2.0
    assert window_bounds({"$and": [{"ts": {"$gte": 1}}, {"ts": {"$lte": 5}}, {"ts": {"$lt": 4}}]}, "ts")[0] == 1.0
    for other in ({"ts": {"$ne": 1}}, {"ts": {"$in": [1]}}, {"ts": "a"}, {"ts": True}, {"ts": {"$gte": None}},
                  {"other": {"$gte": 1}}, {"ts": {"$gte": 1}, "x": 2}, {"$or": [{"ts": 1}]}, {"ts": {"$date": "x"}},
                  {"ts": {"$gte": 2 ** 60 + 1}}, {"$and": [{"ts": 1}, {"x": 1}]}, None, []):
        assert window_bounds(other, "ts") is None, other


def test_collection_window_rebuild_keeps_writes_made_during_the_build(tmp_path, wordnet):
    base, attrs, queries = wordnet
    n = 1200
    ids = [f"r{i}" for i in range(n)]
    with simdex.connect(tmp_path / "db", background=False, sync="off") as db:
        col = db.create_collection("events", dim=384, window_field="t", M=8, ef_construction=40)
        col.upsert(ids, base[:n], [{"t": float(a)} for a in attrs[:n]])
        side = col._window_side
        build = side.build
        calls = []

        def build_with_writes(snapshot, threads):
            # runs outside the collection's locks, between the cut and the swap: these writes reach the old index
            # and must be replayed into the new one
            if not calls:
                calls.append(1)
                col.upsert(["late"], base[[n]], [{"t": 0.5}])
                col.delete(["r0", "r1"])
                col.upsert(["r2"], base[[2]], [{"t": 7.0}])
            return build(snapshot, threads)

        side.build = build_with_writes
        assert col.needs_window_rebuild()
        assert col.rebuild_window()
        assert calls and col.stats()["window"]["buffered"] == 2 and col.stats()["window"]["built"] == n  # late, new r2
        assert col.search(base[n], k=1, where={"t": {"$gte": 0.4, "$lte": 0.6}})[0]["id"] == "late"
        for gone in (0, 1):
            hits = col.search(base[gone], k=5, where={"t": {"$gte": 0.0, "$lte": 1.0}})
            assert f"r{gone}" not in [h["id"] for h in hits]
        assert [h["id"] for h in col.search(base[2], k=1, where={"t": {"$gt": 6}})] == ["r2"]
        assert "r2" not in [h["id"] for h in col.search(base[2], k=5, where={"t": {"$lte": 1.0}})]
        assert len(col._window_side.index) == n - 2 + 1
