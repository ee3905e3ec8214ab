"""The Haystack store (simdex.integrations.haystack) under Haystack's own conformance suite,
``haystack.testing.document_store.DocumentStoreBaseTests`` (count, write with the duplicate policies, delete, and
every filter test), unmodified, embedded and through a server; plus the retrievers against brute force on WordNet
glosses."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from haystack import Document, Pipeline
from haystack.document_stores.types import DuplicatePolicy
from haystack.errors import FilterError
from haystack.testing.document_store import DocumentStoreBaseTests

import simdex
from simdex.integrations.haystack import (SimdexBM25Retriever, SimdexDocumentStore,
                                          SimdexEmbeddingRetriever, SimdexHybridRetriever)


class _Comparison:
    def assert_documents_are_equal(self, received, expected):
        """Haystack's own comparison, with the two differences its docstring asks a store to declare: documents
        come back in id order (not in the order written), and embeddings as float32 (the suite writes float64)."""
        def key(docs):
            return sorted(docs, key=lambda d: d.id)
        received, expected = key(received), key(expected)
        assert [d.id for d in received] == [d.id for d in expected]
        for r, e in zip(received, expected):
            assert (r.embedding is None) == (e.embedding is None)
            if e.embedding is not None:
                assert np.allclose(r.embedding, e.embedding, rtol=1e-6, atol=1e-7)
            assert r.to_dict(flatten=False) | {"embedding": None} == e.to_dict(flatten=False) | {"embedding": None}

    def test_write_documents(self, document_store):
        """The default policy (NONE) is FAIL, as in Haystack's in-memory store."""
        doc = Document(content="test doc", embedding=[0.5] * 768)
        assert document_store.write_documents([doc]) == 1
        with pytest.raises(Exception, match="already stored"):
            document_store.write_documents([doc])
        self.assert_documents_are_equal(document_store.filter_documents(), [doc])


class TestEmbeddedStore(_Comparison, DocumentStoreBaseTests):
    @pytest.fixture
    def document_store(self, tmp_path):
        store = SimdexDocumentStore(path=str(tmp_path / "db"), embedding_dim=768)
        yield store
        store.close()


class TestServerStore(_Comparison, DocumentStoreBaseTests):
    @pytest.fixture
    def document_store(self, live_server, request):
        name = f"h{zlib.crc32(request.node.name.encode())}"
        store = SimdexDocumentStore(url=live_server.url, collection_name=name, embedding_dim=768)
        yield store
        store._database.drop_collection(name)


@pytest.fixture(scope="module")
def glosses(wordnet_small):
    from simdex import datasets
    _, metas, docs = datasets.wordnet_records()
    n = 300
    vectors = np.ascontiguousarray(wordnet_small.base[:n], np.float32)
    documents = [Document(id=f"g{i}", content=docs[i], meta={"pos": metas[i]["pos"]}, embedding=vectors[i].tolist())
                 for i in range(n)]
    return documents, vectors


def test_retrievers_against_brute_force(tmp_path, glosses):
    documents, vectors = glosses
    store = SimdexDocumentStore(path=str(tmp_path / "db"), embedding_dim=384)
    store.write_documents(documents + [Document(id="no-vector", content=documents[5].content)])
    q = 5
    sims = vectors @ vectors[q]
    verbs = np.flatnonzero([d.meta["pos"] == "verb" for d in documents])
    found = SimdexEmbeddingRetriever(store, top_k=4).run(query_embedding=vectors[q].tolist())["documents"]
    assert [d.id for d in found] == [f"g{i}" for i in np.argsort(-sims)[:4]]  # never the one without a vector
    assert found[0].score == pytest.approx(sims[q], abs=1e-5) and found[0].embedding is None
    only_verbs = {"field": "meta.pos", "operator": "==", "value": "verb"}
    found = SimdexEmbeddingRetriever(store, top_k=3, filters=only_verbs).run(query_embedding=vectors[q].tolist())
    assert [d.id for d in found["documents"]] == [f"g{i}" for i in verbs[np.argsort(-sims[verbs])[:3]]]
    bm25 = SimdexBM25Retriever(store, top_k=3).run(query=documents[q].content)["documents"]
    assert {d.id for d in bm25[:2]} == {f"g{q}", "no-vector"}  # the same text, both kept by BM25
    hybrid = SimdexHybridRetriever(store, top_k=3).run(query=documents[q].content,
                                                        query_embedding=vectors[q].tolist())["documents"]
    assert hybrid[0].id == f"g{q}" and all(d.id != "no-vector" for d in hybrid)
    pipeline = Pipeline()  # serialisable like any Haystack component
    pipeline.add_component("retriever", SimdexBM25Retriever(store, top_k=2))
    again = Pipeline.loads(pipeline.dumps(), allowed_modules=["simdex.integrations.haystack"])
    assert [d.id for d in again.run({"retriever": {"query": documents[q].content}})["retriever"]["documents"]] == \
        [d.id for d in bm25[:2]]
    store.close()


def test_bad_input_changes_nothing(tmp_path, glosses):
    documents, _ = glosses
    store = SimdexDocumentStore(path=str(tmp_path / "db"), embedding_dim=384)
    store.write_documents(documents[:10])
    with pytest.raises(simdex.InvalidInputError, match="384"):
        store.write_documents([Document(content="short", embedding=[0.1, 0.2])], policy=DuplicatePolicy.OVERWRITE)
    with pytest.raises(FilterError, match="unknown comparison operator"):
        store.filter_documents({"field": "meta.pos", "operator": "~=", "value": "n"})
    with pytest.raises(FilterError, match="meta"):
        store.filter_documents({"field": "content", "operator": "==", "value": "x"})
    assert store.write_documents(documents[:12], policy=DuplicatePolicy.SKIP) == 2
    assert store.count_documents() == 12
    store.close()
