"""Disk-index benchmark: build and search a :class:`~simdex.quant.SPANNIndex` over a data set whose float32 size
is several times the memory the process may use.

The large set is made from real vectors, plus noisy copies of them (there is no multi-GB real set in
../shared/data):

- all 117,659 WordNet all-MiniLM-L6-v2 embeddings (384-d; the 10,000 held-out query rows are not in the base);
- all 400,000 GloVe 6B 50-d vectors (the 10,000 query rows held out), unit-normalised and placed into 384-d by a
  fixed random orthonormal map (50 -> 384), which keeps every distance between them;
- noisy copies of those ~497k real rows until ``n`` rows: ``normalise(x + sigma * g / sqrt(dim))`` with g
  standard normal, ``sigma`` 0.25 by default (a copy's cosine to its source is about 0.97).

Queries: held-out WordNet and GloVe query rows (half each). Ground truth: exact brute force over the whole file in
chunks, in the parent process. The index is built and searched in a child process whose data segment is limited
with ``resource.setrlimit(RLIMIT_DATA, limit)``: every malloc / numpy array / anonymous mapping of the child
counts against it, while the memory-mapped index files (shared, file-backed pages that the kernel can drop at
any time) do not; the child also reports its peak resident set (``VmHWM``, which does include mapped file pages
while they are mapped).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import datasets
from .._proc import proc_status
from .ann import _machine
from ._common import largest_mappings, pyplot, written_bytes

DIM = 384




def make_set(folder: Path, n: int, n_queries: int, sigma: float, seed: int, log=print) -> dict:
    """Write ``base.f32`` (n, 384) and ``queries.f32``, ``gt.npy`` (exact top-100 cosine ids) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / "set.json"
    want = {"n": n, "n_queries": n_queries, "sigma": sigma, "seed": seed, "dim": DIM}
    if info_path.exists() and json.loads(info_path.read_text()).get("params") == want:
        return json.loads(info_path.read_text())
    rng = np.random.default_rng(seed)
    wn = datasets.load("wordnet-minilm-384")
    gl = datasets.load("glove-50")
    embed = np.linalg.qr(rng.standard_normal((DIM, gl.dim)))[0].T.astype(np.float32)  # (50, 384), orthonormal rows

    def unit(x):
        x = np.asarray(x, np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    real = [unit(wn.base), unit(gl.base) @ embed]
    n_real = sum(r.shape[0] for r in real)
    if n < n_real:
        raise ValueError(f"n must be at least the {n_real} real rows")
    base = np.memmap(folder / "base.f32", np.float32, mode="w+", shape=(n, DIM))
    pos = 0
    for r in real:
        base[pos:pos + r.shape[0]] = r
        pos += r.shape[0]
    chunk = 1 << 16
    src = 0
    while pos < n:
        m = min(chunk, n - pos)
        idx = (np.arange(src, src + m) % n_real)
        src += m
        x = np.asarray(base[idx]) + sigma / np.sqrt(DIM) * rng.standard_normal((m, DIM)).astype(np.float32)
        base[pos:pos + m] = unit(x)
        pos += m
    base.flush()
    half = n_queries // 2
    queries = np.concatenate([unit(wn.queries[:half]), unit(gl.queries[:n_queries - half]) @ embed]).astype(
        np.float32)
    queries.tofile(folder / "queries.f32")
    log(f"  wrote {n} x {DIM} float32 ({n * DIM * 4 / 2**30:.2f} GiB): {n_real} real rows + {n - n_real} noisy "
        f"copies; computing exact ground truth for {n_queries} queries ...")
    t0 = time.perf_counter()
    kk = 100
    best_d = np.full((n_queries, kk), np.inf, np.float32)
    best_i = np.full((n_queries, kk), -1, np.int64)
    for s in range(0, n, 1 << 17):
        d = -(queries @ np.asarray(base[s:s + (1 << 17)]).T)
        cd = np.concatenate([best_d, d], axis=1)
        ci = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + d.shape[1]), d.shape)], axis=1)
        part = np.argpartition(cd, kk - 1, axis=1)[:, :kk]
        best_d, best_i = np.take_along_axis(cd, part, 1), np.take_along_axis(ci, part, 1)
    order = np.argsort(best_d, axis=1, kind="stable")
    np.save(folder / "gt.npy", np.take_along_axis(best_i, order, 1))
    info = {"params": want, "n_real": n_real, "n_wordnet": int(real[0].shape[0]), "n_glove": int(real[1].shape[0]),
            "float32_bytes": n * DIM * 4, "ground_truth_seconds": time.perf_counter() - t0}
    info_path.write_text(json.dumps(info))
    return info


