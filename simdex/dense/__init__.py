"""Dense-vector indexes: exact search, graph-based approximate search and window-filtered search."""

from .flat import FlatIndex
from .hnsw import HNSWIndex
from .vamana import VamanaIndex
from .window import WindowIndex

__all__ = ["FlatIndex", "HNSWIndex", "VamanaIndex", "WindowIndex"]
