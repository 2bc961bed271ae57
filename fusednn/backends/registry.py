"""Which backends exist, which are usable here, and one cached instance per device.

Backend modules are imported lazily, so ``import fusednn`` never imports Numba
or CuPy and never touches a GPU.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

import numpy as np

from .base import Backend
from .device import DEVICE_KINDS, INDEXED_KINDS, Device, array_device, default_device_string, parse_device

_cache: dict[Device, Backend] = {}
_parsed: dict[str, Device] = {}
"""Each device string seen, parsed: a loss resolves its device on every call, and parsing costs 0.4 µs."""
_lock = threading.Lock()


def _backend_class(kind: str) -> Callable[[Device], Backend]:
    module_name, class_name = DEVICE_KINDS[kind].backend.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def device_count(kind: str) -> int:
    """Number of usable devices of the numbered kind ``kind``; 0 when its driver or devices are missing."""
    return int(DEVICE_KINDS[kind].load_runtime().device_count())


def cuda_device_count() -> int:
    """Number of usable CUDA GPUs; 0 when CuPy is missing or no GPU is visible."""
    return device_count("cuda")


def _auto_device() -> str:
    """The first usable device of the first numbered kind that has one (``cuda:0``), else ``"cpu"``."""
    for kind in INDEXED_KINDS:
        if device_count(kind.name) > 0:
            return f"{kind.name}:0"
    return "cpu"


def backend(device: str | Device | None = None) -> Backend:
    """Return the backend for ``device``, creating it on first use and caching it.

    ``device`` is ``"numpy"``, ``"cpu"`` (the default, or ``$FUSEDNN_DEVICE``),
    ``"cuda"``/``"cuda:N"`` or ``"auto"`` (the first usable GPU, else ``"cpu"``).

    >>> import fusednn
    >>> fusednn.backend("numpy").name
    'numpy'

    Raises:
        ValueError: the device string is not valid; the message lists the valid forms.
        RuntimeError: a CUDA device was asked for but cannot be used; the message says why.
    """
    if isinstance(device, Backend):
        return device
    parsed = _parsed.get(device) if isinstance(device, str) else None
    if parsed is None:
        spec = default_device_string() if device is None else device
        auto = isinstance(spec, str) and spec.strip().lower() == "auto"
        if auto:  # not remembered: which device "auto" means is asked each time
            spec = _auto_device()
        parsed = parse_device(spec)
        if isinstance(device, str) and not auto:
            _parsed[device] = parsed
    cached = _cache.get(parsed)
    if cached is not None:
        return cached
    with _lock:
        if parsed not in _cache:
            kind = DEVICE_KINDS[parsed.kind]
            if kind.indexed:
                # Say why the device is unusable (driver missing, no GPU, index out of range) before
                # importing the backend module, so the user never sees a raw import traceback.
                kind.load_runtime().require_device(parsed.index)
            _cache[parsed] = _backend_class(parsed.kind)(parsed)
        return _cache[parsed]


def available_devices() -> list[str]:
    """Canonical strings of every device usable here, e.g. ``["numpy", "cpu", "cuda:0"]``."""
    devices: list[str] = []
    for kind in DEVICE_KINDS.values():
        if kind.indexed:
            devices.extend(f"{kind.name}:{index}" for index in range(device_count(kind.name)))
        else:
            devices.append(kind.name)
    return devices


def is_host_array(x: object) -> bool:
    """Whether ``x`` is a NumPy array in host memory (not a device array, which may also look array-like)."""
    if type(x) is np.ndarray:  # the common case, and no device array is exactly an ndarray
        return True
    return isinstance(x, np.ndarray) and array_device(x) is None


def backend_of(x: object, default: str | Device | None = None) -> Backend:
    """The backend whose device holds ``x``: ``cuda:N`` for an array on GPU N, else ``backend(default)``.

    Host arrays (NumPy, lists) live on no particular host backend, so they get the default device.
    The device kinds' runtimes say which arrays are theirs (:func:`~fusednn.backends.device.array_device`).
    """
    device = array_device(x)
    return backend(default) if device is None else backend(device)


def to_host(x: object) -> np.ndarray:
    """Copy any array fusednn handles (NumPy, CuPy, lists) into a NumPy array on the host."""
    device = array_device(x)
    return np.asarray(x) if device is None else backend(device).to_numpy(x)
