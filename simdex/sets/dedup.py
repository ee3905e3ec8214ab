"""Streaming near-duplicate detection of text documents (the engine behind ``simdex dedup``).

Documents arrive in batches; each batch is shingled, sketched (MinHash, OPH + optimal densification) and cut into
band keys by parallel kernels while the next batch is being read. Two modes:

- ``bloom=False`` (default): band keys (8 bytes per band per document) stay in memory and the shingle sets are
  spilled to a temporary file. At the end, documents sharing a band bucket become candidate pairs, each verified by
  exact Jaccard on the shingle sets (memory-mapped), and verified pairs are merged into clusters by union-find.
  The first document of each cluster is kept.
- ``bloom=True``: LSHBloom. Each document is checked against the per-band Bloom filters of all earlier ones and
  dropped if any band matches; memory is the fixed size of the filters, whatever the number of documents. There is
  no verification (the sets are not kept), so pairs that share a band with Jaccard just below the threshold are
  flagged too.

Empty documents (no tokens) are kept and never clustered.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._files import data_format, open_text
from .._numba import kernel, num_threads
from .._progress import progress_bar
from .._validate import check_positive_int, check_threads
from ..errors import InvalidInputError, MissingFileError
from .bloom import LSHBloom
from .exact import pair_jaccard
from .lsh import DEFAULT_NUM_PERM, DEFAULT_THRESHOLD, DEFAULT_WEIGHTS, MinHashLSH, check_threshold
from .minhash import MinHash
from .shingle import HashedSets, Shingler

DEFAULT_BATCH = 20_000


@dataclass
class DedupResult:
    """Outcome of :func:`deduplicate`; arrays are indexed by document position in the input stream.

    ``keep``: bool (n,); ``cluster``: int64 (n,), the position of the cluster's kept document (itself for kept
    documents and for documents without duplicates); ``pairs``: int64 (m, 2) verified duplicate pairs (LSH mode) or
    (document, -1) rows for documents flagged by the Bloom filters; ``ids``: the documents' ids.
    """

    ids: list[str]
    keep: np.ndarray
    cluster: np.ndarray
    pairs: np.ndarray
    n_empty: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_documents(self) -> int:
        return int(self.keep.shape[0])

    @property
    def n_duplicates(self) -> int:
        return int(self.n_documents - self.keep.sum())

    def clusters(self) -> list[np.ndarray]:
        """Positions of the documents of each cluster with more than one member, kept document first."""
        multi = np.flatnonzero(np.bincount(self.cluster, minlength=self.n_documents) > 1)
        order = np.lexsort((np.arange(self.n_documents), self.cluster))
        labels = self.cluster[order]
        starts = np.searchsorted(labels, multi)
        ends = np.searchsorted(labels, multi, side="right")
        return [order[s:e] for s, e in zip(starts, ends)]


# ---- input --------------------------------------------------------------------------------------------------------
def _format_of(path: Path) -> str:
    fmt = data_format(path)
    return fmt if fmt in ("jsonl", "parquet") else "text"


def read_documents(paths: Iterable[str | os.PathLike], *, text_field: str = "text", id_field: str = "id",
                   batch_size: int = DEFAULT_BATCH) -> Iterator[tuple[list[str], list[str]]]:
    """Yield batches ``(ids, texts)`` from JSONL (``.jsonl``/``.json``/``.ndjson``; gzip, bzip2 or xz compressed
    files are told by their first bytes), Parquet
    (needs pyarrow) or plain text files (one document per line; id ``path:line``). A JSON record without
    ``id_field`` gets the id ``path:line``."""
    ids: list[str] = []
    texts: list[str] = []
    for raw_path in paths:
        path = Path(raw_path)
        if not path.exists():
            raise MissingFileError(f"input file not found: {path}")
        fmt = _format_of(path)
        if fmt == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from None
            pf = pq.ParquetFile(path)
            if text_field not in pf.schema_arrow.names:
                raise InvalidInputError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names})")
            columns = [text_field] + ([id_field] if id_field in pf.schema_arrow.names else [])
            line = 0
            for rb in pf.iter_batches(batch_size=batch_size, columns=columns):
                col = rb.column(text_field).to_pylist()
                idcol = rb.column(id_field).to_pylist() if len(columns) > 1 else None
                for k, t in enumerate(col):
                    texts.append(t or "")
                    ids.append(str(idcol[k]) if idcol is not None else f"{path}:{line + k + 1}")
                line += len(col)
                if len(texts) >= batch_size:
                    yield ids, texts
                    ids, texts = [], []
            continue
        with open_text(path, errors="replace") as f:
            for lineno, line_text in enumerate(f, 1):
                if fmt == "jsonl":
                    if not line_text.strip():
                        continue
                    try:
                        record = json.loads(line_text)
                    except json.JSONDecodeError as exc:
                        raise InvalidInputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise InvalidInputError(f"{path}:{lineno}: record has no string field {text_field!r}")
                    texts.append(record[text_field])
                    ids.append(str(record[id_field]) if id_field in record else f"{path}:{lineno}")
                else:
                    texts.append(line_text.rstrip("\n"))
                    ids.append(f"{path}:{lineno}")
                if len(texts) >= batch_size:
                    yield ids, texts
                    ids, texts = [], []
    if texts:
        yield ids, texts


def _prefetch(batches: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Read the next batches in a background thread while the kernels (which release the GIL) work."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def worker() -> None:
        try:
            for b in batches:
                q.put(b)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)
        q.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


# ---- clustering ---------------------------------------------------------------------------------------------------
@kernel
def _union_find(n, pairs):
    """Root (smallest member) of each element's connected component under the edges ``pairs``."""
    parent = np.arange(n)
    for e in range(pairs.shape[0]):
        a, b = pairs[e, 0], pairs[e, 1]
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        if a < b:
            parent[b] = a
        elif b < a:
            parent[a] = b
    for i in range(n):
        r = i
        while parent[r] != r:
            r = parent[r]
        parent[i] = r
    return parent


