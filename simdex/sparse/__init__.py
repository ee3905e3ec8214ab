"""Text and sparse retrieval: analyzer, inverted index with BM25 / dot-product scoring, block-max pruning, fusion."""

from .analyzer import ENGLISH_STOP_WORDS, Analyzer, Vocabulary
from .index import SparseIndex

__all__ = ["Analyzer", "Vocabulary", "SparseIndex", "ENGLISH_STOP_WORDS"]
