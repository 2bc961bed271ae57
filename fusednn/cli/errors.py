"""How ``fusednn train`` fails: one exit status per kind of failure, and the error that carries it.

Every failure a user can cause ends as a :class:`CommandError`, which the command
prints as one line and turns into its exit status; anything else is a bug in
fusednn and keeps its traceback.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager


class ExitStatus(enum.IntEnum):
    """The exit statuses of ``fusednn train``; each member's ``description`` says when it is used."""

    description: str

    def __new__(cls, value: int, description: str) -> ExitStatus:
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    OK = 0, "the run finished and its outputs are written"
    DIVERGED = 1, "training diverged: a loss or the weights became NaN or infinite"
    USAGE = 2, "a flag has a bad value, or flags contradict each other"
    DATA = 3, "--data cannot be loaded, or it does not fit --task, the splits or the model"
    CHECKPOINT = 4, "--resume: the checkpoint is unreadable, malformed, or conflicts with the flags or data"
    OUTPUT = 5, "--out cannot be written (read-only, full disk, a file or directory in the way), or holds a checkpoint"
    DEVICE = 6, "--device names a device this machine cannot use"
    MEMORY = 7, "the host or the device ran out of memory"
    ABORTED = 70, "--distributed: a rank failed mid-epoch, printed its error and aborted every rank"
    INTERRUPTED = 130, "interrupted (Ctrl-C); what was saved is said on the way out"


def exit_status_table() -> str:
    """The exit statuses as the text table the module docstring and ``--help`` show."""
    return "\n".join(f"  {status.value:>3}  {status.description}" for status in ExitStatus)


class CommandError(Exception):
    """A failure the user can fix: a one-line message and the exit status of its kind."""

    def __init__(self, status: ExitStatus, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[CommandError], tuple[ExitStatus, str]]:
        # Pickled whole, so that under --distributed every rank fails with the failing rank's exit status.
        return type(self), (self.status, str(self))


def first_line(error: BaseException) -> str:
    """An exception's message, cut to its first line (the command promises one-line errors).

    An ``OSError`` is told without Python's ``[Errno N]`` prefix, which means nothing to a user.
    """
    text = str(error)
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror + (f": {error.filename!r}" if error.filename else "")
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def failing_as(status: ExitStatus, *kinds: type[BaseException], context: str = "") -> Iterator[None]:
    """Re-raise the exceptions ``kinds`` raised in the block as a :class:`CommandError` of ``status``.

    ``context`` (say ``"--resume 'run.npz'"``) prefixes the message when the error
    itself does not say what it was about.
    """
    try:
        yield
    except CommandError:
        raise
    except kinds as error:
        message = first_line(error)
        raise CommandError(status, f"{context}: {message}" if context else message) from error
