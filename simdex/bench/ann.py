"""ANN benchmark in the style of ann-benchmarks: build each library's HNSW index on the same data with the same
parameters and threads, sweep ef, and compare recall@k against queries per second.

Run it as ``python -m simdex.bench ann --dataset fashion-mnist-784`` (or ``simdex bench ann ...``).
"""

from __future__ import annotations

import gc
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import datasets
from .._numba import cpu_count
from . import write_report
from .peers import ADAPTERS, available
from ._common import pyplot

DEFAULT_EFS = (10, 12, 14, 16, 18, 20, 24, 28, 32, 36, 40, 44, 48, 56, 64, 72, 80, 96, 112, 128, 144, 160, 176, 200,
               224, 256, 288, 320, 360, 400, 450, 512, 640, 800)
TARGETS = (0.95, 0.99)


@dataclass
class Point:
    ef: int
    recall: float
    qps_1thread: float
    qps_all: float


@dataclass
class LibResult:
    library: str
    version: str
    build_seconds: float
    size_bytes: int
    rss_delta_bytes: int
    points: list[Point] = field(default_factory=list)

    @classmethod
    def from_dict(cls, row: dict) -> LibResult:
        """A result as a saved report holds it (``asdict``) back as a LibResult."""
        return cls(**{**row, "points": [Point(**p) for p in row["points"]]})

    def qps_at(self, target: float, threads: str = "1thread") -> float | None:
        """QPS at exactly ``target`` recall, read off the measured recall/QPS curve (None if never reached).

        Between the last sweep point below the target and the first one at or above it, log QPS is interpolated
        linearly in recall, so that where a library's ef grid happens to land does not decide a ratio. The
        result is never below the best QPS actually measured at or above the target.
        """
        pts = sorted((p.recall, getattr(p, f"qps_{threads}")) for p in self.points)
        above = [(r, q) for r, q in pts if r >= target]
        if not above:
            return None
        best_above = max(q for _, q in above)
        below = [(r, q) for r, q in pts if r < target]
        if not below:
            return best_above
        r_lo, q_lo = below[-1]
        r_hi, q_hi = above[0]
        frac = (target - r_lo) / (r_hi - r_lo)
        interpolated = float(np.exp(np.log(q_lo) + frac * (np.log(q_hi) - np.log(q_lo))))
        return max(interpolated, best_above)


def _rss() -> int:
    try:
        import psutil
        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _time_search(adapter, queries: np.ndarray, k: int, ef: int, threads: int, repeats: int
                 ) -> tuple[float, np.ndarray]:
    best = float("inf")
    ids = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = adapter.search(queries, k, ef, threads)
        best = min(best, time.perf_counter() - t0)
    return queries.shape[0] / best, ids


def run(dataset: str, libraries: list[str], *, M: int = 16, ef_construction: int = 200,
        efs: tuple[int, ...] = DEFAULT_EFS, k: int = 10, threads: int | None = None, n_base: int | None = None,
        n_queries: int | None = None, repeats: int = 3, reference: str = "simdex", log=print) -> dict:
    """Run the benchmark; returns a JSON-serialisable report. Its ratios compare ``reference`` (one of
    ``libraries``) with the best of the others."""
    threads = threads or cpu_count()
    ds = datasets.load(dataset)
    if n_base or n_queries:
        ds = ds.subset(n_base, n_queries)
    libs, skipped = available(libraries)
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    log(f"{ds.name}: {ds.base.shape[0]} x {ds.dim} base, {ds.queries.shape[0]} queries, metric {ds.metric}; "
        f"M={M} ef_construction={ef_construction}, build threads={threads}")
    # warm the JIT (and its on-disk cache) outside the timed region, as one warms any library's code paths
    for name in [lib for lib in libs if lib.startswith("simdex")]:
        warm = ADAPTERS[name](ds.metric, M, 16)
        warm.build(ds.base[:2000], threads)
        warm.search(ds.queries[:10], k, 16, 1)
        warm.search(ds.queries[:10], k, 16, threads)
        del warm
    results: list[LibResult] = []
    for name in libs:
        adapter = ADAPTERS[name](ds.metric, M, ef_construction)
        gc.collect()
        time.sleep(0.5)  # let other libraries' spinning worker threads go idle
        rss0 = _rss()
        t0 = time.perf_counter()
        try:
            adapter.build(ds.base, threads)
        except Exception as exc:  # a peer that cannot take this data set is named, and the others still run
            skipped[name] = f"build failed: {type(exc).__name__}: {exc}"
            log(f"  {name:8s} {skipped[name]}")
            continue
        build = time.perf_counter() - t0
        gc.collect()
        res = LibResult(name, adapter.version(), build, adapter.size_bytes(), _rss() - rss0)
        log(f"  {name:8s} build {build:7.2f} s, size {res.size_bytes / 2**20:8.1f} MiB, "
            f"RSS +{res.rss_delta_bytes / 2**20:8.1f} MiB")
        for ef in efs:
            if ef < k:
                continue
            qps1, ids = _time_search(adapter, ds.queries, k, ef, 1, repeats)
            qps_all, _ = _time_search(adapter, ds.queries, k, ef, threads, repeats)
            recall = datasets.recall_at_k(ids, ds.ground_truth, k, ds.base, ds.queries, ds.metric)
            res.points.append(Point(ef, recall, qps1, qps_all))
            log(f"    ef={ef:4d} recall@{k}={recall:.4f}  QPS 1 thread {qps1:10.0f}  {threads} threads {qps_all:10.0f}")
            if recall >= 0.9995:
                break
        results.append(res)
        del adapter
    report = {
        "dataset": ds.name, "notes": ds.notes, "metric": ds.metric, "n_base": int(ds.base.shape[0]),
        "n_queries": int(ds.queries.shape[0]), "dim": ds.dim, "k": k, "M": M, "ef_construction": ef_construction,
        "threads": threads, "repeats": repeats, "machine": _machine(),
        "results": [asdict(r) for r in results], "skipped": skipped,
        "reference": reference, "ratios": ratios(results, reference),
    }
    return report


