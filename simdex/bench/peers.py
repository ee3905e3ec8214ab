"""Uniform adapters over simdex and its peers (FAISS, hnswlib, USearch, rabitqlib's SymphonyQG, Intel SVS, ScaNN)
for the benchmark harness.

Each adapter builds with the same M / ef_construction and thread count, searches a batch of queries with a given
ef and thread count, and reports its index size. Peers are imported lazily: they belong to the ``bench`` extra.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .. import HNSWIndex


def _normalized(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


class Adapter:
    name = "?"

    def __init__(self, metric: str, M: int, ef_construction: int) -> None:
        self.metric, self.M, self.ef_construction = metric, M, ef_construction

    def version(self) -> str:
        return "?"

    def prepared(self, x: np.ndarray) -> np.ndarray:
        """Rows as a library without a cosine metric takes them: unit length for cosine (then inner product)."""
        return np.ascontiguousarray(x if self.metric == "l2" else _normalized(x), np.float32)

    def build(self, base: np.ndarray, threads: int) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        raise NotImplementedError

    def size_bytes(self) -> int:
        raise NotImplementedError


class SimdexHNSW(Adapter):
    name = "simdex"

    def version(self) -> str:
        import simdex
        return simdex.__version__

    def new_index(self, dim: int) -> HNSWIndex:
        """The empty simdex index this adapter measures, with the run's M and ef_construction."""
        return HNSWIndex(dim, self.metric, M=self.M, ef_construction=self.ef_construction)

    def build(self, base: np.ndarray, threads: int) -> None:
        self.index = self.new_index(base.shape[1])
        self.index.add(base, threads=threads)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        return self.index.search(queries, k, ef=ef, threads=threads)[1]

    def size_bytes(self) -> int:
        return self.index.nbytes


class SimdexLVQ8(SimdexHNSW):
    """simdex's HNSW walked on LVQ-8 codes, the best 40 re-ranked from float32 vectors kept on disk."""

    name = "simdex-lvq8"

    def new_index(self, dim: int) -> HNSWIndex:
        from ..quant import HNSWQuantIndex
        return HNSWQuantIndex(dim, self.metric, M=self.M, ef_construction=self.ef_construction, codec="lvq8")


class SimdexRaBitQGraph(SimdexHNSW):
    """simdex's HNSW graph searched through RaBitQ codes of its edges (:class:`simdex.quant.RaBitQGraphIndex`)."""

    name = "simdex-qg"

    def new_index(self, dim: int) -> HNSWIndex:
        from ..quant import RaBitQGraphIndex
        return RaBitQGraphIndex(dim, self.metric, M=self.M, ef_construction=self.ef_construction)


