"""One collection API: every test here runs against the in-process database (``simdex.connect``) and against the
HTTP client on a live server (``simdex.Client``): same methods, same results, same exception types.

Text-first collections use a small word-hashing embedder here (the collection mechanics do not depend on the
model); tests/test_embed.py and ``test_minilm_collection`` below use the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import inspect
import zlib

import numpy as np
import pytest

import simdex
from simdex.embed import Embedder
from simdex.errors import (CollectionExistsError, CollectionNotFoundError, DimensionMismatchError, DuplicateIdError,
                           InvalidInputError, InvalidTypeError, TruncatedTextWarning, UnknownIdError)
from simdex.server.app import create_app
from simdex.server.client import Client, RemoteCollection
from simdex.store import Collection, Database
from simdex.store.api import CollectionAPI, DatabaseAPI

from ._live import LiveServer, local_or_remote
from .conftest import numpy_knn


class HashWords(Embedder):
    """Bag of hashed words, 64-d, unit length; reads at most 8 words (so truncation is easy to trigger)."""

    name, dim, max_tokens, normalized, fingerprint = "hash-words", 64, 8, True, "0123abcd"

    def _words(self, text: str) -> list[str]:
        return text.lower().split()

    def _count_tokens(self, texts) -> np.ndarray:
        return np.array([len(self._words(t)) for t in texts], np.int64)

    def _embed(self, texts, batch_size, progress, threads) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in self._words(text)[:self.max_tokens]:
                h = zlib.crc32(word.encode())
                out[i, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
            out[i, 0] += 1e-3  # never all zero
        return out / np.linalg.norm(out, axis=1, keepdims=True)


WORDS = HashWords()


def _same_hits(a: list[dict], b: list[dict]) -> bool:
    """Equal hits, distances and scores to float32 rounding (one query alone and in a batch take other BLAS
    paths)."""
    def plain(hits):
        return [{k: v for k, v in h.items() if k not in ("distance", "score")} for h in hits]

    def values(hits):
        return [h.get("distance", h.get("score")) for h in hits]
    return plain(a) == plain(b) and np.allclose(values(a), values(b), atol=1e-5)


@pytest.fixture(params=["local", "remote"])
def db(request, tmp_path):
    with local_or_remote(request.param, tmp_path / "db", embedders={"hash-words": WORDS}) as database:
        yield database


@pytest.fixture(scope="module")
def glosses(wordnet_small):
    from simdex import datasets
    ids, metas, docs = datasets.wordnet_records()
    n = 300
    return ids[:n], np.ascontiguousarray(wordnet_small.base[:n], np.float32), metas[:n], docs[:n]


def test_both_implement_the_one_interface():
    for impl, api in ((Collection, CollectionAPI), (RemoteCollection, CollectionAPI), (Database, DatabaseAPI),
                      (Client, DatabaseAPI)):
        assert issubclass(impl, api)
        for name, method in inspect.getmembers(api, inspect.isfunction):
            if name.startswith("_"):
                continue
            ours, theirs = inspect.signature(getattr(impl, name)), inspect.signature(method)
            # the same parameters, in the same order, with the same defaults (an implementation may add more)
            assert list(ours.parameters.items())[:len(theirs.parameters)] == list(theirs.parameters.items()), \
                (impl.__name__, name)


def test_catalog(db):
    col = db.create_collection("a", dim=8, metric="l2", index="flat")
    assert col.name == "a" and db.list_collections() == ["a"]
    with pytest.raises(CollectionExistsError):
        db.create_collection("a", dim=8)
    assert db.get_or_create_collection("a", 8, "l2", "flat").name == "a"
    with pytest.raises(CollectionNotFoundError):
        db.get_collection("nope")
    with pytest.raises(InvalidInputError, match="dim is required"):
        db.create_collection("b")
    db.drop_collection("a")
    assert db.list_collections() == []


def test_records_round_trip_and_errors(db, glosses):
    ids, vectors, metas, docs = glosses
    col = db.create_collection("g", dim=384, index="flat")
    assert col.upsert(ids, vectors, metas, docs) == len(ids)
    assert col.count() == len(col) == len(ids)
    got = col.get(ids[5:8], include=["metadatas", "documents", "embeddings"])
    assert [r["id"] for r in got] == ids[5:8] and [r["document"] for r in got] == docs[5:8]
    assert [r["metadata"] for r in got] == metas[5:8]
    np.testing.assert_allclose([r["embedding"] for r in got], vectors[5:8] / np.linalg.norm(
        vectors[5:8], axis=1, keepdims=True), atol=1e-6)
    assert [r["id"] for r in col.get(where={"pos": "v"}, limit=5)] == sorted(
        i for i, m in zip(ids, metas) if m["pos"] == "v")[:5]
    with pytest.raises(InvalidInputError, match="at most 10"):
        col.upsert(ids[:11], vectors[:11], max_batch=10)
    with pytest.raises(DimensionMismatchError):
        col.upsert(["x"], np.zeros((1, 3), np.float32))
    with pytest.raises(InvalidInputError):
        col.upsert(["x"], np.full((1, 384), np.nan, np.float32))
    with pytest.raises(DuplicateIdError):
        col.upsert(["x", "x"], vectors[:2])
    with pytest.raises(UnknownIdError):
        col.delete(["no-such-id"])
    assert col.count() == len(ids)  # nothing of the refused writes landed
    assert col.delete(["no-such-id", ids[0]], missing_ok=True) == 1
    assert col.delete(where={"pos": "v"}) == sum(m["pos"] == "v" for m in metas[1:])
    assert col.count() == len(ids) - 1 - sum(m["pos"] == "v" for m in metas[1:])


def test_import_parquet(db, glosses, tmp_path):
    """Records from Parquet files, in batches: ids, vectors, documents and the other columns as metadata come back
    as written; rows without a vector are embedded; a bad file is refused naming it, after the good batches."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    ids, vectors, metas, docs = glosses
    for part, rows in (("a", slice(0, 200)), ("b", slice(200, 300))):
        pq.write_table(pa.table({"id": ids[rows], "vector": list(vectors[rows]), "document": docs[rows],
                                 "pos": [m["pos"] for m in metas[rows]]}), tmp_path / f"{part}.parquet")
    col = db.create_collection("g", dim=384, index="flat")
    assert col.import_parquet([tmp_path / "a.parquet", str(tmp_path / "b.parquet")], batch_size=64) == 300
    got = col.get(ids, include=["metadatas", "documents", "embeddings"])
    assert [r["id"] for r in got] == ids and [r["document"] for r in got] == docs
    assert [r["metadata"] for r in got] == [{"pos": m["pos"]} for m in metas]
    np.testing.assert_allclose([r["embedding"] for r in got], vectors / np.linalg.norm(vectors, axis=1,
                                                                                       keepdims=True), atol=1e-6)

    texts = db.create_collection("t", embedder="hash-words")
    pq.write_table(pa.table({"id": ["x", "y"], "vector": [None, list(WORDS(["a boat"])[0])],
                             "document": ["a ship at sea", "a boat"]}), tmp_path / "t.parquet")
    assert texts.import_parquet(tmp_path / "t.parquet") == 2
    assert texts.search(text="a ship at sea", k=1, include=[])[0]["id"] == "x"  # embedded from its document

    pq.write_table(pa.table({"id": ["p", "q"], "vector": [[1.0, 2.0], [1.0]]}), tmp_path / "ragged.parquet")
    pq.write_table(pa.table({"name": ["p"]}), tmp_path / "noid.parquet")
    pq.write_table(pa.table({"id": ["p"], "vector": ["not numbers"]}), tmp_path / "text.parquet")
    small = db.create_collection("s", dim=2, metric="l2", index="flat")
    for name, message in (("ragged", "vectors of different lengths"), ("noid", "no column 'id'"),
                          ("text", "not lists of numbers")):
        with pytest.raises(InvalidInputError, match=f"{name}.parquet.*{message}"):
            small.import_parquet(tmp_path / f"{name}.parquet")
    assert small.count() == 0


