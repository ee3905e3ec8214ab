"""The embedded database: durable collections of records with vectors, metadata and documents."""

from .collection import Collection
from .database import Database, connect
from .filters import FilterError

__all__ = ["Collection", "Database", "FilterError", "connect"]
