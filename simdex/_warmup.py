"""Compile simdex's kernels ahead of their first use, so that no user waits on the compiler.

simdex's hot loops are numba kernels, compiled on first call and then cached on disk (:mod:`simdex._cache`). A
fresh install, a new container or an upgrade that changed a kernel starts with an empty cache, and the first
calls pay the compilation. :func:`warmup` pays it up front: it runs each group below on small synthetic data,
through the public API (so exactly the signatures real calls use are compiled), in a few processes at once, and
records which groups are done so that later calls return at once.

``simdex warmup`` runs it from the command line; ``simdex serve`` (so ``make run``) runs it while the database
loads and before it listens; :func:`warm_in_background` starts it in a separate process for a long-lived program
(``simdex.connect(path, warm=True)``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ._cache import cache_dir, kernel_sources_hash
from ._progress import progress_bar
from .errors import InvalidInputError


def _data(n: int, dim: int, seed: int = 0) -> np.ndarray:
    # clustered rather than uniform, so that graphs and quantizers train as on real data
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((16, dim)).astype(np.float32)
    return (centers[rng.integers(0, 16, n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


def _warm_hnsw(tmp: Path) -> None:
    from . import FlatIndex, HNSWIndex, load
    x = _data(3000, 24)
    for metric in ("l2", "cosine"):
        index = HNSWIndex(24, metric, M=8, ef_construction=32)
        index.add(x)
        index.search(x[:8], 5)
        index.search(x[:8], 5, filter=np.arange(0, 3000, 2))  # graph walk with a filter
        index.search(x[:8], 5, filter=np.arange(20))  # few allowed: exact over them
        index.remove(np.arange(0, 3000, 3))
        index.search(x[:8], 5)  # tombstones
        index.save(tmp / "h.sdx")
        load(tmp / "h.sdx").search(x[:2], 5)
        flat = FlatIndex(24, metric)
        flat.add(x)
        flat.search(x[:8], 5)
        flat.search(x[:8], 5, filter=np.arange(100))
    index = HNSWIndex(24, "l2", M=8, ef_construction=32, consolidate_threshold=0.1)
    index.add(x)
    index.remove(np.arange(0, 3000, 2))
    index.add(x[:500], ids=np.arange(10_000, 10_500))


def _records(n: int, dim: int) -> tuple[list[str], np.ndarray, list[dict], list[str]]:
    words = ["river", "stone", "cat", "music", "light", "garden", "engine", "paper", "storm", "bread"]
    rng = np.random.default_rng(1)
    docs = [" ".join(words[j] for j in rng.integers(0, len(words), 8)) for _ in range(n)]
    meta = [{"n": i % 7, "lang": "en" if i % 3 else "de", "ts": float(i)} for i in range(n)]
    return [f"r{i}" for i in range(n)], _data(n, dim, 2), meta, docs


def _warm_database(tmp: Path) -> None:
    from .store import connect
    ids, x, meta, docs = _records(1500, 24)
    db = connect(tmp / "db")
    try:
        col = db.create_collection("c", 24, "cosine", text=True)
        col.upsert(ids, x, metadatas=meta, documents=docs)
        col.search(x[0], 5)
        col.search_batch(x[:4], 5)
        col.search(x[0], 5, where={"n": 3})
        col.search(x[0], 5, where={"lang": "en"})
        col.search(text="river stone", k=5, mode="bm25")
        col.search(x[0], 5, text="river stone", mode="hybrid")
        col.delete(ids[:100])
        col.search(x[0], 5)
        col.get(ids[100:110])
        db.optimize()
    finally:
        db.close()


def _warm_embed(tmp: Path) -> None:
    try:
        from .embed import get_embedder
        embedder = get_embedder("minilm")
    except ImportError:
        return  # the embed extra is not installed: nothing of it will run
    embedder(["a short text to compile the encoder", "and a second, longer one, to batch two lengths"])


def _warm_quant(tmp: Path) -> None:
    from .quant import HNSWQuantIndex, IVFIndex
    x = _data(4000, 32)
    for codec in ("lvq8", "int8"):
        index = HNSWQuantIndex(32, "cosine", codec=codec, M=8, ef_construction=32)
        index.add(x)
        index.search(x[:8], 5)
    ivf = IVFIndex(32, "l2", nlist=16, codec="pq8")
    ivf.train(x)
    ivf.add(x)
    ivf.search(x[:8], 5, nprobe=4)


def _warm_sets(tmp: Path) -> None:
    from .sets import deduplicate
    _, _, _, docs = _records(400, 4)
    docs = docs + docs[:50]  # exact copies, so that candidate pairs are verified
    ids = [str(i) for i in range(len(docs))]
    deduplicate([(ids, docs)], progress=False)


def _warm_sparse(tmp: Path) -> None:
    from .sparse import SparseIndex
    _, _, _, docs = _records(600, 4)
    index = SparseIndex()
    index.add(docs)
    index.search(["river stone cat", "music"], 5)


GROUPS: dict[str, Callable[[Path], None]] = {
    "hnsw": _warm_hnsw,
    "database": _warm_database,
    "embed": _warm_embed,
    "quant": _warm_quant,
    "sets": _warm_sets,
    "sparse": _warm_sparse,
}
"""What :func:`warmup` compiles: each group's kernels (by the calls that use them), longest first."""


