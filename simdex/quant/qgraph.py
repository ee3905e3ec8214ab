"""A graph whose nodes carry their neighbours' RaBitQ codes: SymphonyQG's layout (Gou et al., SIGMOD 2025) on
simdex's HNSW graph.

The graph is :class:`~simdex.dense.HNSWIndex`'s, built on the float32 vectors as usual. Each node v also stores,
beside its layer-0 links, a RaBitQ code of every edge vector ``r = u - v`` to its neighbours u (after a random
rotation; :mod:`simdex.quant.rabitq` explains the codes) and three float32 factors per edge. A search walks the
ground layer with a pool ordered by estimated distances: expanding v reads v's float32 vector (its exact
distance, which is what the results hold) and v's own code rows, from which it estimates every unvisited
neighbour at once, ``|q - u|^2 = |q - v|^2 + |r|^2 + 2 <v - c, r> - 2 <q - c, r>`` with the last inner product
estimated from r's code and the query quantised to 4 bits once (``c``: the mean of the first vectors added). A
hop therefore reads one node's rows in order instead of every neighbour's vector. The codes of a node's
neighbours are stored transposed in groups of 16 (FastScan, :mod:`simdex.quant._fastscan_kernels`), so that the
inner products of all 16 come from two byte shuffles per 4 groups of 4 dimensions; and since a group costs the
same however many of its slots hold a neighbour, the slots the HNSW pruning leaves empty (a third on WordNet) are
filled with the node's nearest two-hop nodes (:func:`~simdex.quant._qgraph_kernels.fill_edges`), as SymphonyQG
fills its rows: the search sees more of the neighbourhood per expansion (WordNet, ef 64: recall@10 0.966 ->
0.973). (SymphonyQG quantises ``q - v`` at every hop instead of ``q - c`` once; here the query is prepared once
per search, and the estimate's error is that of a code of the whole vector: on WordNet an edge is about as long
as a vector's distance to the centre.)

Every node that is expanded is scored exactly, so the results need no separate re-ranking and the estimator's
error bound has no decision left to make: an estimate only decides which nodes are expanded.

The rotation is a randomised Hadamard transform ("FHT-Kac", as RaBitQ-Library's graph index uses; O(D log D),
:func:`~simdex.quant._qgraph_kernels.rotate`) rather than :class:`~simdex.quant.RaBitQCodec`'s dense D x D
matrix: each search thread rotates its own queries, where a dense rotation of a batch is a BLAS product whose
worker threads then spin on the cores the search threads need (measured: 2-thread batch search 15,000 QPS after
the product, 28,000 with BLAS on one thread; 20,000 WordNet vectors, ef 64).

Memory per vector: the HNSW float32 index's, plus ``2 * M * (bits * D / 8 + 12)`` bytes of edge codes (D: the
dimension rounded up to 64; 1,920 bytes at 384-d, M = 16, 1 bit; ``2 * M`` rounded up to 16) and ``4 (2 M + 1)``
bytes of filled edge lists. Low dimensions get more bits per dimension by default (4 at 64, 2 at 128): 64
one-bit coordinates estimate an edge too coarsely to steer the search (GloVe-50: recall@10 0.28 at ef 10 with 1
bit, against 0.60 for the float32 graph). Edge codes and filled lists are derived data: they are not saved, and
are computed again (in parallel, a few seconds per 100,000 nodes on 2 cores) by the first search after a load.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._numba import num_threads, run_threads
from .._validate import check_positive_int
from ..core.scorer import Vectors
from ..dense.hnsw import HNSWIndex
from ..errors import CorruptFileError, InvalidTypeError
from ..index import meta_int
from ..metrics import L2
from . import _qgraph_kernels as QK
from ._fastscan_kernels import fastscan_layout
from .codec import expect_array, training_sample

# rows coded per pass: the rotated vectors of a pass's nodes and their neighbours are a temporary array
_ENCODE_CHUNK = 8192


def _linked(links: np.ndarray) -> np.ndarray:
    """The neighbour slots listed in adjacency rows ``links`` (degree in column 0, then the neighbours)."""
    return links[:, 1:][np.arange(links.shape[1] - 1)[None, :] < links[:, :1]]


class RaBitQGraphIndex(HNSWIndex):
    """Approximate k-NN on an HNSW graph searched through RaBitQ codes of its edges (see the module docstring).

    Parameters are :class:`~simdex.dense.HNSWIndex`'s: the ground layer's degree ``2 * M`` is the number of
    neighbour codes per node (SymphonyQG's degree 32 is ``M=16``). ``bits`` (1-8) per dimension of an edge code;
    default ``min(4, 256 // D)``, at least 1 (D: dim rounded up to 64). ``fill``: fill each node's empty edge
    slots with its nearest two-hop nodes (recall@10 at ef 64: WordNet 0.966 -> 0.973, GloVe-50 higher too;
    Fashion-MNIST a little lower, 0.9698 -> 0.9684 at ef 32, so ``fill=False`` there). ``search(ef=...)`` sizes
    the pool of estimated candidates; results carry exact distances.

    Filtered searches (a ``filter`` that allows part of the index) traverse the float32 graph as
    :class:`~simdex.dense.HNSWIndex` does; deleted vectors alone do not.
    """

    kind = "RaBitQGraphIndex"

    def __init__(self, dim: int, metric: str = "l2", M: int = 16, ef_construction: int = 200,
                 ef_search: int = 64, seed: int = 0, consolidate_threshold: float = 0.1,
                 bits: int | None = None, fill: bool = True) -> None:
        super().__init__(dim, metric, M=M, ef_construction=ef_construction, ef_search=ef_search, seed=seed,
                         consolidate_threshold=consolidate_threshold)
        words = -(-self.dim // 64)
        self.padded = 64 * words  # the rotated dimension: whole words of bits
        self.bits = max(1, min(4, 256 // self.padded)) if bits is None else check_positive_int(bits, "bits",
                                                                                                maximum=8)
        if not isinstance(fill, (bool, np.bool_)):
            raise InvalidTypeError(f"fill must be True or False; got {type(fill).__name__} {fill!r}")
        self.fill = bool(fill)
        self.center = np.zeros(self.dim, np.float32)
        self.trained = False
        self.signs = np.ones((QK.ROUNDS, self.padded), np.float32)
        self._edge_runs = self._no_runs()
        self._edge_factors = np.zeros((0, self.M0, QK.FACTORS), np.float32)
        self._edges = np.zeros((0, self.M0 + 1), np.int32)  # the links0 rows with their empty slots filled
        self._stale = np.zeros(0, np.bool_)  # rows whose links changed since their codes were made
        self._any_stale = False

    def __repr__(self) -> str:
        return (f"RaBitQGraphIndex(dim={self.dim}, metric={self.metric!r}, M={self.M}, bits={self.bits}, "
                f"ntotal={self.ntotal})")

    @property
    def nbytes(self) -> int:
        """Bytes held in RAM: the HNSW index's arrays plus the edge codes."""
        return super().nbytes + int(self._edge_runs.nbytes + self._edge_factors.nbytes + self._edges.nbytes
                                    + self._stale.nbytes)

    # ---- edge codes ----------------------------------------------------------------------------------------------
    def _no_runs(self) -> np.ndarray:
        """An empty array of edge codes in FastScan runs: per node, ceil(2M / 16) groups of 16 neighbours, each
        ``bits`` runs of D / 8 bytes per neighbour."""
        return fastscan_layout(np.zeros((0, self.M0, self.bits * (self.padded // 64)), np.uint64), self.bits)

    def _fit_codes(self) -> None:
        """Give the code arrays the graph's capacity (after growth, compaction or a rebuild)."""
        capacity = self._vectors.shape[0]
        if self._edge_runs.shape[0] == capacity:
            return
        keep = min(capacity, self._edge_runs.shape[0])
        runs = np.zeros((capacity,) + self._edge_runs.shape[1:], np.uint8)
        edges = np.zeros((capacity, self.M0 + 1), np.int32)
        edges[:keep] = self._edges[:keep]
        factors = np.zeros((capacity,) + self._edge_factors.shape[1:], np.float32)
        stale = np.ones(capacity, np.bool_)
        runs[:keep], factors[:keep], stale[:keep] = (self._edge_runs[:keep], self._edge_factors[:keep],
                                                     self._stale[:keep])
        self._edge_runs, self._edge_factors, self._edges, self._stale = runs, factors, edges, stale

    def _mark_all_stale(self) -> None:
        self._fit_codes()
        self._stale[:] = True
        self._any_stale = True

    def _reserve(self, n_new: int, n_up_new: int) -> None:
        super()._reserve(n_new, n_up_new)
        self._fit_codes()

    def _link_back(self, s: int, e: int, fwd_d0: np.ndarray, fwd_dup: np.ndarray, nthreads: int) -> None:
        # the batch's nodes and the nodes they link to (which get their reverse links now) change their rows
        self._stale[s:e] = True
        self._stale[_linked(self._links0[s:e])] = True
        self._any_stale = True
        super()._link_back(s, e, fwd_d0, fwd_dup, nthreads)

    def _insert(self, x: np.ndarray, new_ids: np.ndarray, threads: int | None, progress: bool | None) -> None:
        if not self.trained:  # the centre: the mean of (a sample of) the first rows; the rotation: seeded signs
            self.center = training_sample(x, self.seed).mean(0, dtype=np.float64).astype(np.float32)
            rng = np.random.default_rng(self.seed)
            self.signs = np.where(rng.random((QK.ROUNDS, self.padded)) < 0.5, -1.0, 1.0).astype(np.float32)
            self.trained = True
        super()._insert(x, new_ids, threads, progress)
        self._encode_stale(threads)

    def consolidate(self, threads: int | None = None, rebuild: bool = False) -> None:
        """As :meth:`HNSWIndex.consolidate`; every node's edges are coded again afterwards."""
        with self._write_lock:
            if self._n_deleted == 0:
                return
            super().consolidate(threads, rebuild)
            self._mark_all_stale()
            self._encode_stale(threads)

    def rotate(self, x: np.ndarray) -> np.ndarray:
        """The rotated, centred rows ``R (x - c)`` (n, D) float32 of rows x (n, dim), as codes and queries see
        them (D: dim rounded up to 64; the rotation is orthogonal, so it keeps distances)."""
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty((x.shape[0], self.padded), np.float32)
        QK.rotate_rows(x, self.center, self.signs, out)
        return out

    def _encode_stale(self, threads: int | None = None, refill: bool = True) -> None:
        """Code the edges of every stale row, a chunk of rows at a time (their rotated vectors and their
        neighbours' are made per chunk). A stale row's empty slots are filled again first (with ``fill``),
        unless not ``refill``."""
        with self._write_lock:
            if not self._any_stale:
                return
            self._fit_codes()
            n = self._n
            rows = np.flatnonzero(self._stale[:n])
            # row of each node in a pass's rotated array; a pass sets, and the kernel reads, only its own nodes'
            pos = np.empty(n, np.int64)
            with num_threads(threads) as nthreads:
                if refill and not self.fill:
                    self._edges[rows] = self._links0[rows]
                elif refill:
                    marks = self._scratch.take(nthreads, n)
                    try:
                        run_threads(QK.fill_edges, rows.shape[0], nthreads, self._vectors, self._metric_code,
                                    self._links0, rows, self._edges, *marks)
                    finally:
                        self._scratch.give(marks)
                for start in range(0, rows.shape[0], _ENCODE_CHUNK):
                    chunk = rows[start:start + _ENCODE_CHUNK]
                    needed = np.union1d(chunk, _linked(self._edges[chunk]))
                    pos[needed] = np.arange(needed.shape[0])
                    vectors = np.asarray(self._vectors[needed], np.float32)
                    rotated = self.rotate(vectors)
                    cdot = (vectors @ self.center).astype(np.float64)
                    words = np.empty((chunk.shape[0], self.M0, self.bits * (self.padded // 64)), np.uint64)
                    QK.encode_edges(rotated, pos, cdot, self._edges, chunk.astype(np.int64),
                                    self._metric_code == L2, self.bits, words, self._edge_factors)
                    self._edge_runs[chunk] = fastscan_layout(words, self.bits)
            self._stale[:n] = False
            self._stale[n:] = True
            self._any_stale = False

    # ---- search --------------------------------------------------------------------------------------------------
    def _search_graph(self, q: np.ndarray, k: int, ef: int, n_rerank: int, allowed: np.ndarray | None,
                      invert: bool, nthreads: int, out_d: np.ndarray, out_s: np.ndarray, ids: np.ndarray) -> None:
        if allowed is not None and not invert:  # a filter: the float32 graph search, which collects allowed nodes
            super()._search_graph(q, k, ef, n_rerank, allowed, invert, nthreads, out_d, out_s, ids)
            return
        if self._any_stale:
            self._encode_stale()
        runs, factors = self._edge_runs, self._edge_factors
        scratch = self._scratch.take(nthreads, self._n)
        try:
            args = (Vectors(self._metric_code, q, self._vectors), self.center, self.signs, self._metric_code == L2,
                    self._edges, *self._graph()[1:], self.bits, runs, factors, runs.reshape(runs.shape[0], -1),
                    self._deleted, ef, out_d, out_s, *scratch, self._metric_code, self._idmap.slot_ids, ids)
            if nthreads == 1:  # straight to the kernel, as core.graph.search_batch
                QK.search_rows(*args, 0, 0, q.shape[0])
            else:
                run_threads(QK.search_rows, q.shape[0], nthreads, *args)
        finally:
            self._scratch.give(scratch)

    # ---- copies and persistence ----------------------------------------------------------------------------------
    def _copy_extra(self, clone: HNSWIndex) -> None:
        clone._edge_runs = np.array(self._edge_runs)
        clone._edges = np.array(self._edges)
        clone._edge_factors = np.array(self._edge_factors)
        clone._stale = np.array(self._stale)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = super()._state()
        meta.update({"trained": self.trained, "bits": self.bits, "fill": self.fill})
        arrays.update({"center": self.center, "signs": self.signs})
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> RaBitQGraphIndex:
        index = super()._from_state(meta, arrays)
        index.bits = meta_int(meta, "bits", 1) if "bits" in meta else 1
        if index.bits > 8:
            raise CorruptFileError(f"bits {index.bits} out of range (1-8)")
        index._edge_runs = index._no_runs()
        index.fill = meta.get("fill", False) is True
        try:
            index.center = np.array(expect_array(arrays, "center", (index.dim,), np.float32))
            index.signs = np.array(expect_array(arrays, "signs", (QK.ROUNDS, index.padded), np.float32))
        except (KeyError, ValueError) as exc:
            raise CorruptFileError(f"the rotation of a RaBitQGraphIndex file is missing or damaged: {exc}") from None
        index.trained = bool(meta.get("trained", index._n > 0))
        if not np.isfinite(index.center).all() or not np.isin(index.signs, (-1.0, 1.0)).all():
            raise CorruptFileError("the rotation's signs must be +-1 and the centre finite")
        index._mark_all_stale()  # coded by the first search, once the graph has passed the load's checks
        return index
