"""Progress bars for long work: tqdm when it is installed, silence otherwise (it is not a core dependency)."""

from __future__ import annotations

import sys
from typing import Any

AUTO_THRESHOLD = 100_000


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, enabled: bool | None = None, unit: str = "vec") -> Any:
    """A tqdm bar, or a no-op object. ``enabled=None`` shows it for large jobs (or of unknown size: ``total``
    None) when stderr is a terminal."""
    if enabled is None:
        enabled = (total is None or total >= AUTO_THRESHOLD) and sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False)
