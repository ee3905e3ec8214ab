"""Scalar codecs: per-dimension int8, and LVQ (locally-adaptive vector quantization; Aguerrebere et al.,
"Similarity search in the blink of an eye with compressed indices", VLDB 2023), plus the uncompressed ``flat``.

LVQ centres every vector on the data set's mean, then quantises each vector with its *own* scale and offset
(its min and max coordinate), so the 255 (or 15) levels cover exactly the range that vector uses. With a second
level (``residual_bits=8``, "LVQ-4x8") the primary quantisation error, which lies in [-step/2, step/2], is
quantised again with 8 bits: traversal reads only the small primary code, re-ranking both.

Int8 and LVQ share one code layout and one distance kernel (:mod:`simdex.quant._scalar_kernels`): every code is
``c0 + a2 + w * (a0 * <qt, code> + a1 * qs)`` away from a prepared query.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..metrics import IP, METRIC_CODES, pairwise
from . import _scalar_kernels as SK
from .codec import Codec, expect_array


def _pad4(n: int) -> int:
    return (n + 3) // 4 * 4


class AffineCodec(Codec):
    """Base of the codecs whose distance is affine in <query, code> (int8 and LVQ)."""

    bits = 8
    residual_bits = 0

    @property
    def half(self) -> int:
        return (self.dim + 1) // 2

    @property
    def primary_bytes(self) -> int:
        return self.dim if self.bits == 8 else self.half

    @property
    def residual_offset(self) -> int:
        return SK.HEADER + self.primary_bytes

    @property
    def code_size(self) -> int:
        return _pad4(SK.HEADER + self.primary_bytes + (self.dim if self.residual_bits else 0))

    @property
    def qt_size(self) -> int:
        return self.dim if self.bits == 8 else 2 * self.half

    def _pack(self, a0: np.ndarray, a1: np.ndarray, a2: np.ndarray, c: np.ndarray,
              c2: np.ndarray | None = None) -> np.ndarray:
        n = c.shape[0]
        codes = np.zeros((n, self.code_size), np.uint8)
        f = codes.view(np.float32)
        f[:, 0], f[:, 1], f[:, 2] = a0, a1, a2
        if self.bits == 8:
            codes[:, SK.HEADER:SK.HEADER + self.dim] = c
        else:
            h = self.half
            padded = np.zeros((n, 2 * h), np.uint8)
            padded[:, :self.dim] = c
            codes[:, SK.HEADER:SK.HEADER + h] = padded[:, :h] | (padded[:, h:] << 4)
        if c2 is not None:
            codes[:, self.residual_offset:self.residual_offset + self.dim] = c2
        return codes

    def _unpack(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = codes.view(np.float32)
        if self.bits == 8:
            c = codes[:, SK.HEADER:SK.HEADER + self.dim]
        else:
            h = self.half
            b = codes[:, SK.HEADER:SK.HEADER + h]
            c = np.concatenate([b & 15, b >> 4], axis=1)[:, :self.dim]
        return f[:, 0], f[:, 1], c.astype(np.float32)

    def prepare(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prepared queries for the kernels: ``qt`` (nq, qt_size) float32 and ``qc`` (nq, 3) float32."""
        raise NotImplementedError

    def _distances(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        qt, qc = self.prepare(q)
        out = np.empty((q.shape[0], codes.shape[0]), np.float32)
        SK.affine_distances(qt, qc, codes, codes.view(np.float32), self.bits, self.half, out)
        return out


class Int8Codec(AffineCodec):
    """Per-dimension scalar quantisation to 8 bits: ``x_j ~ lo_j + step_j * c_j`` with lo/hi the training min/max
    of dimension j (values outside are clipped). ``code_size = 12 + dim`` (rounded up to 4) bytes."""

    name = "int8"

    def _train(self, x: np.ndarray) -> None:
        self.lo = x.min(0).astype(np.float32)
        step = (x.max(0) - self.lo) / np.float32(255.0)
        self.step = np.where(step > 0, step, np.float32(1.0)).astype(np.float32)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        c = np.clip(np.rint((x - self.lo) / self.step), 0, 255).astype(np.uint8)
        xh = self.lo + self.step * c.astype(np.float32)
        a2 = np.zeros(x.shape[0], np.float32) if METRIC_CODES[self.metric] == IP else \
            np.einsum("ij,ij->i", xh, xh)
        return self._pack(np.ones(x.shape[0], np.float32), np.zeros(x.shape[0], np.float32), a2, c)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        _, _, c = self._unpack(codes)
        return (self.lo + self.step * c).astype(np.float32)

    def prepare(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        qt = np.empty(q.shape, np.float32)
        qc = np.empty((q.shape[0], 3), np.float32)
        SK.prepare_int8(np.ascontiguousarray(q, np.float32), self.step, self.lo, METRIC_CODES[self.metric] == IP,
                        qt, qc)
        return qt, qc

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"lo": self.lo, "step": self.step}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.lo = expect_array(arrays, "lo", (self.dim,), np.float32)
        self.step = expect_array(arrays, "step", (self.dim,), np.float32)

    @classmethod
    def _from_params(cls, dim: int, metric: str, meta: dict[str, Any]) -> Int8Codec:
        return cls(dim, metric)


class LVQCodec(AffineCodec):
    """LVQ-8 / LVQ-4, optionally with an 8-bit residual level (LVQ-4x8, LVQ-8x8).

    Vector x is centred on the training mean ``mu``; r = x - mu is coded as ``lo + step * c`` with
    ``lo = min(r)``, ``step = (max(r) - min(r)) / (2**bits - 1)`` per vector. The residual level codes
    r - r_hat, which lies in [-step/2, step/2], with 8 more bits per dimension.

    Bytes per vector: ``12 + dim`` (8 bits) or ``12 + ceil(dim / 2)`` (4 bits), plus ``dim`` for the residual,
    rounded up to a multiple of 4.
    """

    name = "lvq"

    def __init__(self, dim: int, metric: str = "l2", bits: int = 8, residual_bits: int = 0) -> None:
        super().__init__(dim, metric)
        if bits not in (4, 8):
            raise InvalidInputError(f"LVQ bits must be 4 or 8; got {bits!r}")
        if residual_bits not in (0, 8):
            raise InvalidInputError(f"LVQ residual_bits must be 0 or 8; got {residual_bits!r}")
        self.bits, self.residual_bits = bits, residual_bits
        self.mean = np.zeros(dim, np.float32)

    def __repr__(self) -> str:
        return (f"LVQCodec(dim={self.dim}, metric={self.metric!r}, bits={self.bits}, "
                f"residual_bits={self.residual_bits}, code_size={self.code_size})")

    def _train(self, x: np.ndarray) -> None:
        self.mean = x.mean(0, dtype=np.float64).astype(np.float32)

    def _quantize(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        r = x - self.mean
        levels = np.float32(2 ** self.bits - 1)
        lo = r.min(1) if r.shape[0] else np.zeros(0, np.float32)
        hi = r.max(1) if r.shape[0] else np.zeros(0, np.float32)
        step = ((hi - lo) / levels).astype(np.float32)
        step = np.where(step > 0, step, np.float32(1.0)).astype(np.float32)
        c = np.clip(np.rint((r - lo[:, None]) / step[:, None]), 0, levels).astype(np.uint8)
        rh = lo[:, None] + step[:, None] * c.astype(np.float32)
        return r, lo.astype(np.float32), step, c, rh

    def _encode(self, x: np.ndarray) -> np.ndarray:
        r, lo, step, c, rh = self._quantize(x)
        a2 = np.zeros(x.shape[0], np.float32) if METRIC_CODES[self.metric] == IP else \
            np.einsum("ij,ij->i", rh, rh)
        c2 = None
        if self.residual_bits:
            step2 = step / np.float32(255.0)
            c2 = np.clip(np.rint((r - rh + 0.5 * step[:, None]) / step2[:, None]), 0, 255).astype(np.uint8)
        return self._pack(step, lo, a2, c, c2)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        step, lo, c = self._unpack(codes)
        out = self.mean + lo[:, None] + step[:, None] * c
        if self.residual_bits:
            c2 = codes[:, self.residual_offset:self.residual_offset + self.dim].astype(np.float32)
            out += -0.5 * step[:, None] + (step / np.float32(255.0))[:, None] * c2
        return out.astype(np.float32)

    def decode_primary(self, codes: np.ndarray) -> np.ndarray:
        """The primary level's reconstruction only (what traversal sees)."""
        step, lo, c = self._unpack(self._check_codes(codes))
        return (self.mean + lo[:, None] + step[:, None] * c).astype(np.float32)

    def prepare(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        qt = np.zeros((q.shape[0], self.qt_size), np.float32)
        qc = np.empty((q.shape[0], 3), np.float32)
        SK.prepare_lvq(np.ascontiguousarray(q, np.float32), self.mean, METRIC_CODES[self.metric] == IP, qt, qc)
        return qt, qc

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"bits": self.bits, "residual_bits": self.residual_bits}, {"mean": self.mean}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.mean = expect_array(arrays, "mean", (self.dim,), np.float32)

    # the short names of make_codec: bits of the primary level, bits of the residual level
    SPECS = {"lvq8": (8, 0), "lvq4": (4, 0), "lvq4x8": (4, 8)}

    @classmethod
    def _from_spec(cls, spec: str, dim: int, metric: str) -> LVQCodec | None:
        bits = cls.SPECS.get(spec)
        return None if bits is None else cls(dim, metric, bits=bits[0], residual_bits=bits[1])

    @classmethod
    def _from_params(cls, dim: int, metric: str, meta: dict[str, Any]) -> LVQCodec:
        return cls(dim, metric, bits=int(meta["bits"]), residual_bits=int(meta["residual_bits"]))


class FlatCodec(Codec):
    """No compression: the code of a vector is its float32 bytes (``4 * dim``). For IVF with exact lists."""

    name = "flat"

    @property
    def code_size(self) -> int:
        return 4 * self.dim

    def _train(self, x: np.ndarray) -> None:
        pass

    def _encode(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, np.float32).view(np.uint8).reshape(x.shape[0], self.code_size)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.view(np.float32).reshape(codes.shape[0], self.dim).copy()

    def _distances(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return pairwise(self.metric, q, self._decode(codes))

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        pass

    @classmethod
    def _from_params(cls, dim: int, metric: str, meta: dict[str, Any]) -> FlatCodec:
        return cls(dim, metric)
