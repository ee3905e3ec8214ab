"""Haystack document store and retrievers over a simdex collection (``pip install simdex[haystack]``).

>>> store = SimdexDocumentStore(path="./data", collection_name="docs", embedding_dim=384)   # or url=...
>>> store.write_documents(documents)                      # DuplicatePolicy.FAIL / SKIP / OVERWRITE
>>> SimdexEmbeddingRetriever(store, top_k=5).run(query_embedding=vector)["documents"]
>>> SimdexBM25Retriever(store).run(query="a large wild cat")["documents"]
>>> SimdexHybridRetriever(store).run(query="a large wild cat", query_embedding=vector)["documents"]

A Haystack ``Document`` is a record: its id, its content as the record's document (indexed for BM25), its
embedding as the record's vector, its ``meta`` under the metadata key ``meta`` (so a filter on ``meta.year`` is a
``where`` on ``meta.year``). A document without an embedding is stored with a placeholder vector and marked, and
embedding and hybrid retrieval never return it. Haystack filters (``{"field": "meta.x", "operator": ">=",
"value": 3}``, ``{"operator": "AND" | "OR" | "NOT", "conditions": [...]}``) become a simdex ``where``; a malformed
filter raises Haystack's ``FilterError`` naming the problem.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import replace
from typing import Any

import numpy as np
from haystack import component, default_from_dict, default_to_dict
from haystack.dataclasses import ByteStream, Document, SparseEmbedding
from haystack.document_stores.errors import DuplicateDocumentError
from haystack.document_stores.types import DuplicatePolicy
from haystack.errors import FilterError

from ..errors import InvalidInputError
from ._target import open_database, release_database

_COMPARISONS = {"==": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}
_EMBEDDED = "_embedded"  # metadata key: False for a document stored without an embedding (placeholder vector)
_INCLUDE = ["metadatas", "documents", "embeddings"]


def filters_to_where(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """A Haystack filter as a simdex ``where``; FilterError for a malformed one."""
    if not filters:
        return None
    if not isinstance(filters, dict):
        raise FilterError(f"a filter must be a dict; got {type(filters).__name__}")
    if "field" in filters:
        return _comparison(filters)
    if "operator" not in filters:
        raise FilterError(f"a logical filter needs 'operator' (AND, OR, NOT) and 'conditions'; got {filters}")
    if "conditions" not in filters:
        raise FilterError(f"the {filters['operator']!r} filter has no 'conditions'")
    op, conditions = filters["operator"], filters["conditions"]
    if op not in ("AND", "OR", "NOT"):
        raise FilterError(f"unknown logical operator {op!r}; use AND, OR or NOT")
    if not isinstance(conditions, list):
        raise FilterError(f"'conditions' of the {op} filter must be a list")
    parts = [_to_where(c) for c in conditions]
    both = {"$and": parts} if len(parts) != 1 else parts[0]
    if op == "NOT":
        return {"$not": both}
    return both if op == "AND" else {"$or": parts}


def _to_where(condition: Any) -> dict[str, Any]:
    if not isinstance(condition, dict):
        raise FilterError(f"a condition must be a dict; got {condition!r}")
    out = filters_to_where(condition)
    return {} if out is None else out


def _field(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise FilterError(f"a condition's 'field' must be a non-empty string; got {name!r}")
    if name.startswith("meta."):
        return name
    raise FilterError(f"filters on {name!r} are not supported: filter on metadata fields ('meta.<key>')")


def _is_date(value: str) -> bool:
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_NOTHING = {"$and": [{"_id": {"$exists": True}}, {"_id": {"$exists": False}}]}  # matches no record


def _comparison(condition: dict[str, Any]) -> dict[str, Any]:
    for key in ("field", "operator", "value"):
        if key not in condition:
            raise FilterError(f"the condition {condition} has no {key!r}")
    field, op, value = _field(condition["field"]), condition["operator"], condition["value"]
    if op in ("in", "not in"):
        if not isinstance(value, list):
            raise FilterError(f"{op!r} on {field} needs a list; got {type(value).__name__}")
        if not value:
            return _NOTHING if op == "in" else {}
        return {field: {"$in" if op == "in" else "$nin": value}}
    if op not in _COMPARISONS:
        raise FilterError(f"unknown comparison operator {op!r} on {field}; use ==, !=, >, >=, <, <=, in, not in")
    if op == "==":
        return {"$or": [{field: {"$exists": False}}, {field: None}]} if value is None else {field: value}
    if op == "!=":
        return {"$and": [{field: {"$exists": True}}, {field: {"$ne": None}}]} if value is None \
            else {field: {"$ne": value}}
    # ordering comparisons: numbers, or ISO dates
    if value is None:
        return _NOTHING
    if isinstance(value, str):
        if not _is_date(value):
            raise FilterError(f"{op!r} on {field} compares numbers or ISO-8601 dates; got the string {value!r}")
        value = {"$date": value}
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FilterError(f"{op!r} on {field} compares numbers or ISO-8601 dates; got {type(value).__name__}")
    return {field: {_COMPARISONS[op]: value}}


class SimdexDocumentStore:
    """Haystack's ``DocumentStore`` protocol over simdex collection ``collection_name`` of the embedded database
    at ``path`` or of the server at ``url`` (created when missing: ``embedding_dim``-dimensional vectors under
    ``metric``, documents indexed for BM25). Writes are durable when they return. The default metric is the
    inner product, Haystack's default similarity, which stores embeddings as they are; under "cosine" they are
    stored (and returned) unit length."""

    def __init__(self, *, path: str | None = None, url: str | None = None, api_key: str | None = None,
                 collection_name: str = "haystack", embedding_dim: int = 768, metric: str = "ip",
                 index: str = "hnsw") -> None:
        self.path, self.url, self.api_key = path, url, api_key
        self.collection_name, self.embedding_dim, self.metric, self.index = collection_name, embedding_dim, metric, \
            index
        self._database = open_database(path, url, api_key)
        self.collection = self._database.get_or_create_collection(collection_name, embedding_dim, metric, index,
                                                                  text=True)
        self._placeholder = np.zeros(embedding_dim, np.float32)
        self._placeholder[0] = 1.0

    def close(self) -> None:
        """Let go of the database (closed when no other store in the process uses it)."""
        release_database(self._database)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, path=self.path, url=self.url, collection_name=self.collection_name,
                               embedding_dim=self.embedding_dim, metric=self.metric, index=self.index)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimdexDocumentStore:
        return default_from_dict(cls, data)

    # ---- the protocol --------------------------------------------------------------------------------------------
    def count_documents(self) -> int:
        return self.collection.count()

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        """The documents matching ``filters`` (all without), in id order."""
        return [self._document(r) for r in self.collection.get(where=filters_to_where(filters), include=_INCLUDE)]

    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Write ``documents``; an id already stored (or given twice) is an error with FAIL (and NONE), left as it
        is with SKIP, replaced with OVERWRITE. Returns how many were written."""
        if not isinstance(documents, list) or not all(isinstance(d, Document) for d in documents):
            raise ValueError("write_documents takes a list of haystack Document objects")
        if not documents:
            return 0
        by_id: dict[str, Document] = {}
        repeated = []
        for doc in documents:
            if doc.id in by_id:
                repeated.append(doc.id)
            else:
                by_id[doc.id] = doc
        stored = {r["id"] for r in self.collection.get(list(by_id), include=[])}
        if policy in (DuplicatePolicy.NONE, DuplicatePolicy.FAIL) and (stored or repeated):
            ids = sorted(stored) + repeated
            raise DuplicateDocumentError(f"{len(ids)} document id(s) already stored or given twice (first "
                                         f"{ids[0]!r}); nothing was written (DuplicatePolicy.SKIP or OVERWRITE to "
                                         f"write anyway)")
        if policy == DuplicatePolicy.SKIP:
            by_id = {i: d for i, d in by_id.items() if i not in stored}
        elif policy == DuplicatePolicy.OVERWRITE:
            by_id = {d.id: d for d in documents}  # the last of repeated ids wins
        if not by_id:
            return 0
        docs = list(by_id.values())
        vectors = np.stack([self._vector(d) for d in docs])
        self.collection.upsert([d.id for d in docs], vectors, [self._metadata(d) for d in docs],
                               [d.content for d in docs])
        return len(docs)

    def delete_documents(self, document_ids: list[str]) -> None:
        """Delete the documents ``document_ids``; unknown ids are ignored."""
        if document_ids:
            self.collection.delete(list(document_ids), missing_ok=True)

    # ---- conversion ----------------------------------------------------------------------------------------------
    def _vector(self, doc: Document) -> np.ndarray:
        if doc.embedding is None:
            return self._placeholder
        vector = np.asarray(doc.embedding, np.float32)
        if vector.shape != (self.embedding_dim,):
            raise InvalidInputError(f"document {doc.id!r} has a {vector.shape[0]}-d embedding; the store holds "
                                    f"{self.embedding_dim}-d ones")
        return vector

    @staticmethod
    def _metadata(doc: Document) -> dict[str, Any]:
        out: dict[str, Any] = {"meta": doc.meta, _EMBEDDED: doc.embedding is not None}
        if doc.blob is not None:
            out["_blob"] = {"data": base64.b64encode(doc.blob.data).decode(), "mime_type": doc.blob.mime_type,
                            "meta": doc.blob.meta}
        if doc.sparse_embedding is not None:
            out["_sparse"] = doc.sparse_embedding.to_dict()
        return out

    @staticmethod
    def _document(record: dict[str, Any], score: float | None = None) -> Document:
        meta = record.get("metadata") or {}
        blob = meta.get("_blob")
        return Document(id=record["id"], content=record.get("document"), meta=meta.get("meta") or {},
                        embedding=record["embedding"] if meta.get(_EMBEDDED) and "embedding" in record else None,
                        blob=None if blob is None else ByteStream(base64.b64decode(blob["data"]),
                                                                  mime_type=blob["mime_type"], meta=blob["meta"]),
                        sparse_embedding=SparseEmbedding.from_dict(meta["_sparse"]) if "_sparse" in meta else None,
                        score=score)

    def _with_embedding(self, filters: dict[str, Any] | None) -> dict[str, Any]:
        where = filters_to_where(filters)
        embedded = {_EMBEDDED: True}
        return embedded if where is None else {"$and": [embedded, where]}

    def _score(self, hit: dict[str, Any]) -> float:
        if "score" in hit:
            return float(hit["score"])
        return -float(hit["distance"]) if self.metric == "l2" else 1.0 - float(hit["distance"])

    # ---- retrieval (used by the retriever components) ------------------------------------------------------------
    def embedding_retrieval(self, query_embedding: list[float], *, filters: dict[str, Any] | None = None,
                            top_k: int = 10, return_embedding: bool = False) -> list[Document]:
        """The ``top_k`` documents nearest to ``query_embedding``, scored by similarity (the inner product, or
        the cosine; minus the squared distance for l2)."""
        include = _INCLUDE[:2] + ["distances"] + (["embeddings"] if return_embedding else [])
        hits = self.collection.search(np.asarray(query_embedding, np.float32), k=top_k,
                                      where=self._with_embedding(filters), include=include)
        return [self._document(h, self._score(h)) for h in hits]

    def bm25_retrieval(self, query: str, *, filters: dict[str, Any] | None = None, top_k: int = 10
                       ) -> list[Document]:
        """The ``top_k`` documents best matching ``query`` by BM25, scored by it."""
        hits = self.collection.search(text=query, k=top_k, where=filters_to_where(filters), mode="bm25",
                                      include=_INCLUDE[:2])
        return [self._document(h, self._score(h)) for h in hits]

    def hybrid_retrieval(self, query: str, query_embedding: list[float], *, filters: dict[str, Any] | None = None,
                         top_k: int = 10, fusion: str = "rrf", alpha: float = 0.5) -> list[Document]:
        """BM25 and embedding lists fused (``fusion`` "rrf", or "linear" with the dense weight ``alpha``)."""
        hits = self.collection.search(np.asarray(query_embedding, np.float32), k=top_k, text=query,
                                      mode="hybrid", fusion=fusion, alpha=alpha,
                                      where=self._with_embedding(filters), include=_INCLUDE[:2])
        return [self._document(h, self._score(h)) for h in hits]