class SymphonyQG(Adapter):
    """rabitqlib's ``SymqgIndex`` (SymphonyQG, SIGMOD 2025): degree 2 * M, its default 1-bit codes."""

    name = "symqg"

    def version(self) -> str:
        from importlib.metadata import version
        return version("rabitqlib")

    def _padded(self, x: np.ndarray) -> np.ndarray:
        """Zero columns up to a multiple of 64, which its rotation needs (GloVe's 50 dimensions are refused);
        zeros change no distance."""
        x = self.prepared(x)
        out = np.zeros((x.shape[0], -(-x.shape[1] // 64) * 64), np.float32)
        out[:, :x.shape[1]] = x
        return out

    def build(self, base: np.ndarray, threads: int) -> None:
        from rabitqlib import SymqgIndex
        base = self._padded(base)
        self.index = SymqgIndex(base.shape[1], 2 * self.M, "l2" if self.metric == "l2" else "ip")
        self.index.build(base, self.ef_construction, num_threads=threads)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        ids = self.index.search_batch(self._padded(queries), k, max(ef, k), num_threads=threads)[0]
        return ids.astype(np.int64)

    def size_bytes(self) -> int:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "symqg.index")
            self.index.save(path)
            return os.path.getsize(path)


class SVSVamana(Adapter):
    """Intel SVS's Vamana graph over float32 vectors (its LVQ codes need an Intel CPU), degree 2 * M."""

    name = "svs"

    def version(self) -> str:
        from importlib.metadata import version
        return version("scalable-vs")

    def build(self, base: np.ndarray, threads: int) -> None:
        import svs
        base = self.prepared(base)
        params = svs.VamanaBuildParameters(graph_max_degree=2 * self.M, window_size=self.ef_construction)
        self.index = svs.Vamana.build(params, base,
                                      svs.DistanceType.L2 if self.metric == "l2" else svs.DistanceType.MIP,
                                      num_threads=threads)
        self.rows, self.dim = base.shape

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        self.index.num_threads = threads
        self.index.search_window_size = max(ef, k)
        return self.index.search(self.prepared(queries), k)[0].astype(np.int64)

    def size_bytes(self) -> int:  # its float32 copy of the data and the graph's adjacency
        return self.rows * (4 * self.dim + 4 * 2 * self.M)


class ScaNN(Adapter):
    """ScaNN's tree + anisotropic hashing (2 dimensions per block) + exact re-ordering of 100; ``ef`` is the
    number of leaves searched, of about 2 sqrt(n)."""

    name = "scann"

    def version(self) -> str:
        from importlib.metadata import version
        return version("scann")

    def build(self, base: np.ndarray, threads: int) -> None:
        import scann
        base = self.prepared(base)
        self.leaves = max(16, int(2 * np.sqrt(base.shape[0])))
        self.rows, self.dim = base.shape
        self.index = (scann.scann_ops_pybind.builder(base, 10,
                                                     "squared_l2" if self.metric == "l2" else "dot_product")
                      .tree(num_leaves=self.leaves, num_leaves_to_search=16,
                            training_sample_size=min(base.shape[0], 250_000))
                      .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(100)
                      .set_n_training_threads(threads).build())
        self.index.set_num_threads(threads)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        queries = self.prepared(queries)
        leaves = min(ef, self.leaves)
        if threads > 1:
            ids, _ = self.index.search_batched_parallel(queries, k, leaves_to_search=leaves,
                                                        pre_reorder_num_neighbors=100)
        else:
            ids, _ = self.index.search_batched(queries, k, leaves_to_search=leaves, pre_reorder_num_neighbors=100)
        return np.asarray(ids, np.int64)

    def size_bytes(self) -> int:  # float32 rows for re-ordering, 4-bit codes of 2 dimensions per block
        return self.rows * (4 * self.dim + self.dim // 4)


class FaissHNSW(Adapter):
    name = "faiss"

    def version(self) -> str:
        import faiss
        return faiss.__version__

    def build(self, base: np.ndarray, threads: int) -> None:
        import faiss
        faiss.omp_set_num_threads(threads)
        if self.metric == "l2":
            self.index = faiss.IndexHNSWFlat(base.shape[1], self.M)
        else:  # cosine: unit vectors and inner product, as ann-benchmarks does
            self.index = faiss.IndexHNSWFlat(base.shape[1], self.M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.ef_construction
        self.index.add(self.prepared(base))

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        import faiss
        faiss.omp_set_num_threads(threads)
        self.index.hnsw.efSearch = ef
        return self.index.search(self.prepared(queries), k)[1]

    def size_bytes(self) -> int:
        import faiss
        return int(faiss.serialize_index(self.index).nbytes)


class Hnswlib(Adapter):
    name = "hnswlib"

    def version(self) -> str:
        from importlib.metadata import version
        return version("hnswlib")

    def build(self, base: np.ndarray, threads: int) -> None:
        import hnswlib
        self.index = hnswlib.Index(space="l2" if self.metric == "l2" else "cosine", dim=base.shape[1])
        self.index.init_index(max_elements=base.shape[0], M=self.M, ef_construction=self.ef_construction,
                              random_seed=0)
        self.index.set_num_threads(threads)
        self.index.add_items(base, num_threads=threads)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        self.index.set_ef(ef)
        return self.index.knn_query(queries, k, num_threads=threads)[0]

    def size_bytes(self) -> int:
        return int(self.index.index_file_size())


class USearch(Adapter):
    name = "usearch"

    def version(self) -> str:
        from importlib.metadata import version
        return version("usearch")

    def build(self, base: np.ndarray, threads: int) -> None:
        from usearch.index import Index
        self.index = Index(ndim=base.shape[1], metric="l2sq" if self.metric == "l2" else "cos", dtype="f32",
                           connectivity=self.M, expansion_add=self.ef_construction)
        self.index.add(np.arange(base.shape[0], dtype=np.uint64), base, threads=threads)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        self.index.expansion_search = ef
        return self.index.search(queries, k, threads=threads).keys.astype(np.int64)

    def size_bytes(self) -> int:
        return int(self.index.memory_usage)


ADAPTERS: dict[str, type[Adapter]] = {a.name: a for a in (SimdexHNSW, SimdexLVQ8, SimdexRaBitQGraph, FaissHNSW,
                                                            Hnswlib, USearch, SymphonyQG, SVSVamana, ScaNN)}


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The adapters whose libraries import, and why the others were skipped."""
    ok, skipped = [], {}
    modules = {"faiss": "faiss", "hnswlib": "hnswlib", "usearch": "usearch.index", "simdex": "simdex",
               "simdex-lvq8": "simdex", "simdex-qg": "simdex", "symqg": "rabitqlib", "svs": "svs", "scann": "scann"}
    for name in names:
        if name not in ADAPTERS:
            raise SystemExit(f"unknown library {name!r}; choose from {sorted(ADAPTERS)}")
        try:
            __import__(modules[name])
            ok.append(name)
        except ImportError as exc:
            skipped[name] = f"not installed ({exc}); pip install 'simdex[bench]'"
    return ok, skipped
