"""Sharded, replicated collections: routing, scatter-gather search, the shard actors (see the package docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tarfile
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._proc import proc_status
from .._validate import check_positive_int
from ..errors import (CollectionExistsError, CollectionNotFoundError, CorruptFileError, DatabaseLockedError,
                      InvalidInputError, SimdexError, StorageError, TruncatedTextWarning, UnknownIdError)
from ..fileformat import write_json
from ..store import connect as connect_local
from ..store import records as rec
from ..store.api import MAIN_FIELD, CollectionAPI, DatabaseAPI
from ..store.config import DEFAULT_SEARCH_INCLUDE, check_include

MANIFEST = "distributed.json"
MAX_SHARDS = 1024
MAX_REPLICAS = 16


log = logging.getLogger(__name__)


class PartialResultsWarning(UserWarning):
    """A search answered without some shards: none of their replicas could be reached. The hits come from the
    other shards only; the warning names the shards that are missing."""


class ClusterUnavailableError(SimdexError, ConnectionError):
    """Ray is not installed, or the Ray cluster named could not be reached."""


_PARTIAL = "had no live replica: the results leave out their records"


def _notes(missing: list[int], shard_notes: list[str]) -> list[str]:
    """The warnings of a read: the shards it left out, then the shards' own (each once)."""
    return ([f"shard(s) {missing} {_PARTIAL}"] if missing else []) + list(dict.fromkeys(shard_notes))


def _warn(notes: list[str]) -> None:
    for note in notes:
        warnings.warn(PartialResultsWarning(note) if note.endswith(_PARTIAL) else TruncatedTextWarning(note),
                      stacklevel=3)


def shard_of(record_id: str, shards: int) -> int:
    """The shard of ``record_id`` among ``shards``: a hash of its UTF-8 bytes that every process and machine
    computes alike (Python's ``hash`` of a str changes between processes)."""
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterUnavailableError("simdex.distributed runs on Ray, which is not installed: "
                                      "pip install 'simdex[ray]'") from None
    return ray


def connect(path: str | Path, ray_address: str | None = None, *, num_cpus: int | None = None,
            auto_repair: bool = True, hedge_after: float | str | None = "auto",
            **db_options: Any) -> DistributedDatabase:
    """A distributed database whose shard replicas keep their files under ``path`` (on each node's own disk).

    ``ray_address``: None starts a Ray on this machine (``num_cpus`` of its cores) unless this process is already
    connected to one; "auto" or "host:port" joins a running cluster. ``auto_repair``: a replica found dead is
    brought back in the background (:meth:`DistributedCollection.repair`); False leaves that to the caller.
    ``hedge_after``: seconds after which a read (search, get, count) still waiting on a shard's replica is sent
    to another replica of that shard too, the first answer taken (a slow node or a long pause does not hold up the
    whole search); "auto" hedges after the 95th percentile of the collection's recent reads of the same kind (at
    least 10 ms), None never hedges. ``db_options`` go to each replica's embedded database
    (:func:`simdex.connect`: ``sync``, ...)."""
    hedge_after = _check_hedge(hedge_after)
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=ray_address, num_cpus=num_cpus if ray_address is None else None,
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError: Ray's own, by version
            where = "a new local Ray" if ray_address is None else f"the Ray cluster at {ray_address!r}"
            raise ClusterUnavailableError(f"could not start or reach {where}: {exc}") from None
    return DistributedDatabase(path, db_options, auto_repair=auto_repair, hedge_after=hedge_after)


def _check_hedge(hedge_after: Any) -> float | str | None:
    if hedge_after is None or hedge_after == "auto":
        return hedge_after
    if isinstance(hedge_after, bool) or not isinstance(hedge_after, (int, float)) or not 0 <= hedge_after < 3600:
        raise InvalidInputError(f"hedge_after must be seconds in [0, 3600), 'auto' or None; got {hedge_after!r}")
    return float(hedge_after)


class ShardReplica:
    """One replica of one shard of one collection, run as a Ray actor: an embedded simdex database in its own
    folder holding that collection."""

    def __init__(self, folder: str, db_options: dict[str, Any], copy_of: bytes | None = None) -> None:
        if copy_of is not None:  # a replacement replica: start from a live replica's copy (:meth:`copy`)
            _unpack(copy_of, folder)
        for attempt in range(300):
            try:
                self.db = connect_local(folder, **db_options)
                break
            except DatabaseLockedError:  # the killed replica this one replaces may not have exited yet
                if attempt == 299:
                    raise
                time.sleep(0.1)
        self.col: Any = None
        self._stall = 0.0

    def open(self, name: str, create: dict[str, Any] | None) -> int:
        """Create (``create``: the arguments of ``create_collection``) or reopen the collection; its count."""
        self.col = self.db.create_collection(name, exist_ok=True, **create) if create is not None \
            else self.db.get_collection(name)
        return self.col.count()

    def call(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        """A collection method that writes (or must see every write sent before it): run one at a time, in the
        order the caller sent them."""
        return getattr(self.col, method)(*args, **kwargs)

    def read(self, method: str, args: tuple, kwargs: dict[str, Any], *rows: np.ndarray) -> Any:
        """A collection method that only reads, run beside other reads and beside the writes (the actor's "read"
        threads). Searches return their hits as columns (:func:`_hit_columns`). ``rows``: the first argument sent
        in pieces (:func:`_inline_pieces`), joined again."""
        if rows:
            args = (np.concatenate(rows), *args[1:])
        if self._stall:
            time.sleep(self._stall)
        out = getattr(self.col, method)(*args, **kwargs)
        if method in _SEARCHES:
            hits, notes = out
            return _hit_columns([hits] if method == "search_with_notes" else hits), notes
        return out

    def backup(self, dest: str) -> dict[str, Any]:
        return self.db.backup(dest)

    def digest(self) -> dict[str, Any]:
        """What this replica holds (count, digest, last log record applied), to compare it with the others of its
        shard (:meth:`simdex.store.collection.Collection._content_digest`)."""
        return self.col._content_digest()

    def stall_reads(self, seconds: float) -> None:
        """Make every read of this replica wait ``seconds`` first (0: no more): a drill for hedged reads, as a
        slow disk or a paused node would."""
        self._stall = float(seconds)

    def memory(self) -> dict[str, int]:
        """This replica's process memory in bytes: its resident set and the anonymous part of it (Linux; 0
        elsewhere)."""
        try:
            return {"rss": proc_status("VmRSS"), "anon": proc_status("RssAnon")}
        except OSError:
            return {"rss": 0, "anon": 0}

    def node_id(self) -> str:
        """The Ray node this replica runs on (its files are on that node's disk)."""
        return _ray().get_runtime_context().get_node_id()

    def copy(self) -> bytes:
        """A consistent copy of this replica's database as tar bytes (its backup), for a replacement replica on
        any node: Ray's object store carries it."""
        with tempfile.TemporaryDirectory(prefix="simdex-replica-") as tmp:
            self.db.backup(str(Path(tmp) / "db"))
            return _pack(Path(tmp) / "db")

    def close(self) -> None:
        self.db.close()


AUTO_REPAIR_DELAY = 0.2  # seconds between a replica found dead and its automatic repair
# a replica's bundle in its shard's placement group: a token share of a CPU (a bundle must hold some resource; the
# replica actor itself asks for none), and how long creating a collection waits for the cluster to place them
BUNDLE = {"CPU": 0.001}
PLACEMENT_TIMEOUT = 60.0
# hedge_after="auto": a read is hedged after the 95th percentile of the last HEDGE_WINDOW reads of its kind, at
# least HEDGE_FLOOR seconds; HEDGE_DEFAULT until HEDGE_MIN_SAMPLES of them were timed
HEDGE_WINDOW, HEDGE_MIN_SAMPLES, HEDGE_FLOOR, HEDGE_DEFAULT = 256, 20, 0.01, 0.1
JOURNAL_BYTES = 64 * 2**20  # per collection, shared by its shards: the recent writes kept for restarted replicas
_REPLAYABLE = ("upsert", "delete")  # writes that give the same records when applied twice
_NO_CHANGE = ("merge", "checkpoint")  # writes that change no record


def _approx_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (str, bytes)):
        return len(value) + 50
    if isinstance(value, dict):
        return sum(_approx_bytes(k) + _approx_bytes(v) for k, v in value.items()) + 64
    if isinstance(value, (list, tuple)):
        return sum(_approx_bytes(v) for v in value) + 56
    return 16


