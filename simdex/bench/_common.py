"""Pieces every benchmark uses: recall of returned ids against exact ones, and a headless matplotlib."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def recall(found: np.ndarray, truth: Sequence[np.ndarray] | np.ndarray) -> float:
    """Mean over queries of |found row ∩ truth row| / |truth row|: ``found`` (nq, k) ids, -1 for no hit;
    ``truth`` the exact ids of each query (rows may differ in length; a query with none is left out, and none at
    all gives 1.0). For recall@k with ties to the k-th distance counted as hits, see
    :func:`simdex.datasets.recall_at_k`."""
    scores = [len(set(np.asarray(f)[np.asarray(f) >= 0].tolist()) & set(np.asarray(t).tolist())) / len(t)
              for f, t in zip(found, truth) if len(t)]
    return float(np.mean(scores)) if scores else 1.0


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files (no display), or None where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_json(report: dict[str, Any], out: Path, name: str) -> Path:
    """Write ``report`` as ``out/name`` (indented JSON); returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(report, indent=1))
    return path


def largest_mappings(count: int = 5, pid: int | str = "self") -> list[tuple[str, int]]:
    """The ``count`` mappings of ``/proc/<pid>/smaps`` holding the most resident bytes, as (file or
    "[anon]", bytes), the mappings of one file summed: where a resident set goes."""
    rss: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else "[anon]"
        elif line.startswith("Rss:"):
            rss[name] = rss.get(name, 0) + int(line.split()[1]) * 1024
    return sorted(rss.items(), key=lambda item: -item[1])[:count]


def written_bytes() -> int:
    """Bytes this process has caused to be written to storage (``write_bytes`` of ``/proc/self/io``; counted when
    pages are dirtied, so 0 on file systems in memory), or 0 where there is no such file."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
