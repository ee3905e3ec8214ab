"""MultiVectorIndex and the MUVERA encoder, on real vectors: WordNet gloss embeddings (wordnet-minilm-384) grouped
into sets play the documents' and queries' token sets; numpy brute-force Chamfer is the reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simdex import datasets
from simdex.errors import CorruptFileError, DimensionMismatchError, DuplicateIdError, InvalidInputError, UnknownIdError
from simdex.index import load
from simdex.multivector import MultiVectorIndex, MuveraEncoder, idf_weights
from simdex.multivector.index import prune_sets, reduce_sets_kmeans

N_DOCS = 800
N_QUERIES = 40


def _sets(rows: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    off = np.concatenate([[0], np.cumsum(sizes)])
    return [np.ascontiguousarray(rows[off[i]:off[i + 1]]) for i in range(sizes.shape[0])]


@pytest.fixture(scope="module")
def data():
    """800 documents of 2-12 consecutive WordNet gloss vectors (neighbouring glosses are often related, like
    the tokens of one text), 40 queries of 2-6 vectors from the query split."""
    vec = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")
    rng = np.random.default_rng(7)
    d_sizes = rng.integers(2, 13, N_DOCS)
    q_sizes = rng.integers(2, 7, N_QUERIES)
    docs = _sets(np.asarray(vec[:d_sizes.sum()], np.float32), d_sizes)
    queries = _sets(np.asarray(vec[107_659:107_659 + q_sizes.sum()], np.float32), q_sizes)
    return docs, queries


def chamfer_numpy(queries: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
    """(nq, nd) float64 brute force: sum over query vectors of the max inner product over the document."""
    out = np.empty((len(queries), len(docs)))
    for j, d in enumerate(docs):
        dd = d.astype(np.float64)
        for i, q in enumerate(queries):
            out[i, j] = (q.astype(np.float64) @ dd.T).max(1).sum()
    return out


@pytest.fixture(scope="module")
def truth(data):
    docs, queries = data
    return chamfer_numpy(queries, docs)


@pytest.fixture(scope="module")
def built(data):
    docs, _ = data
    # these "documents" are groups of sentence vectors: few buckets and wide projections suit them (the bench
    # tunes the encoder on real token vectors)
    index = MultiVectorIndex(384, token_index=True, encoder={"k_sim": 2, "d_proj": 64, "r_reps": 8})
    index.add(docs)
    return index


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / e.shape[0] for f, e in zip(found, exact)]))


# ---- exact Chamfer -------------------------------------------------------------------------------------------------
def test_exact_kernel_equals_numpy_brute_force(data, truth):
    docs, queries = data
    index = MultiVectorIndex(384, storage="float32", fde_index="none")
    index.add(docs)
    np.testing.assert_allclose(index.score(queries, np.arange(N_DOCS)), truth, rtol=1e-5, atol=1e-4)
    scores, ids = index.search(queries, 10, method="exact")
    ref = np.argsort(-truth, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(scores, np.take_along_axis(truth, ref, 1), rtol=1e-5, atol=1e-4)
    assert (ids == ref).mean() >= 0.99  # float32 vs float64 can swap exact near-ties, nothing else
    assert (np.diff(scores, axis=1) <= 0).all()


def test_float16_storage_scores_the_rounded_vectors(data):
    docs, queries = data
    index = MultiVectorIndex(384, fde_index="none")  # float16 default
    index.add(docs[:200])
    rounded = [d.astype(np.float16).astype(np.float32) for d in docs[:200]]
    np.testing.assert_allclose(index.score(queries, np.arange(200)), chamfer_numpy(queries, rounded),
                               rtol=1e-5, atol=1e-4)
    assert index.nbytes < sum(d.nbytes for d in docs[:200]) * 0.55


@pytest.mark.parametrize("storage,tol,min_recall", [("int8", 0.02, 0.9), ("lvq8", 0.02, 0.9), ("lvq4", 0.06, 0.7)])
def test_code_storage_approximates_chamfer(data, truth, storage, tol, min_recall):
    docs, queries = data
    index = MultiVectorIndex(384, storage=storage, fde_index="none")
    index.add(docs)
    got = index.score(queries, np.arange(N_DOCS))
    assert np.abs(got - truth).max() < tol * np.abs(truth).max()
    _, ids = index.search(queries, 10, method="exact")
    assert _recall(ids, np.argsort(-truth, axis=1)[:, :10]) >= min_recall


# ---- candidate generation + re-ranking reach recall against exact Chamfer -----------------------------------------
def test_muvera_and_token_candidates_reach_recall(built, data, truth):
    _, queries = data
    exact = np.argsort(-truth, axis=1, kind="stable")[:, :10]
    _, ids, n_cand = built.search(queries, 10, method="muvera", candidates=200, return_candidates=True)
    assert (n_cand == 200).all()
    muvera = _recall(ids, exact)
    assert muvera >= 0.9, muvera
    _, ids, n_cand = built.search(queries, 10, method="tokens", token_k=32, return_candidates=True)
    tokens = _recall(ids, exact)
    assert tokens >= 0.9, tokens
    assert (n_cand < N_DOCS).all()
    # more candidates never hurt: re-ranking is exact
    _, few = built.search(queries, 10, method="muvera", candidates=20)
    assert _recall(few, exact) <= muvera


def test_rerank_scores_are_exact(built, data, truth):
    _, queries = data
    scores, ids = built.search(queries, 5, method="muvera", candidates=50)
    ref = np.take_along_axis(truth, ids, 1)
    np.testing.assert_allclose(scores, ref, rtol=1e-3, atol=1e-3)  # float16 rows


# ---- FDE properties ------------------------------------------------------------------------------------------------
def test_fde_one_bucket_no_projection_is_sum_dot_mean(data):
    docs, queries = data
    enc = MuveraEncoder(384, k_sim=0, d_proj=384, r_reps=1)
    q_rows, q_off = np.concatenate(queries), np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    d_rows, d_off = np.concatenate(docs[:50]), np.concatenate([[0], np.cumsum([len(d) for d in docs[:50]])])
    fq, fd = enc.encode_queries(q_rows, q_off), enc.encode_documents(d_rows, d_off)
    assert fq.shape == (len(queries), 384) and fd.shape == (50, 384)
    want = np.array([[q.astype(np.float64).sum(0) @ d.astype(np.float64).mean(0) for d in docs[:50]]
                     for q in queries])
    np.testing.assert_allclose(fq @ fd.T, want, rtol=1e-5, atol=1e-5)


def test_fde_of_single_vector_document_is_exact_chamfer(data):
    """With every empty bucket filled and no projection, a one-vector document sits in every bucket, so the FDE
    inner product is sum_q <q, d> = Chamfer(Q, {d}) exactly, whatever the partition."""
    docs, queries = data
    enc = MuveraEncoder(384, k_sim=3, d_proj=384, r_reps=2)
    singles = [d[:1] for d in docs[:30]]
    q_rows, q_off = np.concatenate(queries), np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    fq = enc.encode_queries(q_rows, q_off)
    fd = enc.encode_documents(np.concatenate(singles), np.arange(31, dtype=np.int64))
    assert fq.shape[1] == 2 * 8 * 384
    np.testing.assert_allclose(fq @ fd.T / 2, chamfer_numpy(queries, singles), rtol=1e-5, atol=1e-4)
    # without filling, only the buckets the vector occupies count: the product is smaller
    empty = MuveraEncoder(384, k_sim=3, d_proj=384, r_reps=2, fill_empty=False)
    fd0 = empty.encode_documents(np.concatenate(singles), np.arange(31, dtype=np.int64))
    assert np.count_nonzero(fd0.reshape(30, 2, 8, 384).any(-1), axis=2).max() == 1


def test_fde_count_sketch_is_linear_and_seeded():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((40, 16)).astype(np.float32)
    off = np.array([0, 10, 25, 40])
    a = MuveraEncoder(16, k_sim=2, d_proj=8, r_reps=3, d_final=32, seed=5)
    b = MuveraEncoder(16, k_sim=2, d_proj=8, r_reps=3, d_final=32, seed=5)
    raw = MuveraEncoder(16, k_sim=2, d_proj=8, r_reps=3, seed=5)
    fa = a.encode_documents(rows, off)
    np.testing.assert_array_equal(fa, b.encode_documents(rows, off))
    full = raw.encode_documents(rows, off)
    sketch = np.zeros((3, 32), np.float64)
    np.add.at(sketch.T, a.sketch_target, (full * a.sketch_sign).T)
    np.testing.assert_allclose(fa, sketch, rtol=1e-5, atol=1e-5)


# ---- index-time reduction ------------------------------------------------------------------------------------------
def test_pruning_keeps_the_heaviest_vectors_and_kmeans_caps_the_size(data):
    docs, _ = data
    rows = np.concatenate(docs[:20])
    off = np.concatenate([[0], np.cumsum([len(d) for d in docs[:20]])]).astype(np.int64)
    w = np.random.default_rng(1).random(rows.shape[0])
    kept, k_off = prune_sets(rows, off, w, 0.5)
    for i in range(20):
        a, b = off[i], off[i + 1]
        n_keep = max(1, int(np.ceil((b - a) * 0.5)))
        assert k_off[i + 1] - k_off[i] == n_keep
        top = np.sort(np.argsort(-w[a:b], kind="stable")[:n_keep])
        np.testing.assert_array_equal(kept[k_off[i]:k_off[i + 1]], rows[a:b][top])
    red, r_off = reduce_sets_kmeans(rows, off, 4)
    sizes = np.diff(r_off)
    assert (sizes == np.minimum(np.diff(off), 4)).all()
    small = np.flatnonzero(np.diff(off) <= 4)
    for i in small:
        np.testing.assert_array_equal(red[r_off[i]:r_off[i + 1]], rows[off[i]:off[i + 1]])
    index = MultiVectorIndex(384, keep_fraction=0.5, max_vectors=4, fde_index="none")
    index.add(docs[:20], weights=w)
    assert np.diff(index._offsets).max() <= 4


def test_idf_weights():
    ids = np.array([5, 6, 5, 6, 7])  # doc 0: {5, 6, 5}; doc 1: {6, 7}
    w = idf_weights(ids, np.array([0, 3, 5]))
    np.testing.assert_allclose(w, np.log([2, 1, 2, 1, 2]), rtol=1e-6)


# ---- remove, persistence -------------------------------------------------------------------------------------------
def test_remove_hides_documents_in_every_method(data, truth):
    docs, queries = data
    index = MultiVectorIndex(384, token_index=True)
    index.add(docs[:300], ids=np.arange(1000, 1300))
    _, before = index.search(queries, 5, method="exact")
    gone = np.unique(before[:, :2])
    assert index.remove(gone) == gone.shape[0]
    assert index.ntotal == 300 - gone.shape[0]
    for method in ("exact", "muvera", "tokens"):
        _, ids = index.search(queries, 5, method=method)
        assert not np.isin(ids, gone).any(), method
    with pytest.raises(UnknownIdError):
        index.remove([int(gone[0])])
    with pytest.raises(UnknownIdError):
        index.remove([1299, 5])  # one unknown id: nothing is removed
    assert 1299 in index


def test_save_load_round_trip(tmp_path, data):
    docs, queries = data
    for storage in ("float16", "int8"):
        index = MultiVectorIndex(384, storage=storage, token_index=True,
                                 encoder={"k_sim": 3, "d_proj": 8, "r_reps": 4, "d_final": 128})
        index.add(docs[:200])
        index.remove([3, 4])
        path = tmp_path / f"mv-{storage}.sdx"
        index.save(path)
        loaded = load(path)
        assert isinstance(loaded, MultiVectorIndex) and loaded.ntotal == 198 and loaded.storage == storage
        for method in ("exact", "muvera", "tokens"):
            a = index.search(queries, 7, method=method)
            b = loaded.search(queries, 7, method=method)
            np.testing.assert_array_equal(a[1], b[1])
            np.testing.assert_array_equal(a[0], b[0])
        loaded.add(docs[200:210])  # a memory-mapped index takes more documents
        assert loaded.ntotal == 208
        np.testing.assert_array_equal(loaded.get_documents([0])[0], index.get_documents([0])[0])


def test_corrupt_files_raise(tmp_path, data):
    docs, _ = data
    index = MultiVectorIndex(384)
    index.add(docs[:50])
    path = tmp_path / "mv.sdx"
    index.save(path)
    raw = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.sdx"
    raw[-100] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        MultiVectorIndex.load(flipped)
    truncated = tmp_path / "short.sdx"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptFileError):
        load(truncated)
    # a well-formed file whose offsets do not fit its rows (written through the public format, CRCs valid)
    from simdex import fileformat
    kind, meta, arrays = fileformat.load_arrays(path, mmap=False)
    arrays["offsets"] = arrays["offsets"].copy()
    arrays["offsets"][5] = arrays["offsets"][4]
    fileformat.save_arrays(tmp_path / "bad.sdx", kind, meta, arrays)
    with pytest.raises(CorruptFileError):
        load(tmp_path / "bad.sdx")


# ---- bad input raises and leaves the index unchanged ---------------------------------------------------------------
def test_bad_input_raises_and_changes_nothing(data):
    docs, queries = data
    index = MultiVectorIndex(384, token_index=True)
    index.add(docs[:100])
    state = (index.ntotal, index.num_vectors, index._fde.ntotal, index._tokens.ntotal)
    before = index.search(queries[:5], 5)
    nan_doc = docs[0].copy()
    nan_doc[0, 3] = np.nan
    bad_calls = [
        (DimensionMismatchError, lambda: index.add([docs[1], np.zeros((3, 100), np.float32)])),
        (InvalidInputError, lambda: index.add([docs[1], nan_doc])),
        (InvalidInputError, lambda: index.add([docs[1], np.zeros((0, 384), np.float32)])),
        (InvalidInputError, lambda: index.add([docs[1], [[0.1] * 384, [0.2] * 383]])),  # ragged vectors
        (InvalidInputError, lambda: index.add([])),
        (InvalidInputError, lambda: index.add(np.zeros((5, 384), np.float32), offsets=[0, 2, 2, 5])),
        (InvalidInputError, lambda: index.add(np.zeros((5, 384), np.float32), offsets=[0, 2, 4])),
        (InvalidInputError, lambda: index.add([docs[1] * 1e6])),  # beyond float16
        (DuplicateIdError, lambda: index.add([docs[1]], ids=[0])),
        (DuplicateIdError, lambda: index.add([docs[1], docs[2]], ids=[500, 500])),
        (InvalidInputError, lambda: index.add([docs[1]], weights=[1.0])),
        (DimensionMismatchError, lambda: index.search([np.zeros((2, 50), np.float32)], 5)),
        (InvalidInputError, lambda: index.search([queries[0]], 0)),
        (InvalidInputError, lambda: index.search([queries[0]], 101)),
        (InvalidInputError, lambda: index.search([queries[0]], 5, method="plaid")),
        (InvalidInputError, lambda: index.search([np.full((2, 384), np.inf, np.float32)], 5)),
    ]
    for exc, call in bad_calls:
        with pytest.raises(exc):
            call()
        assert (index.ntotal, index.num_vectors, index._fde.ntotal, index._tokens.ntotal) == state
    after = index.search(queries[:5], 5)
    np.testing.assert_array_equal(before[1], after[1])
    with pytest.raises(InvalidInputError):
        MultiVectorIndex(384, storage="bf16")
    no_fde = MultiVectorIndex(384, fde_index="none")
    no_fde.add(docs[:3])
    with pytest.raises(InvalidInputError):
        no_fde.search([queries[0]], 1, method="muvera")
    with pytest.raises(InvalidInputError):
        no_fde.search([queries[0]], 1, method="tokens")
    with pytest.raises(InvalidInputError):
        MultiVectorIndex(16).search([np.ones((1, 16))], 1)  # empty index


# ---- the bench harness, without the model ------------------------------------------------------------------------
def test_bench_harness_on_real_vectors_without_the_model(tmp_path):
    from simdex.bench import multivector as mvb
    report = mvb.run(synthetic=(300, 12), encoder={"k_sim": 2, "d_proj": 16, "r_reps": 4}, latency_queries=2,
                     recommended=100, log=lambda *_: None)
    r = report["collections"]["synthetic"]
    assert r["documents"] == 300 and r["queries"] == 12
    mv = [p for p in r["muvera"] if p["recall@100"] is not None]
    assert mv[-1]["recall@100"] == 1.0  # re-ranking every document is exact
    assert all(a["recall@100"] <= b["recall@100"] + 1e-9 for a, b in zip(mv, mv[1:]))
    tok = r["tokens"]
    assert all(a["candidates"] <= b["candidates"] for a, b in zip(tok, tok[1:]))
    assert set(r["latency_ms"]) == {"exact", "muvera", "tokens"} and min(r["latency_ms"].values()) > 0
    assert {row["setting"] for row in r["reductions"]} >= {"prune 50% by IDF", "int8 codes"}
    assert "synthetic" in mvb.format_report(report)
    json_path, png_path = mvb.save(report, tmp_path)
    assert json.loads(json_path.read_text())["collections"]["synthetic"]["documents"] == 300
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_token_set_drops_special_tokens():
    from simdex.bench.multivector import CLS_ID, SEP_ID, TokenSet
    ids = np.array([CLS_ID, 7, 8, SEP_ID, CLS_ID, SEP_ID, CLS_ID, 9, SEP_ID], np.int32)
    rows = np.arange(9 * 2, dtype=np.float16).reshape(9, 2)
    ts = TokenSet(rows, np.array([0, 4, 6, 9]), ids, np.zeros((3, 2), np.float32))
    out = ts.without_special()
    np.testing.assert_array_equal(out.offsets, [0, 2, 3, 4])
    np.testing.assert_array_equal(out.token_ids, [7, 8, CLS_ID, 9])  # an all-special text keeps its [CLS]
    part = ts.slice(1, 3)
    np.testing.assert_array_equal(part.offsets, [0, 2, 5])