class _Journal:
    """The recent writes of one shard, numbered in the order its replicas received them, kept by the writer so
    that a replica restarted on its own files replays the writes after the last one it acknowledged instead of
    copying the whole shard from another replica. Upserts and deletes give the same records when applied twice,
    so a replica that made a write durable without acknowledging it (it died in between) ends the same too."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.entries: deque[tuple[int, str, tuple, dict[str, Any], int]] = deque()
        self.seq = 0  # the newest write's number
        self.kept_after = 0  # every replayable write after this number is kept
        self.barrier = 0  # the newest write that cannot be replayed (a field change)
        self.bytes = 0

    def record(self, method: str, args: tuple, kwargs: dict[str, Any]) -> int:
        """Number the next write, and keep it if it can be replayed; returns its number."""
        self.seq += 1
        if method in _REPLAYABLE:
            size = _approx_bytes(args) + _approx_bytes(kwargs)
            self.entries.append((self.seq, method, args, kwargs, size))
            self.bytes += size
            while self.bytes > self.limit_bytes and self.entries:
                dropped = self.entries.popleft()
                self.bytes -= dropped[4]
                self.kept_after = dropped[0]
        elif method not in _NO_CHANGE:
            self.barrier = self.seq
        return self.seq

    def forget(self, seq: int) -> None:
        """Drop write ``seq``: every replica refused it, so it changed nothing."""
        for i, entry in enumerate(self.entries):
            if entry[0] == seq:
                self.bytes -= entry[4]
                del self.entries[i]
                return

    def after(self, seq: int) -> list[tuple[str, tuple, dict[str, Any]]] | None:
        """The writes after ``seq`` in order, or None when some of them are no longer kept or cannot be
        replayed."""
        if seq < self.kept_after or seq < self.barrier:
            return None
        return [(method, args, kwargs) for n, method, args, kwargs, _ in self.entries if n > seq]


_SEARCHES = ("search_with_notes", "search_batch_with_notes")
READ_THREADS = 8  # a replica's concurrent reads: its searches release the GIL in their kernels


# Ray sends a call's arguments of up to 100 KiB inside the call, and a larger one through its object store, which
# cost a search of 100 queries of 384 floats (150 KiB) 1.6 ms against 0.4 ms for two arguments of 75 KiB
# (measured on this 2-core VM, a read of an actor that does nothing); past about 512 KiB the pieces gain nothing
INLINE_BYTES, PIECES_UP_TO = 90 * 1024, 512 * 1024


def _inline_pieces(args: tuple) -> tuple[tuple, list[np.ndarray]]:
    """(args, pieces): a first argument that is an array Ray would carry through its object store, and that is
    not much larger than its inline limit, split by rows into pieces it sends inside the call (the first argument
    then None; :meth:`ShardReplica.read` joins them); else the arguments as they are."""
    first = args[0] if args else None
    if not isinstance(first, np.ndarray) or first.ndim != 2 or not INLINE_BYTES < first.nbytes <= PIECES_UP_TO:
        return args, []
    pieces = -(-first.nbytes // INLINE_BYTES)
    return (None, *args[1:]), np.array_split(first, min(pieces, first.shape[0]))


def _part(values: Any, at: list[int]) -> Any:
    """The entries ``at`` of a batch's column: rows of an array, items of a list, or of each column of a dict of
    them (named fields); None stays None."""
    if values is None:
        return None
    if isinstance(values, np.ndarray):
        return values[at]
    if isinstance(values, dict):
        return {key: _part(v, at) for key, v in values.items()}
    return [values[i] for i in at]


def _hit_columns(lists: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Hit lists as one list per field (distances and scores as float arrays) and the lists' lengths, for the trip
    to the caller: a pickle of 100 lists of 10 hits took 1.0 ms as dicts and 0.2 ms as columns."""
    flat = [h for hits in lists for h in hits]
    columns: dict[str, Any] = {key: [h[key] for h in flat] for key in (flat[0] if flat else ())}
    for key in ("distance", "score"):
        if key in columns:
            columns[key] = np.array(columns[key], np.float64)
    return {"lengths": np.array([len(hits) for hits in lists], np.int64), "columns": columns}


