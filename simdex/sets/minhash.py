"""MinHash sketches of sets: one-permutation hashing with optimal densification, and the classic k-permutation
scheme for reference.

``MinHash(num_perm).signatures(sets)`` turns a batch of sets (CSR; see :class:`~simdex.sets.HashedSets`) into a
uint32 matrix (n, num_perm); ``jaccard(sig_a, sig_b)`` estimates the Jaccard similarity as the fraction of equal
entries. Signatures are comparable only between sketches with the same ``num_perm``, ``method`` and ``seed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._numba import num_threads
from .._validate import check_positive_int, check_threads
from ..errors import InvalidInputError, InvalidTypeError
from . import _minhash_kernels as K
from ._hashing import derive_seed
from .shingle import HashedSets, as_hashed_sets

METHODS = ("oph", "oph-rotation", "kperm")
# the longest signature accepted: far beyond the useful (128-1024), and it bounds MinHashLSH's parameter search
MAX_NUM_PERM = 8192


class MinHash:
    """A MinHash family with ``num_perm`` hash values per set.

    ``method``:

    - ``"oph"`` (default): one-permutation hashing, then optimal densification of empty bins. O(d + k) per set of
      d elements once d is near k or larger; for sparse sets the densification probes cost O(k^2 / d).
    - ``"oph-rotation"``: one-permutation hashing with the older rotation densification (for comparison).
    - ``"kperm"``: k independent 2-universal hash functions, O(d k): the textbook estimator.

    All three are unbiased estimators of Jaccard similarity. The empty set's signature is all ``0xFFFFFFFF``.
    """

    def __init__(self, num_perm: int = 128, *, method: str = "oph", seed: int = 1) -> None:
        self.num_perm = check_positive_int(num_perm, "num_perm", maximum=MAX_NUM_PERM)
        if method not in METHODS:
            raise InvalidInputError(f"method must be one of {METHODS}; got {method!r}")
        self.method = method
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self._element_seed = derive_seed(self.seed, 10)
        self._densify_seed = derive_seed(self.seed, 11)
        self._probes = K.probe_table(self.num_perm, self._densify_seed)
        rng = np.random.default_rng([self.seed, 12])
        self._mult = rng.integers(0, 2**63, self.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._add = rng.integers(0, 2**63, self.num_perm, dtype=np.uint64)

    def __repr__(self) -> str:
        return f"MinHash(num_perm={self.num_perm}, method={self.method!r}, seed={self.seed})"

    def signatures(self, sets: Any, *, threads: int | None = None) -> np.ndarray:
        """Signatures of a batch of sets: :class:`HashedSets`, ``(indptr, values)`` or a list of integer arrays.

        Returns uint32 (n, num_perm). Elements may repeat within a set (they count once).
        """
        if isinstance(sets, HashedSets):
            indptr, values = sets
        elif isinstance(sets, tuple) and len(sets) == 2:
            from .._validate import check_csr_sets
            indptr, values = check_csr_sets(*sets)
        else:
            indptr, values = as_hashed_sets(sets)
        threads = check_threads(threads)
        out = np.empty((indptr.shape[0] - 1, self.num_perm), np.uint32)
        with num_threads(threads):
            if self.method == "oph":
                K.oph_optimal(indptr, values, self.num_perm, self._element_seed, self._densify_seed, self._probes,
                              out)
            elif self.method == "oph-rotation":
                K.oph_rotation(indptr, values, self.num_perm, self._element_seed, out)
            else:
                K.k_permutations(indptr, values, self._element_seed, self._mult, self._add, out)
        return out

    def signature(self, elements: Any) -> np.ndarray:
        """Signature (num_perm,) of one set given as a 1-D array of non-negative integers (hashes)."""
        return self.signatures([elements])[0]


def jaccard(a: Any, b: Any) -> float | np.ndarray:
    """Estimated Jaccard similarity: the fraction of equal entries of two signatures (k,) -> float, or of row
    pairs of two signature matrices (n, k) -> float64 (n,)."""
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype.kind not in "iu" or y.dtype.kind not in "iu":
        raise InvalidTypeError(f"signatures must be integer arrays; got {x.dtype} and {y.dtype}")
    if x.shape != y.shape or x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise InvalidInputError(f"signatures must have the same shape (k,) or (n, k); got {x.shape} and {y.shape}")
    if x.ndim == 1:
        return float(np.count_nonzero(x == y)) / x.shape[0]
    out = np.empty(x.shape[0], np.float64)
    K.matching_fraction(np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=x.dtype), out)
    return out
