"""Named vector fields (issue 23, part 3): dense, multivector and sparse fields beside the main vector, searched
alone or fused, compared with numpy brute force on real data; in process and over HTTP (the same tests), through
restarts and log replay, and with bad input refused without changing what is stored.

The records are WordNet glosses: the main vector is the gloss's MiniLM embedding; the dense field ``image`` holds
Fashion-MNIST images (any real vectors serve: what is tested is that each field is searched on its own values);
the multivector field ``sents`` holds sets of consecutive gloss embeddings (as in tests/test_multivector.py);
the sparse field ``terms`` holds each gloss's word counts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
import zlib
from collections import Counter

import numpy as np
import pytest

import simdex
from simdex import datasets
from simdex.embed import Embedder
from simdex.errors import DimensionMismatchError, InvalidInputError, InvalidTypeError
from simdex.sparse.fusion import rrf

from ._live import local_or_remote

N = 240
FIELDS = {"image": {"type": "dense", "dim": 784, "metric": "l2", "index": "flat"},
          "sents": {"type": "multivector", "dim": 384},
          "terms": {"type": "sparse"}}


@pytest.fixture(scope="module")
def records(wordnet_small, fashion_small):
    ids, _, docs = datasets.wordnet_records()
    vec = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 6, N)
    off = np.concatenate([[0], np.cumsum(sizes)])
    sets = [np.asarray(vec[1000 + off[i]:1000 + off[i + 1]], np.float32) for i in range(N)]
    terms = [dict(Counter(docs[i].lower().split())) for i in range(N)]
    image = np.ascontiguousarray(fashion_small.base[:N], np.float32)
    main = np.ascontiguousarray(wordnet_small.base[:N], np.float32)
    # a few records leave a field out
    image_list: list = list(image)
    for j in (3, 50):
        image_list[j] = None
    sets[7] = None
    terms[9] = None
    return ids[:N], main, docs[:N], image_list, sets, terms


@pytest.fixture(params=["local", "remote"])
def db(request, tmp_path):
    with local_or_remote(request.param, tmp_path / "db") as database:
        yield database


def _filled(db, records):
    ids, main, docs, image, sets, terms = records
    col = db.create_collection("g", 384, text=True, fields=FIELDS)
    col.upsert(ids, main, documents=docs, fields={"image": image, "sents": sets, "terms": terms})
    return col


def _chamfer(q: np.ndarray, d: np.ndarray) -> float:
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(1).sum())


def _truth(records, field: str, query, allowed=None) -> tuple[list[str], np.ndarray]:
    """(ids, values) of every record with a value in ``field``, best first: distance up for "image", score down
    for the others."""
    ids, _, _, image, sets, terms = records
    rows = []
    for j, i in enumerate(ids):
        if allowed is not None and i not in allowed:
            continue
        if field == "image" and image[j] is not None:
            rows.append((i, float(((image[j].astype(np.float64) - query) ** 2).sum())))
        elif field == "sents" and sets[j] is not None:
            rows.append((i, -_chamfer(query, sets[j])))
        elif field == "terms" and terms[j] is not None:
            score = sum(w * terms[j].get(t, 0) for t, w in query.items())
            if score > 0:
                rows.append((i, -score))
    rows.sort(key=lambda r: (r[1], r[0]))
    values = np.array([r[1] for r in rows])
    return [r[0] for r in rows], values if field == "image" else -values


@pytest.mark.parametrize("field", ["image", "sents", "terms"])
def test_each_field_searched_like_brute_force(db, records, field):
    col = _filled(db, records)
    _, _, _, image, sets, terms = records
    query = {"image": image[10], "sents": sets[20], "terms": terms[30]}[field]
    hits = col.search(query, k=10, field=field)
    want_ids, want = _truth(records, field, query)
    assert [h["id"] for h in hits] == want_ids[:10]
    got = [h["distance" if field == "image" else "score"] for h in hits]
    np.testing.assert_allclose(got, want[:10], rtol=2e-3 if field == "sents" else 1e-4, atol=1e-3)
    # a batch of queries of the field: each as alone
    batch = col.search_batch([query, query], k=5, field=field)
    assert [[h["id"] for h in hits] for hits in batch] == [want_ids[:5]] * 2


def test_field_filters_and_missing_values(db, records):
    col = _filled(db, records)
    ids, _, _, image, sets, terms = records
    allowed = {i for j, i in enumerate(ids) if j % 3 == 0}
    col.upsert([ids[j] for j in range(N) if j % 3 == 0], [records[1][j] for j in range(N) if j % 3 == 0],
               metadatas=[{"keep": True}] * len(allowed), documents=[records[2][j] for j in range(N) if j % 3 == 0],
               fields={"image": [image[j] for j in range(N) if j % 3 == 0],
                       "sents": [sets[j] for j in range(N) if j % 3 == 0],
                       "terms": [terms[j] for j in range(N) if j % 3 == 0]})
    for field, query in (("image", image[11]), ("sents", sets[22]), ("terms", terms[31])):
        hits = col.search(query, k=8, where={"keep": True}, field=field)
        want_ids, _ = _truth(records, field, query, allowed)
        assert [h["id"] for h in hits] == want_ids[:8]
    # records without a value are never hits of that field
    assert ids[3] not in [h["id"] for h in col.search(image[3] if image[3] is not None else image[4], k=N,
                                                      field="image")]
    got = {r["id"]: r for r in col.get([ids[3], ids[7], ids[12]], include=["fields"])}
    assert set(got[ids[3]]["fields"]) == {"sents", "terms"}
    assert set(got[ids[7]]["fields"]) == {"image", "terms"}
    np.testing.assert_allclose(got[ids[12]]["fields"]["image"], image[12])
    np.testing.assert_allclose(got[ids[12]]["fields"]["sents"], sets[12], rtol=1e-6)
    assert got[ids[12]]["fields"]["terms"] == {t: float(c) for t, c in terms[12].items()}


def test_fused_search_is_rrf_of_the_field_rankings(db, records):
    col = _filled(db, records)
    ids, main, docs, image, sets, terms = records
    queries = {"vector": main[40], "image": image[41], "sents": sets[42], "terms": terms[43]}
    hits = col.search(queries=queries, k=10, depth=N, text=docs[44])
    runs = []
    for field in ("image", "sents", "terms"):
        found, values = _truth(records, field, queries[field])
        runs.append((np.array([ids.index(i) for i in found]), -values if field == "image" else values))
    d = 1 - main.astype(np.float64) @ main[40].astype(np.float64)
    runs.insert(0, (np.argsort(d, kind="stable"), -np.sort(d)))
    bm25 = col.search(text=docs[44], k=N, mode="bm25")
    runs.append((np.array([ids.index(h["id"]) for h in bm25]), np.array([h["score"] for h in bm25])))
    want, _ = rrf(runs, 10)
    assert [h["id"] for h in hits] == [ids[j] for j in want]
    assert all("score" in h for h in hits)
    # two rankings, linear fusion; one entry alone is that field's search
    assert col.search(queries={"image": image[41], "terms": terms[43]}, fusion="linear", k=5)
    alone = col.search(queries={"image": image[41]}, k=5)
    assert [h["id"] for h in alone] == [h["id"] for h in col.search(image[41], k=5, field="image")]


def test_bad_input_names_the_field_and_changes_nothing(db, records):
    col = _filled(db, records)
    ids, main, _, image, sets, terms = records
    before = col.get(ids[:3], include=["fields", "embeddings", "metadatas", "documents"])
    cases = [
        (DimensionMismatchError, "image", {"image": [np.zeros(10)] * 3}),
        (InvalidInputError, "unknown field 'nope'", {"nope": [None] * 3}),
        (InvalidInputError, r"terms.*weights are finite", {"terms": [{"a": -1.0}, None, None]}),
        (InvalidInputError, r"terms.*weights are finite", {"terms": [{"a": float("nan")}, None, None]}),
        (InvalidInputError, r"sents.*non-empty", {"sents": [np.zeros((0, 384)), None, None]}),
        (InvalidInputError, r"image.*2 entries for 3 ids", {"image": [image[0], image[1]]}),
    ]
    for exc, pattern, fields in cases:
        with pytest.raises(exc, match=pattern):
            col.upsert(ids[:3], main[:3], fields=fields)
    with pytest.raises(InvalidInputError, match="unknown field"):
        col.search(image[0], field="nope")
    with pytest.raises(DimensionMismatchError):
        col.search(main[0], field="image")
    with pytest.raises(InvalidTypeError, match="terms"):
        col.search([1.0, 2.0], field="terms")
    assert col.get(ids[:3], include=["fields", "embeddings", "metadatas", "documents"]) == before
    for fields, pattern in (({"vector": {"dim": 3}}, "invalid field name"),
                            ({"x": {"type": "graph"}}, "type must be one of"),
                            ({"x": {"dim": 8, "index": "spann"}}, "index must be one of"),
                            ({"x": {"dim": 8, "params": {"nlist": 4}}}, r"unknown parameter.*\['nlist'\]"),
                            ({"x": {"type": "sparse", "dim": 8}}, "no settings"),
                            ({"x": {"type": "multivector"}}, "needs dim")):
        with pytest.raises(InvalidInputError, match=pattern):
            db.create_collection("bad", 8, fields=fields)
    assert "bad" not in db.list_collections()


def test_vectors_dict_and_replacement(db, records):
    ids, main, _, image, sets, terms = records
    col = db.create_collection("d", 384, fields=FIELDS)
    col.upsert(ids[:2], {"vector": main[:2], "image": image[:1] + [image[2]]}, fields={"terms": terms[:2]})
    col.upsert(ids[:1], main[:1], fields={"sents": [sets[0]]})  # the new version has sents only
    got = {r["id"]: r["fields"] for r in col.get(ids[:2], include=["fields"])}
    assert set(got[ids[0]]) == {"sents"} and set(got[ids[1]]) == {"image", "terms"}
    np.testing.assert_allclose(got[ids[1]]["image"], image[2])
    assert [h["id"] for h in col.search(image[0], k=2, field="image")] == [ids[1]]
    col.delete(ids[1:2])
    assert col.search(terms[1], k=2, field="terms") == []
    fields = col.stats()["fields"]
    assert fields["sents"]["count"] == 1 and fields["image"]["count"] == 0 and fields["terms"]["type"] == "sparse"


def test_fields_survive_restart_merges_and_log_replay(tmp_path, records):
    ids, main, docs, image, sets, terms = records
    path = tmp_path / "db"
    fields = {**FIELDS, "image": {**FIELDS["image"], "index": "hnsw"}}
    with simdex.connect(path) as db:
        col = db.create_collection("g", 384, fields=fields)
        col.upsert(ids, main, fields={"image": image, "sents": sets, "terms": terms})
        db.optimize()
        stats = col.stats()["fields"]
        assert stats["image"]["indexed"] == N - 2 and stats["sents"]["indexed"] == N - 1
        truth, _ = _truth(records, "image", image[10])
        hnsw_hits = [h["id"] for h in col.search(image[10], k=10, field="image")]
        assert len(set(hnsw_hits) & set(truth[:10])) >= 9
        # the multivector field's ef is the MUVERA candidates re-ranked: all of them is exact search
        exact, _ = _truth(records, "sents", sets[20])
        assert [h["id"] for h in col.search(sets[20], k=10, field="sents", ef=N)] == exact[:10]
        col.delete(ids[:20])
    with simdex.connect(path) as db:
        col = db.get_collection("g")
        assert col.stats()["fields"]["sents"]["count"] == N - 20  # record 7 (deleted) had none
        assert [h["id"] for h in col.search(image[30], k=5, field="image")] == \
            _truth(records, "image", image[30], set(ids[20:]))[0][:5]
        # reopened, the field's index is rebuilt from the stored values: searched exactly until merged
        assert col.stats()["fields"]["image"]["unindexed"] == N - 21  # 3 (deleted) and 50 had none
    # a writer killed without a checkpoint, its metadata store lost: the fields come back from the log
    script = textwrap.dedent(f"""
        import os, numpy as np, simdex
        db = simdex.connect({str(path)!r})
        col = db.get_collection("g")
        rng = np.random.default_rng(5)
        col.upsert(["new"], rng.normal(size=(1, 384)), fields={{"image": [np.arange(784.0)],
                   "sents": [rng.normal(size=(3, 384))], "terms": [{{"zebra": 2.5}}]}})
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    col_dir = path / "collections" / "g"
    for f in col_dir.glob("meta.sqlite*"):
        f.unlink()
    with simdex.connect(path) as db:
        col = db.get_collection("g")
        got = col.get(["new"], include=["fields"])[0]["fields"]
        np.testing.assert_allclose(got["image"], np.arange(784.0))
        assert got["terms"] == {"zebra": 2.5} and np.shape(got["sents"]) == (3, 384)
        assert [h["id"] for h in col.search({"zebra": 1.0}, k=3, field="terms")] == ["new"]
    shutil.rmtree(path)


