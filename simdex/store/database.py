"""An embedded database: a folder of collections, opened by one writing process at a time.

Layout::

    <path>/LOCK                         advisory lock (fcntl) held by the process that has the database open
    <path>/FORMAT                       the database format version (FORMAT_VERSION; absent: format 1)
    <path>/collections/<name>/config.json   dimension, metric, index kind and parameters (written once)
    <path>/collections/<name>/wal/          write-ahead log
    <path>/collections/<name>/meta.sqlite   metadata and documents
    <path>/collections/<name>/MANIFEST      current checkpoint (MANIFEST.prev: the one before)
    <path>/collections/<name>/*.sdx         checkpoint files (simdex index file format)

Creating a collection builds its folder under a temporary name and renames it into place; dropping renames it
away before deleting it, so a crash never leaves half a collection.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import (CollectionExistsError, CollectionNotFoundError, CorruptDatabaseError, CorruptFileError,
                      DatabaseLockedError, InvalidInputError, ReadOnlyError, SimdexError, StorageError)
from ..fileformat import fsync_path, write_json
from ._io import storage_error
from .api import DatabaseAPI
from .collection import Collection
from .config import check_config
from .embedding import embedder_info
from .fields import embedder_spec
from .metadata import MetadataStore
from .records import check_collection_name
from .wal import SYNC_MODES

log = logging.getLogger("simdex.store")
READ_VIEW_ATTEMPTS = 5


# The database format. 1: before this marker existed (no named fields); 2: named vector fields (their values in
# log records and a SQLite table). A database of a newer format than this simdex reads is refused, not misread.
FORMAT_VERSION = 2
FORMAT_FILE = "FORMAT"


def read_format(path: Path) -> int:
    """The format version of the database at ``path`` (1 when it has no marker: written before markers existed);
    InvalidInputError if this simdex cannot read it."""
    marker = path / FORMAT_FILE
    if not marker.exists():
        return 1
    try:
        version = int(json.loads(marker.read_text())["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptDatabaseError(f"{marker} is unreadable ({exc})") from None
    if version > FORMAT_VERSION:
        from .. import __version__  # simdex/__init__ imports this module before it defines its version
        raise InvalidInputError(f"the database at {path} has format {version}, written by a newer simdex; this "
                                f"simdex ({__version__}) reads formats up to {FORMAT_VERSION}: upgrade it "
                                f"(pip install -U simdex)")
    return version


def write_format(path: Path) -> None:
    write_json(path / FORMAT_FILE, {"format": "simdex-database", "version": FORMAT_VERSION}, indent=None)


def release_free_memory() -> None:
    """Return the C heap's free pages to the operating system (glibc's ``malloc_trim``). A merge replaces an
    index by a new one; the old one's arrays are freed, but glibc keeps most freed heap mapped, so a server under
    churn would hold on to every index it ever replaced (a quarter more resident memory after 500k upserts and
    deletes in ``python -m simdex.bench churn``). Nothing happens where the C library has no ``malloc_trim``."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


# glibc's mallopt parameter, and the size from which a writable database's allocations get mappings of their own
_M_MMAP_THRESHOLD = -3
MAPPED_ALLOCATION_BYTES = 1 << 20


def map_large_allocations() -> None:
    """Give every allocation of MAPPED_ALLOCATION_BYTES or more a mapping of its own, unmapped when it is freed
    (glibc's ``mallopt(M_MMAP_THRESHOLD)``, for the whole process). glibc otherwise raises that threshold to the
    size of the largest block freed (up to 32 MiB), after which the arrays of merges, training and batches come
    from the heap and stay counted in the process's data size after they are freed: under a memory limit
    (RLIMIT_DATA, a container's), a collection loading millions of rows failed for memory the heap held but did not
    use. Nothing happens where the C library has no ``mallopt``."""
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MAPPED_ALLOCATION_BYTES)
    except (OSError, AttributeError):
        pass


