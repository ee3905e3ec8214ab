"""Records read from Parquet files (or a ``ray.data.Dataset``) a batch at a time: :meth:`CollectionAPI.import_parquet`,
:meth:`CollectionAPI.import_dataset` and ``simdex import``.

A file holds one record per row: an id column, a vector column (a list of numbers per row; absent, or null in a
row, where the collection embeds the document), a document column, and metadata: the ``metadata`` column (a JSON
object as text, as ``simdex export`` writes it, or a struct) when there is one, else every other column. Columns
are converted a batch at a time (no per-row Python for ids, vectors and documents).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._files import open_binary
from ..errors import InvalidInputError


@dataclass
class RecordBatch:
    """Consecutive records of a file, ready for ``upsert``."""

    ids: list[str]
    vectors: np.ndarray | list[Any] | None  # (n, dim) float32; a list with None rows where some lack a vector
    metadatas: list[dict[str, Any]]
    documents: list[str | None] | None


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidInputError("reading Parquet needs pyarrow: pip install 'simdex[server]' (or pyarrow)") from None
    return pq


def count_rows(path: str | Path) -> int:
    """The number of records in a Parquet file (from its footer)."""
    with open_binary(Path(path)) as f:
        return int(_pyarrow().ParquetFile(f).metadata.num_rows)


def metadata_value(value: Any, where: str) -> dict[str, Any]:
    """A metadata column's entry as a dict: JSON object text (what ``simdex export`` writes), a struct, or null."""
    if value is None:
        return {}
    meta = json.loads(value) if isinstance(value, str) else value
    if not isinstance(meta, dict):
        raise InvalidInputError(f"{where}: the metadata column holds {type(meta).__name__}, not a JSON object")
    return meta


def _vectors(column: Any, where: str) -> np.ndarray | list[Any]:
    """A list column as an (n, dim) float32 array, or a list with None rows where the column is null."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)):
        raise InvalidInputError(f"{where}: the vector column holds {column.type}, not lists of numbers")
    if isinstance(column, pa.ChunkedArray):  # a table's column (a dataset's batch): one array
        column = column.combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
    dims = np.unique(lengths[valid])
    if dims.size > 1:
        raise InvalidInputError(f"{where}: vectors of different lengths ({', '.join(map(str, dims[:5]))})")
    dim = int(dims[0]) if dims.size else 0
    values = column.filter(pa.array(valid)).flatten() if not valid.all() else column.flatten()
    try:
        flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    except (TypeError, ValueError, pa.ArrowInvalid) as exc:
        raise InvalidInputError(f"{where}: the vector column holds non-numbers ({exc})") from None
    rows = flat.reshape(-1, dim) if dim else np.zeros((int(valid.sum()), 0), np.float32)
    if valid.all():
        return rows
    out: list[Any] = [None] * len(valid)
    for row, at in zip(rows, np.flatnonzero(valid)):
        out[at] = row
    return out


def parquet_batches(path: str | Path, *, id_column: str = "id", vector_column: str | None = "vector",
                    document_column: str = "document", batch_size: int = 4096) -> Iterator[RecordBatch]:
    """The records of the Parquet file ``path``, ``batch_size`` at a time. ``vector_column`` None (or a column the
    file lacks) gives batches without vectors, for a collection that embeds its documents. A missing id column, or
    a vector column of other than equal-length lists of numbers, raises InvalidInputError naming the file."""
    path = Path(path)
    with open_binary(path) as f:
        reader = _pyarrow().ParquetFile(f)
        row = 0
        for batch in reader.iter_batches(batch_size=batch_size):
            yield table_records(batch, str(path), row, id_column, vector_column, document_column)
            row += batch.num_rows


def dataset_batches(dataset: Any, *, id_column: str = "id", vector_column: str | None = "vector",
                    document_column: str = "document", batch_size: int = 4096) -> Iterator[RecordBatch]:
    """The records of a ``ray.data.Dataset`` (or anything with its ``iter_batches``), ``batch_size`` at a time,
    its columns read as a Parquet file's are (:func:`parquet_batches`). Ray reads and transforms the blocks in
    parallel on the cluster while the batches are consumed here."""
    if not hasattr(dataset, "iter_batches"):
        raise InvalidInputError(f"expected a ray.data.Dataset, got {type(dataset).__name__}")
    row = 0
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        yield table_records(batch, "dataset", row, id_column, vector_column, document_column)
        row += batch.num_rows


def table_records(batch: Any, source: str, row: int, id_column: str, vector_column: str | None,
                  document_column: str) -> RecordBatch:
    """The records of a pyarrow table or record batch whose first row is row ``row`` of ``source`` (named in
    errors): see the module docstring for its columns."""
    names = batch.schema.names
    if id_column not in names:
        raise InvalidInputError(f"{source}: no column {id_column!r} (columns: {', '.join(names)})")
    where = f"{source}: rows {row}-{row + batch.num_rows - 1}"
    own = {id_column, document_column, *([vector_column] if vector_column else [])}
    others = [c for c in names if c not in own]
    ids = [str(i) for i in batch.column(id_column).to_pylist()]
    vectors = _vectors(batch.column(vector_column), where) if vector_column and vector_column in names else None
    documents = batch.column(document_column).to_pylist() if document_column in names else None
    if "metadata" in others:
        metadatas = [metadata_value(v, f"{source}: row {row + j}")
                     for j, v in enumerate(batch.column("metadata").to_pylist())]
    elif others:
        metadatas = batch.select(others).to_pylist()
    else:
        metadatas = [{} for _ in ids]
    return RecordBatch(ids, vectors, metadatas, documents)