def _child(args: dict) -> None:
    """Runs under the memory limit: build, then search one query at a time."""
    from ..quant import SPANNIndex
    folder = Path(args["folder"])
    n = args["n"]
    out: dict = {"limit_bytes": args["limit"]}
    base = np.memmap(folder / "base.f32", np.float32, mode="r", shape=(n, DIM))
    queries = np.fromfile(folder / "queries.f32", np.float32).reshape(-1, DIM)
    gt = np.load(folder / "gt.npy")
    index_dir = folder / "index"
    t0 = time.perf_counter()
    if not (index_dir / "index.sdx").exists():
        index = SPANNIndex.build(index_dir, base, "cosine", list_size=args["list_size"],
                                 closure_eps=args["closure_eps"], max_replicas=args["max_replicas"],
                                 sample=args["sample"],
                                 chunk_rows=16_384, progress=False)
        out["build_seconds"] = time.perf_counter() - t0
    else:
        index = SPANNIndex.open(index_dir)
        out["build_seconds"] = None
    out["build_vm_hwm_bytes"] = proc_status("VmHWM")
    out["build_vm_data_bytes"] = proc_status("VmData")
    out.update({"nlist": index.nlist, "entries": int(index.slots.shape[0]), "index_ram_bytes": index.nbytes,
                "index_disk_bytes": index.disk_nbytes,
                "list_size_mean": float(index.list_sizes().mean()),
                "list_size_p99": float(np.percentile(index.list_sizes(), 99)),
                "list_size_max": int(index.list_sizes().max())})
    del base
    index.release_pages()
    index.search(queries[:4], 10, threads=1)  # JIT
    points = []
    k = 10
    peak_rss = 0
    for nprobe, eps in args["settings"]:
        lat = np.empty(queries.shape[0])
        ids = np.empty((queries.shape[0], k), np.int64)
        for i in range(queries.shape[0]):
            t = time.perf_counter()
            ids[i] = index.search(queries[i:i + 1], k, nprobe=nprobe, eps=eps, threads=1)[1][0]
            lat[i] = time.perf_counter() - t
            # the pages this query mapped leave the process after it (they stay in the OS page cache)
            peak_rss = max(peak_rss, proc_status("VmRSS"))
            index.release_pages()
        hits = [len(set(ids[i]) & set(gt[i, :k])) for i in range(queries.shape[0])]
        lists = index.lists_read(queries, nprobe=nprobe, eps=eps)
        points.append({"nprobe": nprobe, "eps": eps, "recall": float(np.mean(hits)) / k,
                       "p50_ms": float(np.percentile(lat, 50) * 1e3), "p95_ms": float(np.percentile(lat, 95) * 1e3),
                       "mean_lists_read": float(lists.mean())})
        print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    out["points"] = points
    out["search_peak_vm_rss_bytes"] = peak_rss
    out["vm_hwm_bytes"] = proc_status("VmHWM")
    out["rss_anon_bytes"] = proc_status("RssAnon")
    print(json.dumps(out))


