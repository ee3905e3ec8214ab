"""``simdex.Client``: the Collection API over HTTP, using only the standard library.

Server errors come back as the same exception classes the embedded API raises (matched by the error ``type``
in the JSON body), so code moves between ``simdex.connect`` and ``simdex.Client`` unchanged.
"""

from __future__ import annotations

import base64
import errno
import http.client
import json
import threading
import urllib.parse
import warnings
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from .. import errors
from .._validate import check_texts
from ..store.api import MAIN_FIELD, CollectionAPI, DatabaseAPI, split_vectors

API = "/api/v1"


class _NotJSON(errors.InvalidTypeError):
    """A request body holds a value JSON cannot (raised before anything is sent)."""


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise _NotJSON(f"a value of type {type(value).__name__}, which JSON cannot hold")


def _json_path(value: Any, path: str) -> str | None:
    """The path of the first value in ``value`` that JSON cannot hold (as the embedded API names it)."""
    if isinstance(value, dict):
        return next((p for k, v in value.items() if (p := _json_path(v, f"{path}.{k}")) is not None), None)
    if isinstance(value, (list, tuple)):
        return next((p for i, v in enumerate(value) if (p := _json_path(v, f"{path}[{i}]")) is not None), None)
    try:
        json.dumps(value, default=_plain)
    except (TypeError, ValueError):
        return path
    return None


def _vectors_field(vectors: Any, single: bool = False) -> dict[str, Any]:
    """Vectors as base64 float32 when they are all finite numbers; otherwise as JSON, so that the server's
    validation reports the problem (NaN, wrong type, ragged rows) in its own words."""
    try:
        arr = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    ok = arr is not None and arr.ndim == (1 if single else 2) and arr.size and np.isfinite(arr).all() \
        and np.isfinite(arr.astype(np.float32)).all()
    if not ok:
        return {"vector" if single else "vectors": vectors.tolist() if isinstance(vectors, np.ndarray) else vectors}
    return {"vectors_base64": base64.b64encode(arr.astype("<f4").tobytes()).decode("ascii")}


def _check_remote_embedder(embedder: Any) -> None:
    if embedder is not None and not isinstance(embedder, str):
        raise errors.InvalidTypeError("over HTTP, embedder is a name the server knows (\"minilm\" or "
                                      "\"st:<model>\"); an Embedder object can only be used in process")


def _encode_body(body: Any) -> bytes | None:
    try:
        return None if body is None else json.dumps(body, default=_plain).encode()
    except ValueError as exc:  # a circular reference; _NotJSON passes through
        if isinstance(exc, _NotJSON):
            raise
        raise _NotJSON(f"the request holds a value JSON cannot encode ({exc})") from None


