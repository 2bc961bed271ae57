"""A ``CudaBackend`` that runs without a GPU: NumPy arrays posing as CuPy ones, kernels from the CPU shim library.

The backend's own logic (argument checks, contiguous copies, write-back into
strided outputs, scratch buffers, the order of launches) runs unchanged; only
``cupy`` is replaced by NumPy and each ``RawKernel`` launch by the same kernel
built for the CPU with ``tests/cuda_shim/shim.h`` (see :mod:`.build`). The
launcher keeps its strict checks, so a non-contiguous array reaching a kernel
still fails here as it would on the GPU.

Several simulated GPUs share one *current device*, as CuPy's do:
``cupy.cuda.Device(i)`` makes GPU ``i`` current for a block, a new array (an
allocation, or the result of arithmetic) lands on the current GPU, a view stays
on its base's, and a kernel launch fails unless the launcher's GPU is current.
So a backend method that allocates or launches outside its own
``Device(N)`` block is caught on a simulated ``cuda:1``.

Stream capture and graph replay are simulated as CUDA does them: between
``Stream.begin_capture()`` and ``end_capture()`` a kernel launch is recorded, with
the argument values it was given (pointers and scalars, as converted for the
kernel), not run; ``Graph.launch()`` runs exactly the recorded launches. So a host
value baked into a captured step is replayed unchanged, as on a GPU. Allocating,
CuPy arithmetic, copies and host reads while capturing raise, as they would break
(or silently escape) a real capture. :class:`FakeCublas` stands in for CuPy's
low-level cuBLAS binding: column-major GEMMs with cuBLAS's argument checks, recorded
while their handle's stream captures, refused on a handle bound to another stream or
without a workspace.

Each allocation is known by its address range (:func:`device_memory`), so a library
handed raw device pointers (NCCL, in :mod:`.fake_nccl`) finds the array behind them,
and a pointer or an element count past the end of an allocation fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import weakref
from collections.abc import Iterator
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

_current_gpu = 0
"""The simulated current device, as ``cupy.cuda.Device().id`` would report it."""


@contextlib.contextmanager
def _use_gpu(index: int) -> Iterator[None]:
    """``with cupy.cuda.Device(index):``: make GPU ``index`` current for the block."""
    global _current_gpu
    previous, _current_gpu = _current_gpu, index
    try:
        yield
    finally:
        _current_gpu = previous


_host_reads: list[str] | None = None
"""Where host reads of device values go: None allows them, a list records them (see :func:`recording_host_reads`)."""
_host_reads_raise = False


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Make reading a device value on the host raise for a block, as ``cupyx.allow_synchronize(False)`` does.

    ``float()``, ``int()``, ``bool()``, ``.item()``, ``.tolist()`` and ``cupy.asnumpy`` of a
    :class:`SimArray` each wait for the GPU on real hardware; inside the block they raise
    ``RuntimeError``, so a training step that would stall the GPU fails here.
    """
    global _host_reads_raise
    previous, _host_reads_raise = _host_reads_raise, True
    try:
        yield
    finally:
        _host_reads_raise = previous


@contextlib.contextmanager
def recording_host_reads() -> Iterator[list[str]]:
    """Yield a list that collects, for a block, each host read of a device value (``"cupy.asnumpy"``, ...)."""
    global _host_reads
    previous, _host_reads = _host_reads, []
    try:
        yield _host_reads
    finally:
        _host_reads = previous


_captured: list[tuple[int, Any]] | None = None
"""The launches recorded by the stream capture in progress ((gpu, launch) each), or None outside one."""
_capturing_stream: int | None = None
"""The ``ptr`` of the stream that is capturing."""
_current_stream = 0
"""The ``ptr`` of the current stream (``with stream:``); 0 is the default stream."""
_stream_ids = iter(range(1, 2**31))


def _run_or_record(run: Any, stream: int | None = None) -> None:
    """Run a launch on ``stream`` (the current one by default) now, or record it when that stream is capturing.

    A launch on another stream while one captures would run at once and be missing from the
    graph (CUDA's relaxed capture mode allows it), so it raises here.
    """
    stream = _current_stream if stream is None else stream
    if _captured is None:
        run()
    elif stream != _capturing_stream:
        raise RuntimeError("a launch on a stream that is not capturing would escape the graph")
    else:
        _captured.append((_current_gpu, run))


_allocations: list[str] | None = None
"""Where allocations go: None ignores them, a list records them (see :func:`recording_allocations`)."""


@contextlib.contextmanager
def recording_allocations() -> Iterator[list[str]]:
    """Yield a list that collects, for a block, each array the fake CuPy allocates (``"cupy.zeros"``, ...)."""
    global _allocations
    previous, _allocations = _allocations, []
    try:
        yield _allocations
    finally:
        _allocations = previous


