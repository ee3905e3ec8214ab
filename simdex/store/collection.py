"""A durable collection of records ``(id, vector, metadata, document)``.

Layers, from the bottom:

- **write-ahead log** (:mod:`.wal`): every write is a checksummed record, fsynced before it is acknowledged;
- **metadata** (:mod:`.metadata`): SQLite rows ``id -> (rid, metadata, document)``, the target of ``where``;
- **vectors**: a *main* HNSW index over most rows and a small *growing* exact index over the newest ones. Writes
  only touch the growing part (and mark deletions), so they are cheap; a background optimizer folds the growing
  part into a copy of the main index and swaps the copy in, so searches never wait for index building;
- **checkpoints**: the in-memory vector state is written to checksummed files (write-new-then-rename) under a
  ``MANIFEST``; the log is then cut back to the previous checkpoint, so one damaged checkpoint can still be
  recovered from the one before it plus the log.

Each version of a record has its own row id (rid): an upsert of an existing id tombstones the old rid and adds
a new one, so index entries are never changed in place.

Concurrency: one writer at a time (``_writer``), many readers. Logging and fsync happen outside the
readers-writer lock; applying a logged write to SQLite and memory happens under its write side, so a reader
always sees a state between two whole writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import warnings
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import fileformat
from .._validate import check_dim, check_positive_int, check_texts, check_vectors
from ..dense import FlatIndex, HNSWIndex, WindowIndex
from ..errors import (CorruptDatabaseError, CorruptFileError, DimensionMismatchError, InvalidInputError,
                      InvalidTypeError, ReadOnlyError, StorageError, TruncatedTextWarning, UnknownIdError)
from ..index import Index, write_snapshot
from . import records as rec
from ._io import fsync_dir, storage_error
from ._rwlock import RWLock
from .api import SEARCH_MODES, CollectionAPI
from .filters import label_value, window_bounds
from .metadata import MetadataStore
from .wal import CorruptLogError, WriteAheadLog

if TYPE_CHECKING:
    from ..embed import Embedder
    from ..sparse import SparseIndex

log = logging.getLogger("simdex.store")

INCLUDE_CHOICES = ("metadatas", "documents", "embeddings", "distances")
DEFAULT_SEARCH_INCLUDE = ("metadatas", "documents", "distances")
DEFAULT_GET_INCLUDE = ("metadatas", "documents")
INDEX_KINDS = ("hnsw", "flat")
HNSW_PARAMS = ("M", "ef_construction", "ef_search", "seed")
MANIFEST = "MANIFEST"
LABEL_GRAPH_MIN = 2000
LABEL_CHECK_SECONDS = 5.0
# writes wait for a checkpoint once the log holds this many checkpoint intervals of records (checkpoints failing)
LOG_STALL_FACTOR = 4
ALLOW_CACHE_ENTRIES = 32


def check_include(include: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if include is None:
        return default
    if isinstance(include, str):
        include = [include]
    bad = [i for i in include if i not in INCLUDE_CHOICES]
    if bad or not isinstance(include, (list, tuple)):
        raise InvalidInputError(f"include must be a list of {INCLUDE_CHOICES}; got {include!r}")
    return tuple(include)


def embedder_info(embedder: Embedder) -> dict[str, Any]:
    """What a collection records of its embedder, to rebuild it on open and to refuse another model."""
    return {"name": embedder.name, "dim": int(embedder.dim), "fingerprint": embedder.fingerprint,
            "max_tokens": embedder.max_tokens, "normalized": bool(embedder.normalized)}


def check_config(dim: Any, metric: Any, index: Any, params: dict[str, Any], text: Any = False,
                 window_field: Any = None, label_field: Any = None, embedder: Embedder | None = None
                 ) -> dict[str, Any]:
    from .._validate import check_metric
    dim = check_dim(dim)
    metric = check_metric(metric)
    if index not in INDEX_KINDS:
        raise InvalidInputError(f"index must be one of {INDEX_KINDS}; got {index!r}")
    unknown = set(params) - (set(HNSW_PARAMS) if index == "hnsw" else set())
    if unknown:
        raise InvalidInputError(f"unknown parameter(s) for a {index} index: {sorted(unknown)}")
    if index == "hnsw":
        HNSWIndex(dim, metric, **params)  # validates the values
    if not isinstance(text, bool):
        raise InvalidInputError(f"text must be True or False; got {text!r}")
    if text:
        from ..sparse import Analyzer
        Analyzer()  # fails now, with what to install, if no stemmer is available
    from .filters import _FIELD
    for name, field in (("window_field", window_field), ("label_field", label_field)):
        if field is not None and (not isinstance(field, str) or not _FIELD.match(field)):
            raise InvalidInputError(f"{name} must be a metadata field name (letters, digits, '_', '-', '.' "
                                    f"between nested keys); got {field!r}")
    if embedder is not None and embedder.dim != dim:
        raise DimensionMismatchError(f"dim is {dim}, but the embedder {embedder.name!r} makes {embedder.dim}-d vectors")
    return {"dim": dim, "metric": metric, "index": index, "params": dict(params), "text": text,
            "window_field": window_field, "label_field": label_field,
            "embedder": None if embedder is None else embedder_info(embedder)}


def _warn(notes: list[str]) -> None:
    for note in notes:
        warnings.warn(TruncatedTextWarning(note), stacklevel=3)


def _remove_present(index: Any, rids: np.ndarray) -> None:
    """Remove those of ``rids`` that ``index`` holds (a side index need not hold every record)."""
    present = rids[index._idmap.lookup(rids) >= 0]
    if present.size:
        index.remove(present)


def _field_values(metadatas: list[str], field: str) -> list[Any]:
    """The value of the metadata ``field`` (``a.b`` for nested keys) in each record's JSON, None where absent."""
    path = field.split(".")
    out = []
    for meta in metadatas:
        value: Any = json.loads(meta) if meta else None
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        out.append(value)
    return out


