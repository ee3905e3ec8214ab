"""SSD-resident Vamana benchmark: recall@10 and the resident memory of the search phase of a
:class:`~simdex.quant.VamanaDiskIndex` (codes in memory, vectors and adjacency memory-mapped from the index file).

The parent builds the index on a real data set and saves it. A child process loads the search kernels with a
throwaway index, then measures its resident set (the baseline: interpreter, numpy, numba, kernels), opens the
index with ``mmap=True``, drops the index file from the page cache (a cold start, as from an SSD; the mapping is
advised random, so pages come in one at a time) and searches one query per call on one thread, releasing the
file pages after each query (they stay in the OS page cache, as an SSD read cache would; the process keeps only
what it holds in its own memory plus what the current query reads). Reported: the peak ``VmRSS`` over the
search minus the baseline, split into anonymous and file-backed pages, as a fraction of the float32 size of the
data; and the same without releasing pages (every page any query touched stays mapped), for contrast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import datasets
from .._proc import proc_status
from .ann import _machine




def _trim() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise, and it would count as resident)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _mem() -> dict:
    return {"rss": proc_status("VmRSS"), "anon": proc_status("RssAnon"), "file": proc_status("RssFile")}


def _child(args: dict) -> None:
    from ..quant import VamanaDiskIndex
    folder = Path(args["folder"])
    queries = np.load(folder / "queries.npy")
    gt = np.load(folder / "gt.npy")
    k = args["k"]
    # load the search kernels (numba's cache) with a throwaway index, so the baseline includes them
    rng = np.random.default_rng(0)
    tiny = VamanaDiskIndex(queries.shape[1], args["metric"], R=8, L_build=16, codec=args["codec"],
                           storage_dir=str(folder))
    tiny.add(rng.standard_normal((300, queries.shape[1])).astype(np.float32))
    tiny.search(queries[:2], k, threads=1)
    del tiny
    _trim()
    base = _mem()
    out: dict = {"baseline_rss_bytes": base["rss"], "baseline": base}
    index = VamanaDiskIndex.load(folder / "index.sdx", mmap=True, verify=False)
    index.search(queries[:2], k, threads=1)
    index.release_pages()  # the load's consistency checks read the whole file
    # start from a cold page cache for the index file, as from an SSD: pages then come in one by one (the
    # mapping is advised random) instead of the large folios that writing the file left in the cache
    fd = os.open(folder / "index.sdx", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    _trim()
    out["open"] = _mem()
    points = []
    for L in args["Ls"]:
        for release in (True, False):
            lat = np.empty(queries.shape[0])
            ids = np.empty((queries.shape[0], k), np.int64)
            peak = {"rss": 0, "anon": 0, "file": 0}
            index.release_pages()
            for i in range(queries.shape[0]):
                t = time.perf_counter()
                ids[i] = index.search(queries[i:i + 1], k, L=L, threads=1)[1][0]
                lat[i] = time.perf_counter() - t
                peak = {key: max(v, now) for (key, v), now in zip(peak.items(), _mem().values())}
                if release:
                    index.release_pages()
            hits = [len(set(ids[i]) & set(gt[i, :k])) for i in range(queries.shape[0])]
            points.append({"L": L, "release_pages": release, "recall": float(np.mean(hits)) / k,
                           "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
                           "peak_rss_bytes": peak["rss"], "peak_rss_over_baseline_bytes": peak["rss"] - base["rss"],
                           "peak_anon_over_baseline_bytes": peak["anon"] - base["anon"],
                           "peak_file_over_baseline_bytes": peak["file"] - base["file"]})
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    out["points"] = points
    out["index_ram_bytes"] = index.nbytes
    out["index_disk_bytes"] = index.disk_nbytes
    print(json.dumps(out))


def run(dataset: str = "wordnet-minilm-384", *, n_base: int | None = None, n_queries: int = 1000,
        codec: str = "pq48", R: int = 32, L_build: int = 64, Ls: tuple[int, ...] = (32, 64, 100, 150),
        k: int = 10, work_dir: str = "/tmp/simdex-vamana-disk", log=print) -> dict:
    from ..quant import VamanaDiskIndex
    ds = datasets.load(dataset)
    sub = ds.subset(n_base, n_queries)
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "queries.npy", np.ascontiguousarray(sub.queries, np.float32))
    np.save(folder / "gt.npy", sub.ground_truth[:, :k])
    log(f"{dataset}: building VamanaDiskIndex(R={R}, L_build={L_build}, codec={codec}) on {sub.base.shape[0]} ...")
    t0 = time.perf_counter()
    index = VamanaDiskIndex(sub.dim, sub.metric, R=R, L_build=L_build, codec=codec, storage_dir=str(folder))
    index.add(sub.base)
    build_s = time.perf_counter() - t0
    index.save(folder / "index.sdx")
    index.search(sub.queries[:2], k, threads=1)
    del index
    log(f"  built in {build_s:.0f} s; measuring the search phase in a child process ...")
    args = {"folder": str(folder), "k": k, "Ls": list(Ls), "metric": sub.metric, "codec": codec}
    proc = subprocess.run([sys.executable, "-c", "import json, sys; from simdex.bench.vamana_disk import _child; "
                           "_child(json.loads(sys.argv[1]))", json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    n = int(sub.base.shape[0])
    return {"dataset": dataset, "n_base": n, "n_queries": int(sub.queries.shape[0]), "dim": sub.dim, "k": k,
            "codec": codec, "R": R, "L_build": L_build, "build_seconds": build_s, "float32_bytes": n * sub.dim * 4,
            "machine": _machine(), **child}


def format_report(r: dict) -> str:
    mib = 2**20
    lines = [f"VamanaDiskIndex on {r['dataset']} (n={r['n_base']}, float32 data {r['float32_bytes'] / mib:.1f} MiB), "
             f"codec {r['codec']}, R={r['R']}, L_build={r['L_build']}, build {r['build_seconds']:.0f} s",
             f"index RAM {r['index_ram_bytes'] / mib:.1f} MiB, mapped file {r['index_disk_bytes'] / mib:.1f} MiB; "
             f"child baseline RSS {r['baseline_rss_bytes'] / mib:.0f} MiB (Python, numpy, numba)",
             "| L | pages released per query | recall@10 | p50 ms | p99 ms | peak RSS - baseline MiB (anon + file) | "
             "% of float32 data |", "|---|---|---|---|---|---|---|"]
    for p in r["points"]:
        over = p["peak_rss_over_baseline_bytes"]
        anon, file = p["peak_anon_over_baseline_bytes"] / mib, p["peak_file_over_baseline_bytes"] / mib
        lines.append(f"| {p['L']} | {'yes' if p['release_pages'] else 'no'} | {p['recall']:.4f} | "
                     f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {over / mib:.1f} ({anon:.1f} + {file:.1f}) | "
                     f"{over / r['float32_bytes']:.1%} |")
    return "\n".join(lines)


def save(report: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"vamana-disk-{report['dataset']}.json"
    path.write_text(json.dumps(report, indent=1))
    return path
