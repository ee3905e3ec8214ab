"""Dense-vector indexes: exact search and graph-based approximate search."""

from .flat import FlatIndex
from .hnsw import HNSWIndex

__all__ = ["FlatIndex", "HNSWIndex"]
