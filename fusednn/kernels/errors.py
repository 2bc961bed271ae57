"""The error a kernel raises when it is handed a code (activation, loss, optimizer) it does not define.

Kernels select what they compute by small integer codes. A code outside the table
would otherwise fall through to some branch and compute the wrong function without
a word, so every kernel that takes a code refuses the others: the Numba kernels
raise :class:`UnknownCodeError` before their loops, and the CUDA launcher
(:func:`fusednn.kernels.cuda.launch.prepare_args`) raises it before a launch.
"""

from __future__ import annotations


class UnknownCodeError(ValueError):
    """A code outside the table a kernel was built from.

    ``UnknownCodeError(kind, code, count, table)``: ``code`` is not in ``range(count)``,
    the codes of ``table`` (a dotted name). A Numba kernel raises it with the code as a
    run-time argument; the message is written here, in Python, because formatting a
    string inside ``@njit`` code compiles Python's string machinery into the kernel
    (seconds of cold compile per kernel).

    >>> str(UnknownCodeError("activation", 12, 10, "fusednn.kernels.activation_codes.ACTIVATIONS"))
    'Unknown activation code 12; expected an integer from 0 to 9 (fusednn.kernels.activation_codes.ACTIVATIONS)'
    """

    def __init__(self, kind: str, code: int, count: int, table: str) -> None:
        super().__init__(kind, code, count, table)
        self.kind, self.code, self.count, self.table = kind, code, count, table

    def __str__(self) -> str:
        return f"Unknown {self.kind} code {self.code}; expected an integer from 0 to {self.count - 1} ({self.table})"


def check_code(code: int, kind: str, names: tuple[str, ...], table: str) -> None:
    """Raise :class:`UnknownCodeError` unless ``0 <= code < len(names)`` (the host-side check).

    >>> check_code(1, "loss", ("mse", "mae"), "LOSSES")
    >>> check_code(2, "loss", ("mse", "mae"), "LOSSES")
    Traceback (most recent call last):
    ...
    fusednn.kernels.errors.UnknownCodeError: Unknown loss code 2; expected an integer from 0 to 1 (LOSSES)
    """
    if not 0 <= code < len(names):
        raise UnknownCodeError(kind, code, len(names), table)
