"""A collection's configuration (written once, in its ``config.json``) and its checks."""

from __future__ import annotations

import importlib
import math
from typing import TYPE_CHECKING, Any, NamedTuple

from .._validate import check_dim, check_metric
from ..errors import DimensionMismatchError, InvalidInputError
from .embedding import embedder_info

if TYPE_CHECKING:
    from ..embed import Embedder

INCLUDE_CHOICES = ("metadatas", "documents", "embeddings", "distances", "fields")
DEFAULT_SEARCH_INCLUDE = ("metadatas", "documents", "distances")
DEFAULT_GET_INCLUDE = ("metadatas", "documents")
HNSW_PARAMS = ("M", "ef_construction", "ef_search", "seed")
IVF_PARAMS = ("nlist", "nprobe", "codec", "rerank", "reads", "seed")
VAMANA_PARAMS = ("R", "L_build", "L_search", "alpha", "seed")
SPANN_PARAMS = ("list_size", "nprobe", "eps", "rerank", "codec", "max_replicas", "closure_eps", "seed")


class MainKind(NamedTuple):
    """A kind of main index: its class (``module:Class``), the constructor's fixed arguments, the parameters a user
    may set, the search keyword that a collection's ``ef`` (search breadth) sets, whether it trains on its rows
    (then the first build waits for rows to train on and later builds retrain it as the collection grows),
    and whether it is built once (a merge builds a new one from every row: :mod:`simdex.store.buildonce`)."""
    cls: str
    fixed: dict[str, Any]
    params: tuple[str, ...]
    breadth: str = "ef"
    trained: bool = False
    rebuilds: bool = False
    # whether the index keeps recall curves, so that a search may ask for a target recall instead of an effort
    calibrated: bool = True
    # consolidate by building a fresh graph, not by repairing the old one (HNSWIndex.consolidate(rebuild=True))
    fresh_consolidation: bool = False


# A collection's index kind: the main index that the optimizer builds aside from the newest rows and swaps in
# (:class:`~simdex.store.vectors.RecordVectors`); "flat" has no main index (exact search over every row).
MAIN_INDEXES: dict[str, MainKind] = {
    # an HNSW graph is consolidated by a fresh build: a collection's churn (a merge consolidates once a fifth of
    # the graph is tombstones) wore a repaired graph down to recall@10 0.67 at ef 64 in the crash bench
    "hnsw": MainKind("simdex.dense:HNSWIndex", {}, HNSW_PARAMS, fresh_consolidation=True),
    "hnsw-lvq8": MainKind("simdex.quant:HNSWQuantIndex", {"codec": "lvq8"}, HNSW_PARAMS + ("rerank",),
                          trained=True, fresh_consolidation=True),
    "hnsw-int8": MainKind("simdex.quant:HNSWQuantIndex", {"codec": "int8"}, HNSW_PARAMS + ("rerank",),
                          trained=True, fresh_consolidation=True),
    # the HNSW graph with 1-bit RaBitQ codes of every node's edges beside its links (SymphonyQG's layout): a hop
    # estimates all new neighbours from one node's rows; float32 vectors in memory score the expanded nodes
    "rabitq-graph": MainKind("simdex.quant:RaBitQGraphIndex", {}, HNSW_PARAMS + ("bits", "fill"),
                             fresh_consolidation=True),
    # IVF over PQ codes of the residuals, the float32 vectors in a file for re-ranking: RAM per record is the
    # code (dim / 8 bytes by default) plus a few ids
    "ivf-pq": MainKind("simdex.quant:IVFIndex", {"vectors": "disk"}, IVF_PARAMS, breadth="nprobe", trained=True),
    # the same IVF lists over 1-bit RaBitQ codes of the residuals (dim / 8 + 16 bytes per vector; codec
    # "rabitq<B>" for B bits), scanned with popcounts and re-ranked from the float32 file
    "ivf-rabitq": MainKind("simdex.quant:IVFIndex", {"vectors": "disk"}, IVF_PARAMS, breadth="nprobe",
                           trained=True),
    # a Vamana graph (DiskANN) with FreshDiskANN inserts, float32 vectors in memory
    "vamana": MainKind("simdex.dense:VamanaIndex", {}, VAMANA_PARAMS, breadth="L"),
    # the same graph with its vectors and links in a file and PQ codes in memory (DiskANN's SSD layout): search
    # walks the codes and ranks what it expands by the vectors read from the file
    "vamana-disk": MainKind("simdex.quant:VamanaDiskIndex", {}, VAMANA_PARAMS + ("codec",), breadth="L",
                            trained=True),
    # SPANN (posting lists of LVQ codes in a file, vectors in a file): built once, so new rows wait in the
    # growing segment and a merge builds a new index from every row (an LSM store's compaction)
    "spann": MainKind("simdex.store.buildonce:SPANNMain", {}, SPANN_PARAMS, breadth="nprobe", trained=True,
                      rebuilds=True, calibrated=False),
}
INDEX_KINDS = (*MAIN_INDEXES, "flat")
IVF_KINDS = {"ivf-pq": "pq", "ivf-rabitq": "rabitq"}  # the IVF kinds and their default codecs
# the kinds whose collections may search on a GPU (``device=``): a mirror of their rows on the device answers their
# plain searches (:mod:`simdex.store.device`): exact for "flat", inverted lists of PQ codes for "ivf-pq"
DEVICE_KINDS = ("flat", "ivf-pq")
TRAINED_KINDS = tuple(kind for kind, spec in MAIN_INDEXES.items() if spec.trained)
# the float32 rows an IVF collection's merge trains its lists and codec on (a sample of at most this many bytes;
# the index's own limit, 200,000 rows, too): bounded memory and time, 65,536 rows at 384-d (52 per list at 1,265
# lists; the PQ codec trains on 65,536 rows at most, so it then needs no copy of its own)
IVF_TRAIN_BYTES = 96 << 20
# re-ranked candidates of an ivf-pq collection unless set: every returned distance is then exact up to k = 100
IVF_RERANK = 100


