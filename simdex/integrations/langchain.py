"""LangChain ``VectorStore`` over a simdex collection (``pip install simdex[langchain]``).

>>> store = SimdexVectorStore.connect(embedding, path="./data", collection_name="docs")   # or url=..., api_key=...
>>> store.add_texts(["a large wild cat", "a small domestic cat"], [{"pos": "noun"}, {"pos": "noun"}])
>>> store.similarity_search("tiger", k=1, filter={"pos": "noun"})

Records are ``(id, vector, metadata, document)``: a LangChain ``Document`` is the record's document
(``page_content``), metadata and id. Texts are embedded by the LangChain ``Embeddings`` given, or, when none is
given, by the collection's own embedder (then only text crosses to the collection). ``filter`` is a simdex ``where``
(``{"pos": "noun"}``, ``{"year": {"$gte": 2020}}``, ...). Scores of ``similarity_search_with_score`` are simdex
distances (smaller is closer); ``similarity_search_with_relevance_scores`` turns them into [0, 1]. Re-adding an id
overwrites its record. Async methods: over a server they are real async HTTP (:class:`simdex.AsyncClient`); in
process they run the sync ones on a worker thread (LangChain's default).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from ..errors import InvalidInputError
from ._target import async_collection, open_database, release_database

_INCLUDE = ["metadatas", "documents", "distances"]


class SimdexEmbeddings(Embeddings):
    """A simdex embedder as LangChain ``Embeddings``: ``"minilm"`` (built in, all-MiniLM-L6-v2, offline),
    ``"st:<model>"`` (sentence-transformers) or a :class:`simdex.embed.Embedder`."""

    def __init__(self, model: Any = "minilm") -> None:
        from ..embed import get_embedder
        self.model = get_embedder(model)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model(list(texts), progress=False).tolist() if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self.model([text], progress=False)[0].tolist()


class SimdexVectorStore(VectorStore):
    """A LangChain vector store over the simdex collection ``collection`` (a
    :class:`~simdex.store.Collection` or a :class:`~simdex.server.client.RemoteCollection`). ``embedding`` embeds
    texts and queries; without one the collection's own embedder does (it must have one)."""

    def __init__(self, collection: Any, embedding: Embeddings | None = None, *, owner: Any = None) -> None:
        self.collection = collection
        self._embedding = embedding
        self._owner = owner  # a database connect() opened, let go of by close()
        self._aio: tuple[Any, Any] | None = None  # (event loop, the collection through AsyncClient)
        stats = collection.stats()
        self.metric: str = stats["metric"]
        if embedding is None and stats.get("embedder") is None:
            raise InvalidInputError(f"collection {collection.name!r} has no embedder: give a LangChain Embeddings "
                                    f"(or create the collection with embedder='minilm')")

    # ---- opening -------------------------------------------------------------------------------------------------
    @classmethod
    def connect(cls, embedding: Embeddings | None = None, *, path: str | None = None, url: str | None = None,
                api_key: str | None = None, collection_name: str = "langchain", metric: str = "cosine",
                dim: int | None = None, **collection_options: Any) -> SimdexVectorStore:
        """The store over collection ``collection_name`` of the embedded database at ``path`` or of the server at
        ``url``, created when missing (of dimension ``dim``, by default that of ``embedding``'s vectors, else of the
        collection's embedder:
        ``embedder="minilm"`` in ``collection_options``, which also take ``index``, ``text``, ``dedup``...)."""
        db = open_database(path, url, api_key)
        try:
            names = db.list_collections()
            if collection_name in names:
                collection = db.get_collection(collection_name)
            else:
                if dim is None and embedding is not None:
                    dim = len(embedding.embed_query("dimension"))
                collection = db.create_collection(collection_name, dim, metric, **collection_options)
            return cls(collection, embedding, owner=db)
        except BaseException:
            release_database(db)
            raise

    def close(self) -> None:
        """Let go of the database :meth:`connect` opened (closed when no other store in the process uses it);
        nothing for a store made from a collection."""
        if self._owner is not None:
            release_database(self._owner)
            self._owner = None

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings | None = None,
                   metadatas: list[dict] | None = None, *, ids: list[str] | None = None, **kwargs: Any
                   ) -> SimdexVectorStore:
        """A store (see :meth:`connect` for ``path``/``url``/``collection_name``/...) holding ``texts``."""
        texts = list(texts)
        vectors = None if embedding is None or not texts else np.asarray(embedding.embed_documents(texts),
                                                                          np.float32)
        if vectors is not None:
            kwargs.setdefault("dim", vectors.shape[1])
        store = cls.connect(embedding, **kwargs)
        store._add(texts, metadatas, ids, vectors)
        return store

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    # ---- writes --------------------------------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Embed and store ``texts``; ``ids`` (default: new UUIDs; None entries get one too) overwrite records of
        the same id. Returns the ids."""
        return self._add(list(texts), metadatas, ids, None, **kwargs)

    @staticmethod
    def _records(texts: list[str], metadatas: list[dict] | None, ids: list[str] | None
                 ) -> tuple[list[str], list[dict] | None]:
        """The ids (new UUIDs where missing) and metadata copies of a batch, checked for one of each per text."""
        ids = [str(uuid.uuid4()) for _ in texts] if ids is None else [str(uuid.uuid4()) if i is None else i
                                                                      for i in ids]
        if len(ids) != len(texts) or (metadatas is not None and len(metadatas) != len(texts)):
            raise InvalidInputError(f"got {len(texts)} texts, {len(ids)} ids and "
                                    f"{'no' if metadatas is None else len(metadatas)} metadatas: one each per text")
        return ids, None if metadatas is None else [dict(m) for m in metadatas]

    def _add(self, texts: list[str], metadatas: list[dict] | None, ids: list[str] | None,
             vectors: np.ndarray | None, **kwargs: Any) -> list[str]:
        ids, metadatas = self._records(texts, metadatas, ids)
        if not texts:
            return []
        if vectors is None and self._embedding is not None:
            vectors = np.asarray(self._embedding.embed_documents(texts), np.float32)
        self.collection.upsert(ids, vectors, metadatas, texts, **kwargs)
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the records ``ids`` (unknown ones are ignored), those matching ``where=``, or, with neither,
        every record (LangChain's convention)."""
        self.collection.delete(ids, self._delete_where(ids, kwargs), missing_ok=True)
        return True

    @staticmethod
    def _delete_where(ids: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        where = kwargs.get("where")
        return {} if ids is None and where is None else where

    # ---- reads ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _document(hit: dict[str, Any]) -> Document:
        return Document(page_content=hit.get("document") or "", metadata=hit.get("metadata") or {}, id=hit["id"])

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents of ``ids`` that exist, in the order given."""
        return [self._document(r) for r in self.collection.get(list(ids), include=["metadatas", "documents"])]

    def _query_vector(self, query: str) -> np.ndarray | None:
        return None if self._embedding is None else np.asarray(self._embedding.embed_query(query), np.float32)

    def _search(self, query: str | None, vector: Any, k: int, filter: dict | None, **kwargs: Any
                ) -> list[dict[str, Any]]:
        if vector is None:
            vector = self._query_vector(query)
        if vector is None:  # the collection embeds the text itself
            return self.collection.search(text=query, k=k, where=filter, include=_INCLUDE, mode="dense", **kwargs)
        return self.collection.search(np.asarray(vector, np.float32), k=k, where=filter, include=_INCLUDE,
                                      **kwargs)

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
                          ) -> list[Document]:
        """The ``k`` documents nearest to ``query`` (among those matching the simdex ``where`` ``filter``).
        Extra keywords go to ``Collection.search`` (e.g. ``ef``)."""
        return [self._document(h) for h in self._search(query, None, k, filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
                                     ) -> list[tuple[Document, float]]:
        """:meth:`similarity_search` with each document's distance (smaller is closer)."""
        return [(self._document(h), float(h["distance"])) for h in self._search(query, None, k, filter, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [self._document(h) for h in self._search(None, embedding, k, filter, **kwargs)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: dict | None = None, **kwargs: Any
                                               ) -> list[tuple[Document, float]]:
        return [(self._document(h), float(h["distance"])) for h in self._search(None, embedding, k, filter,
                                                                                 **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """simdex distances to LangChain's [0, 1] relevance: cosine and ip distances are ``1 - similarity``; l2 is
        the squared distance."""
        if self.metric == "l2":
            return lambda d: self._euclidean_relevance_score_fn(math.sqrt(max(d, 0.0)))
        return self._cosine_relevance_score_fn

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict | None = None,
                                                **kwargs: Any) -> list[Document]:
        """``k`` documents chosen from the ``fetch_k`` nearest for relevance and diversity (MMR;
        ``lambda_mult`` 1 is relevance only, 0 diversity only)."""
        query = np.asarray(embedding, np.float32)
        hits = self.collection.search(query, k=fetch_k, where=filter, include=_INCLUDE + ["embeddings"], **kwargs)
        if not hits:
            return []
        chosen = maximal_marginal_relevance(query, [h["embedding"] for h in hits], lambda_mult=lambda_mult, k=k)
        return [self._document(hits[i]) for i in chosen]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict | None = None, **kwargs: Any) -> list[Document]:
        vector = self._query_vector(query)
        if vector is None:  # the collection's embedder: the query vector is its embedding of the text
            model = getattr(self.collection, "embedder", None)  # in process only
            vector = None if model is None else np.asarray(model([query], progress=False)[0], np.float32)
        if vector is None:
            raise InvalidInputError("max_marginal_relevance_search over a remote collection without a LangChain "
                                    "Embeddings needs a vector: use max_marginal_relevance_search_by_vector")
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter, **kwargs)

    # ---- async: real async HTTP over a server ----------------------------------------------------------------------
    def _async_collection(self) -> Any:
        """The collection through :class:`simdex.AsyncClient` when it is remote (one per event loop: an HTTP pool
        belongs to the loop it was made in); None in process."""
        from ..server.client import RemoteCollection
        if not isinstance(self.collection, RemoteCollection):
            return None
        self._aio = async_collection(self._aio, self.collection._client, self.collection.name)
        return self._aio[1]

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        remote = self._async_collection()
        if remote is None:
            return await super().aadd_texts(texts, metadatas, ids=ids, **kwargs)
        texts = list(texts)
        ids, metadatas = self._records(texts, metadatas, ids)
        if not texts:
            return []
        vectors = None if self._embedding is None else \
            np.asarray(await self._embedding.aembed_documents(texts), np.float32)
        await remote.upsert(ids, vectors, metadatas, texts, **kwargs)
        return ids

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        remote = self._async_collection()
        if remote is None:
            return await super().adelete(ids, **kwargs)
        await remote.delete(ids, self._delete_where(ids, kwargs), missing_ok=True)
        return True

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        remote = self._async_collection()
        if remote is None:
            return await super().aget_by_ids(ids)
        return [self._document(r) for r in await remote.get(list(ids), include=["metadatas", "documents"])]

    async def _asearch(self, remote: Any, query: str | None, vector: Any, k: int, filter: dict | None,
                       **kwargs: Any) -> list[dict[str, Any]]:
        if vector is None and self._embedding is not None:
            vector = await self._embedding.aembed_query(query)
        if vector is None:
            return await remote.search(text=query, k=k, where=filter, include=_INCLUDE, mode="dense", **kwargs)
        return await remote.search(np.asarray(vector, np.float32), k=k, where=filter, include=_INCLUDE, **kwargs)

    async def asimilarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
                                 ) -> list[Document]:
        remote = self._async_collection()
        if remote is None:
            return await super().asimilarity_search(query, k, filter=filter, **kwargs)
        return [self._document(h) for h in await self._asearch(remote, query, None, k, filter, **kwargs)]

    async def asimilarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        remote = self._async_collection()
        if remote is None:
            return await super().asimilarity_search_with_score(query, k, filter=filter, **kwargs)
        return [(self._document(h), float(h["distance"]))
                for h in await self._asearch(remote, query, None, k, filter, **kwargs)]

    async def asimilarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                           **kwargs: Any) -> list[Document]:
        remote = self._async_collection()
        if remote is None:
            return await super().asimilarity_search_by_vector(embedding, k, filter=filter, **kwargs)
        return [self._document(h) for h in await self._asearch(remote, None, embedding, k, filter, **kwargs)]
