"""``python -m simdex.bench gpu``: the exact GPU index against what the card can do and against naive torch.

On one device, with synthetic data made there (no host transfer; the GPU machine has little room for files):

- **batch 1**: one query at a time over n x dim vectors; the bytes of vectors read per second, against a
  device-to-device copy of the same tensor (the card's reachable bandwidth, timed in the same run);
- **batch 1,024**: queries per second of ``GPUFlatIndex`` (fused kernel) against naive torch (``q @ x.T`` then
  ``torch.topk`` on the full distance matrix), k = 10 and 100;
- **vectors in host memory** (``--stream``): :func:`run_streamed`, ``GPUFlatIndex(storage="host")`` whose
  searches copy the vectors to the device tile by tile, against a plain copy of the same bytes from page-locked
  host memory to the device (the link's reachable rate);
- **IVF-PQ** (``--ivf``): :func:`run_ivf` on synthetic clustered data, and with ``--fashion-mnist PACK``
  :func:`run_ivf_fashion_mnist` on real data carried as uint8 (``--pack-fashion-mnist PACK`` writes it here).

Every timing is the best of ``repeats`` runs after a warm-up, synchronised with the device. Without CUDA it runs on
torch's CPU device with the torch path (small sizes: a smoke test of the bench, not figures to report).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


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


def run_streamed(n: int = 4_000_000, dim: int = 384, dtype: str = "float16", batches: tuple[int, ...] = (1, 1024),
                 k: int = 10, repeats: int = 3, device: str = "auto") -> dict[str, Any]:
    """``GPUFlatIndex(storage="host")`` over n x dim synthetic vectors: per batch size, the search's seconds and
    the bytes of vectors it brings to the device per second, against copying the same bytes from page-locked host
    memory into one device buffer tile after tile (no search: the rate the link gives), timed in the same run."""
    import torch

    from ..gpu import GPUFlatIndex
    from ..gpu.flat import _STREAM_TILE_BYTES, resolve_device
    dev, choice = resolve_device(device)
    if dev.type == "cpu":
        n = min(n, 20_000)
    gen = torch.Generator(device=dev).manual_seed(2)
    index = GPUFlatIndex(dim, "l2", dtype=dtype, device=str(dev), storage="host")
    for start in range(0, n, 1 << 20):  # (made on the device a part at a time: n may exceed its memory)
        part = torch.randn((min(n, start + (1 << 20)) - start, dim), generator=gen, device=dev)
        index.add(part)
    q = torch.randn((max(batches), dim), generator=gen, device=dev)
    host = index._x[:n]
    vector_bytes = n * dim * host.element_size()
    tile_rows = _STREAM_TILE_BYTES // (dim * host.element_size())
    buffer = torch.empty((min(n, tile_rows), dim), dtype=host.dtype, device=dev)

    def copy_all() -> None:
        for start in range(0, n, tile_rows):
            stop = min(n, start + tile_rows)
            buffer[:stop - start].copy_(host[start:stop], non_blocking=True)

    copy_s = _timed(torch, dev, copy_all, repeats)
    report: dict[str, Any] = {"n": n, "dim": dim, "dtype": dtype, "k": k, "device": str(dev),
                              "device_choice": choice, "pinned": dev.type == "cuda" and bool(host.is_pinned()),
                              "host_gib": index.host_nbytes / 2**30, "device_mib": index.nbytes / 2**20,
                              "copy_bytes_per_s": vector_bytes / copy_s, "points": []}
    for batch in batches:
        qb = q[:batch]
        s = _timed(torch, dev, lambda: index.search(qb, k, output="torch"), repeats)
        report["points"].append({"batch": batch, "ms": s * 1e3, "qps": batch / s, "bytes_per_s": vector_bytes / s,
                                 "share_of_copy": copy_s / s})
    return report


def format_streamed_report(report: dict[str, Any]) -> str:
    lines = [f"GPUFlatIndex(storage='host'), {report['n']:,} x {report['dim']} {report['dtype']} "
             f"({report['host_gib']:.1f} GiB in {'page-locked ' if report['pinned'] else ''}host memory, "
             f"{report['device_mib']:.0f} MiB on {report['device']}), k={report['k']}; host-to-device copy "
             f"{report['copy_bytes_per_s'] / 1e9:.1f} GB/s",
             "| batch | ms | vectors GB/s | share of copy | QPS |", "|---:|---:|---:|---:|---:|"]
    for p in report["points"]:
        lines.append(f"| {p['batch']} | {p['ms']:.1f} | {p['bytes_per_s'] / 1e9:.1f} | {p['share_of_copy']:.0%} | "
                     f"{p['qps']:,.0f} |")
    return "\n".join(lines)


def run_ivf(n: int = 10_000_000, dim: int = 96, nlist: int = 4096, codec: str = "pq48", rerank: int = 64,
            nprobes: tuple[int, ...] = (4, 8, 16, 32, 64, 128), batch: int = 1024, k: int = 10, repeats: int = 3,
            device: str = "auto", cpu_build_rows: int = 1_000_000) -> dict[str, Any]:
    """IVF-PQ on synthetic clustered data made on the device (n x dim, 10,000 Gaussian clusters): the build (GPU
    k-means and encoding) beside a CPU IVFIndex build of ``cpu_build_rows`` of the rows, then recall@k and QPS by
    nprobe for a batch of queries drawn like the data, against the exact GPU search's QPS."""
    import torch

    from ..gpu.flat import resolve_device
    dev, choice = resolve_device(device)
    if dev.type == "cpu":
        n, nlist, cpu_build_rows = min(n, 20_000), min(nlist, 64), min(cpu_build_rows, 20_000)
    gen = torch.Generator(device=dev).manual_seed(1)
    centres = torch.randn((10_000, dim), generator=gen, device=dev)
    x = centres[torch.randint(0, 10_000, (n,), generator=gen, device=dev)] + \
        0.5 * torch.randn((n, dim), generator=gen, device=dev)
    q = centres[torch.randint(0, 10_000, (batch,), generator=gen, device=dev)] + \
        0.5 * torch.randn((batch, dim), generator=gen, device=dev)
    return _ivf_points(x, q, "synthetic", dev, choice, nlist, codec, rerank, nprobes, k, repeats, cpu_build_rows)


