"""Exact k-NN on a GPU (or torch's CPU device): :class:`GPUFlatIndex`."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import fileformat
from ..errors import (CorruptFileError, DeviceMemoryError, DimensionMismatchError, InvalidInputError, InvalidTypeError,
                      UnknownIdError)
from .._validate import check_dim, check_ids, check_metric, check_positive_int
from ._kernels import NO_KEY, pow2_block, scan_topk_kernel, unpack_keys

DTYPES = ("float32", "float16", "bfloat16")
STORAGES = ("device", "host")
# the fused kernel's k-selection keeps k keys per query in registers: beyond this k the torch path selects
MAX_KERNEL_K = 128
_TILE_BYTES = 256 << 20  # of float32 distances per tile on the torch path
# storage="host": the stored vectors copied to the device per tile of this many bytes, into two buffers (one
# copied while the other is searched)
_STREAM_TILE_BYTES = 128 << 20
_ADD_CHUNK_ROWS_BYTES = 64 << 20  # an add checks and stores its float32 rows on the device this many at a time


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InvalidInputError("simdex.gpu needs torch (and triton for the fused kernel on CUDA): "
                                "pip install 'simdex[gpu]'") from None
    return torch


def resolve_device(device: str) -> tuple[Any, str]:
    """(torch device, how it was chosen) for ``device``: "auto" (CUDA when torch sees one, else the CPU, said in
    the second item), "cuda", "cuda:N" or "cpu". "cuda" without a usable GPU raises InvalidInputError."""
    torch = _torch()
    if not isinstance(device, str):
        raise InvalidTypeError(f"device must be a str ('auto', 'cuda', 'cuda:N' or 'cpu'); got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), "auto: cuda"
        return torch.device("cpu"), "auto: cpu (torch sees no CUDA device)"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InvalidInputError(f"unknown device {device!r}; use 'auto', 'cuda', 'cuda:N' or 'cpu'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r}: torch sees no CUDA device (torch {torch.__version__}, built "
                                f"with CUDA {torch.version.cuda}); use device='auto' to fall back to the CPU")
    if dev.type not in ("cuda", "cpu"):
        raise InvalidInputError(f"device {device!r}: simdex.gpu runs on 'cuda' or 'cpu'")
    if dev.type == "cuda" and dev.index is None:  # "cuda" is the current device: named by its index, as tensors are
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev, device


class GPUFlatIndex:
    """Exact k-NN with the vectors in a torch device's memory.

    Parameters
    ----------
    dim : int
    metric : {"l2", "ip", "cosine"}
        Distances follow :mod:`simdex.metrics` (squared L2; ``1 - <q, x>``; ``1 - cos``).
    dtype : {"float32", "float16", "bfloat16"}
        Storage of the vectors (distances are accumulated in float32 whatever it is).
    device : str, default "auto"
        "cuda" (or "cuda:N"), "cpu", or "auto": CUDA when torch sees one, else the CPU (``info()`` says which).
    kernel : {"auto", "triton", "torch"}
        How a search runs: "triton" is the fused scan-and-select kernel (:mod:`simdex.gpu._kernels`; on the CPU
        only under ``TRITON_INTERPRET=1``), "torch" a tiled matrix product and ``torch.topk`` per tile; "auto"
        picks the kernel on CUDA for k <= 128, torch otherwise.
    storage : {"device", "host"}
        Where the vectors live. "host": in host memory (page-locked when the device is CUDA), for an index larger
        than the device's memory; a search copies them to the device a tile of 128 MiB at a time, the next tile
        copied while the last is searched, so it runs at the host-to-device copy rate (PCIe or NVLink) rather
        than the device memory's. Norms and ids stay on the device (12 bytes a row).

    ``add`` and ``search`` take numpy arrays or torch tensors. A tensor already on the index's device is used
    where it is (no copy through the host); a tensor on another device is refused, naming both. Search returns
    ``(distances float32 (nq, k), ids int64 (nq, k))`` ascending, as numpy arrays or, with ``output="torch"``,
    tensors on the index's device.
    """

    def __init__(self, dim: int, metric: str = "l2", *, dtype: str = "float32", device: str = "auto",
                 kernel: str = "auto", storage: str = "device") -> None:
        torch = _torch()
        self.dim = check_dim(dim)
        self.metric = check_metric(metric)
        if dtype not in DTYPES:
            raise InvalidInputError(f"dtype must be one of {DTYPES}; got {dtype!r}")
        if kernel not in ("auto", "triton", "torch"):
            raise InvalidInputError(f"kernel must be 'auto', 'triton' or 'torch'; got {kernel!r}")
        if storage not in STORAGES:
            raise InvalidInputError(f"storage must be one of {STORAGES}; got {storage!r}")
        self.dtype = dtype
        self.kernel = kernel
        self.storage = storage
        self.device, self.device_choice = resolve_device(device)
        self._torch_dtype = getattr(torch, dtype)
        self._x = self._vector_rows(0)
        self._sqnorms = torch.empty(0, dtype=torch.float32, device=self.device)
        self._ids = torch.empty(0, dtype=torch.int64, device=self.device)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def ntotal(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes of device memory held: vectors (with spare capacity; none with ``storage="host"``), norms and
        ids."""
        tensors = (self._sqnorms, self._ids) if self.storage == "host" else (self._x, self._sqnorms, self._ids)
        return int(sum(t.element_size() * t.numel() for t in tensors))

    @property
    def host_nbytes(self) -> int:
        """Bytes of host memory the vectors take with ``storage="host"`` (spare capacity included), else 0."""
        return int(self._x.element_size() * self._x.numel()) if self.storage == "host" else 0

    def info(self) -> dict[str, Any]:
        return {"kind": "GPUFlatIndex", "dim": self.dim, "metric": self.metric, "dtype": self.dtype,
                "count": self._n, "device": str(self.device), "device_choice": self.device_choice,
                "kernel": self.kernel, "storage": self.storage, "nbytes": self.nbytes,
                "host_nbytes": self.host_nbytes}

    def _vector_rows(self, rows: int) -> Any:
        """An empty (rows, dim) tensor of the storage dtype where the vectors live: on the device, or in host
        memory, page-locked when the device is CUDA (only such memory copies to the device asynchronously)."""
        torch = _torch()
        if self.storage == "host":
            return torch.empty((rows, self.dim), dtype=self._torch_dtype, pin_memory=self.device.type == "cuda")
        return torch.empty((rows, self.dim), dtype=self._torch_dtype, device=self.device)

    def _as_stored_vectors(self, t: Any) -> Any:
        """``t`` (vectors of the storage dtype) where the vectors live (:meth:`_vector_rows`)."""
        if self.storage != "host":
            return t.to(self.device)
        t = t.cpu()
        return t.pin_memory() if self.device.type == "cuda" and not t.is_pinned() else t

    # ---- input ---------------------------------------------------------------------------------------------------
    def _rows(self, x: Any, name: str, first_row: int = 0) -> Any:
        """``x`` (n, dim) as a float tensor on the index's device, checked: finite, of this dimension; numpy
        arrays are copied to the device, tensors elsewhere are refused. Errors count rows from ``first_row``."""
        torch = _torch()
        if isinstance(x, torch.Tensor):
            if x.device != self.device:
                raise InvalidInputError(f"{name} are on device {x.device}, the index on {self.device}: move them "
                                        f"(tensor.to({str(self.device)!r})) or give a numpy array")
            if not (x.is_floating_point()):
                raise InvalidTypeError(f"{name} must hold floats (float16, bfloat16, float32 or float64); got "
                                       f"{x.dtype}")
            t = x
        else:
            arr = np.asarray(x)
            if arr.dtype.kind not in "fiu":
                raise InvalidTypeError(f"{name} must be numeric; got dtype {arr.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(arr, np.float32)).to(self.device)
        if t.ndim == 1:
            t = t.reshape(1, -1)
        if t.ndim != 2:
            raise InvalidInputError(f"{name} must be 2-D (n, {self.dim}); got shape {tuple(t.shape)}")
        if t.shape[1] != self.dim:
            raise DimensionMismatchError(f"{name} have dimension {t.shape[1]}, the index {self.dim}")
        bad = ~torch.isfinite(t).all(dim=1)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0, 0])
            raise InvalidInputError(f"{name} hold NaN or inf (row {first_row + row})")
        t = t.to(torch.float32)
        if self.metric == "cosine":
            norms = torch.linalg.vector_norm(t, dim=1, keepdim=True)
            if bool((norms == 0).any()):
                raise InvalidInputError(f"{name} hold a zero vector, which has no cosine")
            t = t / norms
        return t

    # ---- writes --------------------------------------------------------------------------------------------------
    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Add vectors (n, dim); returns their int64 ids (``ids``, or the next free ones). The rows are checked
        and stored 64 MiB at a time, so an add larger than the device's memory works with ``storage="host"``;
        a bad row anywhere leaves the index as it was."""
        torch = _torch()
        rows = vectors if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
        if rows.ndim != 2 or rows.shape[0] == 0:
            rows = self._rows(rows, "vectors")  # (one row as (1, dim); no rows checked for their dimension)
        new_ids = self._new_ids(ids, rows.shape[0])
        step = max(1, _ADD_CHUNK_ROWS_BYTES // (4 * self.dim))
        n_before = self._n
        try:
            for start in range(0, rows.shape[0], step):
                x = self._rows(rows[start:start + step], "vectors", first_row=start)
                with self._device_memory(f"adding {rows.shape[0]:,} vectors",
                                         self._row_bytes * (self._n + rows.shape[0] - start)):
                    self._append(x, new_ids[start:start + step])
        except BaseException:
            self._n = n_before  # (rows past the count are spare: the index holds what it held)
            raise
        return new_ids

    @property
    def _row_bytes(self) -> int:
        """Device bytes a stored row takes: its vector unless kept in host memory, its squared norm and id."""
        return (0 if self.storage == "host" else self.dim * self._x.element_size()) + 12

    @contextlib.contextmanager
    def _device_memory(self, what: str, nbytes: int) -> Iterator[None]:
        """Turn the device running out of memory during ``what`` (which needs about ``nbytes``) into a
        DeviceMemoryError that says so; the index's tensors are replaced only after every allocation succeeded."""
        torch = _torch()
        try:
            yield
        except torch.OutOfMemoryError:
            free = ""
            if self.device.type == "cuda":
                free_bytes, total = torch.cuda.mem_get_info(self.device)
                free = f"; {free_bytes / 2**20:,.0f} MiB of its {total / 2**20:,.0f} MiB are free"
            raise DeviceMemoryError(f"{what} needs about {nbytes / 2**20:,.0f} MiB of {self.device}'s memory"
                                    f"{free}: the index holds {self._n:,} vectors; use dtype='float16', a "
                                    f"GPUIVFIndex with PQ lists, or search in smaller batches") from None

    def _new_ids(self, ids: Any, n: int) -> np.ndarray:
        torch = _torch()
        if ids is None:
            return np.arange(self._n, self._n + n, dtype=np.int64)
        new_ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
        if new_ids.shape != (n,) or new_ids.dtype.kind not in "iu":
            raise InvalidInputError(f"ids must be {n} integers; got shape {new_ids.shape} {new_ids.dtype}")
        return new_ids.astype(np.int64)

    def _append(self, x: Any, new_ids: np.ndarray) -> None:
        """Store the checked rows ``x`` (float32, on the device) after the others: in the spare rows when there
        are enough, else in new tensors half as large again, made before any replaces the index's. A collection's
        mirror adds a write at a time: each row is then copied a bounded number of times, not once per write."""
        torch = _torch()
        n, m = self._n, x.shape[0]
        stored, norms, ids = self._stored(x, new_ids)
        if n + m > self._x.shape[0]:
            rows = max(n + m, self._x.shape[0] * 3 // 2)
            grown = (self._vector_rows(rows),
                     torch.empty(rows, dtype=torch.float32, device=self.device),
                     torch.empty(rows, dtype=torch.int64, device=self.device))
            for new, old in zip(grown, (self._x, self._sqnorms, self._ids)):
                new[:n] = old[:n]
            self._x, self._sqnorms, self._ids = grown
        self._x[n:n + m], self._sqnorms[n:n + m], self._ids[n:n + m] = stored, norms, ids
        self._n = n + m

    def _stored(self, x: Any, new_ids: np.ndarray) -> tuple[Any, Any, Any]:
        """The checked rows ``x`` as they are stored: in the storage dtype, their squared norms (of the stored,
        rounded, vectors: exact L2 on them) and their ids, on the device."""
        torch = _torch()
        stored = x.to(self._torch_dtype)
        return stored, (stored.to(torch.float32) ** 2).sum(dim=1), torch.from_numpy(new_ids).to(self.device)

    def _grown(self, x: Any, new_ids: np.ndarray) -> tuple[Any, Any, Any]:
        """New tensors of the stored rows followed by ``x`` (:meth:`_stored`); the index's own are left as they
        are."""
        torch = _torch()
        return tuple(torch.cat([old[:self._n], new])
                     for old, new in zip((self._x, self._sqnorms, self._ids), self._stored(x, new_ids)))

    def remove(self, ids: Any) -> int:
        """Remove the vectors of ``ids`` (unknown ids raise UnknownIdError and nothing is removed); returns how
        many. The rows after them move up (one pass over the stored rows on the device)."""
        count, keep = self._rows_to_keep(ids)
        if not count:
            return 0
        with self._device_memory(f"removing {count:,} vectors", self._row_bytes * self._n):
            kept = (self._as_stored_vectors(self._x[:self._n][keep.to(self._x.device)]),
                    self._sqnorms[:self._n][keep], self._ids[:self._n][keep])
        self._x, self._sqnorms, self._ids = kept
        self._n = int(kept[2].shape[0])
        return count

    def _rows_to_keep(self, ids: Any) -> tuple[int, Any]:
        """For a removal of ``ids``: how many, and a bool tensor over the stored rows, True for those that stay.
        Unknown ids raise UnknownIdError (nothing is removed)."""
        torch = _torch()
        gone = np.unique(check_ids(ids))
        stored = self._ids[:self._n].cpu().numpy()
        hit = np.isin(stored, gone)
        if int(hit.sum()) != gone.shape[0]:
            missing = np.setdiff1d(gone, stored[hit])
            raise UnknownIdError(f"id {int(missing[0])} is not in the index ({missing.shape[0]} unknown id(s)); "
                                 f"nothing was removed")
        return int(gone.shape[0]), torch.from_numpy(~hit).to(self.device)

    # ---- persistence ---------------------------------------------------------------------------------------------
    #: the constructor's parameters and the tensors that make up the index, saved as they are
    _PARAMS: tuple[str, ...] = ("dim", "metric", "dtype", "kernel", "storage")
    _TENSORS: tuple[str, ...] = ("_x", "_sqnorms", "_ids")

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` (simdex's file format: arrays behind a JSON header with checksums, written
        atomically; no pickle). bfloat16 vectors are kept as their 16-bit patterns."""
        torch = _torch()
        arrays = {}
        for name in self._TENSORS:
            t = getattr(self, name)
            if name in GPUFlatIndex._TENSORS:
                t = t[:self._n]  # (spare rows are not saved; a PQ list index keeps no vectors: none)
            t = t.detach().cpu().contiguous()
            arrays[name] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        meta = {**{p: getattr(self, p) for p in self._PARAMS}, "count": self._n}
        fileformat.save_arrays(path, type(self).__name__, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", kernel: str | None = None,
             storage: str | None = None) -> GPUFlatIndex:
        """An index saved by :meth:`save`, on ``device`` (any: a file saved from a GPU loads on the CPU and back);
        ``kernel`` and ``storage`` override the saved ones (an index saved from a larger device may be loaded
        with ``storage="host"``). A file that is not such an index raises CorruptFileError."""
        torch = _torch()
        kind, meta, arrays = fileformat.load_arrays(path, mmap=False, expected_kind=cls.__name__)
        defaults = {"storage": "device"}  # (files saved before storage was a parameter have none)
        try:
            params = {p: meta[p] if p in meta or p not in defaults else defaults[p] for p in cls._PARAMS}
            n = meta["count"]
        except KeyError as exc:
            raise CorruptFileError(f"{path}: {kind} header lacks {exc}") from None
        if kernel is not None:
            params["kernel"] = kernel
        if storage is not None:
            params["storage"] = storage
        try:
            index = cls(**params, device=device)
        except (InvalidInputError, InvalidTypeError) as exc:
            raise CorruptFileError(f"{path}: bad {kind} parameters ({exc})") from None
        for name in cls._TENSORS:
            empty = getattr(index, name)  # the fresh index's tensor: the dtype, and the sizes but the first
            arr = arrays.get(name)
            stored_dtype = torch.int16 if empty.dtype == torch.bfloat16 else empty.dtype
            if arr is None or arr.ndim != empty.ndim or arr.shape[1:] != tuple(empty.shape[1:]) or \
                    torch.from_numpy(arr[:0]).dtype != stored_dtype:
                raise CorruptFileError(f"{path}: array {name!r} is missing or not {tuple(empty.shape[1:])} rows "
                                       f"of {stored_dtype}")
            t = torch.from_numpy(arr)
            t = index._as_stored_vectors(t) if name == "_x" else t.to(index.device)
            setattr(index, name, t.view(torch.bfloat16) if empty.dtype == torch.bfloat16 else t)
        if not isinstance(n, int) or n < 0 or index._ids.shape[0] != n:
            raise CorruptFileError(f"{path}: the header's count {n!r} does not match its {index._ids.shape[0]} ids")
        index._n = n
        index._check_loaded(path)
        return index

    def _check_loaded(self, path: Any) -> None:
        """Consistency of the loaded tensors (CorruptFileError)."""
        if self._x.shape[0] != self._n or self._sqnorms.shape[0] != self._n:
            raise CorruptFileError(f"{path}: {self._x.shape[0]} vectors and {self._sqnorms.shape[0]} norms for "
                                   f"{self._n} ids")

    # ---- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, output: str = "numpy") -> tuple[Any, Any]:
        """The k nearest stored vectors of each query: (distances (nq, k) float32, ids (nq, k) int64)."""
        torch = _torch()
        k, use_kernel = self._check_search(k, output, k)
        q = self._rows(queries, "queries")
        scratch = q.shape[0] * min(self._n, max(k, _TILE_BYTES // (4 * q.shape[0]))) * 4
        scan = self._search_kernel if use_kernel else self._search_torch
        streamed = self.storage == "host"  # (two tile buffers on the device besides)
        with torch.no_grad(), self._device_memory(f"searching {q.shape[0]:,} queries",
                                                  scratch + (2 * _STREAM_TILE_BYTES if streamed else 0)):
            dist, rows = self._search_streamed(q, k, scan) if streamed else \
                scan(q, k, self._x[:self._n], self._sqnorms[:self._n])
            return self._results(q, dist, rows, output)

    def _check_search(self, k: Any, output: str, keep: int | None = None) -> tuple[int, bool]:
        """(k checked, whether the Triton kernel runs) for a search keeping ``keep`` candidates (default k)."""
        if output not in ("numpy", "torch"):
            raise InvalidInputError(f"output must be 'numpy' or 'torch'; got {output!r}")
        k = check_positive_int(k, "k")
        if k > self._n:
            raise InvalidInputError(f"k={k} is larger than the index ({self._n} vectors)")
        keep = k if keep is None else max(k, keep)
        use_kernel = self.kernel == "triton" or (self.kernel == "auto" and self.device.type == "cuda"
                                                 and keep <= MAX_KERNEL_K)
        if use_kernel and keep > MAX_KERNEL_K:
            raise InvalidInputError(f"kernel='triton' keeps at most {MAX_KERNEL_K} candidates; got {keep}")
        return k, use_kernel

    def _results(self, q: Any, dist: Any, rows: Any, output: str) -> tuple[Any, Any]:
        """Internal distances and rows (-1: none) of the queries ``q`` as public distances and ids, (inf, -1)
        where there is no hit, as numpy arrays or tensors (``output``)."""
        torch = _torch()
        found = rows >= 0
        dist = torch.clamp(dist + (q * q).sum(dim=1, keepdim=True), min=0.0) if self.metric == "l2" else 1.0 + dist
        dist = torch.where(found, dist, float("inf"))
        ids = torch.where(found, self._ids[rows.clamp(min=0)], -1)
        if output == "torch":
            return dist, ids
        return dist.cpu().numpy(), ids.cpu().numpy()

    def _internal(self, q: Any, tile: Any, sqnorms: Any) -> Any:
        torch = _torch()
        if self.device.type == "cpu" and tile.dtype != torch.float32:
            tile = tile.to(torch.float32)  # (half-precision matrix products are slow or missing on the CPU)
        prod = (q.to(tile.dtype) @ tile.T).to(torch.float32)
        return sqnorms[None, :] - 2.0 * prod if self.metric == "l2" else -prod

    def _search_torch(self, q: Any, k: int, x: Any, sqnorms: Any) -> tuple[Any, Any]:
        """The k best of the rows ``x`` (with their squared norms) by tiles of rows: a matrix product, then the
        k best of the tile and the k best so far."""
        torch = _torch()
        tile_rows = max(k, _TILE_BYTES // (4 * max(q.shape[0], 1)))
        best = self._no_best(q.shape[0])
        for start in range(0, x.shape[0], tile_rows):
            stop = min(x.shape[0], start + tile_rows)
            d = self._internal(q, x[start:stop], sqnorms[start:stop])
            d, rows = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
            best = self._merge_tile(best, d, rows + start, k)
        return self._sorted(best)

    def _no_best(self, nq: int) -> tuple[Any, Any]:
        torch = _torch()
        return (torch.full((nq, 0), float("inf"), device=self.device),
                torch.full((nq, 0), -1, dtype=torch.int64, device=self.device))

    @staticmethod
    def _merge_tile(best: tuple[Any, Any], d: Any, rows: Any, k: int) -> tuple[Any, Any]:
        """The k best of the k best so far and a tile's best distances ``d`` with their ``rows``."""
        torch = _torch()
        best_d, best_r = torch.cat([best[0], d], dim=1), torch.cat([best[1], rows], dim=1)
        if best_d.shape[1] > k:
            best_d, at = torch.topk(best_d, k, dim=1, largest=False)
            best_r = torch.gather(best_r, 1, at)
        return best_d, best_r

    @staticmethod
    def _sorted(best: tuple[Any, Any]) -> tuple[Any, Any]:
        torch = _torch()
        order = torch.argsort(best[0], dim=1, stable=True)
        return torch.gather(best[0], 1, order), torch.gather(best[1], 1, order)

    def _search_streamed(self, q: Any, k: int, scan: Any) -> tuple[Any, Any]:
        """``storage="host"``: ``scan`` (:meth:`_search_kernel` or :meth:`_search_torch`) of each tile of the
        vectors as :meth:`_streamed_tiles` brings it to the device, the tiles' k best merged."""
        best = self._no_best(q.shape[0])
        for start, tile in self._streamed_tiles(max(k, _STREAM_TILE_BYTES // (self.dim * self._x.element_size()))):
            stop = start + tile.shape[0]
            d, rows = scan(q, min(k, tile.shape[0]), tile, self._sqnorms[start:stop])
            best = self._merge_tile(best, d, rows + start, k)
        return self._sorted(best)

    def _streamed_tiles(self, tile_rows: int) -> Iterator[tuple[int, Any]]:
        """(first row, the rows on the device) of each tile of ``tile_rows`` of the host-kept vectors. On CUDA
        the copies run on a stream of their own into two device buffers: tile i + 1 is copied while tile i is
        searched, and a buffer is copied into again only once the search of the tile it held is done (events,
        not host waits: the loop only queues work). On the CPU the host memory is the device's: views."""
        torch = _torch()
        n = self._n
        if self.device.type != "cuda":
            for start in range(0, n, tile_rows):
                yield start, self._x[start:min(n, start + tile_rows)]
            return
        compute = torch.cuda.current_stream(self.device)
        copier = torch.cuda.Stream(self.device)
        buffers = [torch.empty((min(tile_rows, n), self.dim), dtype=self._torch_dtype, device=self.device)
                   for _ in range(min(2, math.ceil(n / tile_rows)))]
        searched: list[Any] = [None] * len(buffers)  # per buffer: the event of its last tile's search
        for i, start in enumerate(range(0, n, tile_rows)):
            stop = min(n, start + tile_rows)
            b = i % len(buffers)
            tile = buffers[b][:stop - start]
            with torch.cuda.stream(copier):
                if searched[b] is not None:
                    copier.wait_event(searched[b])
                tile.copy_(self._x[start:stop], non_blocking=True)
            compute.wait_stream(copier)
            yield start, tile
            searched[b] = compute.record_event()

    def _search_kernel(self, q: Any, k: int, x: Any, sqnorms: Any) -> tuple[Any, Any]:
        """The fused kernel (:mod:`simdex.gpu._kernels`) over the rows ``x``: each program's k best of a chunk
        of rows, then the k best of the chunks' keys."""
        torch = _torch()
        nq, n = q.shape[0], x.shape[0]
        kk = pow2_block(k)  # a power of two for tl.topk
        block_q = 16 if nq <= 16 else 32
        block_n = kk  # the kernel's tile of rows
        block_d = min(64, pow2_block(self.dim))
        q_blocks = math.ceil(nq / block_q)
        # enough programs to occupy the device: a single query splits the rows over about 4 per core
        cores = torch.cuda.get_device_properties(self.device).multi_processor_count \
            if self.device.type == "cuda" else 2
        chunks = max(1, min(math.ceil(n / block_n), math.ceil(4 * cores / q_blocks)))
        rows_per_chunk = math.ceil(math.ceil(n / chunks) / block_n) * block_n
        chunks = math.ceil(n / rows_per_chunk)
        qd = q.to(self._torch_dtype).contiguous()
        x = x.contiguous()
        part = torch.empty((nq, chunks, kk), dtype=torch.int64, device=self.device)
        scan_topk_kernel()[(q_blocks, chunks)](
            qd, x, sqnorms.contiguous(), part, nq, n, self.dim, rows_per_chunk, chunks, qd.stride(0), x.stride(0),
            IS_L2=self.metric == "l2", K=kk, BLOCK_Q=block_q, BLOCK_D=block_d,
            IEEE=self.dtype == "float32", EMPTY=NO_KEY)
        keys = torch.topk(part.reshape(nq, chunks * kk), k, dim=1, largest=False, sorted=True).values
        return unpack_keys(keys)