class Collection(CollectionAPI):
    """Records with vectors, metadata and documents, searchable by vector with metadata filters.

    Obtain one from :meth:`simdex.Database.create_collection` or :meth:`~simdex.Database.get_collection`.
    """

    def __init__(self, path: Path, name: str, config: dict[str, Any], *, sync: str, read_only: bool,
                 repair: bool, merge_rows: int = 20_000, checkpoint_bytes: int = 64 << 20,
                 log_segment_bytes: int = 64 << 20) -> None:
        self.path = path
        self.name = name
        self.dim: int = config["dim"]
        self.metric: str = config["metric"]
        self.index_kind: str = config["index"]
        self.params: dict[str, Any] = config["params"]
        # text=True: the documents are also indexed for BM25 (a SparseIndex keyed by rid, rebuilt from the
        # metadata store on open, so it needs no files of its own and nothing is lost in a crash)
        self.text: bool = bool(config.get("text", False))
        # embedder: documents without vectors and text queries are embedded by it; loaded on first use (by its
        # name), or attached by the database; one of another name, dimension or weights is refused
        self.embedder_info: dict[str, Any] | None = config.get("embedder")
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        self._sparse: SparseIndex | None = None
        # window_field: numeric range filters on that metadata field are answered by a WindowIndex keyed by rid
        # (like the BM25 index it has no files: it is rebuilt from the metadata store on open, its points first
        # scanned exactly, and its tree built by the background optimizer)
        self.window_field: str | None = config.get("window_field")
        self._window: WindowIndex | None = None
        self._window_pending: list[tuple[str, Any]] | None = None
        self._window_maintenance = threading.Lock()
        # label_field: string equality filters on that metadata field ({"lang": "de"}) are answered by one HNSW
        # graph per value with at least label_graph_min records (keyed by rid), as in LabelIndex: an unfiltered
        # walk on the value's own graph instead of a filtered walk on the main graph. The graphs have no files:
        # the background optimizer builds them from the metadata store (after open, and when a value grows past
        # the threshold); until then such filters take the general path.
        self.label_field: str | None = config.get("label_field")
        self.label_graph_min = LABEL_GRAPH_MIN
        self._label_graphs: dict[str, HNSWIndex] = {}
        self._label_pending: list[tuple[str, Any]] | None = None
        self._label_maintenance = threading.Lock()
        self._label_checked: tuple[int, float] = (-1, -float("inf"))  # (lsn, time) of the last check that found none
        self.read_only = read_only
        self.merge_rows = merge_rows
        self.checkpoint_bytes = checkpoint_bytes
        self.log_segment_bytes = log_segment_bytes
        self.recovery_notes: list[str] = []
        self.background_error: str | None = None
        self._rw = RWLock()
        # where filter -> (log position it was evaluated at, allowed rids): a filter repeated across queries is
        # evaluated in SQLite once per version of the data
        self._allow_cache: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()
        self._allow_cache_lock = threading.Lock()
        self._writer = threading.Lock()  # one logged write at a time
        self._fsyncer: ThreadPoolExecutor | None = None
        self._maintenance = threading.Lock()  # one merge or checkpoint at a time
        self._closed = False
        self._last_write = time.monotonic()
        self._merging_deletes: list[np.ndarray] | None = None
        self._saved_main: tuple[HNSWIndex, str] | None = None
        self._manifest: dict[str, Any] | None = None
        self._prev_manifest: dict[str, Any] | None = None
        self._main: HNSWIndex | None = None
        self._growing: FlatIndex = FlatIndex(self.dim, self.metric)
        self._next_rid = 0
        self._last_gen = 0  # the highest checkpoint number used or seen
        self._recover(sync, repair)

    # ---- recovery ------------------------------------------------------------------------------------------------
    def _recover(self, sync: str, repair: bool) -> None:
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
                self._main, self._growing = None, FlatIndex(self.dim, self.metric)
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
        if self.text:
            self._sparse = self._build_sparse()
        if self.window_field is not None:
            self._window = self._build_window()
        if replayed:
            self.recovery_notes.append(f"replayed {replayed} log record(s) after checkpoint lsn {base_lsn}")

    def _build_sparse(self) -> SparseIndex:
        """The BM25 index of every current record's document, from the metadata store."""
        from ..sparse import SparseIndex
        index = SparseIndex("bm25")
        rids, docs = self._meta.documents()
        for start in range(0, len(rids), 50_000):
            index.add(docs[start:start + 50_000], rids[start:start + 50_000])
        index.merge(1)
        return index

    def _new_window(self) -> WindowIndex:
        params = {k: v for k, v in self.params.items() if k in ("M", "ef_construction")}
        return WindowIndex(self.dim, self.metric, base_params={"M": 16, "ef_construction": 100, **params},
                           auto_rebuild=False)

    def _build_window(self) -> WindowIndex:
        """The window index of every current record whose ``window_field`` is a number, all in its exactly
        scanned buffer (the optimizer builds the tree)."""
        index = self._new_window()
        rids, values = self._meta.numeric_field(self.window_field)
        for start in range(0, rids.shape[0], 50_000):
            part = rids[start:start + 50_000]
            index.add(self._vectors_of(part), values[start:start + 50_000], part)
        return index

    def _window_add(self, rids: np.ndarray, vectors: np.ndarray, metadatas: list[str] | None) -> None:
        if self._window is None or metadatas is None:
            return
        keep, values = [], []
        for j, value in enumerate(_field_values(metadatas, self.window_field)):
            # the same records the SQL filter sees as numbers (JSON true/false are not numbers there)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                keep.append(j)
                values.append(float(value))
        if keep:
            self._window.add(vectors[keep], np.array(values), rids[keep])
            if self._window_pending is not None:
                self._window_pending.append(("add", (vectors[keep], np.array(values), rids[keep])))

    def _window_remove(self, rids: np.ndarray) -> None:
        if self._window is None:
            return
        _remove_present(self._window, rids)
        if self._window_pending is not None:
            self._window_pending.append(("remove", rids))

    def _label_add(self, rids: np.ndarray, vectors: np.ndarray, metadatas: list[str] | None) -> None:
        if self.label_field is None or metadatas is None or not (self._label_graphs or
                                                                 self._label_pending is not None):
            return
        rows: dict[str, list[int]] = {}
        for j, value in enumerate(_field_values(metadatas, self.label_field)):
            if isinstance(value, str):
                rows.setdefault(value, []).append(j)
        for value, js in rows.items():
            graph = self._label_graphs.get(value)
            if graph is not None:
                graph.add(vectors[js], rids[js])
            if self._label_pending is not None:
                self._label_pending.append(("add", (value, vectors[js], rids[js])))

    def _label_remove(self, rids: np.ndarray) -> None:
        for graph in self._label_graphs.values():
            _remove_present(graph, rids)
        if self._label_pending is not None:
            self._label_pending.append(("remove", rids))

    def _open_metadata(self, base_lsn: int) -> MetadataStore:
        """Open the metadata store; restore it from the checkpoint's snapshot if it is damaged or holds records
        the log cannot account for (ahead of a log cut by repair, or older than the log's first record)."""
        live = self.path / "meta.sqlite"
        if self.read_only:
            # work on a private copy, so that the log tail can be applied without touching any file
            self._ro_copy = Path(tempfile.mkdtemp(prefix="simdex-readonly-"))
            for suffix in ("", "-wal"):
                source = self.path / f"meta.sqlite{suffix}"
                if source.exists():
                    shutil.copy2(source, self._ro_copy / source.name)
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
            main = Index.load(self.path / manifest["main"], mmap=False)
            if not isinstance(main, HNSWIndex) or main.dim != self.dim:
                raise CorruptFileError("main index has the wrong kind or dimension")
            main.consolidate_threshold = 1.0  # consolidation happens on copies, never under readers
            _, _, tomb = fileformat.load_arrays(self.path / manifest["tomb"], mmap=False)
            deleted = tomb["deleted"]
            if deleted.shape != (main._n,):
                raise CorruptFileError("tombstone file does not match the main index")
            newly = (deleted != 0) & (main._deleted[:main._n] == 0)
            if newly.any():
                main.remove(main._idmap.slot_ids[np.flatnonzero(newly)])
            self._saved_main = (main, manifest["main"])
        self._main, self._growing = main, growing

    # ---- applying logged operations (caller holds the write side, or is recovering) ------------------------------
    def _apply_metadata(self, lsn: int, op: rec.LogOp) -> None:
        if op.kind == rec.UPSERT:
            self._meta.apply_upsert(lsn, op.ids, op.rids, op.metadatas, op.documents)
        else:
            self._meta.apply_delete(lsn, op.ids)

    def _apply_vectors(self, op: rec.LogOp) -> None:
        if op.kind == rec.UPSERT:
            self._tombstone(op.old_rids[op.old_rids >= 0])
            self._growing.add_validated(op.vectors, op.rids)
            self._window_add(op.rids, op.vectors, op.metadatas)
            self._label_add(op.rids, op.vectors, op.metadatas)
            if self._sparse is not None and op.documents is not None:
                with_doc = [j for j, d in enumerate(op.documents) if d is not None]
                if with_doc:
                    self._sparse.add([op.documents[j] for j in with_doc], op.rids[with_doc])
        else:
            self._tombstone(op.rids)

    def _tombstone(self, rids: np.ndarray) -> None:
        if rids.size == 0:
            return
        in_growing = self._growing._idmap.lookup(rids) >= 0
        if in_growing.any():
            self._growing.remove(rids[in_growing])
        rest = rids[~in_growing]
        if rest.size and self._main is not None:
            _remove_present(self._main, rest)
        if self._merging_deletes is not None:
            self._merging_deletes.append(rids)
        self._window_remove(rids)
        self._label_remove(rids)
        if self._sparse is not None:
            _remove_present(self._sparse, rids)

    # ---- writes --------------------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._closed:
            raise InvalidInputError(f"collection {self.name!r} is closed")
        if self.read_only:
            raise ReadOnlyError(f"collection {self.name!r} is open read-only")

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

    def _stage_metadata(self, lsn: int, op: rec.LogOp) -> None:
        if op.kind == rec.UPSERT:
            self._meta.stage_upsert(lsn, op.ids, op.rids, op.metadatas, op.documents)
        else:
            self._meta.stage_delete(lsn, op.ids)

    def _log_and_apply(self, payload: bytes, op: rec.LogOp) -> None:
        """Log ``op``, make it durable, write it to SQLite and apply it to the vectors. If a step fails the write
        did not happen: SQLite is rolled back, the log record is taken back (so it cannot reappear after a
        restart) and a :class:`StorageError` names the file and the cause."""
        lsn = self._wal.append(payload)  # on failure the log holds nothing of it
        committed = False
        try:
            if self._wal.sync_mode == "always":
                # The fsync (which releases the GIL and mostly waits on the disk) runs beside the SQLite writes.
                # The rows stay in an open transaction until the fsync returns, so no reader (and no crash) can
                # see a write that is not yet durable.
                if self._fsyncer is None:
                    self._fsyncer = ThreadPoolExecutor(1, thread_name_prefix=f"simdex-fsync-{self.name}")
                durable = self._fsyncer.submit(self._wal.commit, lsn)
                try:
                    self._stage_metadata(lsn, op)
                finally:
                    durable.exception()  # wait for the fsync before touching the log or the connection again
                durable.result()
            else:
                self._stage_metadata(lsn, op)
            with self._rw.write():
                self._meta.commit()
                committed = True
                self._apply_vectors(op)
                self._applied_lsn = lsn
        except BaseException as exc:
            if committed:
                raise  # durable and in SQLite: not a storage failure
            self._abort_write(lsn, exc)
        self._last_write = time.monotonic()

    def _abort_write(self, lsn: int, exc: BaseException) -> None:
        """Undo a logged write whose fsync or SQLite step failed, and raise ``exc`` as a StorageError."""
        problems = []
        try:
            self._meta.rollback()
        except sqlite3.Error as undo:
            problems.append(f"rolling back SQLite failed too ({undo})")
        try:
            self._wal.cancel(lsn)
        except StorageError as cut:
            problems.append(f"taking the record back failed too ({cut})")
        if isinstance(exc, sqlite3.Error):
            error = storage_error(exc, "write to the metadata store", self._meta.path)
        elif isinstance(exc, OSError):
            error = storage_error(exc, "write to the write-ahead log in", self._wal.directory)
        else:
            raise exc
        if problems:
            error = StorageError(f"{error}; {'; '.join(problems)}", errno=error.errno, path=error.filename)
        raise error from None

    # ---- the embedder -------------------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """The collection's embedder (loaded on first use); InvalidInputError if it has none."""
        if self._embedder is None:
            info = self.embedder_info
            if info is None:
                raise InvalidInputError(f"collection {self.name!r} has no embedder; create it with "
                                        f"embedder='minilm' to store and search text")
            with self._embedder_lock:
                if self._embedder is None:
                    from ..embed import get_embedder
                    try:
                        embedder = get_embedder(info["name"])
                    except InvalidInputError:
                        raise InvalidInputError(
                            f"collection {self.name!r} embeds with {info['name']!r}, which simdex cannot load by "
                            f"name; attach it: db.get_collection({self.name!r}, embedder=...) or "
                            f"simdex.connect(path, embedders={{{info['name']!r}: ...}})") from None
                    self._check_embedder(embedder)
                    self._embedder = embedder
        return self._embedder

    def attach_embedder(self, embedder: Embedder) -> None:
        """Use ``embedder`` (an instance of the model the collection was created with) for its texts."""
        self._check_embedder(embedder)
        self._embedder = embedder

    def _check_embedder(self, embedder: Embedder) -> None:
        info = self.embedder_info
        if info is None:
            raise InvalidInputError(f"collection {self.name!r} has no embedder")
        got = embedder_info(embedder)
        differ = [key for key in ("name", "dim", "fingerprint") if got[key] != info[key]]
        if differ:
            raise InvalidInputError(
                f"collection {self.name!r} was embedded with {info['name']!r} (dim {info['dim']}, weights "
                f"{info['fingerprint']}); the embedder given is {got['name']!r} (dim {got['dim']}, weights "
                f"{got['fingerprint']}): vectors of different models must not be mixed")

    def _vectors_for(self, ids: Any, vectors: Any, documents: Any) -> Any:
        """``vectors``, with the rows that are None (or all, when it is None) embedded from ``documents``."""
        partial = isinstance(vectors, (list, tuple)) and any(v is None for v in vectors)
        if vectors is not None and not partial:
            return vectors
        if self.embedder_info is None:
            raise InvalidInputError(f"vectors is required: collection {self.name!r} has no embedder (create it with "
                                    f"embedder='minilm' to upsert documents alone)")
        if documents is None:
            raise InvalidInputError("give vectors, or documents for the collection's embedder to embed")
        docs = check_texts(documents, "documents", allow_none=True)
        n = len(ids) if isinstance(ids, (list, tuple)) else 1
        if len(docs) != n or (partial and len(vectors) != n):
            raise InvalidInputError(f"documents{' and vectors' if partial else ''} must have one entry per id ({n})")
        rows = [i for i, v in enumerate(vectors) if v is None] if partial else list(range(n))
        empty = [i for i in rows if docs[i] is None]
        if empty:
            raise InvalidInputError(f"documents[{empty[0]}] is None and there is no vector for ids[{empty[0]}]: "
                                    f"nothing to embed")
        embedded = self.embedder([docs[i] for i in rows])
        if not partial:
            return embedded
        out = [v for v in vectors]
        for j, i in enumerate(rows):
            out[i] = embedded[j]
        return out

    def upsert(self, ids: Any, vectors: Any = None, metadatas: Any = None, documents: Any = None, *,
               max_batch: int | None = None) -> int:
        """See :meth:`CollectionAPI.upsert`. Durable when this returns (see the database's ``sync``)."""
        self._check_writable()
        if max_batch is not None and isinstance(ids, (list, tuple)) and len(ids) > max_batch:
            raise InvalidInputError(f"a batch holds at most {max_batch} records; got {len(ids)}")
        vectors = self._vectors_for(ids, vectors, documents)  # embedding runs before any lock is taken
        batch = rec.check_upsert(ids, vectors, metadatas, documents, self.dim, self.metric == "cosine", max_batch)
        self._make_room_in_log()
        with self._writer:
            existing = self._meta.current_rids(batch.ids)
            old = np.array([existing.get(i, -1) for i in batch.ids], np.int64)
            rids = np.arange(self._next_rid, self._next_rid + len(batch.ids), dtype=np.int64)
            self._next_rid += len(batch.ids)
            op = rec.LogOp(rec.UPSERT, batch.ids, rids, old, batch.vectors, batch.metadatas, batch.documents)
            self._log_and_apply(rec.encode_upsert(batch, rids, old), op)
        return len(batch.ids)

    def delete(self, ids: Any = None, where: Any = None, *, missing_ok: bool = False) -> int:
        """Delete records by id, by ``where`` filter, or both (ids that also match the filter).

        Unknown ids raise :class:`UnknownIdError` (nothing is deleted) unless ``missing_ok``. Returns the number
        deleted.
        """
        self._check_writable()
        if ids is None and where is None:
            raise InvalidInputError("delete needs ids, where, or both (to delete everything use where={})")
        id_list = None if ids is None else rec.check_record_ids(ids)
        self._make_room_in_log()
        with self._writer:
            if where is not None:
                matches = dict(self._meta.ids_where(where))
                if id_list is not None:
                    matches = {i: matches[i] for i in id_list if i in matches}
            else:
                matches = self._meta.current_rids(id_list)
                missing = [i for i in id_list if i not in matches]
                if missing and not missing_ok:
                    raise UnknownIdError(f"id {missing[0]!r} is not in collection {self.name!r} "
                                         f"({len(missing)} unknown id(s)); nothing was deleted")
            if not matches:
                return 0
            del_ids = list(matches)
            rids = np.array([matches[i] for i in del_ids], np.int64)
            self._log_and_apply(rec.encode_delete(del_ids, rids), rec.LogOp(rec.DELETE, del_ids, rids))
        return len(del_ids)

    # ---- reads ---------------------------------------------------------------------------------------------------
    def count(self) -> int:
        with self._rw.read():
            return len(self._growing) + (len(self._main) if self._main is not None else 0)

    def __len__(self) -> int:
        return self.count()

    def _vectors_of(self, rids: np.ndarray) -> np.ndarray:
        out = np.empty((rids.shape[0], self.dim), np.float32)
        in_growing = self._growing._idmap.lookup(rids) >= 0
        if in_growing.any():
            out[in_growing] = self._growing.get_vectors(rids[in_growing])
        if (~in_growing).any():
            out[~in_growing] = self._main.get_vectors(rids[~in_growing])
        return out

    def get(self, ids: Any = None, where: Any = None, limit: int | None = None, offset: int = 0,
            include: Any = None) -> list[dict[str, Any]]:
        """Records by id (in the given order; unknown ids are left out) and/or ``where`` filter (in id order).

        Each record is a dict with ``id`` and the fields in ``include`` (``metadata``, ``document``,
        ``embedding``).
        """
        include = check_include(include, DEFAULT_GET_INCLUDE)
        id_list = None if ids is None else rec.check_record_ids(ids)
        if limit is not None:
            limit = check_positive_int(limit, "limit", minimum=0)
        offset = check_positive_int(offset, "offset", minimum=0)
        with self._rw.read():
            rows = self._meta.get(id_list, where, limit, offset)
            vectors = self._vectors_of(np.array([r[1] for r in rows], np.int64)) \
                if "embeddings" in include and rows else None
        return [self._record(r[0], r[2], r[3], include, None if vectors is None else vectors[j])
                for j, r in enumerate(rows)]

    @staticmethod
    def _record(id_: str, meta: str, doc: str | None, include: tuple[str, ...], vector: np.ndarray | None,
                value: float | None = None, key: str = "distance") -> dict[str, Any]:
        out: dict[str, Any] = {"id": id_}
        if value is not None:
            out[key] = value
        if "metadatas" in include:
            out["metadata"] = json.loads(meta)
        if "documents" in include:
            out["document"] = doc
        if vector is not None:
            out["embedding"] = vector.tolist()
        return out

    def _resolve_mode(self, mode: Any, has_vector: bool) -> str:
        """The search mode of a text query (see :meth:`CollectionAPI.search`), checked against what the
        collection has."""
        if mode is None:
            if has_vector or (self.embedder_info is not None and self.text):
                mode = "hybrid"
            elif self.embedder_info is not None:
                mode = "dense"
            elif self.text:
                mode = "bm25"
            else:
                raise InvalidInputError(f"collection {self.name!r} has no text index and no embedder: search it by "
                                        f"vector, or create it with text=True (BM25) or embedder='minilm'")
        if mode not in SEARCH_MODES:
            raise InvalidInputError(f"mode must be one of {SEARCH_MODES}; got {mode!r}")
        if mode in ("bm25", "hybrid") and not self.text:
            raise InvalidInputError(f"collection {self.name!r} has no text index (mode {mode!r} needs BM25); create "
                                    f"it with text=True")
        if mode in ("dense", "hybrid") and not has_vector and self.embedder_info is None:
            raise InvalidInputError(f"collection {self.name!r} has no embedder (mode {mode!r} needs one to turn the "
                                    f"text into a vector); pass a vector, or create it with embedder='minilm'")
        if mode == "bm25" and has_vector:
            raise InvalidInputError("mode 'bm25' takes no vector")
        return mode

    def _embed_queries(self, texts: list[str], notes: list[str]) -> np.ndarray:
        """(n, dim) query vectors of ``texts``; a note for each text the embedder truncates."""
        embedder = self.embedder
        if embedder.max_tokens:
            counts = embedder.count_tokens(texts)
            for i in np.flatnonzero(counts > embedder.max_tokens):
                notes.append(f"query {int(i)} has {int(counts[i])} tokens; {embedder.name} reads only the first "
                             f"{embedder.max_tokens}")
        return check_vectors(embedder(texts, progress=False), self.dim, "embedded queries",
                             normalize=self.metric == "cosine")

    def search(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
               ef: int | None = None, *, text: str | None = None, mode: str | None = None, fusion: str = "rrf",
               alpha: float = 0.5, norm: str = "minmax", depth: int | None = None) -> list[dict[str, Any]]:
        """See :meth:`CollectionAPI.search`."""
        hits, notes = self.search_with_notes(vector, k, where, include, ef, text=text, mode=mode, fusion=fusion,
                                             alpha=alpha, norm=norm, depth=depth)
        _warn(notes)
        return hits

    def search_with_notes(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
                          ef: int | None = None, *, text: str | None = None, mode: str | None = None,
                          fusion: str = "rrf", alpha: float = 0.5, norm: str = "minmax", depth: int | None = None
                          ) -> tuple[list[dict[str, Any]], list[str]]:
        """:meth:`search`, returning the warnings (truncated query text) instead of issuing them: the server puts
        them in its response."""
        notes: list[str] = []
        if text is None:
            if mode is not None:
                raise InvalidInputError("mode applies to text queries; give text=...")
            if vector is None:
                raise InvalidInputError("search needs a vector, a text, or both")
            arr = np.asarray(vector) if not isinstance(vector, np.ndarray) else vector
            if arr.ndim == 1:
                arr = arr.reshape(1, -1)
            if arr.ndim != 2 or arr.shape[0] != 1:
                raise InvalidInputError(f"search takes one vector; got shape {arr.shape} (use search_batch)")
            return self.search_batch(arr, k, where, include, ef)[0], notes
        from ..sparse.fusion import FUSIONS, NORMS, fuse
        if not isinstance(text, str):
            raise InvalidTypeError(f"text must be a str; got {type(text).__name__}")
        mode = self._resolve_mode(mode, vector is not None)
        if fusion not in FUSIONS:
            raise InvalidInputError(f"fusion must be one of {FUSIONS}; got {fusion!r}")
        if norm not in NORMS:
            raise InvalidInputError(f"norm must be one of {NORMS}; got {norm!r}")
        k = check_positive_int(k, "k")
        depth = max(k, 100) if depth is None else check_positive_int(depth, "depth")
        include = check_include(include, DEFAULT_SEARCH_INCLUDE)
        if ef is not None:
            ef = check_positive_int(ef, "ef")
        q = None
        if vector is not None:
            q = check_vectors(np.asarray(vector).reshape(1, -1) if np.ndim(vector) == 1 else vector, self.dim,
                              "vector", normalize=self.metric == "cosine")
            if q.shape[0] != 1:
                raise InvalidInputError(f"search takes one vector; got {q.shape[0]}")
        elif mode in ("dense", "hybrid"):
            q = self._embed_queries([text], notes)
        if mode == "dense":
            return self.search_batch(q, k, where, include, ef)[0], notes
        with self._rw.read():
            allowed = None if where is None else self._allowed(where)
            ids, scores = self._text_candidates(text, k if mode == "bm25" else depth, allowed)
            if mode == "hybrid":
                dist, drids = self._dense_candidates(q, depth, allowed, ef, 1)
                keep = drids[0] >= 0
                ids, scores = fuse((drids[0][keep], -dist[0][keep].astype(np.float64)), (ids, scores), k,
                                   fusion=fusion, alpha=alpha, norm=norm)
            return self._hits(ids[None, :], scores[None, :], include, "score")[0], notes

    def _text_candidates(self, text: str, n: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top n (rids, scores) of ``text``; caller holds the read side."""
        sparse = self._sparse
        empty = np.zeros(0, np.int64), np.zeros(0, np.float64)
        if sparse is None or len(sparse) == 0 or not text.strip() or (allowed is not None and not allowed.any()):
            return empty
        scores, rids = sparse.search([text], min(n, len(sparse)), filter=allowed, threads=1)
        keep = rids[0] >= 0
        return rids[0][keep], scores[0][keep].astype(np.float64)

    def _dense_candidates(self, q: np.ndarray, k: int, allowed: np.ndarray | None, ef: int | None,
                          threads: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rids), (nq, <= k) each, nearest first, -1 rids for no hit; caller holds the read side."""
        parts = []
        if allowed is None or allowed.any():
            if self._main is not None and len(self._main):
                parts.append(self._main.search(q, min(k, len(self._main)), ef=ef, filter=allowed,
                                               threads=threads))
            if len(self._growing):
                parts.append(self._growing.search(q, min(k, len(self._growing)), filter=allowed,
                                                  threads=threads))
        if not parts:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        dist = np.concatenate([p[0] for p in parts], axis=1)
        rids = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, 1), np.take_along_axis(rids, order, 1)

    def _hits(self, rids: np.ndarray, values: np.ndarray, include: tuple[str, ...], key: str
              ) -> list[list[dict[str, Any]]]:
        """Result rows -> records; ``values`` go under ``key`` ("distance" only if included)."""
        found = rids[rids >= 0]
        rows = self._meta.fetch(found.tolist()) if found.size else {}
        vectors = self._vectors_of(found) if "embeddings" in include and found.size else None
        vec_of = {} if vectors is None else dict(zip(found.tolist(), vectors))
        with_value = key != "distance" or "distances" in include
        out = []
        for r in range(rids.shape[0]):
            hits = []
            for v, rid in zip(values[r].tolist(), rids[r].tolist()):
                if rid < 0 or rid not in rows:
                    continue
                id_, meta, doc = rows[rid]
                hits.append(self._record(id_, meta, doc, include, vec_of.get(rid), v if with_value else None, key))
            out.append(hits)
        return out

    def search_batch(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None, *, texts: Any = None, mode: str | None = None, fusion: str = "rrf",
                     alpha: float = 0.5, norm: str = "minmax", depth: int | None = None
                     ) -> list[list[dict[str, Any]]]:
        """See :meth:`CollectionAPI.search_batch`."""
        hits, notes = self.search_batch_with_notes(vectors, k, where, include, ef, texts=texts, mode=mode,
                                                   fusion=fusion, alpha=alpha, norm=norm, depth=depth)
        _warn(notes)
        return hits

    def search_batch_with_notes(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                                ef: int | None = None, *, texts: Any = None, mode: str | None = None,
                                fusion: str = "rrf", alpha: float = 0.5, norm: str = "minmax",
                                depth: int | None = None) -> tuple[list[list[dict[str, Any]]], list[str]]:
        """:meth:`search_batch`, returning the warnings instead of issuing them."""
        notes: list[str] = []
        if texts is not None:
            if vectors is not None:
                raise InvalidInputError("give vectors or texts, not both")
            texts = check_texts(texts, "texts")
            if self._resolve_mode(mode, False) != "dense":
                out = []
                for text in texts:
                    hits, more = self.search_with_notes(None, k, where, include, ef, text=text, mode=mode,
                                                        fusion=fusion, alpha=alpha, norm=norm, depth=depth)
                    out.append(hits)
                    notes.extend(more)
                return out, notes
            vectors = self._embed_queries(texts, notes)
        elif vectors is None:
            raise InvalidInputError("search_batch needs vectors or texts")
        elif mode is not None:
            raise InvalidInputError("mode applies to text queries; give texts=...")
        q = check_vectors(vectors, self.dim, "vectors", normalize=self.metric == "cosine")
        k = check_positive_int(k, "k")
        include = check_include(include, DEFAULT_SEARCH_INCLUDE)
        if ef is not None:
            ef = check_positive_int(ef, "ef")
        threads = 1 if q.shape[0] < 8 else None
        with self._rw.read():
            bounds = self._window_bounds(where)
            if bounds is not None:
                dist, rids = self._window_candidates(q, k, bounds, ef, threads)
            elif (graph := self._label_graph(where)) is not None:
                dist, rids = graph.search(q, min(k, len(graph)), ef=ef, threads=threads)
            else:
                allowed = None if where is None else self._allowed(where)
                dist, rids = self._dense_candidates(q, k, allowed, ef, threads)
            if rids.shape[1] == 0:
                return [[] for _ in range(q.shape[0])], notes
            return self._hits(rids, dist, include, "distance"), notes

    def search_by_id(self, ids: Any, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None) -> list[list[dict[str, Any]]]:
        """See :meth:`CollectionAPI.search_by_id`."""
        id_list = rec.check_record_ids(ids)
        if not id_list:
            raise InvalidInputError("ids is empty")
        found = {r["id"]: r["embedding"] for r in self.get(id_list, include=["embeddings"])}
        missing = [i for i in id_list if i not in found]
        if missing:
            raise UnknownIdError(f"id {missing[0]!r} is not in collection {self.name!r}")
        return self.search_batch(np.array([found[i] for i in id_list], np.float32), k, where, include, ef)

    def _window_bounds(self, where: Any) -> tuple[float, float] | None:
        """(lo, hi) when ``where`` is a numeric range on the window field and the window index can answer it."""
        if self._window is None or where is None:
            return None
        return window_bounds(where, self.window_field)

    def _label_graph(self, where: Any) -> HNSWIndex | None:
        """The graph of the value ``where`` asks the label field to equal, if it has one; caller holds the read
        side. It holds exactly the live records with that value (the ones the SQL filter would allow)."""
        if not self._label_graphs or where is None:
            return None
        value = label_value(where, self.label_field)
        graph = self._label_graphs.get(value) if value is not None else None
        return graph if graph is not None and len(graph) else None

    def _window_candidates(self, q: np.ndarray, k: int, bounds: tuple[float, float], ef: int | None,
                           threads: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`_dense_candidates` for a range on the window field; caller holds the read side."""
        window = self._window
        lo, hi = bounds
        if len(window) == 0 or lo > hi:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        return window.search(q, min(k, len(window)), lo, hi, ef=ef, threads=threads)

    def _rid_mask(self, rids: np.ndarray) -> np.ndarray:
        # a boolean mask indexed by rid: the indexes turn it into their slot masks with one gather, where an
        # id array would need a sorted lookup per id on every query
        mask = np.zeros(self._next_rid, bool)
        mask[rids] = True
        return mask

    def _allowed(self, where: Any) -> np.ndarray:
        """Mask over row ids (True = matches ``where``); the caller holds the read side, so the data cannot
        change meanwhile."""
        try:
            key = json.dumps(where, sort_keys=True, allow_nan=True)
        except (TypeError, ValueError):
            return self._rid_mask(self._meta.rids_where(where))  # not JSON: let the compiler report what is wrong
        with self._allow_cache_lock:
            hit = self._allow_cache.get(key)
            if hit is not None and hit[0] == self._applied_lsn:
                self._allow_cache.move_to_end(key)
                return hit[1]
        mask = self._rid_mask(self._meta.rids_where(where))
        with self._allow_cache_lock:
            self._allow_cache[key] = (self._applied_lsn, mask)
            self._allow_cache.move_to_end(key)
            while len(self._allow_cache) > ALLOW_CACHE_ENTRIES:
                self._allow_cache.popitem(last=False)
        return mask

    # ---- maintenance (background optimizer) ----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._rw.read():
            main = self._main
            return {"name": self.name, "dim": self.dim, "metric": self.metric, "index": self.index_kind,
                    "params": self.params, "text": self.text, "embedder": self.embedder_info,
                    "count": len(self._growing) + (len(main) if main else 0),
                    "indexed": len(main) if main else 0, "unindexed": len(self._growing),
                    "deleted_in_index": main._n_deleted if main else 0, "last_lsn": self._applied_lsn,
                    "checkpoint_lsn": self._manifest["lsn"] if self._manifest else 0,
                    "log_bytes": self._wal.size_bytes(), "read_only": self.read_only,
                    "storage_error": self._wal.error,
                    "background_error": self.background_error, "window_field": self.window_field,
                    "window": self._window.tree_stats() if self._window is not None else None,
                    "label_field": self.label_field,
                    "label_graphs": {v: len(g) for v, g in sorted(self._label_graphs.items())}}

    def needs_merge(self, idle_seconds: float = 0.5) -> bool:
        if self.index_kind != "hnsw" or self.read_only or self._closed:
            return False
        n = len(self._growing)
        main_n = self._main._n if self._main is not None else 0
        if self._main is not None and self._main._n_deleted > 0.2 * max(main_n, 1):
            return True
        if n == 0:
            return False
        idle = time.monotonic() - self._last_write > idle_seconds
        return n >= self.merge_rows or n >= max(2048, 0.05 * main_n) or idle

    def merge(self, threads: int | None = None) -> bool:
        """Fold the growing rows into (a copy of) the main HNSW index and swap it in; compact deletions.

        Heavy work runs without any lock that readers or writers wait for. Returns True if it changed anything.
        """
        if self.index_kind != "hnsw" or self.read_only:
            return False
        with self._maintenance:
            with self._rw.write():  # a consistent cut; copying the growing rows is cheap
                moved = self._growing.ids
                vectors = self._growing.get_vectors(moved) if moved.size else None
                base = self._main
                if not moved.size and (base is None or base._n_deleted <= 0.2 * base._n):
                    return False
                self._merging_deletes = []
            try:
                if base is None:
                    new = HNSWIndex(self.dim, self.metric, consolidate_threshold=1.0, **self.params)
                else:
                    new = base.copy()
                if moved.size:
                    new.add(vectors, moved, threads=threads)
                if new._n_deleted > 0.2 * new._n:
                    new.consolidate(threads=threads)
            except BaseException:
                with self._rw.write():
                    self._merging_deletes = None
                raise
            with self._rw.write():
                gone = np.concatenate(self._merging_deletes) if self._merging_deletes else np.empty(0, np.int64)
                self._merging_deletes = None
                _remove_present(new, gone)
                _remove_present(self._growing, moved)
                self._main = new
        return True

    def needs_window_rebuild(self) -> bool:
        window = self._window
        return window is not None and not self._closed and len(window) > 0 and window.needs_rebuild()

    def rebuild_window(self, threads: int | None = None) -> bool:
        """Build the window index's tree over its current points in the background and swap it in; writes that
        arrive meanwhile are applied to the new index before the swap. Returns True if it swapped."""
        with self._window_maintenance:
            with self._rw.write():  # a consistent cut; copying the live rows is cheap next to the build
                old = self._window
                if old is None or len(old) == 0:
                    return False
                ids = old.ids
                vectors, attrs = old.get_vectors(ids), old.get_attributes(ids)
                self._window_pending = []
            try:
                new = self._new_window()
                new.add(vectors, attrs, ids)
                new.rebuild(threads=threads)
            except BaseException:
                with self._rw.write():
                    self._window_pending = None
                raise
            with self._rw.write():
                for kind, args in self._window_pending:
                    if kind == "add":
                        new.add(*args)
                    else:
                        _remove_present(new, args)
                self._window_pending = None
                self._window = new
        return True

    def _label_values_to_build(self) -> dict[str, np.ndarray]:
        """Values of the label field with at least label_graph_min records and no graph yet -> their rids; the
        caller holds a side of the lock."""
        rids, values = self._meta.text_field(self.label_field)
        if not rids.size:
            return {}
        names, inverse, counts = np.unique(np.array(values, dtype=object), return_inverse=True, return_counts=True)
        return {str(names[i]): rids[inverse == i] for i in np.flatnonzero(counts >= self.label_graph_min)
                if str(names[i]) not in self._label_graphs}

    def needs_label_graphs(self) -> bool:
        """Whether some value of the label field has grown past label_graph_min records without a graph. The
        check reads the field of every record, so after one that found nothing it is repeated only when the data
        changed and LABEL_CHECK_SECONDS have passed (a steady stream of writes costs one scan per interval)."""
        lsn, when = self._label_checked
        if self.label_field is None or self._closed or lsn == self._applied_lsn or \
                time.monotonic() - when < LABEL_CHECK_SECONDS:
            return False
        with self._rw.read():
            lsn = self._applied_lsn
            todo = self._label_values_to_build()
        if not todo:
            self._label_checked = (lsn, time.monotonic())
        return bool(todo)

    def _new_label_graph(self) -> HNSWIndex:
        return HNSWIndex(self.dim, self.metric, **{k: v for k, v in self.params.items() if k != "seed"})

    def build_label_graphs(self, threads: int | None = None) -> bool:
        """Build the graphs of the label field's values that reached label_graph_min records, in the background,
        and swap them in; writes that arrive meanwhile are applied to the new graphs before the swap. Returns
        True if it added any."""
        if self.label_field is None:
            return False
        with self._label_maintenance:
            with self._rw.write():  # a consistent cut; copying the rows is cheap next to the build
                todo = self._label_values_to_build()
                if not todo:
                    return False
                vectors = {value: self._vectors_of(rids) for value, rids in todo.items()}
                self._label_pending = []
            try:
                built = {}
                for value, rids in todo.items():
                    graph = self._new_label_graph()
                    graph.add(vectors[value], rids, threads=threads)
                    built[value] = graph
            except BaseException:
                with self._rw.write():
                    self._label_pending = None
                raise
            with self._rw.write():
                for kind, args in self._label_pending:
                    if kind == "add":
                        value, vecs, rids = args
                        if value in built:
                            built[value].add(vecs, rids)
                    else:
                        for graph in built.values():
                            _remove_present(graph, args)
                self._label_pending = None
                self._label_graphs.update(built)
        return True

    def needs_checkpoint(self) -> bool:
        if self.read_only or self._closed:
            return False
        base = self._manifest["lsn"] if self._manifest else 0
        # bytes logged since the last checkpoint, not the log's size: the log keeps the records since the one
        # before, so its size would ask for a checkpoint after every write
        return self._applied_lsn > base and self._wal.appended_bytes - self._log_mark > self.checkpoint_bytes

    def checkpoint(self) -> bool:
        """Write the vector state to new checkpoint files and cut the log back. Readers and writers go on.

        Raises :class:`StorageError` if a file cannot be written (disk full, I/O error): the previous checkpoint
        and the log stay as they were, what this attempt wrote is removed, and nothing is lost."""
        if self.read_only:
            raise ReadOnlyError(f"collection {self.name!r} is open read-only")
        with self._maintenance:
            # a failed attempt's number is never used again (its files may linger where their removal failed)
            gen = max(self._manifest["gen"] if self._manifest else 0, self._last_gen) + 1
            written: list[Path] = []
            try:
                with self._rw.read():
                    lsn, logged = self._applied_lsn, self._wal.appended_bytes
                    if self._manifest is not None and self._manifest["lsn"] == lsn:
                        return False
                    self._last_gen = gen
                    main = self._main
                    main_snapshot = main.snapshot() if main is not None else None
                    growing_snapshot = self._growing.snapshot()
                    next_rid = self._next_rid
                    # the metadata copy must be at exactly this lsn: writers wait for the read side to apply
                    written.append(self.path / f"meta-{gen}.sqlite")
                    self._meta.backup_to(written[-1])
                body: dict[str, Any] = {"gen": gen, "lsn": lsn, "next_rid": next_rid, "main": None, "tomb": None,
                                        "growing": f"growing-{gen}.sdx", "meta": f"meta-{gen}.sqlite"}
                written.append(self.path / body["growing"])
                write_snapshot(written[-1], growing_snapshot)
                if main is not None:
                    if self._saved_main is not None and self._saved_main[0] is main:
                        body["main"] = self._saved_main[1]
                    else:
                        body["main"] = f"main-{gen}.sdx"
                        written.append(self.path / body["main"])
                        write_snapshot(written[-1], main_snapshot)
                    body["tomb"] = f"tomb-{gen}.sdx"
                    written.append(self.path / body["tomb"])
                    fileformat.save_arrays(written[-1], "Tombstones", {}, {"deleted": main_snapshot[2]["deleted"]})
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
            fsync_dir(self.path)
        except OSError as exc:  # the switch is made; if it is lost in a crash, the previous checkpoint is intact
            log.warning("%s: fsync of the folder after the manifest switch failed: %s", self.path, exc)

    def _remove_unreferenced_files(self) -> None:
        keep = set()
        for m in (self._manifest, self._prev_manifest):
            if m:
                keep.update(v for k, v in m.items() if k in ("main", "tomb", "growing", "meta") and v)
        for path in [*self.path.glob("*.sdx"), *self.path.glob("meta-*.sqlite")]:
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._closed:
            return
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

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r}, index={self.index_kind!r})"
