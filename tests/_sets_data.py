"""Shared helpers for the sets tests: a slice of the real gcide dictionary and near-duplicates made from it."""

from __future__ import annotations

import functools
import gzip
import json

import numpy as np

from simdex import datasets

N_SLICE = 2000


@functools.lru_cache(maxsize=1)
def gcide_texts(n: int = N_SLICE) -> tuple[str, ...]:
    out = []
    with gzip.open(datasets.data_dir() / "text" / "gcide.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) >= n:
                break
    return tuple(out)


def perturbed_copies(texts: tuple[str, ...], count: int, seed: int = 0) -> list[str]:
    """Near-duplicates of real entries: a few words deleted or replaced, so Jaccard spans roughly 0.3 to 1."""
    rng = np.random.default_rng(seed)
    out = []
    long_enough = [t for t in texts if len(t.split()) >= 30]
    for i in range(count):
        words = long_enough[i % len(long_enough)].split()
        edits = int(rng.integers(0, max(2, len(words) // 6)))
        for _ in range(edits):
            j = int(rng.integers(len(words)))
            words[j] = "zq" + str(int(rng.integers(1_000_000)))
        out.append(" ".join(words))
    return out
