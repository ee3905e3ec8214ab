"""Shared helpers for the sparse tests: real text slices and an independent BM25 / dot-product brute force."""

from __future__ import annotations

import functools
import gzip
import json

import numpy as np

from simdex import datasets

from ._sets_data import gcide_texts


@functools.lru_cache(maxsize=2)
def gloss_texts(n: int = 200, start: int = 107_659) -> tuple[str, ...]:
    """WordNet glosses of the query split (real short texts) as queries."""
    out = []
    with gzip.open(datasets.data_dir() / "wordnet-minilm" / "glosses.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= start:
                out.append(json.loads(line)["text"])
                if len(out) >= n:
                    break
    return tuple(out)


def gcide(n: int = 2000) -> list[str]:
    return list(gcide_texts(n))


class BruteBM25:
    """Lucene BM25 computed directly from token lists in float64 (no simdex code involved)."""

    def __init__(self, docs: list[list[str]], k1: float = 1.2, b: float = 0.75) -> None:
        vocab: dict[str, int] = {}
        doc, term = [], []
        for i, toks in enumerate(docs):
            for t in toks:
                doc.append(i)
                term.append(vocab.setdefault(t, len(vocab)))
        self.vocab, self.n = vocab, len(docs)
        key = np.array(term, np.int64) * self.n + np.array(doc, np.int64)
        ukey, tf = np.unique(key, return_counts=True)
        self.term, self.doc, self.tf = ukey // self.n, ukey % self.n, tf.astype(np.float64)
        dl = np.array([len(d) for d in docs], np.float64)
        self.df = np.bincount(self.term, minlength=len(vocab)).astype(np.float64)
        self.idf = np.log(1.0 + (self.n - self.df + 0.5) / (self.df + 0.5))
        norm = k1 * (1.0 - b + b * dl / dl.mean())
        self.sat = self.tf / (self.tf + norm[self.doc])

    def scores(self, query: list[str]) -> np.ndarray:
        qw = np.zeros(len(self.vocab))
        for t in query:
            if t in self.vocab:
                qw[self.vocab[t]] += self.idf[self.vocab[t]]
        return np.bincount(self.doc, weights=qw[self.term] * self.sat, minlength=self.n)


def check_topk(scores: np.ndarray, ids: np.ndarray, truth: np.ndarray, k: int, *, rtol: float = 2e-5) -> None:
    """``scores``/``ids`` (k,) from simdex against a float64 score vector over all ids: the same k-th score, every
    returned id scored as claimed, and every id that clearly beats the k-th score returned."""
    pos = truth[truth > 0]
    n_true = min(k, pos.shape[0])
    got = ids[ids >= 0]
    assert got.shape[0] == n_true, (got.shape[0], n_true)
    if n_true == 0:
        return
    kth = np.sort(pos)[::-1][n_true - 1]
    np.testing.assert_allclose(scores[:n_true], truth[got], rtol=rtol, atol=1e-6)
    assert np.all(np.diff(scores[:n_true]) <= 0)
    must = np.flatnonzero(truth > kth * (1 + 1e-4))
    assert set(must.tolist()) <= set(got.tolist())
