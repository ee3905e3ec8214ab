"""GPU search on torch (extra ``simdex[gpu]``: torch, and triton for the fused kernels); see docs/gpu.md.

:class:`GPUFlatIndex` keeps its vectors in a torch device's memory (float32, float16 or bfloat16) and searches
them exactly: on CUDA with a Triton kernel that fuses the distance computation with the k-selection
(:mod:`simdex.gpu._kernels`), elsewhere with tiled matrix products and ``torch.topk``. :class:`GPUIVFIndex` scans
inverted lists of vectors or PQ codes, its quantizers trained by k-means on the device (:func:`kmeans`, which the
CPU ``IVFIndex(train_device=...)`` uses too). ``device="auto"`` uses a GPU when torch sees one and otherwise the
CPU, and says which in ``info()``::

    from simdex.gpu import GPUFlatIndex
    index = GPUFlatIndex(384, "cosine", dtype="float16", device="auto")
    index.add(vectors)                      # numpy, or a torch tensor already on the device
    distances, ids = index.search(queries, 10)

No figure on a GPU has been measured yet: the code and its tests ran on the CPU (the Triton kernels under
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from .flat import GPUFlatIndex, resolve_device
from .ivf import GPUIVFIndex
from .kmeans import kmeans, train_kmeans

__all__ = ["GPUFlatIndex", "GPUIVFIndex", "kmeans", "resolve_device", "train_kmeans"]
