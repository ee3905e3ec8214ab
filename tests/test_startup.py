"""Cold start: the kernel cache (simdex._cache) and the warm-up (simdex._warmup), each checked in fresh processes
with a cache folder of their own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import simdex

PACKAGE = Path(simdex.__file__).resolve().parent

# rescore (simdex/core/scorer.py) calls metrics.distance (simdex/metrics.py): a kernel and a kernel it depends on,
# in two files. Prints the re-scored distances and how many kernels this process compiled.
_RESCORE = """
import json
import numpy as np
from simdex.bench.startup import CompileLog
from simdex.core.scorer import rescore
with CompileLog() as log:
    q = np.ones(4, np.float32)
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    cand_d = np.zeros(3, np.float32)
    cand_i = np.array([2, 0, 1], np.int32)
    rescore(0, q, vectors, cand_d, cand_i, 3)
print(json.dumps({"d": cand_d.tolist(), "compiled": len(log.kernels)}))
"""


def _run(code: str, root: Path, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "SIMDEX_CACHE_DIR": str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _copy_package(dest: Path) -> Path:
    shutil.copytree(PACKAGE, dest / "simdex", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_cache_is_reused_across_installs_and_never_stale(tmp_path):
    cache = tmp_path / "cache"
    first = _copy_package(tmp_path / "install1")
    cold = _run(_RESCORE, first, cache)
    assert cold["compiled"] >= 2 and cold["d"] == [6.0, 86.0, 294.0]  # squared L2 to rows 0, 1, 2, sorted
    assert _run(_RESCORE, first, cache)["compiled"] == 0  # served from the cache
    # the same sources installed elsewhere (a reinstall, an upgrade that changed no kernel): still cached
    second = _copy_package(tmp_path / "install2")
    assert _run(_RESCORE, second, cache)["compiled"] == 0
    # a kernel the cached one calls changes, in another file: the cached rescore must not be served
    metrics = second / "simdex" / "metrics.py"
    source = metrics.read_text()
    assert "    return s\n" in source
    metrics.write_text(source.replace("    return s\n", "    return s + np.float32(1.0)\n", 1))
    changed = _run(_RESCORE, second, cache)
    assert changed["compiled"] >= 2
    assert changed["d"] == [7.0, 87.0, 295.0]
    assert (cache / "core").is_dir()  # the cache lives in the folder asked for, not beside the sources
    assert not list((second / "simdex").rglob("*.nbi"))


def test_warmup_compiles_once_and_skips_what_is_warm(tmp_path):
    cache = tmp_path / "cache"
    code = """
import json
from simdex._warmup import warmup, is_warm
took = warmup(["sparse"], processes=1, progress=False)
print(json.dumps({"took": took, "warm": is_warm("sparse")}))
"""
    first = _run(code, PACKAGE.parent, cache)
    assert first["warm"] and first["took"]["sparse"] > 0
    assert _run(code, PACKAGE.parent, cache)["took"]["sparse"] == 0.0  # recorded as warm: skipped
    # a new process making the group's calls compiles nothing
    after = _run("""
import json
from simdex.bench.startup import CompileLog
from simdex._warmup import GROUPS
from pathlib import Path
import tempfile
with CompileLog() as log, tempfile.TemporaryDirectory() as tmp:
    GROUPS["sparse"](Path(tmp))
print(json.dumps({"compiled": sorted(log.kernels)}))
""", PACKAGE.parent, cache)
    assert after["compiled"] == []


def test_warmup_rejects_unknown_groups():
    import pytest
    with pytest.raises(simdex.InvalidInputError, match="unknown warm-up groups"):
        simdex.warmup(["hnsw", "nope"])


def test_database_warms_kernels_in_a_background_process(tmp_path):
    code = """
import json
import simdex
from simdex._warmup import is_warm
db = simdex.connect(%r, warm=True)
started = db._warmer is not None
code = db._warmer.wait(timeout=600)
db.close()
warm = {g: is_warm(g) for g in ("hnsw", "database")}
db = simdex.connect(%r, warm=True)  # warm now: nothing to start
again = db._warmer is not None
db.close()
print(json.dumps({"started": started, "code": code, "warm": warm, "again": again}))
""" % (str(tmp_path / "db"), str(tmp_path / "db"))
    got = _run(code, PACKAGE.parent, tmp_path / "cache")
    assert got == {"started": True, "code": 0, "warm": {"hnsw": True, "database": True}, "again": False}


def test_run_threads_covers_every_row_once_and_raises():
    import threading
    import time

    from simdex._numba import run_threads
    for chunk in (0, 3):
        seen, lock, slots = [], threading.Lock(), set()

        def kernel(tag, t, lo, hi):
            time.sleep(0.002)  # as a GIL-free kernel would, so that every thread gets work
            with lock:
                seen.extend(range(lo, hi))
                slots.add(t)
            assert tag == "x"

        run_threads(kernel, 100, 4, "x", chunk=chunk)
        assert sorted(seen) == list(range(100)) and slots <= {0, 1, 2, 3} and len(slots) > 1
    import pytest

    def failing(t, lo, hi):
        if t == 2:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_threads(failing, 10, 3)
