"""simdex: similarity search for dense vectors, sparse and text vectors, multi-vector documents and sets."""

from .dense import FlatIndex, HNSWIndex
from .errors import (CorruptFileError, DimensionMismatchError, DuplicateIdError, InvalidInputError,
                     InvalidTypeError, SimdexError, UnknownIdError)
from .index import Index, load

__version__ = "0.1.0"

__all__ = ["FlatIndex", "HNSWIndex", "Index", "load", "SimdexError", "InvalidInputError", "InvalidTypeError",
           "DimensionMismatchError", "DuplicateIdError", "UnknownIdError", "CorruptFileError", "__version__"]
