"""Low-level writes of the store, and the translation of their failures into :class:`~simdex.errors.StorageError`.

Every error of the storage layer (an ``OSError`` from a write, fsync, truncate or rename, or an ``sqlite3.Error``)
reaches the user as one ``StorageError`` that names the file, what was being done, and the cause in words.
"""

from __future__ import annotations

import errno
import os
import sqlite3

from ..errors import StorageError

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file size limit is reached",
    errno.EIO: "an I/O error",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
# sqlite3 error codes (sqlite3.h) and the errno that says the same
_SQLITE_ERRNO = {13: errno.ENOSPC, 10: errno.EIO, 8: errno.EROFS, 14: errno.EIO, 3: errno.EACCES}


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) in _SQLITE_ERRNO:
            return _SQLITE_ERRNO[code & 0xFF]
        text = str(exc).lower()
        if "disk is full" in text:
            return errno.ENOSPC
        if "i/o error" in text:
            return errno.EIO
    return None


def storage_error(exc: BaseException, action: str, path: str | os.PathLike) -> StorageError:
    """``exc`` (raised while doing ``action`` on ``path``) as a StorageError; a StorageError is returned as is."""
    if isinstance(exc, StorageError):
        return exc
    number = _errno_of(exc)
    cause = _CAUSES.get(number) if number is not None else None
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    name = errno.errorcode.get(number, "") if number is not None else ""
    said = f"{cause} ({name}: {detail})" if cause else (f"{name}: {detail}" if name else detail)
    return StorageError(f"could not {action} {path}: {said}", errno=number, path=str(path))


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``fd``: a write to a nearly full disk returns a short count before it
    fails, and a short count taken for success leaves a torn record behind."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


