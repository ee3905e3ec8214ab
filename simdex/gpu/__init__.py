"""GPU search on torch (extra ``simdex[gpu]``: torch, and triton for the fused kernel).

:class:`GPUFlatIndex` keeps its vectors in a torch device's memory (float32, float16 or bfloat16) and searches
them exactly: on CUDA with a Triton kernel that fuses the distance computation with the k-selection
(:mod:`simdex.gpu._kernels`), elsewhere with tiled matrix products and ``torch.topk``. ``device="auto"`` uses a
GPU when torch sees one and otherwise the CPU, and says which in ``info()``::

    from simdex.gpu import GPUFlatIndex
    index = GPUFlatIndex(384, "cosine", dtype="float16", device="auto")
    index.add(vectors)                      # numpy, or a torch tensor already on the device
    distances, ids = index.search(queries, 10)

Not built yet (issue 28): the IVF(-PQ) index with GPU-trained quantizers, streaming vectors larger than device
memory from pinned host memory, and collections with ``device="cuda"``. No figure on a GPU has been measured yet:
the code and its tests ran on the CPU (the Triton kernel under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from .flat import GPUFlatIndex, resolve_device

__all__ = ["GPUFlatIndex", "resolve_device"]
