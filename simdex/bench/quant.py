"""Compressed-index benchmark: HNSW over LVQ / int8 codes against hnswlib (float32) and FAISS IndexHNSWSQ
(8-bit scalar quantizer), and IVF-PQ against FAISS IndexIVFPQ at the same nlist / m / nbits.

Run it as ``python -m simdex.bench quant --dataset wordnet-minilm-384``. Every library builds with the same M,
ef_construction and threads; searches are timed on one thread (one batch call of all queries, best of
``repeats``). Memory is reported three ways, because compressed indexes differ exactly there:

- ``index_bytes``: bytes of the structures the library holds in RAM for search (simdex: the sum of its arrays,
  without the float vectors kept memory-mapped on disk; hnswlib: ``index_file_size()``, which equals its
  in-memory layout; FAISS: the serialized index);
- ``disk_bytes``: float32 vectors simdex keeps memory-mapped on disk for re-ranking only;
- ``rss_file_delta_bytes``: page cache that the search sweep actually mapped into the process (RssFile growth
  over the sweep after the build's pages were dropped): what re-ranking really keeps resident.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import datasets
from .._numba import cpu_count
from .._proc import proc_status
from . import write_report
from .ann import _machine
from ._common import pyplot

EFS = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 200, 256, 320, 400)
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
TARGETS = (0.9, 0.95, 0.99)


@dataclass
class Curve:
    library: str
    build_seconds: float
    index_bytes: int
    disk_bytes: int = 0
    rss_file_delta_bytes: int = 0
    params: dict = field(default_factory=dict)
    points: list[dict] = field(default_factory=list)  # {"param", "recall", "qps"}

    def qps_at(self, target: float) -> float | None:
        """QPS at ``target`` recall (log-linear interpolation between the sweep points around it)."""
        pts = sorted((p["recall"], p["qps"]) for p in self.points)
        above = [(r, q) for r, q in pts if r >= target]
        if not above:
            return None
        best = max(q for _, q in above)
        below = [(r, q) for r, q in pts if r < target]
        if not below:
            return best
        (r0, q0), (r1, q1) = below[-1], above[0]
        frac = (target - r0) / (r1 - r0)
        return max(best, float(np.exp(np.log(q0) + frac * (np.log(q1) - np.log(q0)))))


def _timed(fn, nq: int, repeats: int) -> tuple[float, np.ndarray]:
    best, ids = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = fn()
        best = min(best, time.perf_counter() - t0)
    return nq / best, ids


def _sweep(curve: Curve, search, params, ds, k: int, repeats: int, log, stop_at: float = 0.999) -> None:
    for p in params:
        qps, ids = _timed(lambda: search(p), ds.queries.shape[0], repeats)
        rec = datasets.recall_at_k(ids, ds.ground_truth, k, ds.base, ds.queries, ds.metric)
        curve.points.append({"param": p, "recall": rec, "qps": qps})
        log(f"    {curve.library:14s} {p:5d}  recall@{k}={rec:.4f}  QPS(1 thread) {qps:9.0f}")
        if rec >= stop_at:
            break


def _normalized(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def _faiss_inputs(ds, threads: int):
    """faiss (on ``threads`` threads for building), its metric for ``ds``, and the base and query vectors as FAISS
    takes them (normalised for cosine, which FAISS searches as inner product)."""
    import faiss
    faiss.omp_set_num_threads(threads)
    fmetric = faiss.METRIC_L2 if ds.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    xb = ds.base if ds.metric == "l2" else _normalized(ds.base)
    xq = ds.queries if ds.metric == "l2" else _normalized(ds.queries)
    return faiss, fmetric, xb, xq


# ---- graph part ------------------------------------------------------------------------------------------------
def run_graph(ds, *, M: int, ef_construction: int, threads: int, k: int, repeats: int, efs, codecs, peers, log
              ) -> list[Curve]:
    from ..dense import HNSWIndex
    from ..quant import HNSWQuantIndex
    curves: list[Curve] = []
    base = ds.base
    # warm the JIT outside the timed regions
    warm = HNSWIndex(ds.dim, ds.metric, M=M, ef_construction=32)
    warm.add(base[:1000], threads=threads)
    for codec in codecs:
        w = HNSWQuantIndex.from_hnsw(warm, codec=codec, rerank_from="residual" if codec == "lvq4x8" else "vectors")
        w.search(ds.queries[:10], k, ef=16, threads=1)
    del warm, w

    t0 = time.perf_counter()
    flt = HNSWIndex(ds.dim, ds.metric, M=M, ef_construction=ef_construction)
    flt.add(base, threads=threads)
    graph_build = time.perf_counter() - t0
    log(f"  simdex float32 graph built in {graph_build:.1f} s")
    c = Curve("simdex-f32", graph_build, flt.nbytes, params={"M": M, "ef_construction": ef_construction})
    _sweep(c, lambda ef: flt.search(ds.queries, k, ef=ef, threads=1)[1], efs, ds, k, repeats, log)
    curves.append(c)
    for codec in codecs:
        t0 = time.perf_counter()
        residual = codec == "lvq4x8"
        idx = HNSWQuantIndex.from_hnsw(flt, codec=codec, rerank_from="residual" if residual else "vectors")
        encode = time.perf_counter() - t0
        idx.drop_vector_pages()
        gc.collect()
        name = f"simdex-{codec}"
        c = Curve(name, graph_build + encode, idx.nbytes, idx.disk_nbytes if not residual else 0,
                  params={"codec": codec, "rerank": idx.rerank, "rerank_from": idx.rerank_from,
                          "code_size": idx.codec.code_size, "encode_seconds": encode})
        if residual:
            idx._vectors = idx._vectors[:0]  # prove that search reads no float vector
            c.params["float_vectors"] = "dropped"
        rss_file0 = proc_status("RssFile")
        _sweep(c, lambda ef: idx.search(ds.queries, k, ef=ef, threads=1)[1], efs, ds, k, repeats, log)
        c.rss_file_delta_bytes = max(0, proc_status("RssFile") - rss_file0)
        log(f"  {name}: {idx.nbytes / 2**20:.1f} MiB in RAM, {c.disk_bytes / 2**20:.1f} MiB vectors on disk, "
            f"RssFile +{c.rss_file_delta_bytes / 2**20:.1f} MiB over the sweep")
        curves.append(c)
        del idx
        gc.collect()
    del flt
    gc.collect()

    if "hnswlib" in peers:
        import hnswlib
        t0 = time.perf_counter()
        h = hnswlib.Index(space="l2" if ds.metric == "l2" else "cosine", dim=ds.dim)
        h.init_index(max_elements=base.shape[0], M=M, ef_construction=ef_construction, random_seed=0)
        h.add_items(base, num_threads=threads)
        c = Curve("hnswlib", time.perf_counter() - t0, int(h.index_file_size()), params={"M": M})

        def hsearch(ef):
            h.set_ef(ef)
            return h.knn_query(ds.queries, k, num_threads=1)[0]
        _sweep(c, hsearch, efs, ds, k, repeats, log)
        curves.append(c)
        del h
        gc.collect()
    if "faiss" in peers:
        faiss, fmetric, xb, xq = _faiss_inputs(ds, threads)
        t0 = time.perf_counter()
        f = faiss.IndexHNSWSQ(ds.dim, faiss.ScalarQuantizer.QT_8bit, M, fmetric)
        f.hnsw.efConstruction = ef_construction
        f.train(xb)
        f.add(xb)
        c = Curve("faiss-hnswsq8", time.perf_counter() - t0, int(faiss.serialize_index(f).nbytes),
                  params={"M": M, "quantizer": "QT_8bit"})

        def fsearch(ef):
            faiss.omp_set_num_threads(1)
            f.hnsw.efSearch = ef
            return f.search(xq, k)[1]
        _sweep(c, fsearch, efs, ds, k, repeats, log)
        faiss.omp_set_num_threads(threads)
        curves.append(c)
        del f
        gc.collect()
        # HNSW over PQ codes (m = dim / 8 bytes, 8 bits each): FAISS's other compressed graph
        pq_m = _faiss_pq_m(ds.dim)
        t0 = time.perf_counter()
        # L2 on the unit vectors (same order as cosine): with METRIC_INNER_PRODUCT this FAISS build's HNSWPQ
        # returned recall@10 of 0.05-0.2 on wordnet (its graph treated similarities as distances)
        f = faiss.IndexHNSWPQ(ds.dim, pq_m, M, 8, faiss.METRIC_L2)
        f.hnsw.efConstruction = ef_construction
        f.train(xb)
        f.add(xb)
        c = Curve("faiss-hnswpq", time.perf_counter() - t0, int(faiss.serialize_index(f).nbytes),
                  params={"M": M, "pq_m": pq_m, "nbits": 8})
        _sweep(c, fsearch, efs, ds, k, repeats, log)
        faiss.omp_set_num_threads(threads)
        curves.append(c)
        del f
        gc.collect()
    return curves


def _faiss_pq_m(dim: int) -> int:
    """The largest m <= dim / 8 that divides dim (FAISS's PQ needs equal sub-vectors)."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


# ---- binary part -------------------------------------------------------------------------------------------------
RERANKS = (0, 20, 50, 100, 200, 400, 800)


def run_binary(ds, *, threads: int, k: int, repeats: int, peers, log) -> list[Curve]:
    """Sign-of-random-rotation codes, scanned exhaustively: simdex (IVF with one list) against FAISS
    IndexBinaryFlat on the very same codes. simdex also re-ranks the best R by Hamming with float vectors
    (param = R; R = 0 is Hamming order alone, comparable to FAISS's single point)."""
    from ..quant import IVFIndex
    curves: list[Curve] = []
    warm = IVFIndex(ds.dim, ds.metric, nlist=1, nprobe=1, codec="binary", vectors="memory")
    warm.add(ds.base[:1000])
    warm.search(ds.queries[:5], k, rerank=20, threads=1)
    t0 = time.perf_counter()
    idx = IVFIndex(ds.dim, ds.metric, nlist=1, nprobe=1, codec="binary", vectors="disk")
    idx.add(ds.base)
    c = Curve("simdex-binary", time.perf_counter() - t0, idx.nbytes, idx.disk_nbytes if hasattr(idx, "disk_nbytes")
              else int(ds.base.nbytes), params={"code_size": idx.codec.code_size})
    _sweep(c, lambda r: idx.search(ds.queries, k, rerank=r, threads=1)[1], RERANKS, ds, k, repeats, log)
    curves.append(c)
    if "faiss" in peers:
        import faiss
        codec = idx.codec
        xb = ds.base if ds.metric == "l2" else _normalized(ds.base)
        xq = ds.queries if ds.metric == "l2" else _normalized(ds.queries)
        t0 = time.perf_counter()
        f = faiss.IndexBinaryFlat(codec.code_size * 8)
        f.add(codec.encode(xb))
        c = Curve("faiss-binaryflat", time.perf_counter() - t0, int(f.ntotal * f.code_size),
                  params={"code_size": codec.code_size, "codes": "simdex's BinaryCodec"})
        qcodes = codec.encode(xq)

        def fsearch(_):
            faiss.omp_set_num_threads(1)
            return f.search(qcodes, k)[1].astype(np.int64)
        _sweep(c, fsearch, (0,), ds, k, repeats, log)
        faiss.omp_set_num_threads(threads)
        curves.append(c)
    del idx
    gc.collect()
    return curves


# ---- IVF part ----------------------------------------------------------------------------------------------------
def run_ivf(ds, *, nlist: int, m: int, threads: int, k: int, repeats: int, nprobes, peers, log) -> list[Curve]:
    from .._numba import num_threads
    from ..quant import IVFIndex
    curves: list[Curve] = []
    base = ds.base
    warm = IVFIndex(ds.dim, ds.metric, nlist=8, codec=f"pq{m}")
    warm.add(base[:2000])
    warm.search(ds.queries[:10], k, nprobe=2, threads=1)
    del warm
    with num_threads(threads):
        t0 = time.perf_counter()
        idx = IVFIndex(ds.dim, ds.metric, nlist=nlist, codec=f"pq{m}", vectors="none")
        idx.add(base)
        build = time.perf_counter() - t0
    c = Curve("simdex-ivfpq", build, idx.nbytes, params={"nlist": nlist, "m": m, "nbits": 8, "rerank": 0})
    _sweep(c, lambda p: idx.search(ds.queries, k, nprobe=p, threads=1)[1], nprobes, ds, k, repeats, log, 1.01)
    curves.append(c)
    del idx
    gc.collect()
    if "faiss" in peers:
        faiss, fmetric, xb, xq = _faiss_inputs(ds, threads)
        t0 = time.perf_counter()
        quantizer = faiss.IndexFlat(ds.dim, fmetric)
        f = faiss.IndexIVFPQ(quantizer, ds.dim, nlist, m, 8, fmetric)
        f.train(xb)
        f.add(xb)
        c = Curve("faiss-ivfpq", time.perf_counter() - t0, int(faiss.serialize_index(f).nbytes),
                  params={"nlist": nlist, "m": m, "nbits": 8})

        def fsearch(p):
            faiss.omp_set_num_threads(1)
            f.nprobe = p
            return f.search(xq, k)[1]
        _sweep(c, fsearch, nprobes, ds, k, repeats, log, 1.01)
        faiss.omp_set_num_threads(threads)
        curves.append(c)
    return curves


RABITQ_RERANK = (0, 100)  # exact re-ranking of the best 100 code estimates from float32 vectors, or none


def run_rabitq(ds, *, nlist: int, threads: int, k: int, repeats: int, nprobes, peers, log) -> list[Curve]:
    """IVF over 1-bit RaBitQ codes of the residuals, simdex against FAISS's IndexIVFRaBitQ (queries at 4 bits
    too), without re-ranking and with the best 100 estimates re-ranked from float32 vectors in memory (FAISS:
    IndexRefineFlat, k_factor 10)."""
    from .._numba import num_threads
    from ..quant import IVFIndex
    curves: list[Curve] = []
    warm = IVFIndex(ds.dim, ds.metric, nlist=8, codec="rabitq", vectors="memory")
    warm.add(ds.base[:2000])
    for rr in RABITQ_RERANK:
        warm.search(ds.queries[:10], k, nprobe=2, rerank=rr, threads=1)
    del warm
    with num_threads(threads):
        t0 = time.perf_counter()
        idx = IVFIndex(ds.dim, ds.metric, nlist=nlist, codec="rabitq", vectors="memory")
        idx.add(ds.base)
        build = time.perf_counter() - t0
    for rr in RABITQ_RERANK:
        c = Curve(f"simdex-rabitq-r{rr}", build, idx.nbytes - (idx._vectors.nbytes if not rr else 0),
                  params={"nlist": nlist, "bits": 1, "rerank": rr})
        _sweep(c, lambda p: idx.search(ds.queries, k, nprobe=p, rerank=rr, threads=1)[1], nprobes, ds, k, repeats,
               log)
        curves.append(c)
    del idx
    gc.collect()
    if "faiss" in peers:
        faiss, fmetric, xb, xq = _faiss_inputs(ds, threads)
        t0 = time.perf_counter()
        quantizer = faiss.IndexFlat(ds.dim, fmetric)
        f = faiss.IndexIVFRaBitQ(quantizer, ds.dim, nlist, fmetric)
        f.qb = 4
        f.train(xb)
        refined = faiss.IndexRefineFlat(f)
        refined.add(xb)  # into the IVF index (codes) and the refinement's float32 vectors
        build = time.perf_counter() - t0
        for rr, index in zip(RABITQ_RERANK, (f, refined)):
            c = Curve(f"faiss-rabitq-r{rr}", build, int(faiss.serialize_index(index).nbytes),
                      params={"nlist": nlist, "qb": 4, "k_factor": rr // k if rr else 0})

            def fsearch(p, index=index, rr=rr):
                faiss.omp_set_num_threads(1)
                f.nprobe = p
                if rr:
                    index.k_factor = rr / k
                return index.search(xq, k)[1]
            _sweep(c, fsearch, nprobes, ds, k, repeats, log)
            curves.append(c)
        faiss.omp_set_num_threads(threads)
    return curves


def run(dataset: str, *, parts=("graph", "ivf"), M: int = 16, ef_construction: int = 200, threads: int | None = None,
        k: int = 10, n_base: int | None = None, n_queries: int | None = 2000, repeats: int = 2,
        codecs=("lvq8", "int8", "lvq4x8"), peers=("hnswlib", "faiss"), nlist: int = 1024, m: int | None = None,
        efs=EFS, nprobes=NPROBES, log=print) -> dict:
    threads = threads or cpu_count()
    ds = datasets.load(dataset)
    if n_base or n_queries:
        ds = ds.subset(n_base, n_queries)
    m = m or ds.dim // 8
    log(f"{ds.name}: {ds.base.shape[0]} x {ds.dim}, {ds.queries.shape[0]} queries, metric {ds.metric}; "
        f"build threads={threads}, search 1 thread")
    report: dict = {"dataset": ds.name, "metric": ds.metric, "n_base": int(ds.base.shape[0]),
                    "n_queries": int(ds.queries.shape[0]), "dim": ds.dim, "k": k, "threads": threads,
                    "repeats": repeats, "machine": _machine()}
    if "graph" in parts:
        report["graph"] = {"M": M, "ef_construction": ef_construction,
                           "curves": [asdict(c) for c in run_graph(ds, M=M, ef_construction=ef_construction,
                                                                  threads=threads, k=k, repeats=repeats, efs=efs,
                                                                  codecs=codecs, peers=peers, log=log)]}
    if "ivf" in parts:
        report["ivf"] = {"nlist": nlist, "m": m, "nbits": 8,
                         "curves": [asdict(c) for c in run_ivf(ds, nlist=nlist, m=m, threads=threads, k=k,
                                                              repeats=repeats, nprobes=nprobes, peers=peers,
                                                              log=log)]}
    if "rabitq" in parts:
        report["rabitq"] = {"nlist": nlist, "bits": 1,
                            "curves": [asdict(c) for c in run_rabitq(ds, nlist=nlist, threads=threads, k=k,
                                                                    repeats=repeats, nprobes=nprobes, peers=peers,
                                                                    log=log)]}
    if "binary" in parts:
        report["binary"] = {"curves": [asdict(c) for c in run_binary(ds, threads=threads, k=k, repeats=repeats,
                                                                    peers=peers, log=log)]}
    report["ratios"] = ratios(report)
    return report


def _curves(report: dict, part: str) -> dict[str, Curve]:
    return {c["library"]: Curve(**c) for c in report.get(part, {}).get("curves", [])}


def ratios(report: dict) -> dict:
    out: dict = {}
    g = _curves(report, "graph")
    h = g.get("hnswlib")
    for name, c in g.items():
        if not name.startswith("simdex-") or name == "simdex-f32" or h is None:
            continue
        row = {"index_bytes_vs_hnswlib": c.index_bytes / h.index_bytes}
        for t in TARGETS:
            mine, theirs = c.qps_at(t), h.qps_at(t)
            row[f"qps@{t}_vs_hnswlib"] = mine / theirs if mine and theirs else None
            for peer in ("faiss-hnswsq8", "faiss-hnswpq"):
                f = g.get(peer)
                fq = f.qps_at(t) if f else None
                row[f"qps@{t}_vs_{peer.replace('-', '_')}"] = mine / fq if mine and fq else None
        out[name] = row
    iv = _curves(report, "ivf")
    if "simdex-ivfpq" in iv and "faiss-ivfpq" in iv:
        s, f = iv["simdex-ivfpq"], iv["faiss-ivfpq"]
        pairs = []
        fp = {p["param"]: p for p in f.points}
        for p in s.points:
            if p["param"] in fp:
                q = fp[p["param"]]
                pairs.append({"nprobe": p["param"], "recall_simdex": p["recall"], "recall_faiss": q["recall"],
                              "qps_ratio": p["qps"] / q["qps"]})
        out["ivfpq"] = {"per_nprobe": pairs,
                        **{f"qps@{t}_vs_faiss": (s.qps_at(t) / f.qps_at(t)) if s.qps_at(t) and f.qps_at(t) else None
                           for t in TARGETS}}
    rq = _curves(report, "rabitq")
    for rr in RABITQ_RERANK:
        s, f = rq.get(f"simdex-rabitq-r{rr}"), rq.get(f"faiss-rabitq-r{rr}")
        if s is None or f is None:
            continue
        fp = {p["param"]: p for p in f.points}
        out[f"rabitq-r{rr}"] = {"per_nprobe": [{"nprobe": p["param"], "recall_simdex": p["recall"],
                                                "recall_faiss": fp[p["param"]]["recall"],
                                                "qps_ratio": p["qps"] / fp[p["param"]]["qps"]}
                                               for p in s.points if p["param"] in fp],
                                **{f"qps@{t}_vs_faiss": (s.qps_at(t) / f.qps_at(t)) if s.qps_at(t) and f.qps_at(t)
                                   else None for t in TARGETS}}
    return out


def format_report(report: dict) -> str:
    lines = [f"== {report['dataset']} ({report['n_base']} x {report['dim']}, {report['metric']}), "
             f"recall@{report['k']}, {report['n_queries']} queries, search on 1 thread =="]
    for part, label in (("graph", "graph"), ("ivf", "IVF"), ("rabitq", "IVF-RaBitQ"),
                        ("binary", "binary (flat Hamming scan)")):
        curves = _curves(report, part)
        if not curves:
            continue
        lines.append(f"-- {label}: " + json.dumps({k: v for k, v in report[part].items() if k != "curves"}))
        lines.append(f"{'index':15s} {'build s':>8s} {'RAM MiB':>8s} {'disk MiB':>9s} {'RssFile+':>9s} "
                     + " ".join(f"{'QPS@' + str(t):>10s}" for t in TARGETS))
        for c in curves.values():
            cells = [f"{q:10.0f}" if (q := c.qps_at(t)) else f"{'-':>10s}" for t in TARGETS]
            lines.append(f"{c.library:15s} {c.build_seconds:8.1f} {c.index_bytes / 2**20:8.1f} "
                         f"{c.disk_bytes / 2**20:9.1f} {c.rss_file_delta_bytes / 2**20:9.1f} " + " ".join(cells))
    for name, row in report["ratios"].items():
        if name == "ivfpq" or name.startswith("rabitq"):
            for p in row["per_nprobe"]:
                lines.append(f"{name} nprobe={p['nprobe']:4d} recall simdex {p['recall_simdex']:.4f} faiss "
                             f"{p['recall_faiss']:.4f}  QPS simdex/faiss {p['qps_ratio']:.2f}")
            lines.append(f"{name}: " + ", ".join(f"{k2} {v:.2f}" for k2, v in row.items()
                                                  if k2 != "per_nprobe" and v is not None))
            continue
        cells = ", ".join(f"{k2} {v:.2f}" for k2, v in row.items() if v is not None)
        lines.append(f"{name}: {cells}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    parts = [p for p in ("graph", "ivf", "rabitq", "binary") if p in report]
    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 4.8), squeeze=False)
    for ax, part in zip(axes[0], parts):
        for c in report[part]["curves"]:
            pts = sorted(c["points"], key=lambda p: p["recall"])
            ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], marker="o", ms=3,
                    lw=2.2 if c["library"].startswith("simdex") else 1.3, label=c["library"])
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{report['k']}")
        ax.set_ylabel("queries per second (1 thread)")
        title = {"graph": "HNSW over codes", "ivf": "IVF-PQ", "rabitq": "IVF-RaBitQ (1 bit)",
                 "binary": "binary codes (+ re-rank)"}[part]
        ax.set_title(f"{report['dataset']}: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(report: dict, out_dir: Path) -> tuple[Path, Path]:
    return write_report(report, out_dir, f"quant-{report['dataset']}", plot)