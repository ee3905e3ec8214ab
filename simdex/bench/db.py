"""Database benchmark: simdex collections against Chroma and LanceDB on the same records, machine and run.

Records are the WordNet glosses (``wordnet-minilm-384`` base rows: 384-d embeddings, metadata ``pos`` and
``n_words``, the gloss text as document). Measured for each engine:

- **upsert**: records per second through the engine's insert call in batches of ``batch`` records, each batch
  durable and searchable when the call returns (simdex: ``sync="always"``; new rows are searched exactly until
  the background optimizer has put them in the graph index);
- **time to indexed**: from the first upsert until the engine's ANN index holds every record (Chroma builds its
  HNSW inside ``add``; LanceDB and simdex build their index afterwards);
- **search latency**: single queries, one at a time, from Python: p50 and p99 over ``n_queries`` queries with
  recall@10 against exact ground truth, over a sweep of the engine's search-effort parameter, unfiltered and with
  the filter ``pos == "verb"`` (12% of the records). The figure that counts is p99 at the smallest effort whose
  recall@10 reaches ``target`` (0.95).

Engines: ``simdex``, ``chroma`` and ``lancedb`` in process; ``simdex-http`` and ``chroma-http`` through each
one's own HTTP server running in a separate process (LanceDB has no open-source server).
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets
from ._common import pyplot

FILTER_POS = "verb"


class Engine:
    name = "?"
    param_name = "ef"
    params: tuple[int, ...] = ()

    def __init__(self, path: Path, dim: int, threads: int | None) -> None:
        self.path, self.dim, self.threads = path, dim, threads

    def upsert(self, ids: list[str], vectors: np.ndarray, metas: list[dict], docs: list[str]) -> None: ...

    def finish_indexing(self) -> None: ...

    def search(self, query: np.ndarray, k: int, param: int, filtered: bool) -> list[str]: ...

    def close(self) -> None: ...


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(argv: list[str], ready: Any, what: str, timeout: float = 120.0) -> Any:
    """Start a server process and wait until ``ready()`` stops raising."""
    import subprocess
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while True:
        try:
            ready()
            return proc
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{what} server did not start") from None
            time.sleep(0.2)


class SimdexEngine(Engine):
    name = "simdex"
    params = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    index: dict[str, Any] = {"M": 16, "ef_construction": 200}  # the collection's index kind and parameters

    def __init__(self, path: Path, dim: int, threads: int | None) -> None:
        super().__init__(path, dim, threads)
        from ..store import connect
        self.db = connect(path, sync="always", background=False)
        self.col = self.db.create_collection("bench", dim, "cosine", **self.index)

    def index_ram_bytes(self) -> int:
        """Bytes the collection's main index holds in memory (not its memory-mapped files)."""
        return int(self.col._vectors.main.nbytes)

    def upsert(self, ids, vectors, metas, docs):
        self.col.upsert(ids, vectors, metas, docs)

    def finish_indexing(self):
        self.col.merge(threads=self.threads)

    def search(self, query, k, param, filtered):
        hits = self.col.search(query, k, where={"pos": FILTER_POS} if filtered else None, ef=param,
                               include=["metadatas", "documents", "distances"])
        return [h["id"] for h in hits]

    def close(self):
        self.db.close()


class SimdexHttpEngine(SimdexEngine):
    """simdex through its HTTP server (``simdex serve`` in its own process) and :class:`simdex.Client`."""

    name = "simdex-http"

    def __init__(self, path: Path, dim: int, threads: int | None) -> None:
        Engine.__init__(self, path, dim, threads)
        import sys
        port = _free_port()
        from ..server.client import Client
        self.client = Client(f"http://127.0.0.1:{port}")
        self.proc = _start_server([sys.executable, "-m", "simdex.cli", "serve", "--path", str(path), "--port",
                                   str(port), "--sync", "always"], self.client.health, "simdex")
        self.col = self.client.create_collection("bench", dim, "cosine", M=16, ef_construction=200)

    def finish_indexing(self):
        while self.col.stats()["unindexed"]:  # the server's background optimizer builds the graph
            time.sleep(0.1)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=120)


