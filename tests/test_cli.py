"""The command line: import (npy, JSONL, Parquet) with export round trips, info, search, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simdex.cli import main


@pytest.fixture(scope="module")
def sample(wordnet_small):
    n = 300
    return np.ascontiguousarray(wordnet_small.base[:n], np.float32)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_import_export_round_trips(tmp_path, sample, capsys):
    db = str(tmp_path / "db")
    np.save(tmp_path / "v.npy", sample)
    assert main(["import", "--path", db, "npyset", str(tmp_path / "v.npy"), "--id-prefix", "row"]) == 0
    assert "imported 300 records" in capsys.readouterr().out

    with open(tmp_path / "r.jsonl", "w") as f:
        for i, v in enumerate(sample):
            f.write(json.dumps({"id": f"j{i}", "vector": v.tolist(), "pos": "nv"[i % 2], "document": f"d{i}"}) + "\n")
    assert main(["import", "--path", db, "js", str(tmp_path / "r.jsonl")]) == 0

    main(["export", "--path", db, "js", str(tmp_path / "out.jsonl")])
    rows = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert len(rows) == 300
    by_id = {r["id"]: r for r in rows}
    assert by_id["j7"]["metadata"] == {"pos": "v"} and by_id["j7"]["document"] == "d7"
    assert np.allclose(by_id["j7"]["vector"], _unit(sample)[7], atol=1e-6)

    main(["export", "--path", db, "js", str(tmp_path / "out.parquet")])
    assert main(["import", "--path", db, "pq", str(tmp_path / "out.parquet")]) == 0
    main(["export", "--path", db, "npyset", str(tmp_path / "out.npy")])
    back = np.load(tmp_path / "out.npy")
    order = np.argsort([f"row{i}" for i in range(300)], kind="stable")  # export is in id order
    assert np.allclose(back, _unit(sample)[order], atol=1e-6)

    capsys.readouterr()
    assert main(["info", db]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {c["name"]: c["count"] for c in stats["collections"]} == {"npyset": 300, "js": 300, "pq": 300}

    assert main(["search", "--path", db, "js", "--id", "j4", "-k", "3", "--where", '{"pos": "n"}']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "j4" in lines[0] and lines[0].split()[1] == "0.0000"


@pytest.mark.parametrize("args, message", [
    (["import", "--path", "DB", "c", "missing.npy"], "no such file"),
    (["import", "--path", "DB", "c", "BAD.jsonl"], "BAD.jsonl:2: bad record"),
    (["import", "--path", "DB", "c", "data.txt"], "cannot tell the format"),
    (["search", "--path", "DB", "nope", "--id", "x"], "no collection named 'nope'"),
])
def test_cli_errors_name_the_problem(tmp_path, args, message):
    (tmp_path / "BAD.jsonl").write_text('{"id": "a", "vector": [1, 2]}\n{"id": "b"}\n')
    (tmp_path / "data.txt").write_text("hello")
    args = [str(tmp_path / a) if a in ("DB", "missing.npy", "BAD.jsonl", "data.txt") else a for a in args]
    if args[0] == "search":
        from simdex import connect
        connect(args[2]).close()
    with pytest.raises(SystemExit, match=message):
        main(args)


def test_import_with_embed_then_search_by_text(tmp_path, capsys):
    """`simdex import --embed --text` of JSONL glosses without vectors: the stored vectors are MiniLM's (checked
    against the shared reference embeddings), and `simdex search --text` finds a gloss by its own words."""
    from simdex import datasets
    ids, metas, docs = datasets.wordnet_records()
    reference = np.load(datasets.data_dir() / "wordnet-minilm" / "vectors.npy", mmap_mode="r")[:120]
    with open(tmp_path / "glosses.jsonl", "w") as f:
        for i in range(120):
            f.write(json.dumps({"id": ids[i], "text": docs[i], "pos": metas[i]["pos"]}) + "\n")
    db = str(tmp_path / "db")
    assert main(["import", "--path", db, "g", str(tmp_path / "glosses.jsonl"), "--embed", "--text",
                 "--document-field", "text"]) == 0
    from simdex import connect
    with connect(db, read_only=True) as database:
        col = database.get_collection("g")
        assert col.stats()["embedder"]["name"] == "minilm" and col.text
        stored = np.array([r["embedding"] for r in col.get(ids[:120], include=["embeddings"])])
    cosines = (stored * _unit(reference.astype(np.float32))).sum(1)
    assert cosines.min() >= 0.999, cosines.min()
    capsys.readouterr()
    for mode in ("dense", "bm25", "hybrid"):
        assert main(["search", "--path", db, "g", "--text", docs[42], "--mode", mode, "-k", "3"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 3 and lines[0].split()[2] == ids[42], (mode, lines)


def _records(col) -> dict:
    return {r["id"]: (r["metadata"], r["document"], r["embedding"])
            for r in col.get(include=["metadatas", "documents", "embeddings"])}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "npy"])
def test_export_and_import_are_inverse(tmp_path, sample, fmt):
    """Export, re-import (compressed too), and the collection comes back: ids, vectors, and for JSONL and Parquet
    metadata (nested, numbers, lists, null) and documents."""
    import gzip

    from simdex import connect
    db = str(tmp_path / "db")
    with connect(db) as database:
        col = database.create_collection("src", dim=384, metric="cosine", index="flat")
        col.upsert([f"r{i}" for i in range(50)], sample[:50],
                   [{"pos": "nv"[i % 2], "n": i, "tags": ["a", i], "deep": {"x": None, "y": 1.5}} for i in range(50)],
                   [f"doc {i}" if i % 3 else None for i in range(50)])
        original = _records(col)
    out = tmp_path / f"out.{fmt}"
    assert main(["export", "--path", db, "src", str(out)]) == 0
    packed = tmp_path / f"packed.{fmt}.gz"
    packed.write_bytes(gzip.compress(out.read_bytes()))
    if fmt == "npy":
        (tmp_path / "packed.ids.txt").write_bytes((tmp_path / "out.ids.txt").read_bytes())
    assert main(["import", "--path", db, "back", str(out)]) == 0
    assert main(["import", "--path", db, "packed", str(packed)]) == 0
    with connect(db, read_only=True) as database:
        for name in ("back", "packed"):
            got = _records(database.get_collection(name))
            assert got.keys() == original.keys()
            for i, (meta, doc, vec) in original.items():
                assert np.allclose(got[i][2], vec, atol=1e-6)
                if fmt != "npy":
                    assert got[i][:2] == (meta, doc), (name, i)


def test_compressed_input_and_clear_errors(tmp_path, sample, capsys):
    import gzip
    db = str(tmp_path / "db")
    lines = "".join(json.dumps({"id": f"z{i}", "vector": v.tolist()}) + "\n" for i, v in enumerate(sample[:5]))
    (tmp_path / "in.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "in.data").write_bytes(gzip.compress(lines.encode()))  # gzip under another name
    assert main(["import", "--path", db, "a", str(tmp_path / "in.jsonl.gz")]) == 0
    assert main(["import", "--path", db, "b", str(tmp_path / "in.data"), "--format", "jsonl"]) == 0
    (tmp_path / "latin1.jsonl").write_bytes(b'{"id": "x", "vector": [1, 2], "t": "caf\xe9"}\n')
    with pytest.raises(SystemExit, match=r"latin1.jsonl is not UTF-8 text"):
        main(["import", "--path", db, "c", str(tmp_path / "latin1.jsonl")])
    with pytest.raises(SystemExit, match=r"^simdex: error: no index file at .*nowhere"):
        main(["info", str(tmp_path / "nowhere" / "db")])


def test_info_and_search_beside_a_writer(tmp_path, sample, capsys):
    """While a process holds the database for writing (a server), info and search read a consistent view."""
    from simdex import connect
    db = str(tmp_path / "db")
    with connect(db) as writer:
        writer.create_collection("w", dim=384, index="flat").upsert(["a", "b"], sample[:2])
        assert main(["info", db]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["view"]["age_s"] >= 0 and stats["collections"][0]["count"] == 2
        assert main(["search", "--path", db, "w", "--id", "b", "-k", "1"]) == 0
        assert capsys.readouterr().out.split()[2] == "b"


def test_the_demo_collection_that_make_run_serves(tmp_path, capsys):
    """`make run` = `simdex serve --demo`: the demo collection from the WordNet data, searchable by text (dense,
    BM25, hybrid), created once, and re-created when an older version of it has no text search."""
    import simdex
    from simdex import datasets
    from simdex.cli import demo_collection

    with simdex.connect(tmp_path / "db") as db:
        db.create_collection("wordnet", 384, "cosine")  # as an earlier version created it: no text search
        demo_collection(db, limit=3000)
        col = db.get_collection("wordnet")
        assert col.count() == 3000 and col.text and col.embedder_info is not None
        assert "predates text search" in capsys.readouterr().out
        ids, _, docs = datasets.wordnet_records()
        for mode in ("dense", "bm25", "hybrid"):
            hits = col.search(text=docs[17], k=3, mode=mode)
            assert hits[0]["id"] == ids[17], mode  # a gloss finds itself by its own text
        demo_collection(db, limit=3000)  # present and current: left as it is
        assert col.count() == 3000 and "created demo" not in capsys.readouterr().out


def test_the_ann_demo_on_a_slice(capsys):
    """`make demo` = `simdex demo`, here on a 2,000-vector slice of WordNet: recall against the slice's brute force,
    and the example query printed with its own gloss (the query glosses follow all base glosses in the data)."""
    from simdex import datasets
    from simdex.demo import _glosses

    assert main(["demo", "--limit", "2000", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    recall = float(out.split("recall@10 = ")[1].split()[0])
    assert recall >= 0.95, out  # HNSW M=16, ef_construction=200 over 2,000 rows at ef 64: near exact
    n_base = datasets.load("wordnet-minilm-384").base.shape[0]
    query_gloss = _glosses(n_base + 1)[n_base]
    assert f"query: {query_gloss[:100]}" in out
    with pytest.raises(SystemExit, match="limit must be at least 10"):
        main(["demo", "--limit", "5"])