def main_index_class(index: str) -> type:
    """The class of the main index of kind ``index`` (not "flat")."""
    module, name = MAIN_INDEXES[index].cls.split(":")
    return getattr(importlib.import_module(module), name)  # the store sits above every index family


def sized_params(index: str, params: dict[str, Any], rows: int) -> dict[str, Any]:
    """``params`` with the defaults that depend on the collection's size filled in: an IVF collection's
    ``nlist`` (about 2 sqrt(rows), 16 to 65,536) and ``nprobe`` (a quarter of the lists, at least 16), unless set."""
    if index not in IVF_KINDS:
        return {k: v for k, v in params.items() if k != "device"}  # (device: the mirror's, not the index's)
    out = {k: v for k, v in params.items() if k != "device"}
    nlist = out.setdefault("nlist", int(min(max(round(2 * math.sqrt(max(rows, 1))), 16), 1 << 16)))
    out.setdefault("nprobe", max(16, nlist // 4))
    out.setdefault("codec", IVF_KINDS[index])
    out.setdefault("rerank", IVF_RERANK)
    return out


def retrain(main: Any, index: str, params: dict[str, Any], threads: int | None) -> None:
    """Train ``main`` (of kind ``index``) again on the rows it holds now: an IVF index also gets the number of
    lists and probes for its size (:func:`sized_params`)."""
    if index not in IVF_KINDS:
        main.retrain()
        return
    sized = sized_params(index, params, len(main))
    main.retrain(nlist=sized["nlist"], threads=threads, train_rows=IVF_TRAIN_BYTES // (4 * main.dim))
    main.nprobe = sized["nprobe"]


def new_main_index(dim: int, metric: str, index: str, params: dict[str, Any],
                   storage_dir: str | None = None, rows: int = 0) -> Any:
    """An empty main index of kind ``index`` with the collection's ``params`` (and the defaults for ``rows`` rows,
    :func:`sized_params`). Consolidation runs on copies built aside, never under readers, so the index never
    consolidates by itself. An index over codes keeps its float32 vectors (for building and re-ranking) in
    unlinked files in ``storage_dir`` (the collection's folder: the disk the database is on, not a temporary
    folder that may be memory)."""
    spec = MAIN_INDEXES[index]
    fixed = dict(spec.fixed)
    if spec.trained:
        fixed["storage_dir"] = storage_dir
    return main_index_class(index)(dim, metric, consolidate_threshold=1.0, **fixed,
                                   **sized_params(index, params, rows))


def check_include(include: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if include is None:
        return default
    if isinstance(include, str):
        include = [include]
    bad = [i for i in include if i not in INCLUDE_CHOICES]
    if bad or not isinstance(include, (list, tuple)):
        raise InvalidInputError(f"include must be a list of {INCLUDE_CHOICES}; got {include!r}")
    return tuple(include)


def check_config(dim: Any, metric: Any, index: Any, params: dict[str, Any], text: Any = False,
                 window_field: Any = None, label_field: Any = None, embedder: Embedder | None = None,
                 dedup: Any = None, fields: Any = None) -> dict[str, Any]:
    dim = check_dim(dim)
    metric = check_metric(metric)
    if index not in INDEX_KINDS:
        raise InvalidInputError(f"index must be one of {INDEX_KINDS}; got {index!r}")
    allowed = (MAIN_INDEXES[index].params if index in MAIN_INDEXES else ()) + \
        (("device",) if index in DEVICE_KINDS else ())
    if "device" in params:
        if index not in DEVICE_KINDS:
            raise InvalidInputError(f"device applies to {' and '.join(DEVICE_KINDS)} collections (searched on a "
                                    f"GPU); a {index} collection searches on the CPU")
        from .device import check_device, mirror_pq
        check_device(params["device"])
        if index == "ivf-pq":
            mirror_pq(dim, params.get("codec", IVF_KINDS[index]))
    unknown = set(params) - set(allowed)
    if unknown:
        raise InvalidInputError(f"unknown parameter(s) for a {index} index: {sorted(unknown)}; it takes "
                                f"{list(allowed) or 'none'}")
    if index in MAIN_INDEXES and MAIN_INDEXES[index].rebuilds:
        from .buildonce import check_build_params
        check_build_params(params, dim, metric)
    elif index in MAIN_INDEXES:
        new_main_index(dim, metric, index, params)  # validates the values
    if not isinstance(text, bool):
        raise InvalidInputError(f"text must be True or False; got {text!r}")
    if text:
        from ..sparse import Analyzer
        Analyzer()  # fails now, with what to install, if no stemmer is available
    from .filters import _FIELD
    for name, field in (("window_field", window_field), ("label_field", label_field)):
        if field is not None and (not isinstance(field, str) or not _FIELD.match(field)):
            raise InvalidInputError(f"{name} must be a metadata field name (letters, digits, '_', '-', '.' "
                                    f"between nested keys); got {field!r}")
    if embedder is not None and embedder.dim != dim:
        raise DimensionMismatchError(f"dim is {dim}, but the embedder {embedder.name!r} makes {embedder.dim}-d vectors")
    from .dedup import check_dedup
    from .fields import check_fields
    return {"fields": check_fields(fields), "dim": dim, "metric": metric, "index": index, "params": dict(params),
            "text": text, "window_field": window_field, "label_field": label_field,
            "embedder": None if embedder is None else embedder_info(embedder), "dedup": check_dedup(dedup)}
