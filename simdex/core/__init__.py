"""The search loops every index shares, written once, below :mod:`simdex.dense` and :mod:`simdex.quant`.

- :mod:`simdex.core.scorer`: how a loop scores one stored row (float32 vectors here; the codecs add theirs in
  :mod:`simdex.quant._scorers`), chosen when the loop is compiled.
- :mod:`simdex.core.beam`: the parts of a graph search (visited marks, the candidate pool, heaps, scratch).
- :mod:`simdex.core.graph`: greedy descent, beam search, filtered and range searches over HNSW and Vamana graphs.
- :mod:`simdex.core.lists`: probe selection and the scan of inverted lists (IVF, SPANN), with optional re-ranking.

This package imports only the ground floor (:mod:`simdex._numba`, :mod:`simdex._heap`, :mod:`simdex.metrics`).
"""
