"""Dense-vector indexes: exact search and graph-based approximate search."""

from .flat import FlatIndex
from .hnsw import HNSWIndex
from .vamana import VamanaIndex

__all__ = ["FlatIndex", "HNSWIndex", "VamanaIndex"]
