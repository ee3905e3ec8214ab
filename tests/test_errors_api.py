"""Every bad input to the public API raises a SimdexError subclass, as simdex/errors.py promises.

The scan finds the index classes that simdex, simdex.quant, simdex.sparse, simdex.sets and simdex.multivector
export (tests/_index_adapters.py: a new class is found, and fails the conformance suite until it has an adapter).
For each class it breaks one argument at a time, with values of the wrong kind for the argument's role, in:

- the constructor (every parameter, the numeric ones found from the signature);
- the valid calls of the public methods (the adapter's), plus every numeric, ``ids`` or ``filter`` parameter the
  method's signature has: wrong dimension, NaN / inf, wrong dtype, ragged input (the family's bad items), strings
  and NaN for numbers, bad k, unknown or malformed ids, bad filter masks, absurd sizes;
- loading damaged files: cut, flipped, not simdex at all, a folder, nothing there, and well-checksummed files
  whose header values or arrays are wrong.

A call may succeed (a value that is only unusual) or raise a SimdexError subclass; some values must be refused
(a string for a number, unknown ids, bad items). Any other exception type fails the test, which lists every
offender at once.
"""

from __future__ import annotations

import inspect
import json
import numbers
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import simdex
from simdex import SimdexError, fileformat
from simdex.index import BaseIndex
from tests._index_adapters import adapter, adapters, exported_index_classes, family_data  # noqa: F401 (fixtures)

N_SCAN = 300  # items per scanned index (PQ and k-means need a few hundred)
_NAN = float("nan")

# bad values for each role of an argument: (value, must the call refuse it?)
BAD_NUMBERS = [("abc", True), ("", True), (_NAN, True), ([3], True), (float("inf"), False), (-1, False), (0, False),
               (2.5, False), (10**30, False), (-10**30, False), (True, False)]
BAD_IDS = [([10**12], True), ([-3], True), (["a"], True), ([1.5], True), ([[1, 2]], True), (np.array([_NAN]), True),
           ("abc", True), (None, False)]
BAD_FILTERS = [(np.zeros((2, 2), bool), True), ([-5], True), (["a"], True), ([1.5], True), ([[1, 2], [3]], True),
               (np.array([object()]), True), ("abc", True), ({"a": 1}, True)]
BAD_STRINGS = [("nonsense", False), (5, False), (b"bytes", False), (None, False)]
BAD_BOOLS = [("yes", False), (2, False), (None, False)]
GENERIC_BAD_ITEMS = [(None, True), (5, True), ("abc", True), (object(), True)]


def _annotation(param: inspect.Parameter) -> str:
    a = param.annotation
    return a if isinstance(a, str) else getattr(a, "__name__", str(a))


