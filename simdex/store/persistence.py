"""Durability of a collection: recovery on open, checkpoints and their manifests.

- **checkpoints**: the in-memory vector state is written to checksummed files (write-new-then-rename) under a
  ``MANIFEST``; the log is then cut back to the previous checkpoint, so one damaged checkpoint can still be
  recovered from the one before it plus the log. A checkpoint that cannot write a file removes what it wrote and
  raises :class:`~simdex.errors.StorageError`; its number is never reused.
- **recovery**: load the newest intact checkpoint, open (or restore) the metadata store, replay the log.

:class:`Durable` is the part of :class:`~simdex.store.Collection` that does this; it works on the collection's
state (the log, the metadata store, the record vectors and the side indexes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .. import fileformat
from .._storage import VECTOR_FILE, InVectorFile, VectorFile
from ..dense import FlatIndex
from ..errors import CorruptDatabaseError, CorruptFileError, ReadOnlyError, StorageError
from ..fileformat import fsync_path
from ..index import Index, write_snapshot
from . import records as rec
from ._io import storage_error
from .config import MAIN_INDEXES, main_index_class
from .metadata import MetadataStore, copy_database
from .wal import CorruptLogError, WriteAheadLog

log = logging.getLogger("simdex.store")

MANIFEST = "MANIFEST"
# writes wait for a checkpoint once the log holds this many checkpoint intervals of records (checkpoints failing)
LOG_STALL_FACTOR = 4
# a quiet collection's log is compacted (compact_log) once it holds this much that its checkpoint covers, after
# this many seconds without a write
COMPACT_LOG_BYTES = 1 << 20
COMPACT_IDLE_SECONDS = 30.0


class Durable:
    """Recovery, checkpoints and manifests of a collection (mixed into :class:`~simdex.store.Collection`)."""

    # ---- recovery ------------------------------------------------------------------------------------------------
    def _recover(self, sync: str, repair: bool) -> None:
        self._vectors_moved = False  # an old checkpoint's vectors moved into a vector file (_load_checkpoint)
        manifests = self._read_manifests()
        self._last_gen = manifests[0]["gen"] if manifests else 0
        loaded = False
        for position, manifest in enumerate(manifests):
            try:
                self._load_checkpoint(manifest)
                self._manifest = manifest
                self._prev_manifest = manifests[position + 1] if position + 1 < len(manifests) else None
                loaded = True
                break
            except CorruptFileError as exc:
                self.recovery_notes.append(f"checkpoint {manifest.get('gen')} is damaged ({exc}); "
                                           f"falling back to the one before it")
                log.warning("%s: %s", self.path, self.recovery_notes[-1])
                self._vectors.reset()
        if manifests and not loaded:
            raise CorruptDatabaseError(f"collection {self.name!r}: every checkpoint is damaged "
                                       f"({'; '.join(self.recovery_notes)})")
        base_lsn = self._manifest["lsn"] if self._manifest else 0
        try:
            self._wal = WriteAheadLog(self.path / "wal", sync=sync, repair=repair, read_only=self.read_only,
                                      segment_bytes=self.log_segment_bytes)
        except CorruptLogError as exc:
            raise CorruptDatabaseError(f"collection {self.name!r}: {exc}") from None
        self.recovery_notes.extend(self._wal.repaired)
        if self._wal.first_lsn > base_lsn + 1:
            raise CorruptDatabaseError(f"collection {self.name!r}: log records {base_lsn + 1}.."
                                       f"{self._wal.first_lsn - 1} are missing")
        if self._wal.last_lsn < base_lsn:
            # The log's good part ends inside what the checkpoint already holds: the checkpoint is the last
            # good state, and new records are numbered after it.
            self.recovery_notes.append(f"log ends at record {self._wal.last_lsn}, before checkpoint lsn "
                                       f"{base_lsn}; recovering to the checkpoint")
            if not self.read_only:
                self._wal.restart_at(base_lsn + 1)
        self._meta = self._open_metadata(base_lsn)
        sql_lsn = self._meta.applied_lsn()
        self._next_rid = max(self._manifest["next_rid"] if self._manifest else 0, self._meta.max_rid() + 1)
        replayed = 0
        for lsn, payload in self._wal.replay(min(base_lsn, sql_lsn)):
            op = rec.decode(payload, lsn)
            if lsn > sql_lsn:
                self._apply_metadata(lsn, op)
            if lsn > base_lsn:
                self._apply_vectors(op)
                replayed += 1
            self._next_rid = max(self._next_rid, int(op.rids.max()) + 1 if op.rids.size else 0)
        self._applied_lsn = self._wal.last_lsn
        self._log_mark = -self._wal.size_bytes()  # as if all of the log came after the checkpoint
        self._open_sides()
        if not self.read_only:  # what a crash left: files of a checkpoint or a merge that never took effect
            self._remove_unreferenced_files(at_open=True)
            if self._vectors_moved:  # a checkpoint that names the vector file, once
                self._checkpoint(True)
                self._vectors_moved = False
        if replayed:
            self.recovery_notes.append(f"replayed {replayed} log record(s) after checkpoint lsn {base_lsn}")

    def _open_metadata(self, base_lsn: int) -> MetadataStore:
        """Open the metadata store; restore it from the checkpoint's snapshot if it is damaged or holds records
        the log cannot account for (ahead of a log cut by repair, or older than the log's first record)."""
        live = self.path / "meta.sqlite"
        if self.read_only:
            # work on a private copy, so that the log tail can be applied without touching any file
            self._ro_copy = Path(tempfile.mkdtemp(prefix="simdex-readonly-"))
            _snapshot_sqlite(live, self._ro_copy / "meta.sqlite")
            live = self._ro_copy / "meta.sqlite"
        problem = None
        try:
            meta = MetadataStore(live)
            problem = meta.check()
            if problem is None:
                lsn = meta.applied_lsn()
                last = max(self._wal.last_lsn, base_lsn)
                if lsn > last:
                    problem = f"it holds records up to {lsn}, after the last good log record {last}"
                elif lsn < self._wal.first_lsn - 1:
                    problem = f"it is older (record {lsn}) than the log's first record {self._wal.first_lsn}"
                elif self._wal.last_lsn < base_lsn and lsn != base_lsn:
                    problem = f"it is at record {lsn}, and the log cannot bring it to the checkpoint's {base_lsn}"
            if problem is None:
                return meta
            meta.close()
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
        snapshot = self.path / self._manifest["meta"] if self._manifest and self._manifest.get("meta") else None
        if snapshot is None and base_lsn > 0:
            raise CorruptDatabaseError(f"collection {self.name!r}: the metadata store is unusable ({problem}) and "
                                       f"the checkpoint has no copy of it")
        if snapshot is not None and not snapshot.exists():
            raise CorruptDatabaseError(f"collection {self.name!r}: the metadata store is unusable ({problem}) and "
                                       f"its checkpoint copy {snapshot.name} is missing")
        self.recovery_notes.append(f"metadata store: {problem}; restored it from "
                                   f"{snapshot.name if snapshot else 'empty'} and replayed the log")
        log.warning("%s: %s", self.path, self.recovery_notes[-1])
        MetadataStore.restore(snapshot, live)
        meta = MetadataStore(live)
        if meta.check() is not None or meta.applied_lsn() != base_lsn:
            raise CorruptDatabaseError(f"collection {self.name!r}: the checkpoint's copy of the metadata store is "
                                       f"damaged too")
        return meta

    def _read_manifests(self) -> list[dict[str, Any]]:
        """The current checkpoint manifest and the previous one, newest first, skipping unreadable ones."""
        found = []
        for name in (MANIFEST, MANIFEST + ".tmp", MANIFEST + ".prev"):
            path = self.path / name
            if not path.exists():
                continue
            try:
                doc = json.loads(path.read_text())
                body = json.dumps(doc["body"], sort_keys=True, separators=(",", ":")).encode()
                if zlib.crc32(body) != doc["crc32"]:
                    raise ValueError("checksum mismatch")
                found.append(doc["body"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                self.recovery_notes.append(f"{path.name} is unreadable ({exc}); ignored")
        found.sort(key=lambda m: m["gen"], reverse=True)
        unique = []
        for m in found:
            if not unique or unique[-1]["gen"] != m["gen"]:
                unique.append(m)
        return unique[:2]

    def _load_checkpoint(self, manifest: dict[str, Any]) -> None:
        growing = Index.load(self.path / manifest["growing"], mmap=False)
        if not isinstance(growing, FlatIndex) or growing.dim != self.dim:
            raise CorruptFileError("growing segment has the wrong kind or dimension")
        main = None
        if manifest.get("main"):
            kind = self._vectors.index_kind
            if kind not in MAIN_INDEXES:
                raise CorruptFileError(f"the checkpoint names a main index, but this collection's index is {kind!r}")
            # an index over codes is mapped from its file: keep_vectors_in below moves its float32 vectors file
            # to file, so they are never all in this process's memory at once (larger-than-memory collections)
            main = main_index_class(kind).load(self.path / manifest["main"], mmap=MAIN_INDEXES[kind].trained)
            if type(main) is not main_index_class(kind) or main.dim != self.dim:
                raise CorruptFileError(f"main index is a {main.kind} of dimension {main.dim}, not the {kind!r} "
                                       f"index of this {self.dim}-d collection")
            main.consolidate_threshold = 1.0  # consolidation happens on copies, never under readers
            storage_dir = self._vectors.storage_dir
            if isinstance(main, InVectorFile) and main.vector_file is None and main.vector_storage == "disk" \
                    and storage_dir is not None:
                # a checkpoint that holds the vectors itself (written before vector files): into one now, and a
                # checkpoint naming it is written once the collection is open (_recover)
                main.use_vector_file(VectorFile.create(storage_dir, self.dim))
                self._vectors_moved = True
            elif hasattr(main, "keep_vectors_in"):  # an index over codes: its vectors in files beside the collection
                main.keep_vectors_in(storage_dir)
            _, _, tomb = fileformat.load_arrays(self.path / manifest["tomb"], mmap=False)
            deleted = tomb["deleted"]
            slot_ids = main._idmap.slot_ids
            if deleted.shape != slot_ids.shape:
                raise CorruptFileError("tombstone file does not match the main index")
            newly = (deleted != 0) & (slot_ids >= 0)  # deleted since the main index file was written
            if newly.any():
                main.remove(slot_ids[np.flatnonzero(newly)])
            self._saved_main = None if self._vectors_moved else (main, manifest["main"])
        self._vectors.reset(main, growing)

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def needs_checkpoint(self) -> bool:
        if self.read_only or self._closed:
            return False
        base = self._manifest["lsn"] if self._manifest else 0
        # bytes logged since the last checkpoint, not the log's size: the log keeps the records since the one
        # before, so its size would ask for a checkpoint after every write
        return self._applied_lsn > base and self._wal.appended_bytes - self._log_mark > self.checkpoint_bytes

    def _make_room_in_log(self) -> None:
        """Checkpoint before writing when the log holds LOG_STALL_FACTOR checkpoint intervals of records: the
        background checkpoint keeps failing (a full disk). Then the checkpoint, which lets the log be cut, gets the
        space first once it is freed, and the log cannot fill the disk by itself."""
        logged = self._wal.appended_bytes - self._log_mark
        if logged <= LOG_STALL_FACTOR * self.checkpoint_bytes:
            return
        try:
            self.checkpoint()
        except StorageError as exc:
            raise StorageError(f"writes wait for a checkpoint: the write-ahead log holds {logged / 2**20:.1f} MiB "
                               f"since the last one ({LOG_STALL_FACTOR}x checkpoint_bytes), and {exc}",
                               errno=exc.errno, path=exc.filename) from None

    def needs_compaction(self, idle_seconds: float = COMPACT_IDLE_SECONDS) -> bool:
        """Whether the collection is quiet (nothing written since its checkpoint, for ``idle_seconds``) while its
        log still holds more than COMPACT_LOG_BYTES that the checkpoint covers: the records kept to recover from
        a damaged checkpoint with the one before, which a second checkpoint of the same state makes unneeded."""
        m = self._manifest
        if self.read_only or self._closed or m is None or self._applied_lsn != m["lsn"]:
            return False
        if self._wal.first_lsn > m["lsn"] or self._wal.size_bytes() < COMPACT_LOG_BYTES:
            return False
        last = self.last_write_time()
        return last is None or time.time() - last >= idle_seconds

    def compact_log(self) -> bool:
        """Cut the log of a quiet collection to nothing: start a new log file, then write a second checkpoint of
        the same state (so that the previous checkpoint, which the kept records served, is this one too), which
        removes every older log file and the files only the checkpoint before used. True if it did."""
        if self.read_only:
            raise ReadOnlyError(f"collection {self.name!r} is open read-only")
        with self._maintenance:  # the lock order of backups: checkpoint lock, then writer lock
            with self._writer:  # the new log file starts after the checkpoint's last record
                if self._manifest is None or self._applied_lsn != self._manifest["lsn"]:
                    return False
                self._wal.roll()
            return self._checkpoint(True)

    def checkpoint(self, force: bool = False) -> bool:
        """Write the vector state to new checkpoint files and cut the log back. Readers and writers go on.
        ``force``: write one even when nothing was logged since the last (:meth:`compact_log`).

        Raises :class:`StorageError` if a file cannot be written (disk full, I/O error): the previous checkpoint
        and the log stay as they were, what this attempt wrote is removed, and nothing is lost."""
        if self.read_only:
            raise ReadOnlyError(f"collection {self.name!r} is open read-only")
        with self._maintenance:
            return self._checkpoint(force)

    def _checkpoint(self, force: bool) -> bool:
        """:meth:`checkpoint`, the caller holding the checkpoint lock."""
        # a failed attempt's number is never used again (its files may linger where their removal failed)
        gen = max(self._manifest["gen"] if self._manifest else 0, self._last_gen) + 1
        written: list[Path] = []
        try:
            with self._rw.read():
                lsn, logged = self._applied_lsn, self._wal.appended_bytes
                if self._manifest is not None and self._manifest["lsn"] == lsn and not force:
                    return False
                self._last_gen = gen
                main = self._vectors.main
                # the main index's file is written once; later checkpoints write only which of its slots
                # hold no live record any more (tombstones; for a Vamana graph also its freed slots)
                # (a build-once index was written into its folder when it was built, and is never changed)
                saved = self._saved_main[1] if self._saved_main is not None and self._saved_main[0] is main \
                    else getattr(main, "folder", None)
                main_snapshot = main.snapshot() if main is not None and saved is None else None
                tombstones = None if main is None else (main._idmap.slot_ids < 0).astype(np.uint8)
                vector_file = getattr(main, "vector_file", None)
                vector_rows = main._n if vector_file is not None else 0
                growing_snapshot = self._vectors.growing.snapshot()
                next_rid = self._next_rid
                # the metadata copy must be at exactly this lsn: writers wait for the read side to apply
                written.append(self.path / f"meta-{gen}.sqlite")
                self._meta.backup_to(written[-1])
            body: dict[str, Any] = {"gen": gen, "lsn": lsn, "next_rid": next_rid, "main": None, "tomb": None,
                                    "growing": f"growing-{gen}.sdx", "meta": f"meta-{gen}.sqlite"}
            if vector_file is not None:  # the file of the main index's vectors and how many of its rows it reads
                body["vectors"], body["vector_rows"] = vector_file.name, vector_rows
                vector_file.sync()
            written.append(self.path / body["growing"])
            write_snapshot(written[-1], growing_snapshot)
            if main is not None:
                if saved is not None:
                    body["main"] = saved
                else:
                    body["main"] = f"main-{gen}.sdx"
                    written.append(self.path / body["main"])
                    write_snapshot(written[-1], main_snapshot)
                body["tomb"] = f"tomb-{gen}.sdx"
                written.append(self.path / body["tomb"])
                fileformat.save_arrays(written[-1], "Tombstones", {}, {"deleted": tombstones})
            self._meta.make_durable()
            self._write_manifest(body)
        except (OSError, sqlite3.Error) as exc:
            self._discard_files(written)
            raise storage_error(exc, f"write checkpoint {gen} of", self.path) from None
        if main is not None:
            self._saved_main = (main, body["main"])
        self._prev_manifest, self._manifest = self._manifest, body
        self._log_mark = logged
        keep_after = self._prev_manifest["lsn"] if self._prev_manifest else 0
        try:
            self._wal.truncate_before(keep_after + 1)
            self._remove_unreferenced_files()
        except OSError as exc:  # the checkpoint stands; the old files go next time
            log.warning("%s: checkpoint %d is written, but removing what it replaces failed: %s", self.path,
                        gen, exc)
        return True

    def _discard_files(self, paths: list[Path]) -> None:
        """Remove the files of a checkpoint that failed before its manifest took effect (best effort: what
        stays is never referenced, and goes with the next checkpoint)."""
        for path in [*paths, self.path / (MANIFEST + ".tmp")]:
            for victim in (path, Path(f"{path}-journal")):
                try:
                    victim.unlink(missing_ok=True)
                except OSError:
                    pass

    def _write_manifest(self, body: dict[str, Any]) -> None:
        """Make ``body`` the current checkpoint; the current one becomes the previous. Raises OSError if the
        switch did not happen (then the checkpoints on disk are the ones before)."""
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        doc = json.dumps({"format": "simdex-manifest", "version": 1, "crc32": zlib.crc32(raw), "body": body})
        tmp = self.path / (MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            f.write(doc)
            f.flush()
            os.fsync(f.fileno())
        current = self.path / MANIFEST
        if current.exists():
            # if the next rename fails, MANIFEST.prev is the current checkpoint and recovery reads it there
            os.replace(current, self.path / (MANIFEST + ".prev"))
        os.replace(tmp, current)
        try:
            fsync_path(self.path)
        except OSError as exc:  # the switch is made; if it is lost in a crash, the previous checkpoint is intact
            log.warning("%s: fsync of the folder after the manifest switch failed: %s", self.path, exc)

    def _remove_unreferenced_files(self, at_open: bool = False) -> None:
        """Remove the files that neither checkpoint names (nor a merge may be writing: ``at_open``, none is)."""
        keep = set()
        for m in (self._manifest, self._prev_manifest):
            if m:
                keep.update(v for k, v in m.items() if k in ("main", "tomb", "growing", "meta", "vectors") and v)
        self._remove_unreferenced_vector_files(keep, at_open)
        for path in [*self.path.glob("*.sdx"), *self.path.glob("meta-*.sqlite")]:
            if path.name not in keep:
                path.unlink(missing_ok=True)
        # the folders of build-once indexes: the live one and one being built are not in a manifest yet (read in
        # this order: a build installed in between is then seen as one or the other)
        building = self._vectors.building
        keep.update((building, getattr(self._vectors.main, "folder", None)))
        for path in self.path.glob("spann-*"):
            if path.name not in keep and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)

    def _remove_unreferenced_vector_files(self, keep: set[str], at_open: bool) -> None:
        """Remove the vector files (``vectors-<n>.f32``) that no checkpoint names and the live main index does not
        read. One numbered after all of those may be a merge's, being written (unless ``at_open``): it stays."""
        live = getattr(self._vectors.main, "vector_file", None)
        names = {name for name in (*keep, live.name if live is not None else None) if name}
        newest = max((int(m.group(1)) for name in names if (m := VECTOR_FILE.match(name))), default=0)
        for path in self.path.glob("vectors-*.f32"):
            m = VECTOR_FILE.match(path.name)
            if m and path.name not in names and (at_open or int(m.group(1)) < newest):
                path.unlink(missing_ok=True)

    def _close_storage(self) -> None:
        """Checkpoint (a failure is logged: the log is replayed on open), then close the log and SQLite."""
        if not self.read_only:
            try:
                self.checkpoint()
            except Exception as exc:  # never lose the log because a checkpoint failed: it is replayed on open
                log.warning("%s: checkpoint on close failed: %s", self.path, exc)
        self._closed = True
        if self._fsyncer is not None:
            self._fsyncer.shutdown()
        try:
            self._wal.close()
        except StorageError as exc:
            log.error("%s: %s; writes acknowledged with sync='batch' since the last fsync may be lost", self.path,
                      exc)
        finally:
            self._meta.close()
        if getattr(self, "_ro_copy", None) is not None:
            shutil.rmtree(self._ro_copy, ignore_errors=True)

    def last_write_time(self) -> float | None:
        """When the newest log record was written (the log file's modification time), or None."""
        try:
            return max(path.stat().st_mtime for _, path in self._wal._files) if self._wal._files else None
        except OSError:
            return None


def _snapshot_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite store at ``source`` (a writer may be using it: the backup API copies one
    committed state), or of its files where SQLite cannot open it read-only."""
    if not source.exists():
        return
    try:
        copy_database(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=30), target)
    except sqlite3.Error:  # e.g. a log file left without its index by a crash: copy the files as they are
        for suffix in ("", "-wal"):
            if Path(f"{source}{suffix}").exists():
                shutil.copy2(f"{source}{suffix}", f"{target}{suffix}")

