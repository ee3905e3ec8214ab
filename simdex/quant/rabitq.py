"""RaBitQ codes (Gao & Long, SIGMOD 2024) and their multi-bit extension (Gao et al., SIGMOD 2025).

A vector ``x`` is coded relative to a centre ``c`` (the codec's training mean; in an IVF index, its list's
centroid too): the residual ``r = x - c`` is rotated by a random orthogonal matrix ``P`` (the dimension padded to
a multiple of 64) and normalised, ``o = P^T r / |r|``, and ``o`` is replaced by the grid vector ``y`` of levels in
``[0, 2^bits)`` (centred: ``y = level - (2^bits - 1) / 2``) whose direction is closest to it (1 bit: the signs;
more bits: the best of 64 scales). A code is the levels as ``bits`` planes of packed bits plus four float32
factors: ``|r|``, ``1 / (|y| <y/|y|, o>)``, the sum of the levels, and the error factor
``sqrt(1 - <y/|y|, o>^2) / <y/|y|, o> / sqrt(D - 1)``.

The inner product of the residual with a query direction ``q'`` (rotated the same way) is estimated without
decoding, ``<r, q'> ~ |r| <y, P^T q'> / (|y| <y/|y|, o>)``, which is unbiased, and with high probability
within ``eps0 * error factor * |q'| * |r|`` of the truth (``eps0`` about 1.9): :meth:`RaBitQCodec.distance_bounds`.
Searches quantise the rotated query to 4-bit levels once per list it scans, so that ``<y, q'>`` is a few
popcounts of ANDed words per code (:mod:`._rabitq_kernels`).

``"rabitq"``: 1 bit per dimension (``D / 8 + 16`` bytes: 64 bytes for 384-d); ``"rabitq<B>"`` (B = 1..8): B
bits per dimension, more accurate distances for B times the code.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np

from .._numba import inlined, kernel
from .._validate import check_positive_int, check_vectors
from ..core.scorer import implement
from ..errors import InvalidInputError
from ..metrics import IP, METRIC_CODES
from . import _rabitq_kernels as RK
from .codec import Codec, expect_array

_SPEC = re.compile(r"^rabitq(\d*)$")
# RaBitQ's confidence constant: the estimator's error is close to normal with the error factor as its standard
# deviation, so eps0 = 1.9 (the paper's choice for pruning) bounds about 94% of pairs, 3.0 about 99.7%
EPS0 = 1.9


class RaBitQCodec(Codec):
    """RaBitQ (``bits=1``) or extended RaBitQ (``bits`` 2-8) codes; see the module docstring.

    :meth:`distances` estimates internal distances (squared L2; minus the inner product for ip/cosine) from the
    codes with the query kept in float; :meth:`distance_bounds` adds the estimator's error bound. In an
    :class:`~simdex.quant.IVFIndex` (``codec="rabitq"``) residuals to the list centroids are coded, and the list
    scan quantises each query to 4 bits per list.
    """

    name = "rabitq"

    def __init__(self, dim: int, metric: str = "l2", bits: int = 1, seed: int = 0) -> None:
        super().__init__(dim, metric)
        self.bits = check_positive_int(bits, "bits", maximum=8)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.words = -(-self.dim // 64)
        self.padded = 64 * self.words
        self.center = np.zeros(self.dim, np.float32)
        self.rotation = np.eye(self.padded, dtype=np.float32)

    def __repr__(self) -> str:
        return f"RaBitQCodec(dim={self.dim}, metric={self.metric!r}, bits={self.bits})"

    @property
    def code_size(self) -> int:
        return 8 * self.bits * self.words + 16

    @property
    def factor_at(self) -> int:
        """Index of the first factor in a code row viewed as float32."""
        return 2 * self.bits * self.words

    @classmethod
    def _from_spec(cls, spec: str, dim: int, metric: str) -> RaBitQCodec | None:
        match = _SPEC.match(spec)
        if match is None:
            return None
        bits = int(match.group(1) or 1)
        if not 1 <= bits <= 8:
            raise InvalidInputError(f"rabitq takes 1 to 8 bits per dimension; got {spec!r}")
        return cls(dim, metric, bits=bits)

    # ---- training and coding -------------------------------------------------------------------------------------
    def _train(self, x: np.ndarray) -> None:
        self.center = x.mean(0, dtype=np.float64).astype(np.float32)
        rng = np.random.default_rng(self.seed)
        self.rotation = np.linalg.qr(rng.standard_normal((self.padded, self.padded)))[0].astype(np.float32)

    def rotate(self, x: np.ndarray) -> np.ndarray:
        """``P^T x`` of rows x (n, dim), padded with zeros to (n, D)."""
        padded = np.zeros((x.shape[0], self.padded), np.float32)
        padded[:, :self.dim] = x
        return padded @ self.rotation

    def _encode(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        out = np.zeros((n, self.code_size), np.uint8)
        if n == 0:
            return out
        r = x - self.center
        norms = np.linalg.norm(r, axis=1).astype(np.float32)
        o = self.rotate(r)
        safe = np.where(norms > 0, norms, 1.0).astype(np.float32)
        o /= safe[:, None]
        o[norms == 0, 0] = 1.0  # a vector at the centre: any direction (its norm factor is 0)
        planes = np.empty((n, self.bits, self.words), np.uint64)
        fcos, ynorm, ysum = (np.empty(n, np.float64) for _ in range(3))
        RK.encode_unit(np.ascontiguousarray(o, np.float32), self.bits, planes, fcos, ynorm, ysum)
        fcos = np.maximum(fcos, 1e-6)
        factors = np.stack([norms, 1.0 / (ynorm * fcos), ysum,
                            np.sqrt(np.maximum(0.0, 1.0 - fcos ** 2)) / fcos / np.sqrt(max(self.padded - 1, 1))],
                           axis=1).astype(np.float32)
        out.view(np.uint64)[:, :self.bits * self.words] = planes.reshape(n, -1)
        out.view(np.float32)[:, self.factor_at:] = factors
        return out

    def levels(self, codes: np.ndarray) -> np.ndarray:
        """The centred grid vectors y (n, D) float32 of codes."""
        n = codes.shape[0]
        planes = codes.view(np.uint64)[:, :self.bits * self.words].reshape(n, self.bits, self.words)
        bits = np.unpackbits(planes.view(np.uint8).reshape(n, self.bits, -1), axis=2, bitorder="little")
        level = (bits.astype(np.int64) << np.arange(self.bits)[None, :, None]).sum(1)
        return (level - (2 ** self.bits - 1) / 2.0).astype(np.float32)

    def factors(self, codes: np.ndarray) -> np.ndarray:
        """(n, 4) float32: |r|, 1 / (|y| cos), sum of levels, error factor."""
        return np.ascontiguousarray(codes.view(np.float32)[:, self.factor_at:])

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        """The projection of each residual on its grid direction, rotated back: ``|r| cos * y / |y|``."""
        y = self.levels(codes)
        f = self.factors(codes)
        ynorm = np.linalg.norm(y, axis=1)
        fcos = 1.0 / np.maximum(f[:, 1] * ynorm, 1e-30)
        scale = (f[:, 0] * fcos / np.maximum(ynorm, 1e-30)).astype(np.float32)
        return ((y * scale[:, None]) @ self.rotation.T)[:, :self.dim] + self.center

    # ---- distances ----------------------------------------------------------------------------------------------
    def _query_side(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rotated query directions (nq, D), constant term (nq,)) of the internal distance."""
        if METRIC_CODES[self.metric] == IP:
            return self.rotate(q), -(q @ self.center)
        qc = q - self.center
        return self.rotate(qc), np.einsum("ij,ij->i", qc, qc)

    def _estimate(self, q: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        qp, const = self._query_side(q)
        f = self.factors(codes)
        inner = (qp @ self.levels(codes).T) * (f[:, 0] * f[:, 1])[None, :]  # ~ <r, q'>
        err = EPS0 * np.linalg.norm(qp, axis=1)[:, None] * (f[:, 0] * f[:, 3])[None, :]
        if METRIC_CODES[self.metric] == IP:
            return const[:, None] - inner, err, f
        return (f[:, 0] ** 2)[None, :] + const[:, None] - 2.0 * inner, 2.0 * err, f

    def _distances(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return self._estimate(q, codes)[0].astype(np.float32)

    def distance_bounds(self, queries: Any, codes: Any, eps0: float = EPS0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, lower, upper) (nq, n) float32 of the internal distances: ``eps0`` standard deviations of
        the estimator either side (:data:`EPS0`: 1.9 holds for about 94% of pairs, 3.0 for 99.7%)."""
        self._require_trained()
        q = check_vectors(queries, self.dim, "queries")
        est, err, _ = self._estimate(q, self._check_codes(codes))
        err *= float(eps0) / EPS0
        return est.astype(np.float32), (est - err).astype(np.float32), (est + err).astype(np.float32)

    def scorer(self, queries: np.ndarray, centers: np.ndarray, codes: np.ndarray, nthreads: int) -> RaBitQCodes:
        """The list-scan scorer (:mod:`simdex.core.lists`) of ``queries`` over ``codes`` coded relative to
        ``centers`` (nlist, dim) plus this codec's centre (list ``l``'s entries: residuals to ``centers[l]``)."""
        key = (centers, self.center, self.rotation)
        cached = getattr(self, "_rotated_centers", None)
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            # the rotated list centres, once per set of arrays (training and an IVF's retraining replace them,
            # never change them) rather than once per call: rotating 283 centres of 384-d cost each call 3 ms
            cached = self._rotated_centers = (key, self.rotate(centers + self.center))
        return RaBitQCodes(self.rotate(queries), cached[1],
                           METRIC_CODES[self.metric] != IP, codes.view(np.uint64), codes.view(np.float32),
                           self.bits, self.words, self.factor_at, np.float32((2 ** self.bits - 1) / 2.0),
                           np.float32(self.padded), np.empty((nthreads, self.padded), np.float32),
                           np.empty((nthreads, RK.QUERY_BITS, self.words), np.uint64))

    def point_scorer(self, queries: np.ndarray, codes: np.ndarray, nthreads: int) -> RaBitQPoints:
        """The graph-search scorer (:mod:`simdex.core.graph`) of ``queries`` over ``codes`` coded relative to this
        codec's centre: each query is rotated and quantised once."""
        return RaBitQPoints(self.rotate(queries), self.rotate(self.center[None, :]),
                            METRIC_CODES[self.metric] != IP, codes.view(np.uint64), codes.view(np.float32),
                            self.bits, self.words, self.factor_at, np.float32((2 ** self.bits - 1) / 2.0),
                            np.float32(self.padded), np.empty((nthreads, self.padded), np.float32),
                            np.empty((nthreads, RK.QUERY_BITS, self.words), np.uint64))

    # ---- persistence --------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"bits": self.bits, "seed": self.seed}, {"center": self.center, "rotation": self.rotation}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.center = expect_array(arrays, "center", (self.dim,), np.float32)
        self.rotation = expect_array(arrays, "rotation", (self.padded, self.padded), np.float32)

    @classmethod
    def _from_params(cls, dim: int, metric: str, meta: dict[str, Any]) -> RaBitQCodec:
        return cls(dim, metric, bits=int(meta["bits"]), seed=int(meta["seed"]))


class RaBitQCodes(NamedTuple):
    """RaBitQ codes in inverted lists: rotated queries ``qrot`` (nq, D) and list centres ``crot`` (nlist, D);
    ``l2`` (else inner product); code rows as uint64 ``words`` and float32 ``fac`` views, ``bits`` planes of
    ``nwords`` words, factors from ``fac_at``; ``h`` the level offset, ``dim_p`` = D; per-thread scratch ``qbuf``
    (threads, D) and ``qplanes`` (threads, 4, nwords)."""

    qrot: np.ndarray
    crot: np.ndarray
    l2: bool
    words: np.ndarray
    fac: np.ndarray
    bits: int
    nwords: int
    fac_at: int
    h: np.float32
    dim_p: np.float32
    qbuf: np.ndarray
    qplanes: np.ndarray


_code_dot = inlined(RK.code_dot)
_quantize_query = inlined(RK.quantize_query)


def _rabitq_prepare(sc, qi, t):
    """Inner product: the rotated query is the same for every list, so it is quantised once per query."""
    if sc.l2:
        return t, np.float32(0.0), np.float32(0.0), np.float32(0.0)
    low, delta, sum_u = _quantize_query(sc.qrot[qi], sc.qplanes[t])
    return t, low, delta, sum_u


def _rabitq_list_query(sc, q, qi, p, lst):
    t, low, delta, sum_u = q
    const = np.float32(0.0)
    if sc.l2:  # the query relative to the list's centre, quantised for this list
        buf = sc.qbuf[t]
        for i in range(buf.shape[0]):
            buf[i] = sc.qrot[qi, i] - sc.crot[lst, i]
            const += buf[i] * buf[i]
        low, delta, sum_u = _quantize_query(buf, sc.qplanes[t])
    else:
        for i in range(sc.qrot.shape[1]):
            const -= sc.qrot[qi, i] * sc.crot[lst, i]
    return sc.qplanes[t], low, delta, sum_u, const


def _rabitq_score(sc, q, v):
    planes, low, delta, sum_u, const = q
    s = _code_dot(planes, sc.words, v, sc.bits, sc.nwords)
    f0 = sc.fac[v, sc.fac_at]
    inner = f0 * sc.fac[v, sc.fac_at + 1] * (delta * np.float32(s) + low * sc.fac[v, sc.fac_at + 2]
                                             - sc.h * (delta * sum_u + sc.dim_p * low))
    if sc.l2:
        return f0 * f0 + const - np.float32(2.0) * inner
    return const - inner


implement(RaBitQCodes, query=_rabitq_prepare, list_query=_rabitq_list_query, score=_rabitq_score)


class RaBitQPoints(RaBitQCodes):
    """RaBitQ codes relative to one centre (``crot`` (1, D)), scored by a graph search: the fields of
    :class:`RaBitQCodes` (a class of its own, so that its query is prepared once, as a graph search wants)."""

    __slots__ = ()


_prepare = inlined(kernel(_rabitq_prepare))
_prepare_list = inlined(kernel(_rabitq_list_query))

implement(RaBitQPoints, query=lambda sc, qi, t: _prepare_list(sc, _prepare(sc, qi, t), qi, 0, 0),
          score=_rabitq_score)
