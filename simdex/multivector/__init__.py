"""Multi-vector (late-interaction) retrieval: :class:`MultiVectorIndex` (exact Chamfer, MUVERA and token-level
candidate generation) and the MUVERA fixed-dimensional encoder :class:`MuveraEncoder`."""

from .index import MultiVectorIndex, check_sets, idf_weights
from .muvera import MuveraEncoder

__all__ = ["MultiVectorIndex", "MuveraEncoder", "check_sets", "idf_weights"]