def _marker(group: str) -> Path:
    return cache_dir() / "warmed" / f"{group}-{kernel_sources_hash().hex()[:16]}"


def is_warm(group: str) -> bool:
    """Whether ``group`` was warmed for the current kernel sources in the current cache folder."""
    return _marker(group).exists()


def _run_group(group: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="simdex-warmup-") as tmp:
        GROUPS[group](Path(tmp))
    marker = _marker(group)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"group": group, "seconds": round(time.perf_counter() - t0, 2)}))
    return group, time.perf_counter() - t0


def warmup(groups: Iterable[str] | None = None, *, processes: int | None = None, force: bool = False,
           progress: bool | None = True) -> dict[str, float]:
    """Compile the kernels of ``groups`` (default: all of :data:`GROUPS`) into the kernel cache, in up to
    ``processes`` processes at once (default: the CPU count, at most 4). Groups already warm for the current
    sources are skipped unless ``force``. Returns the seconds each group took (0.0 when skipped)."""
    names = list(GROUPS) if groups is None else list(groups)
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        raise InvalidInputError(f"unknown warm-up groups {unknown}; known: {sorted(GROUPS)}")
    todo = [g for g in names if force or not is_warm(g)]
    took = {g: 0.0 for g in names if g not in todo}
    if not todo:
        return took
    processes = processes or min(os.cpu_count() or 1, 4)
    bar = progress_bar(len(todo), "compiling simdex kernels", progress, unit="group")
    if processes == 1:
        for group in todo:
            took[group] = _run_group(group)[1]
            bar.update(1)
    else:
        # fresh interpreters (spawn): a forked child would inherit numba's and BLAS's threads in an unknown state
        with ProcessPoolExecutor(min(processes, len(todo)), mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_run_group, g) for g in todo]):
                group, seconds = future.result()
                took[group] = seconds
                bar.update(1)
    bar.close()
    return took


_STARTED: set[str] = set()
_STARTED_LOCK = threading.Lock()


def warm_in_background(groups: Iterable[str] = ("hnsw", "database")) -> subprocess.Popen | None:
    """Compile ``groups`` into the kernel cache in a separate process (``python -m simdex warmup``), once per
    process and only for groups not yet warm; returns the child, or None when there is nothing to do.

    A process, not a thread: numba holds the GIL while it compiles, and a compiling thread beside the caller made
    a fresh install's first text upsert and search take 16 s instead of 9 s (python -m simdex.bench startup). The
    child runs on its own core; a kernel it has cached by the time this process first calls it loads in
    milliseconds, one it has not yet reached is compiled here as usual. It finishes its work if this process
    exits first (the cache is written atomically)."""
    with _STARTED_LOCK:  # once per process, however many databases it opens
        todo = [g for g in groups if g not in _STARTED and not is_warm(g)]
        _STARTED.update(todo)
    if not todo:
        return None
    return subprocess.Popen([sys.executable, "-m", "simdex", "warmup", "--groups", ",".join(todo), "--no-progress",
                             "--processes", "1"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def describe(took: dict[str, Any]) -> str:
    parts = [f"{g} {s:.1f} s" if s else f"{g} (cached)" for g, s in took.items()]
    return "kernels ready: " + ", ".join(parts)
