"""A ``CudaBackend`` that runs without a GPU: NumPy arrays posing as CuPy ones, kernels from the CPU shim library.

The backend's own logic (argument checks, contiguous copies, write-back into
strided outputs, scratch buffers, the order of launches) runs unchanged; only
``cupy`` is replaced by NumPy and each ``RawKernel`` launch by the same kernel
built for the CPU with ``tests/cuda_shim/shim.h`` (see :mod:`.build`). The
launcher keeps its strict checks, so a non-contiguous array reaching a kernel
still fails here as it would on the GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
from types import SimpleNamespace
from typing import Any

import numpy as np
from scipy.special import erf

from fusednn.backends.base import Backend
from fusednn.backends.cuda_backend import CudaBackend
from fusednn.backends.device import Device
from fusednn.kernels.cuda.launch import KernelLauncher
from fusednn.kernels.cuda.sources import C_TYPES, KernelSpec

from .build import wrapper_name

_GPU0 = SimpleNamespace(id=0)


class SimArray(np.ndarray):
    """A NumPy array that reports itself on ``cuda:0``, as ``cupy.ndarray.device.id`` does."""

    @property
    def device(self) -> SimpleNamespace:  # type: ignore[override]
        return _GPU0


class _FakeCupy:
    """The part of the ``cupy`` namespace the backend uses, over NumPy; creators return :class:`SimArray`."""

    ndarray = SimArray
    cuda = SimpleNamespace(Device=lambda index: contextlib.nullcontext())

    @staticmethod
    def asnumpy(a: Any) -> np.ndarray:
        return np.array(a, copy=True).view(np.ndarray)

    def __getattr__(self, name: str) -> Any:
        function = getattr(np, name)
        if name in ("asarray", "ascontiguousarray", "array", "zeros", "empty", "arange"):
            return lambda *args, **kwargs: function(*args, **kwargs).view(SimArray)
        return function


def _shim_function(library: ctypes.CDLL, spec: KernelSpec, dtype: np.dtype) -> Any:
    """A stand-in for ``RawKernel.__call__(grid, block, args)`` that runs the shim build of ``spec``."""
    function = getattr(library, wrapper_name(spec.name, C_TYPES[dtype]))
    function.restype = None
    scalar_types = {"long long": ctypes.c_longlong, "int": ctypes.c_int, "T": np.ctypeslib.as_ctypes_type(dtype)}

    def launch(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
        converted = [
            ctypes.c_void_p(value.ctypes.data) if ctype.endswith("*") else scalar_types[ctype](value)
            for (ctype, _), value in zip(spec.params, args, strict=True)
        ]
        function(ctypes.c_int(grid[0]), ctypes.c_int(block[0]), *converted)

    return launch


def simulated_cuda_backend(library: ctypes.CDLL) -> CudaBackend:
    """A :class:`CudaBackend` on ``cuda:0`` whose arrays are :class:`SimArray` and whose kernels run on the CPU."""
    backend = CudaBackend.__new__(CudaBackend)
    Backend.__init__(backend, Device("cuda", 0), _FakeCupy(), erf)  # type: ignore[arg-type]
    backend.compute_capability = "90"
    backend._cupy_linalg = SimpleNamespace(  # CuPy's GEMM compute-type switch, which NumPy does not have
        COMPUTE_TYPE_DEFAULT=0,
        COMPUTE_TYPE_TF32=1,
        get_compute_type=lambda dtype: 0,
        set_compute_type=lambda dtype, compute_type: None,
    )
    backend._launch = KernelLauncher(
        0, get_function=lambda spec, dtype: _shim_function(library, spec, dtype), ndarray_type=SimArray
    )
    return backend