def run(*, n: int = 1_600_000, limit_mb: int = 600, n_queries: int = 1000, sigma: float = 0.25,
        list_size: int = 96, closure_eps: float = 0.05, max_replicas: int = 4, sample: int = 100_000,
        work_dir: str = "/tmp/simdex-disk",
        settings=((8, 0.6), (16, 0.6), (24, 0.6), (32, 0.6), (48, 0.6), (64, 0.6)), rebuild: bool = True,
        log=print) -> dict:
    folder = Path(work_dir)
    t0 = time.perf_counter()
    info = make_set(folder, n, n_queries, sigma, 0, log)
    log(f"  data set ready in {time.perf_counter() - t0:.0f} s")
    if rebuild and (folder / "index").exists():
        import shutil
        shutil.rmtree(folder / "index")
    limit = limit_mb * 2**20
    args = {"folder": str(folder), "n": n, "limit": limit, "list_size": list_size, "closure_eps": closure_eps,
            "sample": sample, "max_replicas": max_replicas, "settings": [list(s) for s in settings]}

    def set_limit():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    proc = subprocess.run([sys.executable, "-c", "import json, sys; from simdex.bench.disk import _child; "
                           "_child(json.loads(sys.argv[1]))", json.dumps(args)], preexec_fn=set_limit,
                          capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    report = {"set": info, "n": n, "dim": DIM, "float32_bytes": n * DIM * 4, "limit_bytes": limit,
              "data_over_limit": n * DIM * 4 / limit, "list_size": list_size, "closure_eps": closure_eps,
              "max_replicas": max_replicas, "sample": sample, "n_queries": n_queries, "machine": _machine(), **child}
    return report


def format_report(r: dict) -> str:
    if r.get("through") == "database":
        return format_db_report(r)
    gib = 2**30
    lines = [f"== SPANN disk index: {r['n']} x {r['dim']} float32 = {r['float32_bytes'] / gib:.2f} GiB "
             f"({r['set']['n_real']} real rows: {r['set']['n_wordnet']} WordNet MiniLM + {r['set']['n_glove']} "
             f"GloVe-50 embedded in 384-d; the rest noisy copies), child limited to RLIMIT_DATA "
             f"{r['limit_bytes'] / 2**20:.0f} MiB = data / {r['data_over_limit']:.1f} ==",
             f"build {r['build_seconds']:.0f} s, peak RSS during build {r['build_vm_hwm_bytes'] / 2**20:.0f} MiB, "
             f"{r['nlist']} lists, {r['entries']} entries ({r['entries'] / r['n']:.2f} per vector), list size mean "
             f"{r['list_size_mean']:.0f} p99 {r['list_size_p99']:.0f} max {r['list_size_max']}",
             f"index RAM {r['index_ram_bytes'] / 2**20:.0f} MiB, files on disk {r['index_disk_bytes'] / gib:.2f} GiB; "
             f"search peak RSS {r['search_peak_vm_rss_bytes'] / 2**20:.0f} MiB "
             f"({r['search_peak_vm_rss_bytes'] / r['float32_bytes']:.1%} of the float32 data), "
             f"overall VmHWM {r['vm_hwm_bytes'] / 2**20:.0f} MiB ({r['vm_hwm_bytes'] / r['float32_bytes']:.1%})",
             f"{'nprobe':>6s} {'eps':>5s} {'lists':>6s} {'recall@10':>9s} {'p50 ms':>7s} {'p95 ms':>7s}"]
    for p in r["points"]:
        lines.append(f"{p['nprobe']:6d} {p['eps']:5.2f} {p['mean_lists_read']:6.1f} {p['recall']:9.4f} "
                     f"{p['p50_ms']:7.2f} {p['p95_ms']:7.2f}")
    return "\n".join(lines)


def save(report: dict, out_dir: Path) -> tuple[Path, Path]:
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    if report.get("through") == "database":
        return _save_db(report, out_dir, plt)
    json_path = out_dir / "disk-spann.json"
    json_path.write_text(json.dumps(report, indent=1))
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    pts = sorted(report["points"], key=lambda p: p["recall"])
    ax.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], marker="o", label="p50")
    ax.plot([p["recall"] for p in pts], [p["p95_ms"] for p in pts], marker="s", label="p95")
    ax.axhline(5.0, color="grey", ls="--", lw=1)
    ax.axvline(0.9, color="grey", ls="--", lw=1)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("latency per query, ms (1 thread)")
    ax.set_title(f"SPANN, {report['float32_bytes'] / 2**30:.1f} GiB float32 under a "
                 f"{report['limit_bytes'] / 2**20:.0f} MiB limit")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = out_dir / "disk-spann.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return json_path, png


