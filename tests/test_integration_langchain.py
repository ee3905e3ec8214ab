"""The LangChain store (simdex.integrations.langchain) under LangChain's own conformance suite,
``langchain_tests.integration_tests.VectorStoreIntegrationTests`` (sync and async halves), unmodified: once over an
embedded database and once through simdex.Client against a live server; plus what the suite does not check
(filters, scores, MMR, the collection's own embedder, bad input) on WordNet glosses."""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import simdex
from simdex.integrations.langchain import SimdexVectorStore


class TestEmbeddedStore(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path):
        store = SimdexVectorStore.connect(self.get_embeddings(), path=str(tmp_path / "db"))
        try:
            yield store
        finally:
            store.close()


class TestServerStore(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, live_server, request):
        name = f"t{zlib.crc32(request.node.name.encode())}"  # a fresh, empty collection per test
        store = SimdexVectorStore.connect(self.get_embeddings(), url=live_server.url, collection_name=name)
        try:
            yield store
        finally:
            store.collection._client.drop_collection(name)


class FixedEmbeddings(Embeddings):
    """The WordNet glosses' own all-MiniLM-L6-v2 vectors, looked up by text (queries: the held-out glosses)."""

    def __init__(self, texts, vectors):
        self.vector_of = dict(zip(texts, vectors))

    def embed_documents(self, texts):
        return [self.vector_of[t].tolist() for t in texts]

    def embed_query(self, text):
        return self.vector_of[text].tolist()


@pytest.fixture(scope="module")
def glosses(wordnet_small):
    from simdex import datasets
    _, metas, docs = datasets.wordnet_records()
    n = 400
    texts = docs[:n]
    return texts, np.ascontiguousarray(wordnet_small.base[:n], np.float32), [{"pos": m["pos"]} for m in metas[:n]]


@pytest.fixture(params=["embedded", "server"])
def store_and_data(request, tmp_path, glosses, live_server):
    texts, vectors, metas = glosses
    embedding = FixedEmbeddings(texts, vectors)
    where = {"path": str(tmp_path / "db")} if request.param == "embedded" else \
        {"url": live_server.url, "collection_name": f"g{zlib.crc32(request.node.name.encode())}"}
    store = SimdexVectorStore.from_texts(texts, embedding, metas, ids=[f"g{i}" for i in range(len(texts))], **where)
    try:
        yield store, texts, vectors, metas
    finally:
        if request.param == "server":
            store.collection._client.drop_collection(where["collection_name"])
        store.close()


def test_search_filters_and_scores_match_brute_force(store_and_data):
    store, texts, vectors, metas = store_and_data
    q = 7
    sims = vectors @ vectors[q]
    verbs = np.array([m["pos"] == "verb" for m in metas])
    truth = [f"g{i}" for i in np.argsort(-sims)[:5]]
    truth_verbs = [f"g{i}" for i in np.flatnonzero(verbs)[np.argsort(-sims[verbs])[:5]]]
    assert [d.id for d in store.similarity_search(texts[q], k=5)] == truth
    hits = store.similarity_search_with_score(texts[q], k=5, filter={"pos": "verb"})
    assert [d.id for d, _ in hits] == truth_verbs
    for doc, distance in hits:
        i = int(doc.id[1:])
        assert doc.page_content == texts[i] and doc.metadata == metas[i]
        assert distance == pytest.approx(1 - sims[i], abs=1e-5)  # cosine distance
    relevance = store.similarity_search_with_relevance_scores(texts[q], k=3)
    assert relevance[0][1] == pytest.approx(1.0, abs=1e-5) and relevance[0][1] >= relevance[2][1]
    by_vector = store.similarity_search_by_vector(vectors[q].tolist(), k=5)
    assert [d.id for d in by_vector] == truth
    retriever = store.as_retriever(search_kwargs={"k": 2, "filter": {"pos": "verb"}})
    assert [d.id for d in retriever.invoke(texts[q])] == truth_verbs[:2]


