"""Label-filtered search: :class:`~simdex.dense.LabelIndex` against filtered and post-filtered HNSW and pre-filtered
brute force, on the data sets' real labels.

- fashion-mnist-784: each image's class (10 labels, 10% of the points each);
- wordnet-minilm-384: each gloss's part of speech as the data set's ids give it (noun 76%, verb 13%, adjective
  11%).

Each query asks for one label drawn uniformly from the labels, so most queries ask for a label their own
neighbourhood does not carry (a picture of a shoe restricted to shirts): the case where a filtered graph walk
that starts from the query's unfiltered neighbourhood has to cross regions with no member. Ground truth is exact
search among the label's points (float64 numpy). All timings are single-threaded (numba, hnswlib and BLAS limited
to one thread), each method answering all queries in batches grouped by label:

- ``labels``: ``LabelIndex.search(queries, k, label=...)``: per label, an unfiltered walk on the label's own graph
  (labels of at least ``label_graph_min`` points), or its members scanned exactly; the smallest ef of a sweep
  whose recall reaches the target (0.95);
- ``filter-hnsw``: the graph over all points (the one LabelIndex keeps for unlabelled queries) searched with the
  label's members as ``filter=``: what the label graphs add;
- ``filter-faiss-hnsw``: FAISS ``IndexHNSWFlat`` (same M and ef_construction; cosine as L2 on unit vectors) over
  all points, searched with the label's members as an ``IDSelectorBitmap`` (FAISS's filtered HNSW search), one
  call per label group; where faiss is not installed the row is left out;
- ``postfilter-hnswlib``: hnswlib (or simdex's HNSWIndex where hnswlib is not installed) over all points, asked
  for ``k' = ceil(k / s * f)`` neighbours at ``ef = k'`` for a growing factor f, the results without the label
  dropped; the fastest setting reaching the label index's recall counts;
- ``prefilter-bf``: per label, its members gathered once and scanned with one BLAS product for all the label's
  queries, top k by ``argpartition`` (exact).
"""

from __future__ import annotations

import gzip
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import datasets
from . import write_report
from ._common import pyplot, recall
from .window import _budgeted, _knn_at_most, postfilter_hnsw

EFS = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)
POST_FACTORS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
TARGET = 0.95


def dataset_labels(dataset: str) -> tuple[np.ndarray, list[str]]:
    """(one integer label per base row, label names) for a data set with real labels."""
    if dataset == "fashion-mnist-784":
        raw = gzip.open(datasets.data_dir() / "fashion-mnist" / "train-labels-idx1-ubyte.gz").read()
        names = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
        return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64), names
    if dataset == "wordnet-minilm-384":
        _, metas, _ = datasets.wordnet_records()
        pos = [m["pos"] for m in metas[:107_659]]
        names = sorted(set(pos))
        code = {p: i for i, p in enumerate(names)}
        return np.array([code[p] for p in pos], np.int64), names
    raise ValueError(f"no labels for {dataset!r}; choose fashion-mnist-784 or wordnet-minilm-384")


def label_ground_truth(base: np.ndarray, metric: str, queries: np.ndarray, labels: np.ndarray,
                       qlabels: np.ndarray, k: int) -> list[np.ndarray]:
    """Exact top-k ids among the points carrying each query's label (float64 numpy; independent of simdex)."""
    x = base.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    out: list[np.ndarray] = [np.zeros(0, np.int64)] * q.shape[0]
    for value in np.unique(qlabels):
        members = np.flatnonzero(labels == value)
        rows = np.flatnonzero(qlabels == value)
        xm = x[members]
        xn = (xm * xm).sum(1)
        for start in range(0, rows.size, 256):
            part = rows[start:start + 256]
            d = xn[None, :] - 2 * q[part] @ xm.T if metric == "l2" else -(q[part] @ xm.T)
            kk = min(k, members.size)
            top = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            for r, row in enumerate(part):
                order = top[r][np.argsort(d[r, top[r]], kind="stable")]
                out[row] = members[order]
    return out


def _by_label(qlabels: np.ndarray, answer: Callable[[np.ndarray, int], np.ndarray], k: int
              ) -> Callable[[int, int], np.ndarray]:
    """A batch answerer for _budgeted: queries [a, b) grouped by label, each group answered by
    ``answer(query rows, label)``."""
    def run(a: int, b: int) -> np.ndarray:
        out = np.full((b - a, k), -1, np.int64)
        for value in np.unique(qlabels[a:b]):
            rows = a + np.flatnonzero(qlabels[a:b] == value)
            out[rows - a] = answer(rows, int(value))
        return out
    return run