# ---- changing the embedding model without downtime (issue 23, part 5) -----------------------------------------------
class Words(Embedder):
    """Bag of hashed words (``dim``-d, unit length): a stand-in model, so that the mechanics are tested without
    MiniLM's cost; ``pause`` seconds per call make a fill slow enough to be seen in progress."""

    max_tokens, normalized = 0, True

    def __init__(self, dim: int, pause: float = 0.0) -> None:
        self.dim, self.pause, self.name = dim, pause, f"words-{dim}"

    @property
    def fingerprint(self) -> str:
        return f"w{self.dim}"

    def _count_tokens(self, texts) -> np.ndarray:
        return np.array([len(t.split()) for t in texts], np.int64)

    def _embed(self, texts, batch_size, progress, threads) -> np.ndarray:
        time.sleep(self.pause)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = zlib.crc32(word.encode())
                out[i, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
            out[i, 0] += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


OLD, NEW = Words(48), Words(32, pause=0.4)
MODELS = {"words-48": OLD, "words-32": NEW}


@pytest.fixture(params=["local", "remote"])
def db_models(request, tmp_path):
    with local_or_remote(request.param, tmp_path / "db", embedders=MODELS) as database:
        yield database


def _text_truth(model, docs, ids, text, k):
    x = model(docs, progress=False).astype(np.float64)
    q = model([text], progress=False)[0].astype(np.float64)
    order = np.lexsort((np.array(ids), 1 - x @ q))[:k]
    return [ids[j] for j in order]


def test_change_the_embedding_model_without_downtime(db_models, records):
    ids, _, docs, *_ = records
    col = db_models.create_collection("m", embedder="words-48", text=True, index="flat")
    col.upsert(ids[:200], documents=docs[:200])
    query = docs[17]
    assert [h["id"] for h in col.search(text=query, k=5, mode="dense")] == _text_truth(OLD, docs[:200], ids[:200],
                                                                                         query, 5)
    info = col.add_field("new", {"index": "flat"}, embedder="words-32")
    assert info["dim"] == 32 and info["embedder"]["name"] == "words-32"
    with pytest.raises(InvalidInputError, match=r"filled for \d+ of 200 documents"):
        col.use_field("new")  # still filling: text queries stay on the old model
    col.upsert(ids[200:N], documents=docs[200:N])  # writes go on, embedded by both models
    assert [h["id"] for h in col.search(text=query, k=5, mode="dense")] == _text_truth(OLD, docs, ids, query, 5)
    assert col.wait_for_field("new", timeout=120)
    fill = col.stats()["fields"]["new"]["fill"]
    assert fill["state"] == "complete" and fill["done"] == fill["total"] == N
    stored = {r["id"]: r["fields"]["new"] for r in col.get(ids[::40], include=["fields"])}
    np.testing.assert_allclose([stored[i] for i in ids[::40]], NEW(docs[::40], progress=False), rtol=1e-6)
    col.use_field("new")
    assert col.stats()["text_field"] == "new"
    assert [h["id"] for h in col.search(text=query, k=5, mode="dense")] == _text_truth(NEW, docs, ids, query, 5)
    assert col.search(text=query, k=5)  # hybrid: the new field fused with BM25
    with pytest.raises(InvalidInputError, match="switch them first"):
        col.drop_field("new")
    with pytest.raises(InvalidInputError, match="cannot be dropped"):
        col.drop_field("vector")
    col.use_field("vector")
    col.drop_field("new")
    assert "new" not in col.stats()["fields"] and "fields" not in col.get(ids[:1])[0]
    assert col.get(ids[:1], include=["fields"])[0]["fields"] == {}
    with pytest.raises(InvalidInputError, match="unknown field"):
        col.search([0.0] * 32, field="new")


def test_a_fill_resumes_after_a_restart(tmp_path, records):
    ids, _, docs, *_ = records
    path = tmp_path / "db"
    with simdex.connect(path, embedders=MODELS) as db:
        col = db.create_collection("m", embedder="words-48")
        col.upsert(ids, documents=docs)
        col.add_field("new", embedder="words-32")
    # closed while filling (each batch of 256 takes 0.4 s): the fill goes on when the collection opens again
    with simdex.connect(path, embedders=MODELS) as db:
        col = db.get_collection("m")
        assert col.stats()["fields"]["new"]["embedder"]["name"] == "words-32"
        assert col.stats()["fields"]["new"]["fill"]["done"] < N
        assert col.wait_for_field("new", timeout=120)
        assert col.stats()["fields"]["new"]["fill"]["done"] == N
        got = col.get(ids, include=["fields"])
        np.testing.assert_allclose([r["fields"]["new"] for r in got], NEW(docs, progress=False), rtol=1e-6)
