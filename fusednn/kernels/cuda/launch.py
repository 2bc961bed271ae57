"""Thin launchers for the CUDA kernels: launch configuration, argument casts and checks.

CuPy does not check ``RawKernel`` arguments: a Python ``float`` goes as a
``double`` and a wrong type silently corrupts memory on the GPU. So every
argument passes through :func:`prepare_args`, which casts scalars to the exact
C type of the kernel's signature (:mod:`.sources`) and checks arrays (CuPy,
C-contiguous, the right dtype, on the launching device). Launch
configurations are computed here and nowhere else.

CuPy is imported only when a kernel is first compiled, so this module imports
on machines without a GPU.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import check_code
from .sources import (
    C_TYPES,
    CODE_PARAMETERS,
    COMPILE_OPTIONS,
    KERNELS,
    KernelSpec,
    name_expressions,
    source_text,
)

BLOCK_SIZE = 256
"""Threads per block for every kernel (a multiple of the 32-thread warp)."""

MAX_GRID_SIZE = 4096
"""Most blocks one launch uses. The kernels are grid-stride loops, so a capped
grid still covers any size; 4096 blocks of 256 fill the largest current GPUs
(132 SMs x 8 resident blocks) several times over."""

BIAS_GRAD_TARGET_ITEMS = 65536
"""Work items the bias-gradient reduction aims for: enough threads to fill a GPU,
few enough that each thread sums a run of rows into its one partial sum."""

MAX_REDUCTION_CHUNKS = 1024
"""Most partial sums a two-pass reduction (``chunk_sums`` then one thread) uses."""

_INT32_RANGE = (-(2**31), 2**31 - 1)

# The codes each code parameter accepts; a range's `in` is the cheapest test (this runs every launch).
_CODE_RANGES = {name: range(len(names)) for name, (_, names, _) in CODE_PARAMETERS.items()}

# Pointer element types that do not follow the kernel's float type T.
_FIXED_POINTER_TYPES = {"long long": np.dtype(np.int64), "double": np.dtype(np.float64)}


def launch_config(items: int, block_size: int = BLOCK_SIZE, max_grid: int = MAX_GRID_SIZE) -> tuple[int, int]:
    """Return ``(grid, block)`` for a grid-stride kernel over ``items`` work items.

    At least one block is launched, so a zero-size launch is still valid.

    >>> launch_config(1000)
    (4, 256)
    >>> launch_config(10**9)
    (4096, 256)

    Raises:
        ValueError: ``items`` < 0 or ``block_size``/``max_grid`` is out of range.
    """
    if items < 0:
        raise ValueError(f"A launch needs items >= 0, got {items}")
    if not 1 <= block_size <= 1024:
        raise ValueError(f"block_size must lie in [1, 1024] (CUDA's limit), got {block_size}")
    if max_grid < 1:
        raise ValueError(f"max_grid must be >= 1, got {max_grid}")
    grid = -(-items // block_size)
    return min(max(grid, 1), max_grid), block_size


def bias_grad_rows_per_chunk(rows: int, cols: int, target_items: int = BIAS_GRAD_TARGET_ITEMS) -> int:
    """Rows each work item of ``activation_grad_bias_reduce`` sums into one partial sum.

    Splits the rows into enough chunks that ``chunks * cols`` reaches about
    ``target_items`` (never fewer than one row per chunk). A pure function of
    the shape, never of the GPU or the launch grid, so the chunks (and the order
    ``bias_grad_sum_chunks`` adds them in) and hence ``db`` are the same bits on
    every run.

    >>> bias_grad_rows_per_chunk(rows=4096, cols=64)
    4
    >>> bias_grad_rows_per_chunk(rows=10, cols=100_000)
    10
    """
    if rows < 0 or cols < 0:
        raise ValueError(f"rows and cols must be >= 0, got {rows} and {cols}")
    chunks = min(max(target_items // max(cols, 1), 1), max(rows, 1))
    return max(-(-rows // chunks), 1)


def reduction_chunks(n: int, max_chunks: int = MAX_REDUCTION_CHUNKS) -> int:
    """Partial sums for a fixed-order sum of ``n`` values: about ``sqrt(n)``, so both passes stay short.

    The first pass (``chunk_sums``, ``penalty_grad``) gives each chunk every ``chunks``-th
    value; one thread then adds the chunks in order. A pure function of ``n``, so a sum is
    the same bits on every run.

    >>> reduction_chunks(100), reduction_chunks(10**8), reduction_chunks(0)
    (10, 1024, 1)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return min(max(math.isqrt(n), 1), max_chunks)


