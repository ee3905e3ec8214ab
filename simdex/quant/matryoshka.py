"""Adaptive-dimension search (AdANNS: Rege et al., "AdANNS: A Framework for Adaptive Semantic Search", NeurIPS
2023): find candidates with the first ``prefix`` dimensions, re-rank them with all of them.

Matryoshka-trained embeddings put the most information in their leading dimensions, so a prefix is a cheaper
embedding of its own. Embeddings that were not trained that way (all-MiniLM-L6-v2, for one) get the same
property from a PCA rotation learnt on the first ``add`` (``pca=True``): the rotation is orthogonal, so full-
dimension distances are unchanged, and its leading coordinates carry the most variance.

The candidate search runs on an exact :class:`~simdex.FlatIndex` of the prefixes, or with ``nlist > 0`` on an
:class:`~simdex.quant.IVFIndex` of them (the IVF clustering and list scan both in the prefix space, AdANNS-IVF
with d_c = d_s); re-ranking reads the full vectors, kept in memory (unrotated, so re-ranked distances are exactly the brute-force
ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import check_positive_int
from ..dense.flat import FlatIndex
from ..errors import CorruptFileError, InvalidInputError
from ..index import Index, index_class, meta_int, sub_arrays
from ..metrics import to_public
from .ivf import IVFIndex

_RERANK_BLOCK = 256  # queries re-ranked per numpy block: bounds the (block, rerank, dim) gather


class MatryoshkaIndex(Index):
    """k-NN by prefix search + full re-rank.

    Parameters
    ----------
    dim : int
    metric : "l2", "ip" or "cosine"
    prefix : int, default min(64, dim)
        Dimensions used by the candidate search (1 <= prefix <= dim).
    rerank : int, default 100
        Candidates re-scored with all dimensions (at least k).
    nlist, nprobe : int
        With ``nlist > 0`` the prefixes go into an IVF index with float lists (else an exact flat index).
    pca : bool, default True
        Rotate the space by the PCA of the first added batch (see the module docstring).

    ``search`` returns (distances float32 (nq, k) exact in the public convention, ids int64 (nq, k)).
    Memory: ``4 * (dim + prefix)`` bytes per vector plus the rotation (``4 * dim**2``).
    """

    kind = "MatryoshkaIndex"

    def __init__(self, dim: int, metric: str = "cosine", prefix: int | None = None, rerank: int = 100,
                 nlist: int = 0, nprobe: int = 8, pca: bool = True) -> None:
        super().__init__(dim, metric)
        self.prefix = min(64, self.dim) if prefix is None else check_positive_int(prefix, "prefix")
        if self.prefix > self.dim:
            raise InvalidInputError(f"prefix={prefix} exceeds dim={dim}")
        self.rerank = check_positive_int(rerank, "rerank")
        self.nlist = check_positive_int(nlist, "nlist", minimum=0)
        self.nprobe = check_positive_int(nprobe, "nprobe")
        self.pca = bool(pca)
        # the inner index is keyed by storage slot; a prefix of a unit vector is not unit, so inner products of
        # prefixes (not cosines) approximate the full cosine
        self._inner = self._new_inner()
        self._rotation: np.ndarray | None = None
        self._full = np.zeros((0, self.dim), np.float32)

    def _new_inner(self) -> Index:
        inner_metric = "ip" if self.metric == "cosine" else self.metric
        if self.nlist:
            return IVFIndex(self.prefix, inner_metric, nlist=self.nlist, codec="flat", nprobe=self.nprobe,
                            vectors="none")
        return FlatIndex(self.prefix, inner_metric)

    def _num_slots(self) -> int:
        return int(self._full.shape[0])

    @property
    def nbytes(self) -> int:
        rotation = 0 if self._rotation is None else self._rotation.nbytes
        return int(self._full.nbytes + rotation + getattr(self._inner, "nbytes", 0) + self._idmap.nbytes)

    def _prefixes(self, x: np.ndarray, rotation: np.ndarray | None) -> np.ndarray:
        # centring is left out for ip / cosine (it would change inner products); l2 distances ignore it anyway
        xr = x if rotation is None else x @ rotation
        return np.ascontiguousarray(xr[:, :self.prefix], np.float32)

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Add vectors (n, dim); returns their int64 ids (default: the next free integers)."""
        x, new_ids = self._check_add(vectors, ids)
        rotation = self._rotation
        if self.pca and rotation is None:
            c = x.astype(np.float64)
            cov = c.T @ c / max(1, x.shape[0])  # uncentred second moment: the basis for ip / cosine as for l2
            _, v = np.linalg.eigh(cov)
            rotation = np.ascontiguousarray(v[:, ::-1], dtype=np.float32)
        start = self._num_slots()
        self._inner.add(self._prefixes(x, rotation), np.arange(start, start + x.shape[0]))
        self._rotation = rotation
        self._full = np.concatenate([self._full, x])
        self._idmap.append(new_ids)
        return new_ids

    def search(self, queries: Any, k: int, *, rerank: int | None = None, nprobe: int | None = None,
               filter: Any = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest by full-dimension distance among the ``rerank`` nearest by prefix distance."""
        q, k, allowed, threads = self._check_search(queries, k, filter, threads)
        r = min(self.ntotal, max(k, self.rerank if rerank is None else check_positive_int(rerank, "rerank")))
        kwargs: dict[str, Any] = {"threads": threads}
        if nprobe is not None:  # checked here even when there is no IVF to probe (nlist=0)
            nprobe = check_positive_int(nprobe, "nprobe")
            if self.nlist:
                kwargs["nprobe"] = nprobe
        if allowed is not None:
            kwargs["filter"] = allowed.astype(bool)  # inner ids are slots, so a slot mask is an id mask there
        _, cand = self._inner.search(self._prefixes(q, self._rotation), r, **kwargs)
        out_d = np.full((q.shape[0], k), np.inf, np.float32)
        out_s = np.full((q.shape[0], k), -1, np.int64)
        for s in range(0, q.shape[0], _RERANK_BLOCK):
            c = cand[s:s + _RERANK_BLOCK]
            valid = c >= 0
            x = self._full[np.maximum(c, 0)]  # (b, r, dim)
            qb = q[s:s + _RERANK_BLOCK]
            if self.metric == "l2":
                d = ((x - qb[:, None, :]) ** 2).sum(-1)
            else:
                d = -np.einsum("bd,brd->br", qb, x)
            d = np.where(valid, d, np.inf).astype(np.float32)
            order = np.argsort(d, axis=1, kind="stable")[:, :k]
            out_d[s:s + _RERANK_BLOCK, :order.shape[1]] = np.take_along_axis(d, order, 1)
            out_s[s:s + _RERANK_BLOCK, :order.shape[1]] = np.take_along_axis(c, order, 1)
        found = np.isfinite(out_d) & (out_s >= 0)
        ids = np.where(found, self._idmap.slot_ids[np.maximum(out_s, 0)], -1)
        return to_public(self.metric, out_d), ids

    def remove(self, ids: Any) -> int:
        slots = self._slots_for_removal(ids)
        self._inner.remove(slots)
        self._idmap.release(slots)
        return int(slots.shape[0])

    def get_vectors(self, ids: Any) -> np.ndarray:
        return np.array(self._full[self._slots_for_removal(ids)])

    # ---- persistence ---------------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        inner_kind, inner_meta, inner_arrays = self._inner.snapshot()
        meta = {"count": self._num_slots(), "prefix": self.prefix, "rerank": self.rerank, "nlist": self.nlist,
                "nprobe": self.nprobe, "pca": self.pca, "rotated": self._rotation is not None,
                "inner_kind": inner_kind, "inner": inner_meta}
        rotation = self._rotation if self._rotation is not None else np.zeros((0, self.dim), np.float32)
        arrays = {"vectors": self._full, "rotation": rotation,
                  **{f"inner.{name}": arr for name, arr in inner_arrays.items()}}
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> MatryoshkaIndex:
        dim = meta_int(meta, "dim", 1)
        index = cls(dim, meta["metric"], prefix=meta_int(meta, "prefix", 1), rerank=meta_int(meta, "rerank", 1),
                    nlist=meta_int(meta, "nlist"), nprobe=meta_int(meta, "nprobe", 1), pca=bool(meta["pca"]))
        vectors = arrays["vectors"]
        if vectors.dtype != np.float32 or vectors.shape != (meta_int(meta, "count"), dim):
            raise ValueError("vectors array has the wrong dtype or shape")
        index._full = vectors
        if meta["rotated"]:
            rotation = arrays["rotation"]
            if rotation.dtype != np.float32 or rotation.shape != (dim, dim):
                raise ValueError("rotation array has the wrong dtype or shape")
            index._rotation = rotation
        inner_cls = index_class(meta["inner_kind"])
        if inner_cls is None or inner_cls is cls or not issubclass(inner_cls, Index):
            raise ValueError(f"unknown inner index kind {meta['inner_kind']!r}")
        inner = inner_cls._restore(meta["inner"], sub_arrays(arrays, "inner"))
        if inner.dim != index.prefix:
            raise ValueError("the inner index does not match the prefix length")
        index._inner = inner
        return index

    def _check_loaded(self) -> None:
        super()._check_loaded()
        live = self._idmap.slot_ids >= 0
        if len(self._inner) != int(live.sum()) or not np.array_equal(np.sort(self._inner.ids), np.flatnonzero(live)):
            raise CorruptFileError("the inner prefix index does not hold exactly the live slots")
