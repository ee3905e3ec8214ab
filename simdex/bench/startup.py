"""Cold start: the time a new process spends before its first answers, and how much of it is numba compiling.

Every scenario runs in fresh Python processes, since both import and compilation are paid once per process:

- ``cold``: an empty kernel cache (a fresh install, a new container, a CI job);
- ``warm``: the cache the cold run wrote (every later run on that machine);
- ``warmup``: an empty cache, then ``simdex warmup``, then the scenario (a deployment that warms up front).

Each probe reports the seconds of its steps and, from numba's compile events, the seconds spent compiling
(kernels that load from the cache raise no compile event). With ``profile`` the cold runs also list the kernels
that took longest to compile, by their own time (excluding kernels they compiled on the way) and in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from numba.core import event


class CompileLog(event.Listener):
    """Listens to numba's compile events: per kernel, seconds compiling it with and without the kernels its
    compilation compiled on the way (those have rows of their own), and how many signatures were compiled."""

    def __init__(self) -> None:
        self._stack: list[list[Any]] = []
        self.kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        self.total_s = 0.0  # outermost compiles only, so nested ones count once

    def on_start(self, ev: event.Event) -> None:
        self._stack.append([ev.data["dispatcher"], time.perf_counter(), 0.0])

    def on_end(self, ev: event.Event) -> None:
        dispatcher, t0, nested = self._stack.pop()
        took = time.perf_counter() - t0
        fn = dispatcher.py_func
        row = self.kernels[f"{fn.__module__}.{fn.__qualname__}"]
        row[0] += took - nested
        row[1] += took
        row[2] += 1
        if self._stack:
            self._stack[-1][2] += took
        else:
            self.total_s += took

    def __enter__(self) -> CompileLog:
        event.register("numba:compile", self)
        return self

    def __exit__(self, *exc: Any) -> None:
        event.unregister("numba:compile", self)

    def top(self, n: int) -> list[dict]:
        rows = sorted(self.kernels.items(), key=lambda kv: -kv[1][0])[:n]
        return [{"kernel": name, "self_s": round(s, 3), "total_s": round(t, 3), "signatures": c}
                for name, (s, t, c) in rows]


# Each probe is the body of a function ``probe(step, work)`` run in a fresh process: ``step(name)`` closes the
# previous step and opens the next one. ``work`` is a scratch folder; ``setup`` probes prepare it in another
# process (with a cache of their own) so that the measured process starts from nothing.
_PROBES: dict[str, dict[str, str]] = {
    "hnsw": {"body": """
import numpy as np
import simdex
x = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
index = simdex.HNSWIndex(32, "l2")
step("first HNSW add")
index.add(x)
step("first HNSW search")
index.search(x[:10], 10)
step("first flat add + search")
flat = simdex.FlatIndex(32, "l2")
flat.add(x)
flat.search(x[:10], 10)
"""},
    "database": {"body": """
import numpy as np
import simdex
x = np.random.default_rng(0).standard_normal((500, 32)).astype(np.float32)
db = simdex.connect(work + "/db")
col = db.create_collection("c", 32, "cosine")
step("first upsert")
col.upsert([f"r{i}" for i in range(500)], x, metadatas=[{"n": i % 7} for i in range(500)])
step("first search")
col.search(x[0], 10)
step("first filtered search")
col.search(x[0], 10, where={"n": 3})
db.close()
"""},
    "text": {"body": """
import simdex
texts = [f"a short document number {i} about topic {i % 13}" for i in range(200)]
db = simdex.connect(work + "/db")
col = db.create_collection("t", embedder="minilm", text=True)
step("first text upsert (embed + index)")
col.upsert([f"d{i}" for i in range(200)], documents=texts)
step("first text search")
col.search(text="a document about topic 3", k=5)
db.close()
"""},
    "dedup": {"body": """
from simdex.cli import main
step("simdex dedup gcide")
main(["dedup", data + "/text/gcide.jsonl.gz", "--out", work + "/dedup", "--no-progress"])
"""},
    "cli-search": {"setup": """
