"""One adapter per index class: how the conformance suite (tests/test_conformance.py) and the error scan
(tests/test_errors_api.py) make, fill and query an index of each family, in the family's own input type.

Every index class that simdex exports (:func:`exported_index_classes`) must have an adapter: a vector index (an
``Index`` subclass made as ``cls(dim, metric)``) gets one automatically (:func:`adapters_for`); an index of
another input type gets one in :func:`family_adapters`, or both suites fail naming the class.
"""

from __future__ import annotations

import importlib
import inspect
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simdex import FlatIndex, HNSWIndex, LabelIndex, VamanaIndex, WindowIndex
from simdex.index import BaseIndex, Index
from simdex.multivector import MultiVectorIndex
from simdex.quant import (HNSWQuantIndex, IVFIndex, MatryoshkaIndex, RaBitQGraphIndex, SPANNIndex,
                          StreamingVamanaIndex, VamanaDiskIndex)
from simdex.sets import HammingIndex, LSHBloom, MinHash, MinHashLSH, SimHashLSH, shingle, simhash
from simdex.sparse import Analyzer, SparseIndex

from ._sets_data import gcide_texts

# the packages whose index classes the suites cover
PACKAGES = ("simdex", "simdex.quant", "simdex.sparse", "simdex.sets", "simdex.multivector")


class AttributedWindow(WindowIndex):
    """A WindowIndex under the generic calls: each added vector gets a random attribute, and a search without
    bounds covers every point; its window searches are checked in tests/test_window.py."""

    kind = "TestAttributedWindow"

    def add(self, vectors, ids=None, *, threads=None):
        try:
            rows = len(vectors) if np.ndim(vectors) == 2 else 1
        except ValueError:  # ragged: the vector validator names the problem
            rows = len(vectors)
        attributes = np.random.default_rng(len(self) + rows).random(rows)
        return super().add(vectors, attributes, ids, threads=threads)


# the vector indexes of the vector checks in tests/test_conformance.py, as (dim, metric) -> index
FACTORIES = {
    "flat": lambda dim, metric: FlatIndex(dim, metric),
    "hnsw": lambda dim, metric: HNSWIndex(dim, metric, M=12, ef_construction=100, ef_search=100),
    # no labels given: a plain HNSW search; its label searches are checked in tests/test_labels.py
    "labels": lambda dim, metric: LabelIndex(dim, metric, M=12, ef_construction=100, ef_search=100),
    "hnsw-lvq8": lambda dim, metric: HNSWQuantIndex(dim, metric, M=12, ef_construction=100, ef_search=100,
                                                    codec="lvq8"),
    # 12 of 16 lists: after removing 95% of the vectors the few survivors of a neighbourhood are spread thin
    "ivf-pq": lambda dim, metric: IVFIndex(dim, metric, nlist=16, codec="pq", nprobe=12, rerank=100),
    # 1-bit RaBitQ codes of the residuals, the best 100 estimates re-ranked
    "ivf-rabitq": lambda dim, metric: IVFIndex(dim, metric, nlist=16, codec="rabitq", nprobe=12, rerank=100),
    # the graph walked on 4-bit (extended) RaBitQ estimates, re-ranked from float32
    "hnsw-rabitq4": lambda dim, metric: HNSWQuantIndex(dim, metric, M=12, ef_construction=100, ef_search=100,
                                                       codec="rabitq4"),
    # candidates from the first min(64, dim) PCA coordinates, exact re-rank of 100
    "matryoshka": lambda dim, metric: MatryoshkaIndex(dim, metric, rerank=100),
    # the graph walked on RaBitQ codes of its edges, stored beside each node's links
    "rabitq-graph": lambda dim, metric: RaBitQGraphIndex(dim, metric, M=12, ef_construction=100, ef_search=100),
    "vamana": lambda dim, metric: VamanaIndex(dim, metric, R=24, L_build=64, L_search=100),
    # a tree of LVQ-8 HNSW nodes over leaves of 256 points
    "window": lambda dim, metric: AttributedWindow(dim, metric, leaf_size=256, ef_search=100,
                                                   base_params={"M": 12}),
    # LVQ-8 here: the PQ codec needs 256 vectors to train and several checks start from fewer
    "vamana-disk-lvq8": lambda dim, metric: VamanaDiskIndex(dim, metric, R=24, L_build=64, L_search=100,
                                                            codec="lvq8"),
}
# which class each factory makes (the window factory makes the test subclass of WindowIndex)
FACTORY_CLASSES = {"flat": FlatIndex, "hnsw": HNSWIndex, "labels": LabelIndex, "hnsw-lvq8": HNSWQuantIndex,
                   "ivf-pq": IVFIndex, "matryoshka": MatryoshkaIndex, "vamana": VamanaIndex, "window": WindowIndex,
                   "vamana-disk-lvq8": VamanaDiskIndex, "ivf-rabitq": IVFIndex, "hnsw-rabitq4": HNSWQuantIndex,
                   "rabitq-graph": RaBitQGraphIndex}


