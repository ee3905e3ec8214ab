"""Benchmarks that run simdex and its peers side by side: ``python -m simdex.bench --help``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_report(report: dict[str, Any], out_dir: Path, stem: str,
                 plot: Callable[[dict[str, Any], Path], None] | None = None) -> tuple[Path, Path | None]:
    """Write ``report`` to ``out_dir/<stem>.json`` and its figure, if any, drawn by ``plot(report, path)``, to
    ``out_dir/<stem>.png``; returns both paths (None for no figure)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=1))
    if plot is None:
        return json_path, None
    png_path = out_dir / f"{stem}.png"
    plot(report, png_path)
    return json_path, png_path