def _merge_columns(parts: list[dict[str, Any]], k: int, include: tuple[str, ...]) -> list[list[dict[str, Any]]]:
    """Each query's k best over the shards' hit columns (:func:`_hit_columns`), as hit dicts: by distance, or by
    score for text and fused searches, ties by id; one shard's hits keep its own order."""
    if not parts:
        return []
    cols = [{key: (v.tolist() if isinstance(v, np.ndarray) else v) for key, v in p["columns"].items()}
            for p in parts]
    starts = [np.concatenate([[0], np.cumsum(p["lengths"])]).tolist() for p in parts]
    keys = next((list(c) for c in cols if c.get("id")), [])
    by_distance = "distance" in keys
    shown = [key for key in keys if key != "distance" or "distances" in include]
    out = []
    for q in range(len(parts[0]["lengths"])):
        if len(parts) == 1:
            picked = [(0, i) for i in range(starts[0][q], min(starts[0][q + 1], starts[0][q] + k))]
        else:
            ranked = []
            for p, c in enumerate(cols):
                for i in range(starts[p][q], starts[p][q + 1]):
                    ranked.append(((c["distance"][i] if by_distance else -c["score"][i]), c["id"][i], p, i))
            ranked.sort()
            picked = [(p, i) for _, _, p, i in ranked[:k]]
        out.append([{key: cols[p][key][i] for key in shown} for p, i in picked])
    return out