def run(dataset: str = "fashion-mnist-784", *, n_base: int | None = None, n_queries: int = 1000, k: int = 10,
        M: int = 16, ef_construction: int = 100, label_graph_min: int = 2000, seed: int = 0,
        budget_s: float = 3.0, min_queries: int = 50, build_threads: int | None = None,
        out_dir: Path | None = None, log: Callable[..., None] = print) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from ..dense import LabelIndex

    ds = datasets.load(dataset)
    labels, names = dataset_labels(dataset)
    base = np.ascontiguousarray(ds.base[:n_base], np.float32)
    labels = labels[:base.shape[0]]
    queries = np.ascontiguousarray(ds.queries[:n_queries], np.float32)
    n, dim, nq, metric = base.shape[0], base.shape[1], queries.shape[0], ds.metric
    present = np.unique(labels)
    rng = np.random.default_rng(seed)
    qlabels = present[rng.integers(0, present.size, nq)]
    share = {int(v): float(np.mean(labels == v)) for v in present}
    log(f"== label-filtered search on {dataset} ({n} x {dim}, {metric}), {nq} queries, {present.size} labels "
        f"({', '.join(f'{names[v]} {share[v]:.1%}' for v in present)}), recall@{k}, 1 thread ==")
    truth = label_ground_truth(base, metric, queries, labels, qlabels, k)

    t0 = time.perf_counter()
    index = LabelIndex(dim, metric, M=M, ef_construction=ef_construction, label_graph_min=label_graph_min,
                       seed=seed)
    index.add(base, labels=labels, threads=build_threads)
    label_build = time.perf_counter() - t0
    log(f"LabelIndex build: {label_build:.1f} s, {index.nbytes / 2**20:.0f} MiB, label graphs {index.label_graphs}")
    hnsw, post_name, hnsw_build = postfilter_hnsw(base, metric, M, ef_construction, seed, build_threads)
    log(f"{post_name} build: {hnsw_build:.1f} s")

    x = base / np.linalg.norm(base, axis=1, keepdims=True) if metric == "cosine" else base
    qx = queries / np.linalg.norm(queries, axis=1, keepdims=True) if metric == "cosine" else queries
    members = {int(v): np.flatnonzero(labels == v) for v in present}
    masks = {v: np.isin(np.arange(n), m) for v, m in members.items()}
    try:
        import faiss
    except ImportError:
        faiss = faiss_index = None
    else:
        faiss.omp_set_num_threads(build_threads or faiss.omp_get_max_threads())
        t0 = time.perf_counter()
        faiss_index = faiss.IndexHNSWFlat(dim, M)
        faiss_index.hnsw.efConstruction = ef_construction
        faiss_index.add(x)
        log(f"faiss IndexHNSWFlat build: {time.perf_counter() - t0:.1f} s")
        faiss.omp_set_num_threads(1)
        bitmaps = {v: np.packbits(m, bitorder="little") for v, m in masks.items()}

    rows: list[dict[str, Any]] = []

    def sweep(method: str, answer_at: Callable[[int], Callable[[int, int], np.ndarray]]) -> dict[str, Any]:
        best: dict[str, Any] = {}
        for ef in EFS:
            qps, found = _budgeted(answer_at(ef), nq, nq, budget_s, min_queries)
            best = {"method": method, "params": f"ef={ef}", "recall": recall(found, truth[:found.shape[0]]),
                    "qps": qps, "queries": int(found.shape[0]), "ef": ef}
            if best["recall"] >= TARGET:
                break
        # the chosen setting once more; the faster of the two runs counts (the machine is shared)
        best["qps"] = max(best["qps"], _budgeted(answer_at(best["ef"]), nq, nq, budget_s, min_queries)[0])
        log(f"{method:20s} {best['params']:>18s} recall {best['recall']:.4f} QPS {best['qps']:10.0f}")
        return best

    with threadpool_limits(1):
        index.search(queries[:4], k, label=qlabels[:4], threads=1)  # JIT and label caches warm
        index.search(queries[:4], k, filter=masks[int(qlabels[0])], threads=1)
        rows.append(sweep("labels", lambda ef: _by_label(
            qlabels, lambda r, v: index.search(queries[r], k, label=v, ef=ef, threads=1)[1], k)))
        rows.append(sweep("filter-hnsw", lambda ef: _by_label(
            qlabels, lambda r, v: index.search(queries[r], k, filter=masks[v], ef=ef, threads=1)[1], k)))
        if faiss_index is not None:
            rows.append(sweep("filter-faiss-hnsw", lambda ef: _by_label(
                qlabels, lambda r, v: _faiss_filtered(faiss, faiss_index, qx[r], k, ef, bitmaps[v]), k)))
        target = max(TARGET, min(rows[0]["recall"], 0.999))

        # post-filtering: k' = k / (share of the label) * f, the fastest f reaching the label index's recall
        post = None
        for f in POST_FACTORS:
            def answer(a: int, b: int, f: float = f) -> np.ndarray:
                out = np.full((b - a, k), -1, np.int64)
                for i in range(a, b):
                    kp = min(n, int(math.ceil(k / share[int(qlabels[i])] * f)))
                    hnsw.set_ef(kp)
                    got = _knn_at_most(hnsw, queries[i], kp)
                    hit = got[(got >= 0) & (labels[np.maximum(got, 0)] == qlabels[i])][:k]
                    out[i - a, :hit.size] = hit
                return out
            qps, found = _budgeted(answer, nq, 10, budget_s, min_queries)
            point = {"method": post_name, "params": f"k'=k/share*{f:g}", "recall": recall(found,
                     truth[:found.shape[0]]), "qps": qps, "queries": int(found.shape[0])}
            if post is None or (point["recall"] >= target and (post["recall"] < target or qps > post["qps"])) or \
                    (point["recall"] < target and post["recall"] < target and point["recall"] > post["recall"]):
                post = point
            if point["recall"] >= target:
                break
        rows.append(post)
        log(f"{post_name:20s} {post['params']:>18s} recall {post['recall']:.4f} QPS {post['qps']:10.0f}")

        sqnorms = np.einsum("ij,ij->i", x, x) if metric == "l2" else None

        def scan(r: np.ndarray, v: int) -> np.ndarray:
            m = members[v]
            d = -(qx[r] @ x[m].T)
            if sqnorms is not None:
                d = sqnorms[m][None, :] + 2 * d
            kk = min(k, m.size)
            top = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            order = np.take_along_axis(top, np.argsort(np.take_along_axis(d, top, 1), 1, kind="stable"), 1)
            out = np.full((r.size, k), -1, np.int64)
            out[:, :kk] = m[order]
            return out
        qps, found = _budgeted(_by_label(qlabels, scan, k), nq, 100, budget_s, min_queries)
        rows.append({"method": "prefilter-bf", "params": "numpy BLAS per label", "qps": qps,
                     "recall": recall(found, truth[:found.shape[0]]), "queries": int(found.shape[0])})
        log(f"{'prefilter-bf':20s} {rows[-1]['params']:>18s} recall {rows[-1]['recall']:.4f} "
            f"QPS {rows[-1]['qps']:10.0f}")

    by = {r["method"]: r for r in rows}
    ratios = {name: by["labels"]["qps"] / by[name]["qps"] for name in by if name != "labels"}
    report = {"dataset": dataset, "n_base": n, "dim": dim, "metric": metric, "n_queries": nq, "k": k,
              "target_recall": TARGET, "M": M, "ef_construction": ef_construction,
              "label_graph_min": label_graph_min, "label_graphs": {names[v]: c for v, c in index.label_graphs.items()},
              "labels": {names[v]: share[v] for v in share}, "label_build_seconds": label_build,
              "hnswlib_build_seconds": hnsw_build, "postfilter_method": post_name, "label_bytes": index.nbytes,
              "rows": rows, "ratios": ratios, "machine": platform.processor() or platform.machine()}
    log(format_report(report))
    if out_dir is not None:
        save(report, out_dir)
    return report


