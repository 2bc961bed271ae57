"""Atomic file writes: a file is either the old one or the complete new one, never a torn one.

:func:`write_atomically` writes through a temporary file in the destination's
directory, flushes and fsyncs it, renames it over the destination with
:func:`os.replace` and fsyncs the directory, so that the rename itself survives a
power cut. Checkpoints, ``metrics.json`` and the command line's plots all go
through it.

>>> import os, tempfile
>>> from fusednn.nn.atomic import write_atomically
>>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
>>> write_atomically(path, lambda handle: handle.write(b"hello\\n"))
>>> open(path).read()
'hello\\n'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` with what ``write(handle)`` writes to a binary handle, atomically.

    On any failure (an exception in ``write``, a full disk, a missing directory) the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        OSError: the write failed; the message names ``path``.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    except OSError as error:
        raise _naming(path, error) from None
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException as error:
        Path(handle.name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _naming(path, error) from None
        raise
    _fsync_directory(directory)


def _naming(path: Path, error: OSError) -> OSError:
    """``error`` retold with the user's path (never the temporary's), keeping its errno."""
    message = f"Cannot write {str(path)!r}: {error.strerror or error}"
    return OSError(error.errno, message) if error.errno is not None else OSError(message)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
