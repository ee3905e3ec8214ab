"""LSHBloom (Khan et al., "LSHBloom: Memory-efficient, Extreme-scale Document Deduplication", 2024): the banding of
:class:`~simdex.sets.MinHashLSH` with one Bloom filter per band instead of a hash table.

A band key is only tested for membership, never listed, so the index answers "is this set (probably) a near
duplicate of one inserted before" in a few bits per band per set. Streaming deduplication is
``query_insert(signatures)``: each set is checked against everything before it (including earlier rows of the same
batch), then added.

Sizing: for ``capacity`` sets and an overall false positive rate ``fp_rate`` (the chance that a set that shares
no band key with any stored set is still reported), each of the b filters gets rate ``p = 1 - (1 - fp_rate)^(1/b)``,
``m = -capacity * ln p / ln(2)^2`` bits and ``round(m / capacity * ln 2)`` probes.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .._validate import check_positive_int, check_threads
from ..errors import InvalidInputError, InvalidTypeError, UnsupportedOperationError
from ..index import BaseIndex, deprecated_alias
from . import _lsh_kernels as LK
from .lsh import DEFAULT_NUM_PERM, DEFAULT_THRESHOLD, DEFAULT_WEIGHTS, Banding


_MAX_BYTES = 1 << 40  # filters beyond a terabyte are a mistake (a capacity typed with too many zeros)


def _check_rate(fp_rate: Any) -> float:
    if isinstance(fp_rate, bool) or not isinstance(fp_rate, (int, float, np.floating)):
        raise InvalidTypeError(f"fp_rate must be a number in (0, 1); got {fp_rate!r}")
    p = float(fp_rate)
    if not 0.0 < p < 1.0:
        raise InvalidInputError(f"fp_rate must be in the open interval (0, 1); got {p}")
    return p


class LSHBloom(BaseIndex):
    """Banded MinHash LSH with one Bloom filter per band, for streaming near-duplicate detection.

    Parameters: ``threshold``, ``num_perm``, ``weights``/``params`` as for MinHashLSH; ``capacity``: the number of
    sets the filters are sized for; ``fp_rate``: the wanted overall false positive rate at that fill.
    Memory is fixed at construction: :attr:`nbytes`.

    Under the index contract (:mod:`simdex.index`) the id of a set is its insertion position (0, 1, 2, ...):
    ``add``/``insert`` return them, ``ids`` lists them. A Bloom filter stores no ids and cannot forget a set, so
    chosen ``ids`` and ``remove`` are refused with :class:`~simdex.errors.UnsupportedOperationError`.
    """

    kind = "LSHBloom"

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, num_perm: int = DEFAULT_NUM_PERM,
                 weights: Any = DEFAULT_WEIGHTS, *,
                 capacity: int = 1_000_000, fp_rate: float = 1e-4, params: Any = None, seed: int = 1) -> None:
        self.banding = Banding(threshold, num_perm, weights, params, seed)
        self.capacity = check_positive_int(capacity, "capacity")
        self.fp_rate = _check_rate(fp_rate)
        b = self.banding.bands
        per_band = -math.expm1(math.log1p(-self.fp_rate) / b)
        bits = -self.capacity * math.log(per_band) / math.log(2) ** 2
        words = max(1, math.ceil(bits / 64))
        if words * b * 8 > _MAX_BYTES:
            raise InvalidInputError(f"capacity={self.capacity} at fp_rate={self.fp_rate} needs {words * b * 8:,} bytes "
                                    f"of filters; at most {_MAX_BYTES:,} are allowed")
        self.num_probes = max(1, round(words * 64 / self.capacity * math.log(2)))
        self._bits = np.zeros((b, words), np.uint64)
        self.count = 0

    threshold = property(lambda self: self.banding.threshold)
    num_perm = property(lambda self: self.banding.num_perm)
    bands = property(lambda self: self.banding.bands)
    rows = property(lambda self: self.banding.rows)

    def __len__(self) -> int:
        return self.count

    @property
    def ids(self) -> np.ndarray:
        """The ids of the inserted sets: their insertion positions 0 .. count - 1."""
        return np.arange(self.count, dtype=np.int64)

    def __contains__(self, id_: int) -> bool:
        try:
            return 0 <= operator.index(id_) < self.count
        except TypeError:
            return False

    def __repr__(self) -> str:
        return (f"LSHBloom(threshold={self.threshold}, num_perm={self.num_perm}, bands={self.bands}, "
                f"rows={self.rows}, capacity={self.capacity}, fp_rate={self.fp_rate}, count={self.count}, "
                f"nbytes={self.nbytes})")

    @property
    def nbytes(self) -> int:
        """Bytes of the filters (all bands)."""
        return int(self._bits.nbytes)

    memory_bytes = deprecated_alias("nbytes")

    @property
    def bits_per_band(self) -> int:
        return int(self._bits.shape[1] * 64)

    def expected_fp_rate(self, count: int | None = None) -> float:
        """False positive rate predicted for a new set after ``count`` insertions (default: the current count)."""
        n = self.count if count is None else count
        per_band = (1 - math.exp(-self.num_probes * n / self.bits_per_band)) ** self.num_probes
        return 1 - (1 - per_band) ** self.bands

    def _run(self, signatures: Any, query: bool, insert: bool, threads: int | None) -> np.ndarray:
        return self._run_keys(self.banding.keys(signatures, check_threads(threads)), query, insert)

    def _run_keys(self, keys: np.ndarray, query: bool, insert: bool) -> np.ndarray:
        out = np.zeros(keys.shape[0], np.bool_)
        LK.bloom_query_insert(self._bits, np.ascontiguousarray(keys, np.uint64), self.num_probes, query, insert, out)
        if insert:
            self.count += keys.shape[0]
        return out

    def query(self, signatures: Any, *, threads: int | None = None) -> np.ndarray:
        """bool (n,): whether each set probably shares a band with an inserted set."""
        return self._run(signatures, True, False, threads)

    def insert(self, signatures: Any, *, threads: int | None = None) -> np.ndarray:
        """Add the sets of ``signatures`` (n, num_perm); returns their ids (insertion positions)."""
        first = self.count
        self._run(signatures, False, True, threads)
        return np.arange(first, self.count, dtype=np.int64)

    def add(self, signatures: Any, ids: Any = None, *, threads: int | None = None) -> np.ndarray:
        """:meth:`insert` under the index contract's name; ``ids`` must be None (see the class docstring)."""
        if ids is not None:
            raise UnsupportedOperationError("LSHBloom keeps no ids: a set's id is its insertion position; add "
                                            "without ids= (use MinHashLSH to choose ids)")
        return self.insert(signatures, threads=threads)

    def remove(self, ids: Any) -> int:
        raise UnsupportedOperationError("a Bloom filter cannot forget a set: LSHBloom does not support remove "
                                        "(build a new one without those sets, or use MinHashLSH)")

    def query_insert(self, signatures: Any, *, threads: int | None = None) -> np.ndarray:
        """Streaming dedup: bool (n,) duplicate flags, each row checked against all sets inserted before it."""
        return self._run(signatures, True, True, threads)

    def query_keys(self, keys: np.ndarray) -> np.ndarray:
        """:meth:`query` on precomputed band keys (n, bands) uint64."""
        return self._run_keys(keys, True, False)

    def insert_keys(self, keys: np.ndarray) -> None:
        """:meth:`insert` on precomputed band keys (n, bands) uint64."""
        self._run_keys(keys, False, True)

    def query_insert_keys(self, keys: np.ndarray) -> np.ndarray:
        """:meth:`query_insert` on precomputed band keys (n, bands) uint64."""
        return self._run_keys(keys, True, True)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {**self.banding._meta(), "capacity": self.capacity, "fp_rate": self.fp_rate,
                "num_probes": self.num_probes, "count": self.count}
        return meta, {"bits": self._bits}

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> LSHBloom:
        index = cls(meta["threshold"], meta["num_perm"], tuple(meta["weights"]), capacity=meta["capacity"],
                    fp_rate=meta["fp_rate"], params=(meta["bands"], meta["rows"]), seed=meta["seed"])
        bits = arrays["bits"]
        if bits.dtype != np.uint64 or bits.shape != index._bits.shape or meta["num_probes"] != index.num_probes:
            raise ValueError("filter array does not match the parameters")
        count = int(meta["count"])
        if count < 0:
            raise ValueError("negative count")
        index._bits = np.array(bits)
        index.count = count
        return index
