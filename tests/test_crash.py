"""Durability under SIGKILL and full disks: a few kills of a writer process, some of them after or while its disk
was full (the long run is ``python -m simdex.bench crash``)."""

from __future__ import annotations

import os

import pytest

from simdex.bench import crash


def test_killed_writer_loses_no_acknowledged_write(tmp_path, wordnet_small):
    stats = crash.run(tmp_path, wordnet_small.base[:2_000], wordnet_small.queries[:20], kills=4, seed=7,
                      max_wait=3.0, progress=False)
    summary = stats.summary()
    assert not stats.failures, stats.failures
    assert stats.kills == 4 and stats.acknowledged_writes > 0, summary
    assert stats.min_graph_recall >= 0.9


def test_full_disk_and_kills_lose_nothing(tmp_path, wordnet_small):
    if os.geteuid() != 0:
        pytest.skip("the full-disk rounds mount a size-limited tmpfs, which needs root; "
                    "tests/test_storage_faults.py injects the same faults without it")
    stats = crash.run(tmp_path, wordnet_small.base[:2_000], wordnet_small.queries[:20], kills=4, seed=11,
                      max_wait=3.0, progress=False, disk_full=1.0, fs_size=160 << 20)
    summary = stats.summary()
    assert not stats.failures, stats.failures
    assert stats.full_disk_rounds == 4 and stats.failed_writes > 0, summary  # the disk did fill up
    assert stats.acknowledged_writes > 0 and stats.min_graph_recall >= 0.9, summary