def test_vector_search_equals_brute_force(db, glosses):
    ids, vectors, metas, docs = glosses
    col = db.create_collection("g", dim=384, index="flat")
    col.upsert(ids, vectors, metas, docs)
    queries = vectors[:5] + 0.01
    true_d, true_pos = numpy_knn(vectors, queries, 10, "cosine")
    batch = col.search_batch(queries, k=10, include=["distances"])
    for row, d, pos in zip(batch, true_d, true_pos):
        assert [h["id"] for h in row] == [ids[p] for p in pos]
        np.testing.assert_allclose([h["distance"] for h in row], d, atol=1e-5)
    assert _same_hits(col.search(queries[0], k=10, include=["distances"]), batch[0])
    by_id = col.search_by_id(ids[:3], k=4, include=["distances"])
    assert [row[0]["id"] for row in by_id] == ids[:3]  # each record is its own nearest neighbour
    assert _same_hits(by_id[1], col.search(vectors[1], k=4, include=["distances"]))
    with pytest.raises(UnknownIdError):
        col.search_by_id(["nope"])
    with pytest.raises(InvalidInputError, match="one vector"):
        col.search(vectors[:2])
    with pytest.raises(InvalidInputError, match="mode applies to text"):
        col.search(vectors[0], mode="dense")


