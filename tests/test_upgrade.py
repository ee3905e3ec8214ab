"""Upgrades (issue 26, part 6): a database written by an earlier release's format opens, with everything it held,
and is marked with the current format; a database of a newer format than this simdex reads is refused with what
to do.

``tests/fixtures/format-1`` was written by simdex at commit e382e03, the last version before format markers
(``FORMAT``) and named vector fields: two collections (one HNSW with a BM25 index, one flat), a checkpoint, then
replacements and deletions left in the write-ahead log only (the writer exited without closing, as after a
crash). ``expected.json`` is what that version returned for every record. Keep one fixture per released format.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import simdex
from simdex.errors import InvalidInputError
from simdex.store.database import FORMAT_FILE, FORMAT_VERSION

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("format-*")))
def test_an_earlier_format_opens_with_everything_it_held(tmp_path, fixture):
    path = tmp_path / "db"
    shutil.copytree(FIXTURES / fixture / "db", path)
    expected = json.loads((FIXTURES / fixture / "expected.json").read_text())
    with simdex.connect(path, read_only=True) as db:  # a read-only view changes nothing, not even the marker
        assert sorted(db.list_collections()) == sorted(expected)
    assert not (path / FORMAT_FILE).exists()
    with simdex.connect(path) as db:
        for name, records in expected.items():
            got = {r["id"]: r for r in db.get_collection(name).get(include=["metadatas", "documents", "embeddings"])}
            assert sorted(got) == sorted(records)
            for id_, (meta, doc, vec) in records.items():
                assert got[id_]["metadata"] == meta and got[id_]["document"] == doc
                np.testing.assert_allclose(got[id_]["embedding"], vec, atol=2e-6)
        notes = db.get_collection("notes")
        assert notes.search(text="replaced", k=3, mode="bm25")[0]["document"].startswith("replaced")
        first = next(iter(expected["notes"].values()))
        assert notes.search(first[2], k=1)[0]["id"] in expected["notes"]
        notes.upsert(["new"], np.ones((1, 8)), documents=["a new record"])  # and it takes writes
        notes.add_field("terms", {"type": "sparse"})  # and the features of the current format
        notes.upsert(["new2"], np.ones((1, 8)), fields={"terms": [{"salt": 1.0}]})
    assert json.loads((path / FORMAT_FILE).read_text())["version"] == FORMAT_VERSION
    with simdex.connect(path) as db:
        notes = db.get_collection("notes")
        assert notes.count() == len(expected["notes"]) + 2
        assert notes.search({"salt": 1.0}, k=1, field="terms")[0]["id"] == "new2"


def test_a_newer_format_is_refused(tmp_path):
    path = tmp_path / "db"
    simdex.connect(path).close()
    assert json.loads((path / FORMAT_FILE).read_text())["version"] == FORMAT_VERSION
    (path / FORMAT_FILE).write_text(json.dumps({"format": "simdex-database", "version": FORMAT_VERSION + 1}))
    for read_only in (False, True):
        with pytest.raises(InvalidInputError, match=rf"format {FORMAT_VERSION + 1}.*upgrade"):
            simdex.connect(path, read_only=read_only)
