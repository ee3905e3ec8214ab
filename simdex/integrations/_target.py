"""Where a framework store's collection lives: an embedded database (``path``) or a server (``url``).

Embedded databases are shared within the process: a framework may build a second store on the same path (Haystack
rebuilds one when it loads a serialised pipeline), and a simdex database admits one writer, so every store on a
path uses one :class:`simdex.Database`, closed when the last of them is.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from ..errors import InvalidInputError

_shared: dict[str, list[Any]] = {}  # real path -> [database, stores using it]
_lock = threading.Lock()


def open_database(path: str | None, url: str | None, api_key: str | None) -> Any:
    """The database at ``path`` (shared, see the module) or a client of the server at ``url``."""
    if (path is None) == (url is None):
        raise InvalidInputError("give path= (an embedded database) or url= (a simdex server), not both")
    if url is not None:
        from ..server.client import Client
        return Client(url, api_key=api_key)
    from ..store import connect
    key = os.path.realpath(path)
    with _lock:
        entry = _shared.get(key)
        if entry is None:
            entry = _shared[key] = [connect(path), 0]
        entry[1] += 1
        return entry[0]


def release_database(database: Any) -> None:
    """A store is done with ``database``: close it when no other store uses it (nothing for a client)."""
    with _lock:
        for key, entry in list(_shared.items()):
            if entry[0] is database:
                entry[1] -= 1
                if entry[1] == 0:
                    del _shared[key]
                    database.close()
                return


def async_collection(cached: tuple[Any, Any] | None, client: Any, name: str) -> tuple[Any, Any]:
    """``(event loop, collection name through simdex.AsyncClient)`` for the server ``client`` (a simdex.Client)
    talks to: ``cached`` again when it belongs to the running loop (an HTTP pool belongs to the loop it was made
    in), else a new one."""
    loop = asyncio.get_running_loop()
    if cached is not None and cached[0] is loop:
        return cached
    from ..server.client import AsyncClient
    return loop, AsyncClient(client.url, client.api_key, client.timeout).collection(name)
