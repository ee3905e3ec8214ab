"""SparseIndex: exact top-k of every method against an independent brute force on real text (gcide, Cranfield),
approximate recall, learned-sparse input, writes, persistence, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from simdex.errors import CorruptFileError, DuplicateIdError, InvalidInputError, InvalidTypeError, UnknownIdError
from simdex.sparse import Analyzer, SparseIndex

from ._sparse_data import BruteBM25, check_topk, gcide, gloss_texts

pytest.importorskip("Stemmer", reason="the default analyzer needs PyStemmer (simdex[text])")

METHODS = ("taat", "bmw", "bmp")
K = 10


@pytest.fixture(scope="module")
def corpus():
    """3,000 gcide entries and 150 WordNet gloss queries, analysed once."""
    texts = gcide(3000)
    an = Analyzer()
    return texts, an.analyze_batch(texts), list(gloss_texts(150)), an.analyze_batch(list(gloss_texts(150)))


@pytest.fixture(scope="module")
def cranfield():
    from simdex.bench.ir import load_ir
    data = load_ir("cranfield")
    an = Analyzer()
    return an.analyze_batch(data["docs"]), an.analyze_batch(data["queries"])


@pytest.fixture(scope="module")
def built(corpus):
    texts, _, _, _ = corpus
    index = SparseIndex(range_size=32)
    index.add(texts)
    return index


@pytest.mark.parametrize("method", METHODS)
def test_exact_topk_equals_brute_force_gcide(corpus, built, method):
    _, doc_tokens, queries, query_tokens = corpus
    brute = BruteBM25(doc_tokens)
    scores, ids = built.search(queries, K, method=method)
    assert scores.shape == ids.shape == (len(queries), K) and scores.dtype == np.float32 and ids.dtype == np.int64
    for q in range(len(queries)):
        check_topk(scores[q], ids[q], brute.scores(query_tokens[q]), K)


def test_methods_agree_and_cranfield_matches_brute_force(cranfield):
    docs, queries = cranfield
    index = SparseIndex(analyzer=None, range_size=16)
    index.add(docs[:700])
    index.add(docs[700:])  # two segments
    brute = BruteBM25(docs)
    results = {m: index.search(queries, 20, method=m) for m in (*METHODS, "auto")}
    for q in range(len(queries)):
        check_topk(results["taat"][0][q], results["taat"][1][q], brute.scores(queries[q]), 20)
    for m in ("bmw", "bmp", "auto"):
        np.testing.assert_allclose(results[m][0], results["taat"][0], rtol=1e-6)
        assert (results[m][1] == results["taat"][1]).mean() > 0.99  # only exact float ties may swap


def test_scores_are_lucene_bm25_with_k1_b(corpus):
    texts, doc_tokens, _, _ = corpus
    index = SparseIndex(k1=0.9, b=0.4)
    index.add(texts[:1000])
    brute = BruteBM25(doc_tokens[:1000], k1=0.9, b=0.4)
    # one term per query: the score is exactly idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))
    for term in ("plant", "water", "genus", "verb"):
        s, i = index.search([[term]], 5)
        truth = brute.scores([term])
        np.testing.assert_allclose(s[0], truth[i[0]], rtol=1e-6)
        assert s[0][0] == pytest.approx(truth.max(), rel=1e-6)
    np.testing.assert_allclose(index.idf(["plant", "nosuchterm"]),
                               [brute.idf[brute.vocab["plant"]], 0.0], rtol=1e-12)


def test_approximate_bmp_recall_at_knob(corpus, built):
    _, _, queries, _ = corpus
    exact_s, exact_i = built.search(queries, K, method="bmp")
    recalls = {}
    for approx in (1.0, 1.5, 3.0):
        s, i = built.search(queries, K, method="bmp", approx=approx)
        hits = sum(len(set(a[a >= 0]) & set(b[b >= 0])) for a, b in zip(i, exact_i))
        recalls[approx] = hits / (exact_i >= 0).sum()
        # whatever is returned is scored exactly
        found = i >= 0
        assert np.all(s[found] <= exact_s[:, :1].repeat(K, 1)[found] * (1 + 1e-6))
    assert recalls[1.0] == 1.0
    assert recalls[1.5] >= 0.8, recalls
    assert recalls[3.0] <= recalls[1.5] and recalls[3.0] < 1.0, recalls


def test_add_after_build_delete_and_merge(corpus):
    texts, doc_tokens, queries, query_tokens = corpus
    index = SparseIndex(max_segments=3)
    for start in range(0, 3000, 500):
        index.add(texts[start:start + 500], np.arange(start, start + 500))
    assert 1 <= index.num_segments <= 3 and len(index) == 3000
    brute = BruteBM25(doc_tokens)
    s, i = index.search(queries[:40], K)
    for q in range(40):
        check_topk(s[q], i[q], brute.scores(query_tokens[q]), K)
    # delete the current best hits: they never come back, under any method
    gone = np.unique(i[:, :3][i[:, :3] >= 0])
    assert index.remove(gone) == gone.shape[0]
    assert len(index) == 3000 - gone.shape[0] and gone[0] not in index
    for m in METHODS:
        _, i2 = index.search(queries[:40], K, method=m)
        assert not set(i2.ravel().tolist()) & set(gone.tolist())
    # merge drops them; results then equal a fresh index of the remaining documents
    index.merge(1)
    assert index.num_segments == 1 and index.stats()["documents"] == 3000 - gone.shape[0]
    keep = np.setdiff1d(np.arange(3000), gone)
    fresh = SparseIndex()
    fresh.add([texts[j] for j in keep], keep)
    for m in METHODS:
        a = index.search(queries[:40], K, method=m)
        b = fresh.search(queries[:40], K, method=m)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
        assert (a[1] == b[1]).mean() > 0.99


def _learned_sparse(doc_tokens):
    """Sparse vectors from real text, like a learned-sparse encoder's output: {term: log(1 + tf) * 1.7}."""
    out = []
    for toks in doc_tokens:
        counts: dict[str, int] = {}
        for t in toks:
            counts[t] = counts.get(t, 0) + 1
        out.append({t: float(np.log1p(c) * 1.7) for t, c in counts.items()})
    return out


