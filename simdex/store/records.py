"""Validation of collection records and their encoding as write-ahead-log payloads (JSON + raw float32, no pickle).

A record is ``(id: str, vector, metadata: JSON object, document: str | None)``. Inside a collection every
version of a record gets a fresh int64 row id (``rid``); the vector indexes are keyed by rid, so a rid's vector
never changes and an upsert is "tombstone the old rid, add the new one".
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validate import check_vectors
from ..errors import CorruptFileError, DuplicateIdError, InvalidInputError, InvalidTypeError
from .fields import FieldValues, from_log, log_header

MAX_ID_LENGTH = 512
MAX_METADATA_BYTES = 64 * 1024
MAX_DOCUMENT_BYTES = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
_LEN = struct.Struct("<I")


def check_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(f"invalid collection name {name!r}: use 1-64 letters, digits, '_' or '-', starting "
                                f"with a letter or digit")
    return name


def check_record_ids(ids: Any, name: str = "ids") -> list[str]:
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, (list, tuple)):
        raise InvalidTypeError(f"{name} must be a list of strings; got {type(ids).__name__}")
    out = []
    for i, value in enumerate(ids):
        if not isinstance(value, str):
            raise InvalidTypeError(f"{name}[{i}] must be a string; got {type(value).__name__}")
        if not value or len(value) > MAX_ID_LENGTH:
            raise InvalidInputError(f"{name}[{i}] must have 1 to {MAX_ID_LENGTH} characters")
        out.append(value)
    if len(set(out)) != len(out):
        seen = set()
        dup = next(v for v in out if v in seen or seen.add(v))
        raise DuplicateIdError(f"{name} contain {dup!r} more than once")
    return out


def _check_json_value(value: Any, path: str) -> None:
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{path} is {value}; metadata numbers must be finite")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json_value(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidTypeError(f"{path} has a non-string key {k!r}")
            _check_json_value(v, f"{path}.{k}")
        return
    raise InvalidTypeError(f"{path} has a value of type {type(value).__name__}, which JSON cannot hold")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
try:  # one C encoder for all records: json.dumps would build a new one per call, which dominates small objects
    from json.encoder import c_make_encoder as _c_make_encoder
    from json.encoder import encode_basestring as _encode_str  # the C version where CPython has it

    def _refuse(value: Any) -> Any:
        raise TypeError(f"{type(value).__name__} is not JSON")

    _C_ENCODE = _c_make_encoder(None, _refuse, _encode_str, None, ":", ",", False, False, False) \
        if _c_make_encoder is not None else None
except ImportError:  # pragma: no cover - CPython always has it
    _C_ENCODE = None


def _to_json(value: Any) -> str:
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


def encode_metadata(metadata: Any, index: int) -> str:
    """One record's metadata as compact JSON text, or an error that names the bad value by its path."""
    if metadata is None:
        return "{}"
    if type(metadata) is not dict:
        if not isinstance(metadata, dict):
            raise InvalidTypeError(f"metadatas[{index}] must be a JSON object (dict); got {type(metadata).__name__}")
        metadata = dict(metadata)
    try:
        # the C encoder refuses NaN/inf and non-JSON types; it would turn non-string keys into strings, which
        # the check below refuses so that what is read back equals what was written
        text = _to_json(metadata)
        clean = all(type(k) is str for k in metadata)
    except RecursionError:
        raise InvalidInputError(f"metadatas[{index}] is nested too deeply (or refers to itself)") from None
    except (TypeError, ValueError):
        clean = False
    if not clean:
        _check_json_value(metadata, f"metadatas[{index}]")  # raises, naming the path of the bad value
        text = _ENCODER.encode(metadata)
    if len(text) > MAX_METADATA_BYTES // 4 and len(text.encode()) > MAX_METADATA_BYTES:
        raise InvalidInputError(f"metadatas[{index}] is larger than {MAX_METADATA_BYTES} bytes as JSON")
    return text


