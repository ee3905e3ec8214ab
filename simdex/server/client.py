"""``simdex.Client``: the Collection API over HTTP, using only the standard library.

Server errors come back as the same exception classes the embedded API raises (matched by the error ``type``
in the JSON body), so code moves between ``simdex.connect`` and ``simdex.Client`` unchanged.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np

from .. import errors

API = "/api/v1"


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


class Client:
    """Connect to a ``simdex serve`` server at ``url`` (e.g. ``http://127.0.0.1:8000``)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body, default=_plain).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)["error"]
                kind, message = err["type"], err["message"]
            except (ValueError, KeyError, TypeError):
                kind, message = "HTTPError", raw.decode(errors="replace")[:500]
            cls = getattr(errors, kind, None)
            if isinstance(cls, type) and issubclass(cls, errors.SimdexError):
                raise cls(message) from None
            if exc.code in (401, 403):
                raise PermissionError(f"{exc.code}: {message}") from None
            raise errors.SimdexError(f"HTTP {exc.code} {kind}: {message}") from None

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def list_collections(self) -> list[str]:
        return [c["name"] for c in self._request("GET", f"{API}/collections")["collections"]]

    def create_collection(self, name: str, dim: int, metric: str = "cosine", index: str = "hnsw", *,
                          exist_ok: bool = False, **params: Any) -> RemoteCollection:
        self._request("POST", f"{API}/collections", {"name": name, "dim": dim, "metric": metric, "index": index,
                                                     "params": params, "exist_ok": exist_ok})
        return RemoteCollection(self, name)

    def get_or_create_collection(self, name: str, dim: int, metric: str = "cosine", index: str = "hnsw",
                                 **params: Any) -> RemoteCollection:
        return self.create_collection(name, dim, metric, index, exist_ok=True, **params)

    def get_collection(self, name: str) -> RemoteCollection:
        self._request("GET", f"{API}/collections/{urllib.parse.quote(name, safe='')}")
        return RemoteCollection(self, name)

    def drop_collection(self, name: str) -> None:
        self._request("DELETE", f"{API}/collections/{urllib.parse.quote(name, safe='')}")


class RemoteCollection:
    """The :class:`~simdex.Collection` API of one collection on a server."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name
        self._base = f"{API}/collections/{urllib.parse.quote(name, safe='')}"

    def _post(self, verb: str, body: dict[str, Any]) -> Any:
        return self._client._request("POST", f"{self._base}/{verb}", body)

    def stats(self) -> dict[str, Any]:
        return self._client._request("GET", self._base)

    def upsert(self, ids: Any, vectors: Any, metadatas: Any = None, documents: Any = None) -> int:
        return self._post("upsert", {"ids": list(ids) if not isinstance(ids, str) else [ids],
                                     "vectors": np.asarray(vectors, np.float64).tolist()
                                     if not isinstance(vectors, list) else vectors,
                                     "metadatas": metadatas, "documents": documents})["upserted"]

    def get(self, ids: Any = None, where: Any = None, limit: int | None = None, offset: int = 0,
            include: Any = None) -> list[dict[str, Any]]:
        return self._post("get", {"ids": ids, "where": where, "limit": limit, "offset": offset,
                                  "include": include})["records"]

    def delete(self, ids: Any = None, where: Any = None, *, missing_ok: bool = False) -> int:
        return self._post("delete", {"ids": ids, "where": where, "missing_ok": missing_ok})["deleted"]

    def count(self) -> int:
        return self._client._request("GET", f"{self._base}/count")["count"]

    def __len__(self) -> int:
        return self.count()

    def search(self, vector: Any, k: int = 10, where: Any = None, include: Any = None,
               ef: int | None = None) -> list[dict[str, Any]]:
        vec = np.asarray(vector, np.float64).reshape(-1).tolist()
        return self._post("search", {"vector": vec, "k": k, "where": where, "include": include,
                                     "ef": ef})["results"][0]

    def search_batch(self, vectors: Any, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None) -> list[list[dict[str, Any]]]:
        return self._post("search", {"vectors": np.asarray(vectors, np.float64).tolist(), "k": k, "where": where,
                                     "include": include, "ef": ef})["results"]

    def search_by_id(self, ids: list[str], k: int = 10, where: Any = None, include: Any = None
                     ) -> list[list[dict[str, Any]]]:
        return self._post("search", {"query_ids": ids, "k": k, "where": where, "include": include})["results"]
