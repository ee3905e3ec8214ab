"""The embedded database: CRUD, metadata filters, durability across reopen, recovery, locking, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import simdex
from simdex.errors import (CollectionExistsError, CollectionNotFoundError, DimensionMismatchError,
                           DuplicateIdError, InvalidInputError, ReadOnlyError, UnknownIdError)
from simdex.store.config import MAIN_INDEXES, main_index_class
from simdex.store.filters import FilterError

from ._crash import run_then_kill
from .conftest import numpy_knn

POS = ("n", "v", "a", "r")


@pytest.fixture(scope="module")
def records(wordnet_small):
    """2,000 real WordNet gloss embeddings with metadata derived from their index (pos, year, score)."""
    n = 2_000
    vectors = np.ascontiguousarray(wordnet_small.base[:n], dtype=np.float32)
    ids = [f"doc-{i:05d}" for i in range(n)]
    metas = [{"pos": POS[i % 4], "year": 1990 + i % 30, "score": (i * 37 % 101) / 10.0,
              "date": f"20{i % 25:02d}-0{1 + i % 9}-15", "tags": {"even": i % 2 == 0}} for i in range(n)]
    docs = [f"gloss number {i}" for i in range(n)]
    return ids, vectors, metas, docs, wordnet_small.queries[:20]


def _open(path, **kw):
    kw.setdefault("background", False)
    kw.setdefault("sync", "off")
    return simdex.connect(path, **kw)


def _exact_hits(vectors, ids, queries, k, mask=None):
    sel = np.arange(len(ids)) if mask is None else np.flatnonzero(mask)
    _, pos = numpy_knn(vectors[sel], queries, k, "cosine")
    return [[ids[sel[p]] for p in row] for row in pos]


def _recall(hits, truth):
    found = sum(len({h["id"] for h in row} & set(t)) for row, t in zip(hits, truth))
    return found / sum(len(t) for t in truth)


# every kind of main index a collection can have (the graph over float32 vectors, over LVQ-8 or int8 codes, IVF
# over PQ codes, the Vamana graphs, SPANN)
MAIN_KINDS = list(MAIN_INDEXES)
TRAINED = [kind for kind in MAIN_KINDS if MAIN_INDEXES[kind].trained]


def _build_params(kind, M, ef_construction):
    """The build parameters of a test collection of ``kind``: an HNSW graph's M and ef_construction, the like for
    a Vamana graph (its degree R is HNSW's 2 M on the base layer); IVF's defaults."""
    params = MAIN_INDEXES[kind].params
    if "M" in params:
        return {"M": M, "ef_construction": ef_construction}
    return {"R": 2 * M, "L_build": ef_construction} if "R" in params else {}


@pytest.mark.parametrize("kind", MAIN_KINDS)
def test_crud_and_search_matches_brute_force(tmp_path, records, kind):
    ids, vectors, metas, docs, queries = records
    with _open(tmp_path / "db") as db:
        col = db.create_collection("words", dim=384, metric="cosine", index=kind, **_build_params(kind, 16, 100))
        assert col.upsert(ids, vectors, metas, docs) == len(ids)
        assert col.count() == len(ids)
        truth = _exact_hits(vectors, ids, queries, 10)
        assert _recall(col.search_batch(queries, k=10), truth) == 1.0  # exact while unindexed
        db.optimize()
        assert col.stats()["indexed"] == len(ids) and col.stats()["index"] == kind
        assert type(col._vectors.main) is main_index_class(kind)
        hits = col.search_batch(queries, k=10, ef=100)
        assert _recall(hits, truth) >= 0.95
        first = hits[0][0]
        assert set(first) == {"id", "distance", "metadata", "document"}
        assert first["metadata"] == metas[ids.index(first["id"])]
        assert first["document"] == docs[ids.index(first["id"])]

        got = col.get(["doc-00003", "nope", "doc-00001"], include=["metadatas", "documents", "embeddings"])
        assert [r["id"] for r in got] == ["doc-00003", "doc-00001"]
        assert np.allclose(got[1]["embedding"], vectors[1] / np.linalg.norm(vectors[1]), atol=1e-6)

        # upsert replaces vector, metadata and document
        col.upsert(["doc-00001"], vectors[[500]], [{"pos": "x"}], ["replaced"])
        assert col.count() == len(ids)
        top = col.search(vectors[500], k=2)
        assert {h["id"] for h in top} == {"doc-00001", "doc-00500"}
        assert col.get(["doc-00001"])[0] == {"id": "doc-00001", "metadata": {"pos": "x"}, "document": "replaced"}

        assert col.delete(["doc-00500", "doc-00002"]) == 2
        assert col.count() == len(ids) - 2
        assert all(h["id"] not in ("doc-00500", "doc-00002") for row in col.search_batch(queries, 50) for h in row)
        with pytest.raises(UnknownIdError, match="doc-00500"):
            col.delete(["doc-00500", "doc-00003"])
        assert col.count() == len(ids) - 2 and col.get(["doc-00003"])  # nothing deleted by the refused call
        assert col.delete(["doc-00500"], missing_ok=True) == 0


@pytest.mark.parametrize("kind", MAIN_KINDS)
def test_filters_equal_brute_force(tmp_path, records, kind):
    ids, vectors, metas, docs, queries = records
    with _open(tmp_path / "db") as db:
        col = db.create_collection("words", dim=384, index=kind)
        col.upsert(ids, vectors, metas, docs)
        db.optimize()
        cases = [
            ({"pos": "n"}, lambda m: m["pos"] == "n"),
            ({"year": {"$gte": 2010, "$lt": 2015}}, lambda m: 2010 <= m["year"] < 2015),
            ({"$or": [{"pos": "v"}, {"score": {"$gt": 9.5}}]}, lambda m: m["pos"] == "v" or m["score"] > 9.5),
            ({"pos": {"$in": ["a", "r"]}, "tags.even": True}, lambda m: m["pos"] in "ar" and m["tags"]["even"]),
            ({"$not": {"pos": {"$nin": ["n"]}}}, lambda m: m["pos"] == "n"),
            ({"pos": {"$ne": "n"}, "year": 1995}, lambda m: m["pos"] != "n" and m["year"] == 1995),
            ({"date": {"$gte": {"$date": "2020-01-01"}}}, lambda m: m["date"] >= "2020-01-01"),
            ({"missing": {"$exists": False}, "score": {"$lte": 0.5}}, lambda m: m["score"] <= 0.5),
        ]
        for where, predicate in cases:
            mask = np.array([predicate(m) for m in metas])
            assert 0 < mask.sum() < len(ids), where
            assert {r["id"] for r in col.get(where=where)} == {ids[i] for i in np.flatnonzero(mask)}, where
            k = min(10, int(mask.sum()))
            hits = col.search_batch(queries, k=k, where=where, ef=200)
            assert all(predicate(h["metadata"]) for row in hits for h in row), where
            assert _recall(hits, _exact_hits(vectors, ids, queries, k, mask)) >= 0.95, where
        n_deleted = col.delete(where={"pos": "r", "year": {"$lt": 2000}})
        assert n_deleted == sum(m["pos"] == "r" and m["year"] < 2000 for m in metas)
        assert not col.get(where={"pos": "r", "year": {"$lt": 2000}})
        # repeated filters are cached per version of the data: a write must show up in the next search
        assert col.search(queries[0], k=1, where={"pos": "n"})[0]["id"] != "fresh"
        col.upsert(["fresh"], queries[:1], [{"pos": "n"}])
        assert col.search(queries[0], k=1, where={"pos": "n"})[0]["id"] == "fresh"
        col.delete(["fresh"])
        assert col.search(queries[0], k=1, where={"pos": "n"})[0]["id"] != "fresh"


@pytest.mark.parametrize("where, message", [
    ({"pos": {"$gtx": 1}}, r"where\.pos\.\$gtx: unknown operator"),
    ({"$and": {"pos": "n"}}, r"where\.\$and: \$and takes a non-empty list"),
    ({"$or": [{"pos": "n"}, {"year": {"$in": []}}]}, r"where\.\$or\[1\]\.year\.\$in: .*non-empty list"),
    ({"year": {"$gt": True}}, r"where\.year\.\$gt: \$gt does not apply to bool"),
    ({"date": {"$lt": {"$date": "yesterday"}}}, r"where\.date\.\$lt: 'yesterday' is not an ISO-8601"),
    ({"bad field!": 1}, r"where\.bad field!: field names"),
    ({"$xor": []}, r"where\.\$xor: unknown logical operator"),
    ([1, 2], r"where: expected an object"),
    ({"score": float("nan")}, r"where\.score: numbers in filters must be finite"),
])
def test_invalid_filters_point_at_the_bad_part(tmp_path, where, message):
    with _open(tmp_path / "db") as db:
        col = db.create_collection("c", dim=4)
        col.upsert(["a"], np.ones((1, 4)), [{"pos": "n"}])
        with pytest.raises(FilterError, match=message):
            col.search(np.ones(4), k=1, where=where)
        with pytest.raises(FilterError, match=message):
            col.delete(where=where)
        assert col.count() == 1


def test_bad_input_is_refused_and_changes_nothing(tmp_path):
    with _open(tmp_path / "db") as db:
        col = db.create_collection("c", dim=3, metric="l2")
        col.upsert(["a", "b"], np.eye(3)[:2], [{"x": 1}, None], ["A", None])
        bad = [
            (lambda: col.upsert(["c"], np.ones((1, 4))), DimensionMismatchError),
            (lambda: col.upsert(["c"], np.array([[1.0, np.nan, 0]])), InvalidInputError),
            (lambda: col.upsert(["c", "c"], np.ones((2, 3))), DuplicateIdError),
            (lambda: col.upsert(["c", "d"], np.ones((1, 3))), InvalidInputError),
            (lambda: col.upsert([1], np.ones((1, 3))), InvalidInputError),
            (lambda: col.upsert(["c"], np.ones((1, 3)), [{"v": float("inf")}]), InvalidInputError),
            (lambda: col.upsert(["c"], np.ones((1, 3)), [{"v": object()}]), InvalidInputError),
            (lambda: col.upsert(["c"], np.ones((1, 3)), ["not a dict"]), InvalidInputError),
            (lambda: col.upsert(["c"], np.ones((1, 3)), None, [5]), InvalidInputError),
            (lambda: col.upsert(["c"], [["x", "y", "z"]]), InvalidInputError),
            (lambda: col.search(np.ones(3), k=0), InvalidInputError),
            (lambda: col.search(np.ones(2), k=1), DimensionMismatchError),
            (lambda: col.search(np.ones(3), k=1, include=["vectors"]), InvalidInputError),
            (lambda: col.delete(), InvalidInputError),
            (lambda: db.create_collection("../x", dim=3), InvalidInputError),
            (lambda: db.create_collection("c", dim=3), CollectionExistsError),
            (lambda: db.create_collection("d", dim=0), InvalidInputError),
            (lambda: db.create_collection("d", dim=3, metric="hamming"), InvalidInputError),
            (lambda: db.create_collection("d", dim=3, M=1), InvalidInputError),
            (lambda: db.create_collection("d", dim=3, bogus=1), InvalidInputError),
            (lambda: db.get_collection("zzz"), CollectionNotFoundError),
        ]
        for call, error in bad:
            with pytest.raises(error):
                call()
        assert db.list_collections() == ["c"]
        assert col.count() == 2
        assert col.get(include=["metadatas", "documents"]) == [
            {"id": "a", "metadata": {"x": 1}, "document": "A"}, {"id": "b", "metadata": {}, "document": None}]
        assert not (tmp_path / "x").exists() and not (tmp_path / "db" / "x").exists()


_RECOVERY_WRITER = """
import json, sys, numpy as np, simdex
path, data, kind = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
vectors, queries = data[:2000], data[2000:]
ids = [f"doc-{i:05d}" for i in range(2000)]
db = simdex.connect(path, background=False, sync="always")
col = db.create_collection("words", dim=384, index=kind, **json.loads(sys.argv[4]))
col.upsert(ids[:1000], vectors[:1000], [{"i": i} for i in range(1000)])
db.optimize()
db.checkpoint()
col.upsert(ids[1000:], vectors[1000:], [{"i": i} for i in range(1000, 2000)])  # only in the log
col.delete(ids[:100])
print(json.dumps([[h["id"] for h in r] for r in col.search_batch(queries, k=10, ef=400)]))
print("done", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("kind", MAIN_KINDS)
def test_reopen_recovers_log_and_checkpoints(tmp_path, records, kind):
    """A writer killed (SIGKILL) after a checkpoint and more writes in the log: on reopen the log is replayed
    onto the checkpoint and the searches give what they gave before the crash."""
    ids, vectors, metas, docs, queries = records
    path = tmp_path / "db"
    np.save(tmp_path / "data.npy", np.concatenate([vectors, queries]))
    params = json.dumps(_build_params(kind, 12, 80))
    expected = json.loads(run_then_kill(_RECOVERY_WRITER, str(path), str(tmp_path / "data.npy"), kind, params)[0])
    with _open(path) as db2:
        col2 = db2.get_collection("words")
        assert col2.count() == len(ids) - 100
        assert any("replayed" in note for note in col2.recovery_notes)
        assert [[h["id"] for h in r] for r in col2.search_batch(queries, k=10, ef=400)] == expected
        assert col2.get([ids[0]]) == [] and col2.get([ids[1500]])[0]["metadata"] == {"i": 1500}
        if MAIN_INDEXES[kind].trained:  # an index over codes keeps its float32 vectors in a file after a restart
            import mmap
            main = col2._vectors.main
            main = getattr(main, "spann", main)  # (a build-once collection's index)
            base = main._g.vectors if hasattr(main, "_g") else main._vectors  # (a Vamana graph's arrays)
            while base is not None and not isinstance(base, (np.memmap, mmap.mmap)):
                base = base.base
            assert base is not None


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "db"
    with _open(path) as db:
        db.create_collection("c", dim=2).upsert(["a"], [[1.0, 2.0]])
        import subprocess
        import sys
        code = ("import simdex, sys\n"
                "try:\n    simdex.connect(sys.argv[1])\nexcept simdex.errors.DatabaseLockedError as e:\n"
                "    print('LOCKED', e); sys.exit(3)\n")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 3, out.stderr
        assert "open for writing by another process" in out.stdout
        with simdex.connect(path, read_only=True) as view:  # a read-only view works beside the writer
            stored = view.get_collection("c").get(["a"], include=["embeddings"])[0]["embedding"]
            assert stored == pytest.approx([1 / 5 ** 0.5, 2 / 5 ** 0.5])  # cosine: stored unit length
    with simdex.connect(path, read_only=True) as ro:
        col = ro.get_collection("c")
        assert col.count() == 1
        with pytest.raises(ReadOnlyError):
            col.upsert(["b"], [[0.0, 1.0]])
        with pytest.raises(ReadOnlyError):
            ro.create_collection("d", dim=2)


def test_drop_and_recreate(tmp_path):
    with _open(tmp_path / "db") as db:
        db.create_collection("c", dim=2).upsert(["a"], [[1.0, 2.0]])
        db.drop_collection("c")
        assert db.list_collections() == []
        with pytest.raises(CollectionNotFoundError):
            db.drop_collection("c")
        col = db.create_collection("c", dim=3)
        assert col.count() == 0
    assert sorted(os.listdir(tmp_path / "db" / "collections")) == ["c"]
    assert json.loads((tmp_path / "db" / "collections" / "c" / "config.json").read_text())["dim"] == 3


def test_background_optimizer_indexes_without_blocking(tmp_path, records):
    ids, vectors, metas, docs, queries = records
    with simdex.connect(tmp_path / "db", sync="batch", merge_rows=500) as db:
        col = db.create_collection("w", dim=384, M=12, ef_construction=64)
        for start in range(0, 2000, 250):
            col.upsert(ids[start:start + 250], vectors[start:start + 250], metas[start:start + 250])
            assert col.count() == start + 250  # reads never miss acknowledged rows during merges
        import time
        deadline = time.time() + 120
        while col.stats()["unindexed"] and time.time() < deadline:
            time.sleep(0.2)
        stats = col.stats()
        assert stats["unindexed"] == 0 and stats["indexed"] == 2000 and stats["background_error"] is None
        assert _recall(col.search_batch(queries, 10, ef=200), _exact_hits(vectors, ids, queries, 10)) >= 0.95


_WRITER = """
import sys, numpy as np, simdex
db = simdex.connect(sys.argv[1], sync="off", merge_rows=200, checkpoint_bytes=60_000, log_segment_bytes=20_000)
col = db.get_or_create_collection("c", dim=16, metric="l2", index="flat")
rng = np.random.default_rng(0)
for b in range(100_000):
    col.upsert([f"b{b}-{j}" for j in range(20)], rng.random((20, 16), dtype=np.float32), [{"batch": b}] * 20)
    if b % 7 == 6:
        col.delete([f"b{b - 3}-0"])
    print(b, flush=True)
"""


def test_read_only_views_beside_a_live_writer(tmp_path):
    """Another process writes without pause (checkpoints and log cuts every few batches); read-only views opened
    meanwhile each hold a consistent state: whole batches 0..m (with the deletes made by then), m at least the
    last batch acknowledged before the view was opened. (Each upsert and each delete is one write: a view holds a
    prefix of the writes.)"""
    import subprocess
    import sys
    path = tmp_path / "db"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        acked, target = -1, 40
        for _ in range(6):
            while acked < target:  # let some batches land between views
                acked = int(writer.stdout.readline())
            before, target = acked, acked + 15
            with simdex.connect(path, read_only=True) as view:
                col = view.get_collection("c")
                got = {}
                for r in col.get(include=["metadatas"]):
                    got.setdefault(r["metadata"]["batch"], set()).add(r["id"])
                last = max(got)
                assert last >= before and sorted(got) == list(range(last + 1))
                # the delete that follows batch b's upsert is a write of its own: a view may fall between the two,
                # so the last batch's delete may or may not be in it; every earlier one must be
                deleted = {b - 3 for b in range(last) if b % 7 == 6}
                pending = {last - 3} if last % 7 == 6 else set()
                for b, present in got.items():
                    allowed = {19, 20} if b in pending else {20 - (b in deleted)}
                    assert len(present) in allowed, (b, len(present), last)
                assert view.stats()["view"]["age_s"] >= 0
                q = np.full((1, 16), 0.5, np.float32)
                assert len(col.search(q, k=5, include=[])) == 5
    finally:
        writer.kill()
        writer.wait()



def test_closed_and_read_only_databases_refuse_clearly(tmp_path, records):
    ids, vectors, metas, docs, queries = records
    path = tmp_path / "db"
    db = _open(path)
    col = db.create_collection("c", dim=384, index="flat")
    col.upsert(ids[:5], vectors[:5])
    db.close()
    for call in (lambda: col.count(), lambda: col.get(ids[:1]), lambda: col.search(vectors[0]),
                 lambda: col.upsert(["x"], vectors[:1]), lambda: col.stats()):
        with pytest.raises(InvalidInputError, match="closed"):
            call()
    with pytest.raises(ReadOnlyError, match="closed"):
        db.get_collection("c")
    with simdex.connect(path, read_only=True) as ro:
        for call in (lambda: ro.drop_collection("c"), lambda: ro.checkpoint(), lambda: ro.optimize(),
                     lambda: ro.get_collection("c").checkpoint(), lambda: ro.get_collection("c").delete(["a"])):
            with pytest.raises(ReadOnlyError):
                call()
        assert ro.get_collection("c").count() == 5


def test_optimize_wait_idle_leaves_nothing_unindexed(tmp_path, records):
    ids, vectors, metas, docs, queries = records
    with simdex.connect(tmp_path / "db", sync="off", merge_rows=100) as db:  # the background optimizer runs
        col = db.create_collection("c", dim=384, M=8, ef_construction=40)
        for s in range(0, 1000, 100):
            col.upsert(ids[s:s + 100], vectors[s:s + 100])
        db.optimize(wait_idle=True)
        stats = col.stats()
        assert stats["unindexed"] == 0 and stats["indexed"] == 1000


@pytest.mark.parametrize("kind", TRAINED)
def test_code_index_waits_for_rows_to_train_on(tmp_path, records, kind):
    """A codec trained on one row encodes the others as nearly nothing (int8: recall@10 0.03): the first code
    index is built only once enough rows wait, and searches are exact until then; later merges train it again."""
    ids, vectors, metas, docs, queries = records
    with _open(tmp_path / "db") as db:
        col = db.create_collection("words", dim=384, index=kind, **_build_params(kind, 8, 40))
        col.upsert(ids[:1], vectors[:1])
        db.optimize()  # a merge now would train the codec on one row
        assert col.stats()["indexed"] == 0
        col.upsert(ids[1:600], vectors[1:600])
        db.optimize()
        assert col.stats()["indexed"] == 0  # still fewer than 1,000: exact
        assert _recall(col.search_batch(queries, k=10), _exact_hits(vectors[:600], ids[:600], queries, 10)) == 1.0
        col.upsert(ids[600:], vectors[600:])
        db.optimize()
        main = col._vectors.main
        assert col.stats()["indexed"] == len(ids) and main.trained_rows == len(ids)
        assert _recall(col.search_batch(queries, k=10, ef=64), _exact_hits(vectors, ids, queries, 10)) >= 0.9


def test_ivf_collection_sizes_its_lists_and_keeps_codes_in_memory(tmp_path, records):
    """An ivf-pq collection: the lists follow its size as it grows (trained again at merges), its memory holds
    PQ codes, not the float32 vectors, and ``ef`` is the number of lists probed."""
    from simdex.store.config import sized_params
    ids, vectors, metas, docs, queries = records
    truth = _exact_hits(vectors, ids, queries, 10)
    with _open(tmp_path / "db") as db:
        col = db.create_collection("words", dim=384, index="ivf-pq")
        nlists = []
        for s in range(0, len(ids), 500):
            col.upsert(ids[s:s + 500], vectors[s:s + 500])
            db.optimize()
            if col._vectors.main is not None:
                nlists.append(col._vectors.main.nlist)
        main = col._vectors.main
        assert col.stats()["indexed"] == len(ids) and nlists[0] < nlists[-1]
        assert main.nlist == sized_params("ivf-pq", {}, len(ids))["nlist"] and main.trained_rows == len(ids)
        assert main.nbytes < vectors.nbytes / 4  # 48-byte codes instead of 1,536 bytes of float32 per vector
        assert _recall(col.search_batch(queries, k=10, ef=1), truth) < \
            _recall(col.search_batch(queries, k=10, ef=main.nlist), truth)
        assert _recall(col.search_batch(queries, k=10, ef=main.nlist), truth) >= 0.95
    with _open(tmp_path / "db") as db:  # and after a restart, with the same lists and probes
        col = db.get_collection("words")
        assert col._vectors.main.nlist == main.nlist and col._vectors.main.nprobe == main.nprobe
        assert _recall(col.search_batch(queries, k=10), truth) >= 0.85


@pytest.mark.parametrize("kind, params", [("ivf-pq", {}), ("ivf-pq", {"reads": "pread"}), ("ivf-rabitq", {}),
                                          ("hnsw-lvq8", {}), ("hnsw-int8", {})])
def test_code_collection_appends_to_one_vector_file(tmp_path, records, kind, params):
    """A collection over codes keeps its float32 vectors in one append-only file (vectors-<n>.f32) that every merge's
    copy of the index shares: a merge appends its rows to the file instead of copying the vectors, a checkpoint
    names the file and its row count instead of writing them again; a compaction writes a new file, and the old
    one goes once no checkpoint names it; a backup holds the named rows and restores to the same results; a file
    a crashed merge left is removed when the collection opens. With ``reads="pread"`` every copy of the index
    re-ranks from the file with system calls."""
    from simdex._storage import row_source
    from simdex.core.scorer import FileRows
    from simdex.store.backup import restore
    ids, vectors, metas, docs, queries = records
    n = len(ids)
    path = tmp_path / "db"

    def reads_rows(col):  # the index reads as asked, and could read its file's rows with system calls
        main = col._vectors.main
        return getattr(main, "reads", "mmap") == params.get("reads", "mmap") and \
            isinstance(row_source(main._vectors), FileRows)

    with _open(path, merge_rows=500) as db:
        col = db.create_collection("words", dim=384, index=kind, **params)
        files, sizes = set(), []
        for s in range(0, n, 500):
            col.upsert(ids[s:s + 500], vectors[s:s + 500])
            db.optimize()
            col.checkpoint()
            if col._vectors.main is not None:
                files.add(col._vectors.main.vector_file.name)
                sizes.append(os.path.getsize(col.path / col._manifest["main"]))
        assert len(files) == 1 and col._manifest["vectors"] in files and col._manifest["vector_rows"] == n
        # the checkpoint's index file holds codes and lists, and names the file of the float32 vectors
        _, meta, arrays = simdex.fileformat.load_arrays(col.path / col._manifest["main"])
        assert "vectors" not in arrays and meta["vector_file"] == col._manifest["vectors"]
        # what the checkpoints' index files grew by (codes, lists or links) is less than the vectors added
        assert sizes[-1] - sizes[0] < (n - 500) * 384 * 4
        stored = np.fromfile(col.path / col._manifest["vectors"], np.float32, n * 384).reshape(n, 384)
        # slot order = upsert order here; cosine: stored unit length
        assert np.allclose(stored, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), atol=1e-6)
        truth = _exact_hits(vectors, ids, queries, 10)
        before = col.search_batch(queries, k=10, ef=64, include=["distances"])
        assert _recall(before, truth) >= 0.9 and reads_rows(col)
        col.delete(ids[:800])  # 40%: the next merge compacts into a new file
        db.optimize()
        col.checkpoint()
        compacted = col._vectors.main.vector_file.name
        assert compacted not in files and col._manifest["vector_rows"] == n - 800
        col.checkpoint(force=True)  # the previous checkpoint, which named the old file, is gone with it
        assert sorted(p.name for p in col.path.glob("vectors-*.f32")) == [compacted]
        live_truth = _exact_hits(vectors[800:], ids[800:], queries, 10)
        after = col.search_batch(queries, k=10, ef=64, include=["distances"])
        assert _recall(after, live_truth) >= 0.9 and reads_rows(col)
        db.backup(str(tmp_path / "backup"))
    (path / "collections" / "words" / "vectors-99.f32").write_bytes(b"\0" * 1536)  # a crashed merge's file
    for folder in (path, tmp_path / "restored"):
        if folder != path:
            restore(tmp_path / "backup", folder)
        with _open(folder) as db:
            col = db.get_collection("words")
            assert not (col.path / "vectors-99.f32").exists()
            again = col.search_batch(queries, k=10, ef=64, include=["distances"])
            assert [[h["id"] for h in row] for row in again] == [[h["id"] for h in row] for row in after]
            assert reads_rows(col)
            col.upsert(ids[:300], vectors[:300])  # appends after the rows the checkpoint names
            db.optimize()
            assert _recall(col.search_batch(queries, k=10, ef=64),
                           _exact_hits(np.concatenate([vectors[800:], vectors[:300]]), ids[800:] + ids[:300],
                                       queries, 10)) >= 0.9


@pytest.mark.parametrize("kind", ["ivf-pq", "hnsw-lvq8"])
def test_checkpoint_holding_its_vectors_moves_them_into_a_vector_file(tmp_path, records, kind):
    """A checkpoint written before vector files (the code index's snapshot holds the float32 vectors) opens, the
    vectors move into a vector file, and a checkpoint naming it is written; results are the same."""
    ids, vectors, metas, docs, queries = records
    with _open(tmp_path / "db") as db:
        col = db.create_collection("words", dim=384, index=kind)
        col._vectors.vector_files = False  # as the release before wrote them
        col.upsert(ids, vectors)
        db.optimize()
        col.checkpoint()
        assert "vectors" not in col._manifest and not list(col.path.glob("vectors-*.f32"))
        _, _, arrays = simdex.fileformat.load_arrays(col.path / col._manifest["main"])
        assert arrays["vectors"].shape == (len(ids), 384)
        before = col.search_batch(queries, k=10, include=["distances"])
    with _open(tmp_path / "db") as db:
        col = db.get_collection("words")
        assert col._vectors.main.vector_file is not None
        assert col.search_batch(queries, k=10, include=["distances"]) == before
        assert col._manifest["vectors"] == col._vectors.main.vector_file.name
        assert col._manifest["vector_rows"] == len(ids)
    with _open(tmp_path / "db") as db:
        assert db.get_collection("words").search_batch(queries, k=10, include=["distances"]) == before


@pytest.mark.parametrize("kind, params", [("hnsw-lvq8", {"M": 8, "rerank": 60}), ("ivf-pq", {"nlist": 32})])
def test_side_indexes_beside_every_main_kind(tmp_path, records, kind, params):
    """The label graphs and the window tree are float32 HNSW graphs whatever the main index is: they take the
    collection's HNSW parameters and ignore the others (an ivf-pq collection's nlist, a code collection's rerank)."""
    ids, vectors, metas, docs, queries = records
    with _open(tmp_path / "db") as db:
        col = db.create_collection("words", dim=384, index=kind, label_field="pos", window_field="year", **params)
        col.label_graph_min = 100
        col.upsert(ids, vectors, metas)
        db.optimize()
        assert set(col.stats()["label_graphs"]) == set(POS) and col.stats()["window"] is not None
        for where, keep in (({"pos": "v"}, lambda m: m["pos"] == "v"),
                            ({"year": {"$gte": 2000, "$lt": 2010}}, lambda m: 2000 <= m["year"] < 2010)):
            mask = np.array([keep(m) for m in metas])
            hits = col.search_batch(queries, k=10, where=where, ef=100)
            assert all(keep(h["metadata"]) for row in hits for h in row)
            assert _recall(hits, _exact_hits(vectors, ids, queries, 10, mask)) >= 0.9


def test_build_once_collection_merges_by_building_anew(tmp_path, records, monkeypatch):
    """A spann collection's index is built once: new rows wait in the growing segment until they are a tenth of
    the index, then a merge builds a new index from every live row into a new folder; writes made during that
    build are kept, and the old folder goes once no checkpoint names it."""
    ids, vectors, metas, docs, queries = records
    with _open(tmp_path / "db") as db:
        # bad build parameters are refused when the collection is created, not at its first merge
        for bad, message in (({"codec": "pq16"}, "int8 or LVQ codes"), ({"list_size": 0}, "list_size")):
            with pytest.raises(InvalidInputError, match=message):
                db.create_collection("bad", dim=384, index="spann", **bad)
        col = db.create_collection("words", dim=384, index="spann", list_size=32)
        col.upsert(ids[:1500], vectors[:1500])
        db.optimize()
        first = col._vectors.main.folder
        col.upsert(ids[1500:1600], vectors[1500:1600])
        assert not col._vectors.needs_rebuild()  # 100 new rows: fewer than a tenth of 1,500
        col._vectors.last_write -= 60
        assert col._vectors.needs_rebuild()  # ... but more than 1% once the writes have stopped
        col.upsert(ids[1600:1700], vectors[1600:1700])
        assert col._vectors.needs_rebuild()  # 200: more than a tenth
        side = col._vectors
        build = side.build

        def build_with_writes(snapshot, threads):
            out = build(snapshot, threads)
            # outside the collection's locks, between the cut and the swap: these must reach the new index
            col.upsert(["late"], queries[:1])
            col.delete([ids[0], ids[1550]])  # a row of the old index and one the build moved from the growing part
            return out

        monkeypatch.setattr(side, "build", build_with_writes)
        db.optimize()
        monkeypatch.undo()
        main = col._vectors.main
        assert main.folder != first and col.count() == 1700 - 2 + 1
        assert col.search(queries[0], k=1)[0]["id"] == "late"
        hits = col.search_batch(queries, k=10, ef=64)
        assert all(h["id"] not in (ids[0], ids[1550]) for row in hits for h in row)
        keep = np.array([i not in (0, 1550) for i in range(1700)])
        assert _recall(col.search_batch(queries[1:], k=10, ef=64),
                       _exact_hits(vectors[:1700], ids[:1700], queries[1:], 10, keep)) >= 0.9
        db.checkpoint()
        folder = tmp_path / "db" / "collections" / "words"
        assert (folder / main.folder).is_dir() and not (folder / first).exists()
    with _open(tmp_path / "db") as db:
        col = db.get_collection("words")
        assert col.count() == 1699 and col._vectors.main.folder == main.folder
        assert col.search(queries[0], k=1)[0]["id"] == "late" and not col.get([ids[0]])


@pytest.mark.parametrize("kind", ["hnsw", "hnsw-lvq8"])
def test_graph_collections_consolidate_by_a_fresh_build(tmp_path, records, kind, monkeypatch):
    """A merge that finds a fifth of an HNSW collection's graph deleted builds a fresh graph of the live rows
    instead of repairing the old one: repeated repairs under churn wore a crash-test collection's graph down to
    recall@10 0.67 at ef 64, where a fresh build of the same rows gave 0.96."""
    from simdex import HNSWIndex
    ids, vectors, metas, docs, queries = records
    rebuilds = []
    rebuild = HNSWIndex._rebuild
    monkeypatch.setattr(HNSWIndex, "_rebuild", lambda self, threads: rebuilds.append(self._n) or rebuild(self, threads))
    with _open(tmp_path / "db") as db:
        col = db.create_collection("words", dim=384, index=kind, M=8, ef_construction=40)
        col.upsert(ids, vectors)
        db.optimize()
        assert rebuilds == []
        col.delete(ids[:500])  # a quarter of the graph: repaired before (a rebuild was only for over half)
        db.optimize()
        assert rebuilds == [len(ids)] and col.stats()["deleted_in_index"] == 0
        keep = np.arange(len(ids)) >= 500
        assert _recall(col.search_batch(queries, k=10, ef=64), _exact_hits(vectors, ids, queries, 10, keep)) >= 0.9


def test_a_quiet_collection_compacts_its_log(tmp_path, records):
    """Churn leaves the log holding every record since the checkpoint before the last (kept to recover from a
    damaged checkpoint); once nothing has been written for a while, a second checkpoint of the same state lets it
    all go (what the background thread does after COMPACT_IDLE_SECONDS), and nothing written is lost."""
    ids, vectors, metas, docs, queries = records
    path = tmp_path / "db"
    with _open(path) as db:
        col = db.create_collection("c", dim=384, M=12, ef_construction=64)
        for start in range(0, 2000, 250):
            col.upsert(ids[start:start + 250], vectors[start:start + 250], metas[start:start + 250])
        col.delete(ids[:500])
        db.optimize()
        db.checkpoint()
        col.upsert(ids[:100], vectors[1000:1100])  # new vectors for old ids
        db.optimize()
        db.checkpoint()
        before = col.stats()["log_bytes"]
        assert before > 2 << 20 and not col.needs_compaction(idle_seconds=3600)  # written just now
        assert col.needs_compaction(idle_seconds=0)
        assert col.compact_log()
        assert col.stats()["log_bytes"] == 0 and not col.needs_compaction(idle_seconds=0)
        folder = path / "collections" / "c"
        # the checkpoint before (and its main index file) is gone with the log it served
        assert len(list(folder.glob("main-*.sdx"))) == 1 and len(list((folder / "wal").glob("*.log"))) == 1
        col.upsert(["after"], vectors[1500:1501])
        want = {r["id"]: r["embedding"] for r in col.get(include=["embeddings"])}
    with _open(path) as db:
        col = db.get_collection("c")
        got = {r["id"]: r["embedding"] for r in col.get(include=["embeddings"])}
        assert got.keys() == want.keys() and len(got) == 2000 - 500 + 100 + 1
        np.testing.assert_allclose(got[ids[5]], vectors[1005] / np.linalg.norm(vectors[1005]), atol=1e-6)


def test_search_rows_come_from_memory_and_follow_writes(tmp_path, records):
    """A search reads its hits' rows (id, metadata, document) from an in-memory cache of row versions: the same
    answers as SQLite's, a replaced or deleted record's old row is never served, and the cache keeps to its
    byte budget."""
    ids, vectors, metas, docs, queries = records
    with _open(tmp_path / "db") as db:
        col = db.create_collection("words", dim=384, metric="cosine", M=16, ef_construction=100)
        col.upsert(ids, vectors, metas, docs)
        db.optimize()
        meta = col._meta
        uncached = meta.row_cache_bytes
        meta.row_cache_bytes = 0  # every fetch reads SQLite (the cache starts again after each)
        truth_ids = col.search_batch(queries, 10, include=["distances"])
        truth_records = col.search_batch(queries, 10)
        assert not meta._rows
        meta.row_cache_bytes = uncached
        assert col.search_batch(queries, 10, include=["distances"]) == truth_ids  # fills ids only
        assert all(len(row) == 1 for row in meta._rows.values())
        assert col.search_batch(queries, 10) == truth_records  # ids-only rows are read again with contents
        assert col.search_batch(queries, 10, include=["distances"]) == truth_ids  # served from memory
        assert [col.search(q, 10, include=["distances"]) for q in queries] == truth_ids  # one query per call
        assert not meta._decoded  # nested metadata ("tags") is decoded for each search, never kept
        mine = col.search(queries[0], 10)
        mine[0]["metadata"]["tags"]["even"] = "changed by the caller"
        assert mine != truth_records[0] and col.search(queries[0], 10) == truth_records[0]
        hit = truth_records[0][0]
        rid = col._meta.current_rids([hit["id"]])[hit["id"]]
        cached = meta._rows[rid]
        assert (cached[0], json.loads(cached[1]), cached[2]) == (hit["id"], hit["metadata"], hit["document"])

        col.upsert([hit["id"]], vectors[[ids.index(hit["id"])]], [{"pos": "replaced"}], ["new text"])
        assert rid not in meta._rows and meta.fetch([rid]) == {}  # the old row version is gone
        top = col.search(queries[0], 1)[0]
        assert (top["id"], top["metadata"], top["document"]) == (hit["id"], {"pos": "replaced"}, "new text")
        # fewer matches than k: the ids-only hits skip the "no hit" slots
        assert [h["id"] for h in col.search(queries[0], 10, {"pos": "replaced"}, ["distances"])] == [hit["id"]]
        new_rid = col._meta.current_rids([hit["id"]])[hit["id"]]
        assert new_rid in meta._rows
        col.delete([hit["id"]])
        assert new_rid not in meta._rows and meta.fetch([new_rid]) == {}
        assert all(h["id"] != hit["id"] for row in col.search_batch(queries, 10) for h in row)

        meta.row_cache_bytes = 0
        expected = col.search_batch(queries, 10)
        meta.row_cache_bytes = 4096  # a few rows: the cache starts again many times within one batch
        for _ in range(3):
            assert col.search_batch(queries, 10) == expected
            assert meta._rows_bytes <= meta.row_cache_bytes


def test_flat_metadata_is_kept_decoded_and_handed_out_as_copies(tmp_path, records):
    """Metadata without nested values is decoded once and kept beside its cached row: every search gets its own
    copy, and a replaced record's kept metadata is dropped with its row."""
    ids, vectors, metas, docs, queries = records
    flat = [{k: v for k, v in m.items() if k != "tags"} for m in metas[:300]]
    with _open(tmp_path / "db") as db:
        col = db.create_collection("flat", dim=384, metric="cosine", index="flat")
        col.upsert(ids[:300], vectors[:300], flat, docs[:300])
        meta = col._meta
        first = col.search(queries[0], 10)
        assert [h["metadata"] for h in first] == [flat[ids.index(h["id"])] for h in first]
        assert len(meta._decoded) == 10
        first[0]["metadata"]["pos"] = "changed by the caller"
        again = col.search(queries[0], 10)
        assert [h["metadata"] for h in again] == [flat[ids.index(h["id"])] for h in again]
        assert again[0]["metadata"] is not first[0]["metadata"]
        top = again[0]["id"]
        col.upsert([top], vectors[[ids.index(top)]], [{"pos": "replaced"}], ["new text"])
        assert len(meta._decoded) == 9  # the old row's metadata went with it
        assert col.search(queries[0], 1)[0]["metadata"] == {"pos": "replaced"}


def test_rabitq_graph_collection_takes_bits_and_fill(tmp_path, records):
    """A rabitq-graph collection passes ``bits`` and ``fill`` to its index, keeps them across a restart, and refuses
    a ``fill`` that is not a bool or ``bits`` out of 1-8 without creating anything."""
    ids, vectors, _, _, queries = records
    with _open(tmp_path / "db") as db:
        col = db.create_collection("plain", dim=384, index="rabitq-graph", fill=False, bits=2)
        col.upsert(ids[:600], vectors[:600])
        db.optimize()
        main = col._vectors.main
        assert main.fill is False and main.bits == 2
        got = col.search_batch(queries, k=10, include=["distances"])
        for bad in ({"fill": "no"}, {"fill": 1}, {"bits": 9}, {"bits": 0}):
            with pytest.raises(InvalidInputError, match="fill|bits"):
                db.create_collection("bad", dim=384, index="rabitq-graph", **bad)
        assert "bad" not in db.list_collections()
    with _open(tmp_path / "db") as db:
        col = db.get_collection("plain")
        main = col._vectors.main
        assert main.fill is False and main.bits == 2
        assert [[h["id"] for h in hits] for hits in col.search_batch(queries, k=10, include=["distances"])] == \
            [[h["id"] for h in hits] for hits in got]
