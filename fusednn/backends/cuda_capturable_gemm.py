"""Row-major GEMMs that a CUDA stream capture can record: cuBLAS through CuPy's low-level binding, or a kernel.

``cupy.matmul`` raises ``NotImplementedError`` while a stream captures, so a captured
training step calls cuBLAS itself (``cupy_backends.cuda.libs.cublas``) on a handle of
its own, bound to the capturing stream, with a fixed workspace set before the capture
so that cuBLAS allocates nothing inside the graph. Products of at most
:data:`KERNEL_GEMM_MAX` multiply-adds run as the ``gemm`` kernel of ``training_step.cu``
instead (no cuBLAS set-up for the tiny layers, and the only choice where CuPy's cuBLAS
binding cannot be loaded).

cuBLAS is column-major: a row-major ``C (m x n) = op(A) @ op(B)`` is the column-major
``C^T = op(B)^T @ op(A)^T``, so each call swaps the operands and passes the row-major
leading dimensions (see :meth:`CapturableGemm.__call__`).
"""

from __future__ import annotations

import ctypes
import os
import weakref
from typing import Any

import numpy as np

from ..kernels.cuda.launch import KernelLauncher

Array = Any

KERNEL_GEMM_MAX = 2**16
"""Products of at most this many multiply-adds (``m * n * k``) run as the ``gemm`` kernel, larger ones on cuBLAS.

A guess, not a measurement (no GPU was at hand): inside a graph both cost one launch, and the
kernel's one-thread-per-output loop falls behind cuBLAS's tiled GEMMs as the shapes grow.
"""

WORKSPACE_BYTES = 32 * 2**20
"""The cuBLAS workspace of each handle (PyTorch's default size for Hopper)."""

_OP_N, _OP_T = 0, 1  # cublasOperation_t
_DEFAULT_MATH, _TF32_TENSOR_OP_MATH = 0, 3  # cublasMath_t

# One handle per binding and GPU for the process, with its workspace: (handle, workspace array).
_handles: weakref.WeakKeyDictionary[Any, dict[int, tuple[int, Array]]] = weakref.WeakKeyDictionary()


def load_cublas() -> Any | None:
    """CuPy's low-level cuBLAS binding, or ``None`` when it (or the cuBLAS library) cannot be loaded."""
    try:
        from cupy_backends.cuda.libs import cublas  # loads libcublas, or raises
    except Exception:
        return None
    return cublas


def _set_workspace(cublas: Any, handle: int, pointer: int, size: int) -> None:
    """``cublasSetWorkspace``: through the binding when it offers it, else through the loaded library."""
    setter = getattr(cublas, "setWorkspace", None)
    if setter is not None:
        setter(handle, pointer, size)
        return
    for name in ("libcublas.so.13", "libcublas.so.12"):
        try:  # the copy CuPy already loaded, found by its soname (RTLD_NOLOAD: never a second one)
            library = ctypes.CDLL(name, mode=os.RTLD_NOLOAD)
        except OSError:
            continue
        status = library.cublasSetWorkspace_v2(ctypes.c_void_p(handle), ctypes.c_void_p(pointer), ctypes.c_size_t(size))
        if status != 0:
            raise RuntimeError(f"cublasSetWorkspace_v2 failed with status {status}")
        return
    raise RuntimeError("cublasSetWorkspace is not in CuPy's cuBLAS binding and libcublas is not loaded")


def device_pointer(a: Array) -> int:
    """The device address of a CuPy array's first element."""
    return int(a.data.ptr)


class CapturableGemm:
    """``c = op(a) @ op(b)`` for row-major C-contiguous arrays, recordable by a stream capture.

    ``cublas`` is :func:`load_cublas`'s module (or a stand-in with its functions), ``None``
    to run every product as the kernel; ``tf32`` lets float32 products use TF32 tensor cores.
    Call :meth:`bind` with the capturing stream before recording any product.
    """

    def __init__(self, xp: Any, launch: KernelLauncher, dtype: np.dtype, cublas: Any | None, tf32: bool) -> None:
        self._xp = xp
        self._launch = launch
        self._dtype = np.dtype(dtype)
        self._cublas = cublas
        self._tf32 = tf32
        self._handle: int | None = None
        # cuBLAS reads alpha and beta through host pointers when the call is recorded.
        self._alpha_beta = np.array([1.0, 0.0], dtype=self._dtype)

    def uses_cublas(self, m: int, n: int, k: int) -> bool:
        """Whether the product of these sizes goes to cuBLAS."""
        return self._cublas is not None and m * n * k > KERNEL_GEMM_MAX

    def bind(self, stream: Any) -> None:
        """Point this GPU's handle at ``stream`` (with its workspace and math mode) for the products that follow."""
        cublas = self._cublas
        if cublas is None:
            return
        device = self._launch.device_id
        handles = _handles.setdefault(cublas, {})
        if device not in handles:
            workspace = self._xp.empty(WORKSPACE_BYTES, dtype=np.uint8)
            handle = int(cublas.create())
            _set_workspace(cublas, handle, device_pointer(workspace), WORKSPACE_BYTES)
            handles[device] = (handle, workspace)
        self._handle = handles[device][0]
        cublas.setStream(self._handle, stream.ptr)
        tf32 = self._tf32 and self._dtype == np.float32
        cublas.setMathMode(self._handle, _TF32_TENSOR_OP_MATH if tf32 else _DEFAULT_MATH)

    def __call__(self, a: Array, b: Array, c: Array, m: int, n: int, k: int, trans_a: bool, trans_b: bool) -> None:
        """``c (m, n) = op(a) @ op(b)``; ``a`` is ``(m, k)`` or, with ``trans_a``, ``(k, m)``; ``b`` likewise."""
        cublas = self._cublas
        if cublas is None or not self.uses_cublas(m, n, k):
            self._launch("gemm", self._dtype, m * n, a, b, c, m, n, k, int(trans_a), int(trans_b))
            return
        if self._handle is None:
            raise RuntimeError("CapturableGemm.bind(stream) must come before a cuBLAS product")
        for name, array in (("a", a), ("b", b), ("c", c)):
            if array.dtype != self._dtype or not array.flags.c_contiguous:
                raise ValueError(f"{name} must be a C-contiguous {self._dtype.name} array")
        gemm = cublas.sgemm if self._dtype == np.float32 else cublas.dgemm
        alpha = self._alpha_beta.ctypes.data
        beta = alpha + self._alpha_beta.itemsize
        # Column-major C^T (n x m, ld n) = op(b)^T @ op(a)^T, each operand read as its row-major memory.
        gemm(
            self._handle,
            _OP_T if trans_b else _OP_N,
            _OP_T if trans_a else _OP_N,
            n,
            m,
            k,
            alpha,
            device_pointer(b),
            k if trans_b else n,
            device_pointer(a),
            m if trans_a else k,
            beta,
            device_pointer(c),
            n,
        )
