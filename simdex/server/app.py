"""The HTTP API over a :class:`~simdex.Database` (FastAPI), plus the web console at ``/``.

Every error is JSON ``{"error": {"type": ..., "message": ...}}`` with a 4xx status that says what went wrong:
400 bad input, 401 missing/wrong API key, 404 unknown collection or id, 409 conflict (exists, duplicate,
read-only), 413 request too large, 422 malformed request body. The OpenAPI spec is at ``/openapi.json``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, errors
from ..store import Database
from ..store.records import check_collection_name
from .auth import KeyRing, required

CONSOLE = Path(__file__).parent / "console" / "index.html"
API = "/api/v1"

_STATUS = [
    (errors.CollectionNotFoundError, 404), (errors.UnknownIdError, 404),
    (errors.CollectionExistsError, 409), (errors.DuplicateIdError, 409), (errors.DuplicateDocumentError, 409),
    (errors.ReadOnlyError, 409),
    (errors.DatabaseLockedError, 409),
    (errors.InvalidInputError, 400), (errors.InvalidTypeError, 400), (errors.CorruptFileError, 500),
]


def decode_vectors(text: str, dim: int, field: str = "vectors_base64") -> np.ndarray:
    """(n, dim) float32 from base64 little-endian float32; errors name the field."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidInputError(f"{field} is not valid base64") from None
    if len(raw) == 0 or len(raw) % (4 * dim):
        raise errors.DimensionMismatchError(f"{field} holds {len(raw)} bytes, which is not a whole number of "
                                            f"{dim}-dimensional float32 vectors ({4 * dim} bytes each)")
    return np.frombuffer(raw, "<f4").reshape(-1, dim)


def _json(content: Any, status_code: int = 200) -> Response:
    """A JSON response written directly: FastAPI's generic re-validation and encoding of returned data costs
    milliseconds on search results, and our results are plain JSON already."""
    return Response(json.dumps(content, separators=(",", ":"), ensure_ascii=False, allow_nan=False),
                    status_code=status_code, media_type="application/json")


def _error(status: int, kind: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **details}}, status_code=status)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateCollection(_Strict):
    name: str = Field(description="1-64 letters, digits, '_' or '-'")
    dim: int | None = Field(None, description="vector dimension (may be left out when an embedder gives it)")
    metric: str = Field("cosine", description="l2, ip or cosine")
    index: str = Field("hnsw", description="hnsw, hnsw-lvq8, hnsw-int8 (HNSW over codes), ivf-pq, ivf-rabitq, vamana, "
                                           "vamana-disk, spann or flat (exact)")
    params: dict[str, Any] = Field(default_factory=dict, description="index parameters (HNSW: M, ef_construction, "
                                                                     "ef_search, seed; over codes also rerank; "
                                                                     "ivf-pq: nlist, nprobe, codec, rerank, reads, "
                                                                     "seed; "
                                                                     "Vamana: R, L_build, L_search, alpha, seed, "
                                                                     "codec; spann: list_size, nprobe, eps, "
                                                                     "rerank, codec, max_replicas, closure_eps, "
                                                                     "seed)")
    exist_ok: bool = False
    text: bool = Field(False, description="also index the records' documents for BM25 text and hybrid search")
    embedder: str | None = Field(None, description="embed documents and text queries: \"minilm\" (built in, "
                                                   "all-MiniLM-L6-v2, 384-d) or \"st:<model>\" "
                                                   "(sentence-transformers)")
    window_field: str | None = Field(None, description="numeric metadata field whose range filters a window index "
                                                       "answers, e.g. \"ts\"")
    label_field: str | None = Field(None, description="string metadata field whose equality filters per-value "
                                                      "graphs answer, e.g. \"lang\"")
    dedup: dict[str, Any] | None = Field(None, description="near-duplicate control on write: {\"field\": "
                                                           "\"document\", \"threshold\": 0.9, \"on_duplicate\": "
                                                           "\"reject\" | \"flag\" | \"keep\"}")
    fields: dict[str, dict[str, Any]] | None = Field(None, description="named vector fields beside the main "
                                                                       "vector: {name: {\"type\": \"dense\" | "
                                                                       "\"multivector\" | \"sparse\", \"dim\": "
                                                                       "..., \"metric\": ..., \"index\": ...}}")


