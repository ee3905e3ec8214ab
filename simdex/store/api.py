"""The collection and database interface, defined once.

:class:`~simdex.store.Collection` (in process) and :class:`~simdex.server.client.RemoteCollection` (over HTTP)
both implement :class:`CollectionAPI`; :class:`~simdex.store.Database` and :class:`~simdex.Client` both implement
:class:`DatabaseAPI`. One test suite (``tests/test_collection_api.py``) runs against both, so code moves between
``simdex.connect(path)`` and ``simdex.Client(url)`` unchanged: same methods, same results, same exceptions.

Records are ``{"id": str, "metadata": dict, "document": str | None, "embedding": list[float], ...}`` dicts with
the fields asked for in ``include``; search hits add ``distance`` (vector search; smaller is closer) or ``score``
(text and hybrid search; larger is better).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError, UnknownIdError

SEARCH_MODES = ("dense", "bm25", "hybrid")
# the name of a record's main vector among its named vector fields (:mod:`simdex.store.fields`)
MAIN_FIELD = "vector"


class CollectionAPI(ABC):
    """What every collection offers, wherever it lives."""

    name: str

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Configuration and state: dim, metric, index, embedder, count, indexed/unindexed rows, log position..."""

    @abstractmethod
    def count(self) -> int:
        """The number of records."""

    def __len__(self) -> int:
        return self.count()

    @abstractmethod
    def upsert(self, ids: Any, vectors: Any = None, metadatas: Any = None, documents: Any = None, *,
               max_batch: int | None = None, fields: dict[str, Any] | None = None) -> int:
        """Insert records, or replace those whose id exists; returns how many were written.

        ``ids``: list of n str; ``vectors``: (n, dim) numbers, or None to embed the ``documents`` with the
        collection's embedder (a list may also hold None rows: those are embedded); ``metadatas``: n JSON objects
        or None; ``documents``: n str/None or None. ``max_batch`` refuses larger batches. Durable when it returns.
        ``fields``: the values of the collection's named vector fields, ``{field: n entries}``: a vector
        (dense; or an (n, dim) array), an (m, dim) set of vectors (multivector) or a ``{term: weight}`` dict
        (sparse), None where a record has none. ``vectors`` may also be such a dict, the main vector under
        "vector". A replaced record's fields are those of the new version only.
        """

    @abstractmethod
    def get(self, ids: Any = None, where: Any = None, limit: int | None = None, offset: int = 0,
            include: Any = None) -> list[dict[str, Any]]:
        """Records by id (in the given order, unknown ids left out) and/or ``where`` filter (in id order).
        ``include``: any of "metadatas", "documents", "embeddings", "fields" (the named vector fields' values;
        default metadatas and documents)."""

    @abstractmethod
    def delete(self, ids: Any = None, where: Any = None, *, missing_ok: bool = False) -> int:
        """Delete by id, by ``where``, or both; unknown ids raise UnknownIdError unless ``missing_ok``. Returns
        how many were deleted."""

    @abstractmethod
    def search(self, vector: Any = None, k: int = 10, where: Any = None, include: Any = None,
               ef: int | None = None, *, text: str | None = None, mode: str | None = None, fusion: str = "rrf",
               alpha: float = 0.5, norm: str = "minmax", depth: int | None = None,
               target_recall: float | None = None, field: str | None = None,
               queries: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The k best records for one query, best first.

        - ``vector`` (dim,): nearest neighbours; hits carry ``distance``.
        - ``text``: ``mode="dense"`` embeds it with the collection's embedder and searches by vector (hits carry
          ``distance``); ``"bm25"`` ranks the documents by BM25 (collections with ``text=True``; hits carry
          ``score``); ``"hybrid"`` fuses both lists (``fusion`` "rrf" or "linear" with ``alpha`` and ``norm``;
          ``depth`` candidates from each; hits carry ``score``). The default mode is hybrid when the collection
          has both an embedder and a text index, else whichever it has. ``text`` with ``vector``: hybrid with
          that vector as the dense query.
        - A query text longer than the embedder's limit is truncated, with a ``TruncatedTextWarning``.
        - ``ef``: the search breadth of the collection's index (HNSW's candidate list, a Vamana graph's L; the
          lists an ivf-pq collection probes); larger finds more of the true neighbours, slower.
        - ``target_recall`` (in (0, 1]) instead of ``ef``: the index picks the breadth that reaches that recall@k
          by its recall curve, measured when it was built on vectors held out for it
          (:mod:`simdex.dense.calibration`; not for spann collections).
        - ``field`` with ``vector``: search a named vector field instead of the main vector: a dense field's hits
          carry ``distance``; a multivector field (``vector`` an (m, dim) set; Chamfer score; ``ef``: the MUVERA
          candidates re-ranked, default 100) and a sparse field (``vector`` a ``{term: weight}`` dict; dot
          product) carry ``score``.
        - ``queries={field: query, ...}`` (the main vector as "vector"; a str there is embedded): one ranking per
          field, ``depth`` deep, fused by ``fusion`` ("rrf", or "linear" for exactly two rankings) with the
          BM25 ranking of ``text`` if given; hits carry ``score``. One entry alone is that field's search.
        """

    @abstractmethod
    def search_batch(self, vectors: Any = None, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None, *, texts: Any = None, mode: str | None = None, fusion: str = "rrf",
                     alpha: float = 0.5, norm: str = "minmax", depth: int | None = None,
                     target_recall: float | None = None, field: str | None = None) -> list[list[dict[str, Any]]]:
        """:meth:`search` for each row of ``vectors`` (nq, dim), or for each of ``texts`` (list of str); with
        ``field``, for each query of that field in ``vectors`` (a list)."""

    def search_by_id(self, ids: Any, k: int = 10, where: Any = None, include: Any = None,
                     ef: int | None = None) -> list[list[dict[str, Any]]]:
        """:meth:`search_batch` with the stored vectors of the records ``ids`` as the queries ("more like this");
        an unknown id raises UnknownIdError."""
        from .records import check_record_ids  # (records imports fields, which imports this module)
        id_list = check_record_ids(ids)
        if not id_list:
            raise InvalidInputError("ids is empty")
        found = {r["id"]: r["embedding"] for r in self.get(id_list, include=["embeddings"])}
        missing = [i for i in id_list if i not in found]
        if missing:
            raise UnknownIdError(f"id {missing[0]!r} is not in collection {self.name!r}")
        return self.search_batch(np.array([found[i] for i in id_list], np.float32), k, where, include, ef)

    def import_parquet(self, paths: Any, *, id_column: str = "id", vector_column: str | None = "vector",
                       document_column: str = "document", batch_size: int = 10_000,
                       progress: bool | None = None) -> int:
        """Upsert every record of the Parquet file(s) ``paths`` (a path or a list of them), ``batch_size`` rows per
        upsert; returns how many were written. A row gives a record's id, vector (a list of numbers; where the
        column is absent or null, the collection's embedder embeds the document), document and metadata (the
        ``metadata`` column, JSON text as ``simdex export`` writes it, or else every other column): see
        :mod:`simdex.store.importing`. The batches before a bad one stay written; the error names the file and
        rows. A progress bar shows on a terminal (``progress`` True/False forces it)."""
        from .._validate import check_positive_int
        from .importing import count_rows, parquet_batches
        batch_size = check_positive_int(batch_size, "batch_size")
        files = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not files:
            raise InvalidInputError("paths is empty")
        batches = (batch for path in files
                   for batch in parquet_batches(path, id_column=id_column, vector_column=vector_column,
                                                document_column=document_column, batch_size=batch_size))
        return self._upsert_batches(batches, sum(count_rows(f) for f in files), progress)

    def import_dataset(self, dataset: Any, *, id_column: str = "id", vector_column: str | None = "vector",
                       document_column: str = "document", batch_size: int = 10_000,
                       progress: bool | None = None) -> int:
        """Upsert every record of the ``ray.data.Dataset`` ``dataset`` (columns as in :meth:`import_parquet`),
        ``batch_size`` rows per upsert; returns how many were written. Ray reads and transforms the dataset's
        blocks in parallel across its cluster (``ray.data.read_parquet``, ``map_batches``, ...) while each batch
        is upserted (in a distributed collection, to its shards in parallel). The batches before a bad one stay
        written; the error names the rows. A progress bar shows on a terminal (``progress`` True/False)."""
        from .._validate import check_positive_int
        from .importing import dataset_batches
        batch_size = check_positive_int(batch_size, "batch_size")
        batches = dataset_batches(dataset, id_column=id_column, vector_column=vector_column,
                                  document_column=document_column, batch_size=batch_size)
        return self._upsert_batches(batches, None, progress)  # (counting the rows would run the dataset)

    def _upsert_batches(self, batches: Any, total: int | None, progress: bool | None) -> int:
        """Upsert each :class:`~simdex.store.importing.RecordBatch` of ``batches`` (``total`` records, None if
        unknown) under a progress bar; returns how many were written."""
        from .._progress import progress_bar
        bar = progress_bar(total, f"import into {self.name!r}", progress, unit="rec")
        done = 0
        try:
            for batch in batches:
                done += self.upsert(batch.ids, batch.vectors, batch.metadatas, batch.documents)
                bar.update(len(batch.ids))
        finally:
            bar.close()
        return done

    @abstractmethod
    def add_field(self, name: str, spec: dict[str, Any] | None = None, *, embedder: Any = None) -> dict[str, Any]:
        """Add the named vector field ``name`` (``spec`` as in ``create_collection(fields=...)``). With
        ``embedder`` it is a dense field of that model, filled in the background from the stored documents
        (progress in ``stats()["fields"][name]["fill"]``) and by every later upsert. Returns the field's stats."""

    @abstractmethod
    def use_field(self, name: str, *, force: bool = False) -> None:
        """Make text queries (modes dense and hybrid) embed with field ``name``'s embedder and search that field
        ("vector": the main vector and the collection's embedder); a field still filling needs ``force``."""

    @abstractmethod
    def drop_field(self, name: str) -> None:
        """Remove the named field ``name`` with its index and values (not the main vector, nor the field that
        text queries use)."""

    def wait_for_field(self, name: str, timeout: float | None = None) -> bool:
        """Wait until field ``name`` is filled (True), or ``timeout`` seconds have passed (False)."""
        import time
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            fill = self.stats()["fields"][name].get("fill")
            if fill is None or fill["state"] != "filling":
                return True
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(0.2)


