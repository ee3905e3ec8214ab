"""A flat collection searched on a GPU: ``create_collection(..., index="flat", device="cuda")``.

The collection keeps its rows as always (the exact CPU index, its log and checkpoints); a
:class:`~simdex.gpu.GPUFlatIndex` on the device mirrors them and answers its plain searches (no ``where``). The
mirror is built from the rows on the first search after the collection opens, and then follows every write under
the collection's write lock. Where it cannot run (no torch, no CUDA device, the device out of memory), searches go
to the CPU index as before: a write never fails because of the mirror. ``stats()["device"]`` says where searches
run and why.
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


def check_device(device: Any) -> str:
    """``device`` of a flat collection: "cpu" (the default: no mirror), "cuda", "cuda:N" or "auto" (CUDA when torch
    sees one, else the CPU, without a warning)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise InvalidInputError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {device!r}")
    return device


class DeviceMirror:
    """The collection's rows on a torch device (:class:`~simdex.gpu.GPUFlatIndex`), or why there are none."""

    def __init__(self, dim: int, metric: str, requested: str) -> None:
        self.dim, self.metric, self.requested = dim, metric, requested
        self.index: Any = None  # the GPUFlatIndex, once built
        self.note: str | None = None  # why searches run on the CPU
        self._given_up = False  # the device failed (or is missing): the CPU until the collection is reopened
        self._lock = threading.Lock()

    def ensure(self, rows: Any) -> Any:
        """The mirror, built from ``rows()`` (ids, vectors) the first time; None where searches stay on the CPU.
        Callers hold the collection's read side, so no write changes the rows meanwhile."""
        if self.index is not None or self._given_up:
            return self.index
        with self._lock:
            if self.index is None and not self._given_up:
                self._build(rows)
        return self.index

    def _build(self, rows: Any) -> None:
        try:
            from ..gpu.flat import GPUFlatIndex, _torch, resolve_device
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
            index = GPUFlatIndex(self.dim, self.metric, device=str(device))
            ids, vectors = rows()
            if ids.shape[0]:
                index.add(vectors, ids)
        except Exception as exc:  # noqa: BLE001 - torch missing, no CUDA, out of device memory: the CPU answers
            self._give_up(str(exc), warn=True)
            return
        self.index = index

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.index is not None:
            try:
                self.index.add(vectors, ids)
            except Exception as exc:  # noqa: BLE001 - the write is durable already; the mirror is dropped
                self._give_up(f"adding {ids.shape[0]:,} rows failed ({exc})", warn=True)

    def remove(self, ids: np.ndarray) -> None:
        if self.index is not None and ids.size:
            try:
                self.index.remove(ids)
            except Exception as exc:  # noqa: BLE001
                self._give_up(f"removing {ids.size:,} rows failed ({exc})", warn=True)

    def reset(self) -> None:
        """The rows were replaced (a checkpoint loaded): the mirror is built again on the next search."""
        self.index = None

    def _give_up(self, why: str, warn: bool) -> None:
        self.index, self._given_up = None, True
        self.note = f"searching on the CPU: {why}"
        if warn:
            log.warning("flat collection with device=%r: %s", self.requested, self.note)

    def stats(self) -> dict[str, Any]:
        index = self.index
        out: dict[str, Any] = {"requested": self.requested,
                               "searches_on": str(index.device) if index is not None else "cpu",
                               "index": "GPUFlatIndex" if index is not None else "FlatIndex"}
        if index is not None:
            out["device_bytes"] = index.nbytes
        elif self.note is None:
            out["note"] = "the mirror is built on the first search"
        if self.note is not None:
            out["note"] = self.note
        return out
