"""The :class:`Embedder` interface (texts -> float32 vectors) and the text validation every embedder shares."""

from __future__ import annotations

import abc
import re
from typing import Any

import numpy as np

from .._validate import check_texts
from ..errors import InvalidInputError, InvalidTypeError

# With progress=None a bar is shown for at least this many texts when stderr is a terminal (about 5 s of MiniLM).
PROGRESS_MIN_TEXTS = 2000
_WORDS = re.compile(r"\S+")


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _check_positive_int(value: Any, what: str, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"{what} must be a positive int{' or None' if allow_none else ''}; "
                               f"got {_type_name(value)}")
    if value < 1:
        raise InvalidInputError(f"{what} must be >= 1; got {value}")
    return int(value)


class Embedder(abc.ABC):
    """Turns texts into vectors: ``embedder(texts) -> (len(texts), dim) float32``.

    Attributes
    ----------
    name: str
        Short identifier (``"minilm"``, ``"st:<model>"``, ``"callable"``).
    dim: int
        Dimension of the vectors.
    max_tokens: int | None
        Longest input in the model's tokens (special tokens included); longer texts are truncated (or chunked,
        where the embedder offers it). None: no limit.
    normalized: bool
        Whether every vector has unit L2 length (cosine = inner product).
    fingerprint: str
        Short hex string identifying the weights (stable across processes): two embedders with different
        fingerprints make vectors that must not be mixed in one index.
    """

    name: str = "embedder"
    dim: int
    max_tokens: int | None = None
    normalized: bool = False

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Identifies the weights: 16 hex digits."""

    def __call__(self, texts: list[str], *, batch_size: int = 64, progress: bool | None = None,
                 threads: int | None = None) -> np.ndarray:
        """Embed ``texts`` (a list of str): float32 array of shape (len(texts), dim), row i for texts[i].

        batch_size: texts per forward pass. progress: show a progress bar (None: for long jobs when stderr is a
        terminal). threads: threads for this call (None: the embedder's default). An empty list gives shape
        (0, dim); empty strings are embedded as the model's empty input. Bad input raises
        :class:`~simdex.errors.InvalidTypeError` naming the entry.
        """
        texts = check_texts(texts)
        batch_size = _check_positive_int(batch_size, "batch_size", allow_none=False)
        threads = self._check_threads(threads)
        if not texts:
            return np.empty((0, self.dim), np.float32)
        return self._embed(texts, batch_size, progress, threads)

    def count_tokens(self, texts: list[str]) -> np.ndarray:
        """Tokens of each text before truncation, special tokens included: int64 array (len(texts),). A count above
        ``max_tokens`` means the text was truncated (or chunked). Embedders without a tokenizer return an estimate
        (whitespace-separated words) and say so in their docstring."""
        texts = check_texts(texts)
        if not texts:
            return np.empty(0, np.int64)
        return self._count_tokens(texts)

    @abc.abstractmethod
    def _embed(self, texts: list[str], batch_size: int, progress: bool | None, threads: int | None) -> np.ndarray:
        """Embed a validated, non-empty list of str."""

    def _count_tokens(self, texts: list[str]) -> np.ndarray:
        return np.fromiter((len(_WORDS.findall(t)) for t in texts), np.int64, len(texts))

    @staticmethod
    def _check_threads(threads: Any) -> int | None:
        return _check_positive_int(threads, "threads", allow_none=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"