class Database(DatabaseAPI):
    """A database folder. Use :func:`simdex.connect` to open one.

    Parameters
    ----------
    path : folder (created if missing)
    sync : {"always", "batch", "off"}
        When a write is durable: ``always`` (fsync before returning; survives power loss), ``batch`` (fsync
        every 10 ms in the background), ``off`` (survives a killed process, not a power loss).
    read_only : bool
        Open a consistent view without changing anything and without taking the writer's lock, so it works while
        another process (a server) writes: the newest checkpoint plus the log up to its last complete record, with
        a private copy of the metadata store. The view does not follow later writes; ``stats()`` says how old it
        is.
    repair : bool
        Cut damaged write-ahead logs back to their last good record instead of refusing to open.
    background : bool
        Run the optimizer thread that indexes new rows and writes checkpoints. Off: call :meth:`optimize`.
    merge_rows, checkpoint_bytes, log_segment_bytes : int
        When the optimizer folds new rows into the graph (rows), when it writes a checkpoint (bytes logged since
        the last one), and the size at which a new write-ahead log file is started (bytes; default a quarter of
        ``checkpoint_bytes``, 1-64 MiB: the log is cut back by whole files).
    embedders : dict of name -> Embedder
        Instances of models that simdex cannot load by name, for the collections created with them.
    warm : bool
        For a long-lived program on a fresh install: compile the kernels a database runs in a separate process
        (``simdex warmup --groups hnsw,database``) while this one loads and serves, instead of each on its first
        call. Nothing when the kernel cache is already warm.
    """

    def __init__(self, path: str | os.PathLike, *, sync: str = "always", read_only: bool = False,
                 repair: bool = False, background: bool = True, merge_rows: int = 20_000,
                 checkpoint_bytes: int = 64 << 20, log_segment_bytes: int | None = None,
                 embedders: dict[str, Any] | None = None, warm: bool = False) -> None:
        if sync not in SYNC_MODES:
            raise InvalidInputError(f"sync must be one of {SYNC_MODES}; got {sync!r}")
        self.path = Path(path)
        self.sync = sync
        self.read_only = read_only
        self.repair = repair
        if log_segment_bytes is None:  # the log is cut by whole files: keep them small next to a checkpoint's worth
            log_segment_bytes = min(64 << 20, max(1 << 20, checkpoint_bytes // 4))
        self._collection_opts = {"merge_rows": merge_rows, "checkpoint_bytes": checkpoint_bytes,
                                 "log_segment_bytes": log_segment_bytes}
        self._embedders = dict(embedders or {})
        self._lock = threading.RLock()
        self._closed = False
        if read_only and not (self.path / "collections").is_dir():
            raise FileNotFoundError(f"no simdex database at {self.path}")
        (self.path / "collections").mkdir(parents=True, exist_ok=True) if not read_only else None
        self._lock_fd = self._acquire_lock() if not read_only else None
        if not read_only:
            map_large_allocations()
        self.opened_at = time.time()
        self._collections: dict[str, Collection] = {}
        self._warmer = None
        if warm:
            from .._warmup import warm_in_background
            self._warmer = warm_in_background(("hnsw", "database"))
        try:
            found = read_format(self.path)
            self._cleanup_temporaries()
            for folder in sorted((self.path / "collections").iterdir()):
                if folder.is_dir() and not folder.name.startswith(".") and (folder / "config.json").exists():
                    self._collections[folder.name] = self._open_collection(folder)
        except BaseException:
            for collection in self._collections.values():
                collection._closed = True
                collection._wal.close()
                collection._meta.close()
            self._release_lock()
            raise
        if not read_only and found < FORMAT_VERSION:
            # the older formats open as they are (their collections were brought up to date as they opened: a
            # new SQLite table, optional log and configuration entries); the marker says which version wrote last
            write_format(self.path)
        self._stop = threading.Event()
        self._optimizer = None
        if background and not read_only:
            self._optimizer = threading.Thread(target=self._optimize_loop, name="simdex-optimizer", daemon=True)
            self._optimizer.start()

    # ---- locking -------------------------------------------------------------------------------------------------
    def _acquire_lock(self) -> int:
        lock_path = self.path / "LOCK"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            try:
                holder = f" (pid {lock_path.read_text().strip()})"
            except OSError:
                pass
            os.close(fd)
            raise DatabaseLockedError(f"the database at {self.path} is open for writing by another "
                                      f"process{holder}; close it there first, or open it with read_only=True "
                                      f"(a consistent view that works beside the writer)") from None
        try:  # who holds it, for the message above; a full disk must not keep the database from opening
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _cleanup_temporaries(self) -> None:
        if self.read_only:
            return
        for folder in (self.path / "collections").iterdir():
            if folder.name.startswith(".tmp-") or folder.name.startswith(".dropped-"):
                shutil.rmtree(folder, ignore_errors=True)

    def _open_collection(self, folder: Path) -> Collection:
        config = json.loads((folder / "config.json").read_text())
        for attempt in range(READ_VIEW_ATTEMPTS if self.read_only else 1):
            try:
                collection = Collection(folder, folder.name, config, sync=self.sync, read_only=self.read_only,
                                        repair=self.repair, load_embedder=self._embedder_model,
                                        **self._collection_opts)
                break
            except (CorruptFileError, FileNotFoundError) as exc:
                # a read-only view races the writer: a checkpoint may replace the files being read, or cut the log
                # past them; a fresh look finds the next consistent state. Real damage fails every time.
                if attempt + 1 == READ_VIEW_ATTEMPTS or not self.read_only:
                    raise
                log.info("%s: read-only view raced a writer (%s); looking again", folder, exc)
                time.sleep(0.05 * (attempt + 1))
        info = config.get("embedder")
        if info is not None and info["name"] in self._embedders:
            collection.attach_embedder(self._embedders[info["name"]])
        for field, spec in (config.get("fields") or {}).items():
            info = spec.get("embedder")
            if info is not None and info["name"] in self._embedders:
                collection.attach_field_embedder(field, self._embedders[info["name"]])
        return collection

    def _embedder_model(self, embedder: Any) -> Any:
        """An :class:`~simdex.embed.Embedder` from what a user gives: one, a name registered with this database
        (``embedders=``), or a name simdex loads ("minilm", "st:<model>")."""
        from ..embed import Embedder, get_embedder
        if isinstance(embedder, Embedder):
            return embedder
        if isinstance(embedder, str) and embedder in self._embedders:
            return self._embedders[embedder]
        try:
            return get_embedder(embedder)
        except SimdexError:
            raise
        except Exception as exc:  # a missing package, a model that cannot be found or loaded
            raise InvalidInputError(f"cannot load the embedder {embedder!r}: {type(exc).__name__}: {exc}") from None

    # ---- the catalog ---------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ReadOnlyError(f"the database at {self.path} is closed")

    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine", index: str = "hnsw", *,
                          exist_ok: bool = False, text: bool = False, embedder: Any = None,
                          window_field: str | None = None, label_field: str | None = None,
                          dedup: dict[str, Any] | None = None, fields: dict[str, Any] | None = None,
                          **params: Any) -> Collection:
        """Create a collection of ``dim``-dimensional vectors. ``index``: "hnsw" (float32 vectors), "hnsw-lvq8"
        or "hnsw-int8" (the graph walked on 8-bit LVQ / int8 codes, a quarter of the memory per vector, the best
        candidates re-ranked from the float32 vectors kept in a file;
        :class:`~simdex.quant.HNSWQuantIndex`), "rabitq-graph" (the HNSW graph with 1-bit RaBitQ codes of each
        node's edges beside its links, searched through them, float32 vectors in memory;
        :class:`~simdex.quant.RaBitQGraphIndex`), "ivf-pq" (IVF lists of PQ codes, re-ranked from the float32 vectors
        kept in a file; :class:`~simdex.quant.IVFIndex`; the number of lists and probes follow the collection's
        size unless set), "ivf-rabitq" (the same over 1-bit RaBitQ codes, dim / 8 + 16 bytes per vector),
        "vamana" (a Vamana graph with FreshDiskANN updates; :class:`~simdex.dense.VamanaIndex`),
        "vamana-disk" (its vectors and links in a file, walked on PQ codes in memory;
        :class:`~simdex.quant.VamanaDiskIndex`), "spann" (:class:`~simdex.quant.SPANNIndex`, built once: new rows
        wait in the exactly searched growing segment until they are a tenth of the index, then a merge builds a
        new one from every row; :mod:`simdex.store.buildonce`), or "flat" (exact search over every row).
        ``params`` go to the index (M, ef_construction, ef_search, seed; for the code kinds also rerank; for
        rabitq-graph also bits and fill; for the IVF
        kinds nlist, nprobe, codec, rerank, reads, seed; for the Vamana kinds R, L_build, L_search, alpha, seed, and
        codec on disk; for spann list_size, nprobe, eps, rerank, codec, max_replicas, closure_eps, seed). With
        ``text`` the records' documents are also indexed for BM25, for ``search(text=...)`` and hybrid search. With
        ``window_field`` (a metadata key, e.g. ``"ts"``) a :class:`~simdex.dense.WindowIndex` over that numeric field
        answers ``where`` filters that are only a range on it (``{"ts": {"$gte": a, "$lte": b}}``, ``$gt``/``$lt``/``$eq``,
        or their ``$and``). With ``label_field`` (a metadata key holding a string, e.g. ``"lang"``) every value of that
        field with at least 2,000 records gets its own HNSW graph, built in the background, which answers
        ``where`` filters that are only that value (``{"lang": "de"}``). With ``exist_ok`` an existing
        collection of the same configuration is returned instead of an error. With ``embedder`` ("minilm", the
        built-in offline all-MiniLM-L6-v2; "st:<model>" for sentence-transformers; or an
        :class:`~simdex.embed.Embedder`) documents without vectors and text queries are embedded, ``dim`` comes
        from the embedder, and the model is recorded with the collection (see :class:`DatabaseAPI`). With ``dedup``
        each upsert is checked for near-duplicate texts (see :class:`DatabaseAPI` and :mod:`simdex.store.dedup`)."""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"the database at {self.path} is open read-only")
        name = check_collection_name(name)
        model = None
        if embedder is not None:
            model = self._embedder_model(embedder)
            dim = model.dim if dim is None else dim
        elif dim is None:
            raise InvalidInputError("dim is required (or give an embedder, whose dimension it then is)")
        fields, field_models = self._field_embedders(fields)
        config = check_config(dim, metric, index, params, text, window_field, label_field, model, dedup, fields)
        for field, field_model in field_models.items():
            config["fields"][field]["embedder"] = embedder_info(field_model)
        with self._lock:
            if name in self._collections:
                existing = self._collections[name]
                same = (existing.dim, existing.metric, existing.index_kind, existing.params, existing.text,
                        existing.window_field, existing.label_field, existing.embedder_info, existing.dedup,
                        existing.fields) == (
                    config["dim"], config["metric"], config["index"], config["params"], config["text"],
                    config["window_field"], config["label_field"], config["embedder"], config["dedup"],
                    config["fields"])
                if exist_ok and same:
                    if model is not None and not existing._embedding.loaded:
                        existing.attach_embedder(model)
                    return existing
                raise CollectionExistsError(f"collection {name!r} already exists"
                                            + ("" if same else " with a different configuration"))
            final = self.path / "collections" / name
            tmp = self.path / "collections" / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
            body = {**config, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            try:
                tmp.mkdir()
                with open(tmp / "config.json", "w") as f:
                    json.dump(body, f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                MetadataStore(tmp / "meta.sqlite").close()
                os.replace(tmp, final)
            except (OSError, sqlite3.Error) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise storage_error(exc, "create the collection folder", final) from None
            fsync_path(final.parent)
            collection = self._open_collection(final)
            if model is not None:
                collection.attach_embedder(model)
            for field, field_model in field_models.items():
                collection.attach_field_embedder(field, field_model)
            self._collections[name] = collection
            return collection

    def _field_embedders(self, fields: Any) -> tuple[Any, dict[str, Any]]:
        """``fields`` without the embedders of its dense fields (a field's ``dim`` defaults to its model's), and
        those embedders' models by field."""
        if not isinstance(fields, dict):
            return fields, {}
        out, models = dict(fields), {}
        for field, spec in fields.items():
            if isinstance(spec, dict) and spec.get("embedder") is not None:
                models[field] = self._embedder_model(spec["embedder"])
                out[field] = embedder_spec(field, spec, models[field])
        return out, models

    def get_collection(self, name: str, embedder: Any = None) -> Collection:
        """The collection ``name``. ``embedder``: an :class:`~simdex.embed.Embedder` instance of the model it was
        created with, for models simdex cannot load by name (checked against the recorded one)."""
        self._check_open()
        with self._lock:
            try:
                collection = self._collections[name]
            except KeyError:
                raise CollectionNotFoundError(f"no collection named {name!r} (have: "
                                              f"{', '.join(sorted(self._collections)) or 'none'})") from None
        if embedder is not None:
            collection.attach_embedder(embedder)
        return collection

    def list_collections(self) -> list[str]:
        self._check_open()
        with self._lock:
            return sorted(self._collections)

    def drop_collection(self, name: str) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"the database at {self.path} is open read-only")
        with self._lock:
            collection = self.get_collection(name)
            collection._stop_fills()
            collection._closed = True
            collection._wal.close()
            collection._meta.close()
            del self._collections[name]
            gone = self.path / "collections" / f".dropped-{name}-{uuid.uuid4().hex[:8]}"
            os.replace(collection.path, gone)
            fsync_path(gone.parent)
            shutil.rmtree(gone, ignore_errors=True)

    def __contains__(self, name: str) -> bool:
        return name in self._collections

    # ---- maintenance ---------------------------------------------------------------------------------------------
    def optimize(self, wait_idle: bool = False) -> None:
        """Index all unindexed rows now (what the background thread does over time): fold new rows into the
        graphs, build the window trees and label graphs that are due. With ``wait_idle`` a rebuild the background
        thread has in progress is waited for too, so that afterwards nothing is being built. (A collection over codes
        builds its first index once 1,000 rows wait, to train its codec on; fewer are searched exactly.)"""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"the database at {self.path} is open read-only")
        for collection in list(self._collections.values()):
            collection.index_all()
            if wait_idle:
                for side in collection._sides:
                    with side.maintenance:  # held by a rebuild in progress
                        pass
        release_free_memory()

    def backup(self, dest: str, since: str | None = None) -> dict[str, Any]:
        """See :meth:`DatabaseAPI.backup` (:mod:`simdex.store.backup`)."""
        from .backup import backup
        self._check_open()
        with self._lock:
            collections = dict(self._collections)
        return backup(collections, dest, since)

    def checkpoint(self) -> None:
        """Write checkpoints of every collection and cut their logs."""
        self._check_open()
        for collection in list(self._collections.values()):
            collection.checkpoint()

    def _optimize_loop(self) -> None:
        # id(collection) -> (monotonic time to retry at, last delay, free bytes of its disk when that was full)
        retry: dict[int, tuple[float, float, int | None]] = {}
        while not self._stop.wait(0.2):
            for collection in list(self._collections.values()):
                if self._stop.is_set():
                    return
                retry_at, delay, free_then = retry.get(id(collection), (0.0, 0.0, None))
                # a failing disk is not hammered with checkpoints that cannot be written; but once space is freed
                # the checkpoint goes first, before new writes fill the disk with log again
                freed = free_then is not None and (_free_bytes(collection.path) or 0) > free_then + (1 << 20)
                if time.monotonic() < retry_at and not freed:
                    continue
                try:
                    rebuilt = False
                    for side in collection.due_rebuilds():
                        rebuilt = collection.rebuild(side) or rebuilt
                    if rebuilt:
                        release_free_memory()
                    if collection.needs_checkpoint():
                        collection.checkpoint()
                    elif collection.needs_compaction():
                        collection.compact_log()
                    collection.background_error = None
                    retry.pop(id(collection), None)
                except Exception as exc:  # keep serving; report it in stats and the log, once per distinct error
                    if collection._closed:
                        continue
                    delay = min(60.0, max(1.0, 2 * delay))
                    full = isinstance(exc, StorageError) and exc.disk_full
                    retry[id(collection)] = (time.monotonic() + delay, delay,
                                             _free_bytes(collection.path) if full else None)
                    message = f"{type(exc).__name__}: {exc}"
                    if message != collection.background_error:
                        if isinstance(exc, StorageError):
                            log.warning("background maintenance of %s failed (retried when space is freed, or "
                                        "within a minute): %s", collection.name, exc)
                        else:
                            log.exception("background maintenance of %s failed", collection.name)
                    collection.background_error = message

    def stats(self) -> dict[str, Any]:
        out = {"path": str(self.path), "read_only": self.read_only, "sync": self.sync,
               "collections": [c.stats() for c in self._collections.values()]}
        if self.read_only:
            newest = max((c.last_write_time() or 0.0 for c in self._collections.values()), default=0.0)
            out["view"] = {"opened_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.opened_at)),
                           "age_s": round(time.time() - self.opened_at, 3),
                           "newest_write_age_s": round(time.time() - newest, 3) if newest else None,
                           "note": "a consistent read-only view as of opening: later writes are not in it"}
        return out

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop background work, checkpoint every collection and release the lock."""
        if self._closed:
            return
        self._stop.set()
        if self._optimizer is not None:
            self._optimizer.join()
        for collection in self._collections.values():
            collection.close()
        self._closed = True
        self._release_lock()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r}, collections={self.list_collections() if not self._closed else '?'})"


def connect(path: str | os.PathLike, **options: Any) -> Database:
    """Open (or create) the database in folder ``path``. See :class:`Database` for the options."""
    return Database(path, **options)


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
