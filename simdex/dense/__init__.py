"""Dense-vector indexes: exact search, graph-based approximate search, label- and window-filtered search."""

from .flat import FlatIndex
from .hnsw import HNSWIndex
from .labels import LabelIndex
from .vamana import VamanaIndex
from .window import WindowIndex

__all__ = ["FlatIndex", "HNSWIndex", "LabelIndex", "VamanaIndex", "WindowIndex"]
