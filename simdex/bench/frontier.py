"""The speed frontier (issue 25): simdex's fastest graph indexes against every installable peer, QPS at recall@10
0.95 and 0.99 on one thread and on all, on the shared data sets, in one run.

``python -m simdex.bench frontier`` builds, per data set, with the same degree (M, or 2M for single-layer graphs),
construction pool and threads: simdex's graph over RaBitQ edge codes (``simdex-qg``, the reference of the
ratios), its HNSW over LVQ-8 codes and its float32 HNSW; rabitqlib's SymphonyQG, FAISS HNSWFlat, hnswlib, Intel
SVS Vamana and ScaNN (peers that are not installed are skipped and named). Each sweeps its search effort; QPS at a
recall is read off each curve (:meth:`simdex.bench.ann.LibResult.qps_at`). The report adds, per data set, the
reference's QPS over each peer's at each target, its index memory over simdex HNSW's and SymphonyQG's, and its
build time over simdex HNSW's.
"""

from __future__ import annotations

from pathlib import Path

from . import ann, write_report
from ._common import pyplot

LIBRARIES = ("simdex-qg", "simdex-lvq8", "simdex", "symqg", "faiss", "hnswlib", "svs", "scann")
DATASETS = ("fashion-mnist-784", "wordnet-minilm-384", "glove-50")
REFERENCE = "simdex-qg"


def run(datasets: tuple[str, ...] = DATASETS, libraries: tuple[str, ...] = LIBRARIES, *, M: int = 16,
        ef_construction: int = 200, efs: tuple[int, ...] = ann.DEFAULT_EFS, threads: int | None = None,
        n_base: int | None = None, n_queries: int | None = None, repeats: int = 3, log=print) -> dict:
    """One :func:`simdex.bench.ann.run` per data set with ``simdex-qg`` as the reference; returns the reports
    and a comparison table."""
    reports = [ann.run(name, list(libraries), M=M, ef_construction=ef_construction, efs=efs, threads=threads,
                       n_base=n_base, n_queries=n_queries, repeats=repeats, reference=REFERENCE, log=log)
               for name in datasets]
    return {"reference": REFERENCE, "datasets": reports, "versus": [versus(r) for r in reports]}


def _lib(report: dict, name: str) -> ann.LibResult | None:
    for r in report["results"]:
        if r["library"] == name:
            return ann.LibResult.from_dict(r)
    return None


def versus(report: dict) -> dict:
    """The reference's QPS over each other library's at each target recall and thread count (None where either
    never reaches the target), and its size and build time over simdex HNSW's and SymphonyQG's."""
    me = _lib(report, REFERENCE)
    out: dict = {"dataset": report["dataset"], "qps": {}, "size": {}, "build": {}}
    if me is None:
        return out
    for r in report["results"]:
        other = _lib(report, r["library"])
        if other is None or other.library == REFERENCE:
            continue
        cells = {}
        for target in ann.TARGETS:
            for threads in ("1thread", "all"):
                mine, theirs = me.qps_at(target, threads), other.qps_at(target, threads)
                cells[f"{target}_{threads}"] = mine / theirs if mine and theirs else None
        out["qps"][other.library] = cells
        if other.library in ("simdex", "symqg"):
            out["size"][other.library] = me.size_bytes / other.size_bytes
            out["build"][other.library] = me.build_seconds / other.build_seconds
    return out


def format_report(report: dict) -> str:
    lines = []
    for single, vs in zip(report["datasets"], report["versus"]):
        lines.append(ann.format_report(single))
        lines.append(f"-- {REFERENCE} QPS / each library's QPS at the same recall ({vs['dataset']}) --")
        lines.append(f"{'library':12s} " + " ".join(f"{f'@{t} {th}':>13s}" for t in ann.TARGETS
                                                       for th in ("1thread", "all")))
        for lib, cells in vs["qps"].items():
            lines.append(f"{lib:12s} " + " ".join(f"{v:13.2f}" if v else f"{'-':>13s}" for v in cells.values()))
        for lib, ratio in vs["size"].items():
            lines.append(f"memory {REFERENCE} / {lib} = {ratio:.2f}; build time = {vs['build'][lib]:.2f}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    n = len(report["datasets"])
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.8), squeeze=False)
    for ax, single in zip(axes[0], report["datasets"]):
        for r in single["results"]:
            pts = sorted(r["points"], key=lambda p: p["recall"])
            ax.plot([p["recall"] for p in pts], [p["qps_1thread"] for p in pts], marker="o", ms=3,
                    lw=2.4 if r["library"] == REFERENCE else 1.2, label=r["library"])
        ax.set_yscale("log")
        ax.set_xlim(0.8, 1.0)
        ax.set_xlabel(f"recall@{single['k']}")
        ax.set_ylabel("queries per second, 1 thread")
        ax.set_title(f"{single['dataset']} ({single['n_base']} x {single['dim']})")
        ax.grid(True, which="both", alpha=0.3)
        for t in ann.TARGETS:
            ax.axvline(t, color="grey", ls=":", lw=1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(report: dict, out_dir: Path) -> tuple[Path, Path]:
    return write_report(report, out_dir, "frontier", plot)