def pack_fashion_mnist(path: str | Path, n_base: int | None = None, n_queries: int | None = None) -> Path:
    """Write Fashion-MNIST (from the shared data sets) as uint8 pixels, which is what they are: a quarter of the
    float32 bytes (55 MB for all 70,000 images), small enough to carry to a GPU machine that has no copy of the
    data sets and no network (``run(..., carry=[path])``). An ``.npz`` of arrays ``base`` and ``queries``, read back
    without pickle."""
    from .. import datasets
    data = datasets.load("fashion-mnist-784")
    base, queries = data.base[:n_base], data.queries[:n_queries]
    if not (np.array_equal(base, np.round(base)) and base.min() >= 0 and base.max() <= 255):
        raise ValueError("fashion-mnist-784 is no longer whole pixel values 0..255")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, base=base.astype(np.uint8), queries=queries.astype(np.uint8))
    return path


def run_ivf_fashion_mnist(path: str | Path, nlist: int = 1024, codec: str = "pq56", rerank: int = 64,
                          nprobes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64), batch: int = 1024, k: int = 10,
                          repeats: int = 3, device: str = "auto") -> dict[str, Any]:
    """IVF-PQ on real data: Fashion-MNIST carried as uint8 (:func:`pack_fashion_mnist`), made float32 on the
    device; recall@k against the exact GPU search, QPS by nprobe against the exact search's, and the build beside
    a CPU IVFIndex build of the same rows."""
    import torch

    from ..gpu.flat import resolve_device
    dev, choice = resolve_device(device)
    with np.load(path, allow_pickle=False) as packed:
        base, queries = packed["base"], packed["queries"]
    if base.dtype != np.uint8 or base.ndim != 2 or queries.shape[1:] != base.shape[1:]:
        raise ValueError(f"{path}: not a Fashion-MNIST pack (uint8 base and queries of the same width)")
    if dev.type == "cpu":  # (a smoke test of the bench, as run_ivf's)
        base, nlist = base[:20_000], min(nlist, 64)
    x = torch.from_numpy(base).to(dev).to(torch.float32)
    q = torch.from_numpy(queries[:batch]).to(dev).to(torch.float32)
    nlist = min(nlist, max(1, x.shape[0] // 39))  # (k-means wants some rows per list)
    return _ivf_points(x, q, "fashion-mnist-784 (uint8)", dev, choice, nlist, codec, rerank, nprobes, k, repeats,
                       x.shape[0])


def _ivf_points(x: Any, q: Any, data: str, dev: Any, choice: str, nlist: int, codec: str, rerank: int,
                nprobes: tuple[int, ...], k: int, repeats: int, cpu_build_rows: int) -> dict[str, Any]:
    """The build and the recall/QPS points of GPUIVFIndex on ``x`` (n, dim) and queries ``q``, tensors on
    ``dev``."""
    import torch

    from ..gpu import GPUFlatIndex, GPUIVFIndex
    from ..quant import IVFIndex
    n, dim = x.shape
    batch = q.shape[0]
    exact = GPUFlatIndex(dim, "l2", device=str(dev))
    exact.add(x)
    truth = exact.search(q, k, output="torch")[1]
    exact_s = _timed(torch, dev, lambda: exact.search(q, k, output="torch"), repeats)
    index = GPUIVFIndex(dim, "l2", nlist=nlist, codec=codec, rerank=rerank, device=str(dev))
    start = time.perf_counter()
    index.add(x)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    build_s = time.perf_counter() - start
    cpu = IVFIndex(dim, "l2", nlist=nlist, codec=codec, rerank=rerank)
    start = time.perf_counter()
    cpu.add(x[:cpu_build_rows].cpu().numpy())
    cpu_build_s = time.perf_counter() - start
    report: dict[str, Any] = {"data": data, "n": n, "dim": dim, "nlist": nlist, "codec": codec, "rerank": rerank,
                              "k": k, "batch": batch, "device": str(dev), "device_choice": choice,
                              "gpu_build_s": build_s, "cpu_build_rows": cpu_build_rows, "cpu_build_s": cpu_build_s,
                              "exact_qps": batch / exact_s, "points": []}
    hits = truth.cpu().numpy()
    for nprobe in nprobes:
        if nprobe > nlist:
            continue
        found = index.search(q, k, nprobe=nprobe)[1]
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, hits)]))
        secs = _timed(torch, dev, lambda: index.search(q, k, nprobe=nprobe, output="torch"), repeats)
        report["points"].append({"nprobe": nprobe, "recall": recall, "qps": batch / secs,
                                 "qps_over_exact": exact_s / secs})
    return report


def format_ivf_report(report: dict[str, Any]) -> str:
    lines = [f"GPUIVFIndex {report['codec']} (rerank {report['rerank']}), {report['n']:,} x {report['dim']} "
             f"{report.get('data', 'synthetic')}, nlist {report['nlist']} on {report['device']}: "
             f"build {report['gpu_build_s']:.1f} s "
             f"(CPU IVFIndex on {report['cpu_build_rows']:,} rows: {report['cpu_build_s']:.1f} s); exact "
             f"{report['exact_qps']:,.0f} QPS at batch {report['batch']}",
             "| nprobe | recall@10 | QPS | x exact |", "|---:|---:|---:|---:|"]
    for p in report["points"]:
        lines.append(f"| {p['nprobe']} | {p['recall']:.3f} | {p['qps']:,.0f} | {p['qps_over_exact']:.1f}x |")
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    extra = ("ivf", "ivf_fashion_mnist", "streamed")
    if any(key in report for key in extra):
        return "\n\n".join([format_report({k: v for k, v in report.items() if k not in extra})] +
                           [format_ivf_report(report[key]) for key in extra[:2] if key in report] +
                           ([format_streamed_report(report["streamed"])] if "streamed" in report else []))
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