def _csr_of(vectors, vocab):
    indptr, indices, data = [0], [], []
    for v in vectors:
        for t, w in v.items():
            indices.append(vocab.setdefault(t, len(vocab)))
            data.append(w)
        indptr.append(len(indices))
    return np.array(indptr, np.int64), np.array(indices, np.int64), np.array(data, np.float32)


def _dense_dot(vectors, query, n):
    return np.array([sum(query.get(t, 0.0) * w for t, w in v.items()) for v in vectors[:n]])


def test_learned_sparse_dicts_and_csr(corpus):
    _, doc_tokens, _, query_tokens = corpus
    n = 1500
    vectors = _learned_sparse(doc_tokens[:n])
    qvecs = _learned_sparse(query_tokens[:30])
    by_dict = SparseIndex("dot")
    by_dict.add(vectors)
    vocab: dict[str, int] = {}
    csr = _csr_of(vectors, vocab)
    qcsr = _csr_of(qvecs, vocab)
    by_csr = SparseIndex("dot")
    by_csr.add(csr)
    for m in METHODS:
        s, i = by_dict.search(qvecs, K, method=m)
        for q in range(len(qvecs)):
            check_topk(s[q], i[q], _dense_dot(vectors, qvecs[q], n), K, rtol=1e-4)
        s2, i2 = by_csr.search(qcsr, K, method=m)
        np.testing.assert_allclose(s2, s, rtol=1e-5)
    import scipy.sparse as sp  # in the test extra: CSR input must be tested, never skipped
    mat = sp.csr_matrix((csr[2], csr[1], csr[0]), shape=(n, len(vocab)))
    by_scipy = SparseIndex("dot")
    by_scipy.add(mat)
    qmat = sp.csr_matrix((qcsr[2], qcsr[1], qcsr[0]), shape=(len(qvecs), len(vocab)))
    np.testing.assert_allclose(by_scipy.search(qmat, K)[0], by_csr.search(qcsr, K)[0], rtol=1e-6)


