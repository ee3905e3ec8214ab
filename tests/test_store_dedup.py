"""Near-duplicate control on write (``create_collection(dedup=...)``), in process and over HTTP, on a slice of the
real gcide dictionary with near-copies of its entries; the flagged records are compared with an exact all-pairs
Jaccard join of the same shingles."""

from __future__ import annotations

import numpy as np
import pytest

import simdex
from simdex.errors import CollectionExistsError, DuplicateDocumentError, InvalidInputError, InvalidTypeError
from simdex.sets import Shingler
from simdex.sets.exact import similarity_join

from ._live import local_or_remote
from ._sets_data import gcide_texts, perturbed_copies

DIM = 8


@pytest.fixture(params=["local", "remote"])
def db(request, tmp_path):
    with local_or_remote(request.param, tmp_path / "db") as database:
        yield database


@pytest.fixture(scope="module")
def corpus():
    """1,500 gcide entries, then 300 near-copies of entries among them (Jaccard from about 0.3 to 1)."""
    texts = list(gcide_texts()[:1500])
    docs = texts + perturbed_copies(tuple(texts), 300, seed=3)
    ids = [f"d{i}" for i in range(len(docs))]
    vectors = np.random.default_rng(0).standard_normal((len(docs), DIM)).astype(np.float32)
    return ids, vectors, docs


def _truly_duplicated(docs: list[str], threshold: float) -> set[int]:
    """Positions of the documents that have an earlier document with exact Jaccard >= threshold."""
    pairs, _ = similarity_join(Shingler(5)(docs), threshold)
    return set(pairs.max(axis=1).tolist())


def _upsert(col, ids, vectors, docs, batch=250) -> None:
    for s in range(0, len(ids), batch):
        col.upsert(ids[s:s + batch], vectors[s:s + batch], documents=docs[s:s + batch])


@pytest.mark.parametrize("batch", [250, 2000])  # copies in later batches than their sources; all in one batch
def test_flag_marks_exactly_the_near_duplicates(db, corpus, batch):
    ids, vectors, docs = corpus
    col = db.create_collection("c", DIM, dedup={"threshold": 0.8, "on_duplicate": "flag"})
    _upsert(col, ids, vectors, docs, batch)
    assert col.count() == len(ids)  # flagged records are written
    of = {r["id"]: r["metadata"]["duplicate_of"] for r in col.get(include=["metadatas"])
          if "duplicate_of" in r["metadata"]}
    flagged = {int(i[1:]) for i in of}
    truth = _truly_duplicated(docs, 0.8)
    assert len(truth) > 50  # the copies span the threshold: many above it, many below
    assert flagged <= truth  # every flag verified by exact Jaccard
    assert len(flagged & truth) >= 0.95 * len(truth)
    sets = Shingler(5)(docs)
    from simdex.sets.exact import pair_jaccard
    named = np.array([(int(i[1:]), int(o[1:])) for i, o in of.items()], np.int64)
    assert (named[:, 1] < named[:, 0]).all()  # the record duplicated came first
    assert (pair_jaccard(sets, named) >= 0.8 - 1e-9).all()
    assert col.stats()["dedup"]["duplicates_found"] == len(of)


def test_reject_refuses_the_whole_batch_and_names_the_duplicates(db, corpus):
    ids, vectors, docs = corpus
    col = db.create_collection("c", DIM, dedup={"threshold": 0.9, "on_duplicate": "reject"})
    col.upsert(ids[:100], vectors[:100], documents=docs[:100])
    batch_ids = ["new-a", "new-b", "new-c"]
    batch_docs = [docs[7] + " ", "a text of its own, about nothing in the dictionary", docs[7].upper()]
    with pytest.raises(DuplicateDocumentError) as info:
        col.upsert(batch_ids, vectors[:3], documents=batch_docs)
    assert info.value.duplicates == {"new-a": "d7", "new-c": "d7"}  # the stored record wins over the batch's own
    assert "new-a" in str(info.value) and "'d7'" in str(info.value)
    assert col.count() == 100 and col.get(["new-b"]) == []  # nothing of the batch was written
    with pytest.raises(DuplicateDocumentError) as info:  # a duplicate inside the batch
        col.upsert(["x", "y"], vectors[:2], documents=["one two three four five six", "one two three four five six"])
    assert info.value.duplicates == {"y": "x"}
    col.upsert(["new-b"], vectors[:1], documents=[batch_docs[1]])
    assert col.count() == 101
    # replacing a record with (nearly) its own text is not a duplicate of itself
    col.upsert(["d7"], vectors[7:8], documents=[docs[7] + " again"])
    # once the original is deleted, its text may come back under another id
    col.delete(["d7"])
    col.upsert(["d7-moved"], vectors[7:8], documents=[docs[7]])
    assert col.count() == 101


def test_keep_writes_everything_and_counts(db, corpus):
    ids, vectors, docs = corpus
    col = db.create_collection("c", DIM, dedup={"threshold": 0.8, "on_duplicate": "keep"})
    col.upsert(ids[:50], vectors[:50], documents=docs[:50])
    col.upsert(["copy"], vectors[:1], documents=[docs[3]])
    assert col.count() == 51
    assert col.get(["copy"], include=["metadatas"])[0]["metadata"] == {}
    assert col.stats()["dedup"]["duplicates_found"] == 1


