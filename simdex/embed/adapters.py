"""Embedders around code simdex does not own: any ``texts -> array`` function, and sentence-transformers models."""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, InvalidInputError, InvalidTypeError
from .base import PROGRESS_MIN_TEXTS, Embedder, _check_positive_int


class CallableEmbedder(Embedder):
    """Wraps a function ``fn(texts: list[str]) -> array (len(texts), dim)`` as an :class:`Embedder`.

    Every output is checked: it must be a real numeric array of shape (len(texts), dim) with finite values,
    otherwise :class:`~simdex.errors.DimensionMismatchError` (wrong dim), :class:`~simdex.errors.InvalidTypeError`
    (not numeric) or :class:`~simdex.errors.InvalidInputError` (wrong row count, NaN or inf, naming the row) is
    raised. It is returned as float32. ``normalized=True`` declares unit vectors: the outputs are scaled to unit
    length here (an all-zero row then raises), so the attribute holds whatever ``fn`` returns.

    ``fn`` is called once per batch of ``batch_size`` texts; ``threads`` is ignored. ``count_tokens`` returns the
    number of whitespace-separated words (an estimate; ``max_tokens`` is None). ``fingerprint`` identifies the
    function by ``name``, ``dim`` and its qualified name only, not by what it computes.
    """

    def __init__(self, fn: Callable[[list[str]], Any], dim: int, name: str = "callable",
                 normalized: bool = False) -> None:
        if not callable(fn):
            raise InvalidTypeError(f"fn must be callable (texts -> array); got {type(fn).__name__}")
        self.fn = fn
        self.dim = _check_positive_int(dim, "dim", allow_none=False)
        if not isinstance(name, str) or not name:
            raise InvalidTypeError(f"name must be a non-empty str; got {name!r}")
        self.name = name
        self.normalized = bool(normalized)

    @property
    def fingerprint(self) -> str:
        fn = self.fn
        ident = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        return hashlib.sha256(f"callable|{self.name}|{self.dim}|{ident}".encode()).hexdigest()[:16]

    def _embed(self, texts: list[str], batch_size: int, progress: bool | None, threads: int | None) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), batch_size):
            part = texts[start:start + batch_size]
            out[start:start + len(part)] = self._check_output(self.fn(part), len(part), start)
        return out

    def _check_output(self, result: Any, n: int, start: int) -> np.ndarray:
        where = f"{self.name} returned"
        try:
            arr = np.asarray(result)
        except Exception as exc:  # ragged lists and the like
            raise InvalidTypeError(f"{where} something that is not an array ({exc})") from None
        if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
            raise InvalidTypeError(f"{where} an array of dtype {arr.dtype}; need real numbers (float32)")
        if arr.ndim != 2 or arr.shape[0] != n:
            raise InvalidInputError(f"{where} shape {arr.shape} for {n} texts; need ({n}, {self.dim})")
        if arr.shape[1] != self.dim:
            raise DimensionMismatchError(f"{where} vectors of dimension {arr.shape[1]}; this embedder was "
                                         f"declared with dim={self.dim}")
        arr = arr.astype(np.float32)
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise InvalidInputError(f"{where} NaN or inf for texts[{start + row}]")
        if self.normalized:
            norms = np.linalg.norm(arr.astype(np.float64), axis=1, keepdims=True)
            if (norms == 0).any():
                row = int(np.flatnonzero(norms[:, 0] == 0)[0])
                raise InvalidInputError(f"{where} an all-zero vector for texts[{start + row}], which cannot be "
                                        f"normalized (normalized=True)")
            arr = (arr / norms).astype(np.float32)
        return arr


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model (needs torch and sentence-transformers, imported here, not by simdex).

    ``name`` is ``"st:" + name_or_path``; ``dim`` and ``max_tokens`` (``max_seq_length``) come from the model;
    ``normalize=True`` (default) returns unit vectors. ``threads`` sets torch's thread count for the call.
    ``fingerprint`` hashes every parameter tensor (computed on first use: about 0.1 s per 100 MB of weights).
    Loading a model by name may download it (sentence-transformers' cache); pass a local path to stay offline.
    """

    def __init__(self, name_or_path: str, device: str = "cpu", *, normalize: bool = True) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError("SentenceTransformerEmbedder needs torch and sentence-transformers "
                              "(pip install sentence-transformers)") from None
        self.model = SentenceTransformer(str(name_or_path), device=device)
        self.name = "st:" + str(name_or_path)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        seq = getattr(self.model, "max_seq_length", None)
        self.max_tokens = int(seq) if seq else None
        self.normalized = bool(normalize)
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(f"st|{self.max_tokens}".encode())
            for key, tensor in self.model.state_dict().items():
                h.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def _embed(self, texts: list[str], batch_size: int, progress: bool | None, threads: int | None) -> np.ndarray:
        if progress is None:
            progress = len(texts) >= PROGRESS_MIN_TEXTS and sys.stderr.isatty()
        with _torch_threads(threads):
            vecs = self.model.encode(texts, batch_size=batch_size, show_progress_bar=bool(progress),
                                     normalize_embeddings=self.normalized, convert_to_numpy=True)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def _count_tokens(self, texts: list[str]) -> np.ndarray:
        enc = self.model.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        return np.fromiter((len(ids) for ids in enc), np.int64, len(enc))
