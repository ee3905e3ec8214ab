"""A durable collection of records ``(id, vector, metadata, document)``: its writes and reads.

Layers, from the bottom:

- **write-ahead log** (:mod:`.wal`): every write is a checksummed record, fsynced before it is acknowledged;
- **metadata** (:mod:`.metadata`): SQLite rows ``id -> (rid, metadata, document)``, the target of ``where``;
- **record vectors** (:mod:`.vectors`) and the other **side indexes** (:mod:`.sides`: BM25, the window tree, the
  per-value label graphs), each fed by every write and rebuilt aside by the optimizer;
- **durability** (:mod:`.persistence`): checkpoints under a ``MANIFEST``, recovery on open.

Each version of a record has its own row id (rid): an upsert of an existing id tombstones the old rid and adds
a new one, so index entries are never changed in place.

Concurrency: one writer at a time (``_writer``), many readers. Logging and fsync happen outside the
readers-writer lock; applying a logged write to SQLite and memory happens under its write side, so a reader
always sees a state between two whole writes.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import check_positive_int, check_texts, check_vectors
from ..errors import InvalidInputError, InvalidTypeError, ReadOnlyError, StorageError, UnknownIdError
from . import records as rec
from ._io import storage_error
from ._rwlock import RWLock
from .api import MAIN_FIELD, CollectionAPI, resolve_mode, split_vectors
from .config import DEFAULT_GET_INCLUDE, DEFAULT_SEARCH_INCLUDE, check_include
from .dedup import DedupSide
from .embedding import EmbedderSlot, warn_truncated
from .fieldops import FieldOps
from .fields import check_field_values, check_query, decode_blobs, new_field_side, value_as_json
from .filters import AllowCache, plan_where
from .persistence import Durable
from .sides import LabelSide, SideIndex, TextSide, WindowSide, rebuild_aside
from .vectors import RecordVectors

if TYPE_CHECKING:
    from ..embed import Embedder

# rows waiting for a merge beyond which a writer merges them itself (Collection._bound_unindexed): the growing
# segment is in memory, and a merge copies it once more
UNINDEXED_BYTES = 32 << 20


def _record_hash(*parts: bytes) -> int:
    """A 64-bit hash of ``parts`` (each length-prefixed, so that no two splits of the same bytes collide)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return int.from_bytes(h.digest(), "little")