def encode_metadatas(metadatas: list[Any] | tuple[Any, ...]) -> list[str]:
    """:func:`encode_metadata` of each entry; plain dicts with string keys take one pass without per-record calls
    (this is most of the cost of an upsert of small records)."""
    if _C_ENCODE is not None and all(type(m) is dict for m in metadatas) \
            and all(type(k) is str for m in metadatas for k in m):
        try:
            texts = ["".join(_C_ENCODE(m, 0)) for m in metadatas]
        except (TypeError, ValueError, RecursionError):
            pass  # the per-record path below names the bad value
        else:
            if not texts or max(map(len, texts)) <= MAX_METADATA_BYTES // 4:
                return texts
    return [encode_metadata(m, i) for i, m in enumerate(metadatas)]


@dataclass
class UpsertBatch:
    ids: list[str]
    vectors: np.ndarray  # float32 (n, dim), unit length for cosine
    metadatas: list[str]  # JSON text
    documents: list[str | None]
    fields: dict[str, FieldValues] = field(default_factory=dict)  # the named fields' values (.fields)


def check_upsert(ids: Any, vectors: Any, metadatas: Any, documents: Any, dim: int, normalize: bool,
                 max_batch: int | None = None) -> UpsertBatch:
    ids = check_record_ids(ids)
    if not ids:
        raise InvalidInputError("ids is empty")
    if max_batch is not None and len(ids) > max_batch:
        raise InvalidInputError(f"a batch holds at most {max_batch} records; got {len(ids)}")
    x = check_vectors(vectors, dim, "vectors", normalize=normalize)
    if x.shape[0] != len(ids):
        raise InvalidInputError(f"got {len(ids)} ids but {x.shape[0]} vectors")
    if metadatas is None:
        metas = ["{}"] * len(ids)
    else:
        if not isinstance(metadatas, (list, tuple)) or len(metadatas) != len(ids):
            raise InvalidInputError(f"metadatas must be a list with one entry per id ({len(ids)})")
        metas = encode_metadatas(metadatas)
    if documents is None:
        docs: list[str | None] = [None] * len(ids)
    else:
        if not isinstance(documents, (list, tuple)) or len(documents) != len(ids):
            raise InvalidInputError(f"documents must be a list with one entry per id ({len(ids)})")
        if all(type(d) is str for d in documents) and max(map(len, documents)) <= MAX_DOCUMENT_BYTES // 4:
            return UpsertBatch(ids, x, metas, list(documents))  # the common case, checked in C-speed passes
        docs = []
        for i, d in enumerate(documents):
            if d is not None and not isinstance(d, str):
                raise InvalidTypeError(f"documents[{i}] must be a string or null; got {type(d).__name__}")
            if d is not None and len(d) > MAX_DOCUMENT_BYTES // 4 and len(d.encode()) > MAX_DOCUMENT_BYTES:
                raise InvalidInputError(f"documents[{i}] is larger than {MAX_DOCUMENT_BYTES} bytes")
            docs.append(d)
    return UpsertBatch(ids, x, metas, docs)


# ---- log payloads ------------------------------------------------------------------------------------------------
UPSERT = b"U"
DELETE = b"D"
FIELD_VALUES = b"F"  # values of named vector fields set on stored records (a field filled in the background)


def encode_upsert(batch: UpsertBatch, rids: np.ndarray, old_rids: np.ndarray) -> bytes:
    # the metadata texts are already compact JSON: they go in as JSON values (not re-escaped as strings)
    head: dict[str, Any] = {"ids": batch.ids, "rids": rids.tolist(), "old": old_rids.tolist(),
                            "documents": batch.documents, "shape": list(batch.vectors.shape)}
    tail = b""
    if batch.fields:  # the named fields' values after the main vectors (.fields.log_header)
        head["fields"], tail = log_header(batch.fields)
    header = (json.dumps(head, separators=(",", ":"))[:-1] + ',"metadata_values":[' + ",".join(batch.metadatas)
              + "]}").encode()
    return UPSERT + _LEN.pack(len(header)) + header + batch.vectors.astype("<f4", copy=False).tobytes() + tail


