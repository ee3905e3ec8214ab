"""Import time and first-call JIT compile time, cold (empty numba cache) and warm (cache filled).

Each measurement runs in a fresh Python process, since both costs are paid once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

_PROBE = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
import simdex
t1 = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((2000, 32)).astype(np.float32)
index = simdex.HNSWIndex(32, "l2")
index.add(x)
t2 = time.perf_counter()
index.search(x[:10], 10)
t3 = time.perf_counter()
flat = simdex.FlatIndex(32, "l2")
flat.add(x)
flat.search(x[:10], 10)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_add_s": t2 - t1, "first_search_s": t3 - t2,
                  "first_flat_s": t4 - t3}))
"""


def measure() -> dict:
    """Returns {"cold": {...}, "warm": {...}} with seconds for import, first add, first search."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "warm"):
            proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                                  check=True)
            out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def format_startup(result: dict) -> str:
    lines = ["== startup (fresh process; cold = empty numba cache, warm = cache from the previous run) =="]
    for label, r in result.items():
        lines.append(f"{label:5s} import {r['import_s']:.2f} s, first HNSW add {r['first_add_s']:.2f} s, "
                     f"first HNSW search {r['first_search_s']:.2f} s, first flat add+search {r['first_flat_s']:.2f} s")
    return "\n".join(lines)
