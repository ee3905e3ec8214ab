"""The LlamaIndex store (simdex.integrations.llamaindex). LlamaIndex ships no conformance suite: these tests check
what its own store tests check (add, query against brute force, delete by ref_doc_id, get_nodes, delete_nodes,
clear, MetadataFilters with every operator and condition, hybrid and text queries), embedded and through a server,
and run VectorStoreIndex.from_documents(...) -> as_retriever().retrieve(...) end to end."""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (FilterCondition, FilterOperator, MetadataFilter,
                                                  MetadataFilters, VectorStoreQuery, VectorStoreQueryMode)

import simdex
from simdex.errors import UnsupportedOperationError
from simdex.integrations.llamaindex import SimdexLlamaVectorStore

N = 300


@pytest.fixture(scope="module")
def glosses(wordnet_small):
    from simdex import datasets
    _, metas, docs = datasets.wordnet_records()
    vectors = np.ascontiguousarray(wordnet_small.base[:N], np.float32)
    meta = [{"pos": metas[i]["pos"], "n_words": metas[i]["n_words"], "rank": i % 7} for i in range(N)]
    for i in range(0, N, 10):
        del meta[i]["rank"]  # some nodes lack the field (is_empty, != and nin see them)
    return docs[:N], vectors, meta


def _nodes(glosses):
    texts, vectors, metas = glosses
    nodes = []
    for i in range(N):
        node = TextNode(text=texts[i], id_=f"n{i}", embedding=vectors[i].tolist(), metadata=dict(metas[i]))
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i // 3}")  # 3 nodes a doc
        nodes.append(node)
    return nodes


@pytest.fixture(params=["embedded", "server"])
def store(request, tmp_path, live_server):
    if request.param == "embedded":
        s = SimdexLlamaVectorStore.connect(path=str(tmp_path / "db"), text=True)
    else:
        s = SimdexLlamaVectorStore.connect(url=live_server.url, text=True,
                                           collection_name=f"c{zlib.crc32(request.node.name.encode())}")
    yield s
    if request.param == "server" and s.client is not None:
        s._database.drop_collection(s.collection_name)
    s.close()


def _query(store, vector, k=5, **options):
    return store.query(VectorStoreQuery(query_embedding=vector.tolist(), similarity_top_k=k, **options))


def test_add_query_and_nodes_round_trip(store, glosses):
    texts, vectors, metas = glosses
    assert store.query(VectorStoreQuery(query_embedding=vectors[0].tolist(), similarity_top_k=3)).ids == []
    assert store.add(_nodes(glosses)) == [f"n{i}" for i in range(N)]
    q = 17
    sims = vectors @ vectors[q]
    result = _query(store, vectors[q])
    assert result.ids == [f"n{i}" for i in np.argsort(-sims)[:5]]
    assert np.allclose(result.similarities, np.sort(sims)[::-1][:5], atol=1e-5)
    node = result.nodes[0]
    assert node.node_id == f"n{q}" and node.get_content() == texts[q] and node.metadata == metas[q]
    assert node.ref_doc_id == f"doc{q // 3}" and node.embedding is None
    got = store.get_nodes([f"n{q}", "missing", "n2"])
    assert [n.node_id for n in got] == [f"n{q}", "n2"] and got[1].get_content() == texts[2]


def test_delete_by_document_nodes_and_clear(store, glosses):
    store.add(_nodes(glosses))
    store.delete("doc5")  # nodes n15, n16, n17
    assert [n.node_id for n in store.get_nodes(["n14", "n15", "n16", "n17", "n18"])] == ["n14", "n18"]
    store.delete_nodes(["n14", "never-there"])
    verbs = MetadataFilters(filters=[MetadataFilter(key="pos", value="verb")])
    store.delete_nodes(filters=verbs)
    assert store.get_nodes(filters=verbs) == []
    assert store.client.count() == N - 4 - sum(m["pos"] == "verb" for i, m in enumerate(glosses[2])
                                                if i not in (14, 15, 16, 17))
    store.clear()
    assert store.client.count() == 0


FILTERS = [
    (MetadataFilter(key="pos", value="noun"), lambda m: m["pos"] == "noun"),
    (MetadataFilter(key="pos", value="noun", operator=FilterOperator.NE), lambda m: m["pos"] != "noun"),
    (MetadataFilter(key="n_words", value=2, operator=FilterOperator.GT), lambda m: m["n_words"] > 2),
    (MetadataFilter(key="n_words", value=2, operator=FilterOperator.LTE), lambda m: m["n_words"] <= 2),
    (MetadataFilter(key="rank", value=[1, 3], operator=FilterOperator.IN), lambda m: m.get("rank") in (1, 3)),
    (MetadataFilter(key="rank", value=[1, 3], operator=FilterOperator.NIN), lambda m: m.get("rank") not in (1, 3)),
    (MetadataFilter(key="rank", value=None, operator=FilterOperator.IS_EMPTY), lambda m: "rank" not in m),
]


