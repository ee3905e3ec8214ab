"""Named vector fields: a record may carry, beside its main vector, further vectors in fields declared when the
collection is created, each with its own dimension, metric and index.

Three types of field:

- **dense** (``{"type": "dense", "dim": 384, "metric": "cosine", "index": "hnsw"}``): one vector per record, in
  the same two-tier index as the main vector (:class:`~simdex.store.vectors.RecordVectors`: a growing exact
  segment, folded by the optimizer into a main index of any kind that takes writes);
- **multivector** (``{"type": "multivector", "dim": 128}``): a set of vectors per record (the token vectors of a
  late-interaction model), searched by Chamfer (MaxSim) score with MUVERA candidates re-ranked exactly
  (:class:`~simdex.multivector.MultiVectorIndex`);
- **sparse** (``{"type": "sparse"}``): a ``{term: weight}`` dict per record (a learned-sparse model's output),
  searched by dot product with the block-max inverted index (:class:`~simdex.sparse.SparseIndex`).

A record may leave any field out (its value ``None``). The values are logged with the record (so a write is
durable with all its fields or not at all) and stored in the metadata store's ``field_values`` table, which the
checkpoints copy; the field indexes are side indexes (:mod:`.sides`) rebuilt from that table when the collection
opens (dense fields are searched exactly until the optimizer has built their index again).

The main vector is the field named :data:`MAIN_FIELD` ("vector").
"""

from __future__ import annotations

import json
import math
import numbers
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_dim, check_metric, check_vectors
from ..errors import DimensionMismatchError, InvalidInputError, InvalidTypeError
from .api import MAIN_FIELD
from .buildonce import IDLE_REBUILD_GROWTH, REBUILD_GROWTH
from .sides import SideIndex, remove_present
from .vectors import RecordVectors

FIELD_TYPES = ("dense", "multivector", "sparse")
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
# the MultiVectorIndex parameters a multivector field may set (its MUVERA encoder's among them)
MULTIVECTOR_PARAMS = ("storage", "k_sim", "d_proj", "r_reps", "M", "ef_construction", "seed", "candidates")
_ENCODER_PARAMS = ("k_sim", "d_proj", "r_reps")
# a filtered search on a multivector field scores the allowed records exactly when they are at most this many
EXACT_FILTER_ROWS = 4096


# ---- configuration -----------------------------------------------------------------------------------------------
def check_fields(fields: Any) -> dict[str, dict[str, Any]]:
    """The ``fields`` argument of ``create_collection`` checked and completed with its defaults."""
    if fields is None:
        return {}
    if not isinstance(fields, dict):
        raise InvalidTypeError(f"fields must be a dict {{name: spec}}; got {type(fields).__name__}")
    out = {}
    for name, spec in fields.items():
        if not isinstance(name, str) or not _FIELD_NAME.match(name) or name == MAIN_FIELD:
            raise InvalidInputError(f"invalid field name {name!r}: use 1-64 letters, digits, '_' or '-', starting "
                                    f"with a letter, and not {MAIN_FIELD!r} (the main vector's name)")
        if not isinstance(spec, dict):
            raise InvalidTypeError(f"fields[{name!r}] must be a dict (type, dim, ...); got {type(spec).__name__}")
        out[name] = _check_field_spec(name, dict(spec))
    return out