@dataclass
class Adapter:
    """How to exercise one index class (see the module docstring).

    ``items(n, start)``: n distinct real items of the family's input type (item i of the data set is the same in
    every call). ``make()``: an empty index, or ``build(items, ids, folder)`` for a build-once family.
    ``query(index, items)``: runs the family's query verb on the items and returns the ids each item found (one
    int64 array per item; None where the verb returns no ids). ``bad_items``: batches that ``add`` and the query
    must refuse. ``refuses``: the contract parts the family refuses with UnsupportedOperationError ("add",
    "remove", "ids", "save"). ``calls(index, items)``: valid calls of the public methods, {name: (args, kwargs)},
    which the error scan breaks one argument at a time (a valid ``remove`` removes the last id; the others use the
    first). ``ctor``: the constructor (callable, args, kwargs) for the same scan (a callable that wraps the real
    one names it in ``scan_signature``, whose parameters the scan then tries).
    """

    name: str
    cls: type
    items: Callable[[int, int], Any]
    make: Callable[[], BaseIndex] | None = None
    build: Callable[[Any, Any, Path], BaseIndex] | None = None
    query: Callable[[BaseIndex, Any], list[np.ndarray] | None] | None = None
    bad_items: dict[str, Any] = field(default_factory=dict)
    refuses: frozenset[str] = frozenset()
    calls: Callable[[BaseIndex, Any], dict[str, tuple[tuple, dict]]] | None = None
    ctor: tuple[Callable, tuple, dict] | None = None

    def filled(self, n: int, folder: Path, ids: Any = None, start: int = 0) -> BaseIndex:
        """An index holding items start .. start + n - 1 (with ``ids``, else the default ids)."""
        items = self.items(n, start)
        if self.build is not None:
            return self.build(items, ids, folder)
        index = self.make()
        index.add(items, ids)
        return index

    def __repr__(self) -> str:
        return self.name


def _rows(x: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(r) for r in x]


class Data:
    """Real data for every input type: WordNet gloss embeddings (vectors, their SimHash codes, sets of them as
    multi-vector documents) and gcide dictionary entries (texts, sparse vectors, MinHash signatures)."""

    def __init__(self, wordnet) -> None:
        self.vectors = np.ascontiguousarray(wordnet.base[:3000])
        self.queries = np.ascontiguousarray(wordnet.queries[:20])
        self.texts = list(gcide_texts())
        self.sigs = MinHash(64).signatures(shingle(self.texts, 3))
        self.codes = simhash(self.vectors, 100, seed=3)
        analyze = Analyzer().analyze_batch(self.texts)
        self.sparse = [{t: float(np.log1p(toks.count(t))) for t in set(toks)} or {"empty": 1.0} for toks in analyze]