def test_mmr_trades_relevance_for_diversity(store_and_data):
    store, texts, vectors, _ = store_and_data
    q = 11
    plain = store.similarity_search(texts[q], k=4)
    mmr = store.max_marginal_relevance_search(texts[q], k=4, fetch_k=30, lambda_mult=0.3)
    assert mmr[0].id == plain[0].id == f"g{q}"  # the query's own gloss is the most relevant either way
    chosen = np.array([vectors[int(d.id[1:])] for d in mmr])
    nearest = np.array([vectors[int(d.id[1:])] for d in plain])
    off = ~np.eye(4, dtype=bool)
    assert (chosen @ chosen.T)[off].mean() < (nearest @ nearest.T)[off].mean()  # less alike among themselves
    only_relevance = store.max_marginal_relevance_search(texts[q], k=4, fetch_k=30, lambda_mult=1.0)
    assert [d.id for d in only_relevance] == [d.id for d in plain]


def test_get_delete_and_bad_input_change_nothing(store_and_data):
    store, texts, vectors, metas = store_and_data
    assert [d.id for d in store.get_by_ids(["g3", "missing", "g1"])] == ["g3", "g1"]
    count = store.collection.count()
    with pytest.raises(simdex.InvalidInputError, match="metadatas\\[0\\]"):  # not JSON: named, nothing stored
        store.add_texts([texts[0]], [{"when": object()}], ids=["bad"])
    with pytest.raises(simdex.InvalidInputError, match="operator"):
        store.similarity_search(texts[0], k=2, filter={"pos": {"$like": "v%"}})
    with pytest.raises(TypeError):
        store.add_texts([texts[0]], ids=[17])
    with pytest.raises(simdex.InvalidInputError, match="one each per text"):
        store.add_texts(texts[:2], ids=["only-one"])
    assert store.collection.count() == count and store.get_by_ids(["bad"]) == []
    store.delete(["g3", "not-there"])
    assert store.get_by_ids(["g3"]) == [] and store.collection.count() == count - 1
    store.delete(where={"pos": "verb"})
    assert store.collection.count() == count - 1 - sum(m["pos"] == "verb" for i, m in enumerate(metas) if i != 3)
    store.delete()  # LangChain's "ids=None deletes all"
    assert store.collection.count() == 0


def test_collection_embedder_receives_text(tmp_path):
    """Without a LangChain Embeddings the collection's own embedder embeds documents and queries."""
    from .test_collection_api import WORDS
    with simdex.connect(tmp_path / "db", embedders={"hash-words": WORDS}) as db:
        collection = db.create_collection("c", embedder=WORDS)
        store = SimdexVectorStore(collection)
        store.add_documents([Document(page_content="red apples and green pears", id="fruit"),
                             Document(page_content="fast cars on a wet road", id="cars")])
        assert store.similarity_search("green pears", k=1)[0].id == "fruit"
        assert store.max_marginal_relevance_search("wet road", k=1)[0].id == "cars"
        with pytest.raises(simdex.InvalidInputError, match="no embedder"):
            SimdexVectorStore(db.create_collection("plain", 8))


async def test_remote_async_methods_are_async_http(live_server, glosses, monkeypatch):
    """Over a server the async methods send their own requests (simdex.AsyncClient), never the sync client's
    (which would block the event loop); many run at once."""
    texts, vectors, metas = glosses
    store = SimdexVectorStore.connect(FixedEmbeddings(texts, vectors), url=live_server.url, collection_name="aio",
                                      dim=vectors.shape[1])

    def blocking(*args, **kwargs):
        raise AssertionError("an async method called the synchronous client")

    for verb in ("upsert", "search", "get", "delete"):
        monkeypatch.setattr(store.collection, verb, blocking)
    assert await store.aadd_texts(texts[:50], metas[:50], ids=[f"g{i}" for i in range(50)]) == \
        [f"g{i}" for i in range(50)]
    found = await asyncio.gather(*(store.asimilarity_search(texts[i], k=1) for i in range(20)))
    assert [docs[0].id for docs in found] == [f"g{i}" for i in range(20)]
    (doc, distance), = await store.asimilarity_search_with_score(texts[3], k=1, filter={"pos": metas[3]["pos"]})
    assert doc.id == "g3" and doc.metadata == metas[3] and distance == pytest.approx(0, abs=1e-5)
    assert (await store.asimilarity_search_by_vector(vectors[4].tolist(), k=1))[0].id == "g4"
    assert [d.id for d in await store.aget_by_ids(["g7", "nope", "g1"])] == ["g7", "g1"]
    await store.adelete(["g7", "nope"])
    assert await store.aget_by_ids(["g7"]) == []
