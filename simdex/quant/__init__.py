"""Compressed vectors: codecs (int8, LVQ, PQ, OPQ, binary) and the indexes built on them (HNSW over codes, IVF,
the SPANN-style disk index, the DiskANN-style Vamana disk index)."""

from .binary import BinaryCodec
from .codec import Codec, make_codec
from .hnsw import HNSWQuantIndex
from .ivf import IVFIndex
from .matryoshka import MatryoshkaIndex
from .pq import OPQCodec, PQCodec
from .qgraph import RaBitQGraphIndex
from .rabitq import RaBitQCodec
from .scalar import FlatCodec, Int8Codec, LVQCodec
from .spann import SPANNIndex
from .vamana import StreamingVamanaIndex, VamanaDiskIndex

__all__ = ["Codec", "make_codec", "FlatCodec", "Int8Codec", "LVQCodec", "PQCodec", "OPQCodec", "BinaryCodec",
           "RaBitQCodec", "HNSWQuantIndex", "RaBitQGraphIndex", "IVFIndex", "SPANNIndex", "MatryoshkaIndex",
           "VamanaDiskIndex", "StreamingVamanaIndex"]
