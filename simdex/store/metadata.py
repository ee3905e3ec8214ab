"""Record metadata and documents in SQLite (stdlib ``sqlite3``, WAL journal): the store behind ``get`` and ``where``.

One SQLite file per collection. It is written only by the collection's writer, after the record is durable in
simdex's own write-ahead log, and remembers the last log record it applied (``applied_lsn``), so that recovery
replays exactly what it missed. Readers use their own connections (one per thread) and see committed state.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fileformat import fsync_path
from .filters import compile_where
from .records import decode_metadatas

if TYPE_CHECKING:
    from .fields import FieldValues

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    rid INTEGER PRIMARY KEY,  -- the rowid: one B-tree less to update per insert than a separate UNIQUE index
    id TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL,
    document TEXT
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- the values of the named vector fields (.fields), one row per record and field; a record's values go with its
-- row version (rid), so replacing or deleting the record removes them
CREATE TABLE IF NOT EXISTS field_values (
    rid INTEGER NOT NULL,
    field TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (rid, field)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS field_values_deleted AFTER DELETE ON records
    BEGIN DELETE FROM field_values WHERE rid = OLD.rid; END;
CREATE TRIGGER IF NOT EXISTS field_values_replaced AFTER UPDATE OF rid ON records WHEN OLD.rid != NEW.rid
    BEGIN DELETE FROM field_values WHERE rid = OLD.rid; END;
"""
_CHUNK = 900  # stay below SQLite's limit on bound parameters


_FETCH_SQL: dict[tuple[int, bool], str] = {}
_READER_MMAP_BYTES = 1 << 30
_READER_CACHE_KIB = 8192
# rows kept in memory for searches (:meth:`MetadataStore.fetch`): an estimate of their bytes, with a fixed
# per-row cost for the dict entry and the tuple
ROW_CACHE_BYTES = 32 << 20
_ROW_OVERHEAD = 160
# a decoded metadata dict kept (:meth:`MetadataStore.metadatas`): counted as the dict plus twice its JSON text
_DECODED_OVERHEAD = 240
_FLAT_TYPES = frozenset((str, int, float, bool, type(None)))


def _chunks(seq: list, size: int = _CHUNK) -> Iterable[list]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]



def copy_database(source: sqlite3.Connection, target: str | Path) -> None:
    """Copy one committed state of the open SQLite database ``source`` into ``target`` with SQLite's backup API
    (a writer may go on meanwhile), then close ``source``."""
    dst = sqlite3.connect(target)
    try:
        source.backup(dst)
    finally:
        dst.close()
        source.close()

def _id_dicts(rows: dict[int, tuple], rids: list[list[int]], values: list[list[float]], key: str | None
              ) -> list[list[dict[str, Any]]]:
    """:meth:`MetadataStore.id_hits` from ``rows`` (rid -> a tuple whose first item is the id), one comprehension
    a result row: a hit's dict is built as its id is read (KeyError: a row not in ``rows``)."""
    if key is None:
        return [[{"id": rows[rid][0]} for rid in row if rid >= 0] for row in rids]
    return [[{"id": rows[rid][0], key: value} for rid, value in zip(row, row_values) if rid >= 0]
            for row, row_values in zip(rids, values)]


class MetadataStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # rid -> (id,) or (id, metadata JSON, document), filled by fetch. A row version never changes: a write
        # to a record gives it a new rid (rids are never reused), so an entry cannot go stale; the rids a write
        # replaces or deletes are dropped (forget) as it becomes visible, so a stale rid is never served either.
        self._rows: dict[int, tuple] = {}
        # rid -> decoded metadata, for rows in _rows whose metadata has no nested values (:meth:`metadatas`)
        self._decoded: dict[int, dict[str, Any]] = {}
        self._rows_bytes = 0
        self.row_cache_bytes = ROW_CACHE_BYTES
        self._writer = self._connect(writer=True)
        self._writer.executescript(_SCHEMA)
        self._writer.commit()

    def _connect(self, writer: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        if writer:
            conn.execute("PRAGMA journal_mode=WAL")
            # simdex's own log is fsynced before SQLite is touched, and recovery replays it into SQLite, so
            # SQLite need not fsync every commit.
            conn.execute("PRAGMA synchronous=NORMAL")
        else:
            # a search reads its hits' rows at random: pages memory-mapped instead of read() into a 2 MB cache
            # (SQLite's default) took a single query's ten rows from 55 us to 34 us on a 20k-record collection;
            # the mapping is address space (the OS page cache), the cache at most 8 MB per reading thread
            conn.execute(f"PRAGMA mmap_size={_READER_MMAP_BYTES}")
            conn.execute(f"PRAGMA cache_size=-{_READER_CACHE_KIB}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # ---- writer side ---------------------------------------------------------------------------------------------
    def applied_lsn(self) -> int:
        row = self._writer.execute("SELECT value FROM state WHERE key='applied_lsn'").fetchone()
        return int(row[0]) if row else 0

    def current_rids(self, ids: list[str]) -> dict[str, int]:
        """id -> rid for the ids that exist (read through the writer connection: sees the latest writes)."""
        out: dict[str, int] = {}
        for part in _chunks(ids):
            q = f"SELECT id, rid FROM records WHERE id IN ({','.join('?' * len(part))})"
            out.update(self._writer.execute(q, part).fetchall())
        return out

    def max_rid(self) -> int:
        row = self._writer.execute("SELECT MAX(rid) FROM records").fetchone()
        return int(row[0]) if row and row[0] is not None else -1

    def apply_upsert(self, lsn: int, ids: list[str], rids: np.ndarray, metadatas: list[str],
                     documents: list[str | None], fields: dict[str, FieldValues] | None = None) -> None:
        with self._writer:
            self.stage_upsert(lsn, ids, rids, metadatas, documents, fields)

    def stage_upsert(self, lsn: int, ids: list[str], rids: np.ndarray, metadatas: list[str],
                     documents: list[str | None], fields: dict[str, FieldValues] | None = None) -> None:
        """Write the rows in an open transaction: invisible to readers until :meth:`commit`."""
        self._begin()
        self._writer.executemany(
            "INSERT INTO records (id, rid, metadata, document) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET rid=excluded.rid, metadata=excluded.metadata, "
            "document=excluded.document",
            zip(ids, rids.tolist(), metadatas, documents))
        self._stage_fields(rids, fields or {})
        self._set_lsn(lsn)

    def stage_field_values(self, lsn: int, rids: np.ndarray, fields: dict[str, FieldValues]) -> None:
        """Set named fields' values of stored records, in an open transaction (:meth:`commit`)."""
        self._begin()
        self._stage_fields(rids, fields)
        self._set_lsn(lsn)

    def _stage_fields(self, rids: np.ndarray, fields: dict[str, FieldValues]) -> None:
        for name, values in fields.items():
            self._writer.executemany("INSERT OR REPLACE INTO field_values (rid, field, value) VALUES (?, ?, ?)",
                                     zip(rids[values.at].tolist(), [name] * values.at.shape[0], values.blobs()))

    def apply_field_values(self, lsn: int, rids: np.ndarray, fields: dict[str, FieldValues]) -> None:
        with self._writer:
            self.stage_field_values(lsn, rids, fields)

    def drop_field(self, field: str) -> None:
        """Remove every value of a named field (the field was dropped from the collection's configuration)."""
        with self._writer:
            self._begin()
            self._writer.execute("DELETE FROM field_values WHERE field = ?", (field,))

    def documents_without(self, field: str, after: int, limit: int) -> tuple[np.ndarray, list[str]]:
        """(rids, documents) of up to ``limit`` records after rid ``after`` that have a document and no value in
        ``field``, in rid order (a field being filled from the documents)."""
        rows = self._reader().execute(
            "SELECT rid, document FROM records WHERE rid > ? AND document IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM field_values f WHERE f.rid = records.rid AND f.field = ?) ORDER BY rid LIMIT ?",
            (after, field, limit)).fetchall()
        return np.fromiter((r[0] for r in rows), np.int64, len(rows)), [r[1] for r in rows]

    def still_without(self, field: str, rids: np.ndarray) -> np.ndarray:
        """Those of ``rids`` that are still current and have no value in ``field`` (through the writer)."""
        out: list[int] = []
        for part in _chunks(rids.tolist()):
            out.extend(r[0] for r in self._writer.execute(
                f"SELECT rid FROM records WHERE rid IN ({','.join('?' * len(part))}) AND NOT EXISTS "
                f"(SELECT 1 FROM field_values f WHERE f.rid = records.rid AND f.field = ?)", (*part, field)))
        return np.array(sorted(out), np.int64)

    def fill_progress(self, field: str) -> tuple[int, int]:
        """(records with a document that have a value in ``field``, records with a document)."""
        conn = self._reader()
        total = conn.execute("SELECT COUNT(*) FROM records WHERE document IS NOT NULL").fetchone()[0]
        done = conn.execute("SELECT COUNT(*) FROM records r JOIN field_values f ON f.rid = r.rid AND f.field = ? "
                            "WHERE r.document IS NOT NULL", (field,)).fetchone()[0]
        return int(done), int(total)

    def commit(self) -> None:
        self._writer.commit()

    def rollback(self) -> None:
        """Undo the open transaction (after a failed write; SQLite may have undone it already)."""
        try:
            self._writer.rollback()
        except sqlite3.Error:
            if self._writer.in_transaction:
                raise  # still open: the next write tries again (_begin) before it stages anything

    def _begin(self) -> None:
        """Before staging a write: a transaction left open by a failed rollback must not carry into it."""
        if self._writer.in_transaction:
            self._writer.rollback()

    def apply_delete(self, lsn: int, ids: list[str]) -> None:
        with self._writer:
            self.stage_delete(lsn, ids)

    def stage_delete(self, lsn: int, ids: list[str]) -> None:
        """Delete the rows in an open transaction: invisible to readers until :meth:`commit`."""
        self._begin()
        for part in _chunks(ids):
            self._writer.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(part))})", part)
        self._set_lsn(lsn)

    def _set_lsn(self, lsn: int) -> None:
        self._writer.execute("INSERT INTO state (key, value) VALUES ('applied_lsn', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (lsn,))

    def backup_to(self, path: str | Path) -> None:
        """Write a consistent copy of the store to ``path`` (fsynced). Callers keep writers out meanwhile."""
        path = Path(path)
        path.unlink(missing_ok=True)
        copy_database(self._connect(), path)
        fsync_path(path)

    def check(self) -> str | None:
        """None if SQLite's quick integrity check passes, else what it found."""
        try:
            rows = self._writer.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:3])

    @staticmethod
    def restore(snapshot: str | Path | None, path: str | Path) -> None:
        """Replace the store at ``path`` by ``snapshot`` (None: by an empty store)."""
        path = Path(path)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        tmp = Path(f"{path}.restore")
        if snapshot is None:
            tmp.unlink(missing_ok=True)
            MetadataStore(tmp).close()
        else:
            shutil.copyfile(snapshot, tmp)
        fsync_path(tmp)
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, path)

    def make_durable(self) -> None:
        """Flush SQLite's own log into its database file and fsync it (before simdex's log is truncated). On a
        connection of its own: the writer's may be in the middle of a write in another thread."""
        conn = self._connect()
        try:
            # TRUNCATE: also empties SQLite's own log file, which otherwise stays at its largest size for good
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    # ---- reader side ---------------------------------------------------------------------------------------------
    def id_hits(self, rids: list[list[int]], values: list[list[float]], key: str | None
                ) -> list[list[dict[str, Any]]]:
        """The hits of a search that returns ids only: per row of ``rids`` (Python ints; -1, "no hit", is skipped)
        a ``{"id": ...}`` dict per hit, with its value of ``values`` under ``key`` unless it is None. Straight from
        memory when every row was read before (a search's ids, one query per call), else after one read of
        them all."""
        try:
            return _id_dicts(self._rows, rids, values, key)
        except KeyError:
            return _id_dicts(self.fetch([rid for row in rids for rid in row if rid >= 0], False), rids, values, key)

    def rids_where(self, where: Any, writer: bool = False) -> np.ndarray:
        sql, params = compile_where(where)
        conn = self._writer if writer else self._reader()
        rows = conn.execute(f"SELECT rid FROM records WHERE {sql}", params).fetchall()
        return np.fromiter((r[0] for r in rows), np.int64, len(rows))

    def ids_where(self, where: Any) -> list[tuple[str, int]]:
        sql, params = compile_where(where)
        return self._writer.execute(f"SELECT id, rid FROM records WHERE {sql}", params).fetchall()

    def fetch(self, rids: list[int], contents: bool = True) -> dict[int, tuple]:
        """rid -> (id, metadata JSON, document) of ``rids`` (Python ints; repeats allowed), or with ``contents``
        False rid -> a tuple whose first item is the id: a search that returns ids only reads no metadata or
        document pages.

        Rows come from memory when they were read before (up to ``row_cache_bytes`` of them, then the cache
        starts again): a search's hits cost a dict lookup each instead of a SQLite query, whose statement and
        page reads took 20 us of a 55 us single query and evicted the graph search's cache lines."""
        if self._rows_bytes > self.row_cache_bytes:  # (also after the budget is lowered)
            self._forget_all()
        cache = self._rows
        out: dict[int, tuple] = {}
        missing: list[int] = []
        for rid in rids:
            row = cache.get(rid)
            if row is not None and (not contents or len(row) == 3):
                out[rid] = row
            else:
                missing.append(rid)
        if not missing:
            return out
        conn = self._reader()
        grown = 0
        for part in _chunks(missing):
            key = (len(part), contents)
            sql = _FETCH_SQL.get(key)
            if sql is None:  # one statement text per length: sqlite3 keeps it compiled in its statement cache
                sql = _FETCH_SQL[key] = (f"SELECT rid, id{', metadata, document' if contents else ''} FROM records "
                                         f"WHERE rid IN ({','.join('?' * len(part))})")
            for row in conn.execute(sql, part):
                rid, found = row[0], row[1:]
                out[rid] = cache[rid] = found
                grown += _ROW_OVERHEAD + sum(len(v) for v in found if v is not None)
        self._count_cached(grown)
        return out

    def metadatas(self, rows: dict[int, tuple]) -> dict[int, dict[str, Any]]:
        """rid -> the decoded metadata of ``rows`` (:meth:`fetch` with contents), each dict the caller's own.

        Metadata without nested values is kept decoded beside its cached row and handed out as a copy (a shallow
        copy of such a dict is a whole one): ten hits' copies cost a search about 1 us, decoding them 6 us."""
        kept = self._decoded
        out: dict[int, dict[str, Any]] = {}
        missing: list[int] = []
        for rid in rows:
            decoded = kept.get(rid)
            if decoded is None:
                missing.append(rid)
            else:
                out[rid] = decoded.copy()
        if not missing:
            return out
        cache = self._rows
        grown = 0
        for rid, decoded in zip(missing, decode_metadatas([rows[rid][1] for rid in missing])):
            out[rid] = decoded
            if rid in cache and all(type(v) in _FLAT_TYPES for v in decoded.values()):
                kept[rid] = decoded.copy()
                grown += _DECODED_OVERHEAD + 2 * len(rows[rid][1])
        self._count_cached(grown)
        return out

    def _count_cached(self, nbytes: int) -> None:
        """Count ``nbytes`` more held by the fetch cache; past ``row_cache_bytes`` the cache starts again."""
        self._rows_bytes += nbytes
        if self._rows_bytes > self.row_cache_bytes:
            self._forget_all()

    def _forget_all(self) -> None:
        self._rows.clear()  # (whole: a cache that starts again costs no bookkeeping per hit)
        self._decoded.clear()
        self._rows_bytes = 0

    def forget(self, rids: np.ndarray) -> None:
        """Drop the rows of ``rids`` (replaced or deleted) from the fetch cache. Called where the write becomes
        visible, under the collection's write lock, which readers hold while they fetch and fill the cache."""
        cache, kept = self._rows, self._decoded
        if cache:
            for rid in rids.tolist():
                cache.pop(rid, None)
                kept.pop(rid, None)

    def get(self, ids: list[str] | None, where: Any, limit: int | None, offset: int
            ) -> list[tuple[str, int, str, str | None]]:
        """(id, rid, metadata JSON, document) rows, in id order when ``ids`` is None, else in the given order."""
        sql, params = compile_where(where)
        conn = self._reader()
        if ids is not None:
            found: dict[str, tuple] = {}
            for part in _chunks(ids):
                q = (f"SELECT id, rid, metadata, document FROM records WHERE id IN ({','.join('?' * len(part))}) "
                     f"AND {sql}")
                for row in conn.execute(q, part + params):
                    found[row[0]] = row
            rows = [found[i] for i in ids if i in found]
            end = None if limit is None else offset + limit
            return rows[offset:end]
        q = f"SELECT id, rid, metadata, document FROM records WHERE {sql} ORDER BY id LIMIT ? OFFSET ?"
        return conn.execute(q, params + [-1 if limit is None else limit, offset]).fetchall()

    def documents(self) -> tuple[np.ndarray, list[str]]:
        """(rids int64, documents) of every record that has a document, in rid order."""
        rows = self._writer.execute("SELECT rid, document FROM records WHERE document IS NOT NULL "
                                    "ORDER BY rid").fetchall()
        return np.fromiter((r[0] for r in rows), np.int64, len(rows)), [r[1] for r in rows]

    def _field_rows(self, field: str, json_types: tuple[str, ...]) -> list[tuple[int, Any]]:
        """(rid, value) of every record whose metadata ``field`` (``a.b`` for nested keys) has one of the JSON
        types, in rid order."""
        path = "$." + ".".join(f'"{p}"' for p in field.split("."))
        marks = ", ".join("?" * len(json_types))
        # a reader connection: the writer's may hold a staged write whose vectors are not applied yet
        return self._reader().execute(f"SELECT rid, json_extract(metadata, ?) FROM records WHERE "
                                      f"json_type(metadata, ?) IN ({marks}) ORDER BY rid",
                                      (path, path, *json_types)).fetchall()

    def numeric_field(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        """(rids int64, values float64) of every record whose metadata ``field`` (``a.b`` for nested keys) is a
        JSON number, in rid order: the records a numeric ``where`` on that field can match."""
        rows = self._field_rows(field, ("integer", "real"))
        return (np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                np.fromiter((r[1] for r in rows), np.float64, len(rows)))

    def text_field(self, field: str) -> tuple[np.ndarray, list[str]]:
        """(rids int64, values) of every record whose metadata ``field`` is a JSON string, in rid order: the
        records a string equality ``where`` on that field can match."""
        rows = self._field_rows(field, ("text",))
        return np.fromiter((r[0] for r in rows), np.int64, len(rows)), [r[1] for r in rows]

    def field_rows(self, field: str) -> tuple[np.ndarray, list[bytes]]:
        """(rids int64, stored values) of every record that has a value in the named vector field, in rid order."""
        rows = self._writer.execute("SELECT rid, value FROM field_values WHERE field = ? ORDER BY rid",
                                    (field,)).fetchall()
        return np.fromiter((r[0] for r in rows), np.int64, len(rows)), [r[1] for r in rows]

    def fetch_fields(self, rids: Iterable[int]) -> dict[int, dict[str, bytes]]:
        """rid -> {field: stored value} of the named vector fields those records have."""
        out: dict[int, dict[str, bytes]] = {}
        conn = self._reader()
        for part in _chunks(list(dict.fromkeys(int(r) for r in rids))):
            q = f"SELECT rid, field, value FROM field_values WHERE rid IN ({','.join('?' * len(part))})"
            for rid, field, value in conn.execute(q, part):
                out.setdefault(rid, {})[field] = value
        return out

    def all_rows(self, batch: int = 8192) -> Iterable[list[tuple[int, str, str, str | None]]]:
        """Every record's (rid, id, metadata JSON, document), in rid order, ``batch`` rows at a time."""
        cursor = self._reader().execute("SELECT rid, id, metadata, document FROM records ORDER BY rid")
        while rows := cursor.fetchmany(batch):
            yield rows

    def all_field_values(self) -> Iterable[tuple[str, str, bytes]]:
        """(record id, field, stored value) of every named-field value."""
        return self._reader().execute("SELECT r.id, f.field, f.value FROM field_values f "
                                      "JOIN records r ON r.rid = f.rid")

    def count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:  # created in another thread; it goes with that thread
                    pass
            self._readers.clear()
        self._writer.close()