def _check_field_spec(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    from .config import MAIN_INDEXES, new_main_index
    kind = spec.pop("type", "dense")
    if kind not in FIELD_TYPES:
        raise InvalidInputError(f"fields[{name!r}]: type must be one of {FIELD_TYPES}; got {kind!r}")
    allowed = {"dense": ("dim", "metric", "index", "params"), "multivector": ("dim", "params"), "sparse": ()}[kind]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise InvalidInputError(f"fields[{name!r}]: a {kind} field takes {list(allowed) or 'no settings'}; got "
                                f"{unknown}")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise InvalidTypeError(f"fields[{name!r}]: params must be a dict; got {type(params).__name__}")
    if kind == "sparse":
        return {"type": kind}
    if "dim" not in spec:
        raise InvalidInputError(f"fields[{name!r}]: a {kind} field needs dim")
    try:
        dim = check_dim(spec["dim"])
    except (InvalidInputError, InvalidTypeError) as exc:
        raise type(exc)(f"fields[{name!r}]: {exc}") from None
    if kind == "multivector":
        bad = sorted(set(params) - set(MULTIVECTOR_PARAMS))
        if bad:
            raise InvalidInputError(f"fields[{name!r}]: unknown parameter(s) {bad} for a multivector field; it "
                                    f"takes {list(MULTIVECTOR_PARAMS)}")
        spec = {"type": kind, "dim": dim, "params": dict(params)}
        try:
            new_multivector_index(dim, spec["params"], fde_index="none")  # validates the values
        except (InvalidInputError, InvalidTypeError) as exc:
            raise type(exc)(f"fields[{name!r}]: {exc}") from None
        return spec
    metric = check_metric(spec.get("metric", "cosine"))
    index = spec.get("index", "hnsw")
    kinds = [k for k, v in MAIN_INDEXES.items() if not v.rebuilds] + ["flat"]
    if index not in kinds:
        raise InvalidInputError(f"fields[{name!r}]: index must be one of {kinds} (build-once kinds hold the main "
                                f"vector only); got {index!r}")
    takes = MAIN_INDEXES[index].params if index in MAIN_INDEXES else ()
    bad = sorted(set(params) - set(takes))
    if bad:
        raise InvalidInputError(f"fields[{name!r}]: unknown parameter(s) {bad} for a {index} index; it takes "
                                f"{list(takes) or 'none'}")
    if index in MAIN_INDEXES:
        try:
            new_main_index(dim, metric, index, params)  # validates the values
        except (InvalidInputError, InvalidTypeError) as exc:
            raise type(exc)(f"fields[{name!r}]: {exc}") from None
    return {"type": kind, "dim": dim, "metric": metric, "index": index, "params": dict(params)}


def embedder_spec(name: str, spec: dict[str, Any], model: Any) -> dict[str, Any]:
    """The spec of a field that ``model`` (an :class:`~simdex.embed.Embedder`) fills: dense, of the model's
    dimension unless ``spec`` says otherwise, which must agree."""
    spec = {"type": "dense", "dim": model.dim, **{k: v for k, v in spec.items() if k != "embedder"}}
    if spec["type"] != "dense" or spec["dim"] != model.dim:
        raise InvalidInputError(f"fields[{name!r}]: an embedder fills a dense field of its dimension ({model.dim}); "
                                f"got type {spec['type']!r}, dim {spec['dim']!r}")
    return spec


def new_multivector_index(dim: int, params: dict[str, Any], fde_index: str = "hnsw") -> Any:
    from ..multivector import MultiVectorIndex
    # MUVERA projects each vector to d_proj (32) dimensions: never more than the field has
    encoder = {"d_proj": min(32, dim), **{k: params[k] for k in _ENCODER_PARAMS if k in params}}
    rest = {k: v for k, v in params.items() if k not in _ENCODER_PARAMS and k != "candidates"}
    try:
        return MultiVectorIndex(dim, encoder=encoder, fde_index=fde_index, **rest)
    except TypeError as exc:
        raise InvalidInputError(f"bad multivector parameters: {exc}") from None


# ---- values ------------------------------------------------------------------------------------------------------
@dataclass
class FieldValues:
    """The values of one field in a batch: ``at`` the positions (in the batch) of the records that have one,
    ``data`` their values: float32 (m, dim) (dense), a list of float32 (t_i, dim) arrays (multivector) or a
    list of ``{term: weight}`` dicts with str terms (sparse)."""
    kind: str
    at: np.ndarray
    data: Any

    def blobs(self) -> list[bytes]:
        """Each value as the bytes kept in the metadata store (float32 little-endian, or JSON for sparse)."""
        if self.kind == "sparse":
            return [json.dumps(d, separators=(",", ":")).encode() for d in self.data]
        return [x.astype("<f4", copy=False).tobytes() for x in self.data]  # a dense row or a multivector set


def decode_blobs(spec: dict[str, Any], blobs: list[bytes]) -> Any:
    """Values of a field from their stored bytes (:meth:`FieldValues.blobs`)."""
    if spec["type"] == "sparse":
        return [json.loads(b) for b in blobs]
    dim = spec["dim"]
    if spec["type"] == "dense":
        if not blobs:
            return np.zeros((0, dim), np.float32)
        return np.frombuffer(b"".join(blobs), "<f4").reshape(-1, dim).astype(np.float32)
    return [np.frombuffer(b, "<f4").reshape(-1, dim).astype(np.float32) for b in blobs]


def value_as_json(spec: dict[str, Any], value: Any) -> Any:
    """A stored value as the API returns it: a list of floats, a list of lists, or a dict."""
    return value if spec["type"] == "sparse" else np.asarray(value).tolist()


def check_field_values(specs: dict[str, dict[str, Any]], fields: Any, n: int) -> dict[str, FieldValues]:
    """The ``fields`` of an upsert of ``n`` records checked against the field specs: ``{name: values}``, values a
    list of n entries (None where a record has no value) or, for a dense field, an (n, dim) array."""
    if fields is None:
        return {}
    if not isinstance(fields, dict):
        raise InvalidTypeError(f"fields must be a dict {{field: values}}; got {type(fields).__name__}")
    out = {}
    for name, values in fields.items():
        spec = specs.get(name)
        if spec is None:
            raise InvalidInputError(f"unknown field {name!r}: this collection has "
                                    f"{sorted(specs) or 'no named fields'} (the main vector goes in vectors)")
        if values is None:
            continue
        if isinstance(values, np.ndarray) and spec["type"] != "sparse":
            rows = list(values) if values.ndim >= 2 else [values]
        elif isinstance(values, (list, tuple)):
            rows = list(values)
        else:
            raise InvalidTypeError(f"fields[{name!r}] must be a list with one entry per id (None for none); got "
                                   f"{type(values).__name__}")
        if len(rows) != n:
            raise InvalidInputError(f"fields[{name!r}] has {len(rows)} entries for {n} ids")
        at = np.array([j for j, v in enumerate(rows) if v is not None], np.int64)
        present = [rows[j] for j in at.tolist()]
        if not present:
            continue
        what = f"fields[{name!r}]"
        if spec["type"] == "dense":
            try:
                data = check_vectors(present, spec["dim"], what, normalize=spec["metric"] == "cosine")
            except DimensionMismatchError as exc:
                raise DimensionMismatchError(f"field {name!r}: {exc}") from None
        elif spec["type"] == "multivector":
            data = [_check_set(v, spec["dim"], f"{what}[{j}]") for j, v in zip(at.tolist(), present)]
        else:
            data = [check_sparse(v, f"{what}[{j}]") for j, v in zip(at.tolist(), present)]
        out[name] = FieldValues(spec["type"], at, data)
    return out


def _check_set(value: Any, dim: int, what: str) -> np.ndarray:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object if not value else None)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InvalidInputError(f"{what} must be a non-empty (n, {dim}) set of vectors; got shape {arr.shape}")
    return check_vectors(arr, dim, what)