def _forbid_while_capturing(what: str) -> None:
    if _captured is not None:
        raise RuntimeError(f"{what} while a stream is capturing: a captured step must only launch kernels")


def _get_current_stream() -> SimpleNamespace:
    """``cupy.cuda.get_current_stream()``: the stream of the innermost ``with stream:`` (``ptr`` 0: the default one)."""
    return SimpleNamespace(ptr=_current_stream)


def _pci_bus_id(index: int) -> str:
    """``cupy.cuda.runtime.deviceGetPCIBusId``: a distinct bus id for each simulated GPU of this process."""
    return f"0000:{0x10 + index:02X}:00.0"


class SimStream:
    """``cupy.cuda.Stream``: a context manager that captures launches into a :class:`SimGraph`."""

    def __init__(self, non_blocking: bool = False) -> None:
        self.non_blocking = non_blocking
        self.ptr = next(_stream_ids)

    def __enter__(self) -> SimStream:
        global _current_stream
        self._previous, _current_stream = _current_stream, self.ptr
        return self

    def __exit__(self, *exc: Any) -> None:
        global _current_stream
        _current_stream = self._previous

    def begin_capture(self) -> None:
        global _captured, _capturing_stream
        if _captured is not None:
            raise RuntimeError("a stream is already capturing")
        _captured, _capturing_stream = [], self.ptr

    def end_capture(self) -> SimGraph:
        global _captured, _capturing_stream
        if _captured is None:
            raise RuntimeError("end_capture without begin_capture")
        launches, _captured, _capturing_stream = _captured, None, None
        return SimGraph(launches)


class SimGraph:
    """A captured graph: :meth:`launch` replays its launches with the values they were recorded with."""

    def __init__(self, launches: list[tuple[int, Any]]) -> None:
        self.launches = launches

    def launch(self, stream: Any = None) -> None:
        _forbid_while_capturing("Graph.launch")
        for gpu, run in self.launches:
            if gpu != _current_gpu:
                raise RuntimeError(f"a graph captured on cuda:{gpu} launched while cuda:{_current_gpu} is current")
            run()


def _check_host_read(what: str) -> None:
    _forbid_while_capturing(what)
    if _host_reads_raise:
        raise RuntimeError(f"{what} reads a device value on the host, which synchronises with the GPU")
    if _host_reads is not None:
        _host_reads.append(what)


_device_memory: dict[int, tuple[weakref.ref, int, int, int, np.dtype]] = {}
"""Each live allocation that backs a :class:`SimArray`: id of its owner -> (owner, start, bytes, GPU, dtype)."""


def _register_allocation(array: SimArray) -> None:
    owner: np.ndarray = array
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    key = id(owner)
    if key not in _device_memory:
        forget = lambda _: _device_memory.pop(key, None)  # noqa: E731 - the callback of one weak reference
        _device_memory[key] = (weakref.ref(owner, forget), owner.ctypes.data, owner.nbytes, array._gpu, owner.dtype)


def device_memory(pointer: int, nbytes: int) -> tuple[int, np.dtype]:
    """The GPU and dtype of the live allocation holding bytes ``[pointer, pointer + nbytes)``.

    Raises ``ValueError`` when no allocation holds them all: a pointer to no array, or a
    count that runs past its end (on a GPU, an illegal address or another array's memory).
    """
    for _, start, size, gpu, dtype in _device_memory.values():
        if start <= pointer < start + max(size, 1):
            if pointer + nbytes > start + size:
                raise ValueError(
                    f"{nbytes} bytes at {pointer:#x} run {pointer + nbytes - start - size} bytes past the end of "
                    f"their allocation ({size} bytes of {dtype.name} on cuda:{gpu})"
                )
            return gpu, dtype
    raise ValueError(f"{pointer:#x} points into no allocation of a simulated GPU")


