"""k-means on a torch device: the coarse quantizer and the product-quantizer codebooks of :mod:`simdex.gpu.ivf`,
and ``train_device="cuda"`` of the CPU indexes' training."""

from __future__ import annotations

from typing import Any

import numpy as np

_BLOCK_BYTES = 256 << 20  # of float32 distances per block of rows assigned at a time


def nearest(x: Any, centroids: Any, metric: str = "l2") -> tuple[Any, Any]:
    """(index int64 (n,), distance float32 (n,)) of each row's nearest centroid, a block of rows at a time (the
    n x k distances are never all in memory): squared L2, or with ``metric="ip"`` the largest inner product (its
    distance ``-<x, c>``)."""
    import torch
    cn = (centroids * centroids).sum(dim=1)
    rows = max(1, _BLOCK_BYTES // (4 * max(1, centroids.shape[0])))
    labels, dists = [], []
    for s in range(0, x.shape[0], rows):
        block = x[s:s + rows]
        prod = block @ centroids.T
        d = -prod if metric == "ip" else cn[None, :] - 2.0 * prod + (block * block).sum(dim=1, keepdim=True)
        best, at = torch.min(d, dim=1)
        labels.append(at)
        dists.append(best if metric == "ip" else best.clamp(min=0.0))
    return torch.cat(labels), torch.cat(dists)


def kmeans(x: Any, k: int, *, iters: int = 20, seed: int = 0) -> Any:
    """Lloyd's k-means of the float32 rows ``x`` (n, d), a tensor on any device, into ``k`` centroids (k, d) on
    that device. Starts from k distinct random rows; a cluster left empty takes the row farthest from its centroid
    (FAISS's remedy, simplified)."""
    import torch
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means of {n} rows into {k} clusters")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centroids = x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
    for _ in range(iters):
        labels, dists = nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        empty = counts == 0
        centroids = sums / counts.clamp(min=1)[:, None]
        if bool(empty.any()):
            far = torch.topk(dists, int(empty.sum()), largest=True).indices
            centroids[empty] = x[far]
    return centroids


def train_kmeans(x: np.ndarray, k: int, *, device: str, iters: int = 20, seed: int = 0) -> np.ndarray:
    """:func:`kmeans` of a numpy array on ``device`` ("cuda", ...), back as a float32 numpy array: the training
    step the CPU indexes hand over with ``train_device``."""
    import torch

    from .flat import resolve_device
    dev, _ = resolve_device(device)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(dev)
    return kmeans(xt, k, iters=iters, seed=seed).cpu().numpy()