def check_sparse(value: Any, what: str) -> dict[str, float]:
    """A sparse vector ``{term: weight}`` (terms str or int >= 0, weights finite and >= 0) with str terms."""
    if not isinstance(value, dict):
        raise InvalidTypeError(f"{what} must be a dict {{term: weight}}; got {type(value).__name__}")
    out = {}
    for key, w in value.items():
        if isinstance(key, bool) or not isinstance(key, (str, numbers.Integral)) or \
                (not isinstance(key, str) and key < 0):
            raise InvalidTypeError(f"{what} has the key {key!r}; terms are str or int >= 0")
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(float(w)) or w < 0:
            raise InvalidInputError(f"{what}[{key!r}] is {w!r}; weights are finite numbers >= 0")
        out[str(key)] = float(w)
    return out


# ---- the log -----------------------------------------------------------------------------------------------------
def log_header(values: dict[str, FieldValues]) -> tuple[dict[str, Any], bytes]:
    """What a log record holds of the fields: a JSON-able header and the float32 bytes it points into."""
    header, parts = {}, []
    for name, fv in values.items():
        entry: dict[str, Any] = {"type": fv.kind, "at": fv.at.tolist()}
        if fv.kind == "sparse":
            entry["values"] = fv.data
        elif fv.kind == "dense":
            entry["dim"] = int(fv.data.shape[1])
            parts.append(fv.data.astype("<f4", copy=False).tobytes())
        else:
            entry["dim"] = int(fv.data[0].shape[1])
            entry["rows"] = [int(x.shape[0]) for x in fv.data]
            parts.extend(x.astype("<f4", copy=False).tobytes() for x in fv.data)
        header[name] = entry
    return header, b"".join(parts)