def role(name: str, value: Any, param: inspect.Parameter | None = None) -> str | None:
    """What an argument is, from its name, its valid value and its annotation."""
    if name in ("ids", "doc_ids"):
        return "ids"
    if name == "filter":
        return "filter"
    if name in ("path", "storage_dir", "progress", "self", "cls") or (param is not None and param.kind in (
            inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Real):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None and param is not None:
        note = _annotation(param)
        if "Callable" in note or "Any" in note or "str" in note or "dict" in note or "Codec" in note:
            return None
        return "number" if ("int" in note or "float" in note) else None
    if isinstance(value, dict):
        return None  # parameter dicts (base_params, encoder) are checked by their own constructors
    return "items"


def bad_values(kind: str, adapter, skip: tuple[str, ...] = ()) -> list[tuple[Any, bool]]:
    if kind == "items":
        return [(v, True) for k, v in adapter.bad_items.items() if k not in skip] + GENERIC_BAD_ITEMS
    return {"number": BAD_NUMBERS, "ids": BAD_IDS, "filter": BAD_FILTERS, "string": BAD_STRINGS,
            "bool": BAD_BOOLS}[kind]


def scanned_arguments(fn, args: tuple, kwargs: dict, signature_of=None):
    """(name, role, how to pass it, valid value) for every argument of a valid call worth breaking: those given,
    and the numeric / ids / filter parameters of the signature that were left at their defaults."""
    sig = inspect.signature(fn)
    bound = sig.bind_partial(*args, **kwargs)
    out = []
    for i, (name, value) in enumerate(bound.arguments.items()):
        kind = role(name, value, sig.parameters.get(name))
        if kind is not None:
            out.append((name, kind, i if i < len(args) else name))
    extra = inspect.signature(signature_of) if signature_of is not None else sig
    for name, param in extra.parameters.items():
        if name in bound.arguments or param.default is inspect.Parameter.empty:
            continue
        kind = role(name, param.default, param)
        if kind in ("number", "ids", "filter", "bool", "string"):
            out.append((name, kind, name))
    return out


def scan_call(label: str, fn, args: tuple, kwargs: dict, adapter, problems: list[str], *, signature_of=None,
              must_ids: bool = True, skip_items: tuple[str, ...] = ()) -> None:
    """Call ``fn`` with each argument broken in turn; record every exception that is not a SimdexError, and every
    value that must be refused but was taken."""
    for name, kind, where in scanned_arguments(fn, args, kwargs, signature_of):
        for value, must in bad_values(kind, adapter, skip_items):
            a, k = list(args), dict(kwargs)
            if isinstance(where, int):
                a[where] = value
            else:
                k[where] = value
            try:
                fn(*a, **k)
            except SimdexError:
                continue
            except Exception as exc:  # noqa: BLE001 -- the point of the scan
                where_from = traceback.extract_tb(exc.__traceback__)[-1]
                problems.append(f"{label}: {name}={_short(value)} raised {type(exc).__name__}: {exc} "
                                f"(at {Path(where_from.filename).name}:{where_from.lineno})")
                continue
            if must and (kind != "ids" or must_ids):
                problems.append(f"{label}: {name}={_short(value)} was accepted")


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, np.ndarray) else f"array({value.dtype}, shape={value.shape})"
    return text if len(text) < 60 else text[:57] + "..."


def test_the_scan_covers_every_exported_index_class(adapters):
    covered = {a.cls for a in adapters.values()}
    assert set(exported_index_classes()) <= covered


def test_constructor_bad_parameters(adapter):
    if adapter.ctor is None:
        return
    fn, args, kwargs = adapter.ctor
    problems: list[str] = []
    # data of another dimension is fine for a constructor that takes data (SPANNIndex.build)
    scan_call(f"{adapter.name}()", fn, args, kwargs, adapter, problems,
              signature_of=getattr(fn, "scan_signature", None), skip_items=("wrong dimension",))
    assert not problems, "\n".join(problems)


def test_method_bad_arguments(adapter, tmp_path):
    problems: list[str] = []
    index = adapter.filled(N_SCAN, tmp_path / "index")
    for method, (args, kwargs) in adapter.calls(index, adapter.items(5, 0)).items():
        fn = getattr(index, method)
        fn(*args, **kwargs)  # the valid call works
        # an argument that names existing ids must name existing ones; add's ids= may be any new ones
        scan_call(f"{adapter.name}.{method}", fn, args, kwargs, adapter, problems, must_ids=method != "add")
    assert not problems, "\n".join(problems)


def _rewrite(path: Path, out: Path, change) -> None:
    kind, meta, arrays = fileformat.load_arrays(path, mmap=False)
    kind, meta, arrays = change(kind, json.loads(json.dumps(meta)), dict(arrays))
    fileformat.save_arrays(out, kind, meta, arrays)


