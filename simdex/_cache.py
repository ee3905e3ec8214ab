"""Where simdex's compiled kernels are cached, and when a cached kernel is still valid.

numba caches a compiled kernel beside its source file and checks only that one file: a kernel that calls or
inlines kernels of other modules (every search loop does: the scorers, heaps and distances live elsewhere) would
be served stale after one of those changed, and a cache inside site-packages is lost at every upgrade. simdex
registers its own locator, ahead of numba's, for its own files:

- the cache lives in ``SIMDEX_CACHE_DIR`` if set, else ``NUMBA_CACHE_DIR`` if set, else the user's cache folder
  (``$XDG_CACHE_HOME/simdex`` or ``~/.cache/simdex``), so it survives reinstalls and upgrades;
- a cached kernel is valid while every simdex module that holds compiled code is byte for byte the same (one hash
  over all of them, plus numba's version): an upgrade that changes no kernel keeps the cache, any change to any
  kernel recompiles them all, never serving code compiled from other sources.

When that folder cannot be written, numba's own locators take over (beside the source, or numba's user folder).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numba
from numba.core.caching import CacheImpl, _CacheLocator

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """The folder of simdex's kernel cache (see the module docstring)."""
    for var in ("SIMDEX_CACHE_DIR", "NUMBA_CACHE_DIR"):
        value = os.environ.get(var)
        if value:
            return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "simdex"


@functools.lru_cache(maxsize=1)
def kernel_sources_hash() -> bytes:
    """One hash over every module of the package that holds compiled code (those that mention numba), in path
    order, and numba's version."""
    h = hashlib.sha256(numba.__version__.encode())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        data = path.read_bytes()
        if b"numba" in data:
            h.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + data)
    return h.digest()


class SimdexCacheLocator(_CacheLocator):
    """numba cache locator for kernels defined in simdex's own modules (see the module docstring)."""

    def __init__(self, py_func, py_file: str) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        relative = Path(py_file).resolve().parent.relative_to(PACKAGE_DIR)
        self._cache_path = str(cache_dir() / relative)

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self) -> bytes:
        return kernel_sources_hash()

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file: str):
        try:
            Path(py_file).resolve().relative_to(PACKAGE_DIR)
        except ValueError:
            return None  # not ours: numba's locators decide
        locator = cls(py_func, py_file)
        if locator._cache_path not in _WRITABLE:
            try:
                locator.ensure_cache_path()  # creates the folder and tries a file in it
            except OSError:
                return None
            _WRITABLE.add(locator._cache_path)
        return locator


_WRITABLE: set[str] = set()  # folders already checked, so that decorating ~200 kernels checks each folder once


def install() -> None:
    """Put :class:`SimdexCacheLocator` first among numba's locators (before any simdex kernel is decorated)."""
    if SimdexCacheLocator not in CacheImpl._locator_classes:
        CacheImpl._locator_classes.insert(0, SimdexCacheLocator)
