"""API keys with roles for the HTTP server (issue 26, part 5).

Keys live in a JSON file (``simdex serve --keys FILE``) that holds only their SHA-256 digests::

    {"keys": [{"name": "ingest", "sha256": "9f86...", "role": "write", "collections": ["docs"]}, ...]}

- ``role``: ``read`` (list, info, count, get, search), ``write`` (also upsert and delete) or ``admin`` (also
  create and drop collections, add, switch and drop fields, backups). Each role includes the ones before it.
- ``collections``: the collections the key may touch (absent or null: all). A key limited to some collections
  sees only those in the list of collections, may create only those, and cannot take database-wide actions
  (backups).
- The server compares the digest of the key a request sends with every stored digest in constant time, and
  re-reads the file when it changes, so keys are added, rotated and revoked without a restart
  (``simdex keys add|remove|list FILE``; the file is replaced atomically).

The single ``--api-key`` of earlier versions is one more key, with role ``admin`` on every collection.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InvalidInputError
from ..fileformat import write_json

ROLES = ("read", "write", "admin")
_LEVEL = {role: i for i, role in enumerate(ROLES)}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
RELOAD_SECONDS = 0.5  # how often the key file's modification time is checked


class Key(NamedTuple):
    name: str
    digest: bytes
    role: str
    collections: frozenset[str] | None

    def may(self, role: str) -> bool:
        return _LEVEL[self.role] >= _LEVEL[role]

    def may_use(self, collection: str | None) -> bool:
        """Whether the key may touch ``collection`` (None: a database-wide action, for unlimited keys only)."""
        if self.collections is None:
            return True
        return collection is not None and collection in self.collections


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def _parse(doc: Any, source: str) -> list[Key]:
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise InvalidInputError(f"{source}: expected {{\"keys\": [...]}}")
    out = []
    for i, entry in enumerate(doc["keys"]):
        try:
            name, role = entry["name"], entry["role"]
            raw = bytes.fromhex(entry["sha256"])
            cols = entry.get("collections")
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{source}: keys[{i}] needs name, role and a hex sha256 ({exc})") from None
        if role not in ROLES or len(raw) != 32 or not isinstance(name, str):
            raise InvalidInputError(f"{source}: keys[{i}]: role must be one of {ROLES} and sha256 32 bytes of hex")
        if cols is not None and (not isinstance(cols, list) or not all(isinstance(c, str) for c in cols)):
            raise InvalidInputError(f"{source}: keys[{i}].collections must be a list of names or null")
        out.append(Key(name, raw, role, None if cols is None else frozenset(cols)))
    return out


class KeyRing:
    """The keys a server accepts: those of a key file (re-read when it changes) and an optional single admin key.
    :meth:`authenticate` is safe to call from any thread."""

    def __init__(self, path: str | os.PathLike | None = None, api_key: str | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._fixed = [Key("api-key", digest(api_key), "admin", None)] if api_key else []
        self._keys: list[Key] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if self.path is not None:
            self._reload(force=True)

    @property
    def enabled(self) -> bool:
        return bool(self._fixed) or self.path is not None

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp == self._stamp:
                    return
                keys = _parse(json.loads(self.path.read_text()), str(self.path))
            except (OSError, ValueError, InvalidInputError):
                if force:
                    raise
                return  # a file being replaced or broken: the keys read last stay in force until it is whole
            self._keys, self._stamp = keys, stamp

    def authenticate(self, given: bytes) -> Key | None:
        """The key whose digest matches ``given``'s (compared with every stored digest in constant time), or
        None."""
        if self.path is not None:
            self._reload()
        wanted = digest(given)
        found = None
        for key in (*self._fixed, *self._keys):
            if hmac.compare_digest(wanted, key.digest) and found is None:
                found = key
        return found


_COLLECTION_PATH = re.compile(r"^/api/v1/collections/([^/]+)(/.*)?$")


def required(method: str, path: str) -> tuple[str, str | None, bool]:
    """(role, collection or None, database-wide) that a request needs."""
    if path == "/api/v1/collections":
        return ("admin" if method == "POST" else "read"), None, False
    match = _COLLECTION_PATH.match(path)
    if match is None:  # /api/v1/admin/... and anything else: the whole database
        return "admin", None, True
    from urllib.parse import unquote
    name, rest = unquote(match.group(1)), match.group(2) or ""
    if rest in ("/upsert", "/delete"):
        return "write", name, False
    if rest in ("/count", "/get", "/search") or (rest == "" and method == "GET"):
        return "read", name, False
    return "admin", name, False  # dropping the collection, its fields


# ---- the key file ------------------------------------------------------------------------------------------------
def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"keys": []}
    doc = json.loads(path.read_text())
    _parse(doc, str(path))
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    write_json(path, doc, mode=0o600)  # only the key's owner reads the digests


def add_key(path: str | os.PathLike, name: str, role: str, collections: list[str] | None = None) -> str:
    """Add (or rotate: replace) the key ``name`` in the key file; returns the new key, shown once."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(f"invalid key name {name!r}: 1-64 letters, digits, '_', '.' or '-'")
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {ROLES}; got {role!r}")
    path = Path(path)
    doc = _read(path)
    key = "sdx_" + secrets.token_urlsafe(32)
    entry = {"name": name, "sha256": digest(key).hex(), "role": role, "collections": collections}
    doc["keys"] = [k for k in doc["keys"] if k["name"] != name] + [entry]
    _write(path, doc)
    return key


def remove_key(path: str | os.PathLike, name: str) -> None:
    path = Path(path)
    doc = _read(path)
    kept = [k for k in doc["keys"] if k["name"] != name]
    if len(kept) == len(doc["keys"]):
        raise InvalidInputError(f"no key named {name!r} in {path}")
    _write(path, {**doc, "keys": kept})


def list_keys(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The keys of the file without their digests."""
    return [{k: v for k, v in entry.items() if k != "sha256"} for entry in _read(Path(path))["keys"]]