def ratios(results: list[LibResult], reference: str = "simdex") -> dict:
    """``reference`` / best other library for QPS at the target recalls and for build time; ``reference`` /
    hnswlib for size. (The values are under the key "simdex" whichever simdex index is the reference.)"""
    by = {r.library: r for r in results}
    out: dict = {}
    if reference not in by:
        return out
    me = by[reference]
    peers = [r for r in results if r.library != reference]
    for target in TARGETS:
        for threads in ("1thread", "all"):
            mine = me.qps_at(target, threads)
            theirs = [(r.qps_at(target, threads), r.library) for r in peers if r.qps_at(target, threads)]
            key = f"qps@{target}_{threads}"
            if mine and theirs:
                best, who = max(theirs)
                out[key] = {"simdex": mine, "best_peer": who, "best_peer_qps": best, "ratio": mine / best}
            else:
                out[key] = {"simdex": mine, "best_peer": None, "ratio": None}
    if peers:
        fastest = min(peers, key=lambda r: r.build_seconds)
        out["build_time"] = {"simdex": me.build_seconds, "best_peer": fastest.library,
                             "best_peer_seconds": fastest.build_seconds,
                             "ratio": me.build_seconds / fastest.build_seconds}
    if "hnswlib" in by:
        h = by["hnswlib"]
        out["build_time_vs_hnswlib"] = me.build_seconds / h.build_seconds
        out["size_vs_hnswlib"] = me.size_bytes / h.size_bytes
        if h.rss_delta_bytes > 0:
            out["rss_vs_hnswlib"] = me.rss_delta_bytes / h.rss_delta_bytes
    return out


def _machine() -> dict:
    import numba
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": cpu_count(),
            "processor": _cpu_name(), "numba": numba.__version__, "numpy": np.__version__}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def format_report(report: dict) -> str:
    lines = [f"== {report['dataset']} ({report['n_base']} x {report['dim']}, {report['metric']}), "
             f"recall@{report['k']}, M={report['M']}, ef_construction={report['ef_construction']}, "
             f"{report['threads']} threads =="]
    lines.append(f"{'library':10s} {'build s':>8s} {'size MiB':>9s} {'RSS+ MiB':>9s} "
                 + " ".join(f"{'QPS@' + str(t) + ' 1t':>12s} {'QPS@' + str(t) + ' all':>12s}" for t in TARGETS))
    for r in report["results"]:
        lib = LibResult.from_dict(r)
        cells = []
        for t in TARGETS:
            for th in ("1thread", "all"):
                v = lib.qps_at(t, th)
                cells.append(f"{v:12.0f}" if v else f"{'-':>12s}")
        lines.append(f"{lib.library:10s} {lib.build_seconds:8.2f} {lib.size_bytes / 2**20:9.1f} "
                     f"{lib.rss_delta_bytes / 2**20:9.1f} " + " ".join(cells))
    rat = report["ratios"]
    for key, val in rat.items():
        if isinstance(val, dict) and val.get("ratio") is not None:
            peer = val["best_peer"]
            lines.append(f"ratio {key:22s} {report.get('reference', 'simdex')} / {peer:8s} = {val['ratio']:.2f}")
        elif isinstance(val, float):
            lines.append(f"ratio {key:22s} = {val:.2f}")
        elif isinstance(val, dict):
            lines.append(f"ratio {key:22s} n/a (target recall not reached by simdex or any peer)")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    for ax, th, title in ((axes[0], "qps_1thread", "1 thread"), (axes[1], "qps_all", f"{report['threads']} threads")):
        for r in report["results"]:
            pts = sorted(r["points"], key=lambda p: p["recall"])
            ax.plot([p["recall"] for p in pts], [p[th] for p in pts], marker="o", ms=3,
                    lw=2.2 if r["library"] == report.get("reference", "simdex") else 1.3, label=r["library"])
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{report['k']}")
        ax.set_ylabel("queries per second")
        ax.set_title(f"{report['dataset']}: {title}")
        ax.grid(True, which="both", alpha=0.3)
        for t in TARGETS:
            ax.axvline(t, color="grey", ls=":", lw=1)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(report: dict, out_dir: Path) -> tuple[Path, Path]:
    return write_report(report, out_dir, f"ann-{report['dataset']}", plot)