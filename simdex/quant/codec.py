"""The interface every vector codec implements, and the registry that rebuilds codecs from saved state.

A codec turns float32 vectors (n, dim) into fixed-size byte codes (n, code_size) uint8 and back:

- ``train(x)``: learn the codec's parameters from sample vectors (n, dim); returns ``self``.
- ``encode(x) -> codes``: (n, dim) float32 -> (n, code_size) uint8. One row per vector, one contiguous block of
  bytes, so that a kernel reading a vector's code touches as few cache lines as possible.
- ``decode(codes) -> x``: (n, code_size) uint8 -> (n, dim) float32, the reconstruction.
- ``distances(queries, codes) -> (nq, n) float32``: internal distances (squared L2, or minus the inner product;
  see :mod:`simdex.metrics`) between float queries and coded vectors, computed the way the search kernels do it
  (asymmetric distance computation: the query stays in float, only the database side is quantised).
- ``state() -> (meta, arrays)`` / ``Codec.from_state(meta, arrays)``: JSON scalars and numpy arrays for the
  pickle-free index file format (:mod:`simdex.fileformat`).

Codecs are parameters of indexes (``HNSWQuantIndex(codec="lvq8")``, ``IVFIndex(codec="pq16")``); the structures
that use them call their numba kernels directly and only use the Python methods for training, encoding and tests.

Every concrete codec class registers itself under its ``name`` when its module is imported (``simdex.quant``
imports them all before anything can use this module), and :func:`make_codec` and :meth:`Codec.from_state` look
codecs up in that registry: this module imports none of the codec modules, which all import it.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from .._validate import check_codes, check_dim, check_metric, check_vectors
from ..errors import CorruptFileError, InvalidInputError

_CODECS: dict[str, type[Codec]] = {}


class Codec(abc.ABC):
    """Abstract base of all codecs. ``dim`` is the vector dimension, ``metric`` one of l2 / ip / cosine (cosine
    codecs see unit-length vectors; the index normalises them)."""

    name: ClassVar[str] = "codec"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # concrete codecs name themselves; shared bases (AffineCodec) do not
            _CODECS[cls.name] = cls

    def __init__(self, dim: int, metric: str = "l2") -> None:
        self.dim = check_dim(dim)
        self.metric = check_metric(metric)
        self.is_trained = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}, code_size={self.code_size})"

    @property
    @abc.abstractmethod
    def code_size(self) -> int:
        """Bytes per encoded vector."""

    # ---- the verbs -----------------------------------------------------------------------------------------------
    def train(self, x: Any) -> Codec:
        """Learn the codec from sample vectors (n, dim). Returns ``self``."""
        x = check_vectors(x, self.dim, "training vectors")
        self._train(x)
        self.is_trained = True
        return self

    def encode(self, x: Any) -> np.ndarray:
        """Codes (n, code_size) uint8 of vectors (n, dim)."""
        self._require_trained()
        return self._encode(check_vectors(x, self.dim, allow_empty=True))

    def decode(self, codes: Any) -> np.ndarray:
        """Reconstructed vectors (n, dim) float32 of codes (n, code_size)."""
        self._require_trained()
        return self._decode(self._check_codes(codes))

    def distances(self, queries: Any, codes: Any) -> np.ndarray:
        """Internal asymmetric distances (nq, n) float32 between float queries and coded vectors."""
        self._require_trained()
        q = check_vectors(queries, self.dim, "queries")
        return self._distances(q, self._check_codes(codes))

    @abc.abstractmethod
    def _train(self, x: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _encode(self, x: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _decode(self, codes: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _distances(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray: ...

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _require_trained(self) -> None:
        if not self.is_trained:
            raise InvalidInputError(f"{type(self).__name__} is not trained; call train(x) first")

    def _check_codes(self, codes: Any) -> np.ndarray:
        return check_codes(codes, self.code_size)

    # ---- persistence ---------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays): JSON scalars and arrays that rebuild the codec with :meth:`from_state` (an untrained
        codec saves its parameters and placeholder arrays)."""
        meta, arrays = self._state()
        return {"codec": self.name, "dim": self.dim, "metric": self.metric, "trained": self.is_trained,
                **meta}, arrays

    @abc.abstractmethod
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    @abc.abstractmethod
    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore arrays saved by :meth:`_state`; raise KeyError/ValueError on anything inconsistent."""

    @classmethod
    @abc.abstractmethod
    def _from_params(cls, dim: int, metric: str, meta: dict[str, Any]) -> Codec: ...

    @classmethod
    def _from_spec(cls, spec: str, dim: int, metric: str) -> Codec | None:
        """The codec a short name (lower case) stands for, if it names this class; else None. By default the
        class's ``name``; parameterised names (``"lvq4"``, ``"pq16"``) are parsed by their classes."""
        return cls(dim, metric) if spec == cls.name else None

    @staticmethod
    def from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Codec:
        """Rebuild a codec from :meth:`state`'s output; raises CorruptFileError on bad state."""
        try:
            cls = _CODECS[meta["codec"]]
            codec = cls._from_params(int(meta["dim"]), str(meta["metric"]), meta)
            codec._set_state(meta, arrays)
        except (KeyError, TypeError, ValueError, IndexError, InvalidInputError) as exc:
            raise CorruptFileError(f"bad codec state ({exc!r})") from None
        codec.is_trained = bool(meta.get("trained", True))
        return codec


