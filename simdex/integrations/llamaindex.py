"""LlamaIndex vector store over a simdex collection (``pip install simdex[llamaindex]``).

>>> store = SimdexLlamaVectorStore.connect(path="./data", collection_name="docs")     # or url=..., api_key=...
>>> index = VectorStoreIndex.from_documents(documents, storage_context=StorageContext.from_defaults(
...     vector_store=store))
>>> index.as_retriever(similarity_top_k=3).retrieve("a large wild cat")

A node is a record: its id, embedding, text (the record's document) and, in the metadata, the node's own metadata
plus LlamaIndex's serialized node (``_node_content``, without the text) and ``ref_doc_id``, so that nodes come back
whole and ``delete(ref_doc_id)`` is a ``where``. The collection is created at the first ``add`` when it does not
exist (its dimension that of the nodes' embeddings). ``MetadataFilters`` become a simdex ``where``: ``==``, ``!=``,
``>``, ``>=``, ``<``, ``<=``, ``in``, ``nin`` and ``is_empty`` (absent or null), combined by ``and``, ``or`` and
``not``; the other operators raise :class:`~simdex.errors.UnsupportedOperationError` naming the operator. Query
modes: ``default`` (vector), ``hybrid`` (vector and BM25 fused; the collection needs ``text=True``) and
``text_search`` (BM25 alone). Over a server, ``async_add``, ``aquery``, ``adelete`` and ``aget_nodes`` are real
async HTTP (:class:`simdex.AsyncClient`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (BasePydanticVectorStore, FilterCondition, FilterOperator,
                                                  MetadataFilter, MetadataFilters, VectorStoreQuery,
                                                  VectorStoreQueryMode, VectorStoreQueryResult)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from ..errors import InvalidInputError, UnsupportedOperationError
from ._target import async_collection, open_database, release_database

_COMPARISONS = {FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt",
                FilterOperator.GTE: "$gte", FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte",
                FilterOperator.IN: "$in", FilterOperator.NIN: "$nin"}


class SimdexEmbedding(BaseEmbedding):
    """A simdex embedder as a LlamaIndex embedding model: ``"minilm"`` (built in, all-MiniLM-L6-v2, offline),
    ``"st:<model>"`` (sentence-transformers) or a :class:`simdex.embed.Embedder`."""

    _model: Any = PrivateAttr()

    def __init__(self, model: Any = "minilm", **kwargs: Any) -> None:
        from ..embed import get_embedder
        embedder = get_embedder(model)
        super().__init__(model_name=embedder.name, **kwargs)
        self._model = embedder

    @classmethod
    def class_name(cls) -> str:
        return "SimdexEmbedding"

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._model(list(texts), progress=False).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def filters_to_where(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """LlamaIndex ``MetadataFilters`` as a simdex ``where``; an operator simdex has no equivalent for raises
    UnsupportedOperationError naming it."""
    if filters is None or not filters.filters:
        return None
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            inner = filters_to_where(f)
            if inner is not None:
                parts.append(inner)
        elif isinstance(f, MetadataFilter):
            parts.append(_one_filter(f))
        else:
            raise InvalidInputError(f"unknown filter {f!r}")
    if not parts:
        return None
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.NOT:
        return {"$not": parts[0] if len(parts) == 1 else {"$and": parts}}
    if len(parts) == 1:
        return parts[0]
    return {"$and" if condition == FilterCondition.AND else "$or": parts}


def _one_filter(f: MetadataFilter) -> dict[str, Any]:
    op = FilterOperator(f.operator)
    if op in _COMPARISONS:
        value = f.value
        if op in (FilterOperator.IN, FilterOperator.NIN) and not isinstance(value, list):
            value = [value]
        return {f.key: {_COMPARISONS[op]: value}}
    if op == FilterOperator.IS_EMPTY:
        return {"$or": [{f.key: {"$exists": False}}, {f.key: None}]}
    raise UnsupportedOperationError(f"filter operator {op.value!r} (on {f.key!r}) has no simdex equivalent; use "
                                    f"{', '.join(o.value for o in _COMPARISONS)} or is_empty")


class SimdexLlamaVectorStore(BasePydanticVectorStore):
    """LlamaIndex's vector store protocol over simdex collection ``collection_name`` of ``database`` (a
    :class:`simdex.Database` or :class:`simdex.Client`). Use :meth:`connect` to open one by path or URL."""

    stores_text: bool = True
    flat_metadata: bool = False
    collection_name: str = "llamaindex"
    metric: str = "cosine"

    _database: Any = PrivateAttr()
    _collection: Any = PrivateAttr(default=None)
    _create_options: dict[str, Any] = PrivateAttr(default_factory=dict)
    _aio: Any = PrivateAttr(default=None)  # (event loop, the collection through AsyncClient)

    def __init__(self, database: Any, collection_name: str = "llamaindex", metric: str = "cosine",
                 **create_options: Any) -> None:
        super().__init__(collection_name=collection_name, metric=metric)
        self._database = database
        self._create_options = create_options
        if collection_name in database.list_collections():
            self._collection = database.get_collection(collection_name)

    @classmethod
    def connect(cls, *, path: str | None = None, url: str | None = None, api_key: str | None = None,
                collection_name: str = "llamaindex", metric: str = "cosine", **create_options: Any
                ) -> SimdexLlamaVectorStore:
        """The store over the embedded database at ``path`` or the server at ``url``; ``create_options`` go to
        ``create_collection`` when the first add creates the collection (``index``, ``text=True`` for hybrid
        and BM25 queries, ...)."""
        return cls(open_database(path, url, api_key), collection_name, metric, **create_options)

    @classmethod
    def class_name(cls) -> str:
        return "SimdexLlamaVectorStore"

    @property
    def client(self) -> Any:
        """The simdex collection (None until the first add creates it)."""
        return self._collection

    def close(self) -> None:
        """Let go of the database :meth:`connect` opened (closed when no other store in the process uses it)."""
        release_database(self._database)

    # ---- writes --------------------------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Store ``nodes`` (each with its embedding); a node id already stored is replaced. Returns the ids."""
        if not nodes:
            return []
        records = self._records(nodes)
        self._collection.upsert(*records)
        return records[0]

    def _records(self, nodes: Sequence[BaseNode]) -> tuple[list[str], np.ndarray, list[dict], list[str]]:
        """(ids, vectors, metadatas, texts) of ``nodes``; creates the collection on the first call."""
        missing = [n.node_id for n in nodes if n.embedding is None]
        if missing:
            raise InvalidInputError(f"node {missing[0]!r} has no embedding ({len(missing)} node(s) without one); "
                                    f"embed the nodes first (VectorStoreIndex does)")
        vectors = np.asarray([n.get_embedding() for n in nodes], np.float32)
        if self._collection is None:
            self._collection = self._database.get_or_create_collection(self.collection_name, vectors.shape[1],
                                                                       self.metric, **self._create_options)
        metadatas = [node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata) for n in nodes]
        texts = [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        return [n.node_id for n in nodes], vectors, metadatas, texts

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        if self._collection is not None:
            self._collection.delete(where={"ref_doc_id": ref_doc_id})

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        """Delete the nodes ``node_ids`` (unknown ones ignored) and/or those matching ``filters``."""
        where = filters_to_where(filters)
        if node_ids is None and where is None:
            raise InvalidInputError("delete_nodes needs node_ids or filters (clear() deletes everything)")
        if self._collection is not None:
            self._collection.delete(node_ids, where, missing_ok=True)

    def clear(self) -> None:
        """Delete every node."""
        if self._collection is not None:
            self._collection.delete(where={})

    # ---- reads ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _node(record: dict[str, Any]) -> BaseNode:
        return metadata_dict_to_node(record["metadata"], text=record.get("document") or "")

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
                  ) -> list[BaseNode]:
        """The nodes ``node_ids`` (in that order; unknown ones left out) and/or those matching ``filters``."""
        if self._collection is None:
            return []
        records = self._collection.get(node_ids, filters_to_where(filters), include=["metadatas", "documents"])
        return [self._node(r) for r in records]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nodes for ``query`` (its embedding, or its text in the text modes), among
        those matching its ``filters`` and ``doc_ids``. Similarities: ``1 - distance`` for the vector mode (the
        cosine similarity in a cosine collection), the fused or BM25 score in the text modes."""
        if query.node_ids:
            raise UnsupportedOperationError("restricting a query to node_ids is not supported by the simdex store; "
                                            "filter on metadata (or on doc_ids) instead")
        if self._collection is None:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        search = self._search_keywords(query)
        return self._result(self._collection.search(**search, **kwargs), search)

    def _search_keywords(self, query: VectorStoreQuery) -> dict[str, Any]:
        """The ``Collection.search`` keywords of ``query``."""
        where = filters_to_where(query.filters)
        if query.doc_ids:
            docs = {"ref_doc_id": {"$in": list(query.doc_ids)}}
            where = docs if where is None else {"$and": [where, docs]}
        out: dict[str, Any] = {"k": query.similarity_top_k, "where": where,
                               "include": ["metadatas", "documents", "distances"]}
        mode = VectorStoreQueryMode(query.mode)
        if mode == VectorStoreQueryMode.DEFAULT:
            if query.query_embedding is None:
                raise InvalidInputError("a default-mode query needs query_embedding")
            out["vector"] = np.asarray(query.query_embedding, np.float32)
        elif mode in (VectorStoreQueryMode.HYBRID, VectorStoreQueryMode.TEXT_SEARCH):
            if not query.query_str:
                raise InvalidInputError(f"a {mode.value} query needs query_str")
            out.update(text=query.query_str, mode="hybrid" if mode == VectorStoreQueryMode.HYBRID else "bm25")
            if mode == VectorStoreQueryMode.HYBRID and query.query_embedding is not None:
                out["vector"] = np.asarray(query.query_embedding, np.float32)
            if query.alpha is not None and mode == VectorStoreQueryMode.HYBRID:
                out.update(fusion="linear", alpha=float(query.alpha))
        else:
            raise UnsupportedOperationError(f"query mode {mode.value!r} is not supported by the simdex store; use "
                                            f"default, hybrid or text_search")
        return out

    def _result(self, hits: list[dict[str, Any]], search: dict[str, Any]) -> VectorStoreQueryResult:
        similarities = [h["score"] for h in hits] if "text" in search else [1.0 - h["distance"] for h in hits]
        return VectorStoreQueryResult(nodes=[self._node(h) for h in hits], similarities=similarities,
                                      ids=[h["id"] for h in hits])

    # ---- async: real async HTTP over a server ----------------------------------------------------------------------
    def _async_collection(self) -> Any:
        """The collection through :class:`simdex.AsyncClient` when the store is on a server and the collection
        exists (one per event loop); None otherwise."""
        from ..server.client import Client
        if not isinstance(self._database, Client) or self._collection is None:
            return None
        self._aio = async_collection(self._aio, self._database, self.collection_name)
        return self._aio[1]

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """:meth:`add`; over a server the write is an async request (creating the collection, the first time,
        is not)."""
        if not nodes:
            return []
        records = self._records(nodes)
        remote = self._async_collection()
        if remote is None:
            self._collection.upsert(*records)
        else:
            await remote.upsert(*records)
        return records[0]

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        remote = self._async_collection()
        if remote is None:
            return self.query(query, **kwargs)
        if query.node_ids:
            return self.query(query)  # raises, saying why
        search = self._search_keywords(query)
        return self._result(await remote.search(**search, **kwargs), search)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        remote = self._async_collection()
        if remote is None:
            self.delete(ref_doc_id, **delete_kwargs)
        else:
            await remote.delete(where={"ref_doc_id": ref_doc_id})

    async def aget_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
                         ) -> list[BaseNode]:
        remote = self._async_collection()
        if remote is None:
            return self.get_nodes(node_ids, filters)
        records = await remote.get(node_ids, filters_to_where(filters), include=["metadatas", "documents"])
        return [self._node(r) for r in records]