def from_log(header: dict[str, Any], payload: bytes, offset: int) -> dict[str, FieldValues]:
    """The inverse of :func:`log_header`: the fields' values, their float32 data read from ``payload`` at
    ``offset``."""
    out = {}
    for name, entry in header.items():
        at = np.asarray(entry["at"], np.int64)
        kind = entry["type"]
        if kind == "sparse":
            data: Any = [{str(k): float(v) for k, v in d.items()} for d in entry["values"]]
        elif kind == "dense":
            dim = int(entry["dim"])
            data = np.frombuffer(payload, "<f4", count=at.shape[0] * dim, offset=offset).reshape(-1, dim) \
                .astype(np.float32)
            offset += 4 * data.size
        elif kind == "multivector":
            dim = int(entry["dim"])
            data = []
            for rows in entry["rows"]:
                data.append(np.frombuffer(payload, "<f4", count=rows * dim, offset=offset).reshape(rows, dim)
                            .astype(np.float32))
                offset += 4 * rows * dim
        else:
            raise ValueError(f"unknown field type {kind!r}")
        if (len(data) if not isinstance(data, np.ndarray) else data.shape[0]) != at.shape[0]:
            raise ValueError(f"field {name!r} has {at.shape[0]} positions but another number of values")
        out[name] = FieldValues(kind, at, data)
    if offset != len(payload):
        raise ValueError(f"{len(payload) - offset} bytes after the fields' values")
    return out


# ---- the side indexes ---------------------------------------------------------------------------------------------
class DenseFieldSide(RecordVectors):
    """A dense field: the same growing + main index as the main vector."""

    def __init__(self, name: str, spec: dict[str, Any], merge_rows: int, storage_dir: str | None) -> None:
        super().__init__(spec["dim"], spec["metric"], spec["index"], spec["params"], merge_rows, storage_dir)
        self.vector_field = name


class MultiVectorSide(SideIndex):
    """A multivector field: new sets in an exactly scored segment, folded by the optimizer into a
    :class:`~simdex.multivector.MultiVectorIndex` with a MUVERA (FDE) graph, which is built again from every live
    set when the new ones are a tenth of it (or the writes pause), so it never holds many removed sets."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        super().__init__()
        self.vector_field, self.dim, self.params = name, spec["dim"], spec["params"]
        self.main: Any = None
        self.growing = new_multivector_index(self.dim, self.params, fde_index="none")
        self.last_write = time.monotonic()

    def add(self, rids, sets, metadatas, documents) -> None:
        self.growing.add(sets, rids)
        self.last_write = time.monotonic()

    def remove(self, rids) -> None:
        remove_present(self.growing, rids)
        if self.main is not None:
            remove_present(self.main, rids)
        self.record("remove", rids)

    def __len__(self) -> int:
        return len(self.growing) + (len(self.main) if self.main is not None else 0)

    def needs_rebuild(self) -> bool:
        # a build reads every set: wait for the new ones to be a share of the index, as a build-once main index
        # does (buildonce.REBUILD_GROWTH; a smaller share once the writes pause)
        n, main_n = len(self.growing), len(self.main) if self.main is not None else 0
        removed = self.main is not None and self.main._idmap.num_slots - main_n > 0.2 * max(main_n, 1)
        idle = time.monotonic() - self.last_write > 0.5
        return removed or (n > 0 and (n >= max(256, REBUILD_GROWTH * main_n)
                                      or (idle and n >= IDLE_REBUILD_GROWTH * main_n)))

    def snapshot(self) -> Any:
        moved = self.growing.ids
        if not moved.size and not self.needs_rebuild():
            return None
        base = self.main
        kept = base.ids if base is not None else np.zeros(0, np.int64)
        return moved, self.growing.get_documents(moved) if moved.size else [], base, kept

    def build(self, snap, threads) -> Any:
        moved, sets, base, kept = snap
        new = new_multivector_index(self.dim, self.params)
        if kept.size:
            new.add(base.get_documents(kept), kept, threads=threads)
        if moved.size:
            new.add(sets, moved, threads=threads)
        return new, moved

    def replay(self, built, kind, args) -> None:
        remove_present(built[0], args)  # new sets went to the growing segment; only removals carry over

    def install(self, built) -> None:
        new, moved = built
        remove_present(self.growing, moved)
        self.main = new if len(new) else None

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None, breadth: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(rids, Chamfer scores) of the k best records for the query set ``q`` (m, dim), best first.
        ``breadth``: MUVERA candidates re-ranked exactly (default the field's ``candidates`` parameter, or 100)."""
        runs = []
        for index, method in ((self.main, "muvera"), (self.growing, "exact")):
            if index is None or len(index) == 0:
                continue
            if allowed is not None:
                ids = index.ids
                ids = ids[ids < allowed.shape[0]]
                ids = ids[allowed[ids]]
                if ids.size <= EXACT_FILTER_ROWS or method == "exact":
                    if ids.size:
                        runs.append((ids, index.score([q], ids)[0]))
                    continue
                kk = min(len(index), max(10 * k, 100))
            else:
                kk = min(len(index), k)
            wide = breadth if breadth is not None else self.params.get("candidates", 100)
            options = {"candidates": max(kk, wide)} if method == "muvera" else {}
            scores, ids = index.search([q], kk, method=method, threads=1, **options)
            keep = ids[0] >= 0
            if allowed is not None:
                keep &= allowed[np.minimum(ids[0], allowed.shape[0] - 1)] & (ids[0] < allowed.shape[0])
            runs.append((ids[0][keep], scores[0][keep]))
        return top_run(runs, k)

    def stats(self) -> dict[str, Any]:
        return {"count": len(self), "indexed": len(self.main) if self.main is not None else 0,
                "unindexed": len(self.growing)}