def _vector_bad_items(dim: int) -> dict[str, Any]:
    x = np.random.default_rng(0).random((3, dim)).astype(np.float32)
    nan, inf = x.copy(), x.copy()
    nan[1, 2], inf[2, 0] = np.nan, np.inf
    return {"wrong dimension": x[:, :-1], "NaN": nan, "inf": inf, "1-D": x[0], "3-D": x[None],
            "strings": x.astype(str), "complex": x.astype(np.complex64), "objects": np.array([x[0], "a"], object),
            "ragged": [[1.0, 2.0], [3.0]], "empty": x[:0], "float64 overflow": x.astype(np.float64) * 1e300}


def vector_adapter(name: str, cls: type, make: Callable[[], Index], data: Data, *,
                   query: Callable | None = None) -> Adapter:
    """The adapter of a vector index: items are (n, dim) float32 rows of real embeddings."""
    dim = data.vectors.shape[1]

    def items(n: int, start: int = 0) -> np.ndarray:
        return data.vectors[start:start + n].copy()

    def search(index, x):
        return _rows(index.search(x, min(10, len(index)))[1])

    def calls(index, x):
        first = index.ids[:1]
        out = {"add": ((items(3, 2000),), {}), "search": ((data.queries, 5), {}), "remove": ((index.ids[-1:],), {})}
        if hasattr(index, "get_vectors"):
            out["get_vectors"] = ((first,), {})
        return out

    return Adapter(name, cls, items, make=make, query=query or search, bad_items=_vector_bad_items(dim),
                   calls=calls, ctor=(cls, (dim, "l2"), {}) if inspect.signature(cls).parameters.get("metric")
                   else (cls, (dim,), {}))


