"""Sets and hashing: shingling, MinHash, MinHash LSH, LSHBloom deduplication, SimHash LSH and Hamming search."""

from .bloom import LSHBloom
from .dedup import DedupResult, deduplicate, read_documents
from .exact import pair_jaccard, similarity_join
from .lsh import Banding, MinHashLSH, optimal_params
from .minhash import MinHash, jaccard
from .simhash import HammingIndex, SimHashLSH, simhash
from .shingle import HashedSets, Shingler, as_hashed_sets, shingle

__all__ = ["HashedSets", "Shingler", "shingle", "as_hashed_sets", "MinHash", "jaccard", "MinHashLSH", "LSHBloom",
           "Banding", "optimal_params", "SimHashLSH", "HammingIndex", "simhash", "similarity_join", "pair_jaccard",
           "deduplicate", "read_documents", "DedupResult"]
