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
from typing import Any

import numpy as np

from .. import errors
from .._validate import check_texts
from ..store.api import CollectionAPI, DatabaseAPI

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


class Client(DatabaseAPI):
    """Connect to a ``simdex serve`` server at ``url`` (e.g. ``http://127.0.0.1:8000``).

    Each thread keeps one persistent (keep-alive) connection. Vectors travel as base64 float32, not JSON numbers.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise errors.InvalidInputError(f"url must look like http://host:port; got {url!r}")
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
        try:
            data = None if body is None else json.dumps(body, default=_plain).encode()
        except ValueError as exc:  # a circular reference; _NotJSON passes through
            if isinstance(exc, _NotJSON):
                raise
            raise _NotJSON(f"the request holds a value JSON cannot encode ({exc})") from None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
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
        if resp.status < 400:
            return json.loads(raw or b"null")
        try:
            err = json.loads(raw)["error"]
            kind, message = err["type"], err["message"]
        except (ValueError, KeyError, TypeError):
            kind, message = "HTTPError", raw.decode(errors="replace")[:500]
        cls = getattr(errors, kind, None)
        if cls is errors.StorageError:  # 507: the disk is full on the server (503: another storage failure)
            raise errors.StorageError(message, errno=errno.ENOSPC if resp.status == 507 else None)
        if cls is errors.DuplicateDocumentError:
            raise cls(message, err.get("duplicates"))
        if isinstance(cls, type) and issubclass(cls, errors.SimdexError):
            raise cls(message)
        if resp.status in (401, 403):
            raise errors.AccessDeniedError(f"{resp.status}: {message}")
        raise errors.SimdexError(f"HTTP {resp.status} {kind}: {message}")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def list_collections(self) -> list[str]:
        return [c["name"] for c in self._request("GET", f"{API}/collections")["collections"]]

    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine", index: str = "hnsw", *,
                          exist_ok: bool = False, text: bool = False, embedder: Any = None,
                          window_field: str | None = None, label_field: str | None = None,
                          dedup: dict[str, Any] | None = None, **params: Any) -> RemoteCollection:
        if embedder is not None and not isinstance(embedder, str):
            raise errors.InvalidTypeError("over HTTP, embedder is a name the server knows (\"minilm\" or "
                                          "\"st:<model>\"); an Embedder object can only be used in process")
        self._request("POST", f"{API}/collections", {"name": name, "dim": dim, "metric": metric, "index": index,
                                                     "params": params, "exist_ok": exist_ok, "text": text,
                                                     "embedder": embedder, "window_field": window_field,
                                                     "label_field": label_field, "dedup": dedup})
        return RemoteCollection(self, name)

    def get_collection(self, name: str) -> RemoteCollection:
        self._request("GET", f"{API}/collections/{urllib.parse.quote(name, safe='')}")
        return RemoteCollection(self, name)

    def drop_collection(self, name: str) -> None:
        self._request("DELETE", f"{API}/collections/{urllib.parse.quote(name, safe='')}")


class RemoteCollection(CollectionAPI):
    """The :class:`~simdex.store.api.CollectionAPI` of one collection on a server."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name
        self._base = f"{API}/collections/{urllib.parse.quote(name, safe='')}"

    def _post(self, verb: str, body: dict[str, Any]) -> Any:
        return self._client._request("POST", f"{self._base}/{verb}", body)

    def _search(self, body: dict[str, Any]) -> list[list[dict[str, Any]]]:
        reply = self._post("search", body)
        for note in reply.get("warnings") or ():
            warnings.warn(errors.TruncatedTextWarning(note), stacklevel=3)
        return reply["results"]

    def stats(self) -> dict[str, Any]:
        return self._client._request("GET", self._base)

    def upsert(self, ids: Any, vectors: Any = None, metadatas: Any = None, documents: Any = None, *,
               max_batch: int | None = None) -> int:
        ids = [ids] if isinstance(ids, str) else list(ids) if isinstance(ids, (list, tuple)) else ids
        if max_batch is not None and isinstance(ids, list) and len(ids) > max_batch:
            raise errors.InvalidInputError(f"a batch holds at most {max_batch} records; got {len(ids)}")
        body = {"ids": ids, "metadatas": metadatas, "documents": documents}
        if vectors is not None:
            body.update(_vectors_field(vectors))
        try:
            return self._post("upsert", body)["upserted"]
        except _NotJSON as exc:  # nothing was sent: say where, as the embedded API does
            where = _json_path(metadatas, "metadatas")
            raise errors.InvalidTypeError(f"{where} has {exc}" if where else str(exc)) from None

    def get(self, ids: Any = None, where: Any = None, limit: int | None = None, offset: int = 0,
            include: Any = None) -> list[dict[str, Any]]:
        return self._post("get", {"ids": ids, "where": where, "limit": limit, "offset": offset,
                                  "include": include})["records"]

    def delete(self, ids: Any = None, where: Any = None, *, missing_ok: bool = False) -> int:
        return self._post("delete", {"ids": ids, "where": where, "missing_ok": missing_ok})["deleted"]

    def count(self) -> int:
        return self._client._request("GET", f"{self._base}/count")["count"]

    def search(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
               ef: int | None = None, *, text: str | None = None, mode: str | None = None, fusion: str = "rrf",
               alpha: float = 0.5, norm: str = "minmax", depth: int | None = None) -> list[dict[str, Any]]:
        body = {"k": k, "where": where, "include": include, "ef": ef, "mode": mode}
        if text is not None:
            body.update({"text": text, "fusion": fusion, "alpha": alpha, "norm": norm, "depth": depth})
            if vector is not None:
                body["vector"] = np.asarray(vector, np.float32).reshape(-1).tolist()
            return self._search(body)[0]
        if vector is None:
            raise errors.InvalidInputError("search needs a vector, a text, or both")
        if np.ndim(vector) == 2 and np.shape(vector)[0] != 1:
            raise errors.InvalidInputError(f"search takes one vector; got shape {np.shape(vector)} "
                                           f"(use search_batch)")
        if np.ndim(vector) == 2:
            vector = np.asarray(vector)[0]
        return self._search({**_vectors_field(vector, single=True), **body})[0]

    def search_batch(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None, *, texts: Any = None, mode: str | None = None, fusion: str = "rrf",
                     alpha: float = 0.5, norm: str = "minmax", depth: int | None = None
                     ) -> list[list[dict[str, Any]]]:
        body = {"k": k, "where": where, "include": include, "ef": ef, "mode": mode}
        if texts is not None:
            if vectors is not None:
                raise errors.InvalidInputError("give vectors or texts, not both")
            texts = check_texts(texts, "texts")
            return self._search({**body, "texts": texts, "fusion": fusion, "alpha": alpha, "norm": norm,
                                 "depth": depth})
        if vectors is None:
            raise errors.InvalidInputError("search_batch needs vectors or texts")
        return self._search({**_vectors_field(vectors), **body})

    def search_by_id(self, ids: Any, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None) -> list[list[dict[str, Any]]]:
        return self._search({"query_ids": [ids] if isinstance(ids, str) else ids, "k": k, "where": where,
                             "include": include, "ef": ef})
