"""Helpers shared by the ``fusednn train`` tests: a tiny run, the one-line error check, an in-process Ctrl-C."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

XOR = ["train", "--data", "xor", "--rows", "200", "--hidden", "8", "--batch-size", "32", "--device", "numpy"]
"""A run small enough to train in a fraction of a second."""


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The command's stderr without its epoch log lines, checked to be one ``error:`` line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("fusednn train: error: "), err
    return lines[0]


class _InterruptAt(logging.Handler):
    """Press Ctrl-C, in effect, when ``fit`` logs the end of an epoch (before that epoch's checkpoint)."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.line):
            raise KeyboardInterrupt


@contextmanager
def interrupted_at(line: str) -> Iterator[None]:
    """Raise ``KeyboardInterrupt`` inside ``fit`` when it logs a line starting with ``line`` (``"epoch 2/3"``)."""
    logger = logging.getLogger("fusednn.training")
    handler, level = _InterruptAt(line), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
