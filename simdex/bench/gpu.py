"""``python -m simdex.bench gpu``: the exact GPU index against what the card can do and against naive torch.

On one device, with synthetic data made there (no host transfer; the GPU machine has little room for files):

- **batch 1**: one query at a time over n x dim vectors; the bytes of vectors read per second, against a
  device-to-device copy of the same tensor (the card's reachable bandwidth, timed in the same run);
- **batch 1,024**: queries per second of ``GPUFlatIndex`` (fused kernel) against naive torch (``q @ x.T`` then
  ``torch.topk`` on the full distance matrix), k = 10 and 100.

Every timing is the best of ``repeats`` runs after a warm-up, synchronised with the device. Without CUDA it runs on
torch's CPU device with the torch path (small sizes: a smoke test of the bench, not figures to report).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _timed(torch: Any, device: Any, fn: Any, repeats: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def run(n: int = 1_000_000, dim: int = 384, dtype: str = "float16", batch: int = 1024, ks: tuple[int, ...] = (10, 100),
        repeats: int = 5, device: str = "auto") -> dict[str, Any]:
    import torch

    from ..gpu import GPUFlatIndex
    from ..gpu.flat import resolve_device
    dev, choice = resolve_device(device)
    if dev.type == "cpu":
        n = min(n, 20_000)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn((n, dim), generator=gen, device=dev, dtype=torch.float32).to(getattr(torch, dtype))
    q = torch.randn((batch, dim), generator=gen, device=dev, dtype=torch.float32)
    index = GPUFlatIndex(dim, "l2", dtype=dtype, device=str(dev))
    index.add(x)
    vector_bytes = n * dim * x.element_size()
    report: dict[str, Any] = {"n": n, "dim": dim, "dtype": dtype, "batch": batch, "device": str(dev),
                              "device_choice": choice, "kernel": "triton" if dev.type == "cuda" else "torch",
                              "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                              "torch": torch.__version__, "repeats": repeats, "points": []}
    copy_to = torch.empty_like(x)
    copy_s = _timed(torch, dev, lambda: copy_to.copy_(x), repeats)
    report["copy_bytes_per_s"] = vector_bytes / copy_s  # (a copy reads and writes: the read rate is this)
    for k in ks:
        one = q[:1]
        single_s = _timed(torch, dev, lambda: index.search(one, k, output="torch"), repeats)
        batch_s = _timed(torch, dev, lambda: index.search(q, k, output="torch"), repeats)
        xf = x if dev.type == "cuda" else x.float()  # (half-precision products are slow or missing on the CPU)

        def naive() -> Any:  # the baseline: the full (nq x n) product, then topk (less work than L2)
            return torch.topk(q.to(xf.dtype) @ xf.T, k, dim=1)

        naive_s = _timed(torch, dev, naive, repeats)
        report["points"].append({"k": k, "single_ms": single_s * 1e3, "single_bytes_per_s": vector_bytes / single_s,
                                 "single_share_of_copy": (vector_bytes / single_s) / report["copy_bytes_per_s"],
                                 "batch_qps": batch / batch_s, "naive_batch_qps": batch / naive_s,
                                 "batch_speedup_over_naive": naive_s / batch_s})
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"GPUFlatIndex, {report['n']:,} x {report['dim']} {report['dtype']} on {report['device_name']} "
             f"({report['device_choice']}, kernel {report['kernel']}); device-to-device copy "
             f"{report['copy_bytes_per_s'] / 1e9:.1f} GB/s",
             "| k | batch 1 ms | batch 1 GB/s | share of copy | batch QPS | naive torch QPS | speed-up |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for p in report["points"]:
        lines.append(f"| {p['k']} | {p['single_ms']:.3f} | {p['single_bytes_per_s'] / 1e9:.1f} | "
                     f"{p['single_share_of_copy']:.0%} | {p['batch_qps']:,.0f} | {p['naive_batch_qps']:,.0f} | "
                     f"{p['batch_speedup_over_naive']:.2f}x |")
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu.json"
    path.write_text(json.dumps(report, indent=1))
    return path
