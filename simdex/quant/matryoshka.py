"""Adaptive-dimension search (AdANNS: Rege et al., "AdANNS: A Framework for Adaptive Semantic Search", NeurIPS
2023): find candidates with the first ``prefix`` dimensions, re-rank them with all of them.

Matryoshka-trained embeddings put the most information in their leading dimensions, so a prefix is a cheaper
embedding of its own. Embeddings that were not trained that way (all-MiniLM-L6-v2, for one) get the same
property from a PCA rotation learnt on the first ``add`` (``pca=True``): the rotation is orthogonal, so full-
dimension distances are unchanged, and its leading coordinates carry the most variance.

The candidate search runs on an exact :class:`~simdex.FlatIndex` of the prefixes, or with ``nlist > 0`` on an
:class:`~simdex.quant.IVFIndex` of them (the IVF clustering and list scan both in the prefix space, AdANNS-IVF
with d_c = d_s); re-ranking reads the full vectors, kept in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import check_ids, check_k, check_metric, check_positive_int, check_vectors
from ..dense.flat import FlatIndex
from ..errors import DuplicateIdError, InvalidInputError
from ..metrics import to_public
from .ivf import IVFIndex


class MatryoshkaIndex:
    """k-NN by prefix search + full re-rank.

    Parameters
    ----------
    dim : int
    metric : "l2", "ip" or "cosine"
    prefix : int, default 64
        Dimensions used by the candidate search (1 <= prefix <= dim).
    rerank : int, default 100
        Candidates re-scored with all dimensions (at least k).
    nlist, nprobe : int
        With ``nlist > 0`` the prefixes go into an IVF index with float lists (else an exact flat index).
    pca : bool, default True
        Rotate the space by the PCA of the first added batch (see the module docstring).

    ``search`` returns (distances float32 (nq, k) exact in the public convention, ids int64 (nq, k)).
    """

    def __init__(self, dim: int, metric: str = "cosine", prefix: int = 64, rerank: int = 100, nlist: int = 0,
                 nprobe: int = 8, pca: bool = True) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.metric = check_metric(metric)
        self.prefix = check_positive_int(prefix, "prefix")
        if self.prefix > self.dim:
            raise InvalidInputError(f"prefix={prefix} exceeds dim={dim}")
        self.rerank = check_positive_int(rerank, "rerank")
        self.nlist = check_positive_int(nlist, "nlist", minimum=0)
        self.nprobe = check_positive_int(nprobe, "nprobe")
        self.pca = bool(pca)
        # a prefix of a unit vector is not unit: inner products of prefixes approximate the full cosine
        inner_metric = "ip" if self.metric == "cosine" else self.metric
        self._inner = IVFIndex(self.prefix, inner_metric, nlist=self.nlist, codec="flat", nprobe=self.nprobe,
                               vectors="none") if self.nlist else FlatIndex(self.prefix, inner_metric)
        self._mean = np.zeros(self.dim, np.float32)
        self._rotation: np.ndarray | None = None
        self._full = np.zeros((0, self.dim), np.float32)
        self._ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def _rotate(self, x: np.ndarray) -> np.ndarray:
        if self._rotation is None:
            return x
        # centring is left out for ip / cosine (it would change inner products); l2 distances ignore it anyway
        return np.ascontiguousarray(x @ self._rotation)

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Add vectors (n, dim); returns their int64 ids (default: consecutive from the current size)."""
        x = check_vectors(vectors, self.dim, normalize=self.metric == "cosine")
        new_ids = np.arange(len(self), len(self) + x.shape[0], dtype=np.int64) if ids is None else \
            check_ids(ids, x.shape[0])
        if np.isin(new_ids, self._ids).any():
            raise DuplicateIdError("some ids are already in the index")
        rotation = self._rotation
        if self.pca and rotation is None:
            c = x.astype(np.float64)
            cov = c.T @ c / max(1, x.shape[0])  # uncentred second moment: the basis for ip / cosine as for l2
            w, v = np.linalg.eigh(cov)
            rotation = np.ascontiguousarray(v[:, ::-1], dtype=np.float32)
        xr = np.ascontiguousarray(x @ rotation) if rotation is not None else x
        self._inner.add(np.ascontiguousarray(xr[:, :self.prefix]), np.arange(len(self), len(self) + x.shape[0]))
        self._rotation = rotation
        self._full = np.concatenate([self._full, xr])
        self._ids = np.concatenate([self._ids, new_ids])
        return new_ids

    def search(self, queries: Any, k: int, *, rerank: int | None = None, nprobe: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest by full-dimension distance among the ``rerank`` nearest by prefix distance."""
        q = self._rotate(check_vectors(queries, self.dim, "queries", normalize=self.metric == "cosine"))
        k = check_k(k, len(self))
        r = min(len(self), max(k, self.rerank if rerank is None else check_positive_int(rerank, "rerank")))
        kwargs = {"nprobe": nprobe} if self.nlist and nprobe is not None else {}
        _, cand = self._inner.search(np.ascontiguousarray(q[:, :self.prefix]), r, **kwargs)
        out_d = np.full((q.shape[0], k), np.inf, np.float32)
        out_i = np.full((q.shape[0], k), -1, np.int64)
        for s in range(0, q.shape[0], 256):
            c = cand[s:s + 256]
            valid = c >= 0
            x = self._full[np.maximum(c, 0)]  # (b, r, dim)
            qb = q[s:s + 256]
            if self.metric == "l2":
                d = ((x - qb[:, None, :]) ** 2).sum(-1)
            else:
                d = -np.einsum("bd,brd->br", qb, x)
            d = np.where(valid, d, np.inf).astype(np.float32)
            order = np.argsort(d, axis=1, kind="stable")[:, :k]
            out_d[s:s + 256, :order.shape[1]] = np.take_along_axis(d, order, 1)
            picked = np.take_along_axis(c, order, 1)
            out_i[s:s + 256, :order.shape[1]] = np.where(picked >= 0, self._ids[np.maximum(picked, 0)], -1)
        out_i[~np.isfinite(out_d)] = -1
        return to_public(self.metric, out_d), out_i
