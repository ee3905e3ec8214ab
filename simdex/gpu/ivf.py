"""Inverted-file search on a torch device: :class:`GPUIVFIndex` (flat or PQ lists, trained on the device)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import CorruptFileError, InvalidInputError
from .._validate import check_positive_int
from ._kernels import NO_KEY, list_scan_kernel, pow2_block, unpack_keys
from .flat import MAX_KERNEL_K, GPUFlatIndex, _torch
from .kmeans import kmeans, nearest

_TRAIN_PER_LIST = 256  # training rows per list and per PQ centroid, as the CPU IVFIndex


class GPUIVFIndex(GPUFlatIndex):
    """Approximate k-NN over inverted lists in a torch device's memory.

    Parameters
    ----------
    dim, metric, dtype, device, kernel
        As :class:`~simdex.gpu.GPUFlatIndex` ("triton": the list scan as one fused kernel,
        :func:`simdex.gpu._kernels.list_scan_kernel`; "torch": gathers and ``torch.topk`` per query).
    nlist : int
        Inverted lists (coarse k-means centroids), trained on the device.
    codec : "flat" or "pq<m>"
        What a list holds per vector: the vector (``dtype``), or m bytes of product-quantizer codes of its
        residual to the list's centroid (256 centroids per sub-space, trained on the device; ``dim`` divisible by
        m). Distances of PQ entries are estimates unless re-ranked.
    nprobe : int
        Lists scanned per query (``search(nprobe=...)`` overrides it).
    rerank : int
        With PQ lists: re-score this many candidates exactly from the float vectors, which are then kept on the
        device too (0: return the code distances).
    storage : "device"
        The lists live in the device's memory (only :class:`~simdex.gpu.GPUFlatIndex` streams vectors kept in
        host memory); PQ lists are how more vectors fit on a device.

    The first ``add`` trains the quantizers on (a sample of) its rows, or :meth:`train` does. ``centroids`` may be
    given to :meth:`train` (e.g. those of a CPU :class:`~simdex.quant.IVFIndex`) to search the same lists.
    """

    def __init__(self, dim: int, metric: str = "l2", *, nlist: int = 1024, codec: str = "flat", nprobe: int = 16,
                 rerank: int = 0, dtype: str = "float32", device: str = "auto", kernel: str = "auto",
                 seed: int = 0, storage: str = "device") -> None:
        if storage != "device":
            raise InvalidInputError(f"GPUIVFIndex keeps its lists in the device's memory (storage='device'); got "
                                    f"storage={storage!r}: use PQ lists ('pq<m>') to fit more vectors, or a "
                                    f"GPUFlatIndex with storage='host'")
        super().__init__(dim, metric, dtype=dtype, device=device, kernel=kernel)
        torch = _torch()
        self.nlist = check_positive_int(nlist, "nlist", maximum=1 << 22)
        self.nprobe = check_positive_int(nprobe, "nprobe")
        self.rerank = check_positive_int(rerank, "rerank", minimum=0, maximum=MAX_KERNEL_K)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        match = re.fullmatch(r"pq(\d+)", codec) if isinstance(codec, str) else None
        if codec != "flat" and match is None:
            raise InvalidInputError(f"codec must be 'flat' or 'pq<m>' (e.g. 'pq48'); got {codec!r}")
        self.m = int(match.group(1)) if match else 0
        if match and (self.m == 0 or self.dim % self.m):
            raise InvalidInputError(f"codec {codec!r}: the dimension {self.dim} is not divisible by m={self.m}")
        if self.rerank and not self.m:
            raise InvalidInputError("rerank applies to PQ lists; flat lists hold the vectors themselves")
        self.codec = codec
        dev = self.device
        self.centroids = torch.empty((0, self.dim), dtype=torch.float32, device=dev)
        self.codebooks = torch.empty((self.m, 256, self.dim // max(self.m, 1)), dtype=torch.float32, device=dev)
        self._tables = torch.empty((0, self.m, 256), dtype=torch.float32, device=dev)  # L2: ||r||^2 + 2<c, r>
        self._offsets = torch.zeros(self.nlist + 1, dtype=torch.int64, device=dev)
        self._entry_rows = torch.empty(0, dtype=torch.int64, device=dev)  # entry (list order) -> row (added order)
        self._codes = torch.empty((0, self.m), dtype=torch.uint8, device=dev)
        self._labels = torch.empty(0, dtype=torch.int64, device=dev)

    _PARAMS = (*GPUFlatIndex._PARAMS, "nlist", "codec", "nprobe", "rerank", "seed")
    _TENSORS = (*GPUFlatIndex._TENSORS, "centroids", "codebooks", "_tables", "_offsets", "_entry_rows", "_codes",
                "_labels")

    def _check_loaded(self, path: Any) -> None:
        n, offsets = self._n, self._offsets
        if self.centroids.shape[0] not in (0, self.nlist) or offsets.shape[0] != self.nlist + 1 or \
                int(offsets[0]) != 0 or int(offsets[-1]) != n or bool((offsets[1:] < offsets[:-1]).any()) or \
                self._labels.shape[0] != n or self._entry_rows.shape[0] != n or \
                self._codes.shape[0] != (n if self.m else 0) or \
                self._x.shape[0] != (n if self._keeps_vectors else 0) or \
                (n and (int(self._entry_rows.min()) < 0 or int(self._entry_rows.max()) >= n)):
            raise CorruptFileError(f"{path}: the lists do not match the {n} vectors (or the {self.nlist} lists)")

    @property
    def is_trained(self) -> bool:
        return self.centroids.shape[0] > 0

    def info(self) -> dict[str, Any]:
        return {**super().info(), "kind": "GPUIVFIndex", "nlist": self.nlist, "codec": self.codec,
                "nprobe": self.nprobe, "rerank": self.rerank}

    @property
    def nbytes(self) -> int:
        tensors = (self.centroids, self.codebooks, self._tables, self._offsets, self._entry_rows, self._codes,
                   self._labels, self._ids, self._sqnorms)
        own = sum(t.element_size() * t.numel() for t in tensors)
        return int(own + (self._x.element_size() * self._x.numel() if self._keeps_vectors else 0))

    @property
    def _keeps_vectors(self) -> bool:
        return not self.m or self.rerank > 0

    @property
    def _entry_bytes(self) -> int:
        """Device bytes a stored vector takes: its code, list label and id, and its float row if kept."""
        return self.m + 16 + (self.dim * self._x.element_size() if self._keeps_vectors else 0)

    # ---- training ------------------------------------------------------------------------------------------------
    def train(self, vectors: Any, *, centroids: Any = None, iters: int = 20) -> None:
        """Train the lists' centroids (k-means, or the given ``centroids`` (nlist, dim)) and, with PQ lists, the
        codebooks of the residuals, on the device."""
        torch = _torch()
        if self._n:
            raise InvalidInputError("the index already holds vectors; it cannot be retrained")
        x = self._rows(vectors, "training vectors")
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        if centroids is not None:
            c = self._rows(centroids, "centroids") if self.metric != "cosine" else \
                torch.as_tensor(np.asarray(centroids, np.float32)).to(self.device)
            if c.shape[0] != self.nlist:
                raise InvalidInputError(f"centroids has {c.shape[0]} rows; the index has nlist={self.nlist}")
        else:
            if x.shape[0] < self.nlist:
                raise InvalidInputError(f"training needs at least nlist={self.nlist} vectors; got {x.shape[0]}")
            sample = x[torch.randperm(x.shape[0], generator=gen)[:_TRAIN_PER_LIST * self.nlist].to(self.device)]
            c = kmeans(sample, self.nlist, iters=iters, seed=self.seed)
        c = c.contiguous()
        codebooks, tables = self.codebooks, self._tables
        if self.m:
            labels, _ = nearest(x, c)
            residuals = x - c[labels]
            if residuals.shape[0] < 256:
                raise InvalidInputError(f"PQ training needs at least 256 vectors; got {residuals.shape[0]}")
            sample = residuals[torch.randperm(residuals.shape[0], generator=gen)[:_TRAIN_PER_LIST * 256]
                               .to(self.device)]
            sub = self.dim // self.m
            codebooks = torch.stack([kmeans(sample[:, j * sub:(j + 1) * sub].contiguous(), 256, iters=iters,
                                            seed=self.seed + j) for j in range(self.m)])
            if self.metric == "l2":  # ||q - c - r||^2 = ||q - c||^2 + (||r||^2 + 2<c, r>) - 2<q, r>
                cn = (codebooks ** 2).sum(dim=2)  # (m, 256)
                tables = (cn[None] + 2.0 * torch.einsum("lms,mcs->lmc", c.reshape(self.nlist, self.m, sub),
                                                        codebooks)).contiguous()
        self.centroids, self.codebooks, self._tables = c, codebooks, tables

    # ---- writes --------------------------------------------------------------------------------------------------
    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Add vectors (n, dim) to their nearest lists (training first if needed); returns their int64 ids."""
        x = self._rows(vectors, "vectors")
        new_ids = self._new_ids(ids, x.shape[0])
        with self._device_memory(f"adding {x.shape[0]:,} vectors", (self._n + x.shape[0]) * self._entry_bytes):
            self._add_checked(x, new_ids)
        return new_ids

    def remove(self, ids: Any) -> int:
        """Remove the vectors of ``ids`` from their lists (unknown ids raise UnknownIdError and nothing is
        removed); returns how many. The lists close up in one pass over their entries on the device: every entry
        keeps its list and its order, so the codes and the trained quantizers stay as they were."""
        torch = _torch()
        count, keep = self._rows_to_keep(ids)
        if not count:
            return 0
        n = self._n
        with self._device_memory(f"removing {count:,} vectors", n * (self._entry_bytes + 8)):  # (+ renumber)
            renumber = torch.cumsum(keep.to(torch.int64), 0) - 1  # old row -> new row (for the rows kept)
            kept = keep[self._entry_rows]  # entries (list order) whose row stays
            labels = self._labels[kept]
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=self.device),
                                 torch.cumsum(torch.bincount(labels, minlength=self.nlist), 0)])
            entry_rows = renumber[self._entry_rows[kept]]
            codes = self._codes[kept].contiguous() if self.m else self._codes
            stored = (self._x[:n][keep], self._sqnorms[:n][keep]) if self._keeps_vectors else \
                (self._x, self._sqnorms)
            ids_kept = self._ids[:n][keep]
        self._labels, self._offsets, self._entry_rows, self._codes = labels, offsets, entry_rows, codes
        self._x, self._sqnorms = stored
        self._ids = ids_kept
        self._n = int(ids_kept.shape[0])
        return count

    def _add_checked(self, x: Any, new_ids: np.ndarray) -> None:
        """:meth:`add` of checked rows: every new tensor is made first, then they replace the index's together
        (a device running out of memory midway leaves the index as it was)."""
        torch = _torch()
        if not self.is_trained:
            self.train(x)
        labels = self._assign(x)
        all_labels = torch.cat([self._labels, labels])
        order = torch.argsort(all_labels, stable=True)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=self.device),
                             torch.cumsum(torch.bincount(all_labels, minlength=self.nlist), 0)])
        n = self._n + x.shape[0]
        new_ids_t = torch.from_numpy(new_ids).to(self.device)
        if self.m:  # codes in list order, pointing at rows in added order (the float rows only for re-ranking)
            rows = torch.arange(self._n, n, device=self.device)
            entry_rows = torch.cat([self._entry_rows, rows])[order]
            codes = torch.cat([self._codes, self._encode(x, labels)])[order].contiguous()
            stored = self._grown(x, new_ids) if self.rerank else \
                (self._x, self._sqnorms, torch.cat([self._ids, new_ids_t]))
        else:  # flat lists: the rows themselves in list order (an entry is its row)
            stored = tuple(t[order] for t in self._grown(x, new_ids))
            entry_rows, codes = torch.arange(n, device=self.device), self._codes
        self._labels, self._offsets, self._entry_rows, self._codes = all_labels[order], offsets, entry_rows, codes
        self._x, self._sqnorms, self._ids = stored
        self._n = n

    def _assign(self, x: Any) -> Any:
        return nearest(x, self.centroids, "ip" if self.metric == "ip" else "l2")[0]

    def _encode(self, x: Any, labels: Any) -> Any:
        torch = _torch()
        residuals = x - self.centroids[labels]
        sub = self.dim // self.m
        codes = torch.empty((x.shape[0], self.m), dtype=torch.uint8, device=self.device)
        for j in range(self.m):
            codes[:, j] = nearest(residuals[:, j * sub:(j + 1) * sub].contiguous(), self.codebooks[j])[0].to(
                torch.uint8)
        return codes

    # ---- search --------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, nprobe: int | None = None, output: str = "numpy"
               ) -> tuple[Any, Any]:
        """The k nearest stored vectors by the ``nprobe`` nearest lists: (distances (nq, k) float32, ids (nq, k)
        int64), padded with (inf, -1) where the probed lists hold fewer than k."""
        torch = _torch()
        k, use_kernel = self._check_search(k, output, self.rerank)
        keep = max(k, self.rerank)
        nprobe = min(self.nlist, self.nprobe if nprobe is None else check_positive_int(nprobe, "nprobe"))
        q = self._rows(queries, "queries")
        with torch.no_grad(), self._device_memory(f"searching {q.shape[0]:,} queries",
                                                  q.shape[0] * (self.nlist + 256 * self.m + nprobe * 128) * 4):
            coarse = self._internal(q, self.centroids, (self.centroids * self.centroids).sum(dim=1))
            probe_d, probes = torch.topk(coarse, nprobe, dim=1, largest=False)
            lut = self._query_tables(q) if self.m else None
            scan = self._scan_kernel if use_kernel else self._scan_torch
            dist, entries = scan(q, probes, probe_d, lut, keep)
            rows = torch.where(entries >= 0, self._entry_rows[entries.clamp(min=0)], -1)
            if self.m and self.rerank:
                dist, rows = self._rerank(q, rows, k)
            return self._results(q, dist[:, :k], rows[:, :k], output)

    def _query_tables(self, q: Any) -> Any:
        """(nq, m, 256) float32: each query's part of an entry's internal distance per sub-space and code."""
        torch = _torch()
        sub = self.dim // self.m
        dots = torch.einsum("qms,mcs->qmc", q.reshape(q.shape[0], self.m, sub), self.codebooks)
        return (-2.0 * dots if self.metric == "l2" else -dots).contiguous()

    def _entry_distances(self, qi: int, q: Any, entries: Any, lists: Any, lut: Any) -> Any:
        """Internal distances (without the query's own norm) of ``entries`` of lists ``lists`` for query qi."""
        torch = _torch()
        if self.m:
            codes = self._codes[entries].to(torch.int64)  # (E, m)
            js = torch.arange(self.m, device=self.device)
            parts = lut[qi][js[None, :], codes]
            if self.metric == "l2":
                parts = parts + self._tables[lists[:, None], js[None, :], codes]
            return parts.sum(dim=1)
        return self._internal(q[qi:qi + 1], self._x[entries], self._sqnorms[entries])[0]  # (flat: entry = row)

    def _scan_torch(self, q: Any, probes: Any, probe_d: Any, lut: Any, keep: int) -> tuple[Any, Any]:
        torch = _torch()
        nq = q.shape[0]
        out_d = torch.full((nq, keep), float("inf"), device=self.device)
        out_e = torch.full((nq, keep), -1, dtype=torch.int64, device=self.device)
        offsets = self._offsets.tolist()
        for qi in range(nq):
            spans = [(offsets[lst], offsets[lst + 1], p) for p, lst in enumerate(probes[qi].tolist())]
            entries = torch.cat([torch.arange(a, b, device=self.device) for a, b, _ in spans])
            if entries.numel() == 0:
                continue
            which = torch.cat([torch.full((b - a,), p, device=self.device, dtype=torch.int64) for a, b, p in spans])
            d = self._entry_distances(qi, q, entries, probes[qi][which], lut)
            if self.m:  # (a PQ entry's distance is relative to its list's centre)
                d = d + probe_d[qi][which]
            take = min(keep, d.shape[0])
            best_d, at = torch.topk(d, take, largest=False)
            order = torch.argsort(best_d, stable=True)
            out_d[qi, :take] = best_d[order]
            out_e[qi, :take] = entries[at[order]]
        return out_d, out_e

    def _scan_kernel(self, q: Any, probes: Any, probe_d: Any, lut: Any, keep: int) -> tuple[Any, Any]:
        torch = _torch()
        nq, nprobe = probes.shape
        kk = pow2_block(keep)
        part = torch.empty((nq, nprobe, kk), dtype=torch.int64, device=self.device)
        dummy = torch.zeros(1, dtype=torch.float32, device=self.device)
        vecs, xn = (dummy, dummy) if self.m else (self._x, self._sqnorms)  # (flat lists: rows in list order)
        list_scan_kernel()[(nq, nprobe)](
            q.to(self._torch_dtype).contiguous(), lut if lut is not None else dummy,
            self._tables if self.m and self.metric == "l2" else dummy,
            self._codes if self.m else torch.zeros(1, dtype=torch.uint8, device=self.device), vecs, xn,
            self._offsets, probes.contiguous(), probe_d.to(torch.float32).contiguous(), part, nprobe, self.dim,
            max(self.m, 1), IS_PQ=bool(self.m), IS_L2=self.metric == "l2", K=kk,
            BLOCK_M=pow2_block(self.m), BLOCK_D=min(64, pow2_block(self.dim)), EMPTY=NO_KEY)
        keys = torch.topk(part.reshape(nq, nprobe * kk), keep, dim=1, largest=False, sorted=True).values
        return unpack_keys(keys)

    def _rerank(self, q: Any, rows: Any, k: int) -> tuple[Any, Any]:
        """Exact internal distances of the candidate ``rows`` (nq, R; -1 empty), the k best of each query."""
        torch = _torch()
        safe = rows.clamp(min=0)
        x = self._x[safe].to(torch.float32)  # (nq, R, dim)
        prod = torch.einsum("qrd,qd->qr", x, q)
        d = self._sqnorms[safe] - 2.0 * prod if self.metric == "l2" else -prod
        d = torch.where(rows >= 0, d, float("inf"))
        best, at = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
        return best, torch.gather(rows, 1, at)