class DatabaseAPI(ABC):
    """What every database offers, embedded (:func:`simdex.connect`) or remote (:class:`simdex.Client`)."""

    @abstractmethod
    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine", index: str = "hnsw", *,
                          exist_ok: bool = False, text: bool = False, embedder: Any = None,
                          window_field: str | None = None, label_field: str | None = None,
                          dedup: dict[str, Any] | None = None, fields: dict[str, Any] | None = None,
                          **params: Any) -> CollectionAPI:
        """Create a collection of ``dim``-dimensional vectors (``dim`` may be left out when an ``embedder`` gives
        it). ``embedder``: "minilm" (built in, offline), "st:<model>" (sentence-transformers), or an
        :class:`~simdex.embed.Embedder` (embedded databases only): documents and text queries are then embedded
        by it, and it is recorded with the collection (reopening with another model is refused). ``text``: also
        index the documents for BM25 and hybrid search. ``index``: "hnsw", "hnsw-lvq8", "hnsw-int8" (HNSW walked
        on codes, re-ranked from float32), "rabitq-graph" (HNSW searched through RaBitQ codes of every node's edges),
        "ivf-pq" / "ivf-rabitq" (IVF over PQ / 1-bit RaBitQ codes, re-ranked from float32), "vamana",
        "vamana-disk" (a Vamana graph in memory; in a file, walked on PQ codes), "spann" (built once; merges build
        a new one) or "flat" (exact). ``params`` go to the index (M, ef_construction, ef_search, seed; for the
        code kinds also rerank; for the IVF kinds nlist, nprobe, codec, rerank, reads, seed; for the Vamana kinds
        R, L_build, L_search, alpha, seed, and codec on disk; for spann list_size, nprobe, eps, rerank, codec,
        max_replicas, closure_eps, seed).

        ``dedup``: near-duplicate control on write, e.g. ``{"field": "document", "threshold": 0.9,
        "on_duplicate": "flag"}``. Each upserted text (the document, or a string metadata ``field``) is compared by
        MinHash LSH with the stored ones and the batch's earlier ones, candidates verified by exact Jaccard of
        their ``ngram``-word shingles (``unit`` "word" or "char"); a text at or above ``threshold`` (in (0, 1]) is
        a duplicate, and ``on_duplicate`` says what happens: "reject" (the batch is refused with
        DuplicateDocumentError naming each duplicate; nothing is written), "flag" (written, with the metadata key
        ``duplicate_of`` holding the id of the record it duplicates) or "keep" (written as is; counted in
        ``stats()["dedup"]``). ``bloom=True`` (with ``capacity`` and ``fp_rate``) uses LSHBloom instead: fixed
        memory, no exact verification, no id named. Also ``num_perm`` and ``seed``.

        ``fields``: named vector fields beside the main vector (:mod:`simdex.store.fields`), ``{name: spec}``:
        ``{"type": "dense", "dim": d, "metric": "cosine", "index": "hnsw", "params": {...}}`` (any index kind
        but the build-once ones), ``{"type": "multivector", "dim": d, "params": {...}}`` (token sets; MUVERA
        candidates re-ranked by exact Chamfer score; params storage, k_sim, d_proj, r_reps, M,
        ef_construction, seed, candidates) or ``{"type": "sparse"}`` (``{term: weight}`` dicts; block-max
        inverted index, dot product)."""

    @abstractmethod
    def get_collection(self, name: str) -> CollectionAPI:
        """The collection ``name``; CollectionNotFoundError if there is none."""

    def get_or_create_collection(self, name: str, dim: int | None = None, metric: str = "cosine",
                                 index: str = "hnsw", **options: Any) -> CollectionAPI:
        """:meth:`create_collection` with ``exist_ok=True``."""
        return self.create_collection(name, dim, metric, index, exist_ok=True, **options)

    @abstractmethod
    def list_collections(self) -> list[str]:
        """Names of the collections, sorted."""

    @abstractmethod
    def drop_collection(self, name: str) -> None:
        """Delete a collection and its files."""

    @abstractmethod
    def backup(self, dest: str, since: str | None = None) -> dict[str, Any]:
        """A consistent copy of every collection at one log position each, taken while writes go on, into the new
        folder ``dest`` (on the database's machine); ``since``: a previous backup, whose unchanged files are
        hard-linked instead of copied (incremental). Restore with ``simdex restore``. Returns the backup's
        manifest: per collection its LSN, every file's size and checksum, the bytes copied and linked."""