# ---- the pipeline -------------------------------------------------------------------------------------------------
def deduplicate(batches: Iterable[tuple[list[str], list[str]]], *, threshold: float = DEFAULT_THRESHOLD,
                ngram: int = 5, unit: str = "word", num_perm: int = DEFAULT_NUM_PERM, bloom: bool = False,
                fp_rate: float = 1e-4, capacity: int | None = None, weights: tuple[float, float] = DEFAULT_WEIGHTS,
                seed: int = 1, threads: int | None = None, progress: bool | None = None, total: int | None = None,
                spill_dir: str | os.PathLike | None = None) -> DedupResult:
    """Near-duplicate detection over batches of ``(ids, texts)`` (e.g. from :func:`read_documents`).

    ``threshold``: Jaccard similarity of the shingle sets above which two documents are duplicates; ``ngram`` and
    ``unit``: the shingles (see :class:`~simdex.sets.Shingler`); ``weights``: (false positive, false negative)
    weights of the banding choice; ``bloom``: LSHBloom mode with overall false
    positive rate ``fp_rate`` for ``capacity`` documents (default: ``total``, else 10 million).
    """
    threshold = check_threshold(threshold)
    check_positive_int(ngram, "ngram")
    threads = check_threads(threads)
    shingler = Shingler(ngram, unit=unit, seed=seed)
    minhash = MinHash(num_perm, seed=seed)
    lsh = MinHashLSH(threshold, num_perm, weights, seed=seed)
    bloom_capacity = capacity or total or 10_000_000
    bloom_index = LSHBloom(threshold, num_perm, weights, capacity=bloom_capacity, fp_rate=fp_rate,
                           seed=seed) if bloom else None
    if progress is None:
        progress = sys.stderr.isatty()
    bar = progress_bar(total or 0, "dedup", progress, unit="doc")
    all_ids: list[str] = []
    keys_parts: list[np.ndarray] = []
    flags_parts: list[np.ndarray] = []
    sizes_parts: list[np.ndarray] = []
    timings = {"read_wait_s": 0.0, "shingle_s": 0.0, "minhash_s": 0.0, "index_s": 0.0}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=spill_dir, prefix="simdex-dedup-") as tmp:
        spill_path = Path(tmp) / "shingles.u64"
        with open(spill_path, "wb") as spill, num_threads(threads):
            t0 = time.perf_counter()
            for ids, texts in _prefetch(iter(batches)):
                t1 = time.perf_counter()
                timings["read_wait_s"] += t1 - t0
                sets = shingler(texts)
                t2 = time.perf_counter()
                keys = lsh.banding.keys(minhash.signatures(sets))
                t3 = time.perf_counter()
                sizes = sets.sizes()
                if bloom_index is not None:
                    flags = bloom_index.query_insert_keys(keys[sizes > 0])
                    batch_flags = np.zeros(len(texts), np.bool_)
                    batch_flags[sizes > 0] = flags
                    flags_parts.append(batch_flags)
                else:
                    keys_parts.append(keys)
                    spill.write(memoryview(sets.values.astype(np.uint64, copy=False)))
                sizes_parts.append(sizes)
                all_ids.extend(ids)
                t0 = time.perf_counter()
                timings["shingle_s"] += t2 - t1
                timings["minhash_s"] += t3 - t2
                timings["index_s"] += t0 - t3
                bar.update(len(texts))
        bar.close()
        n = len(all_ids)
        sizes = np.concatenate(sizes_parts) if sizes_parts else np.zeros(0, np.int64)
        n_empty = int((sizes == 0).sum())
        stats: dict[str, Any] = {"documents": n, "empty": n_empty, "bands": lsh.bands, "rows": lsh.rows,
                                 "num_perm": num_perm, "threshold": threshold, "ngram": ngram, "unit": unit,
                                 "mode": "bloom" if bloom else "lsh", **timings}
        if bloom_index is not None:
            flags = np.concatenate(flags_parts) if flags_parts else np.zeros(0, np.bool_)
            keep = ~flags
            cluster = np.arange(n, dtype=np.int64)
            pairs = np.stack([np.flatnonzero(flags), np.full(int(flags.sum()), -1)], axis=1).astype(np.int64)
            stats.update(index_bytes=bloom_index.nbytes, bloom_probes=bloom_index.num_probes,
                         bloom_expected_fp_rate=bloom_index.expected_fp_rate())
        else:
            t4 = time.perf_counter()
            nonempty = np.flatnonzero(sizes > 0)
            keys = np.concatenate(keys_parts) if keys_parts else np.zeros((0, lsh.bands), np.uint64)
            lsh.insert_keys(np.ascontiguousarray(keys[nonempty]), nonempty.astype(np.int64), threads=threads)
            candidates = lsh.candidate_pairs()
            t5 = time.perf_counter()
            indptr = np.zeros(n + 1, np.int64)
            np.cumsum(sizes, out=indptr[1:])
            values = np.memmap(spill_path, np.uint64, mode="r") if indptr[-1] else np.zeros(0, np.uint64)
            with num_threads(threads):
                sims = pair_jaccard(HashedSets(indptr, values), candidates)
            pairs = candidates[sims >= threshold - 1e-9]
            cluster = _union_find(n, pairs) if n else np.zeros(0, np.int64)
            keep = cluster == np.arange(n)
            t6 = time.perf_counter()
            stats.update(index_bytes=lsh.nbytes, candidates=int(candidates.shape[0]),
                         verified_pairs=int(pairs.shape[0]), bucket_s=t5 - t4, verify_s=t6 - t5,
                         spill_bytes=int(indptr[-1]) * 8)
            del values
    stats["total_s"] = time.perf_counter() - start
    return DedupResult(all_ids, keep, cluster, pairs, n_empty, stats)