class _StoreRetriever:
    """What the retrievers share: their parameters, and (de)serialisation with their document store."""

    document_store: SimdexDocumentStore
    _params: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, document_store=self.document_store.to_dict(),
                               **{name: getattr(self, name) for name in self._params})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        data["init_parameters"]["document_store"] = SimdexDocumentStore.from_dict(
            data["init_parameters"]["document_store"])
        return default_from_dict(cls, data)


@component
class SimdexEmbeddingRetriever(_StoreRetriever):
    """Retrieves the documents nearest to a query embedding from a :class:`SimdexDocumentStore`."""

    _params = ("filters", "top_k", "return_embedding")

    def __init__(self, document_store: SimdexDocumentStore, *, filters: dict[str, Any] | None = None,
                 top_k: int = 10, return_embedding: bool = False) -> None:
        self.document_store, self.filters, self.top_k, self.return_embedding = document_store, filters, top_k, \
            return_embedding

    @component.output_types(documents=list[Document])
    def run(self, query_embedding: list[float], filters: dict[str, Any] | None = None, top_k: int | None = None
            ) -> dict[str, list[Document]]:
        return {"documents": self.document_store.embedding_retrieval(
            query_embedding, filters=filters or self.filters, top_k=top_k or self.top_k,
            return_embedding=self.return_embedding)}


