"""The main job until the database lands: index real text embeddings, answer queries, report quality and speed.

Builds an HNSW index over the 107,659 WordNet gloss embeddings from ``../shared/data``, runs the 10,000 held-out
queries, and prints recall@10 against the published ground truth, batch throughput, single-query latency
percentiles, a few example queries with the glosses they find, and a filtered search.
"""

from __future__ import annotations

import gzip
import json
import time

import numpy as np

from . import HNSWIndex, datasets
from .errors import InvalidInputError


def _glosses(limit: int | None = None) -> list[str]:
    path = datasets.data_dir() / "wordnet-minilm" / "glosses.jsonl.gz"
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            out.append(f"{', '.join(rec['words'][:3])}: {rec['text']}")
            if limit and len(out) >= limit:
                break
    return out


def main(dataset: str = "wordnet-minilm-384", ef: int = 64, threads: int | None = None,
         limit: int | None = None) -> dict:
    """Index ``dataset`` (its first ``limit`` base vectors and at most ``limit`` queries, ground truth recomputed
    by brute force on the slice, when given), run its queries and print recall@10, throughput and latency."""
    t0 = time.perf_counter()
    ds = full = datasets.load(dataset)
    if limit is not None:
        if limit < 10:
            raise InvalidInputError(f"limit must be at least 10 (the demo searches for 10 neighbours); got {limit}")
        ds = full.subset(min(limit, full.base.shape[0]), min(limit, full.queries.shape[0]))
    print(f"loaded {ds.name}: {ds.base.shape[0]:,} base vectors x {ds.dim} dims, {ds.queries.shape[0]:,} queries "
          f"({time.perf_counter() - t0:.1f} s)")
    index = HNSWIndex(ds.dim, ds.metric, M=16, ef_construction=200)
    t0 = time.perf_counter()
    index.add(ds.base, threads=threads)
    build = time.perf_counter() - t0
    print(f"built HNSW (M=16, ef_construction=200) in {build:.1f} s: {index.nbytes / 2**20:.0f} MiB, "
          f"{index.graph_stats()['levels']} layers")
    index.search(ds.queries[:10], 10, ef=ef)  # first call may compile kernels
    t0 = time.perf_counter()
    _, ids = index.search(ds.queries, 10, ef=ef, threads=threads)
    batch = time.perf_counter() - t0
    recall = datasets.recall_at_k(ids, ds.ground_truth, 10, ds.base, ds.queries, ds.metric)
    lat = []
    for q in ds.queries[:1000]:
        t = time.perf_counter()
        index.search(q[None, :], 10, ef=ef, threads=1)
        lat.append(time.perf_counter() - t)
    lat_ms = np.array(lat) * 1e3
    print(f"recall@10 = {recall:.4f} at ef={ef}; batch of {ds.queries.shape[0]:,} queries: "
          f"{ds.queries.shape[0] / batch:,.0f} QPS; one query at a time: p50 {np.percentile(lat_ms, 50):.3f} ms, "
          f"p99 {np.percentile(lat_ms, 99):.3f} ms")
    result = {"dataset": ds.name, "recall@10": recall, "qps": ds.queries.shape[0] / batch,
              "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
              "build_s": build}
    if dataset == "wordnet-minilm-384":
        texts = _glosses()
        query_texts = texts[full.base.shape[0]:]  # the glosses of the queries follow those of all base vectors
        print("\nexamples (query gloss -> nearest glosses in the index):")
        for qi in sorted({0, 1234 % ds.queries.shape[0], 5678 % ds.queries.shape[0]}):
            print(f"  query: {query_texts[qi][:100]}")
            for rank, hit in enumerate(ids[qi, :3]):
                print(f"    {rank + 1}. {texts[hit][:100]}")
        allowed = np.flatnonzero(np.char.startswith(np.array([t.split(':')[0] for t in texts[:ds.base.shape[0]]]),
                                                    "a"))
        _, fids = index.search(ds.queries[:1], 3, ef=ef, filter=allowed)
        print(f"\nfiltered search (only entries whose first word starts with 'a', {allowed.size:,} allowed):")
        print(f"  query: {query_texts[0][:100]}")
        for rank, hit in enumerate(fids[0]):
            print(f"    {rank + 1}. {texts[hit][:100]}")
    return result


if __name__ == "__main__":
    main()
