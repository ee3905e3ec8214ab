"""SPANN-style disk index on a 20k slice of WordNet embeddings: recall vs brute force, closure duplication,
pruning, streaming build from a memory-mapped file, reopen, corrupt files and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from simdex import CorruptFileError, DimensionMismatchError, InvalidInputError
from simdex import datasets
from simdex.quant import SPANNIndex


def recall(ds, ids):
    return datasets.recall_at_k(ids, ds.ground_truth, 10, ds.base, ds.queries, ds.metric)


@pytest.fixture(scope="module")
def built(wordnet_20k, tmp_path_factory):
    ds = wordnet_20k
    folder = tmp_path_factory.mktemp("spann")
    # the input is a raw memory-mapped file read in chunks, as a data set larger than memory would be
    src = np.memmap(folder / "src.f32", np.float32, mode="w+", shape=ds.base.shape)
    src[:] = ds.base
    src.flush()
    src = np.memmap(folder / "src.f32", np.float32, mode="r", shape=ds.base.shape)
    ids = np.arange(ds.base.shape[0], dtype=np.int64) * 3 + 7
    index = SPANNIndex.build(folder / "index", src, "cosine", ids=ids, list_size=64, chunk_rows=3000,
                             sample=20_000, closure_eps=0.1, progress=False)
    return index, ids, folder / "index"


def test_recall_vs_brute_force_and_pruning(wordnet_20k, built):
    ds = wordnet_20k
    index, ids, _ = built
    d, got = index.search(ds.queries, 10, nprobe=32, eps=0.6)
    inv = np.full(ids.max() + 1, -1)
    inv[ids] = np.arange(ids.shape[0])
    slots = inv[got]
    r = recall(ds, slots)
    assert r >= 0.9, r
    # re-ranked distances are exact cosine distances, ascending, no id twice despite duplicated entries
    x = ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True)
    q = ds.queries / np.linalg.norm(ds.queries, axis=1, keepdims=True)
    np.testing.assert_allclose(d, 1 - np.einsum("qd,qkd->qk", q, x[slots]), atol=1e-5)
    assert (np.diff(d, axis=1) >= 0).all()
    assert all(len(set(row)) == 10 for row in got.tolist())
    # closure duplicated boundary vectors; every vector is in at least one list
    assert index.slots.shape[0] > 1.5 * index.ntotal
    assert np.array_equal(np.unique(index.slots), np.arange(index.ntotal))
    # a tight eps reads fewer lists and loses recall; a loose one reads all nprobe
    tight = index.lists_read(ds.queries, nprobe=32, eps=0.05)
    assert tight.mean() < 0.5 * 32 and (index.lists_read(ds.queries, nprobe=32, eps=10.0) == 32).all()
    assert recall(ds, inv[index.search(ds.queries, 10, nprobe=32, eps=0.05)[1]]) < r
    # the in-memory part is a small fraction of the float32 data
    assert index.nbytes < 0.25 * ds.base.nbytes


def test_concurrent_searches_answer_as_one_at_a_time(wordnet_20k, built):
    """Searches from several threads at once (a server's) each hold their own marks of the entries scored, so the
    duplicated boundary entries neither repeat an id nor hide one: every answer equals the one searched alone."""
    from concurrent.futures import ThreadPoolExecutor
    index, _, _ = built
    queries = wordnet_20k.queries[:80]
    alone = [index.search(q[None], 10, nprobe=32, threads=1)[1][0].tolist() for q in queries]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            together = list(pool.map(lambda q: index.search(q[None], 10, nprobe=32, threads=1)[1][0].tolist(),
                                     queries))
            assert together == alone
    batch = index.search(queries, 10, nprobe=32, threads=2)[1].tolist()
    assert all(len(set(row)) == 10 for row in batch)


def test_few_queries_pick_lists_through_the_top_level(wordnet_20k, built):
    """One query at a time picks its lists among the leaves of its nearest top clusters (not every centroid): the
    lists it reads are almost always the true nearest ones, and recall matches the batch path."""
    ds = wordnet_20k
    index, ids, _ = built
    assert index._tops is not None
    index.top_probe = 12  # of the 18 tops of this small index (the default, 24, is for indexes of ~100+ tops)
    q = ds.queries[:200] / np.linalg.norm(ds.queries[:200], axis=1, keepdims=True)
    true = np.argsort(((q[:, None, :] - index.centroids[None]) ** 2).sum(-1), axis=1)[:, :32]
    few = np.concatenate([index._nearest_lists(q[i:i + 1], 32)[0] for i in range(q.shape[0])])
    # the nearest 8 lists (the ones that hold most of the answers) are found; the far end of 32 less often
    near8 = np.mean([len(set(a[:8]) & set(b[:8])) / 8 for a, b in zip(few, true)])
    all32 = np.mean([len(set(a) & set(b)) / 32 for a, b in zip(few, true)])
    assert near8 >= 0.95 and all32 >= 0.9, (near8, all32)
    inv = np.full(ids.max() + 1, -1)
    inv[ids] = np.arange(ids.shape[0])
    one_by_one = np.concatenate([index.search(ds.queries[i:i + 1], 10, nprobe=32, eps=0.6)[1] for i in range(200)])
    batch = index.search(ds.queries[:200], 10, nprobe=32, eps=0.6)[1]
    sub = ds.subset(n_queries=200)
    r_few, r_batch = recall(sub, inv[one_by_one]), recall(sub, inv[batch])
    assert r_few >= r_batch - 0.01, (r_few, r_batch)
    # with the top level switched off the single-query path is the batch path exactly
    index.top_probe = 0
    try:
        plain = np.concatenate([index.search(ds.queries[i:i + 1], 10, nprobe=32, eps=0.6)[1] for i in range(50)])
    finally:
        index.top_probe = 24
    np.testing.assert_array_equal(plain, batch[:50])


def test_reopen_identical_and_verify(wordnet_20k, built):
    ds = wordnet_20k
    index, _, path = built
    d0, i0 = index.search(ds.queries, 10)
    again = SPANNIndex.open(path, verify=True)
    d1, i1 = again.search(ds.queries, 10, threads=1)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(d0, d1)


def _copy(path, tmp_path):
    import shutil
    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_corrupt_files(built, tmp_path):
    _, _, path = built
    dst = _copy(path, tmp_path)
    raw = bytearray((dst / "index.sdx").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (dst / "index.sdx").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        SPANNIndex.open(dst)
    dst = _copy(path, tmp_path / "b")
    with open(dst / "postings.u8", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CorruptFileError, match="postings.u8"):
        SPANNIndex.open(dst)
    dst = _copy(path, tmp_path / "c")
    with open(dst / "vectors.f32", "r+b") as f:
        f.seek(12345)
        b = f.read(1)
        f.seek(12345)
        f.write(bytes([b[0] ^ 0x40]))
    SPANNIndex.open(dst)  # a flipped bit in the big files is found by verify, which reads them
    with pytest.raises(CorruptFileError, match="vector block 0"):
        SPANNIndex.open(dst, verify=True)
    dst = _copy(path, tmp_path / "d")
    (dst / "vectors.f32").unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        SPANNIndex.open(dst)


def test_bad_input(wordnet_20k, built, tmp_path):
    ds = wordnet_20k
    index, _, path = built
    with pytest.raises(DimensionMismatchError):
        index.search(np.ones((2, 5)), 10)
    with pytest.raises(InvalidInputError, match="NaN"):
        index.search(np.full((1, ds.dim), np.nan), 10)
    with pytest.raises(InvalidInputError, match="nprobe"):
        index.search(ds.queries, 10, nprobe=0)
    with pytest.raises(InvalidInputError, match="already holds"):
        SPANNIndex.build(path, ds.base[:500], "cosine")
    bad = ds.base[:1000].copy()
    bad[700, 3] = np.inf
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        SPANNIndex.build(tmp_path / "x", bad, "cosine", chunk_rows=256, progress=False)
    with pytest.raises(InvalidInputError, match="int8 or LVQ"):
        SPANNIndex.build(tmp_path / "y", ds.base[:1000], "cosine", codec="pq8", progress=False)


@pytest.mark.parametrize("share", [0.5, 0.001])
def test_filter_equals_brute_force_over_the_allowed(wordnet_20k, built, share):
    """``filter`` (ids or a bool mask by id): only allowed ids come back; a wide filter scans the lists (with the
    disallowed entries skipped), a narrow one is searched exactly."""
    ds = wordnet_20k
    index, ids, _ = built
    rows = np.flatnonzero(np.random.default_rng(5).random(ids.shape[0]) < share)
    q = ds.queries[:50]
    base = ds.base[rows] / np.linalg.norm(ds.base[rows], axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    truth = ids[rows][np.argsort(-(qn @ base.T), axis=1)[:, :10]]
    mask = np.zeros(ids.max() + 1, bool)
    mask[ids[rows]] = True
    for flt in (ids[rows], mask):
        _, got = index.search(q, 10, filter=flt)
        found = got[got >= 0]
        assert np.isin(found, ids[rows]).all()
        hits = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
        assert hits >= (0.9 if share > 0.01 else 1.0)  # exact over few allowed: equal to brute force