class SparseSide(SideIndex):
    """A sparse field: a dot-product :class:`~simdex.sparse.SparseIndex` (its segments merge as they grow)."""

    def __init__(self, name: str) -> None:
        from ..sparse import SparseIndex
        super().__init__()
        self.vector_field = name
        self.index = SparseIndex("dot", analyzer=None)

    def add(self, rids, values, metadatas, documents) -> None:
        self.index.add(values, rids)

    def remove(self, rids) -> None:
        remove_present(self.index, rids)

    def __len__(self) -> int:
        return len(self.index)

    def search(self, q: dict[str, float], k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(rids, dot-product scores) of the k best records for the sparse query ``q``, best first."""
        if len(self.index) == 0 or not q or (allowed is not None and not allowed.any()):
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        scores, rids = self.index.search([q], min(k, len(self.index)), filter=allowed, threads=1)
        keep = (rids[0] >= 0) & (scores[0] > 0)
        return rids[0][keep], scores[0][keep].astype(np.float64)

    def stats(self) -> dict[str, Any]:
        return {"count": len(self.index)}


def top_run(runs: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (largest score) of several (rids, scores) runs over disjoint records, best first."""
    from ..sparse.fusion import best_first
    if not runs:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    return best_first(np.concatenate([r[0] for r in runs]).astype(np.int64),
                      np.concatenate([r[1] for r in runs]).astype(np.float64), k)


def new_field_side(name: str, spec: dict[str, Any], merge_rows: int, storage_dir: str | None) -> SideIndex:
    if spec["type"] == "dense":
        return DenseFieldSide(name, spec, merge_rows, storage_dir)
    if spec["type"] == "multivector":
        return MultiVectorSide(name, spec)
    return SparseSide(name)


def check_query(name: str, spec: dict[str, Any], query: Any) -> Any:
    """One query for a field: a (1, dim) float32 array (dense), an (m, dim) set (multivector) or a sparse dict."""
    what = f"the query for field {name!r}"
    if spec["type"] == "dense":
        arr = np.asarray(query) if not isinstance(query, np.ndarray) else query
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        q = check_vectors(arr, spec["dim"], what, normalize=spec["metric"] == "cosine")
        if q.shape[0] != 1:
            raise InvalidInputError(f"{what} must be one vector; got {q.shape[0]}")
        return q
    if spec["type"] == "multivector":
        return _check_set(query, spec["dim"], what)
    return check_sparse(query, what)