@component
class SimdexBM25Retriever(_StoreRetriever):
    """Retrieves the documents best matching a query text by BM25 from a :class:`SimdexDocumentStore`."""

    _params = ("filters", "top_k")

    def __init__(self, document_store: SimdexDocumentStore, *, filters: dict[str, Any] | None = None,
                 top_k: int = 10) -> None:
        self.document_store, self.filters, self.top_k = document_store, filters, top_k

    @component.output_types(documents=list[Document])
    def run(self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None
            ) -> dict[str, list[Document]]:
        return {"documents": self.document_store.bm25_retrieval(query, filters=filters or self.filters,
                                                                top_k=top_k or self.top_k)}


@component
class SimdexHybridRetriever(_StoreRetriever):
    """Retrieves documents by BM25 and by embedding at once, the two lists fused in the database (reciprocal rank
    fusion by default), from a :class:`SimdexDocumentStore`."""

    _params = ("filters", "top_k", "fusion", "alpha")

    def __init__(self, document_store: SimdexDocumentStore, *, filters: dict[str, Any] | None = None,
                 top_k: int = 10, fusion: str = "rrf", alpha: float = 0.5) -> None:
        self.document_store, self.filters, self.top_k, self.fusion, self.alpha = document_store, filters, top_k, \
            fusion, alpha

    @component.output_types(documents=list[Document])
    def run(self, query: str, query_embedding: list[float], filters: dict[str, Any] | None = None,
            top_k: int | None = None) -> dict[str, list[Document]]:
        return {"documents": self.document_store.hybrid_retrieval(
            query, query_embedding, filters=filters or self.filters, top_k=top_k or self.top_k,
            fusion=self.fusion, alpha=self.alpha)}


@component
class SimdexTextEmbedder:
    """Embeds a query text with a simdex embedder (``"minilm"``: built in, all-MiniLM-L6-v2, offline;
    ``"st:<model>"``: sentence-transformers)."""

    def __init__(self, model: str = "minilm") -> None:
        self.model = model
        self._embedder: Any = None

    def warm_up(self) -> None:
        if self._embedder is None:
            from ..embed import get_embedder
            self._embedder = get_embedder(self.model)

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, list[float]]:
        self.warm_up()
        return {"embedding": self._embedder([text], progress=False)[0].tolist()}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, model=self.model)


@component
class SimdexDocumentEmbedder(SimdexTextEmbedder):
    """Embeds documents' content with a simdex embedder (see :class:`SimdexTextEmbedder`), for writing them to a
    :class:`SimdexDocumentStore`."""

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, list[Document]]:  # type: ignore[override]
        self.warm_up()
        vectors = self._embedder([d.content or "" for d in documents], progress=False) if documents else []
        return {"documents": [replace(d, embedding=v.tolist()) for d, v in zip(documents, vectors)]}