class ChromaEngine(Engine):
    name = "chroma"
    params = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)

    def __init__(self, path: Path, dim: int, threads: int | None) -> None:
        super().__init__(path, dim, threads)
        import chromadb
        self.client = chromadb.PersistentClient(path=str(path))
        hnsw: dict[str, Any] = {"space": "cosine", "ef_construction": 200, "max_neighbors": 16, "ef_search": 10}
        if threads:
            hnsw["num_threads"] = threads
        self.col = self.client.create_collection("bench", configuration={"hnsw": hnsw}, embedding_function=None)
        self._ef = None

    def upsert(self, ids, vectors, metas, docs):
        self.col.upsert(ids=ids, embeddings=vectors, metadatas=metas, documents=docs)

    def search(self, query, k, param, filtered):
        if param != self._ef:
            # Chroma applies a changed ef_search only to a freshly loaded index: modify, then reopen
            import chromadb
            from chromadb.api.client import SharedSystemClient
            self.col.modify(configuration={"hnsw": {"ef_search": param}})
            SharedSystemClient.clear_system_cache()
            self.client = chromadb.PersistentClient(path=str(self.path))
            self.col = self.client.get_collection("bench", embedding_function=None)
            self._ef = param
        r = self.col.query(query_embeddings=query[None, :], n_results=k,
                           where={"pos": FILTER_POS} if filtered else None,
                           include=["metadatas", "documents", "distances"])
        return r["ids"][0]


class ChromaHttpEngine(ChromaEngine):
    """Chroma through its own HTTP server (``chroma run`` in its own process) and ``chromadb.HttpClient``."""

    name = "chroma-http"

    def __init__(self, path: Path, dim: int, threads: int | None) -> None:
        Engine.__init__(self, path, dim, threads)
        self.port = _free_port()
        self.proc = None
        self._start()
        hnsw: dict[str, Any] = {"space": "cosine", "ef_construction": 200, "max_neighbors": 16, "ef_search": 10}
        if threads:
            hnsw["num_threads"] = threads
        self.col = self.client.create_collection("bench", configuration={"hnsw": hnsw}, embedding_function=None)
        self._ef = None

    def _start(self) -> None:
        import sys

        import chromadb
        exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))

        def connect() -> None:
            self.client = chromadb.HttpClient(host="127.0.0.1", port=self.port)
            self.client.heartbeat()

        self.proc = _start_server([exe, "run", "--path", str(self.path), "--port", str(self.port)], connect,
                                  "chroma")

    def search(self, query, k, param, filtered):
        if param != self._ef:
            # the server applies a changed ef_search when it loads the index: modify, then restart it
            self.col.modify(configuration={"hnsw": {"ef_search": param}})
            self.close()
            self._start()
            self.col = self.client.get_collection("bench", embedding_function=None)
            self._ef = param
        r = self.col.query(query_embeddings=query[None, :], n_results=k,
                           where={"pos": FILTER_POS} if filtered else None,
                           include=["metadatas", "documents", "distances"])
        return r["ids"][0]

    def close(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=120)
            self.proc = None