import numpy as np
import simdex
db = simdex.connect(work + "/db")
col = db.create_collection("c", 32, "cosine")
x = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
col.upsert([f"r{i}" for i in range(2000)], x)
db.close()
""", "body": """
from simdex.cli import main
step("simdex search")
main(["search", "--path", work + "/db", "c", "--id", "r7", "-k", "5"])
"""},
}

_RUNNER = r"""
import json, os, sys, time
t_start = time.perf_counter()
from simdex.bench.startup import CompileLog
log = CompileLog().__enter__()
steps = {}
current = ["import simdex", time.perf_counter()]
import simdex
def step(name):
    now = time.perf_counter()
    steps[current[0]] = now - current[1]
    current[0], current[1] = name, now
work, data, top = sys.argv[1], sys.argv[2], int(sys.argv[3])
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    exec(compile(sys.stdin.read(), "probe", "exec"))
step(None)
print(json.dumps({"steps": steps, "compile_s": log.total_s, "wall_s": time.perf_counter() - t_start,
                  "top": log.top(top)}))
"""


def _run(code: str, cache: str, work: str, top: int = 0) -> dict:
    env = {**os.environ, "SIMDEX_CACHE_DIR": cache, "NUMBA_CACHE_DIR": cache}
    data = os.environ.get("SIMDEX_DATA", str(Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    proc = subprocess.run([sys.executable, "-c", _RUNNER, work, data, str(top)], input=code, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"startup probe failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _warmup(cache: str) -> float:
    env = {**os.environ, "SIMDEX_CACHE_DIR": cache, "NUMBA_CACHE_DIR": cache}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "simdex", "warmup", "--no-progress"], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"simdex warmup failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def measure(scenarios: tuple[str, ...] = tuple(_PROBES), modes: tuple[str, ...] = ("cold", "warm", "warmup"),
            profile: int = 0) -> dict:
    """Run each scenario in each mode (fresh processes). Returns {"scenarios": {name: {mode: probe result}},
    "warmup_s": seconds of ``simdex warmup`` on an empty cache (when that mode ran)}."""
    unknown = set(scenarios) - set(_PROBES)
    if unknown:
        raise ValueError(f"unknown startup scenarios {sorted(unknown)}; known: {sorted(_PROBES)}")
    out: dict[str, Any] = {"scenarios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if "warmup" in modes:
            warm_cache = os.path.join(tmp, "warmed")
            out["warmup_s"] = _warmup(warm_cache)
        for name in scenarios:
            probe = _PROBES[name]
            cache = os.path.join(tmp, f"cache-{name}")
            results = out["scenarios"][name] = {}
            for mode in modes:
                work = tempfile.mkdtemp(dir=tmp)
                if "setup" in probe:
                    _run("def step(_): pass\n" + probe["setup"], os.path.join(tmp, "setup-cache"), work)
                mode_cache = warm_cache if mode == "warmup" else cache
                results[mode] = _run(probe["body"], mode_cache, work, profile if mode == "cold" else 0)
    return out


def format_startup(result: dict) -> str:
    lines = ["== startup: seconds per first call in a fresh process (compile = numba compiling, of the total) =="]
    if "warmup_s" in result:
        lines.append(f"simdex warmup on an empty cache: {result['warmup_s']:.1f} s")
    for name, modes in result["scenarios"].items():
        lines.append(f"-- {name}")
        step_names = list(next(iter(modes.values()))["steps"])
        lines.append(f"{'':38s}" + "".join(f"{mode:>10s}" for mode in modes))
        for step in step_names:
            lines.append(f"  {step:36s}" + "".join(f"{m['steps'][step]:10.2f}" for m in modes.values()))
        lines.append(f"  {'compiling / whole run':36s}" + "".join(
            f"{m['compile_s']:5.1f}/{m['wall_s']:<4.1f}" for m in modes.values()))
        for mode, m in modes.items():
            for row in m.get("top", []):
                lines.append(f"    {mode} {row['self_s']:6.2f} s own, {row['total_s']:6.2f} s in all, "
                             f"{row['signatures']} sig  {row['kernel']}")
    return "\n".join(lines)