def test_metadata_field_and_exact_threshold(db, corpus):
    ids, vectors, docs = corpus
    col = db.create_collection("c", DIM, dedup={"field": "title", "threshold": 1.0})
    metas = [{"title": d[:200]} for d in docs[:40]]
    col.upsert(ids[:40], vectors[:40], metas, documents=["same document"] * 40)  # documents are not compared
    assert not any("duplicate_of" in r["metadata"] for r in col.get(include=["metadatas"]))
    col.upsert(["t1", "t2", "t3"], vectors[:3], [{"title": docs[5][:200]}, {"title": docs[5][:200] + " extra"},
                                                 {"other": 1}])
    got = {r["id"]: r["metadata"].get("duplicate_of") for r in col.get(["t1", "t2", "t3"])}
    assert got == {"t1": "d5", "t2": None, "t3": None}  # 1.0 is the same set of shingles only


def test_bloom_mode_flags_without_naming(tmp_path, corpus):
    ids, vectors, docs = corpus
    with simdex.connect(tmp_path / "db", background=False) as db:
        col = db.create_collection("c", DIM, dedup={"threshold": 0.8, "bloom": True, "capacity": 10_000})
        col.upsert(ids[:200], vectors[:200], documents=docs[:200])
        col.upsert(["copy", "copy2"], vectors[:2], documents=[docs[11], docs[11]])
        meta = {r["id"]: r["metadata"] for r in col.get(["copy", "copy2"])}
        assert meta["copy"]["duplicate_of"] is True  # a Bloom filter keeps no ids
        assert meta["copy2"]["duplicate_of"] == "copy"  # within a batch the sets are at hand: named
        assert col.stats()["dedup"]["bloom"] is True


def test_the_index_survives_reopening_and_log_replay(tmp_path, corpus):
    ids, vectors, docs = corpus
    path = tmp_path / "db"
    with simdex.connect(path, background=False) as db:
        col = db.create_collection("c", DIM, dedup={"threshold": 0.8, "on_duplicate": "reject"})
        col.upsert(ids[:100], vectors[:100], documents=docs[:100])
        db.checkpoint()
        col.upsert(ids[100:200], vectors[100:200], documents=docs[100:200])  # only in the log
    with simdex.connect(path, background=False) as db:
        col = db.get_collection("c")
        assert col.dedup["on_duplicate"] == "reject"
        for source in (20, 150):  # from the checkpoint and from the replayed log
            with pytest.raises(DuplicateDocumentError):
                col.upsert([f"again-{source}"], vectors[:1], documents=[docs[source]])
        assert col.count() == 200


@pytest.mark.parametrize("dedup, message", [
    ({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"), ({"threshold": "high"}, "threshold"),
    ({"on_duplicate": "drop"}, "on_duplicate"), ({"limit": 3}, "unknown dedup option"),
    ({"field": "not a field!"}, "field"), ({"ngram": 0}, "ngram"), ({"unit": "token"}, "unit"),
    ({"bloom": "yes"}, "bloom"), ({"bloom": True, "fp_rate": 2.0}, "fp_rate"),
])
def test_bad_dedup_options_are_refused_and_nothing_is_created(db, dedup, message):
    with pytest.raises(InvalidInputError, match=message):
        db.create_collection("c", DIM, dedup=dedup)
    assert db.list_collections() == []


def test_dedup_must_be_a_dict(db):
    with pytest.raises(InvalidTypeError, match="dedup"):
        db.create_collection("c", DIM, dedup="document")
    assert db.list_collections() == []


def test_exist_ok_compares_the_dedup_configuration(db):
    db.create_collection("c", DIM, dedup={"threshold": 0.8})
    db.create_collection("c", DIM, dedup={"threshold": 0.8}, exist_ok=True)
    with pytest.raises(CollectionExistsError, match="different configuration"):
        db.create_collection("c", DIM, dedup={"threshold": 0.7}, exist_ok=True)


def test_simdex_dedup_reads_a_collection(tmp_path, corpus, capsys):
    import json

    from simdex.cli import main as simdex_main
    ids, vectors, docs = corpus
    path = tmp_path / "db"
    with simdex.connect(path, background=False) as db:
        col = db.create_collection("c", DIM)  # no dedup on write: the command finds what it let in
        _upsert(col, ids, vectors, docs)
        titled = db.create_collection("t", DIM)
        titled.upsert(["a", "b", "c"], vectors[:3], [{"title": docs[0]}, {"title": docs[0]}, {}])
    out = tmp_path / "out"
    assert simdex_main(["dedup", "--path", str(path), "--collection", "c", "--threshold", "0.8", "--out", str(out),
                        "--no-progress"]) == 0
    clusters = [json.loads(line) for line in (out / "clusters.jsonl").read_text().splitlines()]
    removed = {int(d[1:]) for c in clusters for d in c["duplicates"]}
    truth = _truly_duplicated(docs, 0.8)
    assert len(removed) >= 0.95 * len(truth) and len(removed) <= len(truth) + 5  # id order, not insert order
    assert json.loads((out / "summary.json").read_text())["documents"] == len(docs)
    assert simdex_main(["dedup", "--path", str(path), "--collection", "t", "--text-field", "title",
                        "--out", str(tmp_path / "o2"), "--no-progress"]) == 0
    assert (tmp_path / "o2" / "keep.txt").read_text().split() == ["a"]
    capsys.readouterr()
    assert simdex_main(["dedup", "--path", str(path), "--collection", "nope", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err
    assert simdex_main(["dedup", "--collection", "c", "--out", str(out)]) == 2
    assert simdex_main(["dedup", str(tmp_path / "x.jsonl"), "--path", str(path), "--collection", "c"]) == 2