def encode_delete(ids: list[str], rids: np.ndarray) -> bytes:
    header = json.dumps({"ids": ids, "rids": rids.tolist()}, separators=(",", ":")).encode()
    return DELETE + _LEN.pack(len(header)) + header


def encode_field_values(rids: np.ndarray, values: dict[str, FieldValues]) -> bytes:
    """Named fields' values for the stored records ``rids`` (``FieldValues.at`` indexes ``rids``)."""
    head, tail = log_header(values)
    header = json.dumps({"rids": rids.tolist(), "fields": head}, separators=(",", ":")).encode()
    return FIELD_VALUES + _LEN.pack(len(header)) + header + tail


@dataclass
class LogOp:
    kind: bytes
    ids: list[str]
    rids: np.ndarray
    old_rids: np.ndarray | None = None
    vectors: np.ndarray | None = None
    metadatas: list[str] | None = None
    documents: list[str | None] | None = None
    fields: dict[str, FieldValues] | None = None


def decode(payload: bytes, lsn: int) -> LogOp:
    """Parse a payload written by :func:`encode_upsert` / :func:`encode_delete` (its CRC already matched)."""
    try:
        kind = payload[:1]
        (n,) = _LEN.unpack_from(payload, 1)
        header = json.loads(payload[5:5 + n])
        rids = np.asarray(header["rids"], np.int64)
        if kind == DELETE:
            return LogOp(kind, header["ids"], rids)
        if kind == FIELD_VALUES:
            return LogOp(kind, [], rids, fields=from_log(header["fields"], payload, 5 + n))
        if kind != UPSERT:
            raise ValueError(f"unknown record kind {kind!r}")
        shape = tuple(header["shape"])
        count = int(np.prod(shape))
        vectors = np.frombuffer(payload, "<f4", count=count, offset=5 + n).reshape(shape).astype(np.float32)
        fields = from_log(header["fields"], payload, 5 + n + 4 * count) if "fields" in header else None
        if fields is None and len(payload) != 5 + n + 4 * count:
            raise ValueError(f"{len(payload) - 5 - n - 4 * count} bytes after the vectors")
        if "metadata_values" in header:
            metadatas = [_to_json(m) for m in header["metadata_values"]]  # the same text encode_metadata made
        else:  # records written before metadata went in as values
            metadatas = header["metadatas"]
        return LogOp(kind, header["ids"], rids, np.asarray(header["old"], np.int64), vectors,
                     metadatas, header["documents"], fields)
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptFileError(f"log record {lsn} is unreadable ({exc})") from None

def hit_record(id_: str, meta: str | dict[str, Any], doc: str | None, include: tuple[str, ...],
               vector: np.ndarray | None, value: float | None = None, key: str = "distance",
               fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """One record as the API returns it: ``id``, ``value`` under ``key`` (a hit's distance or score) and the
    ``include`` fields. ``meta``: the metadata's JSON text, or already decoded (:func:`decode_metadatas`)."""
    out: dict[str, Any] = {"id": id_}
    if value is not None:
        out[key] = value
    if "metadatas" in include:
        out["metadata"] = json.loads(meta) if isinstance(meta, str) else meta
    if "documents" in include:
        out["document"] = doc
    if vector is not None:
        out["embedding"] = vector.tolist()
    if fields is not None:
        out["fields"] = fields
    return out


def decode_metadatas(texts: list[str]) -> list[dict[str, Any]]:
    """Many records' metadata JSON (each a JSON object, as stored) decoded by one parser call: a search result's
    ten or a page of records cost one call instead of one each."""
    return json.loads("[" + ",".join(texts) + "]") if texts else []