class Collection(Durable, FieldOps, CollectionAPI):
    """Records with vectors, metadata and documents, searchable by vector or text with metadata filters.

    Obtain one from :meth:`simdex.Database.create_collection` or :meth:`~simdex.Database.get_collection`. The
    configuration: ``text`` (BM25 over the documents), ``embedder`` (documents and text queries embedded by it),
    ``window_field`` (range filters on that numeric field answered by a window index), ``label_field`` (equality
    filters on that string field answered by one graph per frequent value), ``dedup`` (near-duplicate texts found
    on write and rejected, flagged or counted: :mod:`.dedup`).
    """

    def __init__(self, path: Path, name: str, config: dict[str, Any], *, sync: str, read_only: bool,
                 repair: bool, merge_rows: int = 20_000, checkpoint_bytes: int = 64 << 20,
                 log_segment_bytes: int = 64 << 20, load_embedder: Any = None) -> None:
        self.path, self.name = path, name
        self.dim: int = config["dim"]
        self.metric: str = config["metric"]
        self.index_kind: str = config["index"]
        self.params: dict[str, Any] = config["params"]
        self.text: bool = bool(config.get("text", False))
        self.embedder_info: dict[str, Any] | None = config.get("embedder")
        self.window_field: str | None = config.get("window_field")
        self.label_field: str | None = config.get("label_field")
        self.dedup: dict[str, Any] | None = config.get("dedup")
        self.fields: dict[str, dict[str, Any]] = config.get("fields") or {}
        self.text_field: str = config.get("text_field", MAIN_FIELD)  # what text queries embed with and search
        self._load_embedder = load_embedder  # a name or Embedder -> Embedder (the database's, with its registry)
        self.read_only = read_only
        self.checkpoint_bytes = checkpoint_bytes
        self.log_segment_bytes = log_segment_bytes
        self.recovery_notes: list[str] = []
        self.background_error: str | None = None
        self._embedding = EmbedderSlot(name, self.embedder_info)
        self._rw = RWLock()
        self._allow_cache = AllowCache()
        self._writer = threading.Lock()  # one logged write at a time
        self._fsyncer: ThreadPoolExecutor | None = None
        self._maintenance = threading.Lock()  # one checkpoint at a time
        self._closed = False
        self._vectors = RecordVectors(self.dim, self.metric, self.index_kind, self.params, merge_rows,
                                      None if read_only else str(path), vector_files=True)
        self._text_side: TextSide | None = None
        self._window_side: WindowSide | None = None
        self._label_side: LabelSide | None = None
        self._dedup_side: DedupSide | None = None
        self._merge_rows = merge_rows
        self._field_sides: dict[str, Any] = {}  # name -> the side index of a named vector field (.fields)
        self._sides: list[SideIndex] = [self._vectors]
        self._saved_main: tuple[Any, str] | None = None
        self._manifest: dict[str, Any] | None = None
        self._prev_manifest: dict[str, Any] | None = None
        self._next_rid = 0
        self._last_gen = 0  # the highest checkpoint number used or seen
        self._recover(sync, repair)
        self._open_field_embedders()

    def _open_sides(self) -> None:
        """The side indexes that have no files, built from the metadata store (after recovery)."""
        if self.text:
            self._text_side = TextSide(*self._meta.documents())
        if self.window_field is not None:
            self._window_side = WindowSide(self.window_field, self.dim, self.metric, self.params,
                                           *self._meta.numeric_field(self.window_field), self._vectors.vectors_of)
        if self.label_field is not None:
            self._label_side = LabelSide(self.label_field, self.dim, self.metric, self.params,
                                         lambda: self._meta.text_field(self.label_field), self._vectors.vectors_of,
                                         lambda: self._applied_lsn, self._rw)
        if self.dedup is not None:
            field = self.dedup["field"]
            rids, texts = self._meta.documents() if field == "document" else self._meta.text_field(field)
            self._dedup_side = DedupSide(self.dedup, rids, texts)
        for name, spec in self.fields.items():
            side = new_field_side(name, spec, self._merge_rows, None if self.read_only else str(self.path))
            rids, blobs = self._meta.field_rows(name)
            for start in range(0, rids.shape[0], 10_000):
                side.add(rids[start:start + 10_000], decode_blobs(spec, blobs[start:start + 10_000]), None, None)
            self._field_sides[name] = side
        self._sides = [s for s in (self._vectors, self._text_side, self._window_side, self._label_side,
                                   self._dedup_side, *self._field_sides.values()) if s is not None]

    # ---- applying logged operations (caller holds the write side, or is recovering) ------------------------------
    def _configured(self, op: rec.LogOp) -> dict[str, Any] | None:
        """The values of ``op`` of the fields the collection has (a log replayed after a field was dropped may
        hold values of it)."""
        if not op.fields:
            return op.fields
        return {name: values for name, values in op.fields.items() if name in self.fields}

    def _apply_metadata(self, lsn: int, op: rec.LogOp) -> None:
        if op.kind == rec.UPSERT:
            self._meta.apply_upsert(lsn, op.ids, op.rids, op.metadatas, op.documents, self._configured(op))
        elif op.kind == rec.FIELD_VALUES:
            self._meta.apply_field_values(lsn, op.rids, self._configured(op))
        else:
            self._meta.apply_delete(lsn, op.ids)

    def _apply_vectors(self, op: rec.LogOp) -> None:
        if op.kind == rec.DELETE or op.kind == rec.UPSERT:
            gone = op.old_rids[op.old_rids >= 0] if op.kind == rec.UPSERT else op.rids
            if gone.size:
                self._meta.forget(gone)
                for side in self._sides:
                    side.remove(gone)
        if op.kind == rec.DELETE:
            return
        for side in self._sides:
            name = side.vector_field
            if name is None:
                if op.kind == rec.UPSERT:
                    side.add(op.rids, op.vectors, op.metadatas, op.documents)
            elif op.fields and name in op.fields:  # a named field's side takes its values
                values = op.fields[name]
                side.add(op.rids[values.at], values.data, None, None)

    # ---- writes --------------------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._closed:
            raise InvalidInputError(f"collection {self.name!r} is closed")
        if self.read_only:
            raise ReadOnlyError(f"collection {self.name!r} is open read-only")

    def _stage_metadata(self, lsn: int, op: rec.LogOp) -> None:
        if op.kind == rec.UPSERT:
            self._meta.stage_upsert(lsn, op.ids, op.rids, op.metadatas, op.documents, op.fields)
        elif op.kind == rec.FIELD_VALUES:
            self._meta.stage_field_values(lsn, op.rids, op.fields)
        else:
            self._meta.stage_delete(lsn, op.ids)

    def _log_and_apply(self, payload: bytes, op: rec.LogOp) -> None:
        """Log ``op``, make it durable, write it to SQLite and apply it to the side indexes. If a step fails the
        write did not happen: SQLite is rolled back, the log record is taken back (so it cannot reappear after a
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

    def upsert(self, ids: Any, vectors: Any = None, metadatas: Any = None, documents: Any = None, *,
               max_batch: int | None = None, fields: dict[str, Any] | None = None) -> int:
        """See :meth:`CollectionAPI.upsert`. Durable when this returns (see the database's ``sync``)."""
        self._check_writable()
        if max_batch is not None and isinstance(ids, (list, tuple)) and len(ids) > max_batch:
            raise InvalidInputError(f"a batch holds at most {max_batch} records; got {len(ids)}")
        vectors, fields = split_vectors(vectors, fields)
        vectors = self._embedding.vectors_for(ids, vectors, documents)  # embedding runs before any lock is taken
        batch = rec.check_upsert(ids, vectors, metadatas, documents, self.dim, self.metric == "cosine", max_batch)
        embedded_for = set(self._field_embedding)
        fields = self._embed_fields(len(batch.ids), documents, fields)
        batch.fields = check_field_values(self.fields, fields, len(batch.ids))
        dedup = self._dedup_side
        sketch = None if dedup is None else \
            dedup.sketch(dedup.texts_of(batch.metadatas, batch.documents, len(batch.ids)))  # no lock held
        self._bound_unindexed(len(batch.ids))
        self._make_room_in_log()
        with self._writer:
            if set(self._field_embedding) != embedded_for or not set(batch.fields) <= set(self.fields):
                # a field was added (its fill may have passed these rows) or dropped meanwhile
                batch.fields = check_field_values(self.fields, self._embed_fields(
                    len(batch.ids), documents, {k: v for k, v in (fields or {}).items() if k in self.fields}),
                    len(batch.ids))
            existing = self._meta.current_rids(batch.ids)
            old = np.array([existing.get(i, -1) for i in batch.ids], np.int64)
            rids = np.arange(self._next_rid, self._next_rid + len(batch.ids), dtype=np.int64)
            if dedup is not None:
                batch.metadatas = dedup.check(sketch, batch.ids, batch.metadatas, rids, old[old >= 0],
                                              self._meta.fetch)
            self._next_rid += len(batch.ids)
            op = rec.LogOp(rec.UPSERT, batch.ids, rids, old, batch.vectors, batch.metadatas, batch.documents,
                           batch.fields)
            self._log_and_apply(rec.encode_upsert(batch, rids, old), op)
        return len(batch.ids)

    def _content_digest(self) -> dict[str, Any]:
        """What the collection holds, for comparing copies of it: ``count``, ``digest`` (a 64-bit sum of one hash
        per record of its id, metadata, document, vector and named-field values: the same whatever the row ids
        and the order the records came in) and ``lsn`` (the last log record applied). A distributed collection
        compares its replicas with it after a writer stopped without closing. Reads every record."""
        total, count = 0, 0
        with self._rw.read():
            for rows in self._meta.all_rows():
                vectors = self._vectors.vectors_of(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
                for (_, record_id, metadata, document), vector in zip(rows, vectors):
                    total += _record_hash(record_id.encode(), metadata.encode(),
                                          b"\1" if document is None else b"\0" + document.encode(), vector.tobytes())
                count += len(rows)
            for record_id, field, value in self._meta.all_field_values():
                total += _record_hash(record_id.encode(), b"\2" + field.encode(), value)
            lsn = self._applied_lsn
        return {"count": count, "digest": f"{total % 2**64:016x}", "lsn": int(lsn)}

    def _embedded_upsert(self, ids: Any, vectors: Any = None, documents: Any = None,
                         fields: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any] | None]:
        """The vectors and named-field values an upsert of these records would store: those not given embedded
        from ``documents`` by the collection's embedders. A distributed collection asks one replica of a shard
        for them and sends them to every replica, so that a batch is embedded once, not once per replica."""
        vectors, fields = split_vectors(vectors, fields)
        vectors = self._embedding.vectors_for(ids, vectors, documents)
        n = len(ids) if isinstance(ids, (list, tuple)) else 1
        return vectors, self._embed_fields(n, documents, fields)

    def delete(self, ids: Any = None, where: Any = None, *, missing_ok: bool = False) -> int:
        """See :meth:`CollectionAPI.delete`; unknown ids raise :class:`UnknownIdError` and delete nothing."""
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

    # ---- the embedder --------------------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """The collection's embedder (loaded on first use); InvalidInputError if it has none."""
        return self._embedding.model

    def attach_embedder(self, embedder: Embedder) -> None:
        """Use ``embedder`` (an instance of the model the collection was created with) for its texts."""
        self._embedding.attach(embedder)

    # ---- reads ---------------------------------------------------------------------------------------------------
    def _check_readable(self) -> None:
        if self._closed:
            raise InvalidInputError(f"collection {self.name!r} is closed (its database was closed)")

    def count(self) -> int:
        self._check_readable()
        with self._rw.read():
            return len(self._vectors)

    def get(self, ids: Any = None, where: Any = None, limit: int | None = None, offset: int = 0,
            include: Any = None) -> list[dict[str, Any]]:
        """See :meth:`CollectionAPI.get`."""
        self._check_readable()
        include = check_include(include, DEFAULT_GET_INCLUDE)
        id_list = None if ids is None else rec.check_record_ids(ids)
        if limit is not None:
            limit = check_positive_int(limit, "limit", minimum=0)
        offset = check_positive_int(offset, "offset", minimum=0)
        with self._rw.read():
            rows = self._meta.get(id_list, where, limit, offset)
            vectors = self._vectors.vectors_of(np.array([r[1] for r in rows], np.int64)) \
                if "embeddings" in include and rows else None
            values = self._field_values([r[1] for r in rows]) if "fields" in include else {}
        return [rec.hit_record(r[0], r[2], r[3], include, None if vectors is None else vectors[j],
                               fields=values.get(r[1], {}) if "fields" in include else None)
                for j, r in enumerate(rows)]

    def _field_values(self, rids: list[int]) -> dict[int, dict[str, Any]]:
        """rid -> {field: value as the API returns it} of the named vector fields."""
        stored = self._meta.fetch_fields(rids) if self.fields and rids else {}
        return {rid: {name: value_as_json(self.fields[name], decode_blobs(self.fields[name], [blob])[0])
                      for name, blob in sorted(values.items()) if name in self.fields}
                for rid, values in stored.items()}

    def _resolve_mode(self, mode: Any, has_vector: bool) -> str:
        return resolve_mode(self.name, mode, has_vector,
                            self.embedder_info is not None or self.text_field != MAIN_FIELD, self.text)

    def _queries(self, vectors: Any, name: str) -> np.ndarray:
        return check_vectors(vectors, self.dim, name, normalize=self.metric == "cosine")

    def _one_query(self, vector: Any) -> np.ndarray:
        """``search``'s vector, (dim,) or (1, dim), checked as a (1, dim) batch."""
        arr = vector if isinstance(vector, np.ndarray) else np.asarray(vector)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[0] != 1:
            raise InvalidInputError(f"search takes one vector; got shape {arr.shape} (use search_batch)")
        return self._queries(arr, "vectors")

    def search(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
               ef: int | None = None, *, text: str | None = None, mode: str | None = None, fusion: str = "rrf",
               alpha: float = 0.5, norm: str = "minmax", depth: int | None = None,
               target_recall: float | None = None, field: str | None = None,
               queries: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """See :meth:`CollectionAPI.search`."""
        if text is None and queries is None and field is None and mode is None and vector is not None:
            # the plain vector query, the one a server or a RAG loop makes per call: no notes to warn of, and
            # the fewest Python layers between the caller and the index
            self._check_readable()
            return self._search_vectors(self._one_query(vector), k, where, include, ef, target_recall)[0]
        hits, notes = self.search_with_notes(vector, k, where, include, ef, text=text, mode=mode, fusion=fusion,
                                             alpha=alpha, norm=norm, depth=depth, target_recall=target_recall,
                                             field=field, queries=queries)
        warn_truncated(notes)
        return hits

    def search_with_notes(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
                          ef: int | None = None, *, text: str | None = None, mode: str | None = None,
                          fusion: str = "rrf", alpha: float = 0.5, norm: str = "minmax", depth: int | None = None,
                          target_recall: float | None = None, field: str | None = None,
                          queries: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """:meth:`search`, returning the warnings (truncated query text) instead of issuing them: the server puts
        them in its response."""
        self._check_readable()
        notes: list[str] = []
        if queries is not None or (field is not None and field != MAIN_FIELD):
            return self._search_fields(vector, field, queries, text, mode, k, where, include, ef, fusion, alpha,
                                       norm, depth, target_recall, notes), notes
        if text is None:
            if mode is not None:
                raise InvalidInputError("mode applies to text queries; give text=...")
            if vector is None:
                raise InvalidInputError("search needs a vector, a text, or both")
            return self._search_vectors(self._one_query(vector), k, where, include, ef, target_recall)[0], notes
        from ..sparse.fusion import check_options, fuse
        if not isinstance(text, str):
            raise InvalidTypeError(f"text must be a str; got {type(text).__name__}")
        mode = self._resolve_mode(mode, vector is not None)
        check_options(fusion, norm)
        k = check_positive_int(k, "k")
        depth = max(k, 100) if depth is None else check_positive_int(depth, "depth")
        include = check_include(include, DEFAULT_SEARCH_INCLUDE)
        ef = None if ef is None else check_positive_int(ef, "ef")
        q = None
        if vector is not None:
            q = self._queries(np.asarray(vector).reshape(1, -1) if np.ndim(vector) == 1 else vector, "vector")
            if q.shape[0] != 1:
                raise InvalidInputError(f"search takes one vector; got {q.shape[0]}")
        elif mode in ("dense", "hybrid") and self.text_field != MAIN_FIELD:
            # text queries embed with a named field's model (use_field) and search that field
            field = self.text_field
            embedded = self._field_embedding[field].queries([text], notes)[0]
            return self._search_fields(None, None, {field: embedded}, text if mode == "hybrid" else None, None, k,
                                       where, include, ef, fusion, alpha, norm, depth, target_recall, notes), notes
        elif mode in ("dense", "hybrid"):
            q = self._queries(self._embedding.queries([text], notes), "embedded query")
        if mode == "dense":
            return self.search_batch(q, k, where, include, ef, target_recall=target_recall)[0], notes
        with self._rw.read():
            allowed = None if where is None else self._allowed(where)
            ids, scores = self._text_candidates(text, k if mode == "bm25" else depth, allowed)
            if mode == "hybrid":
                dist, drids = self._vectors.search(q, depth, allowed, ef, 1, target_recall)
                keep = drids[0] >= 0
                ids, scores = fuse((drids[0][keep], -dist[0][keep].astype(np.float64)), (ids, scores), k,
                                   fusion=fusion, alpha=alpha, norm=norm)
            return self._hits(ids[None, :], scores[None, :], include, "score")[0], notes

    def _search_fields(self, vector: Any, field: str | None, queries: dict[str, Any] | None, text: str | None,
                       mode: str | None, k: int, where: Any, include: Any, ef: int | None, fusion: str,
                       alpha: float, norm: str, depth: int | None, target_recall: float | None, notes: list[str]
                       ) -> list[dict[str, Any]]:
        """A search of one named field (``field`` with ``vector``), or of several fused (``queries``; with
        ``text``, the BM25 ranking of the documents too)."""
        from ..sparse.fusion import check_options, linear, rrf
        if queries is None:
            if vector is None:
                raise InvalidInputError(f"a search of field {field!r} needs its query in vector")
            if text is not None:
                raise InvalidInputError("text with field: give the vector and the text in queries= to fuse them")
            queries = {field: vector}
        elif vector is not None or field is not None:
            raise InvalidInputError("give queries (several fields, fused) or vector with field, not both")
        if not isinstance(queries, dict) or not queries:
            raise InvalidInputError("queries must be a non-empty dict {field: query}")
        if mode is not None:
            raise InvalidInputError("mode applies to text queries without fields; with queries, text adds BM25")
        if text is not None and not isinstance(text, str):
            raise InvalidTypeError(f"text must be a str; got {type(text).__name__}")
        if text is not None and not self.text:
            raise InvalidInputError(f"collection {self.name!r} has no text index for the text query; create it "
                                    f"with text=True")
        check_options(fusion, norm)
        k = check_positive_int(k, "k")
        include = check_include(include, DEFAULT_SEARCH_INCLUDE)
        ef = None if ef is None else check_positive_int(ef, "ef")
        checked = {}
        for name, query in queries.items():
            if name == MAIN_FIELD:
                if isinstance(query, str):
                    query = self._embedding.queries([query], notes)
                # the main vector as the dense field it is
                checked[name] = check_query(name, {"type": "dense", "dim": self.dim, "metric": self.metric}, query)
            elif name in self.fields:
                checked[name] = check_query(name, self.fields[name], query)
            else:
                raise InvalidInputError(f"unknown field {name!r}: this collection has "
                                        f"{[MAIN_FIELD, *sorted(self.fields)]}")
        fused = len(checked) + (text is not None) > 1
        if fusion == "linear" and fused and len(checked) + (text is not None) != 2:
            raise InvalidInputError("fusion='linear' fuses two rankings (alpha weighs the first); use 'rrf' for more")
        n = max(k, 100) if depth is None and fused else (k if depth is None else check_positive_int(depth, "depth"))
        with self._rw.read():
            allowed = None if where is None else self._allowed(where)
            runs, key = [], "score"
            for name, q in checked.items():
                side = self._vectors if name == MAIN_FIELD else self._field_sides[name]
                if name == MAIN_FIELD or self.fields[name]["type"] == "dense":
                    dist, rids = side.search(q, n, allowed, ef, 1, target_recall)
                    keep = rids[0] >= 0
                    runs.append((rids[0][keep], -dist[0][keep].astype(np.float64)))
                    key = "distance"
                else:
                    if target_recall is not None:
                        raise InvalidInputError(f"target_recall applies to dense fields; field {name!r} is "
                                                f"{self.fields[name]['type']}")
                    # a multivector field's breadth (ef) is the MUVERA candidates it re-ranks
                    runs.append(side.search(q, n, allowed, ef) if self.fields[name]["type"] == "multivector"
                                else side.search(q, n, allowed))
                    key = "score"
            if text is not None:
                runs.append(self._text_candidates(text, n, allowed))
            if not fused:
                ids, scores = runs[0][0][:k], runs[0][1][:k]
                values = -scores if key == "distance" else scores
            else:
                key = "score"
                ids, values = rrf(runs, k) if fusion == "rrf" else linear(runs[0], runs[1], k, alpha=alpha,
                                                                           norm=norm)
            return self._hits(ids[None, :], values[None, :], include, key)[0]

    def _text_candidates(self, text: str, n: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top n (rids, scores) of ``text``; caller holds the read side."""
        sparse = self._text_side.index if self._text_side is not None else None
        if sparse is None or len(sparse) == 0 or not text.strip() or (allowed is not None and not allowed.any()):
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        scores, rids = sparse.search([text], min(n, len(sparse)), filter=allowed, threads=1)
        keep = rids[0] >= 0
        return rids[0][keep], scores[0][keep].astype(np.float64)

    def _hits(self, rids: np.ndarray, values: np.ndarray, include: tuple[str, ...], key: str
              ) -> list[list[dict[str, Any]]]:
        """Result rows -> records; ``values`` go under ``key`` ("distance" only if included)."""
        rid_rows = rids.tolist()  # (Python lists: a single query's ten hits cost less than numpy's masking)
        contents = "metadatas" in include or "documents" in include
        with_value = key != "distance" or "distances" in include
        if not contents and "embeddings" not in include and "fields" not in include:
            # (ids only: what a server or a RAG loop asks one query at a time, without the records' steps)
            return self._meta.id_hits(rid_rows, values.tolist(), key if with_value else None)
        found_list = [rid for row in rid_rows for rid in row if rid >= 0]
        rows = self._meta.fetch(found_list, contents) if found_list else {}
        vectors = self._vectors.vectors_of(np.array(found_list, np.int64)) \
            if "embeddings" in include and found_list else None
        vec_of = {} if vectors is None else dict(zip(found_list, vectors))
        fields_of = self._field_values(found_list) if "fields" in include else None
        metas = self._meta.metadatas(rows) if "metadatas" in include else {}
        out = []
        for row_values, row_rids in zip(values.tolist(), rid_rows):
            hits = []
            for v, rid in zip(row_values, row_rids):
                row = rows.get(rid)  # (none for -1, "no hit")
                if row is not None:
                    hits.append(rec.hit_record(row[0], metas.get(rid, "{}"), row[2] if contents else None, include,
                                               vec_of.get(rid), v if with_value else None, key,
                                               None if fields_of is None else fields_of.get(rid, {})))
            out.append(hits)
        return out

    def search_batch(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None, *, texts: Any = None, mode: str | None = None, fusion: str = "rrf",
                     alpha: float = 0.5, norm: str = "minmax", depth: int | None = None,
                     target_recall: float | None = None, field: str | None = None) -> list[list[dict[str, Any]]]:
        """See :meth:`CollectionAPI.search_batch`."""
        hits, notes = self.search_batch_with_notes(vectors, k, where, include, ef, texts=texts, mode=mode,
                                                   fusion=fusion, alpha=alpha, norm=norm, depth=depth,
                                                   target_recall=target_recall, field=field)
        warn_truncated(notes)
        return hits

    def search_batch_with_notes(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                                ef: int | None = None, *, texts: Any = None, mode: str | None = None,
                                fusion: str = "rrf", alpha: float = 0.5, norm: str = "minmax",
                                depth: int | None = None, target_recall: float | None = None,
                                field: str | None = None) -> tuple[list[list[dict[str, Any]]], list[str]]:
        """:meth:`search_batch`, returning the warnings instead of issuing them."""
        self._check_readable()
        notes: list[str] = []
        if field is not None and field != MAIN_FIELD:
            if texts is not None or vectors is None:
                raise InvalidInputError(f"a search of field {field!r} takes its queries in vectors")
            if isinstance(vectors, (dict, str)) or not hasattr(vectors, "__len__"):
                raise InvalidTypeError(f"vectors must be a list of queries for field {field!r}; got "
                                       f"{type(vectors).__name__}")
            return [self._search_fields(q, field, None, None, mode, k, where, include, ef, fusion, alpha, norm,
                                        depth, target_recall, notes) for q in vectors], notes
        if texts is not None:
            if vectors is not None:
                raise InvalidInputError("give vectors or texts, not both")
            texts = check_texts(texts, "texts")
            if self._resolve_mode(mode, False) != "dense" or self.text_field != MAIN_FIELD:
                out = []
                for text in texts:
                    hits, more = self.search_with_notes(None, k, where, include, ef, text=text, mode=mode,
                                                        fusion=fusion, alpha=alpha, norm=norm, depth=depth,
                                                        target_recall=target_recall)
                    out.append(hits)
                    notes.extend(more)
                return out, notes
            vectors = self._embedding.queries(texts, notes)
        elif vectors is None:
            raise InvalidInputError("search_batch needs vectors or texts")
        elif mode is not None:
            raise InvalidInputError("mode applies to text queries; give texts=...")
        return self._search_vectors(self._queries(vectors, "vectors"), k, where, include, ef, target_recall), notes

    def _search_vectors(self, q: np.ndarray, k: Any, where: Any, include: Any, ef: Any,
                        target_recall: float | None) -> list[list[dict[str, Any]]]:
        """The records nearest each of the checked queries ``q`` (nq, dim) by the main vector."""
        k = check_positive_int(k, "k")
        include = check_include(include, DEFAULT_SEARCH_INCLUDE)
        ef = None if ef is None else check_positive_int(ef, "ef")
        threads = 1 if q.shape[0] < 8 else None
        with self._rw.read():
            how, arg = plan_where(where, self.window_field if self._window_side else None,
                                  self.label_field if self._label_side else None)
            graph = self._label_side.graph_for(arg) if how == "label" else None
            if how == "window":
                if target_recall is not None:
                    raise InvalidInputError("target_recall does not apply to a range filter on the window field "
                                            "(the window index keeps no recall curve); give ef")
                dist, rids = self._window_side.search(q, k, arg, ef, threads)
            elif graph is not None:
                dist, rids = graph.search(q, min(k, len(graph)), ef=ef, threads=threads,
                                          target_recall=target_recall)
            else:
                dist, rids = self._vectors.search(q, k, None if where is None else self._allowed(where), ef, threads,
                                                  target_recall)
            if rids.shape[1] == 0:
                return [[] for _ in range(q.shape[0])]
            return self._hits(rids, dist, include, "distance")

    def _allowed(self, where: Any) -> np.ndarray:
        """Mask over row ids (True = matches ``where``); the caller holds the read side, so the data cannot change
        meanwhile. A filter repeated across queries is evaluated in SQLite once per version of the data."""
        return self._allow_cache.get(where, self._applied_lsn, self._next_rid, self._meta.rids_where)

    # ---- maintenance (the background optimizer) -------------------------------------------------------------------
    def due_rebuilds(self) -> list[SideIndex]:
        """The side indexes that want rebuilding now (folding new rows into the graph, the window tree, label
        graphs); :meth:`rebuild` does it without blocking readers or writers."""
        if self.read_only or self._closed:
            return []
        return [side for side in self._sides if side.needs_rebuild()]

    def rebuild(self, side: SideIndex, threads: int | None = None) -> bool:
        try:
            return not self.read_only and rebuild_aside(side, self._rw, threads)
        except OSError as exc:  # a code index's vector file on a full disk: retried later; said as elsewhere
            raise storage_error(exc, "rebuild an index (its files) in", self.path) from exc

    def _bound_unindexed(self, n_new: int) -> None:
        """Before a write of ``n_new`` rows: when they would bring the rows waiting for a merge past
        UNINDEXED_BYTES (writes outran the background merges), the writer merges those first itself (after the
        merge in progress, if one is), so that memory stays bounded whatever the write rate; the rows waiting are
        held in memory and searched exactly."""
        vectors = self._vectors
        if vectors.index_kind == "flat" or (len(vectors.growing) + n_new) * self.dim * 4 <= UNINDEXED_BYTES:
            return
        if vectors.needs_rebuild():
            self.rebuild(vectors)

    def index_all(self, threads: int | None = None) -> None:
        """Index every unindexed row now: fold new rows into the main graph and the named fields' indexes, build
        the window tree (when due) and the label graphs that are due."""
        for side in self._sides:
            if side is not self._window_side or side.needs_rebuild():
                self.rebuild(side, threads)

    def merge(self, threads: int | None = None) -> bool:
        """Fold the growing rows into (a copy of) the main HNSW index and swap it in; compact deletions."""
        return self.rebuild(self._vectors, threads)

    def needs_window_rebuild(self) -> bool:
        return self._window_side is not None and self._window_side in self.due_rebuilds()

    def rebuild_window(self, threads: int | None = None) -> bool:
        return self._window_side is not None and self.rebuild(self._window_side, threads)

    def needs_label_graphs(self) -> bool:
        return self._label_side is not None and self._label_side in self.due_rebuilds()

    def build_label_graphs(self, threads: int | None = None) -> bool:
        return self._label_side is not None and self.rebuild(self._label_side, threads)

    @property
    def label_graph_min(self) -> int:
        """Records a value of the label field needs for its own graph."""
        return self._label_side.min_records if self._label_side is not None else 0

    @label_graph_min.setter
    def label_graph_min(self, value: int) -> None:
        if self._label_side is not None:
            self._label_side.min_records = value

    def stats(self) -> dict[str, Any]:
        self._check_readable()
        with self._rw.read():
            out = {"name": self.name, "dim": self.dim, "metric": self.metric, "index": self.index_kind,
                   "params": self.params, "text": self.text, "embedder": self.embedder_info,
                   **self._vectors.stats(), "last_lsn": self._applied_lsn,
                   "checkpoint_lsn": self._manifest["lsn"] if self._manifest else 0,
                   "log_bytes": self._wal.size_bytes(), "read_only": self.read_only,
                   "storage_error": self._wal.error, "background_error": self.background_error,
                   "window_field": self.window_field, "window": None, "label_field": self.label_field,
                   "label_graphs": {}, "dedup": None,
                   "fields": {name: {**spec, **self._field_sides[name].stats(), "fill": self._fill_state(name)}
                              for name, spec in self.fields.items()}, "text_field": self.text_field}
            for side in (self._window_side, self._label_side, self._dedup_side):
                if side is not None:
                    out.update(side.stats())
            return out

    def close(self) -> None:
        if self._closed:
            return
        self._stop_fills()
        self._close_storage()
        self._closed = True

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r}, index={self.index_kind!r})"