def _headers(has_body: bool, api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if has_body:
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _reply(status: int, raw: bytes) -> Any:
    """The JSON of a response, or the exception the embedded API would have raised for it."""
    if status < 400:
        return json.loads(raw or b"null")
    try:
        err = json.loads(raw)["error"]
        kind, message = err["type"], err["message"]
    except (ValueError, KeyError, TypeError):
        err, kind, message = {}, "HTTPError", raw.decode(errors="replace")[:500]
    cls = getattr(errors, kind, None)
    if cls is errors.StorageError:  # 507: the disk is full on the server (503: another storage failure)
        raise errors.StorageError(message, errno=errno.ENOSPC if status == 507 else None)
    if cls is errors.DuplicateDocumentError:
        raise cls(message, err.get("duplicates"))
    if isinstance(cls, type) and issubclass(cls, errors.SimdexError):
        raise cls(message)
    if status in (401, 403):
        raise errors.AccessDeniedError(f"{status}: {message}")
    raise errors.SimdexError(f"HTTP {status} {kind}: {message}")


def _check_url(url: str) -> urllib.parse.SplitResult:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise errors.InvalidInputError(f"url must look like http://host:port; got {url!r}")
    return parsed


class Client(DatabaseAPI):
    """Connect to a ``simdex serve`` server at ``url`` (e.g. ``http://127.0.0.1:8000``).

    Each thread keeps one persistent (keep-alive) connection. Vectors travel as base64 float32, not JSON numbers.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        parsed = _check_url(self.url)
        self._https = parsed.scheme == "https"
        self._host, self._port = parsed.hostname, parsed.port
        self._prefix = parsed.path.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = _encode_body(body)
        headers = _headers(data is not None, self.api_key)
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                # the server closed an idle keep-alive connection: reconnect once
                if attempt:
                    raise
        return _reply(resp.status, raw)

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def list_collections(self) -> list[str]:
        return [c["name"] for c in self._request("GET", f"{API}/collections")["collections"]]

    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine", index: str = "hnsw", *,
                          exist_ok: bool = False, text: bool = False, embedder: Any = None,
                          window_field: str | None = None, label_field: str | None = None,
                          dedup: dict[str, Any] | None = None, fields: dict[str, Any] | None = None,
                          **params: Any) -> RemoteCollection:
        _check_remote_embedder(embedder)
        self._request("POST", f"{API}/collections", {"name": name, "dim": dim, "metric": metric, "index": index,
                                                     "params": params, "exist_ok": exist_ok, "text": text,
                                                     "embedder": embedder, "window_field": window_field,
                                                     "label_field": label_field, "dedup": dedup,
                                                     "fields": fields})
        return RemoteCollection(self, name)

    def get_collection(self, name: str) -> RemoteCollection:
        self._request("GET", f"{API}/collections/{urllib.parse.quote(name, safe='')}")
        return RemoteCollection(self, name)

    def drop_collection(self, name: str) -> None:
        self._request("DELETE", f"{API}/collections/{urllib.parse.quote(name, safe='')}")

    def backup(self, dest: str, since: str | None = None) -> dict[str, Any]:
        """Over HTTP, ``dest`` and ``since`` are names of backups in the server's backup folder (``simdex serve
        --backup-dir DIR``)."""
        return self._request("POST", f"{API}/admin/backup", {"dest": str(dest),
                                                             "since": None if since is None else str(since)})


def _drive(steps: Generator[tuple[str, str, Any], Any, Any], request: Callable[..., Any]) -> Any:
    """Run a verb's request steps (a generator yielding ``(method, path, body)`` and receiving each reply, or the
    exception the request raised) with the synchronous ``request``."""
    try:
        call = next(steps)
        while True:
            try:
                reply = request(*call)
            except Exception as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(reply)
    except StopIteration as done:
        return done.value


async def _adrive(steps: Generator[tuple[str, str, Any], Any, Any], request: Callable[..., Any]) -> Any:
    """:func:`_drive` with an async ``request``."""
    try:
        call = next(steps)
        while True:
            try:
                reply = await request(*call)
            except Exception as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(reply)
    except StopIteration as done:
        return done.value


class _Steps:
    """The HTTP requests of each collection verb, written once as generators (see :func:`_drive`): the
    synchronous :class:`RemoteCollection` and the asynchronous :class:`AsyncRemoteCollection` run the same ones."""

    _base: str

    def _stats(self):
        return (yield "GET", self._base, None)

    def _count(self):
        return (yield "GET", f"{self._base}/count", None)["count"]

    def _upsert(self, ids: Any, vectors: Any, metadatas: Any, documents: Any, max_batch: int | None,
                fields: Any = None):
        ids = [ids] if isinstance(ids, str) else list(ids) if isinstance(ids, (list, tuple)) else ids
        if max_batch is not None and isinstance(ids, list) and len(ids) > max_batch:
            raise errors.InvalidInputError(f"a batch holds at most {max_batch} records; got {len(ids)}")
        vectors, fields = split_vectors(vectors, fields)
        body = {"ids": ids, "metadatas": metadatas, "documents": documents, "fields": fields}
        if vectors is not None:
            body.update(_vectors_field(vectors))
        try:
            return (yield "POST", f"{self._base}/upsert", body)["upserted"]
        except _NotJSON as exc:  # nothing was sent: say where, as the embedded API does
            where = _json_path(metadatas, "metadatas")
            raise errors.InvalidTypeError(f"{where} has {exc}" if where else str(exc)) from None

    def _add_field(self, name: str, spec: dict[str, Any] | None, embedder: Any):
        _check_remote_embedder(embedder)
        return (yield "POST", f"{self._base}/fields", {"name": name, "spec": spec, "embedder": embedder})

    def _use_field(self, name: str, force: bool):
        yield "POST", f"{self._base}/fields/{urllib.parse.quote(name, safe='')}/use", {"force": force}

    def _drop_field(self, name: str):
        yield "DELETE", f"{self._base}/fields/{urllib.parse.quote(name, safe='')}", None

    def _get(self, ids: Any, where: Any, limit: int | None, offset: int, include: Any):
        return (yield "POST", f"{self._base}/get", {"ids": ids, "where": where, "limit": limit, "offset": offset,
                                                     "include": include})["records"]

    def _delete(self, ids: Any, where: Any, missing_ok: bool):
        return (yield "POST", f"{self._base}/delete", {"ids": ids, "where": where,
                                                        "missing_ok": missing_ok})["deleted"]

    def _results(self, body: dict[str, Any]):
        reply = yield "POST", f"{self._base}/search", body
        for note in reply.get("warnings") or ():
            warnings.warn(errors.TruncatedTextWarning(note), stacklevel=4)
        return reply["results"]

    def _search(self, vector: Any, k: int, where: Any, include: Any, ef: int | None, text: str | None,
                mode: str | None, fusion: str, alpha: float, norm: str, depth: int | None,
                target_recall: float | None, field: str | None = None, queries: Any = None):
        body = {"k": k, "where": where, "include": include, "ef": ef, "mode": mode, "target_recall": target_recall}
        if queries is not None or (field is not None and field != MAIN_FIELD):
            if queries is not None and (vector is not None or field is not None):
                raise errors.InvalidInputError("give queries (several fields, fused) or vector with field, not both")
            return (yield from self._results({**body, "text": text, "fusion": fusion, "alpha": alpha, "norm": norm,
                                              "depth": depth,
                                              "queries": queries if queries is not None else {field: vector}}))[0]
        if text is not None:
            body.update({"text": text, "fusion": fusion, "alpha": alpha, "norm": norm, "depth": depth})
            if vector is not None:
                body["vector"] = np.asarray(vector, np.float32).reshape(-1).tolist()
            return (yield from self._results(body))[0]
        if vector is None:
            raise errors.InvalidInputError("search needs a vector, a text, or both")
        if np.ndim(vector) == 2 and np.shape(vector)[0] != 1:
            raise errors.InvalidInputError(f"search takes one vector; got shape {np.shape(vector)} "
                                           f"(use search_batch)")
        if np.ndim(vector) == 2:
            vector = np.asarray(vector)[0]
        return (yield from self._results({**_vectors_field(vector, single=True), **body}))[0]

    def _search_batch(self, vectors: Any, k: int, where: Any, include: Any, ef: int | None, texts: Any,
                      mode: str | None, fusion: str, alpha: float, norm: str, depth: int | None,
                      target_recall: float | None, field: str | None = None):
        body = {"k": k, "where": where, "include": include, "ef": ef, "mode": mode, "target_recall": target_recall}
        if field is not None and field != MAIN_FIELD:
            if texts is not None or vectors is None:
                raise errors.InvalidInputError(f"a search of field {field!r} takes its queries in vectors")
            if isinstance(vectors, (dict, str)) or not hasattr(vectors, "__len__"):
                raise errors.InvalidTypeError(f"vectors must be a list of queries for field {field!r}; got "
                                              f"{type(vectors).__name__}")
            return (yield from self._results({**body, "queries": [{field: q} for q in vectors]}))
        if texts is not None:
            if vectors is not None:
                raise errors.InvalidInputError("give vectors or texts, not both")
            texts = check_texts(texts, "texts")
            return (yield from self._results({**body, "texts": texts, "fusion": fusion, "alpha": alpha,
                                              "norm": norm, "depth": depth}))
        if vectors is None:
            raise errors.InvalidInputError("search_batch needs vectors or texts")
        return (yield from self._results({**_vectors_field(vectors), **body}))

    def _search_by_id(self, ids: Any, k: int, where: Any, include: Any, ef: int | None):
        return (yield from self._results({"query_ids": [ids] if isinstance(ids, str) else ids, "k": k,
                                          "where": where, "include": include, "ef": ef}))


class RemoteCollection(_Steps, CollectionAPI):
    """The :class:`~simdex.store.api.CollectionAPI` of one collection on a server."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name
        self._base = f"{API}/collections/{urllib.parse.quote(name, safe='')}"

    def _run(self, steps: Generator[tuple[str, str, Any], Any, Any]) -> Any:
        return _drive(steps, self._client._request)

    def stats(self) -> dict[str, Any]:
        return self._run(self._stats())

    def upsert(self, ids: Any, vectors: Any = None, metadatas: Any = None, documents: Any = None, *,
               max_batch: int | None = None, fields: dict[str, Any] | None = None) -> int:
        return self._run(self._upsert(ids, vectors, metadatas, documents, max_batch, fields))

    def get(self, ids: Any = None, where: Any = None, limit: int | None = None, offset: int = 0,
            include: Any = None) -> list[dict[str, Any]]:
        return self._run(self._get(ids, where, limit, offset, include))

    def delete(self, ids: Any = None, where: Any = None, *, missing_ok: bool = False) -> int:
        return self._run(self._delete(ids, where, missing_ok))

    def count(self) -> int:
        return self._run(self._count())

    def search(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
               ef: int | None = None, *, text: str | None = None, mode: str | None = None, fusion: str = "rrf",
               alpha: float = 0.5, norm: str = "minmax", depth: int | None = None,
               target_recall: float | None = None, field: str | None = None,
               queries: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._run(self._search(vector, k, where, include, ef, text, mode, fusion, alpha, norm, depth,
                                      target_recall, field, queries))

    def search_batch(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None, *, texts: Any = None, mode: str | None = None, fusion: str = "rrf",
                     alpha: float = 0.5, norm: str = "minmax", depth: int | None = None,
                     target_recall: float | None = None, field: str | None = None) -> list[list[dict[str, Any]]]:
        return self._run(self._search_batch(vectors, k, where, include, ef, texts, mode, fusion, alpha, norm,
                                            depth, target_recall, field))

    def search_by_id(self, ids: Any, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None) -> list[list[dict[str, Any]]]:
        return self._run(self._search_by_id(ids, k, where, include, ef))

    def add_field(self, name: str, spec: dict[str, Any] | None = None, *, embedder: Any = None) -> dict[str, Any]:
        return self._run(self._add_field(name, spec, embedder))

    def use_field(self, name: str, *, force: bool = False) -> None:
        self._run(self._use_field(name, force))

    def drop_field(self, name: str) -> None:
        self._run(self._drop_field(name))

class AsyncClient:
    """The async twin of :class:`Client` (``await`` every call; needs ``httpx``): ``get_collection`` /
    ``create_collection`` give an :class:`AsyncRemoteCollection`, whose verbs are the :class:`RemoteCollection`
    ones as coroutines. One connection pool per client; ``await client.aclose()`` when done (or ``async with``)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        try:
            import httpx
        except ImportError:
            raise ImportError("simdex.AsyncClient needs httpx: pip install httpx (or simdex[langchain])") from None
        self.url = url.rstrip("/")
        _check_url(self.url)
        self.api_key = api_key
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = _encode_body(body)
        resp = await self._http.request(method, path, content=data, headers=_headers(data is not None,
                                                                                      self.api_key))
        return _reply(resp.status_code, resp.content)

    async def list_collections(self) -> list[str]:
        return [c["name"] for c in (await self._request("GET", f"{API}/collections"))["collections"]]

    async def get_collection(self, name: str) -> AsyncRemoteCollection:
        await self._request("GET", f"{API}/collections/{urllib.parse.quote(name, safe='')}")
        return AsyncRemoteCollection(self, name)

    def collection(self, name: str) -> AsyncRemoteCollection:
        """The collection ``name`` without asking the server whether it exists (the first call will)."""
        return AsyncRemoteCollection(self, name)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class AsyncRemoteCollection(_Steps):
    """One collection on a server, its verbs as coroutines (the same requests as :class:`RemoteCollection`)."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = client
        self.name = name
        self._base = f"{API}/collections/{urllib.parse.quote(name, safe='')}"

    async def _run(self, steps: Generator[tuple[str, str, Any], Any, Any]) -> Any:
        return await _adrive(steps, self._client._request)

    async def stats(self) -> dict[str, Any]:
        return await self._run(self._stats())

    async def count(self) -> int:
        return await self._run(self._count())

    async def upsert(self, ids: Any, vectors: Any = None, metadatas: Any = None, documents: Any = None, *,
                     max_batch: int | None = None, fields: dict[str, Any] | None = None) -> int:
        return await self._run(self._upsert(ids, vectors, metadatas, documents, max_batch, fields))

    async def get(self, ids: Any = None, where: Any = None, limit: int | None = None, offset: int = 0,
                  include: Any = None) -> list[dict[str, Any]]:
        return await self._run(self._get(ids, where, limit, offset, include))

    async def delete(self, ids: Any = None, where: Any = None, *, missing_ok: bool = False) -> int:
        return await self._run(self._delete(ids, where, missing_ok))

    async def search(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None, *, text: str | None = None, mode: str | None = None,
                     fusion: str = "rrf", alpha: float = 0.5, norm: str = "minmax", depth: int | None = None,
                     target_recall: float | None = None, field: str | None = None,
                     queries: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self._run(self._search(vector, k, where, include, ef, text, mode, fusion, alpha, norm,
                                            depth, target_recall, field, queries))

    async def search_batch(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                           ef: int | None = None, *, texts: Any = None, mode: str | None = None,
                           fusion: str = "rrf", alpha: float = 0.5, norm: str = "minmax",
                           depth: int | None = None, target_recall: float | None = None,
                           field: str | None = None) -> list[list[dict[str, Any]]]:
        return await self._run(self._search_batch(vectors, k, where, include, ef, texts, mode, fusion, alpha,
                                                  norm, depth, target_recall, field))
