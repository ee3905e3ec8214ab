"""Backups of a live database, full or incremental, and their verified restore (issue 26, part 1).

A backup is a folder laid out like a database (``collections/<name>/...``) plus ``BACKUP.json``, which lists every
file with its size and BLAKE2b checksum and, per collection, the log position (LSN) the copy holds. Per
collection it is consistent at one LSN, taken while writes go on:

- under the collection's checkpoint lock (no checkpoint can replace or remove files meanwhile) and, for an
  instant, its writer lock (a cut between two whole writes), it notes the current checkpoint (``MANIFEST``), the
  log files and their lengths;
- the checkpoint's files are immutable (written once, under new names), so they are hard-linked where the
  backup is on the same file system, else copied; the log is copied up to the noted length (its closed segments
  hard-linked too); the checkpoint's copy of the metadata store becomes the backup's ``meta.sqlite``.

Opening the backup is recovery: the checkpoint, then the log replayed up to the noted LSN. An **incremental**
backup (``since=`` a previous backup) hard-links every file that the previous backup holds with the same name,
size and checksum instead of copying it: only new checkpoint files and new log bytes are written.

:func:`restore` checks every file's size and checksum against ``BACKUP.json`` before it writes anything, then
copies the backup into a new folder (never hard links: the restored database will change its files) that is
renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CorruptFileError, InvalidInputError
from ..fileformat import fsync_path
from ._io import storage_error

if TYPE_CHECKING:
    from .collection import Collection

BACKUP_FILE = "BACKUP.json"
FORMAT = "simdex-backup"
_CHUNK = 1 << 20


def _digest(path: Path, length: int | None = None) -> str:
    h = hashlib.blake2b(digest_size=16)
    left = length
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(_CHUNK if left is None else min(_CHUNK, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


class _Writer:
    """Puts files into a backup folder: hard links where it can (and the file is immutable), else copies; reuses
    the previous backup's identical files; records sizes and checksums."""

    def __init__(self, root: Path, previous: dict[str, Any] | None, previous_root: Path | None) -> None:
        self.root, self.previous, self.previous_root = root, previous or {}, previous_root
        self.files: dict[str, dict[str, Any]] = {}
        self.copied = self.linked = 0

    def _from_previous(self, rel: str, size: int, digest: str | None) -> bool:
        old = self.previous.get(rel)
        if old is None or old["size"] != size or (digest is not None and old["blake2b"] != digest):
            return False
        try:
            os.link(self.previous_root / rel, self.root / rel)
        except OSError:
            return False
        self.files[rel] = dict(old)
        self.linked += size
        return True

    def add(self, source: Path, rel: str, *, immutable: bool, length: int | None = None, link: bool = True) -> None:
        """``source`` (its first ``length`` bytes) as ``rel`` in the backup. ``immutable``: the source never
        changes (it may be hard-linked); ``link=False``: always a copy of its own (a file that opening the backup
        as a database would change, such as ``meta.sqlite``)."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        size = source.stat().st_size if length is None else length
        # a file the previous backup holds under the same name and size: a checkpoint file (named once, never
        # changed) needs no reading; a log segment is compared by checksum
        if link and immutable and self._from_previous(rel, size, None):
            return
        digest = _digest(source, length)
        if link and not immutable and self._from_previous(rel, size, digest):
            return
        if link and immutable and length is None:
            try:
                os.link(source, target)
                self.linked += size
                self.files[rel] = {"size": size, "blake2b": digest}
                return
            except OSError:
                pass  # another file system, or links refused: copied below
        with open(source, "rb") as src, open(target, "wb") as dst:
            left = size
            while left > 0:
                block = src.read(min(_CHUNK, left))
                if not block:
                    raise CorruptFileError(f"{source} ended before its {size} bytes were copied")
                dst.write(block)
                left -= len(block)
            dst.flush()
            os.fsync(dst.fileno())
        self.copied += size
        self.files[rel] = {"size": size, "blake2b": digest}


def backup_collection(collection: Collection, writer: _Writer, prefix: str) -> dict[str, Any]:
    """Copy one collection into the backup under ``prefix`` (``collections/<name>``); returns its entry."""
    with collection._maintenance:  # no checkpoint replaces or removes a file until the copy is done
        with collection._writer:  # between two whole writes
            lsn = collection._applied_lsn
            manifest = collection._manifest
            logs = [(path, path.stat().st_size) for _, path in collection._wal._files]
        path = collection.path
        writer.add(path / "config.json", f"{prefix}/config.json", immutable=False)
        if manifest is not None:
            writer.add(path / "MANIFEST", f"{prefix}/MANIFEST", immutable=False)
            for key in ("main", "tomb", "growing", "meta"):
                name = manifest.get(key)
                if not name:
                    continue
                source = path / name
                if source.is_dir():  # a build-once index's folder
                    for file in sorted(p for p in source.rglob("*") if p.is_file()):
                        writer.add(file, f"{prefix}/{file.relative_to(path).as_posix()}", immutable=True)
                else:
                    writer.add(source, f"{prefix}/{name}", immutable=True)
            if manifest.get("vectors"):  # appended to after the rows the checkpoint reads: those rows only
                writer.add(path / manifest["vectors"], f"{prefix}/{manifest['vectors']}", immutable=False,
                           length=manifest["vector_rows"] * collection.dim * 4)
            if manifest.get("meta"):  # recovery starts from the checkpoint's copy of the metadata store
                writer.add(path / manifest["meta"], f"{prefix}/meta.sqlite", immutable=True, link=False)
        for index, (log, size) in enumerate(logs):
            last = index == len(logs) - 1
            writer.add(log, f"{prefix}/wal/{log.name}", immutable=not last, length=size if last else None)
    return {"lsn": lsn, "checkpoint": manifest["gen"] if manifest else None,
            "checkpoint_lsn": manifest["lsn"] if manifest else 0}


def _into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` to ``dest`` (an empty folder there is replaced) and make it durable."""
    if dest.exists():
        dest.rmdir()
    os.replace(tmp, dest)
    fsync_path(dest.parent)