@pytest.mark.filterwarnings("ignore::simdex.errors.TruncatedTextWarning")  # glosses longer than 8 words
def test_text_first_collection(db, glosses):
    ids, _, metas, docs = glosses
    col = db.create_collection("t", embedder="hash-words", text=True, index="flat")
    assert col.stats()["embedder"]["name"] == "hash-words" and col.stats()["dim"] == 64
    assert col.upsert(ids, metadatas=metas, documents=docs) == len(ids)  # embedded, no vectors given
    stored = np.array([r["embedding"] for r in col.get(ids, include=["embeddings"])])
    np.testing.assert_allclose(stored, WORDS(docs), atol=1e-6)
    # a row with a vector keeps it; rows of None are embedded
    own = np.zeros(64, np.float32)
    own[3] = 1.0
    col.upsert(["own", "emb"], [own, None], documents=[None, "a large wild cat"])
    np.testing.assert_allclose(col.get(["own"], include=["embeddings"])[0]["embedding"], own)

    query = docs[7]
    dense = col.search(text=query, k=5, mode="dense", include=["distances"])
    assert _same_hits(dense, col.search(WORDS([query])[0], k=5, include=["distances"]))
    assert dense[0]["id"] == ids[7] and "distance" in dense[0]
    bm25 = col.search(text=query, k=5, mode="bm25", include=[])
    assert bm25[0]["id"] == ids[7] and "score" in bm25[0]
    hybrid = col.search(text=query, k=5, include=[])  # both: hybrid by default
    assert hybrid == col.search(text=query, k=5, mode="hybrid", include=[]) and hybrid[0]["id"] == ids[7]
    where = {"pos": {"$ne": metas[7]["pos"]}}
    assert all(h["metadata"].get("pos") != metas[7]["pos"] for h in col.search(text=query, k=5, where=where))
    batch = col.search_batch(texts=[docs[1], docs[2]], k=3, mode="dense", include=[])
    assert [row[0]["id"] for row in batch] == [ids[1], ids[2]]
    assert _same_hits(col.search_batch(texts=[docs[1]], k=3, include=[])[0], col.search(text=docs[1], k=3,
                                                                                         include=[]))


