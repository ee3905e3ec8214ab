"""The ``where`` filter language, compiled to a parameterised SQLite expression over the JSON metadata column.

Grammar (MongoDB-like)::

    where   := {field: value}                       equality (value: str, number, bool, null, {"$date": iso})
             | {field: {op: value, ...}}            several operators on one field are ANDed
             | {"$and": [where, ...]} | {"$or": [where, ...]} | {"$not": where}
             | {field1: ..., field2: ...}           several fields are ANDed
    op      := $eq $ne $gt $gte $lt $lte            (value: str, number, bool, null, {"$date": iso})
             | $in $nin                             (value: non-empty list of those)
             | $exists                              (value: bool)

Fields are metadata keys; ``a.b`` reaches into nested objects. Comparisons are typed: a number matches only a
number, a string only a string, and ``{"$date": "2024-05-01"}`` compares ISO-8601 dates and times by their
instant. ``$ne`` and ``$nin`` also match records that lack the field (as in MongoDB).

Every error names the offending part by its path, e.g. ``where.$and[1].price: unknown operator '$gtx'``.
Field paths and values are bound as SQL parameters, never spliced into the SQL text.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import FilterError

COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = tuple(COMPARISONS) + ("$in", "$nin", "$exists")
_FIELD = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
MAX_DEPTH = 32


def compile_where(where: Any, column: str = "metadata") -> tuple[str, list[Any]]:
    """Compile a filter to ``(sql_expression, parameters)``. ``None`` or ``{}`` compiles to ``1`` (everything)."""
    if where is None or where == {}:
        return "1", []
    params: list[Any] = []
    sql = _compile(where, "where", column, params, 0)
    return sql, params


def _fail(path: str, message: str) -> FilterError:
    return FilterError(f"{path}: {message}")


def _compile(node: Any, path: str, column: str, params: list[Any], depth: int) -> str:
    if depth > MAX_DEPTH:
        raise _fail(path, f"filter nests deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict):
        raise _fail(path, f"expected an object like {{\"field\": value}}; got {type(node).__name__}")
    if not node:
        raise _fail(path, "empty filter object")
    parts = []
    for key, value in node.items():
        sub = f"{path}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _fail(sub, f"{key} takes a non-empty list of filters")
            inner = [_compile(v, f"{sub}[{i}]", column, params, depth + 1) for i, v in enumerate(value)]
            parts.append("(" + (" AND " if key == "$and" else " OR ").join(inner) + ")")
        elif key == "$not":
            parts.append(f"NOT ({_compile(value, sub, column, params, depth + 1)})")
        elif key.startswith("$"):
            raise _fail(sub, f"unknown logical operator {key!r} (use $and, $or, $not, or a field name)")
        else:
            if not isinstance(key, str) or not _FIELD.match(key):
                raise _fail(sub, "field names are letters, digits, '_' and '-', with '.' between nested keys")
            json_path = "$." + ".".join(f'"{p}"' for p in key.split("."))
            if isinstance(value, dict) and value and all(k.startswith("$") for k in value) and "$date" not in value:
                for op, operand in value.items():
                    parts.append(_field_op(json_path, op, operand, f"{sub}.{op}", column, params))
            else:
                parts.append(_field_op(json_path, "$eq", value, sub, column, params))
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def _typed_value(value: Any, path: str) -> tuple[str, Any]:
    """(kind, sql value) of a filter operand: kind is number, text, bool, null or date."""
    if value is None:
        return "null", None
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise _fail(path, "numbers in filters must be finite")
        return "number", value
    if isinstance(value, str):
        return "text", value
    if isinstance(value, dict) and set(value) == {"$date"} and isinstance(value["$date"], str):
        try:
            parsed = _dt.datetime.fromisoformat(value["$date"].replace("Z", "+00:00"))
        except ValueError:
            raise _fail(path, f"{value['$date']!r} is not an ISO-8601 date or time") from None
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return "date", parsed.isoformat(sep=" ")
    raise _fail(path, f"unsupported value {value!r}: use a string, number, bool, null or {{\"$date\": \"ISO\"}}")


def _field_op(json_path: str, op: str, operand: Any, path: str, column: str, params: list[Any]) -> str:
    extract = f"json_extract({column}, ?)"
    jtype = f"json_type({column}, ?)"
    if op == "$exists":
        if not isinstance(operand, bool):
            raise _fail(path, "$exists takes true or false")
        params.append(json_path)
        return f"({jtype} IS {'NOT ' if operand else ''}NULL)"
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand:
            raise _fail(path, f"{op} takes a non-empty list of values")
        inner = [_comparison(json_path, "$eq", v, f"{path}[{i}]", extract, jtype, params)
                 for i, v in enumerate(operand)]
        expr = "(" + " OR ".join(inner) + ")"
        return expr if op == "$in" else f"NOT {expr}"
    if op not in COMPARISONS:
        raise _fail(path, f"unknown operator {op!r} (supported: {', '.join(OPERATORS)})")
    if op == "$ne":
        return f"NOT {_comparison(json_path, '$eq', operand, path, extract, jtype, params)}"
    return _comparison(json_path, op, operand, path, extract, jtype, params)


def _comparison(json_path: str, op: str, operand: Any, path: str, extract: str, jtype: str,
                params: list[Any]) -> str:
    # COALESCE: a missing field makes the comparison NULL; it must be plain false so that NOT (used by $ne,
    # $nin and $not) turns it into true.
    return f"COALESCE({_raw_comparison(json_path, op, operand, path, extract, jtype, params)}, 0)"


def _raw_comparison(json_path: str, op: str, operand: Any, path: str, extract: str, jtype: str,
                    params: list[Any]) -> str:
    kind, value = _typed_value(operand, path)
    sql_op = COMPARISONS[op]
    if kind in ("null", "bool"):
        if op != "$eq":
            raise _fail(path, f"{op} does not apply to {kind}; use $eq, $ne, $in or $nin")
        params.append(json_path)
        return f"({jtype} = '{'null' if kind == 'null' else ('true' if value else 'false')}')"
    if kind == "number":
        params.extend([json_path, json_path, value])
        return f"({jtype} IN ('integer', 'real') AND {extract} {sql_op} ?)"
    if kind == "text":
        params.extend([json_path, json_path, value])
        return f"({jtype} = 'text' AND {extract} {sql_op} ?)"
    params.extend([json_path, json_path, value])  # date: compare instants
    return f"({jtype} = 'text' AND julianday({extract}) {sql_op} julianday(?))"


_RANGE_OPS = ("$gt", "$gte", "$lt", "$lte", "$eq")


def window_bounds(where: Any, field: str) -> tuple[float, float] | None:
    """Closed bounds ``(lo, hi)`` when ``where`` is only a numeric range on ``field`` (``$gt $gte $lt $lte $eq``
    with number operands, on one object or ANDed with ``$and``), else None.

    The range matches exactly the records whose ``field`` is a JSON number inside it, as the compiled SQL does;
    strict bounds become the next float64 inside. An empty range gives ``lo > hi``.
    """
    if not isinstance(where, dict) or len(where) != 1:
        return None
    (key, cond), = where.items()
    if key == "$and":
        if not isinstance(cond, list) or not cond:
            return None
        lo, hi = -float("inf"), float("inf")
        for part in cond:
            bounds = window_bounds(part, field)
            if bounds is None:
                return None
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        return lo, hi
    if key != field:
        return None
    if not isinstance(cond, dict):
        cond = {"$eq": cond}
    if not cond or any(op not in _RANGE_OPS for op in cond):
        return None
    lo, hi = -float("inf"), float("inf")
    for op, value in cond.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None  # not a plain number: the general path handles it (or reports the error)
        v = float(value)
        if isinstance(value, int) and int(v) != value:
            return None  # beyond float64's exact integers; SQLite compares such integers exactly
        if op in ("$gte", "$eq"):
            lo = max(lo, v)
        if op in ("$lte", "$eq"):
            hi = min(hi, v)
        if op == "$gt":
            lo = max(lo, math.nextafter(v, math.inf))
        if op == "$lt":
            hi = min(hi, math.nextafter(v, -math.inf))
    return lo, hi


def label_value(where: Any, field: str) -> str | None:
    """The string when ``where`` is only a string equality on ``field`` (``{field: "x"}`` or
    ``{field: {"$eq": "x"}}``), else None. It matches exactly the records whose ``field`` is that JSON string, as
    the compiled SQL does."""
    if not isinstance(where, dict) or len(where) != 1:
        return None
    (key, cond), = where.items()
    if key != field:
        return None
    if isinstance(cond, dict):
        if len(cond) != 1 or "$eq" not in cond:
            return None
        cond = cond["$eq"]
    return cond if isinstance(cond, str) else None


def plan_where(where: Any, window_field: str | None, label_field: str | None) -> tuple[str, Any]:
    """How a collection answers ``where``, decided once: ``("all", None)`` without a filter, ``("window", (lo,
    hi))`` when it is only a range on the window field, ``("label", value)`` when it is only a string equality on
    the label field, else ``("sql", where)`` (an allow-list from the metadata store)."""
    if where is None:
        return "all", None
    if window_field is not None and (bounds := window_bounds(where, window_field)) is not None:
        return "window", bounds
    if label_field is not None and (value := label_value(where, label_field)) is not None:
        return "label", value
    return "sql", where


class AllowCache:
    """Allow-lists of recent ``where`` filters, each valid for one version of the data (the log position it was
    evaluated at): a filter repeated across queries costs one SQLite query per write, not per search."""

    def __init__(self, entries: int = 32) -> None:
        self.entries = entries
        self._masks: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, where: Any, version: int, n_rids: int, rids_where: Any) -> np.ndarray:
        """Boolean mask over row ids ``0..n_rids-1`` of the records matching ``where`` at ``version``;
        ``rids_where(where)`` evaluates it (and reports a malformed filter)."""
        try:
            key = json.dumps(where, sort_keys=True, allow_nan=True)
        except (TypeError, ValueError):
            key = None  # not JSON: rids_where reports what is wrong
        with self._lock:
            hit = self._masks.get(key) if key is not None else None
            if hit is not None and hit[0] == version:
                self._masks.move_to_end(key)
                return hit[1]
        # a mask indexed by rid: the indexes turn it into their slot masks with one gather
        mask = np.zeros(n_rids, bool)
        mask[rids_where(where)] = True
        with self._lock:
            self._masks[key] = (version, mask)
            self._masks.move_to_end(key)
            while len(self._masks) > self.entries:
                self._masks.popitem(last=False)
        return mask

