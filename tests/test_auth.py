"""API keys with roles (issue 26, part 5): every route against every role on a live server, keys limited to some
collections, keys stored hashed and rotated without a restart, and the CLI that manages them."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import simdex
from simdex.cli import main as cli_main
from simdex.server import auth
from simdex.server.app import create_app

from ._live import live_http

# (method, path, body, the lowest role allowed); "c" exists, "fresh" does not (created by admins)
ROUTES = [
    ("GET", "/api/v1/collections", None, "read"),
    ("GET", "/api/v1/collections/c", None, "read"),
    ("GET", "/api/v1/collections/c/count", None, "read"),
    ("POST", "/api/v1/collections/c/get", {"ids": ["a"]}, "read"),
    ("POST", "/api/v1/collections/c/search", {"vector": [1.0, 0.0, 0.0, 0.0], "k": 1}, "read"),
    ("POST", "/api/v1/collections/c/upsert", {"ids": ["z"], "vectors": [[0.0, 1.0, 0.0, 0.0]]}, "write"),
    ("POST", "/api/v1/collections/c/delete", {"ids": ["z"], "missing_ok": True}, "write"),
    ("POST", "/api/v1/collections/c/fields", {"name": "f", "spec": {"type": "sparse"}}, "admin"),
    ("DELETE", "/api/v1/collections/c/fields/f", None, "admin"),
    ("POST", "/api/v1/collections", {"name": "fresh", "dim": 4}, "admin"),
    ("DELETE", "/api/v1/collections/fresh", None, "admin"),
    ("POST", "/api/v1/admin/backup", {"dest": "b1"}, "admin"),
]


@pytest.fixture
def served(tmp_path):
    keys_file = tmp_path / "keys.json"
    keys = {role: auth.add_key(keys_file, f"k-{role}", role) for role in auth.ROLES}
    keys["limited"] = auth.add_key(keys_file, "limited", "admin", ["c", "fresh"])
    with simdex.connect(tmp_path / "db") as db:
        db.create_collection("c", 4, index="flat").upsert(["a", "b"], np.eye(4)[:2])
        db.create_collection("other", 4, index="flat").upsert(["x"], np.eye(4)[:1])
        with live_http(create_app(db, keys_file=keys_file, backup_dir=tmp_path / "backups")) as http:
            yield http, keys, keys_file, tmp_path


def _call(http, method, path, body, key, tmp):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if body is not None:
        body = json.loads(json.dumps(body).replace("{tmp}", str(tmp)))
    return http.request(method, path, json=body, headers=headers)


def test_every_route_against_every_role(served):
    http, keys, _, tmp = served
    for method, path, body, lowest in ROUTES:
        for role in auth.ROLES:
            got = _call(http, method, path, body, keys[role], tmp)
            if auth.ROLES.index(role) < auth.ROLES.index(lowest):
                assert got.status_code == 403, (method, path, role, got.text)
                assert got.json()["error"]["type"] == "Forbidden" and f"needs {lowest!r}" in got.text
            else:
                assert got.status_code < 300, (method, path, role, got.text)
        # no key, a wrong key: 401 whatever the route
        assert _call(http, method, path, body, None, tmp).status_code == 401
        assert _call(http, method, path, body, "sdx_wrong", tmp).status_code == 401
    assert http.get("/healthz").status_code == 200 and http.get("/").status_code == 200  # the console page


def test_a_key_limited_to_some_collections(served):
    http, keys, _, tmp = served
    limited = keys["limited"]
    names = [c["name"] for c in _call(http, "GET", "/api/v1/collections", None, limited, tmp).json()["collections"]]
    assert names == ["c"]  # "other" is not listed
    assert _call(http, "GET", "/api/v1/collections/other", None, limited, tmp).status_code == 403
    assert _call(http, "POST", "/api/v1/collections/other/search", {"vector": [1, 0, 0, 0]}, limited,
                 tmp).status_code == 403
    assert _call(http, "POST", "/api/v1/collections/c/upsert", {"ids": ["q"], "vectors": [[1, 1, 0, 0]]}, limited,
                 tmp).status_code == 200
    assert _call(http, "POST", "/api/v1/collections", {"name": "nope", "dim": 4}, limited, tmp).status_code == 403
    assert _call(http, "POST", "/api/v1/collections", {"name": "fresh", "dim": 4}, limited, tmp).status_code == 201
    got = _call(http, "POST", "/api/v1/admin/backup", {"dest": "b2"}, limited, tmp)  # the whole database
    assert got.status_code == 403 and "whole database" in got.text


def test_keys_are_hashed_rotated_and_revoked_without_restart(served):
    http, keys, keys_file, tmp = served
    text = keys_file.read_text()
    assert all(key not in text for key in keys.values())  # only digests are stored
    ok = _call(http, "GET", "/api/v1/collections", None, keys["read"], tmp)
    assert ok.status_code == 200
    new = auth.add_key(keys_file, "k-read", "read")  # rotation: a new key under the same name
    time.sleep(auth.RELOAD_SECONDS + 0.1)
    assert _call(http, "GET", "/api/v1/collections", None, new, tmp).status_code == 200
    assert _call(http, "GET", "/api/v1/collections", None, keys["read"], tmp).status_code == 401
    auth.remove_key(keys_file, "k-read")
    time.sleep(auth.RELOAD_SECONDS + 0.1)
    assert _call(http, "GET", "/api/v1/collections", None, new, tmp).status_code == 401
    keys_file.write_text("{broken")  # a broken file leaves the last good keys in force
    time.sleep(auth.RELOAD_SECONDS + 0.1)
    assert _call(http, "GET", "/api/v1/collections", None, keys["admin"], tmp).status_code == 200


def test_client_and_cli(served, capsys):
    http, keys, keys_file, tmp = served
    client = simdex.Client(str(http.base_url), api_key=keys["read"])
    assert client.get_collection("c").search([1.0, 0, 0, 0], k=1)[0]["id"] == "a"
    with pytest.raises(simdex.errors.AccessDeniedError, match="needs 'write'"):
        client.get_collection("c").upsert(["w"], [[0.0, 0, 1, 0]])
    assert cli_main(["keys", "add", str(keys_file), "--name", "ci", "--role", "write", "--collections", "c"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("sdx_")
    time.sleep(auth.RELOAD_SECONDS + 0.1)
    writer = simdex.Client(str(http.base_url), api_key=printed)
    assert writer.get_collection("c").upsert(["w"], [[0.0, 0, 1, 0]]) == 1
    assert cli_main(["keys", "list", str(keys_file)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert {"name": "ci", "role": "write", "collections": ["c"]} in listed and all("sha256" not in e for e in listed)
    with pytest.raises(SystemExit, match="needs --name"):
        cli_main(["keys", "remove", str(keys_file)])
    with pytest.raises(SystemExit, match="--keys FILE"):
        cli_main(["serve", "--path", str(tmp / "db2"), "--host", "0.0.0.0"])
    with pytest.raises(SystemExit, match="cannot read the key file"):
        cli_main(["serve", "--path", str(tmp / "db2"), "--keys", str(tmp / "missing.json"), "--no-warmup"])