B64_HELP = ("the vectors as base64 of little-endian float32, row-major (n x dim): about 60x faster to send and "
            "parse than JSON numbers")


class Upsert(_Strict):
    ids: list[str]
    vectors: list[list[float] | None] | None = Field(None, description="one vector per id (or use vectors_base64); "
                                                                       "left out, or null rows, in a collection "
                                                                       "with an embedder: embedded from the "
                                                                       "documents")
    vectors_base64: str | None = Field(None, description=B64_HELP)
    metadatas: list[dict[str, Any] | None] | None = None
    documents: list[str | None] | None = None
    fields: dict[str, list[Any]] | None = Field(None, description="the named vector fields' values, {field: one "
                                                                  "entry per id}: a vector (dense), a list of "
                                                                  "vectors (multivector), a {term: weight} object "
                                                                  "(sparse), or null")


class Backup(_Strict):
    dest: str = Field(description="the new backup's name: a folder in the server's backup folder (--backup-dir)")
    since: str | None = Field(None, description="the name of a previous backup there: its unchanged files are "
                                                "hard-linked (incremental)")


class AddField(_Strict):
    name: str = Field(description="the field's name")
    spec: dict[str, Any] | None = Field(None, description="as in create_collection's fields: type, dim, metric, "
                                                          "index, params")
    embedder: str | None = Field(None, description="fill the field from the stored documents with this model "
                                                   "(\"minilm\" or \"st:<model>\"), in the background")


class UseField(_Strict):
    force: bool = Field(False, description="switch even while the field is still being filled")


class Get(_Strict):
    ids: list[str] | None = None
    where: dict[str, Any] | None = None
    limit: int | None = Field(None, ge=0)
    offset: int = Field(0, ge=0)
    include: list[str] | None = None


class Delete(_Strict):
    ids: list[str] | None = None
    where: dict[str, Any] | None = None
    missing_ok: bool = False


class Search(_Strict):
    vector: list[float] | None = Field(None, description="one query vector")
    vectors: list[list[float]] | None = Field(None, description="several query vectors")
    vectors_base64: str | None = Field(None, description=B64_HELP)
    query_ids: list[str] | None = Field(None, description="use these records' vectors as the queries")
    k: int = Field(10, ge=1)
    where: dict[str, Any] | None = None
    include: list[str] | None = None
    ef: int | None = Field(None, ge=1)
    target_recall: float | None = Field(None, description="instead of ef: the recall@k wanted, in (0, 1]; the "
                                                          "index picks its search breadth by its recall curve")
    text: str | None = Field(None, description="a text query: embedded (collections with an embedder), BM25 "
                                               "(collections created with text=true), or both fused (see mode); "
                                               "with vector: hybrid search")
    texts: list[str] | None = Field(None, description="several text queries")
    mode: str | None = Field(None, description="for text queries: dense, bm25 or hybrid (default: hybrid when the "
                                               "collection has an embedder and a text index, else what it has)")
    depth: int | None = Field(None, ge=1, description="hybrid: candidates taken from each list (default "
                                                      "max(k, 100))")
    fusion: str = Field("rrf", description="hybrid fusion: rrf or linear")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="linear fusion: weight of the vector part")
    norm: str = Field("minmax", description="linear fusion score normalisation: minmax or zscore")
    queries: dict[str, Any] | list[dict[str, Any]] | None = Field(
        None, description="queries of named vector fields, {field: query} (several are fused, with the BM25 ranking "
                          "of text if given), or a list of such objects (one search each)")


