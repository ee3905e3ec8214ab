"""A collection searched on a GPU: ``create_collection(..., index="flat" | "ivf-pq", device="cuda")``.

The collection keeps its rows as always (its CPU index, log and checkpoints); an index on the device mirrors them
and answers its plain searches (no ``where``; for an IVF mirror, no ``target_recall``): a
:class:`~simdex.gpu.GPUFlatIndex` for a flat collection (exact, the same hits), a :class:`~simdex.gpu.GPUIVFIndex`
of PQ lists for an ``ivf-pq`` one (its own lists and codebooks, trained on the device by k-means with the
collection's number of lists, PQ codes and re-ranking; ``ef`` is the lists it probes). The mirror is built from the
rows on the first search after the collection opens (an IVF mirror once the collection has the rows to train on, and
again, retrained, when the collection has grown four times past them), and then follows every write under the
collection's write lock. Where it cannot run (no torch, no CUDA device, the device out of memory), searches go to
the CPU index as before: a write never fails because of the mirror. ``stats()["device"]`` says where searches run
and why.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import numpy as np

from ..errors import InvalidInputError

log = logging.getLogger(__name__)

# the torch device types whose mirror answers searches; tests add "cpu", to run the same code on torch's CPU device
MIRROR_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
_DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


_GPU_MAX_RERANK = 128  # GPUIVFIndex re-ranks at most this many candidates (its kernel's k-selection)
_TRAIN_PER_LIST = 256  # an IVF mirror trains its lists on this many rows per list (and per PQ centroid)
_ADD_ROWS = 65_536  # an IVF mirror reads and adds the collection's rows this many at a time


def mirror_pq(dim: int, codec: Any) -> int:
    """The sub-quantizers of an ``ivf-pq`` collection's device mirror: its ``codec`` ("pq" for dim / 8, or
    "pq<m>"), which must divide ``dim`` (the GPU's PQ splits the dimensions evenly)."""
    match = re.fullmatch(r"pq(\d*)", codec) if isinstance(codec, str) else None
    m = (int(match.group(1)) if match.group(1) else max(1, dim // 8)) if match else 0
    if not m or dim % m:
        raise InvalidInputError(f"device: an ivf-pq collection searched on a GPU takes codec 'pq' or 'pq<m>' with m "
                                f"dividing its dimension {dim}; got codec {codec!r}")
    return m


def check_device(device: Any) -> str:
    """``device`` of a flat or ivf-pq collection: "cpu" (the default: no mirror), "cuda", "cuda:N" or "auto" (CUDA
    when torch sees one, else the CPU, without a warning)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise InvalidInputError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {device!r}")
    return device


class DeviceMirror:
    """The collection's rows on a torch device (:class:`~simdex.gpu.GPUFlatIndex`, or :class:`~simdex.gpu.GPUIVFIndex`
    for an ``ivf-pq`` collection), or why there are none."""

    def __init__(self, dim: int, metric: str, requested: str, kind: str = "flat",
                 params: dict[str, Any] | None = None) -> None:
        self.dim, self.metric, self.requested, self.kind = dim, metric, requested, kind
        self.params = params or {}
        self.index: Any = None  # the GPU index, once built
        self.note: str | None = None  # why searches run on the CPU
        self._given_up = False  # the device failed (or is missing): the CPU until the collection is reopened
        self._built_rows = 0  # rows the IVF mirror was trained with
        self._lock = threading.Lock()

    def ensure(self, row_ids: Any, vectors_of: Any) -> Any:
        """The mirror, built from the rows ``row_ids()`` (int64) with their vectors ``vectors_of(rids)`` the first
        time (an IVF mirror: once there are enough rows to train on, and again when the collection has grown four
        times past them); None where searches stay on the CPU. Callers hold the collection's read side, so no
        write changes the rows meanwhile."""
        index = self.index
        if self._given_up or (index is not None and not self._stale(index)):
            return index
        with self._lock:
            if not self._given_up and (self.index is None or self._stale(self.index)):
                self._build(row_ids, vectors_of)
        return self.index

    def _stale(self, index: Any) -> bool:
        return self.kind != "flat" and len(index) > 4 * self._built_rows

    def search(self, index: Any, q: np.ndarray, k: int, ef: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rids) of ``index``, the mirror :meth:`ensure` gave (another search may be replacing it),
        ``ef`` the lists an IVF mirror probes."""
        k = min(k, len(index))
        return index.search(q, k) if self.kind == "flat" or ef is None else index.search(q, k, nprobe=ef)

    def _new_index(self, device: Any, n: int) -> Any:
        """An empty GPU index for ``n`` rows; None (and a note) for an IVF mirror with too few rows to train."""
        from ..gpu import GPUFlatIndex, GPUIVFIndex
        if self.kind == "flat":
            return GPUFlatIndex(self.dim, self.metric, device=str(device))
        from .config import sized_params
        sized = sized_params(self.kind, self.params, n)
        needed = max(sized["nlist"], 256)  # (k-means needs a row per list; PQ, 256 rows for its centroids)
        if n < needed:
            self.note = f"searching on the CPU until the collection has {needed:,} rows to train the device's lists"
            return None
        m = mirror_pq(self.dim, sized["codec"])
        return GPUIVFIndex(self.dim, self.metric, nlist=sized["nlist"], codec=f"pq{m}", nprobe=sized["nprobe"],
                           rerank=min(sized["rerank"], _GPU_MAX_RERANK), seed=sized.get("seed", 0),
                           device=str(device))

    def _build(self, row_ids: Any, vectors_of: Any) -> None:
        try:
            from ..gpu.flat import _torch, resolve_device
            try:
                torch = _torch()
            except InvalidInputError:
                self._give_up("torch is not installed (pip install 'simdex[gpu]')", warn=self.requested != "auto")
                return
            try:
                device, _ = resolve_device(self.requested)
            except InvalidInputError as exc:
                why = str(exc) if torch.cuda.is_available() else \
                    f"torch sees no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda})"
                self._give_up(why, warn=True)
                return
            if device.type not in MIRROR_DEVICE_TYPES:
                self._give_up("torch sees no CUDA device", warn=self.requested != "auto")
                return
            ids = row_ids()
            index = self._new_index(device, ids.shape[0])
            if index is None:
                return
            if self.kind != "flat":  # lists and codebooks trained on a sample of every row, not the first ones
                rng = np.random.default_rng(self.params.get("seed", 0))
                sample = rng.choice(ids.shape[0], min(ids.shape[0], _TRAIN_PER_LIST * max(index.nlist, 256)),
                                    replace=False)
                index.train(vectors_of(ids[np.sort(sample)]))
            for start in range(0, ids.shape[0], _ADD_ROWS):
                part = ids[start:start + _ADD_ROWS]
                index.add(vectors_of(part), part)
        except Exception as exc:  # noqa: BLE001 - torch missing, no CUDA, out of device memory: the CPU answers
            self._give_up(str(exc), warn=True)
            return
        self.index, self._built_rows, self.note = index, ids.shape[0], None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.index is not None:
            try:
                self.index.add(vectors, ids)
            except Exception as exc:  # noqa: BLE001 - the write is durable already; the mirror is dropped
                self._give_up(f"adding {ids.shape[0]:,} rows failed ({exc})", warn=True)

    def remove(self, ids: np.ndarray) -> None:
        if self.index is not None and ids.size:
            try:
                self.index.remove(ids)  # (every row of the collection is in the mirror)
            except Exception as exc:  # noqa: BLE001
                self._give_up(f"removing {ids.size:,} rows failed ({exc})", warn=True)

    def reset(self) -> None:
        """The rows were replaced (a checkpoint loaded): the mirror is built again on the next search."""
        self.index = None

    def _give_up(self, why: str, warn: bool) -> None:
        self.index, self._given_up = None, True
        self.note = f"searching on the CPU: {why}"
        if warn:
            log.warning("%s collection with device=%r: %s", self.kind, self.requested, self.note)

    def stats(self) -> dict[str, Any]:
        index = self.index
        out: dict[str, Any] = {"requested": self.requested,
                               "searches_on": str(index.device) if index is not None else "cpu",
                               "index": type(index).__name__ if index is not None else
                               ("FlatIndex" if self.kind == "flat" else "IVFIndex")}
        if index is not None:
            out["device_bytes"] = index.nbytes
        elif self.note is None:
            out["note"] = "the mirror is built on the first search"
        if self.note is not None:
            out["note"] = self.note
        return out
