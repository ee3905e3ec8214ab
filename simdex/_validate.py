"""The one input validator every index uses.

Each function either returns a clean, contiguous array of the expected dtype or raises an error that names the
argument and the problem. None of them mutate their input.
"""

from __future__ import annotations

import numbers
import threading
from typing import Any

import numpy as np

from ._numba import kernel
from .errors import DimensionMismatchError, DuplicateIdError, InvalidInputError, InvalidTypeError

METRICS = ("l2", "ip", "cosine")


def check_metric(metric: Any) -> str:
    if not isinstance(metric, str) or metric.lower() not in METRICS:
        raise InvalidInputError(f"metric must be one of {METRICS}; got {metric!r}")
    return metric.lower()


def check_positive_int(value: Any, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer (not a bool, float or str) of at least ``minimum`` (and at most ``maximum``, which bounds sizes
    whose absurd values would be a failed allocation or an endless loop rather than an error)."""
    if type(value) is int and value >= minimum and (maximum is None or value <= maximum):
        return value  # the common case, at a tenth of the cost of the checks below (one query per call)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInputError(f"{name} must be <= {maximum}; got {value}")
    return value


# the largest vector dimension accepted: far above any embedding model, and small enough that one vector is an
# allocation that cannot fail for its size alone
MAX_DIM = 1 << 20


# the largest graph degree accepted (HNSW M, Vamana R): far above any useful value (16-128), and small enough that
# the adjacency rows of a few vectors are an allocation that cannot fail for their size alone
MAX_DEGREE = 1 << 12


# the most results, candidates or beam entries one query may ask for (k, ef, L, rerank): far beyond any use, so
# that an absurd value (a size typed with too many zeros) is refused rather than a failed allocation
MAX_RESULTS = 1 << 24


def check_dim(dim: Any) -> int:
    """A vector dimension: an integer in [1, MAX_DIM]."""
    dim = check_positive_int(dim, "dim")
    if dim > MAX_DIM:
        raise InvalidInputError(f"dim must be <= {MAX_DIM}; got {dim}")
    return dim


def check_threads(threads: Any) -> int | None:
    if threads is None:
        return None
    return check_positive_int(threads, "threads")


def _as_numeric_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InvalidInputError(f"{name} could not be read as an array: {exc}") from None
    if arr.dtype == object:
        raise InvalidTypeError(f"{name} must be numeric; got an array of Python objects (ragged lists or mixed types?)")
    if arr.dtype.kind not in "iuf":
        raise InvalidTypeError(f"{name} must be a real numeric array (int or float); got dtype {arr.dtype}")
    return arr


_checked = threading.local()


class already_checked:  # noqa: N801 - used as a function: ``with already_checked(q):``
    """Within this block (and thread), :func:`check_vectors` passes ``queries``, an array it returned, through
    without checking it again: a collection checks a query once and then hands it to several indexes, each of
    which would check (and normalise) it again, a tenth of a single query's time. (A class, not a generator:
    the context costs a single query half a microsecond instead of two.)"""

    __slots__ = ("queries", "previous")

    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries

    def __enter__(self) -> np.ndarray:
        self.previous = getattr(_checked, "array", None)
        _checked.array = self.queries
        return self.queries

    def __exit__(self, *exc: object) -> None:
        _checked.array = self.previous


def check_vectors(x: Any, dim: int, name: str = "vectors", *, normalize: bool = False,
                  allow_empty: bool = False) -> np.ndarray:
    """Validate a batch of vectors and return it as a C-contiguous float32 array of shape (n, dim).

    Raises on: non-numeric dtype, rank other than 2, wrong number of columns, NaN or inf (also after the cast to
    float32, so float64 values beyond float32's range are caught), and zero vectors when ``normalize`` is set
    (cosine metric). With ``normalize`` the returned rows have unit L2 norm; the input is never modified.
    """
    trusted = getattr(_checked, "array", None)
    if trusted is not None and x is trusted and x.shape[1] == dim:
        return x
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == dim \
            and x.shape[0] and x.flags.c_contiguous:
        arr = out = x  # the common case: no conversion, straight to the one-pass kernel
    else:
        arr = _as_numeric_array(x, name)
        if arr.ndim != 2:
            hint = " (use x.reshape(1, -1) for a single vector)" if arr.ndim == 1 else ""
            raise InvalidInputError(f"{name} must be a 2-D array of shape (n, {dim}); got {arr.ndim}-D shape "
                                    f"{arr.shape}{hint}")
        if arr.shape[1] != dim:
            raise DimensionMismatchError(f"{name} have dimension {arr.shape[1]}, but the index has dim={dim}")
        if arr.shape[0] == 0 and not allow_empty:
            raise InvalidInputError(f"{name} is empty (0 rows)")
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(arr, dtype=np.float32)
    # the index keeps its own copy (the caller may reuse its buffer); a converted array is already one
    dst = np.empty_like(out) if out is arr else out
    if _prepare_rows(out, normalize, dst) >= 0:
        _raise_bad_rows(out, name, normalize)
    return dst


@kernel(fastmath=False)  # the finiteness test must not be assumed away
def _prepare_rows(x, normalize, out):
    """Write the rows of ``x`` (n, d) float32 into ``out``, scaled to unit norm with ``normalize``; returns the
    first row that is not finite (or is zero, with ``normalize``), else -1.

    One pass gives finiteness and norms: squares of finite float32 values summed in float64 cannot overflow, so a
    row's sum is finite exactly when all its values are. Rows whose scale overflows float32 (subnormal values) are
    scaled in float64."""
    n, d = x.shape
    for i in range(n):
        s0 = s1 = s2 = s3 = 0.0
        j = 0
        while j + 4 <= d:  # four sums: the float64 additions overlap instead of waiting on each other
            a, b, c, e = np.float64(x[i, j]), np.float64(x[i, j + 1]), np.float64(x[i, j + 2]), np.float64(x[i, j + 3])
            s0 += a * a
            s1 += b * b
            s2 += c * c
            s3 += e * e
            j += 4
        while j < d:
            a = np.float64(x[i, j])
            s0 += a * a
            j += 1
        sq = (s0 + s1) + (s2 + s3)
        if not np.isfinite(sq) or (normalize and sq == 0.0):
            return i
        if normalize:
            scale = 1.0 / np.sqrt(sq)
            if scale < 1e30:
                scale32 = np.float32(scale)
                for j in range(d):
                    out[i, j] = x[i, j] * scale32
            else:
                for j in range(d):
                    out[i, j] = np.float32(np.float64(x[i, j]) * scale)
        else:
            for j in range(d):
                out[i, j] = x[i, j]
    return -1


def _raise_bad_rows(x: np.ndarray, name: str, normalize: bool) -> None:
    """The error for a batch that :func:`_prepare_rows` refused, naming the first bad row and their count."""
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    finite = np.isfinite(sq)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidInputError(f"{name} contain NaN or infinite values (first at row {row}); "
                                f"{int((~finite).sum())} bad row(s) in total")
    if normalize:
        raise InvalidInputError(f"{name} contain zero vectors, which have no cosine direction (first at row "
                                f"{int(np.flatnonzero(sq == 0)[0])})")


def check_ids(ids: Any, n: int | None = None, name: str = "ids", *, unique: bool = True) -> np.ndarray:
    """Validate ids and return them as a 1-D int64 array. Ids are non-negative integers (-1 means "no result")."""
    arr = _as_numeric_array(ids, name)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1-D array of integers; got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise InvalidTypeError(f"{name} must be integers; got non-integral floats")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise InvalidInputError(f"{name} must fit in int64")
    out = arr.astype(np.int64)
    if n is not None and out.shape[0] != n:
        raise InvalidInputError(f"{name} has {out.shape[0]} entries but there are {n} vectors")
    if out.size and out.min() < 0:
        raise InvalidInputError(f"{name} must be >= 0 (-1 is reserved for 'no result'); got {int(out.min())}")
    if unique and out.size > 1:
        s = np.sort(out)
        dup = s[1:] == s[:-1]
        if dup.any():
            raise DuplicateIdError(f"{name} contain duplicates, e.g. {int(s[1:][dup][0])}")
    return out


def check_filter(allow: Any) -> np.ndarray:
    """A search filter: a boolean mask indexed by id (returned as a 1-D bool array; ids beyond its length are not
    allowed) or the ids that may be returned (returned as int64; ids not in the index are simply not allowed)."""
    try:
        arr = np.asarray(allow)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InvalidInputError(f"filter could not be read as an array: {exc}") from None
    if arr.dtype == np.bool_:
        if arr.ndim != 1:
            raise InvalidInputError(f"filter mask must be 1-D (indexed by id); got shape {arr.shape}")
        return arr
    return check_ids(_as_numeric_array(arr, "filter"), name="filter", unique=False)


def check_k(k: Any, available: int) -> int:
    k = check_positive_int(k, "k")
    if k > available:
        raise InvalidInputError(f"k={k} is larger than the number of vectors in the index ({available})")
    return k


def check_real(value: Any, name: str, low: float = -np.inf, high: float = np.inf, *, low_open: bool = False,
               high_open: bool = False) -> float:
    """A real number (not a bool, str or NaN) in the interval from ``low`` to ``high``, as a float; the bounds are
    included unless ``low_open`` / ``high_open``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name} must be a number; got {type(value).__name__} {value!r}")
    v = float(value)
    inside = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not inside:  # NaN is never inside
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise InvalidInputError(f"{name} must be in {interval}; got {value!r}")
    return v


