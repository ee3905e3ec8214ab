"""Lucene's BM25 (``BM25Similarity`` since Lucene 8), the formula :class:`~simdex.sparse.SparseIndex` uses::

    score(q, d) = sum over query terms t of  qtf(t) * idf(t) * tf / (tf + k1 * (1 - b + b * len(d) / avglen))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

``N`` is the number of documents, ``df`` the number holding ``t``, ``len(d)`` the number of terms of ``d`` after
analysis and ``avglen`` their mean. Lucene 8 dropped the constant factor ``(k1 + 1)`` of the classic formula; it
changes no ranking. bm25s's ``method="lucene"`` computes the same numbers. Statistics count every document in a
segment until a merge drops the deleted ones (as in Lucene).
"""

from __future__ import annotations

import numpy as np


def idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene's BM25 idf of document frequencies ``df`` (any shape) in a collection of ``n_docs`` documents."""
    df = np.asarray(df, np.float64)
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def length_norm(doc_len: np.ndarray, avg_len: float, k1: float, b: float) -> np.ndarray:
    """``k1 * (1 - b + b * len / avglen)`` per document, float32 (the denominator term of BM25's saturation)."""
    avg = avg_len if avg_len > 0 else 1.0
    return (k1 * (1.0 - b + b * np.asarray(doc_len, np.float64) / avg)).astype(np.float32)

