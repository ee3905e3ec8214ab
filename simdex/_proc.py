"""A process's memory figures, as Linux reports them in ``/proc``."""

from __future__ import annotations

from pathlib import Path


def proc_status(field: str, pid: int | str = "self") -> int:
    """A memory figure of ``/proc/<pid>/status`` in bytes (``VmRSS``, ``VmHWM``, ``RssAnon``, ...; 0 if absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0
