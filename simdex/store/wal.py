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

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import CorruptFileError, InvalidInputError, StorageError
from ..fileformat import fsync_path
from ._io import storage_error, write_all

log = logging.getLogger("simdex.store")

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

    Records are appended by one writer at a time: :meth:`append`, then :meth:`commit` (or :meth:`cancel` when the
    write fails elsewhere) before the next append (the collection's writer lock). Only the background flusher of
    ``sync="batch"`` runs beside it.

    Failures (disk full, I/O errors, failed fsyncs) never leave a damaged record in front of a later one. A failed
    append is cut off at once. After a failed fsync the file past the last fsync that succeeded is not trusted
    (the kernel may have dropped or kept those pages; the PostgreSQL fsync lesson): the file is cut back to that
    point and the records written since that are still wanted are written again from memory and fsynced, before
    any later record is accepted. While that is impossible every append raises :class:`StorageError`; each later
    append (and, with ``sync="batch"``, the flusher) tries again, so writes resume once space is freed.

    Parameters
    ----------
    directory : path
        Folder of the log files (created if missing).
    sync : {"always", "batch", "off"}
        ``always``: :meth:`commit` returns only after fsync (survives power loss). ``batch``: a background thread
        fsyncs every ``batch_interval`` seconds; a power loss can lose the last interval's acknowledged writes, a
        killed process cannot. ``off``: never fsync (the OS writes back eventually; survives a killed process
        only).
    repair, read_only : bool
        What to do about damage that is not a torn tail (see the module docstring).
    """

    def __init__(self, directory: str | os.PathLike, *, sync: str = "always", batch_interval: float = 0.01,
                 segment_bytes: int = 64 << 20, repair: bool = False, read_only: bool = False) -> None:
        if sync not in SYNC_MODES:
            raise InvalidInputError(f"sync must be one of {SYNC_MODES}; got {sync!r}")
        self.directory = Path(directory)
        self.sync_mode = sync
        self.batch_interval = batch_interval
        self.segment_bytes = segment_bytes
        self.read_only = read_only
        self._lock = threading.Lock()  # the open file and its bookkeeping
        self._sync_lock = threading.Lock()  # fsyncs and changes of the file's layout; taken before _lock
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
        self._fh_path: Path | None = None
        self._fh_size = 0  # bytes of whole records in the open file
        # the prefix of the open file known to be good: what the last successful fsync covered (with sync="off":
        # every whole record written); the records written past it, kept to be written again after a failure
        self._good_size = 0
        self._unsynced: list[tuple[int, int, bytes]] = []  # (lsn, offset, record)
        self._last_record: tuple[int, int] | None = None  # (lsn, offset) of the newest record of the open file
        self._damage: str | None = None  # why the file past _good_size must be rewritten before the next append
        self.error: str | None = None  # the last failure, until the log is whole again
        self.appended_bytes = 0  # bytes of records appended since the log was opened (less those taken back)
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
        total = 0
        for _, path in self._files:
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def _open_for_append(self) -> None:
        """Open the newest file, or start a new one when it is full (caller holds both locks)."""
        if self._fh is not None and self._fh_size < self.segment_bytes:
            return
        if self._fh is not None:
            self._sync_open_file()  # a full file is made durable before the next one starts
            self._fh.close()
            self._fh = None
        if self._files and self._files[-1][1].stat().st_size < self.segment_bytes:
            start, path, new = self._files[-1][0], self._files[-1][1], False
        else:
            start, path, new = self._last_lsn + 1, self.directory / f"{self._last_lsn + 1:020d}.log", True
        fh = None
        try:
            fh = open(path, "ab", buffering=0)
            if new:
                fsync_path(self.directory)
            size = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            if fh is not None:
                fh.close()
            raise storage_error(exc, "start the write-ahead log file", path) from None
        if new:
            self._files.append((start, path))
        self._fh, self._fh_path = fh, path
        self._fh_size = self._good_size = size
        self._unsynced, self._last_record = [], None

    def append(self, payload: bytes) -> int:
        """Write one record (not yet durable: call :meth:`commit`). Returns its lsn.

        Raises :class:`StorageError` if it cannot be written; then the log holds nothing of it."""
        if self.read_only:
            raise PermissionError("the write-ahead log is open read-only")
        if self._closed:
            raise RuntimeError("the write-ahead log is closed")
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"a log record holds at most {MAX_RECORD_BYTES} bytes; got {len(payload)}")
        if self._fh is None or self._fh_size >= self.segment_bytes or self._damage is not None:
            with self._sync_lock, self._lock:
                if self._damage is not None:
                    self._restore()
                self._open_for_append()
        with self._lock:
            lsn = self._last_lsn + 1
            record = _HEADER.pack(_MAGIC, lsn, len(payload), _crc(lsn, payload)) + payload
            offset = self._fh_size
            try:
                write_all(self._fh.fileno(), record)
            except OSError as exc:
                error = storage_error(exc, "append to the write-ahead log", self._fh_path)
                try:  # cut off what was written of it; a concurrent fsync covers at most the whole records
                    os.ftruncate(self._fh.fileno(), offset)
                except OSError as cut:
                    self._damage = self.error = f"{error}; cutting it off failed too ({cut})"
                raise error from None
            self._fh_size = offset + len(record)
            self.appended_bytes += len(record)
            self._last_lsn = lsn
            self._last_record = (lsn, offset)
            if self.sync_mode == "off":
                self._good_size = self._fh_size
            else:
                self._unsynced.append((lsn, offset, record))
            return lsn

    def commit(self, lsn: int) -> None:
        """Make every record up to ``lsn`` durable according to the sync mode. Raises :class:`StorageError` if the
        fsync fails; the caller then takes its record back with :meth:`cancel`."""
        if self.sync_mode != "always" or self._durable_lsn >= lsn:
            return
        with self._sync_lock:
            if self._durable_lsn < lsn:
                self._sync()
        if self._durable_lsn < lsn:
            raise StorageError(f"record {lsn} is no longer in the write-ahead log {self.directory} (it was cut "
                               f"back after a failure)", path=str(self.directory))

    def cancel(self, lsn: int) -> None:
        """Take back record ``lsn``, the newest, because its write failed after it was appended: it must not
        reappear after a restart. Raises :class:`StorageError` if the file cannot be cut back; appends are
        refused until it can."""
        with self._sync_lock, self._lock:
            if lsn > self._last_lsn:
                return  # cut back already (after a failed fsync)
            if self._last_record is None or self._last_record[0] != lsn or lsn != self._last_lsn:
                raise RuntimeError(f"only the newest record ({self._last_lsn}) can be taken back; got {lsn}")
            offset = self._last_record[1]
            self.appended_bytes -= self._fh_size - offset
            self._unsynced = [u for u in self._unsynced if u[0] != lsn]
            self._last_record = self._unsynced[-1][:2] if self._unsynced else None
            self._last_lsn = lsn - 1
            self._durable_lsn = min(self._durable_lsn, lsn - 1)
            self._fh_size = offset
            self._good_size = min(self._good_size, offset)
            if self._damage is None:
                self._damage = f"record {lsn} was taken back"
            self._restore()

    def _sync(self) -> None:
        """fsync the open file up to its whole records (caller holds _sync_lock; appends go on meanwhile)."""
        with self._lock:
            if self._damage is not None:
                self._restore()  # it fsyncs what it rewrites
                return
            fh, path, size, target = self._fh, self._fh_path, self._fh_size, self._last_lsn
        if fh is None or self.sync_mode == "off":
            self._durable_lsn = max(self._durable_lsn, target)
            return
        try:
            os.fsync(fh.fileno())
        except OSError as exc:
            error = storage_error(exc, "fsync the write-ahead log", path)
            with self._lock:
                self._damage = self.error = str(error)  # unknown past _good_size from now on
            raise error from None
        with self._lock:
            self._good_size = max(self._good_size, size)
            self._unsynced = [u for u in self._unsynced if u[0] > target]
            self._durable_lsn = max(self._durable_lsn, target)

    def _sync_open_file(self) -> None:
        """:meth:`_sync` for a caller that holds both locks (starting a new file)."""
        if self.sync_mode == "off" or self._fh is None or self._fh_size == self._good_size:
            return
        try:
            os.fsync(self._fh.fileno())
        except OSError as exc:
            error = storage_error(exc, "fsync the write-ahead log", self._fh_path)
            self._damage = self.error = str(error)
            raise error from None
        self._good_size = self._fh_size
        self._unsynced = []
        self._durable_lsn = self._last_lsn

    def _restore(self) -> None:
        """Make the open file hold exactly its good prefix and the records written since that are still wanted,
        rewritten from memory, and fsync it (caller holds both locks). Raises StorageError while it cannot."""
        fh, path = self._fh, self._fh_path
        if fh is None:
            self._damage = self.error = None
            return
        offset = self._good_size
        try:
            fd = fh.fileno()
            os.ftruncate(fd, offset)
            placed = []
            for lsn, _, record in self._unsynced:
                write_all(fd, record)
                placed.append((lsn, offset, record))
                offset += len(record)
            if self.sync_mode != "off":
                os.fsync(fd)
        except OSError as exc:
            error = storage_error(exc, "cut back the write-ahead log", path)
            self.error = f"{self._damage}; {error}"
            raise StorageError(f"the write-ahead log {path} cannot be restored after a failure ({self._damage}): "
                               f"{error}. Writes are refused until it can be (free space); reads go on, and "
                               f"nothing acknowledged is lost", errno=error.errno, path=str(path)) from None
        self._fh_size = self._good_size = offset
        if placed:
            self._last_record = placed[-1][:2]
        self._unsynced = []
        self._durable_lsn = self._last_lsn
        self._damage = self.error = None

    def _flush_loop(self) -> None:
        reported = None
        while not self._closed:
            time.sleep(self.batch_interval)
            with self._sync_lock:
                if self._closed:
                    return
                try:
                    if self._last_lsn > self._durable_lsn or self._damage is not None:
                        self._sync()
                    reported = None
                except StorageError as exc:
                    if str(exc) != reported:  # once per failure, not every interval
                        log.error("%s (acknowledged records kept in memory are written again when it can be)",
                                  exc)
                        reported = str(exc)

    def restart_at(self, next_lsn: int) -> None:
        """Drop every log file and number the next record ``next_lsn`` (repair: the log's good part ends before
        a checkpoint that already holds it)."""
        if self.read_only:
            raise PermissionError("the write-ahead log is open read-only")
        with self._lock:
            for _, path in self._files:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    raise storage_error(exc, "remove the write-ahead log file", path) from None
                self.repaired.append(f"removed {path} (its records are covered by the checkpoint)")
            self._files = []
            self._last_lsn = self._durable_lsn = next_lsn - 1
            fsync_path(self.directory)

    def roll(self) -> None:
        """Start a new (empty) file for the next record, so that a checkpoint of everything logged so far can
        remove every file before it (:meth:`truncate_before` removes whole files only). Nothing happens when the
        newest file holds no record yet."""
        if self.read_only:
            return
        with self._sync_lock, self._lock:
            if not self._files or self._files[-1][0] > self._last_lsn:
                return
            if self._fh is not None:
                self._sync_open_file()
                self._fh.close()
                self._fh = None
            path = self.directory / f"{self._last_lsn + 1:020d}.log"
            try:
                open(path, "ab").close()
                fsync_path(self.directory)
            except OSError as exc:
                raise storage_error(exc, "start the write-ahead log file", path) from None
            self._files.append((self._last_lsn + 1, path))

    def truncate_before(self, lsn: int) -> None:
        """Delete whole log files whose records all precede ``lsn`` (they are covered by a checkpoint). Raises
        :class:`StorageError` if a file cannot be removed; the log stays whole (the rest goes next time)."""
        if self.read_only:
            return
        with self._lock:
            removed = 0
            try:
                while len(self._files) > 1 and self._files[1][0] <= lsn:
                    self._files[0][1].unlink(missing_ok=True)
                    self._files.pop(0)
                    removed += 1
            except OSError as exc:
                raise storage_error(exc, "remove the write-ahead log file", self._files[0][1]) from None
            finally:
                if removed:
                    try:
                        fsync_path(self.directory)
                    except OSError:
                        pass  # the files are gone from this process's view; a crash may bring one back, harmlessly

    def close(self) -> None:
        """fsync and close. Raises :class:`StorageError` if the last fsync fails (the file is closed anyway)."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._sync_lock, self._lock:
                if self._fh is not None:
                    try:
                        if self._damage is not None:
                            self._restore()
                        elif self.sync_mode != "off":
                            try:
                                os.fsync(self._fh.fileno())
                            except OSError as exc:
                                raise storage_error(exc, "fsync the write-ahead log", self._fh_path) from None
                    finally:
                        self._fh.close()
                        self._fh = None
        finally:
            if self._flusher is not None:
                self._flusher.join(timeout=1)
