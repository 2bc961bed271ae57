"""The CUDA backend (``device="cuda"`` / ``"cuda:N"``): CuPy arrays, cuBLAS matmuls, fused CUDA C kernels.

Arrays are ``cupy.ndarray`` on the backend's GPU. Every public method runs
under ``cupy.cuda.Device(N)`` (:func:`on_device`, written in the class body),
so allocations and launches of a ``cuda:1`` backend land on GPU 1 whatever
device is current, and two backends on two GPUs do not interfere. Matmuls go
to cuBLAS through CuPy; activations, the dense layer's epilogue and backward reduction, softmax cross-entropy and the
optimizer steps are the kernels of :mod:`fusednn.kernels.cuda`. Everything else
is the reference implementation of :class:`~fusednn.backends.base.Backend`
running on CuPy.

Nothing in a training step synchronises with the host: losses stay 0-d device
arrays until :meth:`CudaBackend.to_float` reads one.

``nn.fit`` trains stacks of dense layers through :meth:`CudaBackend.epoch_trainer`:
each step a replayed CUDA graph (:mod:`.cuda_graphs`), captured once per kind of step.

Importing this module never imports CuPy; creating a backend does, and raises a
clear ``RuntimeError`` (from :mod:`.cuda_runtime`) when CuPy or the GPU is missing.

The example needs a GPU, so the doctests skip it (``+SKIP``) where the suite runs without one:

>>> import numpy as np, fusednn
>>> be = fusednn.backend("cuda:0")  # doctest: +SKIP
>>> x, W = be.asarray(np.ones((4, 3)), dtype="float32"), be.asarray(np.ones((3, 2)), dtype="float32")  # doctest: +SKIP
>>> y, z = be.dense_forward(x, W, be.zeros(2), "relu")  # doctest: +SKIP
>>> be.to_numpy(y).tolist()  # doctest: +SKIP
[[3.0, 3.0], [3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import numpy as np

from ..kernels.activation_codes import ACTIVATION_CODES
from ..kernels.cuda.launch import KernelLauncher, bias_grad_rows_per_chunk
from .base import Array, Backend
from .cuda_capturable_gemm import load_cublas
from .cuda_graphs import graph_trainer
from .cuda_runtime import require_device
from .device import Device
from .epoch_plan import EpochPlan, EpochTrainer
from .philox import dropout_threshold, split_key

MATMUL_PRECISIONS: tuple[str, ...] = ("highest", "tf32")
"""Valid arguments of :func:`set_matmul_precision`."""

_matmul_precision = "highest"

_NOT_LOADED = object()  # CudaBackend._cublas before the first epoch_trainer call loads the binding

# DLPack device types that CuPy can import without a copy.
_DLPACK_CUDA = 2
_DLPACK_CUDA_TYPES = (_DLPACK_CUDA, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged


def set_matmul_precision(precision: str) -> None:
    """Choose how the CUDA backends compute float32 matmuls (float64 is always exact IEEE).

    * ``"highest"`` (the default): full float32 arithmetic in cuBLAS.
    * ``"tf32"``: TensorFloat-32 tensor cores (Ampere and newer), which round the
      inputs to a 10-bit mantissa: several times faster on large matrices, with
      relative errors around ``1e-3`` instead of ``1e-6``. This is what
      ``torch.backends.cuda.matmul.allow_tf32 = True`` (or
      ``torch.set_float32_matmul_precision("high")``) does in PyTorch.

    The setting is process-wide and applies to every later matmul of every CUDA
    backend, including the ones inside ``dense_forward``/``dense_backward``. It is
    applied per call through CuPy's compute type (``cupy._core.set_compute_type``,
    the switch behind ``CUPY_TF32=1``), and restored afterwards, so CuPy code
    outside fusednn keeps its own setting. GPUs without TF32 fall back to float32.

    >>> set_matmul_precision("tf32")
    >>> get_matmul_precision()
    'tf32'
    >>> set_matmul_precision("highest")

    Raises:
        ValueError: ``precision`` is not ``"highest"`` or ``"tf32"``.
    """
    global _matmul_precision
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"Unknown matmul precision {precision!r}; expected one of {MATMUL_PRECISIONS}")
    _matmul_precision = precision


def get_matmul_precision() -> str:
    """The float32 matmul precision set by :func:`set_matmul_precision` (``"highest"`` by default)."""
    return _matmul_precision


@contextlib.contextmanager
def _float32_compute_type(linalg: Any, compute_type: int) -> Iterator[None]:
    """Run a block with CuPy's float32 GEMM compute type set to ``compute_type``, then restore it."""
    previous = linalg.get_compute_type(np.float32)
    linalg.set_compute_type(np.float32, compute_type)
    try:
        yield
    finally:
        linalg.set_compute_type(np.float32, previous)