def family_adapters(data: Data) -> list[Adapter]:
    """Adapters of the index classes whose input is not a plain batch of vectors, or that are made differently."""
    dim = data.vectors.shape[1]
    out: list[Adapter] = []

    # ---- vectors, made or built differently
    out.append(vector_adapter("simhash-lsh", SimHashLSH, lambda: SimHashLSH(dim, num_tables=8, bits_per_table=8),
                              data))

    def streaming():
        return StreamingVamanaIndex(VamanaDiskIndex(dim, "l2", R=16, L_build=32, L_search=64, codec="lvq8"),
                                    merge_threshold=150)
    def streaming_ctor(**kwargs):
        return StreamingVamanaIndex(VamanaDiskIndex(dim, "l2", codec="lvq8"), **kwargs)
    streaming_ctor.scan_signature = StreamingVamanaIndex
    ad = vector_adapter("streaming-vamana", StreamingVamanaIndex, streaming, data)
    ad.refuses = frozenset({"save"})
    ad.ctor = (streaming_ctor, (), {})
    out.append(ad)

    def spann_build(x, ids, folder):
        return SPANNIndex.build(folder / "spann", x, "l2", ids=ids, list_size=32, sample=2000, progress=False,
                                nprobe=16, rerank=32)

    def spann_ctor(x, metric="l2", **kwargs):
        return SPANNIndex.build(Path(tempfile.mkdtemp(prefix="simdex-scan-")) / "spann", x, metric, **kwargs)
    spann_ctor.scan_signature = SPANNIndex.build
    ad = vector_adapter("spann", SPANNIndex, None, data)
    ad.make, ad.build, ad.refuses = None, spann_build, frozenset({"add", "remove"})
    ad.calls = lambda index, x: {"search": ((data.queries, 5), {}), "lists_read": ((data.queries,), {})}
    ad.ctor = (spann_ctor, (data.vectors[:300],), {"list_size": 32, "sample": 300, "progress": False})
    out.append(ad)

    # ---- texts and sparse vectors
    def sparse_query(index, items):
        return _rows(index.search(items, min(10, len(index)))[1])

    def sparse_calls(index, items):
        return {"add": ((items[:2],), {}), "search": ((items[:3], 5), {"method": "auto"}),
                "remove": ((index.ids[-1:],), {})}

    out.append(Adapter("sparse-bm25", SparseIndex, lambda n, s=0: data.texts[s:s + n], make=SparseIndex,
                       query=sparse_query, calls=sparse_calls, ctor=(SparseIndex, (), {}),
                       bad_items={"a bare str": "one text", "numbers": [1, 2], "bytes": [b"text"],
                                  "a token that is not a str": [["tok", 3]], "empty": [], "None": None}))
    out.append(Adapter("sparse-dot", SparseIndex, lambda n, s=0: data.sparse[s:s + n],
                       make=lambda: SparseIndex("dot"), query=sparse_query, calls=sparse_calls,
                       ctor=(SparseIndex, ("dot",), {}),
                       bad_items={"NaN weight": [{"a": float("nan")}], "negative weight": [{"a": -1.0}],
                                  "str weight": [{"a": "heavy"}], "texts": ["a text"], "empty": [],
                                  "bad key": [{1.5: 1.0}], "a bare dict": {"a": 1.0}}))

    # ---- sets: MinHash signatures
    num_perm = data.sigs.shape[1]
    sig_bad = {"wrong length": data.sigs[:3, :10], "floats": data.sigs[:3].astype(np.float32),
               "negative": -np.ones((2, num_perm), np.int64), "strings": data.sigs[:2].astype(str),
               "ragged": [[1, 2], [3]], "3-D": data.sigs[None, :2]}

    def lsh_query(index, sigs):
        indptr, ids = index.query(sigs)
        return [ids[indptr[i]:indptr[i + 1]] for i in range(indptr.shape[0] - 1)]

    out.append(Adapter("minhash-lsh", MinHashLSH, lambda n, s=0: data.sigs[s:s + n],
                       make=lambda: MinHashLSH(0.5, num_perm), query=lsh_query, bad_items=sig_bad,
                       calls=lambda index, sigs: {"add": ((sigs[:2],), {}), "query": ((sigs[:3],), {}),
                                                  "remove": ((index.ids[-1:],), {}),
                                                  "candidate_pairs": ((), {"max_bucket": 100})},
                       ctor=(MinHashLSH, (0.5, num_perm), {})))
    out.append(Adapter("lsh-bloom", LSHBloom, lambda n, s=0: data.sigs[s:s + n],
                       make=lambda: LSHBloom(0.5, num_perm, capacity=5000), bad_items=sig_bad,
                       query=lambda index, sigs: (index.query(sigs), None)[1],  # flags, no ids
                       refuses=frozenset({"remove", "ids"}),
                       calls=lambda index, sigs: {"add": ((sigs[:2],), {}), "query": ((sigs[:3],), {}),
                                                  "query_insert": ((sigs[:3],), {})},
                       ctor=(LSHBloom, (0.5, num_perm), {"capacity": 5000})))

    # ---- packed binary codes
    code_size = data.codes.shape[1]

    def hamming_calls(index, codes):
        return {"add": ((codes[:2],), {}), "search": ((codes[:3], 5), {}), "remove": ((index.ids[-1:],), {}),
                "get_codes": ((index.ids[:1],), {})}

    out.append(Adapter("hamming", HammingIndex, lambda n, s=0: data.codes[s:s + n], make=lambda: HammingIndex(100),
                       query=lambda index, c: _rows(index.search(c, min(10, len(index)))[1]),
                       bad_items={"wrong width": data.codes[:3, :5], "int64": data.codes[:3].astype(np.int64),
                                  "floats": data.codes[:3].astype(np.float32), "empty": data.codes[:0],
                                  "strings": data.codes[:2].astype(str), "ragged": [[1, 2], [3]]},
                       calls=hamming_calls, ctor=(HammingIndex, (100,), {})))

    # ---- multi-vector documents: sets of 3 consecutive WordNet vectors
    def docs(n: int, start: int = 0) -> list[np.ndarray]:
        return [data.vectors[3 * i:3 * i + 3].copy() for i in range(start, start + n)]

    def mv():
        return MultiVectorIndex(dim, fde_index="flat", encoder={"k_sim": 2, "d_proj": 16, "r_reps": 2})

    def mv_calls(index, d):
        return {"add": ((docs(2, 900),), {}), "search": ((d[:3], 5), {"method": "muvera"}),
                "remove": ((index.ids[-1:],), {}), "get_documents": ((index.ids[:1],), {}),
                "score": ((d[:2], index.ids[:2]), {})}

    x = data.vectors[:3]
    out.append(Adapter("multivector", MultiVectorIndex, docs, make=mv,
                       query=lambda index, d: _rows(index.search(d, min(10, len(index)))[1]),
                       bad_items={"wrong dimension": [x[:, :-1]], "NaN": [np.where(x > 0.1, np.nan, x)],
                                  "empty set": [x[:0]], "no sets": [], "strings": [x.astype(str)],
                                  "a bare 2-D array": x, "ragged": [[[1.0, 2.0], [3.0]]]},
                       calls=mv_calls, ctor=(MultiVectorIndex, (dim,), {"fde_index": "flat"})))
    return out


