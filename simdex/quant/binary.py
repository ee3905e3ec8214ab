"""Binary codes: the signs of a random rotation of the centred vector, one bit per dimension, packed in uint64
words, compared by Hamming distance (XOR + popcount). 32x smaller than float32; used as a coarse filter whose
candidates are re-ranked with float vectors (e.g. ``IVFIndex(codec="binary", rerank=...)``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import check_positive_int
from . import _binary_kernels as BK
from .codec import Codec, expect_array


class BinaryCodec(Codec):
    """Sign-of-random-rotation hashing: ``bit_j = [(R (x - mu))_j > 0]``, ``code_size = 8 * ceil(dim / 64)``.

    :meth:`distances` returns Hamming distances (as float32) between the queries' codes and the codes: for unit
    vectors, angle ~ pi * hamming / bits.
    """

    name = "binary"

    def __init__(self, dim: int, metric: str = "l2", seed: int = 0) -> None:
        super().__init__(dim, metric)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.words = -(-self.dim // 64)
        self.mean = np.zeros(self.dim, np.float32)
        self.rotation = np.eye(self.dim, dtype=np.float32)

    @property
    def code_size(self) -> int:
        return 8 * self.words

    def _train(self, x: np.ndarray) -> None:
        self.mean = x.mean(0, dtype=np.float64).astype(np.float32)
        rng = np.random.default_rng(self.seed)
        self.rotation = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))[0].astype(np.float32)

    def encode_words(self, x: np.ndarray) -> np.ndarray:
        """Codes as (n, words) uint64."""
        return self._encode(x).view(np.uint64)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        bits = ((x - self.mean) @ self.rotation) > 0
        padded = np.zeros((x.shape[0], self.words * 64), bool)
        padded[:, :self.dim] = bits
        return np.ascontiguousarray(np.packbits(padded, axis=1, bitorder="little"))

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        """The rotated-back sign pattern, scaled to the mean norm of a +-1 vector: only a direction."""
        bits = np.unpackbits(codes, axis=1, bitorder="little")[:, :self.dim].astype(np.float32)
        signs = 2.0 * bits - 1.0
        return (signs @ self.rotation.T / np.sqrt(self.dim) + self.mean).astype(np.float32)

    def _distances(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        out = np.empty((q.shape[0], codes.shape[0]), np.float32)
        BK.hamming_all(self.encode_words(q), codes.view(np.uint64), out)
        return out

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"seed": self.seed}, {"mean": self.mean, "rotation": self.rotation}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.mean = expect_array(arrays, "mean", (self.dim,), np.float32)
        self.rotation = expect_array(arrays, "rotation", (self.dim, self.dim), np.float32)

    @classmethod
    def _from_params(cls, dim: int, metric: str, meta: dict[str, Any]) -> BinaryCodec:
        return cls(dim, metric, seed=int(meta["seed"]))