class _Guard:
    """ASGI middleware (plain ASGI: Starlette's BaseHTTPMiddleware costs about a millisecond per request): the API
    key on ``/api`` paths, and refusal of request bodies over ``limit`` bytes (by Content-Length, and while
    streaming)."""

    def __init__(self, app, limit: int, keys: KeyRing) -> None:
        self.app, self.limit, self.keys = app, limit, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self.keys.enabled and path.startswith("/api"):
            given = headers.get(b"x-api-key") or b""
            auth = headers.get(b"authorization") or b""
            if auth[:7].lower() == b"bearer ":
                given = auth[7:]
            key = self.keys.authenticate(given)
            if key is None:
                return await _error(401, "Unauthorized", "missing or wrong API key (send 'Authorization: Bearer "
                                                         "<key>' or 'X-API-Key: <key>')")(scope, receive, send)
            role, collection, whole = required(scope.get("method", "GET"), path)
            refusal = None
            if not key.may(role):
                refusal = f"key {key.name!r} has role {key.role!r}; {scope.get('method')} {path} needs {role!r}"
            elif (whole or collection is not None) and not key.may_use(collection):
                refusal = (f"key {key.name!r} may not use collection {collection!r}" if collection is not None else
                           f"key {key.name!r} is limited to some collections; {path} acts on the whole database")
            if refusal is not None:
                return await _error(403, "Forbidden", refusal)(scope, receive, send)
            scope.setdefault("state", {})["simdex_key"] = key
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error(413, "PayloadTooLarge", f"request body is {int(length)} bytes; the limit is "
                                                        f"{self.limit}")(scope, receive, send)
        if length is not None:
            return await self.app(scope, receive, send)
        # No Content-Length (chunked upload): read the body here, counting, and hand it on only if it fits.
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await _error(413, "PayloadTooLarge", f"request body exceeds the limit of {self.limit} "
                                                            f"bytes")(scope, receive, send)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def create_app(db: Database, *, api_key: str | None = None, max_body_bytes: int = 64 << 20,
               max_batch: int = 10_000, keys_file: str | os.PathLike | None = None,
               backup_dir: str | os.PathLike | None = None) -> FastAPI:
    """Build the ASGI app serving ``db``. With ``api_key`` and/or ``keys_file`` (keys with roles,
    :mod:`simdex.server.auth`), every ``/api`` request must send a key as ``Authorization: Bearer <key>`` or
    ``X-API-Key: <key>``, and its role must allow the request. ``backup_dir``: where ``POST /api/v1/admin/backup``
    writes backups (by name; none without it)."""
    app = FastAPI(title="simdex", version=__version__,
                  description="Vector database: collections of records (id, vector, metadata, document) with "
                              "nearest-neighbour search and metadata filters.")
    app.state.db = db

    keys = KeyRing(keys_file, api_key)
    app.add_middleware(_Guard, limit=max_body_bytes, keys=keys)

    def allowed(request: Request, name: str) -> bool:
        key = getattr(request.state, "simdex_key", None)
        return key is None or key.may_use(name)

    @app.exception_handler(errors.SimdexError)
    async def simdex_error(_: Request, exc: errors.SimdexError):
        if isinstance(exc, errors.StorageError):
            # 507 Insufficient Storage when freeing space cures it, else 503: reads go on, retry writes later
            status = 507 if exc.disk_full else 503
            return JSONResponse({"error": {"type": "StorageError", "message": str(exc)}}, status_code=status,
                                headers={"Retry-After": "10"})
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
        details = {"duplicates": exc.duplicates} if isinstance(exc, errors.DuplicateDocumentError) else {}
        return _error(status, type(exc).__name__, str(exc), **details)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError):
        # the same error classes (and paths, "documents[1]") as the embedded API raises for the same input, so
        # that simdex.Client raises what simdex.connect would
        problems, kinds = [], set()
        for e in exc.errors()[:5]:
            where = ""
            for part in (p for p in e.get("loc", ()) if p != "body"):
                where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
            problems.append(f"{where or 'body'}: {e.get('msg')}")
            kinds.add(str(e.get("type", "")))
        typed = bool(kinds) and all(k.endswith("_type") or k.endswith("_parsing") for k in kinds)
        return _error(422, "InvalidTypeError" if typed else "InvalidInputError",
                      "; ".join(problems) or "malformed request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"{request.method} {request.url.path}: no such endpoint (see /docs)"
        return _error(exc.status_code, "HTTPError", message)

    def collection(name: str):
        return db.get_collection(name)

    @app.get("/", include_in_schema=False)
    def console():
        return FileResponse(CONSOLE, media_type="text/html")

    @app.get("/healthz", tags=["server"])
    def health() -> dict[str, Any]:
        return _json({"status": "ok", "version": __version__})

    @app.get(f"{API}/collections", tags=["collections"])
    def list_collections(request: Request) -> dict[str, Any]:
        return _json({"collections": [db.get_collection(n).stats() for n in db.list_collections()
                                      if allowed(request, n)]})

    @app.post(f"{API}/admin/backup", tags=["admin"])
    def backup(body: Backup) -> dict[str, Any]:
        if backup_dir is None:
            raise errors.InvalidInputError("this server has no backup folder: start it with --backup-dir DIR")
        for value in (body.dest, body.since):
            if value is not None:
                try:
                    check_collection_name(value)  # a plain name: backups stay inside the backup folder
                except errors.InvalidInputError:
                    raise errors.InvalidInputError(f"invalid backup name {value!r}: a name in the server's backup "
                                                   f"folder (1-64 letters, digits, '_' or '-')") from None
        since = None if body.since is None else str(Path(backup_dir) / body.since)
        return _json(db.backup(str(Path(backup_dir) / body.dest), since))

    @app.post(f"{API}/collections", tags=["collections"], status_code=201)
    def create_collection(body: CreateCollection, request: Request) -> dict[str, Any]:
        if not allowed(request, body.name):
            return _error(403, "Forbidden", f"key {request.state.simdex_key.name!r} may not use collection "
                                            f"{body.name!r}")
        return db.create_collection(body.name, body.dim, body.metric, body.index, exist_ok=body.exist_ok,
                                    text=body.text, embedder=body.embedder, window_field=body.window_field,
                                    label_field=body.label_field, dedup=body.dedup, fields=body.fields,
                                    **body.params).stats()

    @app.get(f"{API}/collections/{{name}}", tags=["collections"])
    def get_collection(name: str) -> dict[str, Any]:
        return collection(name).stats()

    @app.delete(f"{API}/collections/{{name}}", tags=["collections"])
    def drop_collection(name: str) -> dict[str, Any]:
        db.drop_collection(name)
        return _json({"dropped": name})

    @app.post(f"{API}/collections/{{name}}/upsert", tags=["records"])
    def upsert(name: str, body: Upsert) -> dict[str, Any]:
        col = collection(name)
        if body.vectors is not None and body.vectors_base64 is not None:
            raise errors.InvalidInputError("give vectors or vectors_base64, not both")
        vectors = body.vectors if body.vectors_base64 is None else decode_vectors(body.vectors_base64, col.dim)
        n = col.upsert(body.ids, vectors, body.metadatas, body.documents, max_batch=max_batch, fields=body.fields)
        return _json({"upserted": n})

    @app.post(f"{API}/collections/{{name}}/fields", tags=["collections"])
    def add_field(name: str, body: AddField) -> dict[str, Any]:
        return _json(collection(name).add_field(body.name, body.spec, embedder=body.embedder))

    @app.post(f"{API}/collections/{{name}}/fields/{{field}}/use", tags=["collections"])
    def use_field(name: str, field: str, body: UseField) -> dict[str, Any]:
        collection(name).use_field(field, force=body.force)
        return _json({"text_field": field})

    @app.delete(f"{API}/collections/{{name}}/fields/{{field}}", tags=["collections"])
    def drop_field(name: str, field: str) -> dict[str, Any]:
        collection(name).drop_field(field)
        return _json({"dropped": field})

    @app.post(f"{API}/collections/{{name}}/get", tags=["records"])
    def get(name: str, body: Get) -> dict[str, Any]:
        if body.ids is not None and len(body.ids) > max_batch:
            raise errors.InvalidInputError(f"at most {max_batch} ids per request")
        limit = max_batch if body.limit is None else min(body.limit, max_batch)
        return _json({"records": collection(name).get(body.ids, body.where, limit, body.offset, body.include)})

    @app.post(f"{API}/collections/{{name}}/delete", tags=["records"])
    def delete(name: str, body: Delete) -> dict[str, Any]:
        return _json({"deleted": collection(name).delete(body.ids, body.where, missing_ok=body.missing_ok)})

    @app.get(f"{API}/collections/{{name}}/count", tags=["records"])
    def count(name: str) -> dict[str, Any]:
        return _json({"count": collection(name).count()})

    @app.post(f"{API}/collections/{{name}}/search", tags=["search"])
    def search(name: str, body: Search) -> dict[str, Any]:
        col = collection(name)
        options = {"mode": body.mode, "fusion": body.fusion, "alpha": body.alpha, "norm": body.norm,
                   "depth": body.depth, "target_recall": body.target_recall}
        given = [x is not None for x in (body.vector, body.vectors, body.vectors_base64, body.query_ids, body.text,
                                         body.texts)]
        if body.queries is not None:
            if any(given[:4]) or body.texts is not None:
                raise errors.InvalidInputError("queries takes no vector, vectors, query_ids or texts (put the main "
                                               "vector in queries as \"vector\")")
            batch = body.queries if isinstance(body.queries, list) else [body.queries]
            if len(batch) > max_batch:
                raise errors.InvalidInputError(f"at most {max_batch} queries per request")
            results, notes = [], []
            for queries in batch:
                hits, more = col.search_with_notes(None, body.k, body.where, body.include, body.ef, text=body.text,
                                                   queries=queries, **options)
                results.append(hits)
                notes.extend(more)
            return _json({"results": results, "warnings": notes})
        if body.text is not None:
            if any(given[1:4]) or body.texts is not None:
                raise errors.InvalidInputError("a text query takes at most one vector (field vector)")
            hits, notes = col.search_with_notes(body.vector, body.k, body.where, body.include, body.ef,
                                                text=body.text, **options)
            return _json({"results": [hits], "warnings": notes})
        if sum(given) != 1:
            raise errors.InvalidInputError("give exactly one of vector, vectors, vectors_base64, query_ids, text or "
                                           "texts")
        n_queries = len(next(x for x in (body.vectors, body.query_ids, body.texts) if x is not None)) \
            if body.vector is None and body.vectors_base64 is None else 1
        if n_queries > max_batch:
            raise errors.InvalidInputError(f"at most {max_batch} queries per request")
        if body.query_ids is not None:
            return _json({"results": col.search_by_id(body.query_ids, body.k, body.where, body.include, body.ef),
                          "warnings": []})
        if body.texts is not None:
            results, notes = col.search_batch_with_notes(None, body.k, body.where, body.include, body.ef,
                                                         texts=body.texts, **options)
            return _json({"results": results, "warnings": notes})
        if body.vectors_base64 is not None:
            queries = decode_vectors(body.vectors_base64, col.dim)
            if len(queries) > max_batch:
                raise errors.InvalidInputError(f"at most {max_batch} queries per request")
        else:
            queries = [body.vector] if body.vector is not None else body.vectors
        results, notes = col.search_batch_with_notes(queries, body.k, body.where, body.include, body.ef,
                                                     mode=body.mode, target_recall=body.target_recall)
        return _json({"results": results, "warnings": notes})  # (a distributed collection's: shards missing)

    return app
