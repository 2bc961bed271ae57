"""Device kinds, registered in one table, and device strings, parsed once and strictly.

The grammar follows PyTorch's ``c10::Device``: ``kind`` for a host kind
(``numpy``, ``cpu``), ``kind`` or ``kind:N`` for a kind with numbered devices
(``cuda``), plus ``auto`` (resolved by the registry, since it needs to know
which GPUs are usable). A :class:`Device` has a canonical ``str()`` that parses
back to itself, so it serves as the cache key for backends.

:data:`DEVICE_KINDS` is the one place a device kind is registered: its name,
its backend class and, for a kind with memory of its own, its runtime module.
Parsing, ``available_devices``, ``"auto"`` and which backend owns an array
(:func:`array_device`) are derived from it.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DeviceKind:
    """One registered kind of device.

    Attributes:
        name: what device strings call it (``"cpu"``).
        backend: ``"module:Class"`` of its :class:`~fusednn.backends.base.Backend`, imported on first use.
        runtime: for a kind with numbered devices that have memory of their own, the module that
            answers, without importing a driver when it is imported: ``device_count() -> int`` (0 when
            unusable), ``require_device(index)`` (raises ``RuntimeError`` saying why a device is
            unusable) and ``array_device_index(x) -> int | None`` (which of its devices holds ``x``;
            ``None`` for anything else). ``None`` for a host kind, which takes no index.
    """

    name: str
    backend: str
    runtime: str | None = None

    @property
    def indexed(self) -> bool:
        """Whether devices of this kind are numbered (``cuda:N``)."""
        return self.runtime is not None

    def load_runtime(self) -> ModuleType:
        """The runtime module of an indexed kind."""
        assert self.runtime is not None, f"{self.name} is a host kind and has no runtime"
        return importlib.import_module(self.runtime)


DEVICE_KINDS: dict[str, DeviceKind] = {
    kind.name: kind
    for kind in (
        DeviceKind("numpy", "fusednn.backends.numpy_backend:NumpyBackend"),
        DeviceKind("cpu", "fusednn.backends.numba_backend:NumbaBackend"),
        DeviceKind("cuda", "fusednn.backends.cuda_backend:CudaBackend", runtime="fusednn.backends.cuda_runtime"),
    )
}
"""Every kind of device fusednn knows, in the order :func:`fusednn.available_devices` lists them."""

INDEXED_KINDS: tuple[DeviceKind, ...] = tuple(kind for kind in DEVICE_KINDS.values() if kind.indexed)
"""The kinds with numbered devices, in registration order (``"auto"`` takes the first usable one)."""

VALID_DEVICE_STRINGS = (
    ", ".join(f"'{k.name}', '{k.name}:N' (N >= 0)" if k.indexed else f"'{k.name}'" for k in DEVICE_KINDS.values())
    + " or 'auto'"
)

DEFAULT_DEVICE_ENV = "FUSEDNN_DEVICE"
"""Environment variable that sets the default device (else ``"cpu"``)."""

_DEVICE_PATTERN = re.compile(r"([a-z][a-z0-9_]*)(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    """A concrete device: a registered kind (``numpy``, ``cpu`` or ``cuda``) and, for a numbered kind, an index.

    >>> Device("cuda", 0)
    Device(kind='cuda', index=0)
    >>> str(parse_device("cuda"))
    'cuda:0'
    """

    kind: str
    index: int | None = None

    def __post_init__(self) -> None:
        kind = DEVICE_KINDS.get(self.kind)
        if kind is None:
            raise ValueError(f"Unknown device kind {self.kind!r}; expected one of {tuple(DEVICE_KINDS)}")
        if kind.indexed:
            if not isinstance(self.index, int) or self.index < 0:
                raise ValueError(f"A {self.kind} device needs an index >= 0, got {self.index!r}")
        elif self.index is not None:
            raise ValueError(f"Device {self.kind!r} takes no index, got {self.index!r}")

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def array_device(x: Any) -> Device | None:
    """The numbered device whose memory holds ``x`` (``cuda:1`` for a CuPy array on GPU 1), else ``None``.

    Each indexed kind's runtime answers for its own arrays; host data (NumPy arrays, lists,
    scalars) belongs to no device in particular.

    >>> import numpy as np
    >>> array_device(np.zeros(3)) is None
    True
    """
    if type(x) is np.ndarray:  # the common case, and no device array is exactly an ndarray
        return None
    for kind in INDEXED_KINDS:
        index = kind.load_runtime().array_device_index(x)
        if index is not None:
            return Device(kind.name, index)
    return None


def describe_location(x: Any) -> str:
    """Say where an array lives, for error messages (``"cuda:0"``, ``"host memory (numpy)"``)."""
    device = array_device(x)
    if device is not None:
        return str(device)
    if isinstance(x, np.ndarray):
        return "host memory (numpy)"
    return f"a {type(x).__module__}.{type(x).__name__}"


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
    match = _DEVICE_PATTERN.fullmatch(spec.strip().lower())
    kind = DEVICE_KINDS.get(match.group(1)) if match else None
    if match is None or kind is None or (match.group(2) is not None and not kind.indexed):
        raise ValueError(f"Unknown device {spec!r}; expected one of {VALID_DEVICE_STRINGS}")
    if not kind.indexed:
        return Device(kind.name)
    return Device(kind.name, int(match.group(2) or 0))


def default_device_string() -> str:
    """The device used when none is named: ``$FUSEDNN_DEVICE`` if set, else ``"cpu"``."""
    return os.environ.get(DEFAULT_DEVICE_ENV, "").strip() or "cpu"
