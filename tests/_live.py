"""A real uvicorn server on a free loopback port, for tests that talk HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """Serves ``app`` in a background thread while the ``with`` block runs."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def live_http(app) -> Iterator[httpx.Client]:
    """An HTTP client of ``app`` served by a real uvicorn server (the whole stack, as a client meets it)."""
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        yield http


@contextlib.contextmanager
def local_or_remote(kind: str, path, **options) -> Iterator:
    """An embedded database at ``path`` (``kind`` "local"), or a ``simdex.Client`` of a live server over one
    ("remote"): the two sides of the one database API. ``options`` go to ``simdex.connect``."""
    import simdex
    from simdex.server.app import create_app
    from simdex.server.client import Client
    database = simdex.connect(path, background=False, **options)
    try:
        if kind == "local":
            yield database
        else:
            with LiveServer(create_app(database)) as live:
                yield Client(live.url)
    finally:
        database.close()


@contextlib.contextmanager
def served_database(path) -> Iterator[LiveServer]:
    """A live server over a fresh embedded database at ``path``."""
    import simdex
    from simdex.server.app import create_app
    database = simdex.connect(path, background=False)
    try:
        with LiveServer(create_app(database)) as live:
            yield live
    finally:
        database.close()
