"""Write-ahead log: append-only files of checksummed records, fsynced before a write is acknowledged.

File layout: ``<dir>/<first lsn, 20 digits>.log``; a new file starts when the current one passes
``segment_bytes``. Each record is::

    uint32 magic 0x57584453 ("SDXW") | uint64 lsn | uint32 payload length | uint32 CRC-32 | payload

The CRC covers the lsn, the length and the payload, so a torn or flipped record is always detected. Record
numbers (lsn) start at 1 and increase by exactly one, so a missing record is detected too.

Opening the log scans it. Damage in the last record(s) of the last file, with nothing valid after it, is a
write torn by a crash: it was never acknowledged, and the file is cut back to the last good record. Damage
followed by valid records means acknowledged data was lost or corrupted: :class:`CorruptLogError`, unless the
caller asks to ``repair`` (cut the log at the damage, keeping everything before it) or opens ``read_only`` (use
everything before the damage, change nothing).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import CorruptFileError

_HEADER = struct.Struct("<IQII")
_MAGIC = 0x57584453
MAX_RECORD_BYTES = 1 << 31
SYNC_MODES = ("always", "batch", "off")


class CorruptLogError(CorruptFileError):
    """Acknowledged records of the write-ahead log are damaged."""


def _crc(lsn: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<QI", lsn, len(payload))))


class WriteAheadLog:
    """A durable, checksummed, append-only record log.

    Parameters
    ----------
    directory : path
        Folder of the log files (created if missing).
    sync : {"always", "batch", "off"}
        ``always``: :meth:`commit` returns only after fsync (survives power loss). Concurrent committers share one
        fsync (group commit). ``batch``: a background thread fsyncs every ``batch_interval`` seconds; a power
        loss can lose the last interval's acknowledged writes, a killed process cannot. ``off``: never fsync
        (the OS writes back eventually; survives a killed process only).
    repair, read_only : bool
        What to do about damage that is not a torn tail (see the module docstring).
    """

    def __init__(self, directory: str | os.PathLike, *, sync: str = "always", batch_interval: float = 0.01,
                 segment_bytes: int = 64 << 20, repair: bool = False, read_only: bool = False) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}; got {sync!r}")
        self.directory = Path(directory)
        self.sync_mode = sync
        self.batch_interval = batch_interval
        self.segment_bytes = segment_bytes
        self.read_only = read_only
        self._lock = threading.Lock()  # appends
        self._sync_lock = threading.Lock()  # fsyncs (group commit leader)
        self._closed = False
        self.repaired: list[str] = []  # what recovery cut, for the caller to report
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._files: list[tuple[int, Path]] = sorted(
            (int(p.stem), p) for p in self.directory.glob("*.log") if p.stem.isdigit()) \
            if self.directory.exists() else []
        self._last_lsn, self._first_lsn = self._scan(repair)
        self._durable_lsn = self._last_lsn
        self._fh = None
        self._fh_size = 0
        self._flusher = None
        if not read_only and sync == "batch":
            self._flusher = threading.Thread(target=self._flush_loop, name="simdex-wal-flush", daemon=True)
            self._flusher.start()

    # ---- scanning and recovery ----------------------------------------------------------------------------------
    def _scan(self, repair: bool) -> tuple[int, int]:
        """Validate every record; cut a torn tail; return (last lsn, first lsn)."""
        expected = self._files[0][0] if self._files else 1
        first = expected
        for index, (start, path) in enumerate(self._files):
            if start != expected:
                raise CorruptLogError(f"{path}: log file starts at record {start}, expected {expected} "
                                      f"(a log file is missing)")
            data = path.read_bytes()
            pos = 0
            while pos < len(data):
                ok, lsn, end = self._parse_at(data, pos)
                if ok and lsn == expected:
                    expected += 1
                    pos = end
                    continue
                last_file = index == len(self._files) - 1
                later_valid = self._valid_record_after(data, pos, expected) or not last_file
                where = f"{path} at byte {pos} (record {expected})"
                if later_valid and not (repair or self.read_only):
                    raise CorruptLogError(
                        f"write-ahead log damaged at {where}, and acknowledged records follow it. Open with "
                        f"repair=True to cut the log there (keeping everything before it), or read_only=True to "
                        f"read the data up to it without changing anything")
                if not self.read_only:
                    with open(path, "r+b") as f:
                        f.truncate(pos)
                        f.flush()
                        os.fsync(f.fileno())
                    self.repaired.append(f"cut {len(data) - pos} damaged byte(s) from {where}")
                    for _, later in self._files[index + 1:]:
                        later.unlink()
                        self.repaired.append(f"removed {later} after the damage")
                self._files = self._files[:index + 1]
                return expected - 1, first
        return expected - 1, first

    @staticmethod
    def _parse_at(data: bytes, pos: int) -> tuple[bool, int, int]:
        if pos + _HEADER.size > len(data):
            return False, 0, 0
        magic, lsn, length, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if magic != _MAGIC or length > MAX_RECORD_BYTES or end > len(data):
            return False, 0, 0
        if _crc(lsn, memoryview(data)[pos + _HEADER.size:end]) != crc:
            return False, 0, 0
        return True, lsn, end

    def _valid_record_after(self, data: bytes, pos: int, expected: int) -> bool:
        """Is there an intact record with a later lsn anywhere after ``pos``? (Then the damage is not a tail.)"""
        magic = struct.pack("<I", _MAGIC)
        at = data.find(magic, pos + 1)
        while at != -1:
            ok, lsn, _ = self._parse_at(data, at)
            if ok and lsn >= expected:
                return True
            at = data.find(magic, at + 1)
        return False

    def replay(self, after_lsn: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield (lsn, payload) of every record with lsn > ``after_lsn``, in order."""
        for index, (start, path) in enumerate(self._files):
            next_start = self._files[index + 1][0] if index + 1 < len(self._files) else None
            if next_start is not None and next_start <= after_lsn + 1:
                continue
            data = path.read_bytes()
            pos = 0
            while pos < len(data):
                ok, lsn, end = self._parse_at(data, pos)
                if not ok or lsn > self._last_lsn:
                    break
                if lsn > after_lsn:
                    yield lsn, bytes(data[pos + _HEADER.size:end])
                pos = end

    # ---- appending ----------------------------------------------------------------------------------------------
    @property
    def last_lsn(self) -> int:
        return self._last_lsn

    @property
    def first_lsn(self) -> int:
        """The oldest record still in the log (or the next lsn when it is empty)."""
        return self._files[0][0] if self._files else self._last_lsn + 1

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for _, p in self._files if p.exists())

    def _open_for_append(self) -> None:
        if self._fh is not None and self._fh_size < self.segment_bytes:
            return
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        if self._files and self._files[-1][1].stat().st_size < self.segment_bytes:
            path = self._files[-1][1]
        else:
            path = self.directory / f"{self._last_lsn + 1:020d}.log"
            self._files.append((self._last_lsn + 1, path))
            path.touch()
            _fsync_dir(self.directory)
        self._fh = open(path, "ab", buffering=0)
        self._fh_size = path.stat().st_size

    def append(self, payload: bytes) -> int:
        """Write one record (not yet durable: call :meth:`commit`). Returns its lsn."""
        if self.read_only:
            raise PermissionError("the write-ahead log is open read-only")
        if self._closed:
            raise RuntimeError("the write-ahead log is closed")
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"a log record holds at most {MAX_RECORD_BYTES} bytes; got {len(payload)}")
        with self._lock:
            self._open_for_append()
            lsn = self._last_lsn + 1
            record = _HEADER.pack(_MAGIC, lsn, len(payload), _crc(lsn, payload)) + payload
            self._fh.write(record)
            self._fh_size += len(record)
            self._last_lsn = lsn
            return lsn

    def commit(self, lsn: int) -> None:
        """Make every record up to ``lsn`` durable according to the sync mode."""
        if self.sync_mode != "always" or self._durable_lsn >= lsn:
            return
        with self._sync_lock:
            if self._durable_lsn >= lsn:  # another committer's fsync covered this record
                return
            with self._lock:
                target = self._last_lsn
                fh = self._fh
            if fh is not None:
                os.fsync(fh.fileno())
            self._durable_lsn = max(self._durable_lsn, target)

    def _flush_loop(self) -> None:
        while not self._closed:
            time.sleep(self.batch_interval)
            try:
                with self._sync_lock:
                    with self._lock:
                        target, fh = self._last_lsn, self._fh
                    if fh is not None and target > self._durable_lsn:
                        os.fsync(fh.fileno())
                        self._durable_lsn = target
            except (OSError, ValueError):  # closed under us
                return

    def restart_at(self, next_lsn: int) -> None:
        """Drop every log file and number the next record ``next_lsn`` (repair: the log's good part ends before
        a checkpoint that already holds it)."""
        if self.read_only:
            raise PermissionError("the write-ahead log is open read-only")
        with self._lock:
            for _, path in self._files:
                path.unlink(missing_ok=True)
                self.repaired.append(f"removed {path} (its records are covered by the checkpoint)")
            self._files = []
            self._last_lsn = self._durable_lsn = next_lsn - 1
            _fsync_dir(self.directory)

    def truncate_before(self, lsn: int) -> None:
        """Delete whole log files whose records all precede ``lsn`` (they are covered by a checkpoint)."""
        if self.read_only:
            return
        with self._lock:
            keep_from = 0
            for index in range(len(self._files) - 1):
                if self._files[index + 1][0] <= lsn:
                    keep_from = index + 1
            for _, path in self._files[:keep_from]:
                path.unlink(missing_ok=True)
            if keep_from:
                self._files = self._files[keep_from:]
                _fsync_dir(self.directory)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._sync_lock, self._lock:
            if self._fh is not None:
                self._fh.flush()
                if self.sync_mode != "off":
                    os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None
        if self._flusher is not None:
            self._flusher.join(timeout=1)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