def check_dtype(dtype: Any) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype the kernels are instantiated for.

    Raises:
        TypeError: ``dtype`` is not float32 or float64.
    """
    resolved = np.dtype(dtype)
    if resolved not in C_TYPES:
        raise TypeError(f"CUDA kernels exist for float32 and float64, not {resolved.name!r}")
    return resolved


def prepare_args(
    spec: KernelSpec,
    dtype: np.dtype,
    args: Sequence[Any],
    *,
    ndarray_type: type,
    device_id: int,
) -> tuple[Any, ...]:
    """Check and cast ``args`` for one launch of ``spec`` instantiated for ``dtype``.

    Arrays must be instances of ``ndarray_type`` (``cupy.ndarray``), C-contiguous,
    of the parameter's dtype and on device ``device_id``. Scalars are cast to
    ``np.int64`` (``long long``), ``np.int32`` (``int``), ``np.float64`` (``double``)
    or ``dtype.type`` (``T``). A code (:data:`.sources.CODE_PARAMETERS`) must be one
    the kernel defines: checked here, on the host, so the GPU never computes with an
    unknown one and nothing waits for it to say so.

    Raises:
        TypeError: wrong argument count, an array of the wrong type or dtype, a
            non-integer size.
        ValueError: a non-contiguous array, one on another device, an ``int`` out of
            range; :class:`~fusednn.kernels.errors.UnknownCodeError` for an unknown code.
    """
    if len(args) != len(spec.params):
        raise TypeError(f"{spec.name} takes {len(spec.params)} arguments, got {len(args)}")
    prepared = []
    for (ctype, name), value in zip(spec.params, args, strict=True):
        where = f"{spec.name}: argument {name!r}"
        if ctype.endswith("*"):
            element = ctype.removeprefix("const ").removesuffix("*")
            expected = _FIXED_POINTER_TYPES.get(element, dtype)
            prepared.append(_check_array(value, expected, where, ndarray_type, device_id))
        elif ctype == "long long":
            prepared.append(np.int64(_as_integer(value, where)))
        elif ctype == "int":
            number = _as_integer(value, where)
            if not _INT32_RANGE[0] <= number <= _INT32_RANGE[1]:
                raise ValueError(f"{where} must fit a 32-bit int, got {number}")
            codes = _CODE_RANGES.get(name)
            if codes is not None and number not in codes:
                check_code(number, *CODE_PARAMETERS[name])  # raises UnknownCodeError
            prepared.append(np.int32(number))
        elif ctype in ("T", "double"):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"{where} must be a real number, got {type(value).__name__}")
            prepared.append(dtype.type(value) if ctype == "T" else np.float64(value))
        else:
            raise AssertionError(f"unknown C type {ctype!r} in the kernel table")
    return tuple(prepared)


def _as_integer(value: Any, where: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{where} must be an integer, got {type(value).__name__}") from None


def _check_array(value: Any, expected: np.dtype, where: str, ndarray_type: type[Any], device_id: int) -> Any:
    if not isinstance(value, ndarray_type):
        raise TypeError(f"{where} must be a CuPy array, got {type(value).__name__}")
    if value.dtype != expected:
        raise TypeError(f"{where} has dtype {value.dtype.name!r}; expected {expected.name!r}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{where} must be C-contiguous (pass a contiguous copy)")
    if value.device.id != device_id:
        raise ValueError(f"{where} is on cuda:{value.device.id} but launches on cuda:{device_id}")
    return value


@functools.cache
def raw_module(source: str) -> Any:
    """The ``cupy.RawModule`` of one ``.cu`` file, built once per process.

    CuPy compiles it on first use (and caches the binary on disk) and loads
    it separately on each device.
    """
    import cupy

    return cupy.RawModule(
        code=source_text(source),
        options=COMPILE_OPTIONS,
        name_expressions=name_expressions(source),
    )


def _cupy_function(spec: KernelSpec, dtype: np.dtype) -> Callable[..., Any]:
    return raw_module(spec.source).get_function(spec.name_expression(dtype))


class KernelLauncher:
    """Launches the kernels of :data:`.sources.KERNELS` on one device.

    The caller makes the device current (``with cupy.cuda.Device(i):``);
    ``device_id`` is what arrays are checked against. ``get_function`` and
    ``ndarray_type`` default to CuPy's and exist so tests can run without a GPU.

    ``h = relu(z)`` on GPU 0; it needs a GPU, so the doctests skip it (``+SKIP``):

    >>> import cupy  # doctest: +SKIP
    >>> z = cupy.linspace(-1, 1, 5, dtype=cupy.float32)  # doctest: +SKIP
    >>> h = cupy.empty_like(z)  # doctest: +SKIP
    >>> launch = KernelLauncher(device_id=0)  # doctest: +SKIP
    >>> launch("activation_forward", z.dtype, z.size, z, h, z.size, 3)  # 3: relu  # doctest: +SKIP
    >>> h.tolist()  # doctest: +SKIP
    [0.0, 0.0, 0.0, 0.5, 1.0]
    """

    def __init__(
        self,
        device_id: int,
        get_function: Callable[[KernelSpec, np.dtype], Callable[..., Any]] | None = None,
        ndarray_type: type | None = None,
    ) -> None:
        if ndarray_type is None:
            import cupy

            ndarray_type = cupy.ndarray
        self.device_id = device_id
        self._get_function = get_function or _cupy_function
        self._ndarray_type = ndarray_type
        self._functions: dict[tuple[str, np.dtype], Callable[..., Any]] = {}

    def load(self, dtype: Any) -> None:
        """Fetch (compile or load from CuPy's cache) every kernel for ``dtype`` now, without launching any.

        A stream capture then records launches only: no module is compiled or loaded while it runs.
        """
        dtype = check_dtype(dtype)
        for name, spec in KERNELS.items():
            self._function(name, spec, dtype)

    def _function(self, kernel: str, spec: KernelSpec, dtype: np.dtype) -> Callable[..., Any]:
        key = (kernel, dtype)
        function = self._functions.get(key)
        if function is None:
            function = self._functions[key] = self._get_function(spec, dtype)
        return function

    def __call__(self, kernel: str, dtype: Any, items: int, *args: Any) -> None:
        """Launch ``kernel`` for ``dtype`` over ``items`` work items.

        ``args`` are the kernel's C parameters in order.

        Raises:
            ValueError: ``kernel`` is unknown, or an argument fails
                :func:`prepare_args`.
            TypeError: ``dtype`` is not float32/float64, or an argument fails
                :func:`prepare_args`.
        """
        spec = KERNELS.get(kernel)
        if spec is None:
            raise ValueError(f"Unknown CUDA kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
        dtype = check_dtype(dtype)
        prepared = prepare_args(spec, dtype, args, ndarray_type=self._ndarray_type, device_id=self.device_id)
        grid, block = launch_config(items)
        self._function(kernel, spec, dtype)((grid,), (block,), prepared)
