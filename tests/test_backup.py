"""Backups of a live database and their verified restore (issue 26, part 1): a backup taken while a writer streams
upserts holds exactly the writes acknowledged up to its log position; an incremental backup copies only what
changed; a damaged backup is refused before anything is written; the CLI and the HTTP API do the same."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import simdex
from simdex import datasets
from simdex.cli import main as cli_main
from simdex.errors import CorruptFileError, InvalidInputError
from simdex.server.app import create_app
from simdex.server.client import Client

from ._live import LiveServer

N0 = 400


@pytest.fixture(scope="module")
def glosses(wordnet_small):
    ids, metas, docs = datasets.wordnet_records()
    return ids[:3000], np.ascontiguousarray(wordnet_small.base[:3000], np.float32), metas[:3000], docs[:3000]


class Stream:
    """A writer upserting one record per call (one log record each) until stopped; remembers what was
    acknowledged, in order."""

    def __init__(self, col, glosses, start: int) -> None:
        self.col, self.glosses, self.next = col, glosses, start
        self.acked: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        ids, vectors, metas, docs = self.glosses
        while not self.stop.is_set() and self.next < len(ids):
            j = self.next
            self.col.upsert([ids[j]], vectors[j:j + 1], [metas[j]], [docs[j]])
            self.acked.append(ids[j])
            self.next += 1

    def __enter__(self) -> Stream:
        self.thread.start()
        while len(self.acked) < 20:  # writing for real before the backup starts
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.05)  # and still writing after it ended
        self.stop.set()
        self.thread.join()


def _content(path: Path, name: str = "g") -> dict[str, tuple]:
    with simdex.connect(path, read_only=True) as db:
        rows = db.get_collection(name).get(include=["metadatas", "documents", "embeddings"])
    return {r["id"]: (r["metadata"], r["document"], tuple(np.round(r["embedding"], 6))) for r in rows}


def _expected(glosses, upto: int) -> set[str]:
    return set(glosses[0][:upto])


def test_backup_under_writes_restores_the_acknowledged_writes_up_to_its_lsn(tmp_path, glosses):
    ids, vectors, metas, docs = glosses
    live = tmp_path / "live"
    with simdex.connect(live) as db:
        col = db.create_collection("g", 384, text=True, M=12, ef_construction=64)
        col.upsert(ids[:N0], vectors[:N0], metas[:N0], docs[:N0])
        db.optimize()
        db.checkpoint()  # the backup holds a checkpoint and the log after it
        col.upsert(ids[N0:N0 + 50], vectors[N0:N0 + 50], metas[N0:N0 + 50], docs[N0:N0 + 50])
        lsn0 = col.stats()["last_lsn"]
        with Stream(col, glosses, N0 + 50) as stream:
            first = db.backup(tmp_path / "b1")
        acked_first = list(stream.acked)
        lsn1 = first["collections"]["g"]["lsn"]
        assert lsn0 < lsn1 < lsn0 + len(acked_first)  # taken in the middle of the stream
        assert first["collections"]["g"]["checkpoint"] is not None and first["bytes_linked"] > 0
        # more writes, a checkpoint (new files), then an incremental backup
        with Stream(col, glosses, stream.next) as stream2:
            db.checkpoint()
            second = db.backup(tmp_path / "b2", since=tmp_path / "b1")
        lsn2 = second["collections"]["g"]["lsn"]
        acked_second = acked_first + stream2.acked
        live_content = {r["id"] for r in col.get()}
    assert second["bytes_copied"] < first["bytes_copied"] + first["bytes_linked"]
    for backup, lsn, acked in ((tmp_path / "b1", lsn1, acked_first), (tmp_path / "b2", lsn2, acked_second)):
        restored = tmp_path / f"restored-{backup.name}"
        simdex.store.backup.restore(backup, restored)
        want = set(ids[:N0 + 50]) | set(acked[:lsn - lsn0])  # one log record per streamed upsert
        got = _content(restored)
        assert set(got) == want
        j = ids.index(acked[0])
        assert got[ids[j]][:2] == (metas[j], docs[j])
        np.testing.assert_allclose(got[ids[j]][2], vectors[j] / np.linalg.norm(vectors[j]), atol=2e-6)
        with simdex.connect(restored) as db:  # a working database: it searches and takes writes
            col = db.get_collection("g")
            hits = col.search(vectors[5], k=3)
            assert hits[0]["id"] == ids[5]
            assert col.search(text=docs[7], k=1, mode="bm25")[0]["id"] == ids[7]
            col.upsert(["new"], vectors[:1])
            assert col.count() == len(want) + 1
    assert set(_content(tmp_path / "restored-b2")) - {"new"} <= live_content


def test_a_damaged_backup_is_refused_before_anything_is_written(tmp_path, glosses):
    ids, vectors, metas, docs = glosses
    with simdex.connect(tmp_path / "live") as db:
        col = db.create_collection("g", 384, fields={"sparse": {"type": "sparse"}})
        col.upsert(ids[:300], vectors[:300], metas[:300], docs[:300],
                   fields={"sparse": [{"w": 1.0 + i} for i in range(300)]})
        db.checkpoint()
        col.upsert(ids[300:320], vectors[300:320])
        body = db.backup(tmp_path / "b")
        with pytest.raises(InvalidInputError, match="not empty"):
            db.backup(tmp_path / "b")
    restored = _content(tmp_path / "live")
    simdex.store.backup.restore(tmp_path / "b", tmp_path / "ok")
    assert _content(tmp_path / "ok") == restored
    with simdex.connect(tmp_path / "ok", read_only=True) as db:
        assert db.get_collection("g").get(ids[3:4], include=["fields"])[0]["fields"] == {"sparse": {"w": 4.0}}
    victim = max(body["files"], key=lambda rel: body["files"][rel]["size"])
    raw = bytearray((tmp_path / "b" / victim).read_bytes())
    raw[len(raw) // 2] ^= 0x20
    (tmp_path / "b" / victim).write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=victim.replace(".", r"\.")):
        simdex.store.backup.restore(tmp_path / "b", tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
    (tmp_path / "b" / victim).unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        simdex.store.backup.verify(tmp_path / "b")


def test_cli_and_http(tmp_path, glosses, capsys):
    ids, vectors, metas, docs = glosses
    live = tmp_path / "live"
    with simdex.connect(live) as db:
        db.create_collection("g", 384, index="flat").upsert(ids[:200], vectors[:200], metas[:200], docs[:200])
    assert cli_main(["backup", "--path", str(live), str(tmp_path / "b")]) == 0
    assert "backed up into" in capsys.readouterr().out
    assert cli_main(["restore", str(tmp_path / "b"), "--verify-only"]) == 0
    assert "match their checksums" in capsys.readouterr().out
    assert cli_main(["restore", str(tmp_path / "b"), str(tmp_path / "r")]) == 0
    assert _content(tmp_path / "r") == _content(live)
    with pytest.raises(SystemExit, match="--path DIR"):  # neither --path nor --url
        cli_main(["backup", str(tmp_path / "x")])
    with simdex.connect(live) as db, LiveServer(create_app(db, backup_dir=tmp_path)) as server:
        db.get_collection("g").upsert(ids[200:260], vectors[200:260])
        client = Client(server.url)
        body = client.backup("h", since="b")  # names in the server's backup folder
        assert body["collections"]["g"]["lsn"] == 2 and body["bytes_linked"] > 0
        with pytest.raises(InvalidInputError, match="invalid"):
            client.backup("../escape")
        with pytest.raises(InvalidInputError, match="not a simdex backup"):
            client.backup("h2", since="r")  # a database, not a backup
    with simdex.connect(live) as db, LiveServer(create_app(db)) as server:
        with pytest.raises(InvalidInputError, match="--backup-dir"):
            Client(server.url).backup("h3")
    simdex.store.backup.restore(tmp_path / "h", tmp_path / "hr")
    assert set(_content(tmp_path / "hr")) == set(ids[:260])
