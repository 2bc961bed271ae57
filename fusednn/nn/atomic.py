"""Atomic file writes: a file is either the old one or the complete new one, never a torn one.

:func:`write_atomically` writes through a temporary file in the destination's
directory, flushes and fsyncs it, renames it over the destination with
:func:`os.replace` and fsyncs the directory, so that the rename itself survives a
power cut. Checkpoints, ``metrics.json`` and the command line's plots all go
through it.

A process killed mid-write (``kill -9``, the OOM killer, a lost node) cannot remove
its temporary, and a checkpoint's temporary is as large as the checkpoint. So each
temporary's name carries the host and process id of its writer
(``.run.npz.<host>-<pid>.<random>.tmp``), and every successful write of a
destination removes that destination's temporaries whose writer has gone. A
temporary of a live process, this one included, is never touched, nor one written
from another host, whose processes this one cannot see.

>>> import os, tempfile
>>> from fusednn.nn.atomic import write_atomically
>>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
>>> write_atomically(path, lambda handle: handle.write(b"hello\\n"))
>>> open(path).read()
'hello\\n'
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

_SUFFIX = ".tmp"


def _host_tag() -> str:
    # Only [A-Za-z0-9_]: the "-" before the pid then separates the two unambiguously.
    return re.sub(r"\W", "_", socket.gethostname(), flags=re.ASCII)[:32] or "host"


def _prefix(path: Path, pid: int | None = None) -> str:
    """The start of the name of a temporary for ``path`` written by ``pid`` (default: this process) on this host."""
    return f".{path.name}.{_host_tag()}-{os.getpid() if pid is None else pid}."


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` with what ``write(handle)`` writes to a binary handle, atomically.

    On any failure (an exception in ``write``, a full disk, a missing directory,
    ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left as it
    was. After a successful write, temporaries of ``path`` left by killed processes
    are removed (see the module's docstring).

    Raises:
        OSError: the write failed; the message names ``path`` (never the temporary)
            and the errno is kept, so ``PermissionError``, ``FileNotFoundError`` and
            their kin arrive as themselves.
    """
    path = Path(path)
    directory = path.parent
    try:
        handle = tempfile.NamedTemporaryFile(dir=directory, prefix=_prefix(path), suffix=_SUFFIX, delete=False)
    except OSError as error:
        raise naming(path, error) from None
    try:
        with handle:
            os.fchmod(handle.fileno(), _mode_for(path))
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # the error that brought us here is the one to report
            Path(handle.name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise naming(path, error) from None
        raise
    _fsync_directory(directory)
    remove_orphaned_temporaries(path)


def _mode_for(path: Path) -> int:
    """The permissions the new file gets: those of the file it replaces, else what ``open`` would give.

    ``NamedTemporaryFile`` creates its file 0600, private to its owner, where a plain
    ``open(path, "w")`` honours the umask (0644 under the usual 022).
    """
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@functools.cache
def _umask() -> int:
    # Reading the umask means setting it; done once, so no other thread can see the brief 0 twice.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_can_write(path: str | os.PathLike) -> None:
    """Create and remove a temporary beside ``path``, as :func:`write_atomically` will, to find out now if it can.

    A probe, not a look at permission bits: as root those stop nothing, while a
    read-only mount, a quota or a missing directory stops everyone.

    Raises:
        OSError: no file can be created there; the message names ``path``.
    """
    path = Path(path)
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=_prefix(path), suffix=_SUFFIX):
            pass
    except OSError as error:
        raise naming(path, error) from None


def naming(path: str | os.PathLike, error: OSError, action: str = "write") -> OSError:
    """``error`` retold with the user's path (never a temporary's), keeping its errno and so its subclass."""
    return retold(error, f"Cannot {action} {str(path)!r}: {error.strerror or error}")


def retold(error: OSError, message: str) -> OSError:
    """An ``OSError`` with ``message`` and ``error``'s errno, so it is the same subclass (``FileNotFoundError``...)."""
    return OSError(error.errno, message) if error.errno is not None else OSError(message)


def orphaned_temporaries(path: str | os.PathLike) -> Iterator[Path]:
    """Temporaries of ``path`` written on this host by processes that no longer exist."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.{_host_tag()}-") + r"(\d+)\.\w+" + re.escape(_SUFFIX))
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not _alive(int(match.group(1))):
            yield Path(entry.path)


def remove_orphaned_temporaries(path: str | os.PathLike) -> None:
    """Remove what :func:`orphaned_temporaries` finds; best effort (another process may race us to it)."""
    for orphan in orphaned_temporaries(path):
        with contextlib.suppress(OSError):
            orphan.unlink()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists; when in doubt, yes (its temporary is then kept)."""
    if os.name != "posix" or pid <= 0 or pid == os.getpid():
        # Windows' os.kill(pid, 0) would terminate the process; os.kill(0, ...) addresses our own group.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


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