# the vector indexes of the contract checks: FACTORIES, but IVF on int8 codes (PQ's training, half a minute per
# index on a small machine, is checked by the vector checks and tests/test_quant_ivf.py)
CONTRACT_FACTORIES = {**{k: f for k, f in FACTORIES.items() if k != "ivf-pq"},
                      "ivf-int8": lambda dim, metric: IVFIndex(dim, metric, nlist=8, codec="int8", nprobe=8)}
CONTRACT_CLASSES = {**FACTORY_CLASSES, "ivf-int8": IVFIndex}
# the names of all_adapters, known before the data is loaded (test ids)
ADAPTER_NAMES = (*CONTRACT_FACTORIES, "simhash-lsh", "streaming-vamana", "spann", "sparse-bm25", "sparse-dot",
                 "minhash-lsh", "lsh-bloom", "hamming", "multivector")


def all_adapters(data: Data) -> list[Adapter]:
    """The vector adapters of CONTRACT_FACTORIES (l2), then the family adapters."""
    dim = data.vectors.shape[1]
    out = [vector_adapter(name, CONTRACT_CLASSES[name], lambda f=f: f(dim, "l2"), data)
           for name, f in CONTRACT_FACTORIES.items()]
    return out + family_adapters(data)


# ---- fixtures: a test module that imports these gets one test per adapter --------------------------------------
@pytest.fixture(scope="session")
def family_data(wordnet_small) -> Data:
    return Data(wordnet_small)


@pytest.fixture(scope="session")
def adapters(family_data) -> dict[str, Adapter]:
    return {a.name: a for a in all_adapters(family_data)}


@pytest.fixture(params=ADAPTER_NAMES)
def adapter(request, adapters) -> Adapter:
    return adapters[request.param]


def exported_index_classes() -> list[type]:
    """Every concrete index class exported by the packages of PACKAGES (found, not listed: a new one is covered
    as soon as it is exported)."""
    found = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", dir(module)):
            obj = getattr(module, name, None)
            if isinstance(obj, type) and issubclass(obj, BaseIndex) and not inspect.isabstract(obj):
                found[obj.__qualname__] = obj
    return [found[k] for k in sorted(found)]


def adapters_for(cls: type, adapters: list[Adapter], data: Data) -> list[Adapter]:
    """The adapters exercising ``cls``; a vector index made as ``cls(dim, metric)`` gets one automatically."""
    mine = [a for a in adapters if a.cls is cls]
    if not mine and issubclass(cls, Index):
        dim = data.vectors.shape[1]
        mine = [vector_adapter(cls.__name__, cls, lambda: cls(dim, "l2"), data)]
    return mine