def check_int(value: Any, name: str) -> int:
    """Any integer (a seed, say), not a bool, float or str."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}")
    return int(value)


def check_codes(codes: Any, code_size: int, name: str = "codes", *, single: bool = False,
                allow_empty: bool = True) -> np.ndarray:
    """Validate fixed-size byte codes (packed bits, quantizer codes): a C-contiguous uint8 array (n, code_size).
    With ``single`` one code of shape (code_size,) is taken as a batch of one."""
    arr = _as_numeric_array(codes, name)
    if arr.dtype != np.uint8:
        raise InvalidTypeError(f"{name} must be a uint8 array of shape (n, {code_size}); got dtype {arr.dtype}")
    if single and arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != code_size:
        raise InvalidInputError(f"{name} must be a uint8 array of shape (n, {code_size}); got shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise InvalidInputError(f"{name} is empty (0 rows)")
    return np.ascontiguousarray(arr)


def check_signatures(signatures: Any, num_perm: int, name: str = "signatures") -> np.ndarray:
    """MinHash signatures as C-contiguous uint32 (n, num_perm); a single (num_perm,) signature becomes
    (1, num_perm)."""
    arr = _as_numeric_array(signatures, name)
    if arr.dtype.kind not in "iu":
        raise InvalidTypeError(f"{name} must be an integer array (MinHash.signatures output); got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != num_perm:
        raise InvalidInputError(f"{name} must have shape (n, {num_perm}) for num_perm={num_perm}; got {arr.shape}")
    if arr.dtype != np.uint32:
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFFFFFF):
            raise InvalidInputError(f"{name} values must fit in uint32")
        arr = arr.astype(np.uint32)
    return np.ascontiguousarray(arr)


def check_csr_sets(indptr: Any, values: Any, name: str = "sets") -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch of integer sets in CSR form (set i = ``values[indptr[i]:indptr[i+1]]``).

    Returns ``(indptr int64, values)`` with values as uint64, or uint32 when given as uint32 (hashes). Raises on
    non-integer dtypes, negative values, and an ``indptr`` that does not start at 0, decreases or does not end at
    ``len(values)``. Empty sets are allowed.
    """
    ptr = _as_numeric_array(indptr, f"{name} indptr")
    vals = _as_numeric_array(values, f"{name} values")
    if ptr.ndim != 1 or ptr.shape[0] < 1:
        raise InvalidInputError(f"{name} indptr must be a 1-D array of length n + 1 >= 1; got shape {ptr.shape}")
    if ptr.dtype.kind not in "iu" or vals.dtype.kind not in "iu":
        raise InvalidTypeError(f"{name} must hold integers (hashed elements); got indptr dtype {ptr.dtype}, values "
                               f"dtype {vals.dtype}")
    if vals.ndim != 1:
        raise InvalidInputError(f"{name} values must be 1-D; got shape {vals.shape}")
    ptr = ptr.astype(np.int64)
    if ptr[0] != 0 or ptr[-1] != vals.shape[0] or (ptr.shape[0] > 1 and (np.diff(ptr) < 0).any()):
        raise InvalidInputError(f"{name} indptr must start at 0, never decrease and end at len(values)="
                                f"{vals.shape[0]}")
    if vals.dtype.kind == "i" and vals.size and vals.min() < 0:
        raise InvalidInputError(f"{name} values must be non-negative (hashes); got {int(vals.min())}")
    out = vals if vals.dtype == np.uint32 else vals.astype(np.uint64)
    return ptr, np.ascontiguousarray(out)


def check_texts(texts: Any, name: str = "texts", *, allow_none: bool = False) -> list:
    """``texts`` as a list of str (None entries too with ``allow_none``), or InvalidTypeError naming the problem.

    A list or tuple is accepted (empty strings included); a bare str (a common slip for ``[text]``: iterating it
    would embed single characters), any other container or iterator, and entries that are not str (bytes,
    numbers) are refused, naming the index of the first bad entry: ``texts[3] must be a str; got int``.
    """
    if isinstance(texts, str):
        raise InvalidTypeError(f"{name} must be a list of strings; got a single str: pass a list of strings "
                               f"(e.g. [text])")
    if not isinstance(texts, (list, tuple)):
        raise InvalidTypeError(f"{name} must be a list of strings; got "
                               f"{'None' if texts is None else type(texts).__name__} (convert it with list(...))")
    for i, text in enumerate(texts):
        if not isinstance(text, str) and not (allow_none and text is None):
            hint = " (decode bytes to str first)" if isinstance(text, (bytes, bytearray)) else ""
            raise InvalidTypeError(f"{name}[{i}] must be a str{' or None' if allow_none else ''}; got "
                                   f"{'None' if text is None else type(text).__name__}{hint}")
    return texts if isinstance(texts, list) else list(texts)