def _faiss_filtered(faiss: Any, index: Any, q: np.ndarray, k: int, ef: int, bitmap: np.ndarray) -> np.ndarray:
    """FAISS HNSW search of ``q`` restricted to the ids set in ``bitmap`` (bit i of byte i // 8, little-endian)."""
    selector = faiss.IDSelectorBitmap(bitmap.size * 8, faiss.swig_ptr(bitmap))
    _, ids = index.search(q, k, params=faiss.SearchParametersHNSW(sel=selector, efSearch=ef))
    return ids


def format_report(report: dict) -> str:
    lines = [f"| method | setting | recall@{report['k']} | QPS (1 thread) | labels / method |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        ratio = report["ratios"].get(r["method"])
        lines.append(f"| {r['method']} | {r['params']} | {r['recall']:.3f} | {r['qps']:,.0f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["method"] for r in report["rows"]]
    bars = ax.barh(names, [r["qps"] for r in report["rows"]],
                   color=["tab:blue" if m == "labels" else "tab:gray" for m in names])
    for bar, r in zip(bars, report["rows"]):
        ax.annotate(f" recall {r['recall']:.3f}, {r['params']}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    va="center", fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("queries per second (1 thread, log scale)")
    ax.set_title(f"{report['dataset']}: label-filtered k={report['k']}, one random label per query")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(report: dict, out_dir: Path) -> tuple[Path, Path]:
    return write_report(report, out_dir, f"labels-{report['dataset']}", plot)
