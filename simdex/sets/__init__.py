"""Sets and hashing: shingling, MinHash, MinHash LSH, LSHBloom deduplication, SimHash LSH and Hamming search."""

from .bloom import LSHBloom
from .lsh import Banding, MinHashLSH, optimal_params
from .minhash import MinHash, jaccard
from .shingle import HashedSets, Shingler, as_hashed_sets, shingle

__all__ = ["HashedSets", "Shingler", "shingle", "as_hashed_sets", "MinHash", "jaccard", "MinHashLSH", "LSHBloom", "Banding",
           "optimal_params"]
