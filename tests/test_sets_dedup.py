"""The streaming dedup pipeline and ``simdex dedup`` end to end on small files made from gcide."""

from __future__ import annotations

import gzip
import json
import sys

import numpy as np
import pytest

from simdex.cli import main as simdex_main
from simdex.errors import InvalidInputError
from simdex.sets import deduplicate, read_documents, shingle, similarity_join

from ._sets_data import gcide_texts, perturbed_copies


@pytest.fixture(scope="module")
def docs() -> list[str]:
    texts = list(gcide_texts()[:600])
    return texts + perturbed_copies(tuple(texts), 120, seed=11) + texts[:30] + [""]


def _truth_pairs(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    pairs, _ = similarity_join(shingle(texts, 5), threshold)
    return set(map(tuple, pairs.tolist()))


def test_dedup_pairs_against_exact_join(docs):
    batches = [([str(i) for i in range(s, min(s + 200, len(docs)))], docs[s:s + 200]) for s in range(0, len(docs), 200)]
    result = deduplicate(batches, threshold=0.8, ngram=5)
    truth = _truth_pairs(docs, 0.8)
    found = set(map(tuple, result.pairs.tolist()))
    assert len(truth) >= 40
    assert found <= truth  # verified by exact Jaccard: no false positives
    assert len(found & truth) / len(truth) >= 0.95
    assert result.n_documents == len(docs) and result.n_empty == 1 and result.keep[-1]
    # every document of a cluster points at the cluster's first (kept) document
    for members in result.clusters():
        assert result.keep[members[0]] and not result.keep[members[1:]].any()
        assert np.all(result.cluster[members] == members[0])
    exact_copies = range(len(docs) - 31, len(docs) - 1)
    assert not result.keep[list(exact_copies)].any()


def test_dedup_bloom_mode_flags_later_duplicates(docs):
    batches = [([str(i) for i in range(len(docs))], docs)]
    result = deduplicate(batches, threshold=0.8, ngram=5, bloom=True, capacity=len(docs), fp_rate=1e-4)
    truth = _truth_pairs(docs, 0.8)
    true_dups = np.zeros(len(docs), bool)
    true_dups[[j for _, j in truth]] = True
    flagged = ~result.keep
    assert (flagged & true_dups).sum() / true_dups.sum() >= 0.9
    # documents under the threshold are flagged when a band of theirs collides with an earlier document's: with
    # b bands of r rows that happens with probability 1 - (1 - s^r)^b at Jaccard s. The expected count follows
    # from each document's exact best Jaccard with an earlier one (Bloom false positives at 1e-4 add nothing
    # measurable); allow four standard deviations
    pairs, sims = similarity_join(shingle(docs, 5), 0.3)
    best = np.zeros(len(docs))
    np.maximum.at(best, pairs[:, 1], sims)
    b, r = result.stats["bands"], result.stats["rows"]
    p = 1 - (1 - best[~true_dups] ** r) ** b
    expected, spread = p.sum(), np.sqrt((p * (1 - p)).sum())
    assert (flagged & ~true_dups).sum() <= expected + 4 * spread + 1, (expected, spread)
    assert result.stats["index_bytes"] < 64 * 1024


def _write_jsonl(path, texts, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"doc{i}", "text": t}) + "\n")


def test_cli_end_to_end_jsonl_and_text(docs, tmp_path, capsys):
    _write_jsonl(tmp_path / "a.jsonl", docs[:400])
    _write_jsonl(tmp_path / "b.jsonl.gz", docs[400:], gz=True)
    out = tmp_path / "out"
    rc = simdex_main(["dedup", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.gz"), "--threshold", "0.8",
                      "--ngram", "5", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"{len(docs)} documents" in printed and "near duplicates removed" in printed
    summary = json.loads((out / "summary.json").read_text())
    keep = (out / "keep.txt").read_text().split()
    clusters = [json.loads(line) for line in (out / "clusters.jsonl").read_text().splitlines()]
    assert summary["documents"] == len(docs) and summary["kept"] == len(keep)
    assert len(keep) + sum(len(c["duplicates"]) for c in clusters) == len(docs)
    assert "doc0" in keep and "doc600" not in keep  # doc600 is an exact copy of doc0, later in the stream

    lines = tmp_path / "lines.txt"
    lines.write_text("the quick brown fox jumps over the lazy dog again\n"
                     "The quick brown fox jumps over the lazy dog again!\n"
                     "an entirely different line of text here\n")
    rc = simdex_main(["dedup", str(lines), "--out", str(tmp_path / "o2"), "--bloom", "--no-progress"])
    assert rc == 0
    assert (tmp_path / "o2" / "duplicates.txt").read_text().split() == [f"{lines}:2"]


def test_cli_and_reader_errors(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "ok"}\nnot json\n')
    with pytest.raises(InvalidInputError, match="bad.jsonl:2"):
        list(read_documents([bad]))
    assert simdex_main(["dedup", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert simdex_main(["dedup", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert simdex_main(["dedup", str(bad), "--threshold", "1.5", "--out", str(tmp_path / "o")]) == 2
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    with pytest.raises(InvalidInputError, match="text"):
        list(read_documents([nofield]))
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.MonkeyPatch.context() as patch:  # as where pyarrow is not installed: its import fails
        for name in ("pyarrow", "pyarrow.parquet"):
            patch.setitem(sys.modules, name, None)
        with pytest.raises(ImportError, match="pyarrow"):
            list(read_documents([tmp_path / "x.parquet"]))


def test_reader_decompresses_by_content_not_name(tmp_path):
    import bz2
    import lzma
    records = [{"id": f"d{i}", "text": f"document number {i} caf\u00e9"} for i in range(5)]
    jsonl = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "a.jsonl.xz").write_bytes(lzma.compress(jsonl))
    (tmp_path / "b.jsonl").write_bytes(bz2.compress(jsonl))  # bzip2 behind a plain name
    (tmp_path / "c.txt").write_bytes(gzip.compress("first line\nsecond line\n".encode()))
    for name in ("a.jsonl.xz", "b.jsonl"):
        [(ids, texts)] = list(read_documents([tmp_path / name]))
        assert ids == [r["id"] for r in records] and texts == [r["text"] for r in records]
    [(ids, texts)] = list(read_documents([tmp_path / "c.txt"]))
    assert texts == ["first line", "second line"] and ids[1].endswith("c.txt:2")
