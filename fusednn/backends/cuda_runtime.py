"""The cuda kind's runtime: finding CuPy and GPUs, and CUDA arrays, without ever failing at import time.

Everything CUDA-related that must work on a machine without a GPU (CI has
none) goes through here: it answers questions with values or clear
``RuntimeError`` messages instead of raw import tracebacks. It is the
``runtime`` of the ``cuda`` entry in :data:`fusednn.backends.device.DEVICE_KINDS`
(``device_count``, ``require_device``, ``array_device_index``), so the registry
asks it, and nothing outside the CUDA backend knows CUDA's array protocol.
"""

from __future__ import annotations

from types import ModuleType

CUDA_EXTRAS_HINT = (
    "install CuPy with `pip install fusednn[cuda13]` (CUDA 13) or `pip install fusednn[cuda12]` (CUDA 12)"
)


def import_cupy() -> ModuleType:
    """Import and return CuPy.

    Raises:
        RuntimeError: CuPy is not installed or fails to load; the message names the extra to install.
    """
    try:
        import cupy
    except ImportError as error:
        raise RuntimeError(f"The cuda device needs CuPy, which is not installed: {CUDA_EXTRAS_HINT}") from error
    except Exception as error:  # a broken CUDA install raises all sorts of things at import
        raise RuntimeError(f"CuPy is installed but failed to load ({error}); {CUDA_EXTRAS_HINT}") from error
    return cupy


def device_count() -> int:
    """Number of visible CUDA GPUs, 0 when CuPy or the driver is missing."""
    try:
        cupy = import_cupy()
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def require_device(index: int) -> ModuleType:
    """Return CuPy after checking that GPU ``index`` exists.

    Raises:
        RuntimeError: CuPy is missing, no GPU is visible, or ``index`` is out of range.
    """
    cupy = import_cupy()
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as error:
        raise RuntimeError(
            f"No usable CUDA GPU: the CUDA runtime reports {error}; check the NVIDIA driver, or use device='cpu'"
        ) from error
    if count == 0:
        raise RuntimeError("No CUDA GPU is visible (check CUDA_VISIBLE_DEVICES and the driver), or use device='cpu'")
    if index >= count:
        raise RuntimeError(f"cuda:{index} was asked for but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return cupy


def array_device_index(x: object) -> int | None:
    """The GPU holding ``x``, for a CUDA array (CuPy, or any ``__cuda_array_interface__`` array), else ``None``.

    An array without a ``device.id`` (a foreign library's) counts as GPU 0. Nothing is imported.

    >>> import numpy as np
    >>> array_device_index(np.zeros(2)) is None
    True
    """
    if not hasattr(x, "__cuda_array_interface__"):
        return None
    index = getattr(getattr(x, "device", None), "id", None)
    return int(index) if index is not None else 0