def damaged_files(good: Path, tmp: Path) -> dict[str, Path]:
    """Files that are not a healthy index of good's kind: cut, flipped, foreign, and well-checksummed ones whose
    header values or arrays are wrong."""
    raw = good.read_bytes()
    out = {}

    def put(name: str, data: bytes) -> None:
        out[name] = tmp / name
        out[name].write_bytes(data)
    put("half", raw[:len(raw) // 2])
    put("header-only", raw[:200])
    put("empty", b"")
    put("garbage", b"\x00simdex? no" * 50)
    flipped = bytearray(raw)
    specs = json.loads(raw[24:24 + int.from_bytes(raw[8:16], "little")])["arrays"]
    spec = max(specs.values(), key=lambda s: s["nbytes"])  # inside an array: padding has no checksum
    flipped[spec["offset"] + spec["nbytes"] // 2] ^= 0x5A
    put("flipped", bytes(flipped))
    (tmp / "folder").mkdir()
    out["folder"] = tmp / "folder"
    out["missing"] = tmp / "missing.sdx"
    _, meta, arrays = fileformat.load_arrays(good, mmap=False)
    for key, value in meta.items():
        for j, bad in enumerate(["x", -1, None, 10**30, [], {"a": 1}, 0.5]):
            if bad == value:
                continue
            out[f"meta-{key}-{j}"] = tmp / f"meta-{key}-{j}.sdx"
            _rewrite(good, out[f"meta-{key}-{j}"], lambda k, m, a, key=key, bad=bad: (k, {**m, key: bad}, a))
    for name, arr in arrays.items():
        variants = {"cut": arr[:max(0, arr.shape[0] - 1)] if arr.ndim else arr, "float": arr.astype(np.float32),
                    "flat": arr.reshape(-1), "none": np.zeros(0, np.uint8)}
        for label, bad in variants.items():
            safe = name.replace("/", "_")
            out[f"array-{safe}-{label}"] = tmp / f"array-{safe}-{label}.sdx"
            _rewrite(good, out[f"array-{safe}-{label}"], lambda k, m, a, name=name, bad=bad: (k, m, {**a, name: bad}))
        out[f"array-{name}-missing"] = tmp / f"array-{name}-missing.sdx"
        _rewrite(good, out[f"array-{name}-missing"],
                 lambda k, m, a, name=name: (k, m, {n: v for n, v in a.items() if n != name}))
    return out


def test_damaged_files(adapter, tmp_path):
    index = adapter.filled(N_SCAN, tmp_path / "index")
    if "save" in adapter.refuses:
        return  # nothing is saved (the conformance suite checks the refusal)
    path = tmp_path / "good.sdx"
    index.save(path)
    header = path / "index.sdx" if path.is_dir() else path
    cls = type(index)
    problems: list[str] = []
    (tmp_path / "bad").mkdir()
    for name, bad in damaged_files(header, tmp_path / "bad").items():
        target = bad
        if path.is_dir() and bad.is_file():  # a folder index: damage its header inside a copy of the folder
            target = tmp_path / f"folder-{name}"
            target.mkdir()
            for part in path.iterdir():
                (target / part.name).symlink_to(part)
            (target / "index.sdx").unlink()
            (target / "index.sdx").symlink_to(bad)
        for label, load in ((f"{cls.__name__}.load", cls.load), ("simdex.load", simdex.load)):
            for kwargs in ({}, {"verify": False}, {"mmap": False}):
                try:
                    loaded = load(target, **kwargs)
                except SimdexError:
                    continue
                except Exception as exc:  # noqa: BLE001 -- the point of the scan
                    problems.append(f"{label}({name}, {kwargs}) raised {type(exc).__name__}: {exc}")
                    continue
                if not isinstance(loaded, BaseIndex):
                    problems.append(f"{label}({name}, {kwargs}) returned {type(loaded).__name__}")
                elif kwargs.get("verify", True) and name in ("half", "header-only", "empty", "garbage", "flipped",
                                                             "folder", "missing"):
                    problems.append(f"{label}({name}, {kwargs}) loaded a damaged file")
    assert not problems, "\n".join(problems[:60]) + (f"\n... {len(problems) - 60} more" if len(problems) > 60 else "")


def test_database_and_client_bad_arguments(tmp_path):
    with pytest.raises(simdex.InvalidInputError, match="sync"):
        simdex.connect(tmp_path / "db", sync="sometimes")
    from simdex.store.wal import WriteAheadLog
    with pytest.raises(simdex.InvalidInputError, match="sync"):
        WriteAheadLog(tmp_path / "wal", sync="sometimes")
    with pytest.raises(simdex.InvalidInputError, match="url"):
        simdex.Client("ftp://example.org")