def test_learned_sparse_inference_free_queries_weighted_by_idf(corpus):
    _, doc_tokens, _, query_tokens = corpus
    n = 1500
    vectors = _learned_sparse(doc_tokens[:n])
    index = SparseIndex("dot")
    index.add(vectors)
    df: dict[str, int] = {}
    for v in vectors:
        for t in v:
            df[t] = df.get(t, 0) + 1
    for q in query_tokens[:30]:
        weights: dict[str, float] = {}
        for t in q:
            if t in df:
                weights[t] = weights.get(t, 0.0) + np.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
        s, i = index.search([q], K)  # token list, no encoder on the query side
        check_topk(s[0], i[0], _dense_dot(vectors, weights, n), K, rtol=1e-4)


def test_save_load_round_trip_is_identical_and_mmapped(tmp_path, corpus, built):
    _, _, queries, _ = corpus
    built.remove([5, 17])
    path = tmp_path / "sparse.sdx"
    built.save(path)
    loaded = SparseIndex.load(path)
    assert isinstance(loaded._segments[0].arrays["words"].base, np.memmap) or \
        isinstance(loaded._segments[0].arrays["words"], np.memmap)
    assert loaded.stats() == built.stats() and loaded.analyzer.config() == built.analyzer.config()
    for m in METHODS:
        a, b = built.search(queries, K, method=m), loaded.search(queries, K, method=m)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # a loaded index takes new documents (copy-on-write: the file is not touched)
    before = path.read_bytes()
    loaded.add(["a brand new entry about zymurgy"], [10**6])
    assert loaded.search(["zymurgy"], 1)[1][0, 0] == 10**6 and path.read_bytes() == before


def test_corrupted_or_truncated_file_raises(tmp_path, built):
    path = tmp_path / "sparse.sdx"
    built.save(path)
    raw = bytearray(path.read_bytes())
    bad = tmp_path / "flipped.sdx"
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="checksum"):
        SparseIndex.load(bad)
    short = tmp_path / "short.sdx"
    short.write_bytes(path.read_bytes()[:len(raw) // 3])
    with pytest.raises(CorruptFileError, match="truncated"):
        SparseIndex.load(short)
    other = tmp_path / "junk.sdx"
    other.write_bytes(b"not an index at all" * 10)
    with pytest.raises(CorruptFileError):
        SparseIndex.load(other)


def _snapshot(index, queries):
    s, i = index.search(queries, K)
    return index.stats(), len(index.vocabulary), s.copy(), i.copy()


def _same(a, b):
    assert a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])


@pytest.mark.parametrize("call, error, message", [
    (lambda ix: ix.add("one text"), InvalidTypeError, "batch-first"),
    (lambda ix: ix.add([]), InvalidInputError, "empty"),
    (lambda ix: ix.add(["fine text", 42]), InvalidTypeError, r"documents\[1\]"),
    (lambda ix: ix.add([{"term": 1.0}]), InvalidTypeError, "list of texts"),
    (lambda ix: ix.add(["new words here"], [0]), DuplicateIdError, "0"),
    (lambda ix: ix.add(["unseen zebra words", "more"], [7_000_000, 7_000_000]), InvalidInputError, "duplicate"),
    (lambda ix: ix.add(["x"], [-5]), InvalidInputError, "ids"),
    (lambda ix: ix.search(["plant"], 0), InvalidInputError, "k"),
    (lambda ix: ix.search(["plant"], -3), InvalidInputError, "k"),
    (lambda ix: ix.search(["plant"], 2.5), InvalidInputError, "k"),
    (lambda ix: ix.search("plant", 5), InvalidTypeError, "batch-first"),
    (lambda ix: ix.search([""], 5), InvalidInputError, "empty"),
    (lambda ix: ix.search(["plant"], 5, method="wand9"), InvalidInputError, "method"),
    (lambda ix: ix.search(["plant"], 5, approx=0.5), InvalidInputError, "approx"),
    (lambda ix: ix.remove([10**9]), UnknownIdError, str(10**9)),
    (lambda ix: ix.remove([1, 10**9]), UnknownIdError, str(10**9)),
])
def test_bad_input_bm25_raises_and_changes_nothing(corpus, call, error, message):
    texts, _, queries, _ = corpus
    index = SparseIndex()
    index.add(texts[:500])
    before = _snapshot(index, queries[:20])
    with pytest.raises(error, match=message):
        call(index)
    _same(before, _snapshot(index, queries[:20]))