# ---- the same set through the database API (issue 23, part 2: larger-than-memory collections) ---------------------
def _db_child(args: dict) -> None:
    """Runs under the memory limit: upsert every row into a collection in batches (durable when each call returns),
    wait until all are indexed, then search one query at a time through the collection."""
    import simdex
    from .._storage import drop_pages
    folder = Path(args["folder"])
    n, batch = args["n"], args["batch"]
    base = np.memmap(folder / "base.f32", np.float32, mode="r", shape=(n, DIM))
    queries = np.fromfile(folder / "queries.f32", np.float32).reshape(-1, DIM)
    gt = np.load(folder / "gt.npy")
    out: dict = {"limit_bytes": args["limit"]}
    db = simdex.Database(folder / "db", merge_rows=args["merge_rows"])
    col = db.create_collection("disk", DIM, metric="cosine", index=args["index"], **args["params"])
    t0 = time.perf_counter()
    progress = []
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        col.upsert([str(i) for i in range(start, stop)], np.asarray(base[start:stop]))
        drop_pages(base)  # the source file's pages are the bench's, not the collection's: out of the resident set
        if stop % max(batch, n // 20) < batch or stop == n:
            stats = col.stats()
            progress.append({"rows": stop, "seconds": time.perf_counter() - t0, "unindexed": stats["unindexed"],
                             "vm_rss_bytes": proc_status("VmRSS"), "vm_data_bytes": proc_status("VmData")})
            print(json.dumps(progress[-1]), file=sys.stderr, flush=True)
    out["upsert_seconds"] = time.perf_counter() - t0
    db.optimize(wait_idle=True)
    out["indexed_seconds"] = time.perf_counter() - t0
    col.checkpoint()
    out["load_seconds"] = time.perf_counter() - t0
    out["progress"] = progress
    out["load_vm_hwm_bytes"] = proc_status("VmHWM")
    out["load_written_bytes"] = written_bytes()  # what the load wrote to disk: log, SQLite, vectors, checkpoints
    main = col._vectors.main
    out.update({"index_ram_bytes": int(main.nbytes), "nlist": int(getattr(main, "nlist", 0)),
                "disk_bytes": sum(p.stat().st_size for p in col.path.rglob("*") if p.is_file())})
    del base
    release = lambda: drop_pages(col._vectors.main._vectors)  # noqa: E731 - the vector file's pages leave the process
    release()
    col.search(queries[0], 10, include=[])  # JIT
    k, points, peak_rss = 10, [], 0
    for nprobe in args["settings"]:
        lat = np.empty(queries.shape[0])
        ids = np.full((queries.shape[0], k), -1, np.int64)
        point_peak = (0, 0, 0)  # the resident set at its largest in this sweep: total, anonymous, file-backed
        for i in range(queries.shape[0]):
            t = time.perf_counter()
            hits = col.search(queries[i], k, ef=nprobe, include=[])
            lat[i] = time.perf_counter() - t
            ids[i, :len(hits)] = [int(h["id"]) for h in hits]
            rss = proc_status("VmRSS")
            if rss > point_peak[0]:
                point_peak = (rss, proc_status("RssAnon"), proc_status("RssFile"))
                where = largest_mappings()
            release()
        peak_rss = max(peak_rss, point_peak[0])
        found = [len(set(ids[i]) & set(gt[i, :k])) for i in range(queries.shape[0])]
        points.append({"nprobe": nprobe, "recall": float(np.mean(found)) / k,
                       "p50_ms": float(np.percentile(lat, 50) * 1e3), "p95_ms": float(np.percentile(lat, 95) * 1e3),
                       "peak_rss_bytes": point_peak[0], "peak_rss_anon_bytes": point_peak[1],
                       "peak_rss_file_bytes": point_peak[2], "peak_rss_mappings": where})
        print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    out["points"] = points
    out["search_peak_vm_rss_bytes"] = peak_rss
    out["vm_hwm_bytes"] = proc_status("VmHWM")
    db.close()
    print(json.dumps(out))


def run_db(*, n: int = 2_000_000, limit_mb: int = 700, n_queries: int = 1000, sigma: float = 0.25,
           index: str = "ivf-pq", params: dict | None = None, batch: int = 10_000, merge_rows: int = 20_000,
           work_dir: str = "/tmp/simdex-disk", settings=(16, 32, 64, 128, 256), log=print) -> dict:
    """The disk set loaded through the database API into one collection by a child limited to RLIMIT_DATA
    ``limit_mb`` (see the module docstring), then searched one query per call."""
    import shutil
    folder = Path(work_dir)
    t0 = time.perf_counter()
    info = make_set(folder, n, n_queries, sigma, 0, log)
    log(f"  data set ready in {time.perf_counter() - t0:.0f} s")
    shutil.rmtree(folder / "db", ignore_errors=True)
    limit = limit_mb * 2**20
    args = {"folder": str(folder), "n": n, "limit": limit, "index": index, "params": params or {}, "batch": batch,
            "merge_rows": merge_rows, "settings": list(settings)}

    def set_limit():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    proc = subprocess.run([sys.executable, "-c", "import json, sys; from simdex.bench.disk import _db_child; "
                           "_db_child(json.loads(sys.argv[1]))", json.dumps(args)], preexec_fn=set_limit,
                          stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (rc {proc.returncode}); its log is above")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(folder / "db", ignore_errors=True)
    return {"through": "database", "set": info, "n": n, "dim": DIM, "float32_bytes": n * DIM * 4,
            "limit_bytes": limit, "data_over_limit": n * DIM * 4 / limit, "index": index, "params": params or {},
            "batch": batch, "merge_rows": merge_rows, "n_queries": n_queries, "machine": _machine(), **child}


def _save_db(report: dict, out_dir: Path, plt) -> tuple[Path, Path]:
    json_path = out_dir / f"disk-db-{report['index']}.json"
    json_path.write_text(json.dumps(report, indent=1))
    fig, (load, search) = plt.subplots(1, 2, figsize=(11, 4.5))
    prog = report["progress"]
    secs = [p["seconds"] for p in prog]
    load.plot(secs, [p["rows"] / 1e6 for p in prog], marker="o", label="rows upserted (M)")
    load.plot(secs, [p["unindexed"] / 1e6 for p in prog], marker=".", label="rows waiting for a merge (M)")
    load.set_xlabel("seconds")
    load.set_ylabel("million rows")
    rss = load.twinx()
    rss.plot(secs, [p["vm_rss_bytes"] / 2**20 for p in prog], color="grey", ls="--", label="RSS MiB")
    rss.axhline(report["limit_bytes"] / 2**20, color="red", lw=1, ls=":", label="RLIMIT_DATA")
    rss.set_ylabel("MiB")
    load.legend(loc="upper left", fontsize=8)
    rss.legend(loc="lower right", fontsize=8)
    load.set_title(f"loading {report['n'] / 1e6:.1f}M x {report['dim']} through the database")
    pts = report["points"]
    search.plot([p["recall"] for p in pts], [p["p50_ms"] for p in pts], marker="o", label="p50")
    search.plot([p["recall"] for p in pts], [p["p95_ms"] for p in pts], marker="s", label="p95")
    search.axvline(0.9, color="grey", ls="--", lw=1)
    search.set_xlabel("recall@10")
    search.set_ylabel("ms per query (one per call)")
    search.set_title(f"{report['index']} collection, search")
    search.grid(True, alpha=0.3)
    search.legend()
    fig.tight_layout()
    png = out_dir / f"disk-db-{report['index']}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return json_path, png


def format_db_report(r: dict) -> str:
    gib, mib = 2**30, 2**20
    lines = [f"== database collection ({r['index']}): {r['n']} x {r['dim']} float32 = "
             f"{r['float32_bytes'] / gib:.2f} GiB upserted in batches of {r['batch']}, child limited to RLIMIT_DATA "
             f"{r['limit_bytes'] / mib:.0f} MiB = data / {r['data_over_limit']:.1f} ==",
             f"upserts acknowledged (durable) at {r['n'] / r['upsert_seconds']:,.0f} rows/s "
             f"({r['upsert_seconds']:.0f} s); all indexed after {r['indexed_seconds']:.0f} s "
             f"({r['n'] / r['indexed_seconds']:,.0f} rows/s); peak RSS while loading "
             f"{r['load_vm_hwm_bytes'] / mib:.0f} MiB; the load wrote {r.get('load_written_bytes', 0) / gib:.1f} GiB "
             f"({r.get('load_written_bytes', 0) / r['float32_bytes']:.1f}x the float32 data)",
             f"index RAM {r['index_ram_bytes'] / mib:.0f} MiB" + (f" ({r['nlist']} lists)" if r['nlist'] else "") +
             f", collection on disk "
             f"{r['disk_bytes'] / gib:.2f} GiB; search peak RSS {r['search_peak_vm_rss_bytes'] / mib:.0f} MiB "
             f"({r['search_peak_vm_rss_bytes'] / r['float32_bytes']:.1%} of the float32 data)",
             f"{'ef':>6s} {'recall@10':>9s} {'p50 ms':>7s} {'p95 ms':>7s} {'peak RSS MiB (anon + file)':>27s}"]
    for p in r["points"]:
        rss = (f"{p['peak_rss_bytes'] / mib:.0f} ({p['peak_rss_anon_bytes'] / mib:.0f} + "
               f"{p['peak_rss_file_bytes'] / mib:.0f})" if "peak_rss_bytes" in p else "")
        lines.append(f"{p['nprobe']:6d} {p['recall']:9.4f} {p['p50_ms']:7.2f} {p['p95_ms']:7.2f} {rss:>27s}")
    return "\n".join(lines)