F = TypeVar("F", bound=Callable[..., Any])


def on_device(method: F) -> F:
    """Run a :class:`CudaBackend` method with the backend's GPU current (``cupy.cuda.Device(N)``).

    The one way the GPU is made current: every public operation carries it (written on the methods
    this class defines, and on the inherited ones re-bound at the end of its body), as does what
    :meth:`~fusednn.backends.base.Backend.trusted` hands out. So allocations and launches of a
    ``cuda:1`` backend land on GPU 1 whatever device is current.
    """

    @functools.wraps(method)
    def run_on_device(self: CudaBackend, *args: Any, **kwargs: Any) -> Any:
        with self.xp.cuda.Device(self.device.index):
            return method(self, *args, **kwargs)

    run_on_device.runs_on_device = True  # type: ignore[attr-defined]  # what tests look for
    return cast(F, run_on_device)


class CudaBackend(Backend):
    """Every operation on one NVIDIA GPU, with fused CUDA C kernels where they pay.

    Created by the registry as ``CudaBackend(Device("cuda", index))``; get it with
    ``fusednn.backend("cuda:N")``.

    Raises:
        RuntimeError: CuPy is not installed, no GPU is visible, or ``index`` is out of range.
    """

    kind = "cuda"

    def __init__(self, device: Device) -> None:
        if device.kind != "cuda":
            raise ValueError(f"CudaBackend serves cuda devices, got {device}")
        assert device.index is not None  # Device rejects a cuda device without an index
        cupy = require_device(device.index)
        from cupy._core import _routines_linalg
        from cupyx.scipy.special import erf

        super().__init__(device, cupy, erf)
        # CuPy's GEMM compute-type switch and its constants live in this private
        # module (cupy._core re-exports only the two functions).
        self._cupy_linalg = _routines_linalg
        with cupy.cuda.Device(device.index) as gpu:
            self.compute_capability: str = gpu.compute_capability
            """The GPU's compute capability as CuPy spells it, e.g. ``"90"``."""
        self._launch = KernelLauncher(device.index)
        self._cublas: Any = _NOT_LOADED  # CuPy's low-level cuBLAS binding for captured GEMMs, or None

    def _on_device(self) -> Any:
        return self.xp.cuda.Device(self.device.index)

    def activate(self) -> Any:
        """Make this backend's GPU current (``cupy.cuda.Device(N)``) for direct CuPy arithmetic in the block."""
        return self._on_device()

    @on_device
    def epoch_trainer(self, plan: EpochPlan) -> EpochTrainer | None:
        """Replayed CUDA graphs, one per kind of training step (:mod:`.cuda_graphs`), for stacks of dense layers
        with every built-in activation and loss and SGD, RMSprop or Adam; ``None`` otherwise (AdamW, LAMB, LARS).

        The float32 GEMMs in the graphs use the :func:`set_matmul_precision` in force when this is called.
        """
        if self._cublas is _NOT_LOADED:
            self._cublas = load_cublas()
        return graph_trainer(self.xp, self._launch, plan, self._cublas, _matmul_precision == "tf32")

    # ------------------------------------------------------------------ arrays

    def _import_array(self, x: Any) -> Array:
        """Take CuPy, ``__cuda_array_interface__`` and DLPack arrays of this GPU without a copy; copy host data."""
        cupy = self.xp
        if isinstance(x, cupy.ndarray):
            self._check_on_this_device(x.device.id)
            return x
        if not isinstance(x, np.ndarray) and hasattr(x, "__dlpack_device__"):
            kind, index = x.__dlpack_device__()
            if kind in _DLPACK_CUDA_TYPES:
                if kind == _DLPACK_CUDA:
                    self._check_on_this_device(int(index))
                return cupy.from_dlpack(x)
        if hasattr(x, "__cuda_array_interface__"):
            array = cupy.asarray(x)
            self._check_on_this_device(array.device.id)
            return array
        return cupy.asarray(np.asarray(x))

    def _trusted_path(self, implementation: Callable[..., Any]) -> Callable[..., Any]:
        """The implementation run with this GPU current (:func:`on_device`)."""
        return on_device(implementation.__func__).__get__(self)  # type: ignore[attr-defined]  # a bound method

    def _check_on_this_device(self, index: int) -> None:
        if index != self.device.index:
            raise ValueError(
                f"The array is on cuda:{index} but this backend is {self.device}; copy it across with "
                f"fusednn.backend({str(self.device)!r}).asarray(fusednn.backend('cuda:{index}').to_numpy(x))"
            )

    @on_device
    def check(self, x: Any, name: str = "array") -> Array:
        """Check that ``x`` is a float32/float64 CuPy array on this GPU and return it.

        Raises:
            ValueError: ``x`` is a host array or lives on another GPU.
            TypeError: ``x`` is not an array, or has another dtype.
        """
        super().check(x, name)
        if x.device.id != self.device.index:
            raise ValueError(f"{name} is on cuda:{x.device.id} but this backend is {self.device}")
        return x

    @on_device
    def to_numpy(self, x: Array) -> np.ndarray:
        """Copy ``x`` to a NumPy array on the host (synchronises)."""
        if isinstance(x, self.xp.ndarray):
            return self.xp.asnumpy(x)
        return np.asarray(x)

    @on_device
    def to_float(self, x: Array) -> float:
        """Read a 0-d device value as a Python float (waits for the GPU)."""
        return float(self.to_numpy(x))

    @on_device
    def synchronize(self) -> None:
        """Wait until every operation queued on this GPU has finished."""
        self.xp.cuda.Device(self.device.index).synchronize()

    # ------------------------------------------------------------------ matmul

    def _matmul_unchecked(self, a: Array, b: Array, transpose_a: bool, transpose_b: bool, out: Array | None) -> Array:
        """Matrix product on cuBLAS; float32 uses TF32 tensor cores only after ``set_matmul_precision("tf32")``."""
        if a.dtype != np.float32:
            return super()._matmul_unchecked(a, b, transpose_a, transpose_b, out)
        linalg = self._cupy_linalg
        tf32 = _matmul_precision == "tf32"
        compute_type = linalg.COMPUTE_TYPE_TF32 if tf32 else linalg.COMPUTE_TYPE_DEFAULT
        with _float32_compute_type(linalg, compute_type):
            return super()._matmul_unchecked(a, b, transpose_a, transpose_b, out)

    # ------------------------------------------------------------- activations

    def _activation_unchecked(self, name: str, z: Array, out: Array | None) -> Array:
        """One kernel ``h = act(z)``; see :meth:`Backend.activation`."""
        z = self._contiguous(z)
        h = self._output(out, z)
        self._launch("activation_forward", z.dtype, z.size, z, h, z.size, ACTIVATION_CODES[name])
        return self._written_to(out, h)

    def _activation_backward_unchecked(self, name: str, z: Array, h: Array, dh: Array, out: Array | None) -> Array:
        """One kernel ``dz = dh * act'(z)``; see :meth:`Backend.activation_backward`."""
        z, h, dh = self._contiguous(z), self._contiguous(h), self._contiguous(dh)
        dz = self._output(out, z)
        self._launch("activation_backward", z.dtype, z.size, z, h, dh, dz, z.size, ACTIVATION_CODES[name])
        return self._written_to(out, dz)

    # ------------------------------------------------------------ dense layer

    def _dense_forward_unchecked(self, x: Array, W: Array, b: Array, activation: str) -> tuple[Array, Array]:
        """Fused dense layer: cuBLAS ``z = x @ W``, then one kernel adds ``b`` in place and writes ``y = act(z)``."""
        z = self._matmul_unchecked(x, W, False, False, None)
        y = z if activation == "identity" else self.xp.empty_like(z)
        rows, cols = z.shape
        self._launch(
            "bias_activation_forward",
            z.dtype,
            z.size,
            z,
            self._contiguous(b),
            y,
            rows,
            cols,
            ACTIVATION_CODES[activation],
        )
        return y, z

    def _dense_backward_unchecked(
        self, x: Array, W: Array, z: Array, y: Array, dy: Array, activation: str, dW: Array, db: Array, need_dx: bool
    ) -> Array | None:
        """Backward of :meth:`dense_forward`: two kernels for ``dz`` and ``db``, then two cuBLAS GEMMs.

        The first kernel computes ``dz = dy * act'(z)`` and, in the same pass,
        column sums of ``dz`` over fixed chunks of rows; the second adds the
        chunks in order into ``db``. No atomics, so ``db`` is the same bits on
        every run (resuming from a checkpoint is exact). ``dW = x^T dz`` is
        written straight into ``dW``. Any
        layout of the inputs and of the ``dW``/``db`` views is accepted: strided
        ones go through contiguous copies.
        """
        z, y, dy = self._contiguous(z), self._contiguous(y), self._contiguous(dy)
        rows, cols = dy.shape
        # For identity dz = dy * 1 is dy bit for bit, so the kernel may write it over dy.
        dz = dy if activation == "identity" else self.xp.empty_like(dy, order="C")
        db_out = self._output(db, db)
        rows_per_chunk = bias_grad_rows_per_chunk(rows, cols)
        chunks = -(-rows // rows_per_chunk)
        partials = self.xp.empty((chunks, cols), dtype=dy.dtype)
        self._launch(
            "activation_grad_bias_reduce",
            dy.dtype,
            chunks * cols,
            z,
            y,
            dy,
            dz,
            partials,
            rows,
            cols,
            rows_per_chunk,
            ACTIVATION_CODES[activation],
        )
        self._launch("bias_grad_sum_chunks", dy.dtype, cols, partials, db_out, chunks, cols)
        self._written_to(db, db_out)
        dW_out = self._output(dW, dW)
        self._matmul_unchecked(x, dz, True, False, dW_out)
        self._written_to(dW, dW_out)
        return self._matmul_unchecked(dz, W, False, True, None) if need_dx else None

    # ------------------------------------------------- dropout and batch norm

    def _dropout_unchecked(self, x: Array, rate: float, seed: int, step: int, layer: int, first: int) -> Array:
        """One kernel, a thread per block of four elements; see :meth:`Backend.dropout`."""
        x = self._contiguous(x)
        y = self.xp.empty_like(x)
        n = x.size
        scale = 1.0 / (1.0 - rate)
        threshold = dropout_threshold(rate)
        blocks = (first % 4 + n + 3) // 4  # the blocks of four that elements first .. first + n - 1 touch
        key = split_key(seed, step)
        self._launch("dropout_apply", x.dtype, blocks, x, y, n, threshold, scale, *key, layer, first)
        return y

    def _batchnorm_forward_unchecked(
        self,
        x: Array,
        gamma: Array,
        beta: Array,
        running_mean: Array,
        running_var: Array,
        momentum: float,
        eps: float,
        training: bool,
    ) -> tuple[Array, Array, Array]:
        """One kernel, a thread per feature: statistics, then ``y``; see :meth:`Backend.batchnorm_forward`."""
        x = self._contiguous(x)
        y = self.xp.empty_like(x)
        mean, inv_std = self.xp.empty_like(gamma), self.xp.empty_like(gamma)
        rows, cols = x.shape
        with self._updated_in_place(running_mean, running_var) as (r_mean, r_var):
            self._launch(
                "batchnorm_forward",
                x.dtype,
                cols,
                x,
                self._contiguous(gamma),
                self._contiguous(beta),
                r_mean,
                r_var,
                y,
                mean,
                inv_std,
                rows,
                cols,
                momentum,
                eps,
                int(training),
            )
        return y, mean, inv_std

    def _batchnorm_backward_unchecked(
        self,
        x: Array,
        dy: Array,
        gamma: Array,
        mean: Array,
        inv_std: Array,
        dgamma: Array,
        dbeta: Array,
        training: bool,
        need_dx: bool,
    ) -> Array | None:
        """One kernel, a thread per feature: the sums, then ``dx``; see :meth:`Backend.batchnorm_backward`."""
        x, dy = self._contiguous(x), self._contiguous(dy)
        rows, cols = x.shape
        dx = self.xp.empty_like(x) if need_dx else self.xp.empty(0, dtype=x.dtype)
        with self._updated_in_place(dgamma, dbeta) as (dgamma_out, dbeta_out):
            self._launch(
                "batchnorm_backward",
                x.dtype,
                cols,
                x,
                dy,
                self._contiguous(gamma),
                self._contiguous(mean),
                self._contiguous(inv_std),
                dx,
                dgamma_out,
                dbeta_out,
                rows,
                cols,
                int(training),
                int(need_dx),
            )
        return dx if need_dx else None

    # ------------------------------------------------------------------ losses

    def _check_label_range(self, labels: Array, n_classes: int) -> None:
        """Skipped on the GPU: reading the labels' range would stall the training step.

        The kernel makes the loss NaN for a label outside ``[0, n_classes)`` instead.
        """

    def _softmax_cross_entropy_unchecked(self, logits: Array, target: Array) -> tuple[Array, Array]:
        """Fused softmax + cross-entropy in one kernel (one thread per row); see the base class for the maths.

        The kernel writes each row's loss; their mean is a fixed-order CuPy
        reduction, so the loss is the same bits on every run.

        A label outside ``[0, C)`` makes the loss NaN rather than raising, so the
        step never waits for the GPU.
        """
        target = self._contiguous(target)
        logits = self._contiguous(logits)
        rows, cols = logits.shape
        grad = self.xp.empty_like(logits)
        row_loss = self.xp.empty(rows, dtype=logits.dtype)
        kernel = "softmax_xent_labels" if target.ndim == 1 else "softmax_xent_probs"
        self._launch(
            kernel,
            logits.dtype,
            rows,
            logits,
            target,
            grad,
            row_loss,
            rows,
            cols,
            1.0 / rows,
        )
        return row_loss.sum() / rows, grad

    # -------------------------------------------------------------- optimizers

    def _bind_optimizer(
        self, rule: str, param: Array, grad: Array, state: tuple[Array | None, ...], segments: np.ndarray | None
    ) -> Callable[..., None]:
        """The rule's kernel ``<rule>_step`` (``optimizers.cu``) bound to the buffers: one launch per step.

        An unused state buffer is never read by the kernel, so ``param`` stands in for it. A per-tensor
        rule (LAMB, LARS) launches ``<rule>_norms`` then ``<rule>_step`` over the lanes of
        :func:`segment_lanes`, with a float64 buffer of two partial sums per lane.
        """
        launch, dtype, n = self._launch, param.dtype, param.size
        buffers = (param, grad, *(param if a is None else a for a in state))
        if segments is None:
            kernel = f"{rule}_step"

            def step(*scalars: float | bool) -> None:
                with self._on_device():
                    launch(kernel, dtype, n, *buffers, n, *scalars)

            return step
        lanes = segment_lanes(segments)
        count = lanes.shape[0]
        with self._on_device():
            lane_buffers = (*buffers, self.xp.asarray(lanes), self.xp.zeros(2 * count, dtype=np.float64), count)
        norms, update = f"{rule}_norms", f"{rule}_step"

        def segmented_step(*scalars: float | bool) -> None:
            with self._on_device():
                launch(norms, dtype, count, *lane_buffers, *scalars)
                launch(update, dtype, count, *lane_buffers, *scalars)

        return segmented_step

    # The public operations this class inherits from the reference, each run with the GPU current
    # like the ones written above (a test checks that every public operation of Backend is here).
    asarray = on_device(Backend.asarray)
    asindex = on_device(Backend.asindex)
    empty = on_device(Backend.empty)
    zeros = on_device(Backend.zeros)
    take_rows = on_device(Backend.take_rows)
    write_finite_flags = on_device(Backend.write_finite_flags)
    matmul = on_device(Backend.matmul)
    activation = on_device(Backend.activation)
    activation_backward = on_device(Backend.activation_backward)
    softmax = on_device(Backend.softmax)
    log_softmax = on_device(Backend.log_softmax)
    dense_forward = on_device(Backend.dense_forward)
    dense_backward = on_device(Backend.dense_backward)
    softmax_cross_entropy = on_device(Backend.softmax_cross_entropy)
    binary_cross_entropy_with_logits = on_device(Backend.binary_cross_entropy_with_logits)
    mean_squared_error = on_device(Backend.mean_squared_error)
    mean_absolute_error = on_device(Backend.mean_absolute_error)
    l1_l2_penalty = on_device(Backend.l1_l2_penalty)
    add_l1_l2_gradient = on_device(Backend.add_l1_l2_gradient)
    dropout = on_device(Backend.dropout)
    batchnorm_forward = on_device(Backend.batchnorm_forward)
    batchnorm_backward = on_device(Backend.batchnorm_backward)
    optimizer_step = on_device(Backend.optimizer_step)


LANE_ELEMENTS = 16
"""Elements per lane that :func:`segment_lanes` aims for (at most :data:`MAX_LANES` lanes per tensor)."""

MAX_LANES = 256
"""Most lanes per tensor: each lane of the second launch sums its tensor's partials, so lanes^2 reads per tensor."""


def segment_lanes(segments: np.ndarray) -> np.ndarray:
    """The int64 ``(lanes, 4)`` work table ``[start, stop, first, lanes]`` of the per-tensor CUDA kernels.

    Tensor ``[start, stop)`` gets ``clip((stop - start) // 16, 1, 256)`` lanes (an empty one none);
    ``first`` is the row of its first lane.

    >>> segment_lanes(np.array([[0, 40], [64, 65]])).tolist()
    [[0, 40, 0, 2], [0, 40, 0, 2], [64, 65, 2, 1]]
    """
    rows: list[list[int]] = []
    for start, stop in segments.tolist():
        count = min(max((stop - start) // LANE_ELEMENTS, 1), MAX_LANES) if stop > start else 0
        rows += [[start, stop, len(rows), count]] * count
    return np.array(rows, dtype=np.int64).reshape(-1, 4)
