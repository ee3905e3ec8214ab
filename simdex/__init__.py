"""simdex: similarity search for dense vectors, sparse and text vectors, multi-vector documents and sets."""

from .dense import FlatIndex, HNSWIndex, LabelIndex, VamanaIndex, WindowIndex
from .errors import (AccessDeniedError, CollectionExistsError, CollectionNotFoundError, CorruptDatabaseError,
                     CorruptFileError, DatabaseLockedError, DimensionMismatchError, DuplicateIdError, InvalidInputError,
                     InvalidTypeError, MissingFileError, ReadOnlyError, SimdexError, StorageError, UnknownIdError,
                     UnknownKindError, UnsupportedOperationError)
from .index import BaseIndex, Index, load
from .store import Collection, Database, FilterError, connect

__version__ = "0.1.0"

__all__ = ["FlatIndex", "HNSWIndex", "LabelIndex", "VamanaIndex", "WindowIndex", "BaseIndex", "Index", "load",
           "connect", "Database", "Collection", "Client", "AsyncClient", "SimdexError", "InvalidInputError",
           "InvalidTypeError", "DimensionMismatchError", "DuplicateIdError", "UnknownIdError", "CorruptFileError",
           "CorruptDatabaseError", "MissingFileError", "UnknownKindError", "UnsupportedOperationError",
           "AccessDeniedError", "CollectionExistsError", "CollectionNotFoundError", "DatabaseLockedError",
           "ReadOnlyError", "StorageError", "FilterError", "warmup", "__version__"]


def __getattr__(name: str):
    if name in ("Client", "AsyncClient"):  # light, but keep `import simdex` free of networking imports
        from .server import client
        return getattr(client, name)
    if name == "warmup":
        from ._warmup import warmup
        return warmup
    raise AttributeError(f"module 'simdex' has no attribute {name!r}")
