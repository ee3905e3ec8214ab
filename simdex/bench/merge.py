"""What one merge costs a collection over codes: the time of a merge and the checkpoint after it, and the bytes
they write, for a merge of ``step`` new rows into a collection of ``n0`` rows (WordNet MiniLM vectors, 384-d).

A merge folds the rows waiting in the growing segment into a copy of the main index and swaps it in; the
checkpoint after it writes the new index. With the float32 vectors in one shared append-only vector file, neither
copies the vectors already held: the bytes written follow the new rows (and the codes), not the collection.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .. import datasets
from .ann import _machine
from ._common import save_json, written_bytes


def run(*, index: str = "hnsw-lvq8", n0: int = 90_000, step: int = 5_000, merges: int = 3, log=print) -> dict:
    import simdex
    data = datasets.load("wordnet-minilm-384")
    base = np.asarray(data.base[:n0 + merges * step], np.float32)
    ids = [str(i) for i in range(base.shape[0])]
    with tempfile.TemporaryDirectory(prefix="simdex-merge-") as root:
        db = simdex.Database(root, background=False, merge_rows=10**9, sync="off")
        col = db.create_collection("c", base.shape[1], index=index)
        for s in range(0, n0, 10_000):
            col.upsert(ids[s:min(n0, s + 10_000)], base[s:min(n0, s + 10_000)])
        col.merge()
        col.checkpoint()
        points = []
        for m in range(merges):
            s = n0 + m * step
            col.upsert(ids[s:s + step], base[s:s + step])
            written, t0 = written_bytes(), time.perf_counter()
            col.merge()
            col.checkpoint()
            points.append({"rows_before": s, "seconds": time.perf_counter() - t0,
                           "written_bytes": written_bytes() - written})
            log(f"  merge of {step} rows into {s}: {points[-1]['seconds']:.2f} s, "
                f"{points[-1]['written_bytes'] / 2**20:.0f} MiB written")
        db.close()
    return {"index": index, "n0": n0, "step": step, "dim": int(base.shape[1]), "points": points,
            "simdex": simdex.__file__, "machine": _machine()}


def format_report(r: dict) -> str:
    lines = [f"== one merge of {r['step']} rows into a {r['index']} collection of {r['n0']}+ rows, then a checkpoint "
             f"({r['simdex']}) ==", f"{'rows before':>11s} {'seconds':>8s} {'MiB written':>12s}"]
    for p in r["points"]:
        lines.append(f"{p['rows_before']:11d} {p['seconds']:8.2f} {p['written_bytes'] / 2**20:12.0f}")
    return "\n".join(lines)


def save(report: dict, out_dir: Path) -> Path:
    return save_json(report, out_dir, f"merge-{report['index']}.json")