class LanceEngine(Engine):
    name = "lancedb"
    params = (20, 24, 32, 48, 64, 96, 128, 192, 256)  # ef >= k * refine_factor

    def __init__(self, path: Path, dim: int, threads: int | None) -> None:
        super().__init__(path, dim, threads)
        import lancedb
        self.db = lancedb.connect(str(path))
        self.table = None

    def _arrow(self, ids, vectors, metas, docs):
        import pyarrow as pa
        flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel())
        return pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim),
                         "pos": [m["pos"] for m in metas], "n_words": [m["n_words"] for m in metas],
                         "document": docs})

    def upsert(self, ids, vectors, metas, docs):
        data = self._arrow(ids, vectors, metas, docs)
        if self.table is None:
            self.table = self.db.create_table("bench", data=data)
        else:
            # an upsert (merge on id), the operation the other engines run
            (self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data))

    def finish_indexing(self):
        from lancedb.index import IvfHnswSq
        n = self.table.count_rows()
        self.table.create_index("vector", config=IvfHnswSq(distance_type="cosine",
                                                           num_partitions=max(1, n // 50_000)))
        self.table.create_scalar_index("pos")

    def search(self, query, k, param, filtered):
        q = (self.table.search(query, vector_column_name="vector").distance_type("cosine").limit(k)
             .ef(param).nprobes(64).refine_factor(2))
        if filtered:
            q = q.where(f"pos = '{FILTER_POS}'", prefilter=True)
        return q.to_arrow().column("id").to_pylist()


def _kind_engine(kind: str, param_name: str, params: tuple[int, ...], **build: Any) -> type[SimdexEngine]:
    """A simdex engine whose collection has main index ``kind`` (``ef`` sets ``param_name``)."""
    return type(f"SimdexEngine_{kind}", (SimdexEngine,), {"name": f"simdex-{kind}", "param_name": param_name,
                                                         "params": params, "index": {"index": kind, **build}})


class LibraryEngine(Engine):
    """A collection kind's index used directly from the library, without the database: the same class and
    parameters (:func:`simdex.store.config.new_main_index`, SPANN's build), every vector added at once (a
    collection's merge does the same when the rows arrive before it runs), ids mapped back to the record ids."""

    kind = "hnsw"
    index: dict[str, Any] = {"M": 16, "ef_construction": 200}

    def __init__(self, path: Path, dim: int, threads: int | None) -> None:
        super().__init__(path, dim, threads)
        self._ids: list[str] = []
        self._parts: list[np.ndarray] = []
        self._verb: list[bool] = []

    def upsert(self, ids, vectors, metas, docs):
        self._ids.extend(ids)
        self._parts.append(np.array(vectors, np.float32))
        self._verb.extend(m["pos"] == FILTER_POS for m in metas)

    def finish_indexing(self):
        from ..store.config import MAIN_INDEXES, new_main_index
        x = np.concatenate(self._parts)
        self._parts = []
        self.path.mkdir(parents=True, exist_ok=True)
        if MAIN_INDEXES[self.kind].rebuilds:
            from ..quant import SPANNIndex
            self.lib = SPANNIndex.build(self.path / "spann", x, "cosine", progress=False,
                                        **{"list_size": 64, **self.index})
        else:
            self.lib = new_main_index(self.dim, "cosine", self.kind, self.index, str(self.path), x.shape[0])
            self.lib.add(x, threads=self.threads)
        self._breadth = MAIN_INDEXES[self.kind].breadth
        self._allowed = np.flatnonzero(np.array(self._verb))

    def index_ram_bytes(self) -> int:
        return int(self.lib.nbytes)

    def search(self, query, k, param, filtered):
        _, found = self.lib.search(query[None], k, filter=self._allowed if filtered else None, threads=1,
                                   **{self._breadth: param})
        return [self._ids[i] for i in found[0].tolist() if i >= 0]


def _library_engine(collection_engine: type[SimdexEngine]) -> type[LibraryEngine]:
    """The library counterpart of a collection engine: its kind and parameters, the same effort sweep."""
    build = dict(collection_engine.index)
    kind = build.pop("index", "hnsw")
    return type(f"LibraryEngine_{kind}", (LibraryEngine,), {"name": f"lib-{kind}", "kind": kind, "index": build,
                                                             "param_name": collection_engine.param_name,
                                                             "params": collection_engine.params})


ENGINES = {"simdex": SimdexEngine, "simdex-http": SimdexHttpEngine, "chroma": ChromaEngine,
           "chroma-http": ChromaHttpEngine, "lancedb": LanceEngine,
           # the other index kinds of a collection (see simdex.store.config.MAIN_INDEXES)
           "simdex-ivf-pq": _kind_engine("ivf-pq", "nprobe", (8, 16, 32, 64, 96, 128, 192, 256)),
           "simdex-ivf-rabitq": _kind_engine("ivf-rabitq", "nprobe", (8, 16, 32, 64, 96, 128, 192, 256)),
           "simdex-vamana": _kind_engine("vamana", "L", (10, 16, 24, 32, 48, 64, 96, 128, 192, 256), R=32),
           "simdex-vamana-disk": _kind_engine("vamana-disk", "L", (10, 16, 24, 32, 48, 64, 96, 128, 192, 256),
                                              R=32),
           "simdex-spann": _kind_engine("spann", "nprobe", (8, 16, 32, 64, 96, 128, 192, 256)),
           "simdex-hnsw-lvq8": _kind_engine("hnsw-lvq8", "ef", SimdexEngine.params, M=16, ef_construction=200),
           "simdex-hnsw-int8": _kind_engine("hnsw-int8", "ef", SimdexEngine.params, M=16, ef_construction=200)}
# each collection kind's index used directly from the library (lib-hnsw, lib-ivf-pq, ...): the database's cost
ENGINES.update({_library_engine(engine).name: _library_engine(engine) for name, engine in list(ENGINES.items())
                if name == "simdex" or (name.startswith("simdex-") and name != "simdex-http")})


def _truth(base: np.ndarray, queries: np.ndarray, mask: np.ndarray | None, k: int) -> np.ndarray:
    rows = np.arange(base.shape[0]) if mask is None else np.flatnonzero(mask)
    gt = datasets.brute_force_knn(base[rows], queries, k, "cosine")
    return rows[gt]


def run(n_base: int | None = None, n_queries: int = 1000, libs: tuple[str, ...] = tuple(ENGINES), k: int = 10,
        batch: int = 1000, target: float = 0.95, threads: int | None = None, progress: bool = True
        ) -> dict[str, Any]:
    from .._progress import progress_bar
    data = datasets.load("wordnet-minilm-384")
    ids_all, metas_all, docs_all = datasets.wordnet_records()
    total = data.base.shape[0]
    n = total if n_base is None else min(n_base, total)
    # WordNet is ordered by part of speech: a smaller run takes an even sample so that the filter still matches
    rows = np.arange(total) if n == total else np.sort(np.random.default_rng(0).choice(total, n, replace=False))
    base = np.ascontiguousarray(data.base[rows])
    queries = np.ascontiguousarray(data.queries[:n_queries])
    ids = [ids_all[r] for r in rows]
    metas = [{"pos": metas_all[r]["pos"], "n_words": metas_all[r]["n_words"]} for r in rows]
    docs = [docs_all[r] for r in rows]
    mask = np.array([m["pos"] == FILTER_POS for m in metas])
    truth = {False: _truth(base, queries, None, k), True: _truth(base, queries, mask, k)}
    report: dict[str, Any] = {"dataset": "wordnet-minilm-384", "n_base": n, "n_queries": n_queries, "k": k,
                              "batch": batch, "target_recall": target, "filter": {"pos": FILTER_POS},
                              "filter_selectivity": float(mask.mean()), "threads": threads, "engines": {}}
    for name in libs:
        scratch = Path(tempfile.mkdtemp(prefix=f"simdex-dbbench-{name}-"))
        try:
            gc.collect()
            engine = ENGINES[name](scratch / "db", base.shape[1], threads)
            bar = progress_bar(n, f"{name} upsert", progress, unit="rec")
            t0 = time.perf_counter()
            for s in range(0, n, batch):
                engine.upsert(ids[s:s + batch], base[s:s + batch], metas[s:s + batch], docs[s:s + batch])
                bar.update(min(batch, n - s))
            upsert_s = time.perf_counter() - t0
            bar.close()
            engine.finish_indexing()
            indexed_s = time.perf_counter() - t0
            result: dict[str, Any] = {"upsert_seconds": upsert_s, "upsert_per_second": n / upsert_s,
                                      "time_to_indexed_seconds": indexed_s, "sweeps": {}}
            if hasattr(engine, "index_ram_bytes"):
                result["index_ram_bytes"] = engine.index_ram_bytes()
            id_pos = {i: j for j, i in enumerate(ids)}
            for filtered in (False, True):
                points = []
                for param in engine.params:
                    for q in queries[:20]:  # warm up caches and JIT
                        engine.search(q, k, param, filtered)
                    lat = np.empty(len(queries))
                    hits = 0
                    for qi, q in enumerate(queries):
                        t = time.perf_counter()
                        found = engine.search(q, k, param, filtered)
                        lat[qi] = time.perf_counter() - t
                        hits += len({id_pos[f] for f in found} & set(truth[filtered][qi].tolist()))
                    recall = hits / (k * len(queries))
                    points.append({engine.param_name: param, "recall": recall, "qps": len(queries) / lat.sum(),
                                   "p50_ms": float(np.percentile(lat, 50) * 1e3),
                                   "p99_ms": float(np.percentile(lat, 99) * 1e3)})
                    if progress:
                        print(f"  {name} {'filtered' if filtered else 'plain':8s} {engine.param_name}={param:<4d} "
                              f"recall={recall:.4f} p50={points[-1]['p50_ms']:.2f} ms "
                              f"p99={points[-1]['p99_ms']:.2f} ms", flush=True)
                    if sum(p["recall"] >= target for p in points) >= 3 or recall >= 0.999:
                        break  # past the target: higher effort only costs time
                at = next((p for p in points if p["recall"] >= target), None)
                result["sweeps"]["filtered" if filtered else "plain"] = {"points": points, "at_target": at}
            engine.close()
            report["engines"][name] = result
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    report["ratios"] = _ratios(report)
    report["database_cost"] = _database_cost(report)
    return report


def _database_cost(report: dict[str, Any]) -> dict[str, Any]:
    """Each collection kind against its index used directly (``lib-<kind>``), at the same search effort: the
    ratio of single-query QPS (collection / library) and the recall difference, plain and filtered."""
    engines = report["engines"]
    out: dict[str, Any] = {}
    for name, r in engines.items():
        if not name.startswith("lib-"):
            continue
        kind = name[4:]
        mine = engines.get("simdex" if kind == "hnsw" else f"simdex-{kind}")
        if mine is None:
            continue
        rows = {}
        for sweep in ("plain", "filtered"):
            lib_points = {p[_effort_key(p)]: p for p in r["sweeps"][sweep]["points"]}
            pairs = [(p, lib_points[p[_effort_key(p)]]) for p in mine["sweeps"][sweep]["points"]
                     if p[_effort_key(p)] in lib_points]
            rows[sweep] = [{"effort": a[_effort_key(a)], "qps_ratio": a["qps"] / b["qps"],
                            "recall": a["recall"], "library_recall": b["recall"]} for a, b in pairs]
        out[kind] = rows
    return out


def _effort_key(point: dict[str, Any]) -> str:
    """The effort key of a sweep point (ef, L or nprobe)."""
    return next(key for key in ("ef", "L", "nprobe") if key in point)


def _ratios(report: dict[str, Any]) -> dict[str, Any]:
    """simdex (and simdex over HTTP) against each peer."""
    engines = report["engines"]
    out: dict[str, Any] = {}
    for mine in ("simdex", "simdex-http"):
        if mine not in engines:
            continue
        me = engines[mine]
        for peer, r in engines.items():
            if peer.startswith("simdex") or peer.startswith("lib-"):
                continue
            row = {"upsert_throughput": me["upsert_per_second"] / r["upsert_per_second"],
                   "time_to_indexed": me["time_to_indexed_seconds"] / r["time_to_indexed_seconds"]}
            for kind in ("plain", "filtered"):
                a, b = me["sweeps"][kind]["at_target"], r["sweeps"][kind]["at_target"]
                row[f"p99_{kind}"] = a["p99_ms"] / b["p99_ms"] if a and b else None
                row[f"p50_{kind}"] = a["p50_ms"] / b["p50_ms"] if a and b else None
            out[f"{mine} vs {peer}"] = row
    return out


def format_report(report: dict[str, Any]) -> str:
    lines = [f"wordnet-minilm-384: {report['n_base']:,} records, {report['n_queries']} single queries, "
             f"k={report['k']}, upsert batches of {report['batch']}, filter pos={FILTER_POS} "
             f"({report['filter_selectivity']:.1%} of records)", "",
             f"{'engine':18s} {'upsert rec/s':>13s} {'indexed (s)':>12s} {'index RAM MiB':>14s} "
             f"{'plain p50/p99 ms @ recall':>30s} {'filtered p50/p99 ms @ recall':>30s}"]
    for name, r in report["engines"].items():
        cells = []
        for kind in ("plain", "filtered"):
            at = r["sweeps"][kind]["at_target"]
            cells.append(f"{at['p50_ms']:.2f}/{at['p99_ms']:.2f} @ {at['recall']:.3f}" if at else "target not reached")
        ram = f"{r['index_ram_bytes'] / 2**20:.1f}" if "index_ram_bytes" in r else "-"
        lines.append(f"{name:18s} {r['upsert_per_second']:13,.0f} {r['time_to_indexed_seconds']:12.1f} {ram:>14s} "
                     f"{cells[0]:>30s} {cells[1]:>30s}")
    if report.get("ratios"):
        lines.append("")
        lines.append("simdex / peer: upsert throughput (higher is better), p99 and p50 latency at recall "
                     f">= {report['target_recall']} (lower is better)")
        for peer, row in report["ratios"].items():
            fmt = {k: ("n/a" if v is None else f"{v:.2f}x") for k, v in row.items()}
            lines.append(f"  {peer:22s} upsert {fmt['upsert_throughput']}, indexed time {fmt['time_to_indexed']}, "
                         f"p99 plain {fmt['p99_plain']}, p99 filtered {fmt['p99_filtered']}, "
                         f"p50 plain {fmt['p50_plain']}, p50 filtered {fmt['p50_filtered']}")
    if report.get("database_cost"):
        lines.append("")
        lines.append("collection / the same index used from the library, single queries at the same effort: QPS "
                     "ratio (target >= 0.9x), recall collection vs library")
        for kind, rows in report["database_cost"].items():
            for sweep, points in rows.items():
                cells = ", ".join(f"{p['effort']}: {p['qps_ratio']:.2f}x {p['recall']:.3f}/{p['library_recall']:.3f}"
                                  for p in points)
                lines.append(f"  {kind:12s} {sweep:8s} {cells}")
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "db-wordnet.json"
    json_path.write_text(json.dumps(report, indent=1))
    png_path = out / "db-wordnet.png"
    plt = pyplot()
    if plt is None:
        return json_path, png_path
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, ("plain", "filtered")):
        for name, r in report["engines"].items():
            pts = r["sweeps"][kind]["points"]
            ax.plot([p["recall"] for p in pts], [p["p99_ms"] for p in pts], marker="o", label=name)
        ax.axvline(report["target_recall"], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("p99 latency (ms), single queries")
        ax.set_yscale("log")
        ax.set_title(f"{kind} search" + (f" (pos = {FILTER_POS})" if kind == "filtered" else ""))
        ax.legend()
    fig.suptitle(f"simdex vs Chroma vs LanceDB (in process and over HTTP): {report['n_base']:,} WordNet records")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path
