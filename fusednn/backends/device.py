"""Device strings, parsed once and strictly.

The grammar follows PyTorch's ``c10::Device``: ``numpy | cpu | cuda | cuda:N``,
plus ``auto`` (resolved by the registry, since it needs to know which GPUs are
usable). A :class:`Device` has a canonical ``str()`` that parses back to itself,
so it serves as the cache key for backends.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

DEVICE_KINDS: tuple[str, ...] = ("numpy", "cpu", "cuda")
"""Every kind of device fusednn knows."""

VALID_DEVICE_STRINGS = "'numpy', 'cpu', 'cuda', 'cuda:N' (N >= 0) or 'auto'"

DEFAULT_DEVICE_ENV = "FUSEDNN_DEVICE"
"""Environment variable that sets the default device (else ``"cpu"``)."""

_CUDA_PATTERN = re.compile(r"cuda(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    """A concrete device: a kind (``numpy``, ``cpu`` or ``cuda``) and, for CUDA, an index.

    >>> Device("cuda", 0)
    Device(kind='cuda', index=0)
    >>> str(parse_device("cuda"))
    'cuda:0'
    """

    kind: str
    index: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ValueError(f"Unknown device kind {self.kind!r}; expected one of {DEVICE_KINDS}")
        if self.kind == "cuda":
            if not isinstance(self.index, int) or self.index < 0:
                raise ValueError(f"A cuda device needs an index >= 0, got {self.index!r}")
        elif self.index is not None:
            raise ValueError(f"Device {self.kind!r} takes no index, got {self.index!r}")

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind


def parse_device(spec: str | Device) -> Device:
    """Parse a device string into a :class:`Device`.

    ``"auto"`` is not accepted here: it depends on which GPUs are usable, so
    :func:`fusednn.backend` resolves it. Whitespace and case are ignored.

    Raises:
        TypeError: ``spec`` is neither a string nor a Device.
        ValueError: the string is not in the grammar; the message lists the valid forms.
    """
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"A device must be a string such as 'cpu' or 'cuda:0', got {type(spec).__name__}")
    return _parse_device_string(spec)


# Memoised: fusednn.backend() parses its device string on every call, and losses call it in every training step.
@functools.lru_cache(maxsize=64)
def _parse_device_string(spec: str) -> Device:
    text = spec.strip().lower()
    if text in ("numpy", "cpu"):
        return Device(text)
    match = _CUDA_PATTERN.fullmatch(text)
    if match:
        return Device("cuda", int(match.group(1) or 0))
    raise ValueError(f"Unknown device {spec!r}; expected one of {VALID_DEVICE_STRINGS}")


def default_device_string() -> str:
    """The device used when none is named: ``$FUSEDNN_DEVICE`` if set, else ``"cpu"``."""
    return os.environ.get(DEFAULT_DEVICE_ENV, "").strip() or "cpu"