@pytest.mark.parametrize("docs, error, message", [
    ([{"a": 1.0}, {"b": float("nan")}], InvalidInputError, "NaN"),
    ([{"a": float("inf")}], InvalidInputError, "infinite"),
    ([{"a": -0.5}], InvalidInputError, "negative weights"),
    ([{-3: 1.0}], InvalidInputError, "negative term id"),
    ([{"a": "heavy"}], InvalidTypeError, "number"),
    ([{1.5: 1.0}], InvalidTypeError, "key"),
    ([["tokens"], {"a": 1.0}], InvalidTypeError, "dict"),
    ((np.array([0, 1]), np.array([-1]), np.array([1.0])), InvalidInputError, "negative term id"),
    ((np.array([0, 2]), np.array([1]), np.array([1.0])), InvalidInputError, "inconsistent CSR"),
    ((np.array([0, 1]), np.array([1.0]), np.array([1.0])), InvalidTypeError, "integer"),
    ((np.array([0, 1]), np.array([1]), np.array([np.nan])), InvalidInputError, "NaN"),
])
def test_bad_input_dot_raises_and_changes_nothing(corpus, docs, error, message):
    _, doc_tokens, _, _ = corpus
    index = SparseIndex("dot")
    index.add(_learned_sparse(doc_tokens[:300]))
    queries = _learned_sparse(doc_tokens[300:310])
    before = _snapshot(index, queries)
    with pytest.raises(error, match=message):
        index.add(docs)
    _same(before, _snapshot(index, queries))
    with pytest.raises(InvalidInputError):
        index.search([{"gloss": float("nan")}], K)


def test_bad_constructor_arguments():
    for kwargs, message in (({"scoring": "tfidf"}, "scoring"), ({"k1": -1}, "k1"), ({"b": 1.5}, "b"),
                            ({"range_size": 48}, "power of two"), ({"analyzer": 3}, "analyzer")):
        with pytest.raises(InvalidInputError, match=message):
            SparseIndex(**kwargs)
    with pytest.raises(InvalidInputError, match="no analyzer"):
        SparseIndex(analyzer=None).add(["raw text"])


def test_unknown_query_terms_and_filters(built, corpus):
    s, i = built.search(["qqqxyzzy unknownword"], K)
    assert (i == -1).all() and np.isneginf(s).all()
    _, _, queries, _ = corpus
    allowed = np.arange(0, 3000, 2)
    for m in METHODS:
        _, ids = built.search(queries[:30], K, method=m, filter=allowed)
        assert np.all((ids == -1) | (ids % 2 == 0))


@pytest.mark.parametrize("method", ["taat", "bmw", "bmp"])
def test_queries_without_known_terms_match_nothing(corpus, built, method):
    # CACM has an empty query text; a query of only stop words analyses to no terms: no hits, no error, and the
    # other queries of the batch are answered as if alone
    _, _, queries, _ = corpus
    scores, ids = built.search(["the of and", [], ["qqxyzzy"], queries[0]], 5, method=method)
    assert (ids[:3] == -1).all() and np.isneginf(scores[:3]).all()
    alone_scores, alone_ids = built.search([queries[0]], 5, method=method)
    assert np.array_equal(ids[3], alone_ids[0]) and np.allclose(scores[3], alone_scores[0])
