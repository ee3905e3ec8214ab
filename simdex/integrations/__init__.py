"""simdex inside RAG frameworks: each module adapts a simdex collection (embedded, or remote through
:class:`simdex.Client`) to one framework's store interface.

- :mod:`simdex.integrations.langchain`: ``SimdexVectorStore``, a LangChain ``VectorStore`` (extra
  ``simdex[langchain]``);
- :mod:`simdex.integrations.llamaindex`: ``SimdexLlamaVectorStore``, a LlamaIndex vector store (extra
  ``simdex[llamaindex]``).

The modules import their framework on import; this package imports none of them.
"""
