"""Hash primitives shared by the set kernels: a 64-bit finaliser and helpers to derive seeds.

Everything here is a jitted scalar function over unsigned 64-bit integers; arithmetic wraps modulo 2**64.
"""

from __future__ import annotations

import numpy as np

from .._numba import kernel

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


@kernel(inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64's finaliser: a bijection on 64-bit words whose output bits all depend on all input bits."""
    x = np.uint64(x)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@kernel(inline="always")
def combine(seed: np.uint64, value: np.uint64) -> np.uint64:
    """Order-dependent combination of a running hash with one more 64-bit value."""
    return mix64(np.uint64(seed) ^ (np.uint64(value) + GOLDEN + (np.uint64(seed) << np.uint64(6))))


def derive_seed(seed: int, purpose: int) -> np.uint64:
    """A 64-bit seed for one use (``purpose``) of the user's integer ``seed``; pure Python, for setup code."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + purpose * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    return np.uint64(x ^ (x >> 31))