def backup(collections: dict[str, Collection], dest: str | os.PathLike, since: str | os.PathLike | None = None
           ) -> dict[str, Any]:
    """Back up ``collections`` into the new folder ``dest`` (see the module docstring); ``since``: a previous
    backup whose identical files are hard-linked instead of copied. Returns what ``BACKUP.json`` records, with
    the bytes copied and linked."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InvalidInputError(f"backup destination {dest} exists and is not empty")
    previous, previous_root = None, None
    if since is not None:
        previous_root = Path(since)
        try:
            previous = read_manifest(previous_root)["files"]
        except CorruptFileError as exc:
            raise InvalidInputError(f"since: {exc}") from None
    started = time.time()
    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        writer = _Writer(tmp, previous, previous_root)
        entries = {name: backup_collection(col, writer, f"collections/{name}")
                   for name, col in sorted(collections.items())}
        body = {"format": FORMAT, "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "since": None if since is None else str(Path(since).resolve()), "collections": entries,
                "files": writer.files, "bytes_copied": writer.copied, "bytes_linked": writer.linked,
                "seconds": round(time.time() - started, 3)}
        with open(tmp / BACKUP_FILE, "w") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _into_place(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(exc, "write the backup", dest) from None
    return body


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The ``BACKUP.json`` of the backup at ``root``; CorruptFileError if it is missing or not one."""
    path = Path(root) / BACKUP_FILE
    try:
        body = json.loads(path.read_text())
        if body.get("format") != FORMAT or not isinstance(body.get("files"), dict):
            raise ValueError("not a simdex backup")
        return body
    except FileNotFoundError:
        raise CorruptFileError(f"{root} is not a simdex backup: it has no {BACKUP_FILE}") from None
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is unreadable ({exc})") from None


def verify(root: str | os.PathLike) -> dict[str, Any]:
    """Check every file of the backup at ``root`` against ``BACKUP.json`` (size and checksum): CorruptFileError
    naming the first file that differs or is missing. Returns the manifest."""
    root = Path(root)
    body = read_manifest(root)
    for rel, entry in sorted(body["files"].items()):
        path = root / rel
        if not path.is_file():
            raise CorruptFileError(f"backup file {rel} is missing")
        if path.stat().st_size != entry["size"]:
            raise CorruptFileError(f"backup file {rel} has {path.stat().st_size} bytes, not {entry['size']}")
        if _digest(path) != entry["blake2b"]:
            raise CorruptFileError(f"backup file {rel} does not match its checksum")
    return body


def restore(source: str | os.PathLike, dest: str | os.PathLike) -> dict[str, Any]:
    """Restore the backup at ``source`` into the new database folder ``dest``: every checksum is checked first
    (nothing is written if one fails), then the files are copied into a temporary folder renamed to ``dest``."""
    source, dest = Path(source), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InvalidInputError(f"restore destination {dest} exists and is not empty; restore into a new folder")
    body = verify(source)
    tmp = dest.parent / f".{dest.name}.restoring"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel in body["files"]:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, target)
        (tmp / "collections").mkdir(parents=True, exist_ok=True)
        for rel in body["files"]:
            fsync_path(tmp / rel)
        _into_place(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(exc, "restore the backup into", dest) from None
    return body