@pytest.mark.parametrize("condition", [FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT])
def test_metadata_filters_select_what_python_selects(store, glosses, condition):
    texts, vectors, metas = glosses
    store.add(_nodes(glosses))
    for (fa, pa), (fb, pb) in zip(FILTERS, FILTERS[1:] + FILTERS[:1]):
        if condition == FilterCondition.NOT:
            filters = MetadataFilters(filters=[fa], condition=condition)
            keep = [not pa(m) for m in metas]
        else:
            filters = MetadataFilters(filters=[fa, MetadataFilters(filters=[fb])], condition=condition)
            keep = [(pa(m) and pb(m)) if condition == FilterCondition.AND else (pa(m) or pb(m)) for m in metas]
        expect = {f"n{i}" for i in range(N) if keep[i]}
        assert {n.node_id for n in store.get_nodes(filters=filters)} == expect, (fa, fb, condition)
        allowed = np.flatnonzero(keep)
        if allowed.size:
            sims = vectors[allowed] @ vectors[0]
            truth = [f"n{i}" for i in allowed[np.argsort(-sims)[:3]]]
            assert _query(store, vectors[0], 3, filters=filters).ids == truth


def test_unsupported_operators_and_bad_input_are_refused(store, glosses):
    store.add(_nodes(glosses)[:20])
    for op in (FilterOperator.TEXT_MATCH, FilterOperator.CONTAINS, FilterOperator.ANY):
        value = ["x"] if op == FilterOperator.ANY else "x"
        with pytest.raises(UnsupportedOperationError, match=op.value):
            _query(store, glosses[1][0], filters=MetadataFilters(filters=[MetadataFilter(key="pos", value=value,
                                                                                           operator=op)]))
    with pytest.raises(UnsupportedOperationError, match="node_ids"):
        _query(store, glosses[1][0], node_ids=["n1"])
    with pytest.raises(simdex.InvalidInputError, match="no embedding"):
        store.add([TextNode(text="no vector", id_="x")])
    with pytest.raises(simdex.DimensionMismatchError):
        store.add([TextNode(text="short", id_="y", embedding=[0.1, 0.2])])
    assert store.client.count() == 20 and store.get_nodes(["x", "y"]) == []


def test_hybrid_and_text_queries(store, glosses):
    texts, vectors, _ = glosses
    store.add(_nodes(glosses))
    q = 42
    words = texts[q]
    bm25 = store.query(VectorStoreQuery(query_str=words, similarity_top_k=3, mode=VectorStoreQueryMode.TEXT_SEARCH))
    assert bm25.ids[0] == f"n{q}" and bm25.similarities[0] >= bm25.similarities[-1]
    hybrid = store.query(VectorStoreQuery(query_str=words, query_embedding=vectors[q].tolist(), similarity_top_k=3,
                                          mode=VectorStoreQueryMode.HYBRID, alpha=0.5))
    assert hybrid.ids[0] == f"n{q}"


class HashWords(BaseEmbedding):
    """Bag of hashed words (64-d): texts sharing words are near, with no model to download."""

    def _vector(self, text: str) -> list[float]:
        out = np.zeros(64)
        for word in text.lower().split():
            out[zlib.crc32(word.strip(".,;").encode()) % 64] += 1.0
        out[0] += 1e-3
        return (out / np.linalg.norm(out)).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


def test_vector_store_index_end_to_end(tmp_path, glosses):
    texts = glosses[0]
    store = SimdexLlamaVectorStore.connect(path=str(tmp_path / "db"), collection_name="glosses")
    documents = [Document(text=texts[i], id_=f"gloss{i}", metadata={"i": i}) for i in range(60)]
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=HashWords(),
        transformations=[SentenceSplitter(chunk_size=512, tokenizer=str.split)])
    hits = index.as_retriever(similarity_top_k=2).retrieve(texts[9])
    assert hits[0].node.ref_doc_id == "gloss9" and hits[0].node.get_content() == texts[9]
    assert 0.9 < hits[0].score <= 1.0 + 1e-6  # the node was embedded with its metadata line, the query without
    index.delete_ref_doc("gloss9")
    assert all(h.node.ref_doc_id != "gloss9" for h in index.as_retriever(similarity_top_k=5).retrieve(texts[9]))
    store.close()


async def test_remote_async_methods_are_async_http(live_server, glosses, monkeypatch):
    """Over a server, async_add / aquery / aget_nodes / adelete send their own requests (simdex.AsyncClient),
    never the synchronous client's."""
    texts, vectors, _ = glosses
    store = SimdexLlamaVectorStore.connect(url=live_server.url, collection_name="aio", text=True)
    nodes = _nodes(glosses)
    store.add(nodes[:3])  # creates the collection (synchronously, once)

    def blocking(*args, **kwargs):
        raise AssertionError("an async method called the synchronous client")

    for verb in ("upsert", "search", "get", "delete"):
        monkeypatch.setattr(store.client, verb, blocking)
    assert await store.async_add(nodes[3:]) == [f"n{i}" for i in range(3, N)]
    results = await asyncio.gather(*(store.aquery(VectorStoreQuery(query_embedding=vectors[i].tolist(),
                                                                   similarity_top_k=1)) for i in range(10)))
    assert [r.ids[0] for r in results] == [f"n{i}" for i in range(10)]
    text = await store.aquery(VectorStoreQuery(query_str=texts[8], similarity_top_k=1,
                                               mode=VectorStoreQueryMode.TEXT_SEARCH))
    assert text.ids == ["n8"]
    assert [n.node_id for n in await store.aget_nodes(["n4", "n1"])] == ["n4", "n1"]
    await store.adelete("doc1")  # n3, n4, n5
    assert [n.node_id for n in await store.aget_nodes(["n3", "n4", "n6"])] == ["n6"]
