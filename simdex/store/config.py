"""A collection's configuration (written once, in its ``config.json``) and its checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._validate import check_dim, check_metric
from ..dense import HNSWIndex
from ..errors import DimensionMismatchError, InvalidInputError
from .embedding import embedder_info

if TYPE_CHECKING:
    from ..embed import Embedder

INCLUDE_CHOICES = ("metadatas", "documents", "embeddings", "distances")
DEFAULT_SEARCH_INCLUDE = ("metadatas", "documents", "distances")
DEFAULT_GET_INCLUDE = ("metadatas", "documents")
INDEX_KINDS = ("hnsw", "flat")
HNSW_PARAMS = ("M", "ef_construction", "ef_search", "seed")


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
                 window_field: Any = None, label_field: Any = None, embedder: Embedder | None = None
                 ) -> dict[str, Any]:
    dim = check_dim(dim)
    metric = check_metric(metric)
    if index not in INDEX_KINDS:
        raise InvalidInputError(f"index must be one of {INDEX_KINDS}; got {index!r}")
    unknown = set(params) - (set(HNSW_PARAMS) if index == "hnsw" else set())
    if unknown:
        raise InvalidInputError(f"unknown parameter(s) for a {index} index: {sorted(unknown)}")
    if index == "hnsw":
        HNSWIndex(dim, metric, **params)  # validates the values
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
    return {"dim": dim, "metric": metric, "index": index, "params": dict(params), "text": text,
            "window_field": window_field, "label_field": label_field,
            "embedder": None if embedder is None else embedder_info(embedder)}
