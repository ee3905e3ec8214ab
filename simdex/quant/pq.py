"""Product quantization (Jégou, Douze & Schmid, "Product quantization for nearest neighbor search", 2011) and
optimized PQ (Ge, He, Ke & Sun, "Optimized product quantization", 2013).

PQ splits a vector into m sub-vectors of ``dsub = ceil(dim / m)`` dimensions (zero-padded) and codes each with
the index of its nearest of 256 centroids learnt by k-means on that subspace: m bytes per vector. Search builds a
(m, 256) table of distances from the query's sub-vectors to every centroid once, and then the distance to any
code is m table lookups (ADC). OPQ first rotates the space with an orthogonal matrix R learnt by alternating PQ
training and the orthogonal Procrustes problem (R = U V^T from the SVD of X^T Y), which balances variance
between the subspaces; distances are rotation-invariant, so only the query is rotated at search time.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .._progress import progress_bar
from .._validate import check_positive_int
from ..errors import InvalidInputError
from ..metrics import METRIC_CODES
from . import _pq_kernels as PK
from ._kmeans import kmeans
from .codec import Codec, expect_array

KS = 256  # centroids per sub-quantizer (8-bit codes)
_MAX_TRAIN = 256 * KS  # training vectors used per sub-quantizer at most (more adds little)


class PQCodec(Codec):
    """Product quantizer with ``m`` 8-bit sub-quantizers: ``code_size = m`` bytes.

    Parameters: ``dim``, ``metric``, ``m`` (sub-quantizers), ``iterations`` (k-means iterations), ``seed``.
    Training needs at least 256 vectors.
    """

    name = "pq"

    def __init__(self, dim: int, metric: str = "l2", m: int = 8, iterations: int = 20, seed: int = 0) -> None:
        super().__init__(dim, metric)
        self.m = check_positive_int(m, "m")
        if self.m > self.dim:
            raise InvalidInputError(f"m={m} sub-quantizers need dim >= m; dim={dim}")
        self.iterations = check_positive_int(iterations, "iterations")
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.dsub = -(-self.dim // self.m)
        self.centroids = np.zeros((self.m, KS, self.dsub), np.float32)
        self._centroids_t: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}, m={self.m})"

    @property
    def code_size(self) -> int:
        return self.m

    @property
    def padded_dim(self) -> int:
        return self.m * self.dsub

    @property
    def centroids_t(self) -> np.ndarray:
        """The codebook as (m, dsub, 256) float32, the layout the distance-table kernel reads."""
        if self._centroids_t is None:
            self._centroids_t = np.ascontiguousarray(self.centroids.transpose(0, 2, 1))
        return self._centroids_t

    # the transform applied before splitting (OPQ overrides it with its rotation)
    def transform(self, x: np.ndarray) -> np.ndarray:
        """Pad (and for OPQ rotate) vectors (n, dim) into the quantizer's space (n, m * dsub)."""
        if self.padded_dim == self.dim:
            return np.ascontiguousarray(x, np.float32)
        out = np.zeros((x.shape[0], self.padded_dim), np.float32)
        out[:, :self.dim] = x
        return out

    def inverse_transform(self, y: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(y[:, :self.dim])

    def _sample(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] < KS:
            raise InvalidInputError(f"PQ training needs at least {KS} vectors; got {x.shape[0]}")
        if x.shape[0] > _MAX_TRAIN:
            rng = np.random.default_rng(self.seed)
            x = x[np.sort(rng.choice(x.shape[0], _MAX_TRAIN, replace=False))]
        return x

    def _train(self, x: np.ndarray) -> None:
        self._train_subspaces(self.transform(self._sample(x)), self.iterations)

    def _train_subspaces(self, y: np.ndarray, iterations: int, progress: bool | None = None) -> None:
        # a long training shows a bar on a terminal (never in a server's log or a database's background merge)
        bar = progress_bar(self.m, "PQ training", progress if progress is not None else
                           (y.shape[0] * self.dim >= 10_000_000 and sys.stderr.isatty()) or None, unit="subq")
        device = getattr(self, "train_device", None)  # set by an index built with train_device
        if device is not None:
            from ..gpu import train_kmeans
        for j in range(self.m):
            sub = np.ascontiguousarray(y[:, j * self.dsub:(j + 1) * self.dsub])
            self.centroids[j] = kmeans(sub, KS, iterations, seed=self.seed + j, progress=False) if device is None \
                else train_kmeans(sub, KS, device=device, iters=iterations, seed=self.seed + j)
            self._centroids_t = None
            bar.update(1)
        bar.close()

    def encode_transformed(self, y: np.ndarray) -> np.ndarray:
        """Codes of vectors already in the quantizer's space (see :meth:`transform`)."""
        out = np.empty((y.shape[0], self.m), np.uint8)
        PK.encode_pq(np.ascontiguousarray(y, np.float32), self.centroids, out)
        return out

    def decode_transformed(self, codes: np.ndarray) -> np.ndarray:
        return self.centroids[np.arange(self.m)[None, :], codes.astype(np.int64)].reshape(codes.shape[0], -1)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        return self.encode_transformed(self.transform(x))

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self.inverse_transform(self.decode_transformed(codes))

    def tables(self, q: np.ndarray) -> np.ndarray:
        """ADC tables (nq, m, 256) float32 of queries (nq, dim)."""
        y = self.transform(q)
        out = np.empty((q.shape[0], self.m, KS), np.float32)
        for i in range(q.shape[0]):
            PK.adc_table(METRIC_CODES[self.metric], y[i], self.centroids_t, out[i])
        return out

    def _distances(self, q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        out = np.empty((q.shape[0], codes.shape[0]), np.float32)
        PK.adc_distances(self.tables(q), codes, out)
        return out

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"m": self.m, "iterations": self.iterations, "seed": self.seed}, {"centroids": self.centroids}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.centroids = expect_array(arrays, "centroids", (self.m, KS, self.dsub), np.float32)
        self._centroids_t = None

    @classmethod
    def _from_spec(cls, spec: str, dim: int, metric: str) -> PQCodec | None:
        """``"pq<m>"`` (``"opq<m>"`` for OPQ): m sub-quantizers."""
        m = spec[len(cls.name):]
        return cls(dim, metric, m=int(m)) if spec.startswith(cls.name) and m.isdigit() else None

    @classmethod
    def _from_params(cls, dim: int, metric: str, meta: dict[str, Any]) -> PQCodec:
        return cls(dim, metric, m=int(meta["m"]), iterations=int(meta["iterations"]), seed=int(meta["seed"]))


class OPQCodec(PQCodec):
    """PQ after a learnt orthogonal rotation (OPQ, non-parametric variant): ``opq_iterations`` rounds of
    (PQ on the rotated data, a few k-means iterations) and (Procrustes update of the rotation), then a full PQ
    training on the final rotation. Same code size as PQ (m bytes); queries pay one (dim x dim) product."""

    name = "opq"

    def __init__(self, dim: int, metric: str = "l2", m: int = 8, iterations: int = 20, seed: int = 0,
                 opq_iterations: int = 8) -> None:
        super().__init__(dim, metric, m=m, iterations=iterations, seed=seed)
        self.opq_iterations = check_positive_int(opq_iterations, "opq_iterations")
        self.rotation = np.eye(self.padded_dim, dtype=np.float32)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(super().transform(x) @ self.rotation)

    def inverse_transform(self, y: np.ndarray) -> np.ndarray:
        return super().inverse_transform(y @ self.rotation.T)

    def _train(self, x: np.ndarray) -> None:
        xs = PQCodec.transform(self, self._sample(x))
        rng = np.random.default_rng(self.seed)
        # start from a random rotation: it spreads variance over the subspaces before the first PQ
        self.rotation = np.linalg.qr(rng.standard_normal((self.padded_dim, self.padded_dim)))[0].astype(np.float32)
        bar = progress_bar(self.opq_iterations, "OPQ training", xs.shape[0] * self.dim >= 10_000_000 or None,
                           unit="iter")
        for _ in range(self.opq_iterations):
            y = xs @ self.rotation
            self._train_subspaces(y, 4, progress=False)
            yhat = self.decode_transformed(self.encode_transformed(y))
            u, _, vt = np.linalg.svd(xs.T.astype(np.float64) @ yhat.astype(np.float64))
            self.rotation = (u @ vt).astype(np.float32)
            bar.update(1)
        bar.close()
        self._train_subspaces(xs @ self.rotation, self.iterations)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = super()._state()
        meta["opq_iterations"] = self.opq_iterations
        return meta, {**arrays, "rotation": self.rotation}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super()._set_state(meta, arrays)
        self.rotation = expect_array(arrays, "rotation", (self.padded_dim, self.padded_dim), np.float32)

    @classmethod
    def _from_params(cls, dim: int, metric: str, meta: dict[str, Any]) -> OPQCodec:
        return cls(dim, metric, m=int(meta["m"]), iterations=int(meta["iterations"]), seed=int(meta["seed"]),
                   opq_iterations=int(meta["opq_iterations"]))