def split_vectors(vectors: Any, fields: Any) -> tuple[Any, Any]:
    """``vectors`` given as a dict ``{"vector": main, field: values, ...}`` -> (main vectors, fields)."""
    if not isinstance(vectors, dict):
        return vectors, fields
    if fields is not None and not isinstance(fields, dict):
        raise InvalidTypeError(f"fields must be a dict {{field: values}}; got {type(fields).__name__}")
    named = {k: v for k, v in vectors.items() if k != MAIN_FIELD}
    both = sorted(set(named) & set(fields or {}))
    if both:
        raise InvalidInputError(f"field(s) {both} given both in vectors and in fields")
    return vectors.get(MAIN_FIELD), {**(fields or {}), **named} or None


def resolve_mode(collection: str, mode: Any, has_vector: bool, has_embedder: bool, has_text: bool) -> str:
    """The mode of a text query (see :meth:`CollectionAPI.search`), checked against what the collection has."""
    if mode is None:
        if has_vector or (has_embedder and has_text):
            mode = "hybrid"
        elif has_embedder:
            mode = "dense"
        elif has_text:
            mode = "bm25"
        else:
            raise InvalidInputError(f"collection {collection!r} has no text index and no embedder: search it by "
                                    f"vector, or create it with text=True (BM25) or embedder='minilm'")
    if mode not in SEARCH_MODES:
        raise InvalidInputError(f"mode must be one of {SEARCH_MODES}; got {mode!r}")
    if mode in ("bm25", "hybrid") and not has_text:
        raise InvalidInputError(f"collection {collection!r} has no text index (mode {mode!r} needs BM25); create "
                                f"it with text=True")
    if mode in ("dense", "hybrid") and not has_vector and not has_embedder:
        raise InvalidInputError(f"collection {collection!r} has no embedder (mode {mode!r} needs one to turn the "
                                f"text into a vector); pass a vector, or create it with embedder='minilm'")
    if mode == "bm25" and has_vector:
        raise InvalidInputError("mode 'bm25' takes no vector")
    return mode

