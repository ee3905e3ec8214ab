"""Uniform adapters over simdex and its peers (FAISS, hnswlib, USearch) for the benchmark harness.

Each adapter builds with the same M / ef_construction and thread count, searches a batch of queries with a given
ef and thread count, and reports its index size. Peers are imported lazily: they belong to the ``bench`` extra.
"""

from __future__ import annotations

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

    def build(self, base: np.ndarray, threads: int) -> None:
        self.index = HNSWIndex(base.shape[1], self.metric, M=self.M, ef_construction=self.ef_construction)
        self.index.add(base, threads=threads)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        return self.index.search(queries, k, ef=ef, threads=threads)[1]

    def size_bytes(self) -> int:
        return self.index.nbytes


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
            base = _normalized(base)
        self.index.hnsw.efConstruction = self.ef_construction
        self.index.add(base)

    def search(self, queries: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        import faiss
        faiss.omp_set_num_threads(threads)
        self.index.hnsw.efSearch = ef
        if self.metric != "l2":
            queries = _normalized(queries)
        return self.index.search(queries, k)[1]

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


ADAPTERS: dict[str, type[Adapter]] = {a.name: a for a in (SimdexHNSW, FaissHNSW, Hnswlib, USearch)}


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The adapters whose libraries import, and why the others were skipped."""
    ok, skipped = [], {}
    modules = {"faiss": "faiss", "hnswlib": "hnswlib", "usearch": "usearch.index", "simdex": "simdex"}
    for name in names:
        if name not in ADAPTERS:
            raise SystemExit(f"unknown library {name!r}; choose from {sorted(ADAPTERS)}")
        try:
            __import__(modules[name])
            ok.append(name)
        except ImportError as exc:
            skipped[name] = f"not installed ({exc}); pip install 'simdex[bench]'"
    return ok, skipped
