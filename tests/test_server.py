"""The HTTP server: REST API through ``simdex.Client`` on a real uvicorn server, error statuses, API keys, limits,
concurrent readers and writers, and fuzzing against the OpenAPI spec."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import schemathesis

import simdex
from simdex.errors import (CollectionExistsError, CollectionNotFoundError, DimensionMismatchError,
                           UnknownIdError)
from simdex.server.app import create_app
from simdex.store.filters import FilterError

from ._live import LiveServer, live_http
from .conftest import numpy_knn


@pytest.fixture()
def db(tmp_path):
    with simdex.connect(tmp_path / "db", sync="batch", merge_rows=300) as database:
        yield database


@pytest.fixture(scope="module")
def words(wordnet_small):
    n = 1_500
    return ([f"w{i}" for i in range(n)], np.ascontiguousarray(wordnet_small.base[:n], np.float32),
            [{"pos": "nvar"[i % 4], "n": i} for i in range(n)], wordnet_small.queries[:10])


def test_client_round_trip_equals_embedded(db, words):
    ids, vectors, metas, queries = words
    with LiveServer(create_app(db)) as live:
        client = simdex.Client(live.url)
        assert client.health()["status"] == "ok"
        col = client.create_collection("words", dim=384, metric="cosine", M=12, ef_construction=64)
        for start in range(0, len(ids), 500):
            assert col.upsert(ids[start:start + 500], vectors[start:start + 500], metas[start:start + 500]) == 500
        assert col.count() == len(ids) and client.list_collections() == ["words"]
        with pytest.raises(CollectionExistsError):
            client.create_collection("words", dim=384)
        with pytest.raises(CollectionNotFoundError):
            client.get_collection("nope")

        local = db.get_collection("words")
        db.optimize()  # a background merge between the two searches below would change the graph under them
        where = {"pos": {"$in": ["n", "v"]}, "n": {"$lt": 1000}}
        remote_hits = col.search_batch(queries, k=10, where=where, ef=200)
        assert remote_hits == local.search_batch(queries, k=10, where=where, ef=200)
        mask = np.array([m["pos"] in "nv" and m["n"] < 1000 for m in metas])
        _, pos = numpy_knn(vectors[mask], queries, 10, "cosine")
        truth = [{ids[np.flatnonzero(mask)[p]] for p in row} for row in pos]
        assert sum(len({h["id"] for h in r} & t) for r, t in zip(remote_hits, truth)) / 100 >= 0.95
        best = remote_hits[0][0]
        assert abs(best["distance"] - (1 - float(vectors[ids.index(best["id"])] @ queries[0]))) < 1e-4

        by_id = col.search_by_id(["w7"], k=1)
        assert by_id[0][0]["id"] == "w7" and by_id[0][0]["distance"] < 1e-5
        assert col.get(["w3"], include=["metadatas"]) == [{"id": "w3", "metadata": metas[3]}]
        assert col.delete(where={"n": {"$gte": 1400}}) == 100
        with pytest.raises(UnknownIdError):
            col.delete(["w1450"])
        with pytest.raises(DimensionMismatchError):
            col.search(np.ones(3), k=1)
        with pytest.raises(FilterError, match=r"where\.n\.\$between"):
            col.search(vectors[0], k=1, where={"n": {"$between": [1, 2]}})
        assert col.count() == len(ids) - 100
        client.drop_collection("words")
        assert client.list_collections() == []


def test_error_statuses_and_nothing_changes(db):
    app = create_app(db, max_body_bytes=20_000, max_batch=50)
    with live_http(app) as http:
        assert http.post("/api/v1/collections", json={"name": "c", "dim": 3, "metric": "l2"}).status_code == 201
        ok = {"ids": ["a", "b"], "vectors": [[1, 0, 0], [0, 1, 0]], "metadatas": [{"x": 1}, None]}
        assert http.post("/api/v1/collections/c/upsert", json=ok).json() == {"upserted": 2}

        cases = [
            ("post", "/api/v1/collections/c/upsert", {"ids": ["z"], "vectors": [[1, 2]]}, 400, "dimension"),
            ("post", "/api/v1/collections/c/upsert", {"ids": ["z"], "vectors": [[1, "x", 2]]}, 422, "vectors"),
            ("post", "/api/v1/collections/c/upsert", {"ids": ["z", "z"], "vectors": [[1, 2, 3]] * 2}, 409, "more than"),
            ("post", "/api/v1/collections/c/upsert", {"ids": ["z"], "vectors": [[1, 2, 3]], "extra": 1}, 422, "extra"),
            ("post", "/api/v1/collections/c/upsert", {"ids": [f"i{i}" for i in range(51)],
                                                      "vectors": [[1, 2, 3]] * 51}, 400, "at most 50"),
            ("post", "/api/v1/collections/c/upsert", {"ids": ["z"] * 2000, "vectors": [[1.5, 2.5, 3.5]] * 2000},
             413, "limit"),
            ("post", "/api/v1/collections/c/upsert", {"ids": ["z"], "vectors_base64": "!!"}, 400, "not valid base64"),
            ("post", "/api/v1/collections/c/upsert", {"ids": ["z"], "vectors_base64": "AAAAAA=="}, 400, "whole number"),
            ("post", "/api/v1/collections/c/upsert", {"ids": ["z"]}, 400, "vectors is required"),
            ("post", "/api/v1/collections/c/upsert", {"ids": ["z"], "vectors_base64": "AADAfwAAAAAAAAAA"}, 400, "nan"),
            ("post", "/api/v1/collections/c/search", {"vector": [1, 0, 0], "k": 0}, 422, "k"),
            ("post", "/api/v1/collections/c/search", {"k": 1}, 400, "exactly one of"),
            ("post", "/api/v1/collections/c/search", {"vector": [1, 0, 0], "where": {"x": {"$foo": 1}}}, 400,
             r"where.x.$foo"),
            ("post", "/api/v1/collections/c/search", {"query_ids": ["nope"]}, 404, "nope"),
            ("post", "/api/v1/collections/c/delete", {"ids": ["nope"]}, 404, "nope"),
            ("post", "/api/v1/collections/nope/get", {}, 404, "nope"),
            ("delete", "/api/v1/collections/..%2Fc", None, 404, "no such endpoint"),
            ("post", "/api/v1/collections", {"name": "../x", "dim": 3}, 400, "invalid collection name"),
            ("post", "/api/v1/collections", {"name": "c", "dim": 3}, 409, "already exists"),
            ("post", "/api/v1/collections", {"name": "d", "dim": -1}, 400, "dim"),
            ("post", "/api/v1/collections", {"name": "d", "dim": 10 ** 18}, 400, "dim must be <="),
            ("post", "/api/v1/collections", {"name": "d", "dim": 3, "params": {"M": "big"}}, 400, "M"),
        ]
        for method, url, body, status, needle in cases:
            response = getattr(http, method)(url, json=body) if body is not None else getattr(http, method)(url)
            assert response.status_code == status, (url, body, response.text)
            error = response.json()["error"]
            assert needle.lower() in error["message"].lower(), (url, error)
        raw = http.post("/api/v1/collections/c/upsert", content=b"{not json",
                        headers={"content-type": "application/json"})
        assert raw.status_code == 422 and "error" in raw.json()
        assert http.get("/api/v1/collections").json()["collections"][0]["count"] == 2
        assert http.post("/api/v1/collections/c/get", json={}).json()["records"] == [
            {"id": "a", "metadata": {"x": 1}, "document": None}, {"id": "b", "metadata": {}, "document": None}]
        assert sorted(p.name for p in (db.path / "collections").iterdir()) == ["c"]


def test_api_key(db):
    with live_http(create_app(db, api_key="s3cret")) as http:
        assert http.get("/api/v1/collections").status_code == 401
        assert http.get("/api/v1/collections", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/api/v1/collections", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert http.get("/api/v1/collections", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert http.get("/healthz").status_code == 200 and http.get("/").status_code == 200


def test_serve_refuses_public_bind_without_key(tmp_path, capsys):
    from simdex.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--path", str(tmp_path / "db"), "--host", "0.0.0.0"])
    assert "--api-key" in str(exc.value) and "0.0.0.0" in str(exc.value)
    assert not (tmp_path / "db").exists()  # refused before touching anything


def test_concurrent_readers_and_writers(db, words):
    """8 reader threads search while 2 writer threads upsert and delete, all over HTTP; afterwards the content
    equals the acknowledged writes and no request failed."""
    ids, vectors, metas, queries = words
    with LiveServer(create_app(db)) as live:
        client = simdex.Client(live.url)
        col = client.create_collection("c", dim=384, M=12, ef_construction=64)
        col.upsert(ids[:500], vectors[:500], metas[:500])
        failures: list[BaseException] = []
        stop = threading.Event()
        acknowledged: dict[str, int] = {i: n for n, i in enumerate(ids[:500])}
        ack_lock = threading.Lock()

        def writer(part: int) -> None:
            try:
                rng = np.random.default_rng(part)
                own = list(range(500 + part * 500, 1000 + part * 500))
                for start in range(0, 500, 50):
                    chunk = own[start:start + 50]
                    col.upsert([ids[i] for i in chunk], vectors[chunk], [metas[i] for i in chunk])
                    with ack_lock:
                        acknowledged.update({ids[i]: i for i in chunk})
                    gone = [ids[i] for i in rng.choice(chunk, 10, replace=False)]
                    col.delete(gone)
                    with ack_lock:
                        for g in gone:
                            acknowledged.pop(g)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        def reader(seed: int) -> None:
            rng = np.random.default_rng(100 + seed)
            try:
                while not stop.is_set():
                    q = queries[rng.integers(len(queries))]
                    hits = col.search(q, k=10, where={"pos": "n"} if seed % 2 else None)
                    assert len(hits) == 10
                    assert all(h["distance"] <= hits[-1]["distance"] for h in hits)
                    if seed % 2:
                        assert all(h["metadata"]["pos"] == "n" for h in hits)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        readers = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
        writers = [threading.Thread(target=writer, args=(p,)) for p in range(2)]
        for t in readers + writers:
            t.start()
        for t in writers:
            t.join(timeout=300)
        stop.set()
        for t in readers:
            t.join(timeout=60)
        assert not failures, failures[:3]
        assert col.count() == len(acknowledged)
        stored = {r["id"] for r in col.get(include=[], limit=None)}
        assert stored == set(acknowledged)
        # every stored vector is findable as its own nearest neighbour
        sample = sorted(acknowledged)[:: max(1, len(acknowledged) // 40)]
        hits = col.search_by_id(sample, k=1)
        assert [h[0]["id"] for h in hits] == sample


def test_openapi_fuzz_never_500(tmp_path):
    """schemathesis generates requests from the OpenAPI spec; no request may produce a 5xx or an undocumented
    non-JSON error."""
    from hypothesis import HealthCheck, given, settings
    with simdex.connect(tmp_path / "db", sync="off", background=False) as database:
        database.create_collection("c", dim=3, metric="l2").upsert(["a", "b"], [[1, 0, 0], [0, 1, 0]])
        app = create_app(database, max_batch=100)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures, statuses = [], []
        for op in schema.get_all_operations():
            operation = op.ok()

            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy())
            def run(case):
                response = case.call()
                statuses.append(response.status_code)
                if response.status_code >= 500:
                    failures.append((case.method, case.formatted_path, case.body, response.status_code,
                                     response.text[:300]))
                if response.status_code >= 400:
                    assert "error" in response.json()

            run()
        assert not failures, failures[:3]
        assert len(statuses) > 100 and any(s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses)


def test_serve_warms_kernels_once_then_starts_at_once(tmp_path):
    """`simdex serve` (what `make run` starts) on a fresh install compiles what serving needs while the database
    opens, then serves; the next start finds the kernels warm and says nothing about compiling."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from ._live import free_port

    env = {**os.environ, "SIMDEX_CACHE_DIR": str(tmp_path / "cache")}

    def start() -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "simdex", "serve", "--path", str(tmp_path / "db"), "--port",
                                 str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            deadline = time.time() + 300
            while time.time() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["status"] == "ok":
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            else:
                raise AssertionError("the server did not start")
        finally:
            proc.terminate()
            out = proc.communicate(timeout=60)[0]
        return out

    first = start()
    assert "compiling kernels for the first start" in first and "kernels ready" in first, first
    second = start()
    assert "compiling" not in second and "web console" in second, second
