"""Exception hierarchy.

Every error simdex raises on bad input derives from :class:`SimdexError` and from the built-in exception a Python
user would expect (``ValueError``, ``KeyError``, ``TypeError``, ``OSError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class SimdexError(Exception):
    """Base class of all simdex errors."""


class InvalidInputError(SimdexError, ValueError):
    """An argument has the wrong value, shape or contents (NaN, inf, negative id, ...)."""


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument has the wrong type or dtype (strings, objects, complex numbers, ...)."""


class DimensionMismatchError(InvalidInputError):
    """Vectors do not have the dimension the index was created with."""


class DuplicateIdError(InvalidInputError):
    """An id is given twice in one call, or is already in the index."""


class DuplicateDocumentError(InvalidInputError):
    """A collection created with ``dedup={..., "on_duplicate": "reject"}`` refused a batch because some of its
    documents nearly duplicate stored ones (or earlier ones in the batch); nothing of the batch was written.
    ``duplicates`` maps each refused id to the id of the record it nearly duplicates (None where a Bloom filter
    found it, which keeps no ids)."""

    def __init__(self, message: str, duplicates: dict[str, str | None] | None = None) -> None:
        super().__init__(message)
        self.duplicates = dict(duplicates or {})


class FilterError(InvalidInputError):
    """A ``where`` filter is malformed; the message starts with the path of the bad part."""


class UnknownIdError(SimdexError, KeyError):
    """An id is not in the index."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class CorruptFileError(SimdexError, OSError):
    """A saved file is truncated, damaged or not a simdex file."""


class MissingFileError(SimdexError, FileNotFoundError):
    """There is no file (or index folder) at the path given."""


class UnknownKindError(SimdexError, OSError):
    """A healthy simdex file holds a kind of index that this simdex version does not know (it was written by a
    newer version, or by a plugin that is not installed). The file is not damaged."""


class UnsupportedOperationError(SimdexError, TypeError):
    """This kind of index does not support the operation (a build-once index cannot add or remove, a Bloom filter
    cannot forget a set or keep chosen ids); the message says what to do instead. The index is unchanged."""


class AccessDeniedError(SimdexError, PermissionError):
    """The server refused the request: a missing or wrong API key (HTTP 401), or a key whose role or collections
    do not allow it (403)."""


class CollectionNotFoundError(SimdexError, KeyError):
    """No collection of that name exists."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CollectionExistsError(SimdexError, ValueError):
    """A collection of that name already exists."""


class DatabaseLockedError(SimdexError, OSError):
    """Another process has the database open for writing."""


class ReadOnlyError(SimdexError, PermissionError):
    """The database was opened read-only."""


class CorruptDatabaseError(CorruptFileError):
    """Stored data of a database is damaged beyond automatic repair."""


class StorageError(SimdexError, OSError):
    """Stored data could not be written (disk full, I/O error, failed fsync, file size limit).

    The message names the file and the cause; ``errno`` is the operating system's error number when one is known
    and ``filename`` the file. The write that raised it did not happen (it will not reappear after a restart),
    nothing acknowledged before it is lost, reads go on, and writes succeed again once the cause is gone (space
    freed) without reopening the database.
    """

    def __init__(self, message: str, *, errno: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.filename = path

    def __str__(self) -> str:  # OSError would format (errno, strerror); the message already says it all
        return str(self.args[0]) if self.args else ""

    @property
    def disk_full(self) -> bool:
        """Whether the cause is a lack of space (ENOSPC, EDQUOT, EFBIG): freeing space will cure it."""
        import errno as _errno
        return self.errno in (_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG)


class TruncatedTextWarning(UserWarning):
    """A text was longer than the embedder reads (all-MiniLM-L6-v2: 256 tokens); only its beginning was
    embedded. Over HTTP the same notes come back in the response's ``warnings`` field."""


class DeviceMemoryError(SimdexError, MemoryError):
    """A tensor could not be allocated on a GPU (or other torch device): the message names the device, the bytes the
    operation needed and those free. The index is unchanged."""