def _pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _unpack(data: bytes, folder: str) -> None:
    """Replace ``folder`` by the database that :func:`_pack` packed (only plain files and folders, inside it)."""
    target = Path(folder)
    staging = target.with_name(target.name + ".incoming")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(staging, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


_ACTOR: Any = None
_ACTOR_LOCK = threading.Lock()


def _actor_class() -> Any:
    global _ACTOR
    with _ACTOR_LOCK:
        if _ACTOR is None:
            ray = _ray()

            class Replica(ShardReplica):
                read = ray.method(concurrency_group="read")(ShardReplica.read)

            Replica.__name__ = Replica.__qualname__ = "ShardReplica"
            # num_cpus=0: a replica's work is its searches and writes, which Ray need not ration; no automatic
            # restarts: a replica that died missed writes, and serves again only once repair() has caught it up.
            # Reads run on their own threads; every other method in the default group, one at a time in the order
            # sent, so every replica of a shard applies its writes in the same order
            _ACTOR = ray.remote(num_cpus=0, max_restarts=0, concurrency_groups={"read": READ_THREADS})(Replica)
        return _ACTOR


def _live_nodes() -> set[str]:
    """The ids of the Ray cluster's live nodes."""
    return {n["NodeID"] for n in _ray().nodes() if n.get("Alive")}


def _unwrap(ray: Any, exc: BaseException) -> BaseException:
    """The exception a replica raised (a RayTaskError wraps it with the remote traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, Exception) else exc


class DistributedDatabase(DatabaseAPI):
    """Distributed collections whose replicas keep their files under ``path`` (:func:`connect`)."""

    def __init__(self, path: str | Path, db_options: dict[str, Any], auto_repair: bool = True,
                 hedge_after: float | str | None = "auto") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._db_options = dict(db_options)
        self.auto_repair = auto_repair
        self.hedge_after = hedge_after
        self._lock = threading.RLock()
        self._open: dict[str, DistributedCollection] = {}
        self._closed = False

    def __enter__(self) -> DistributedDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _manifest(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            return {"collections": {}}
        except ValueError as exc:
            raise CorruptFileError(f"{self.path / MANIFEST}: unreadable ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("collections"), dict):
            raise CorruptFileError(f"{self.path / MANIFEST}: not a distributed database manifest")
        return doc

    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine", index: str = "hnsw", *,
                          exist_ok: bool = False, shards: int = 2, replicas: int = 1, oversample: int = 1,
                          **options: Any) -> DistributedCollection:
        """:meth:`DatabaseAPI.create_collection` split into ``shards`` (by a hash of the record id), each kept by
        ``replicas`` actors. A search asks each shard for its ``k * oversample`` best (more than k helps
        approximate indexes); the other options are those of a local collection."""
        name = rec.check_collection_name(name)
        shards = check_positive_int(shards, "shards", maximum=MAX_SHARDS)
        replicas = check_positive_int(replicas, "replicas", maximum=MAX_REPLICAS)
        oversample = check_positive_int(oversample, "oversample", maximum=64)
        with self._lock:
            self._check_open()
            manifest = self._manifest()
            if name in manifest["collections"]:
                if exist_ok:
                    return self.get_collection(name)
                raise CollectionExistsError(f"collection {name!r} already exists")
            spec = {"shards": shards, "replicas": replicas, "oversample": oversample,
                    "create": {"dim": dim, "metric": metric, "index": index, **options}}
            folder = self.path / name
            if folder.exists():  # left by a create that failed before its manifest entry was written
                shutil.rmtree(folder)
            try:
                col = DistributedCollection(self, name, spec, create=True)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            manifest["collections"][name] = {**spec, "nodes": col._nodes, "stale": [], "open": True}
            write_json(self.path / MANIFEST, manifest)
            self._open[name] = col
            return col

    def get_collection(self, name: str) -> DistributedCollection:
        with self._lock:
            self._check_open()
            if name in self._open:
                return self._open[name]
            spec = self._manifest()["collections"].get(name)
            if spec is None:
                raise CollectionNotFoundError(f"collection {name!r} does not exist")
            col = self._open[name] = DistributedCollection(self, name, spec, create=False)
            return col

    def list_collections(self) -> list[str]:
        return sorted(self._manifest()["collections"])

    def _record_state(self, name: str, col: DistributedCollection, opened: bool | None = None) -> None:
        """Keep in collection ``name``'s manifest entry what its next opening needs:
        - ``nodes``: the node each replica runs on (where its files are; :meth:`DistributedCollection._place`);
        - ``stale``: the replicas left out as dead, which may miss writes acknowledged without them (copied from
          another replica when the collection is reopened, whatever happened to this process);
        - ``open``: True from the opening of the collection until a clean close (``opened``; None: unchanged).
          Still true when it is opened again, the writer stopped without closing, perhaps in the middle of a
          write that reached some replicas of a shard and not others: the replicas are compared then.

        Written (fsynced) when a replica is found dead, before the write that found it returns."""
        with self._lock:
            manifest = self._manifest()
            spec = manifest["collections"].get(name)
            if spec is None:  # (being created: create_collection writes the entry)
                return
            with col._lock:
                state = {"nodes": [list(row) for row in col._nodes],
                         "stale": [[int(s), int(r)] for s, r in np.argwhere(col._dead)]}
            if opened is not None:
                state["open"] = opened
            if any(spec.get(key) != value for key, value in state.items()):
                spec.update(state)
                write_json(self.path / MANIFEST, manifest)

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._check_open()
            manifest = self._manifest()
            if name not in manifest["collections"]:
                raise CollectionNotFoundError(f"collection {name!r} does not exist")
            col = self._open.pop(name, None)
            if col is not None:
                col._shutdown()
            manifest = self._manifest()
            del manifest["collections"][name]
            write_json(self.path / MANIFEST, manifest)
            shutil.rmtree(self.path / name, ignore_errors=True)

    def backup(self, dest: str, since: str | None = None) -> dict[str, Any]:
        """Each shard's first live replica backs its database up into ``dest/<collection>/shard-<s>`` (on that
        replica's node), and the manifest is copied to ``dest``."""
        if since is not None:
            raise InvalidInputError("incremental backups (since=) of distributed collections are not built yet")
        out = Path(dest)
        if out.exists():
            raise InvalidInputError(f"backup destination {dest!r} already exists")
        out.mkdir(parents=True)
        report: dict[str, Any] = {"collections": {}}
        for name in self.list_collections():
            col = self.get_collection(name)
            report["collections"][name] = col._each_shard("backup", lambda s: (str(out / name / f"shard-{s}"),))
        write_json(out / MANIFEST, self._manifest())
        return report

    def close(self) -> None:
        with self._lock:
            for col in self._open.values():
                col._shutdown(clean=True)
            self._open.clear()
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidInputError("this distributed database is closed")


class DistributedCollection(CollectionAPI):
    """A collection split into shards by record id, each shard kept by replica actors (:func:`connect`)."""

    def __init__(self, db: DistributedDatabase, name: str, spec: dict[str, Any], create: bool) -> None:
        ray = _ray()
        self.name = name
        self.shards, self.replicas = int(spec["shards"]), int(spec["replicas"])
        self.oversample = int(spec.get("oversample", 1))
        self._spec = spec
        self._lock = threading.Lock()
        self._busy = np.zeros((self.shards, self.replicas), np.int64)  # calls in flight, for least-busy reads
        self._dead = np.zeros((self.shards, self.replicas), bool)
        # a shard's writes are sent to its replicas under its lock, so that every replica gets them in the same
        # order (Ray runs one caller's calls to an actor in the order they were sent); repair holds it too
        self._write_locks = [threading.Lock() for _ in range(self.shards)]
        self._db = db
        self.last_write: dict[str, Any] = {}
        self.last_repair: list[dict[str, Any]] = []
        self._journals = [_Journal(JOURNAL_BYTES // self.shards) for _ in range(self.shards)]
        self._repairer: threading.Thread | None = None
        self._repair_lock = threading.Lock()
        self._closing = False
        self._acked = np.zeros((self.shards, self.replicas), np.int64)  # the newest write each replica acknowledged
        # replicas to be repaired by a copy, not from their own files: {(shard, replica): the replica to copy, or
        # None for any live one} (found stale or different when the collection was reopened)
        self._must_copy: dict[tuple[int, int], int | None] = {}
        self.reconciled: list[dict[str, Any]] = []  # the shards whose replicas differed when it was reopened
        self._embedder_fields: set[str] | None = None  # (_fields_with_embedders)
        self._read_seconds: dict[str, deque] = {}  # recent unhedged reads' durations, by method (hedge_after="auto")
        self.hedged_reads = 0
        self._groups: list[Any] = []
        self._actors = []
        try:
            self._groups = self._place(None if create else spec.get("nodes"))
            self._actors = [[_actor_class().options(scheduling_strategy=self._bundle(s, r)).remote(
                str(db.path / name / f"shard-{s}" / f"replica-{r}"), db._db_options)
                for r in range(self.replicas)] for s in range(self.shards)]
            opened = [[a.open.remote(name, spec["create"] if create else None) for a in row] for row in self._actors]
            self._nodes = [self._get(ray, [a.node_id.remote() for a in row]) for row in self._actors]
            for s, row in enumerate(opened):
                errors = []
                for r, ref in enumerate(row):
                    try:
                        self._get(ray, ref)
                    except CollectionNotFoundError as exc:  # reopened on a node without its files: repair copies
                        errors.append(exc)
                        self._dead[s, r] = True
                if len(errors) == self.replicas:
                    raise errors[0]
        except BaseException:
            self._shutdown()
            raise
        if not create:  # (a new collection's manifest entry is written by create_collection, with its nodes)
            self._check_replicas_at_open(spec)
            db._record_state(name, self, opened=True)
        if self._dead.any():
            self._mark_dead(*next((int(s), int(r)) for s, r in np.argwhere(self._dead)), None)
        created = spec["create"]
        self.dim, self.metric = created.get("dim"), created.get("metric", "cosine")

    def _check_replicas_at_open(self, spec: dict[str, Any]) -> None:
        """Reopening: a replica that the manifest says was left out as dead may miss acknowledged writes, so it is
        left out again and repaired by a copy of a live one. After a writer that stopped without closing
        (``open`` still set), a write may have reached some replicas of a shard and not others: the live replicas
        of each shard are compared (:meth:`_reconcile`). A shard whose live replicas were all left out at some
        time is compared too: none of them is known to hold every write."""
        stale = {(int(s), int(r)) for s, r in spec.get("stale", []) if s < self.shards and r < self.replicas}
        compare = []
        for s in range(self.shards):
            live = [r for r in range(self.replicas) if not self._dead[s, r]]
            marked = [r for r in live if (s, r) in stale]
            if marked and len(marked) == len(live):
                compare.append(s)
                continue
            for r in marked:
                self._dead[s, r] = True
                self._must_copy[s, r] = None
        if spec.get("open") and self.replicas > 1:
            compare = list(range(self.shards))
        self._reconcile(compare)

    def _reconcile(self, shards: list[int]) -> None:
        """Compare the live replicas of each of ``shards`` (:meth:`ShardReplica.digest`); where they differ,
        those unlike the one that applied the most log records are left out and repaired by a copy of it. The
        writes on which they differ were never acknowledged (a writer stopped in the middle of them), so either
        outcome is allowed; what is not is replicas that answer differently."""
        ray = _ray()
        for s in shards:
            live = [r for r in range(self.replicas) if not self._dead[s, r]]
            if len(live) < 2:
                continue
            states = self._get(ray, [self._actors[s][r].digest.remote() for r in live])
            held = [(state["count"], state["digest"]) for state in states]
            if len(set(held)) == 1:
                continue
            best = max(range(len(live)), key=lambda i: (states[i]["lsn"], states[i]["count"], -i))
            copied = [r for i, r in enumerate(live) if held[i] != held[best]]
            for r in copied:
                self._dead[s, r] = True
                self._must_copy[s, r] = live[best]
            self.reconciled.append({"shard": s, "from": live[best], "copied": copied,
                                    "replicas": {r: state for r, state in zip(live, states)}})
            log.warning("collection %r: the replicas of shard %d differ (a writer stopped in the middle of a write); "
                        "replica(s) %s will be copied from replica %d", self.name, s, copied, live[best])

    def _place(self, nodes: list[list[str]] | None) -> list[Any]:
        """One placement group per shard, a bundle per replica, spread: Ray puts a shard's replicas on different
        nodes where there are enough (one node failing then takes at most one replica of each shard), on the same
        node otherwise. Reopening, each bundle is pinned to the node its replica ran on (``nodes``, from the
        manifest), where its files are, while that node is alive."""
        ray = _ray()
        from ray.util.placement_group import NODE_ID_LABEL_KEY, placement_group
        alive = _live_nodes() if nodes else set()
        groups = []
        for s in range(self.shards):
            pins = [{NODE_ID_LABEL_KEY: node} if node in alive else {}
                    for node in (nodes[s] if nodes and len(nodes[s]) == self.replicas else [None] * self.replicas)]
            groups.append(placement_group([dict(BUNDLE)] * self.replicas, strategy="SPREAD",
                                          bundle_label_selector=pins))
        ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=PLACEMENT_TIMEOUT)
        if len(ready) < len(groups):
            for group in groups:
                ray.util.remove_placement_group(group)
            raise ClusterUnavailableError(f"the Ray cluster could not place {self.shards} x {self.replicas} replicas "
                                          f"within {PLACEMENT_TIMEOUT:.0f} s (each needs {BUNDLE})")
        return groups

    def _new_home(self, s: int, r: int) -> Any:
        """Where a copy of replica r of shard s starts: its bundle while the node it ran on is alive; else a live
        node that holds no other replica of the shard, if there is one (a bundle pinned to a dead node would
        never be placed again)."""
        alive = _live_nodes()
        if self._nodes[s][r] in alive:
            return self._bundle(s, r)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        taken = {self._nodes[s][i] for i in range(self.replicas) if i != r and not self._dead[s, i]}
        free = sorted(alive - taken)
        return NodeAffinitySchedulingStrategy(free[0], soft=True) if free else "DEFAULT"

    def _bundle(self, s: int, r: int) -> Any:
        """Where replica r of shard s runs: its bundle of the shard's placement group (which Ray moves to a live
        node when its node dies)."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        return PlacementGroupSchedulingStrategy(self._groups[s], placement_group_bundle_index=r)

    # ---- calls to the replicas -----------------------------------------------------------------------------------
    @staticmethod
    def _get(ray: Any, refs: Any) -> Any:
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(ray, exc) from None

    def _pick(self, shard: int, skip: int = -1) -> int | None:
        """The live replica of ``shard`` (other than ``skip``) with the fewest calls in flight (None: none)."""
        with self._lock:
            busy = np.where(self._dead[shard], np.iinfo(np.int64).max, self._busy[shard])
            if skip >= 0:
                busy[skip] = np.iinfo(np.int64).max
            r = int(np.argmin(busy))
            if self._dead[shard, r] or r == skip:
                return None
            self._busy[shard, r] += 1
            return r

    def _mark_dead(self, shard: int, r: int, actor: Any) -> None:
        """Leave replica r of ``shard`` out from now on, unless it was replaced (:meth:`repair`) since ``actor``,
        the one that failed, was called (None: whichever runs now)."""
        with self._lock:
            if actor is not None and (self._actors[shard][r] is not actor or self._dead[shard, r]):
                return
            self._dead[shard, r] = True
        # in the manifest before the write that found it returns: reopened later, it is copied, not trusted
        self._db._record_state(self.name, self)
        with self._lock:
            if self._db.auto_repair and not self._closing and (self._repairer is None or
                                                              not self._repairer.is_alive()):
                self._repairer = threading.Thread(target=self._repair_in_background, daemon=True,
                                                  name=f"simdex-repair-{self.name}")
                self._repairer.start()

    def _repair_in_background(self) -> None:
        """Repair until no replica is dead, or until a shard has no live replica left to repair it from (then the
        next replica found dead starts this again)."""
        time.sleep(AUTO_REPAIR_DELAY)  # the dead replica's process lets go of its files
        while self._dead.any() and not self._closing:
            try:
                self.repair()
            except Exception:  # noqa: BLE001 - a shard with no live replica, or no cluster: repair() is still there
                return

    def _done(self, shard: int, r: int) -> None:
        with self._lock:
            self._busy[shard, r] -= 1

    def _done_later(self, shard: int, r: int, ref: Any) -> None:
        """:meth:`_done` once the call ``ref``, whose answer is no longer waited for, ends: until then it is still
        that replica's load (a stalled replica is not picked again)."""
        ref.future().add_done_callback(lambda _: self._done(shard, r))

    def _read(self, method: str, args_of: Callable[[int], tuple], kwargs: dict[str, Any],
              shards: list[int] | None = None, hedge: bool = True) -> tuple[dict[int, Any], list[int]]:
        """``method`` on one live replica of each of ``shards`` (default all), in parallel; a replica found dead
        is marked and the call goes to another, and a shard still waiting after the hedge delay
        (:meth:`_hedge_delay`; never without ``hedge``) is asked of a second replica too, the first answer taken.
        Returns ({shard: result}, shards with no live replica)."""
        ray = _ray()
        shards = list(range(self.shards)) if shards is None else shards
        start = time.perf_counter()
        calls: dict[int, list[tuple[int, Any, Any]]] = {}  # shard: its calls in flight (replica, actor, ref)
        missing: list[int] = []

        def send(s: int, skip: int = -1) -> bool:
            r = self._pick(s, skip)
            if r is None:
                return False
            actor = self._actors[s][r]
            args, pieces = _inline_pieces(args_of(s))
            calls.setdefault(s, []).append((r, actor, actor.read.remote(method, args, kwargs, *pieces)))
            return True

        for s in shards:
            if not send(s):
                missing.append(s)
        results: dict[int, Any] = {}
        hedge = self._hedge_delay(method) if hedge else None
        hedged = False
        try:
            while calls:
                refs = [ref for shard_calls in calls.values() for _, _, ref in shard_calls]
                if hedge is None:  # each answer in turn: the get alone, no wait call before it
                    ready = refs[:1]
                elif hedged:
                    ready, _ = ray.wait(refs, num_returns=1)
                else:
                    ready, _ = ray.wait(refs, num_returns=len(refs),
                                        timeout=max(0.0, start + hedge - time.perf_counter()))
                    if not ready:  # past the hedge delay: a second replica for every shard still waiting
                        hedged = True
                        for s, shard_calls in calls.items():
                            if len(shard_calls) == 1 and send(s, skip=shard_calls[0][0]):
                                with self._lock:  # (reads run on many threads)
                                    self.hedged_reads += 1
                        continue
                for ref in ready:
                    s, call = next(((s, c) for s, shard_calls in calls.items() for c in shard_calls
                                    if c[2] is ref), (None, None))
                    if call is None:  # its shard was answered by the other replica in this same round
                        continue
                    r, actor, _ = call
                    calls[s].remove(call)
                    self._done(s, r)
                    try:
                        results[s] = self._get(ray, ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                        self._mark_dead(s, r, actor)
                        if not calls[s] and not send(s):
                            missing.append(s)
                        if not calls[s]:
                            del calls[s]
                        continue
                    for r_other, _, ref_other in calls.pop(s):  # the slower replica's answer is not waited for
                        self._done_later(s, r_other, ref_other)
        finally:  # (when a replica raised, the calls still in flight)
            for s, shard_calls in calls.items():
                for r, _, ref in shard_calls:
                    self._done_later(s, r, ref)
        if not hedged:
            self._read_seconds.setdefault(method, deque(maxlen=HEDGE_WINDOW)).append(time.perf_counter() - start)
        return results, sorted(missing)

    def _hedge_delay(self, method: str) -> float | None:
        """Seconds after which a read of ``method`` still waiting is hedged (``hedge_after`` of :func:`connect`);
        None: never (or no shard has a second replica)."""
        setting = self._db.hedge_after
        if setting is None or self.replicas == 1:
            return None
        if setting != "auto":
            return float(setting)
        recent = self._read_seconds.get(method)
        if recent is None or len(recent) < HEDGE_MIN_SAMPLES:
            return HEDGE_DEFAULT
        return max(HEDGE_FLOOR, float(np.percentile(np.fromiter(recent, float), 95)))

    def _write(self, method: str, args_of: Callable[[int], tuple], kwargs: dict[str, Any], shards: list[int],
               kwargs_of: Callable[[int], dict[str, Any]] | None = None) -> dict[int, Any]:
        """``method`` on every live replica of each of ``shards``, in parallel; returns when all have answered
        ({shard: the first replica's result}). A replica found dead is marked and left out from then on (it
        missed this write); a shard with no live replica raises StorageError naming the shards written."""
        ray = _ray()
        seq: dict[int, int] = {}
        with contextlib.ExitStack() as held:
            for s in sorted(shards):  # in shard order: two writers never wait for each other's locks
                held.enter_context(self._write_locks[s])
            calls = []
            for s in shards:
                args, kw = args_of(s), kwargs if kwargs_of is None else kwargs_of(s)
                seq[s] = self._journals[s].record(method, args, kw)
                calls += [(s, r, self._actors[s][r], self._actors[s][r].call.remote(method, args, kw))
                          for r in range(self.replicas) if not self._dead[s, r]]
        results: dict[int, Any] = {}
        acks = {s: 0 for s in shards}
        error: BaseException | None = None
        for s, r, actor, ref in calls:
            try:
                value = self._get(ray, ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                self._mark_dead(s, r, actor)
                continue
            except Exception as exc:  # the replica refused the request: every replica of the shard will
                error = error or exc
                continue
            results.setdefault(s, value)
            acks[s] += 1
            with self._lock:
                if self._actors[s][r] is actor:
                    self._acked[s, r] = max(self._acked[s, r], seq[s])
        for s, n in acks.items():
            if n == 0:
                with self._write_locks[s]:
                    self._journals[s].forget(seq[s])
        if error is not None:
            raise error
        lost = [s for s, n in acks.items() if n == 0]
        self.last_write = {"shards": sorted(shards), "acknowledged_by": acks}
        if lost:
            raise StorageError(f"collection {self.name!r}: shard(s) {lost} have no live replica, their rows were not "
                               f"written; shard(s) {sorted(set(shards) - set(lost))} were written")
        return results

    def _each_shard(self, method: str, args_of: Callable[[int], tuple]) -> dict[int, Any]:
        """A replica-level call (not the collection's) on each shard's first live replica."""
        ray = _ray()
        out = {}
        for s in range(self.shards):
            r = self._pick(s)
            if r is None:
                raise StorageError(f"collection {self.name!r}: shard {s} has no live replica")
            try:
                out[s] = self._get(ray, getattr(self._actors[s][r], method).remote(*args_of(s)))
            finally:
                self._done(s, r)
        return out

    def repair(self) -> list[tuple[int, int]]:
        """Bring each dead replica back; returns the (shard, replica) pairs repaired, and ``last_repair`` says how.

        A new actor opens the dead replica's own files (on its node, if that node is alive), recovers them from
        its log, and replays the shard's writes after the last one it acknowledged from the writer's journal
        (:class:`_Journal`). Where that cannot be done (the node is gone, the files do not open, the journal no
        longer holds every write it missed, or a field was changed meanwhile), the new actor starts from a copy of
        a live replica instead. The shard's writes wait meanwhile (its reads go on), and the replica serves again
        only once it holds every write acknowledged to the caller. A shard with no live replica cannot be repaired
        (StorageError): its records are only in the dead replicas' files."""
        with self._repair_lock:
            return self._repair()

    def _repair(self) -> list[tuple[int, int]]:
        ray = _ray()
        replaced, self.last_repair = [], []
        for s, r in (tuple(int(v) for v in pair) for pair in np.argwhere(self._dead)):
            with self._write_locks[s]:
                live = [i for i in range(self.replicas) if not self._dead[s, i]]
                if not live:
                    raise StorageError(f"collection {self.name!r}: shard {s} has no live replica to copy from")
                try:
                    ray.kill(self._actors[s][r])
                except Exception:  # noqa: BLE001 - already gone
                    pass
                folder = str(self._db.path / self.name / f"shard-{s}" / f"replica-{r}")
                source = self._must_copy.get((s, r))
                source = live[0] if source is None or source not in live else source
                missed = None if (s, r) in self._must_copy else self._journals[s].after(int(self._acked[s, r]))
                actor = self._restart(s, r, folder, missed) if missed is not None else None
                how = {"shard": s, "replica": r, "from": "journal", "writes": len(missed or ())}
                if actor is None:
                    # the copy runs after every write already sent to the source (Ray keeps one caller's order)
                    copy = self._actors[s][source].copy.remote()
                    actor = _actor_class().options(scheduling_strategy=self._new_home(s, r)).remote(
                        folder, self._db._db_options, copy)
                    self._get(ray, actor.open.remote(self.name, None))
                    how = {"shard": s, "replica": r, "from": f"a copy of replica {source}"}
                node = self._get(ray, actor.node_id.remote())
                with self._lock:
                    self._actors[s][r] = actor
                    self._nodes[s][r] = node
                    self._acked[s, r] = self._journals[s].seq
                    self._dead[s, r] = False
                    self._must_copy.pop((s, r), None)
                replaced.append((s, r))
                self.last_repair.append(how)
        if replaced:
            self._db._record_state(self.name, self)
        return replaced

    def _restart(self, s: int, r: int, folder: str, missed: list[tuple[str, tuple, dict[str, Any]]]) -> Any:
        """A new actor on replica r's own files, caught up with the writes it ``missed``; None if that fails."""
        ray = _ray()
        alive = _live_nodes()
        if self._nodes[s][r] not in alive:
            return None
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        where = NodeAffinitySchedulingStrategy(self._nodes[s][r], soft=False)
        actor = _actor_class().options(scheduling_strategy=where).remote(folder, self._db._db_options)
        try:
            self._get(ray, actor.open.remote(self.name, None))
            self._get(ray, [actor.call.remote(method, args, kwargs) for method, args, kwargs in missed])
        except Exception:  # noqa: BLE001 - its files do not open, or a replayed write fails: copy instead
            ray.kill(actor)
            return None
        return actor

    def _shutdown(self, clean: bool = False) -> None:
        """Stop the replicas; ``clean``: the collection was closed, so its next opening need not compare them."""
        ray = _ray()
        self._closing = True
        if self._repairer is not None:
            self._repairer.join()
        for row in self._actors:
            for actor in row:
                try:
                    ray.get(actor.close.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - a dead or stuck replica: its log makes it durable anyway
                    pass
                ray.kill(actor)
        for group in self._groups:
            ray.util.remove_placement_group(group)
        self._groups = []
        if clean:
            self._db._record_state(self.name, self, opened=False)

    def _route(self, ids: list[str]) -> dict[int, list[int]]:
        """{shard: positions in ``ids``} of the ids' shards."""
        out: dict[int, list[int]] = {}
        for i, record_id in enumerate(ids):
            out.setdefault(shard_of(record_id, self.shards), []).append(i)
        return out

    @staticmethod
    def _warn_missing(missing: list[int]) -> None:
        _warn(_notes(missing, []))

    # ---- the collection API --------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        per_shard, missing = self._read("stats", lambda s: (), {})
        first = per_shard[min(per_shard)] if per_shard else {}
        return {**first, "name": self.name, "count": sum(p["count"] for p in per_shard.values()),
                "shards": self.shards, "replicas": self.replicas, "oversample": self.oversample,
                "shard_counts": {s: p["count"] for s, p in sorted(per_shard.items())},
                "dead_replicas": [[int(s), int(r)] for s, r in np.argwhere(self._dead)], "missing_shards": missing,
                "hedged_reads": self.hedged_reads}

    def count(self) -> int:
        counts, missing = self._read("count", lambda s: (), {})
        self._warn_missing(missing)
        return sum(counts.values())

    def upsert(self, ids: Any, vectors: Any = None, metadatas: Any = None, documents: Any = None, *,
               max_batch: int | None = None, fields: dict[str, Any] | None = None) -> int:
        """:meth:`CollectionAPI.upsert`: each record goes to every live replica of its shard, and this returns
        when all of them have made it durable; ``last_write`` then says which shards were written and how many
        replicas acknowledged each."""
        ids = rec.check_record_ids(ids)
        if not ids:
            raise InvalidInputError("ids is empty")
        if max_batch is not None and len(ids) > max_batch:
            raise InvalidInputError(f"a batch holds at most {max_batch} records; got {len(ids)}")
        if vectors is not None and not isinstance(vectors, dict) and self.dim is not None and \
                "embedder" not in self._spec["create"]:
            # checked here in full, so that a bad record refuses the whole batch before any shard writes
            vectors = rec.check_upsert(ids, vectors, metadatas, documents, int(self.dim), False).vectors
        n = len(ids)
        for name, values in (("metadatas", metadatas), ("documents", documents)):
            if values is not None and (not isinstance(values, (list, tuple)) or len(values) != n):
                raise InvalidInputError(f"{name} must be a list with one entry per id ({n})")
        routes = self._route(ids)
        vectors, fields = self._embed_once(ids, vectors, documents, fields, routes)

        def args_of(s: int) -> tuple:
            at = routes[s]
            return ([ids[i] for i in at], _part(vectors, at), _part(metadatas, at), _part(documents, at))

        written = self._write("upsert", args_of, {}, sorted(routes),
                              kwargs_of=lambda s: {"fields": _part(fields, routes[s])})
        return int(sum(written.values()))

    def _embed_once(self, ids: list[str], vectors: Any, documents: Any, fields: dict[str, Any] | None,
                    routes: dict[int, list[int]]) -> tuple[Any, dict[str, Any] | None]:
        """With several replicas and documents to embed: (vectors, fields) of the batch, each shard's part
        embedded by one of its replicas (the model is theirs), so that the replicas all store the same vectors
        and a batch costs one embedding instead of one per replica; the replicas' journal keeps the vectors, so
        a replay does not embed again either. Else ``vectors`` and ``fields`` as they are."""
        if self.replicas == 1 or documents is None or not isinstance(documents, (list, tuple)) or \
                not self._embeds(vectors, fields):
            return vectors, fields
        order = sorted(routes)
        found, missing = self._read("_embedded_upsert", lambda s: (
            [ids[i] for i in routes[s]], _part(vectors, routes[s]), _part(documents, routes[s]),
            _part(fields, routes[s])), {}, order, hedge=False)
        if missing:  # a shard with no live replica: its write below says so
            return vectors, fields
        n = len(ids)
        out_vectors: list[Any] = [None] * n
        out_fields: dict[str, list[Any]] = {}
        for s in order:
            part_vectors, part_fields = found[s]
            for j, i in enumerate(routes[s]):
                out_vectors[i] = part_vectors[j]
            for name, values in (part_fields or {}).items():
                column = out_fields.setdefault(name, [None] * n)
                for j, i in enumerate(routes[s]):
                    column[i] = values[j]
        return np.asarray(out_vectors, np.float32), (out_fields or None)

    def _embeds(self, vectors: Any, fields: dict[str, Any] | None) -> bool:
        """Whether an upsert of ``vectors`` and ``fields`` with documents leaves something for an embedder: the
        main vectors (or some of them) missing in a collection with an embedder, or the values of a named field
        that has one."""
        def missing(values: Any) -> bool:
            return values is None or (isinstance(values, (list, tuple)) and any(v is None for v in values))

        main = vectors.get(MAIN_FIELD) if isinstance(vectors, dict) else vectors
        if "embedder" in self._spec["create"] and missing(main):
            return True
        given = {**(fields or {}), **(vectors if isinstance(vectors, dict) else {})}
        return any(missing(given.get(name)) for name in self._fields_with_embedders())

    def _fields_with_embedders(self) -> set[str]:
        """The named fields that have an embedder, as a replica reports them (asked once, and again after this
        collection adds, drops or switches a field)."""
        if self._embedder_fields is None:
            found, _ = self._read("stats", lambda s: (), {}, [0])
            if not found:  # (shard 0 has no live replica: its writes will say so)
                return set()
            self._embedder_fields = {name for name, spec in found[0].get("fields", {}).items()
                                     if spec.get("embedder")}
        return self._embedder_fields

    def get(self, ids: Any = None, where: Any = None, limit: int | None = None, offset: int = 0,
            include: Any = None) -> list[dict[str, Any]]:
        limit = None if limit is None else check_positive_int(limit, "limit", minimum=0)
        offset = check_positive_int(offset, "offset", minimum=0)
        if ids is not None:
            id_list = rec.check_record_ids(ids) if ids else []
            routes = self._route(id_list)
            found, missing = self._read("get", lambda s: ([id_list[i] for i in routes[s]], where, None, 0, include),
                                        {}, sorted(routes))
            self._warn_missing(missing)
            by_id = {r["id"]: r for rows in found.values() for r in rows}
            rows = [by_id[i] for i in id_list if i in by_id]
            return rows[offset:None if limit is None else offset + limit]
        want = None if limit is None else limit + offset
        found, missing = self._read("get", lambda s: (None, where, want, 0, include), {})
        self._warn_missing(missing)
        rows = sorted((r for part in found.values() for r in part), key=lambda r: r["id"])
        return rows[offset:None if limit is None else offset + limit]

    def delete(self, ids: Any = None, where: Any = None, *, missing_ok: bool = False) -> int:
        if ids is None:
            if where is None:
                raise InvalidInputError("delete needs ids, where, or both")
            deleted = self._write("delete", lambda s: (None, where), {"missing_ok": missing_ok},
                                  list(range(self.shards)))
            return int(sum(deleted.values()))
        id_list = rec.check_record_ids(ids)
        if not missing_ok:
            present = {r["id"] for r in self.get(id_list, include=[])}
            absent = [i for i in id_list if i not in present]
            if absent:
                raise UnknownIdError(f"id {absent[0]!r} is not in collection {self.name!r} ({len(absent)} unknown "
                                     f"id(s) in total); nothing was deleted")
        routes = self._route(id_list)
        deleted = self._write("delete", lambda s: ([id_list[i] for i in routes[s]], where), {"missing_ok": True},
                              sorted(routes))
        return int(sum(deleted.values()))

    def search(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
               ef: int | None = None, **options: Any) -> list[dict[str, Any]]:
        """:meth:`CollectionAPI.search`: every shard's ``k * oversample`` best, merged (by distance, or by score
        for text and fused searches; BM25 statistics are each shard's own). Warns PartialResultsWarning when a
        shard had no live replica."""
        hits, notes = self.search_with_notes(vector, k, where, include, ef, **options)
        _warn(notes)
        return hits

    def search_with_notes(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
                          ef: int | None = None, **options: Any) -> tuple[list[dict[str, Any]], list[str]]:
        """:meth:`search`, returning its warnings (a shard missing, a query text truncated) instead of issuing
        them: the server puts them in its response."""
        k, include, per_shard, notes = self._scatter("search_with_notes", vector, k, where, include, ef, options)
        return (_merge_columns(per_shard, k, include) or [[]])[0], notes

    def search_batch(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None, **options: Any) -> list[list[dict[str, Any]]]:
        hits, notes = self.search_batch_with_notes(vectors, k, where, include, ef, **options)
        _warn(notes)
        return hits

    def search_batch_with_notes(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                                ef: int | None = None, **options: Any) -> tuple[list[list[dict[str, Any]]], list[str]]:
        k, include, per_shard, notes = self._scatter("search_batch_with_notes", vectors, k, where, include, ef,
                                                     options)
        return _merge_columns(per_shard, k, include), notes

    def _scatter(self, method: str, query: Any, k: Any, where: Any, include: Any, ef: Any, options: dict[str, Any]
                 ) -> tuple[int, tuple[str, ...], list[Any], list[str]]:
        """A search ``method`` of the local collection (``search_with_notes`` or ``search_batch_with_notes``) on
        every shard, each asked for its ``k * oversample`` best with distances: (k, include, each shard's hits,
        the notes)."""
        k = check_positive_int(k, "k")
        include = check_include(include, DEFAULT_SEARCH_INCLUDE)
        ask = list(include) if "distances" in include else [*include, "distances"]
        found, missing = self._read(method, lambda s: (query, k * self.oversample, where, ask, ef), options)
        notes = _notes(missing, [note for _, shard_notes in found.values() for note in shard_notes])
        return k, include, [hits for hits, _ in found.values()], notes

    def add_field(self, name: str, spec: dict[str, Any] | None = None, *, embedder: Any = None) -> dict[str, Any]:
        return self._change_fields("add_field", (name, spec), {"embedder": embedder})[0]

    def use_field(self, name: str, *, force: bool = False) -> None:
        self._change_fields("use_field", (name,), {"force": force})

    def drop_field(self, name: str) -> None:
        if name == MAIN_FIELD:
            raise InvalidInputError(f"{MAIN_FIELD!r} is the main vector; it cannot be dropped")
        self._change_fields("drop_field", (name,), {})

    def _change_fields(self, method: str, args: tuple, kwargs: dict[str, Any]) -> dict[int, Any]:
        """Write a change of the named fields to every shard; the fields with embedders are asked of a replica
        again afterwards (:meth:`_fields_with_embedders`), even when the write failed part way."""
        try:
            return self._write(method, lambda s: args, kwargs, list(range(self.shards)))
        finally:
            self._embedder_fields = None
