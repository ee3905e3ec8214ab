"""The web console in headless Chromium (Debian ``chromium`` driven by Playwright): it loads, lists collections,
browses records, searches by id and by pasted vector with a ``where`` filter, and shows the right hits."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import simdex
from simdex.server.app import create_app

from ._live import LiveServer
from .conftest import numpy_knn

CHROMIUM = os.environ.get("SIMDEX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("SIMDEX_REQUIRE_BROWSER"):  # set by .ci/run, which installs chromium: never skip there
        raise RuntimeError("SIMDEX_REQUIRE_BROWSER is set but no chromium executable was found")
    pytest.skip("no chromium executable (apt-get install chromium); .ci/run installs it", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, wordnet_small):
    n = 400
    vectors = np.ascontiguousarray(wordnet_small.base[:n], np.float32)
    ids = [f"w{i:03d}" for i in range(n)]
    metas = [{"pos": "nvar"[i % 4], "n": i} for i in range(n)]
    docs = [f"gloss {i}" for i in range(n)]
    with simdex.connect(tmp_path_factory.mktemp("console") / "db", sync="off") as db:
        col = db.create_collection("words", dim=384, M=12, ef_construction=64)
        col.upsert(ids, vectors, metas, docs)
        db.optimize()
        with LiveServer(create_app(db)) as live:
            yield live, ids, vectors, metas, wordnet_small.queries[0]


@pytest.fixture(scope="module")
def page(served):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page()
        page.set_default_timeout(20_000)
        page.goto(served[0].url + "/")
        yield page
        browser.close()


def _column(page, table: str, index: int) -> list[str]:
    return page.locator(f"#{table} tbody tr td:nth-child({index})").all_inner_texts()


def _brute_force(ids, vectors, metas, query, k, pos):
    mask = np.array([m["pos"] == pos for m in metas])
    _, order = numpy_knn(vectors[mask], query[None, :], k, "cosine")
    return [ids[np.flatnonzero(mask)[p]] for p in order[0]]


def test_lists_collections_and_browses_records(page, served):
    _, ids, *_ = served
    expect(page.locator("#collections tbody tr")).to_have_count(1)
    row = page.locator("#collections tbody tr").first.inner_text()
    assert "words" in row and "400" in row and "384" in row
    expect(page.locator("#records tbody tr").first).to_contain_text("w000")
    assert _column(page, "records", 1)[:3] == ids[:3]
    page.fill("#browse-where", json.dumps({"pos": "a", "n": {"$gte": 100}}))
    page.click("#browse-apply")
    expect(page.locator("#records tbody tr").first).to_contain_text("w102")
    assert all(int(i[1:]) % 4 == 2 and int(i[1:]) >= 100 for i in _column(page, "records", 1))


def test_search_by_id_with_filter_shows_right_hits(page, served):
    _, ids, vectors, metas, _ = served
    page.select_option("#search-mode", "id")
    page.fill("#search-id", "w005")
    page.fill("#search-where", json.dumps({"pos": "v"}))
    page.fill("#search-k", "5")
    page.click("#search-button")
    expect(page.locator("#results tbody tr")).to_have_count(5)
    shown = _column(page, "results", 2)
    assert shown == _brute_force(ids, vectors, metas, vectors[5], 5, "v")
    assert shown[0] == "w005" and float(_column(page, "results", 3)[0]) < 1e-3


def test_search_by_pasted_vector(page, served):
    _, ids, vectors, metas, query = served
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