def test_text_errors_change_nothing(db, glosses):
    ids, vectors, metas, docs = glosses
    plain = db.create_collection("plain", dim=384)
    plain.upsert(ids[:10], vectors[:10])
    with pytest.raises(InvalidInputError, match="no text index and no embedder"):
        plain.search(text="cat")
    with pytest.raises(InvalidInputError, match="no embedder"):
        plain.search(text="cat", mode="dense")
    with pytest.raises(InvalidInputError, match="vectors is required"):
        plain.upsert(["d"], documents=["a document"])
    col = db.create_collection("t", embedder="hash-words")
    col.upsert(ids[:10], documents=docs[:10])
    with pytest.raises(InvalidInputError, match="no text index"):
        col.search(text="cat", mode="bm25")
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        col.search(text="cat", mode="fuzzy")
    with pytest.raises(InvalidInputError, match="one entry per id"):
        col.upsert(["a", "b"], documents=["only one"])
    with pytest.raises(InvalidInputError, match="nothing to embed"):
        col.upsert(["a"], documents=[None])
    with pytest.raises(InvalidTypeError, match=r"documents\[1\]"):
        col.upsert(["a", "b"], documents=["fine", 7])
    with pytest.raises(InvalidTypeError):
        col.search_batch(texts="a bare string")
    with pytest.raises(DimensionMismatchError):
        db.create_collection("bad", dim=10, embedder="hash-words")
    assert col.count() == 10 and plain.count() == 10


def test_long_query_is_truncated_with_a_warning(db, glosses):
    ids, _, metas, docs = glosses
    col = db.create_collection("t", embedder="hash-words", index="flat")
    col.upsert(ids, documents=docs)
    words = (docs[3].split() * 3)[:8] + ["many", "more", "words", "than", "it", "reads"]
    long_query = " ".join(words)
    with pytest.warns(TruncatedTextWarning, match="query 0 has 14 tokens; hash-words reads only the first 8"):
        hits = col.search(text=long_query, k=3, include=[])
    assert hits == col.search(text=" ".join(long_query.split()[:8]), k=3, include=[])


def test_local_and_remote_give_the_same_results(tmp_path, glosses):
    """The same writes and queries through both give identical answers."""
    ids, vectors, metas, docs = glosses
    answers = []
    for where in ("local", "remote"):
        database = simdex.connect(tmp_path / where, background=False, embedders={"hash-words": WORDS})
        with LiveServer(create_app(database)) as live:
            api = database if where == "local" else Client(live.url)
            col = api.create_collection("g", dim=384, M=8, ef_construction=64, text=True)
            col.upsert(ids, vectors, metas, docs)
            col.delete(ids[:10])
            answers.append([col.count(), col.get(limit=7, offset=3), col.search_batch(vectors[20:25], k=5),
                            col.search(vectors[30], k=5, where={"pos": "n"}), col.search(text="small bird", k=5),
                            col.search_by_id(ids[40:42], k=3), col.stats()["embedder"]])
        database.close()
    assert answers[0] == answers[1]


class OtherWords(HashWords):
    fingerprint = "ffff0000"


@pytest.mark.filterwarnings("ignore::simdex.errors.TruncatedTextWarning")
def test_another_model_is_refused_and_a_custom_one_must_be_attached(tmp_path, glosses):
    ids, _, _, docs = glosses
    with simdex.connect(tmp_path / "db", background=False, embedders={"hash-words": WORDS}) as db:
        db.create_collection("t", embedder="hash-words").upsert(ids[:20], documents=docs[:20])
        with pytest.raises(InvalidInputError, match="unknown embedder 'nope'"):
            db.create_collection("u", embedder="nope")
        with pytest.raises(InvalidInputError, match="cannot load the embedder 'st:"):
            db.create_collection("u", embedder="st:/no/such/model")
    with pytest.raises(InvalidInputError, match="must not be mixed"):  # same name, other weights
        simdex.connect(tmp_path / "db", background=False, embedders={"hash-words": OtherWords()})
    with simdex.connect(tmp_path / "db", background=False) as db:
        col = db.get_collection("t")
        assert col.count() == 20  # reads and vector searches need no embedder
        with pytest.raises(InvalidInputError, match="cannot load by name; attach it"):
            col.search(text="a cat", mode="dense")
        with pytest.raises(InvalidInputError, match="must not be mixed"):
            db.get_collection("t", embedder=OtherWords())
        col = db.get_collection("t", embedder=HashWords())
        assert col.search(text=docs[4], k=1, include=[])[0]["id"] == ids[4]
