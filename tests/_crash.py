"""Crashes for real: a writer process does its work, says so, and is killed with SIGKILL before it closes anything
(no final checkpoint, no clean log close), which is what a crash leaves on disk."""

from __future__ import annotations

import signal
import subprocess
import sys

DONE = "done"


def run_then_kill(script: str, *args: str, timeout: float = 300) -> list[str]:
    """Run ``script`` (Python source; ``sys.argv[1:]`` = ``args``) in a new process. The script prints lines,
    then ``done`` once everything it did is acknowledged, then waits (``sys.stdin.read()``); it is killed there
    with SIGKILL. Returns the lines it printed before ``done``."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            if line.strip() == DONE:
                break
            lines.append(line.rstrip("\n"))
        else:
            raise AssertionError(f"the writer ended without saying {DONE!r}: {proc.stderr.read()[-3000:]}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=timeout)
    return lines
