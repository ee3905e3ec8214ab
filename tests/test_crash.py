"""Durability under SIGKILL: a few kills of a writer process (the long run is ``python -m simdex.bench crash``)."""

from __future__ import annotations

from simdex.bench import crash


def test_killed_writer_loses_no_acknowledged_write(tmp_path, wordnet_small):
    stats = crash.run(tmp_path, wordnet_small.base[:2_000], wordnet_small.queries[:20], kills=4, seed=7,
                      max_wait=3.0, progress=False)
    summary = stats.summary()
    assert not stats.failures, stats.failures
    assert stats.kills == 4 and stats.acknowledged_writes > 0, summary
    assert stats.min_graph_recall >= 0.9
