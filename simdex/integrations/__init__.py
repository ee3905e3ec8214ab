"""simdex inside RAG frameworks: each module adapts a simdex collection (embedded, or remote through
:class:`simdex.Client`) to one framework's store interface.

- :mod:`simdex.integrations.langchain`: ``SimdexVectorStore``, a LangChain ``VectorStore`` (extra
  ``simdex[langchain]``);
- :mod:`simdex.integrations.llamaindex`: ``SimdexLlamaVectorStore``, a LlamaIndex vector store (extra
  ``simdex[llamaindex]``);
- :mod:`simdex.integrations.haystack`: ``SimdexDocumentStore`` and the embedding, BM25 and hybrid retriever
  components, for Haystack 2 (extra ``simdex[haystack]``).

The modules import their framework on import; this package imports none of them.
"""