class SimArray(np.ndarray):
    """A NumPy array on a simulated GPU, reported by ``.device.id`` as CuPy does."""

    _gpu: int

    def __array_finalize__(self, obj: Any) -> None:
        # A view keeps its base's GPU; a new array (allocated by NumPy, then viewed as SimArray) is on the current one.
        self._gpu = getattr(obj, "_gpu", _current_gpu)
        if not isinstance(obj, SimArray):  # new device memory, not a view of a simulated array
            _register_allocation(self)

    @property
    def device(self) -> SimpleNamespace:  # type: ignore[override]
        return SimpleNamespace(id=self._gpu)

    @property
    def data(self) -> SimpleNamespace:  # type: ignore[override]
        """CuPy's ``MemoryPointer``, for its ``ptr``: the address of the first element."""
        return SimpleNamespace(ptr=self.ctypes.data)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """What marks a CuPy array as device memory to fusednn (``registry.backend_of``) and to other libraries."""
        strides = None if self.flags.c_contiguous else self.strides
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ctypes.data, False),
            "version": 3,
            "strides": strides,
        }

    def __setitem__(self, key: Any, value: Any) -> None:
        # CuPy copies an array value on the device; NumPy would read a 0-d SimArray through float().
        _forbid_while_capturing("an array copy")
        super().__setitem__(key, _plain(value))

    def set(self, host: np.ndarray) -> None:
        """``cupy.ndarray.set``: copy a host array of the same shape and dtype into this one."""
        _forbid_while_capturing("a host-to-device copy")
        host = np.asarray(host)
        if host.shape != self.shape or host.dtype != self.dtype:
            raise ValueError(f"set: shape/dtype mismatch {host.shape}/{host.dtype} vs {self.shape}/{self.dtype}")
        np.copyto(self.view(np.ndarray), host)

    def __float__(self) -> float:
        _check_host_read("float()")
        return super().__float__()

    def __int__(self) -> int:
        _check_host_read("int()")
        return super().__int__()

    def __index__(self) -> int:
        _check_host_read("operator.index()")
        return super().__index__()

    def __bool__(self) -> bool:
        _check_host_read("bool()")
        return super().__bool__()

    def item(self, *args: Any) -> Any:
        _check_host_read(".item()")
        return super().item(*args)

    def tolist(self) -> Any:
        _check_host_read(".tolist()")
        return super().tolist()

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """Arithmetic as CuPy does it: only on the current GPU, results there, reductions as 0-d arrays."""
        _forbid_while_capturing(f"CuPy arithmetic ({ufunc.__name__})")
        outs = kwargs.get("out", ())
        for operand in (*inputs, *outs):
            if isinstance(operand, SimArray) and operand._gpu != _current_gpu:
                raise ValueError(  # CuPy's own message for this mistake
                    f"Array device must be same as the current device: array device = {operand._gpu} "
                    f"while current = {_current_gpu}"
                )
        if outs:
            kwargs["out"] = tuple(_plain(o) for o in outs)
        result = getattr(ufunc, method)(*(_plain(x) for x in inputs), **kwargs)
        if outs:
            return outs[0] if len(outs) == 1 else outs
        if method == "at":
            return None
        if isinstance(result, tuple):
            return tuple(np.asarray(r).view(SimArray) for r in result)
        return np.asarray(result).view(SimArray)


def _plain(x: Any) -> Any:
    return x.view(np.ndarray) if isinstance(x, SimArray) else x


class _FakeCupy:
    """The part of the ``cupy`` namespace the backend uses, over NumPy; creators return :class:`SimArray`."""

    ndarray = SimArray
    cuda = SimpleNamespace(
        Device=_use_gpu,
        Stream=SimStream,
        get_current_stream=_get_current_stream,
        runtime=SimpleNamespace(deviceGetPCIBusId=_pci_bus_id),
    )

    @staticmethod
    def asnumpy(a: Any) -> np.ndarray:
        _check_host_read("cupy.asnumpy")
        return np.array(a, copy=True).view(np.ndarray)

    def __getattr__(self, name: str) -> Any:
        function = getattr(np, name)
        if name in ("asarray", "ascontiguousarray", "array", "zeros", "empty", "arange"):

            def create(*args: Any, **kwargs: Any) -> SimArray:
                _forbid_while_capturing(f"cupy.{name} (an allocation)")
                if _allocations is not None:
                    _allocations.append(f"cupy.{name}")
                return function(*args, **kwargs).view(SimArray)

            return create
        _forbid_while_capturing(f"cupy.{name}")
        return function