TRAIN_SAMPLE = 100_000  # rows a codec is trained on at most


def training_sample(x: np.ndarray, seed: int) -> np.ndarray:
    """The rows a codec is trained on: all of ``x``, or a sorted random sample of ``TRAIN_SAMPLE`` of them."""
    if x.shape[0] <= TRAIN_SAMPLE:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(x.shape[0], TRAIN_SAMPLE, replace=False))]


def outgrew_training(trained: int, n: int, limit: int = TRAIN_SAMPLE, growth: float = 2.0, small: int = 4096) -> bool:
    """Whether an index holding ``n`` rows, whose quantizer was trained on ``trained`` of them, should train it
    again: it was trained on fewer rows than it could be (``limit``), and the index has grown ``growth`` times
    since, or at all while those were fewer than ``small`` (a few hundred rows give an int8 codec ranges that clip
    many later rows, and a database collection trains on its first rows; re-encoding a small index costs little)."""
    return trained < limit and (n >= growth * max(trained, 1) or (trained < small and n > trained))


def expect_array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``arrays[name]`` as a contiguous in-memory array, checked against shape and dtype (ValueError if not)."""
    arr = arrays[name]
    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise ValueError(f"codec array {name!r} has shape {arr.shape} {arr.dtype}, expected {shape} "
                         f"{np.dtype(dtype)}")
    if not np.isfinite(arr).all() if arr.dtype.kind == "f" else False:
        raise ValueError(f"codec array {name!r} holds NaN or inf")
    return np.ascontiguousarray(arr)


def make_codec(spec: Any, dim: int, metric: str) -> Codec:
    """A codec from a short name or an instance.

    Names: ``"int8"`` (per-dimension scalar), ``"lvq8"``, ``"lvq4"``, ``"lvq4x8"`` (LVQ, 4-bit primary + 8-bit
    residual), ``"pq<m>"`` (e.g. ``"pq16"``: m sub-quantizers of 8 bits), ``"opq<m>"``, ``"binary"``,
    ``"flat"`` (float32, no compression), ``"rabitq"`` / ``"rabitq<B>"`` (RaBitQ, B bits per dimension).
    """
    if isinstance(spec, Codec):
        if spec.dim != dim:
            raise InvalidInputError(f"codec has dim={spec.dim}, the index dim={dim}")
        if spec.metric != metric:
            raise InvalidInputError(f"codec has metric={spec.metric!r}, the index metric={metric!r}")
        return spec
    if not isinstance(spec, str):
        raise InvalidInputError(f"codec must be a name or a Codec; got {type(spec).__name__}")
    for cls in _CODECS.values():
        codec = cls._from_spec(spec.lower(), dim, metric)
        if codec is not None:
            return codec
    raise InvalidInputError(f"unknown codec {spec!r}; expected int8, flat, lvq8, lvq4, lvq4x8, pq<m>, opq<m>, "
                            f"binary, rabitq or rabitq<bits>")


class TrainedOnFirstRows:
    """Mixin of an index over codes whose codec an untrained index trains on its first add (a database collection:
    its first rows): :meth:`train` before that, and when to train it again as the index grows. The index keeps
    ``codec``, ``trained_rows`` (how many rows the codec was trained on), ``_n``, ``dim`` and ``metric``, and
    implements ``retrain``."""

    codec: Codec
    trained_rows: int

    def train(self, x: Any) -> None:
        """Train the codec on sample vectors (n, dim) before the first add (otherwise the first add trains it)."""
        if self._n:  # type: ignore[attr-defined]
            raise InvalidInputError("the index already holds vectors; its codec is fixed")
        sample = check_vectors(x, self.dim, "training vectors",  # type: ignore[attr-defined]
                               normalize=self.metric == "cosine")  # type: ignore[attr-defined]
        self.codec.train(sample)
        self.trained_rows = sample.shape[0]

    def wants_retraining(self) -> bool:
        """Whether the index has outgrown the rows its codec was trained on (:func:`outgrew_training`); see
        ``retrain``."""
        return outgrew_training(self.trained_rows, len(self))  # type: ignore[arg-type]