def _shim_function(library: ctypes.CDLL, spec: KernelSpec, dtype: np.dtype, gpu: int) -> Any:
    """A stand-in for ``RawKernel.__call__(grid, block, args)`` that runs the shim build of ``spec`` on GPU ``gpu``."""
    function = getattr(library, wrapper_name(spec.name, C_TYPES[dtype]))
    function.restype = None
    scalar_types = {
        "long long": ctypes.c_longlong,
        "int": ctypes.c_int,
        "double": ctypes.c_double,
        "T": np.ctypeslib.as_ctypes_type(dtype),
    }

    def launch(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
        # CuPy launches on the current device's stream, whichever GPU the kernel was loaded for.
        if _current_gpu != gpu:
            raise RuntimeError(f"{spec.name} launched for cuda:{gpu} while cuda:{_current_gpu} is current")
        converted = [
            ctypes.c_void_p(value.ctypes.data) if ctype.endswith("*") else scalar_types[ctype](value)
            for (ctype, _), value in zip(spec.params, args, strict=True)
        ]

        # Recorded with the pointers and scalars of this launch while capturing, as a graph node holds them.
        _run_or_record(lambda: function(ctypes.c_int(grid[0]), ctypes.c_int(block[0]), *converted))

    return launch


_OP_N, _OP_T = 0, 1


def _column_major(pointer: int, rows: int, cols: int, ld: int, dtype: np.dtype) -> np.ndarray:
    """The ``rows x cols`` column-major matrix at ``pointer`` with leading dimension ``ld``, as a NumPy view."""
    if ld < max(rows, 1):
        raise ValueError(f"CUBLAS_STATUS_INVALID_VALUE: leading dimension {ld} < rows {rows}")
    buffer = (np.ctypeslib.as_ctypes_type(dtype) * (ld * cols)).from_address(pointer)
    return np.ctypeslib.as_array(buffer).reshape(cols, ld).T[:rows]


class FakeCublas:
    """The calls of ``cupy_backends.cuda.libs.cublas`` that ``CapturableGemm`` makes, over NumPy memory.

    ``sgemm``/``dgemm`` follow cuBLAS: column-major ``C = alpha op(A) op(B) + beta C`` (beta 0
    ignores C), alpha and beta read through host pointers when called. They run on the
    handle's stream: recorded when that stream is capturing, refused when another one is
    (real cuBLAS would run them outside the graph), and refused without a workspace.
    """

    def __init__(self) -> None:
        self.handles: dict[int, dict[str, Any]] = {}
        self.calls: list[str] = []

    def create(self) -> int:
        _forbid_while_capturing("cublasCreate")
        handle = len(self.handles) + 1
        self.handles[handle] = {"stream": 0, "workspace": None, "math": 0}
        return handle

    def setStream(self, handle: int, stream: int) -> None:  # noqa: N802 - CuPy's names
        self.handles[handle]["stream"] = stream

    def setWorkspace(self, handle: int, pointer: int, size: int) -> None:  # noqa: N802
        self.handles[handle]["workspace"] = (pointer, size)

    def setMathMode(self, handle: int, mode: int) -> None:  # noqa: N802
        self.handles[handle]["math"] = mode

    def sgemm(self, *args: Any) -> None:
        self._gemm(np.dtype(np.float32), *args)

    def dgemm(self, *args: Any) -> None:
        self._gemm(np.dtype(np.float64), *args)

    def _gemm(self, dtype: np.dtype, handle: int, transa: int, transb: int, m: int, n: int, k: int, *pointers: Any):
        alpha_at, a_at, lda, b_at, ldb, beta_at, c_at, ldc = pointers
        state = self.handles[handle]
        if state["workspace"] is None:
            raise RuntimeError("cuBLAS would allocate its workspace here: set one before capturing")
        scalar = np.ctypeslib.as_ctypes_type(dtype)
        alpha, beta = scalar.from_address(alpha_at).value, scalar.from_address(beta_at).value
        a_shape = (m, k) if transa == _OP_N else (k, m)
        b_shape = (k, n) if transb == _OP_N else (n, k)
        a = _column_major(a_at, *a_shape, lda, dtype)
        b = _column_major(b_at, *b_shape, ldb, dtype)
        c = _column_major(c_at, m, n, ldc, dtype)
        self.calls.append(f"{'sd'[dtype == np.float64]}gemm {m}x{n}x{k}")

        def run() -> None:
            product = alpha * ((a if transa == _OP_N else a.T) @ (b if transb == _OP_N else b.T))
            c[...] = product if beta == 0 else product + beta * c

        _run_or_record(run, stream=state["stream"])  # cuBLAS launches on its handle's stream


def simulated_cuda_backend(library: ctypes.CDLL, index: int = 0) -> CudaBackend:
    """A :class:`CudaBackend` on ``cuda:index`` whose arrays are :class:`SimArray` and whose kernels run on the CPU."""
    backend = CudaBackend.__new__(CudaBackend)
    Backend.__init__(backend, Device("cuda", index), _FakeCupy(), erf)  # type: ignore[arg-type]
    backend.compute_capability = "90"
    backend._cupy_linalg = SimpleNamespace(  # CuPy's GEMM compute-type switch, which NumPy does not have
        COMPUTE_TYPE_DEFAULT=0,
        COMPUTE_TYPE_TF32=1,
        get_compute_type=lambda dtype: 0,
        set_compute_type=lambda dtype, compute_type: None,
    )
    backend._launch = KernelLauncher(
        index, get_function=lambda spec, dtype: _shim_function(library, spec, dtype, index), ndarray_type=SimArray
    )
    backend._cublas = FakeCublas()
    return backend
