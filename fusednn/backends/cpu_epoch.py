"""The CPU backend's compiled epochs: an :class:`~fusednn.backends.epoch_plan.EpochPlan` laid out for
:func:`fusednn.kernels.cpu.epoch.train_epoch`.

:func:`compile_plan` turns a plan into a :class:`CompiledEpoch` (or ``None`` for a plan
the kernel cannot run): the layer table, the penalties, the optimizer's codes and
hyperparameters in the parameter dtype, and one workspace sized for the plan's batch.
All of it is built once per ``fit`` call; each epoch then costs one kernel call plus
the host-side scalars of its updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..kernels.activation_codes import ACTIVATION_CODES
from ..kernels.cpu import epoch as kernel
from .background_compile import Specialisation
from .epoch_plan import EpochPlan

Array = Any

LOOP_GEMM_MAX = 1024
"""Products of at most this many multiply-adds (``rows * inner * cols``) run as loops, larger ones in BLAS.

Measured on the 2-core development VM inside the epoch kernel (float32, µs for the three GEMMs of
one layer's step, BLAS vs loops): 24 (xor's 4x2x3): 0.72 vs 0.33; 512 (16x2x16): 1.25 vs 0.95;
2,048 (8x16x16): 0.88 vs 2.05; 16,384: 1.50 vs 12.7; digits' 32x64x128: 14.1 vs 162.
"""

_ROW_COUNT = len(kernel.LAYER_COLUMNS)

# A Numba dispatcher, typed as what it is to this module: a function of arrays and numbers.
_train_epoch: Callable[..., None] = kernel.train_epoch

_SPECIALISATIONS: dict[np.dtype, Specialisation] = {}
"""The epoch kernel's one specialisation per parameter dtype (the argument types depend on nothing else)."""


def _layer_table(plan: EpochPlan) -> tuple[np.ndarray, int] | None:
    """The int64 layer table and the workspace size it needs, or ``None`` for a layer the kernel lacks."""
    batch = plan.batch_size
    table = np.zeros((len(plan.layers), _ROW_COUNT), dtype=np.int64)
    offset = batch * plan.layers[0].in_features  # the gathered batch comes first
    for index, layer in enumerate(plan.layers):
        if layer.kind != "dense" or layer.activation not in ACTIVATION_CODES:
            return None
        if index and layer.in_features != plan.layers[index - 1].out_features:
            return None
        row = table[index]
        row[kernel.IN], row[kernel.OUT] = layer.in_features, layer.out_features
        row[kernel.ACTIVATION] = ACTIVATION_CODES[layer.activation]
        row[kernel.WEIGHT], row[kernel.BIAS] = layer.parameter_offsets
        row[kernel.INPUT] = 0 if index == 0 else table[index - 1, kernel.OUTPUT]
        block = batch * layer.out_features
        row[kernel.PRE], row[kernel.OUTPUT], row[kernel.OUTPUT_GRAD] = offset, offset + block, offset + 2 * block
        offset += 3 * block
    return table, offset


def _optimizer_layout(plan: EpochPlan) -> tuple[int, bool, list[float], list[str]] | None:
    """``(code, flag, hyperparameters, state names)`` in the kernel's order, or ``None`` for another optimizer."""
    kind, h = plan.optimizer.kind, plan.optimizer.hyperparameters
    if kind == "sgd":
        states = ["momentum_buffer"] if h["momentum"] else []
        return kernel.SGD, bool(h["nesterov"]), [h["momentum"], 1.0 - h["dampening"], h["weight_decay"]], states
    if kind == "rmsprop":
        states = ["square_avg", "grad_avg" if h["centered"] else "", "momentum_buffer" if h["momentum"] > 0 else ""]
        hyper = [h["alpha"], 1.0 - h["alpha"], h["eps"], h["weight_decay"], h["momentum"]]
        return kernel.RMSPROP, bool(h["centered"]), hyper, states
    if kind == "adam":
        beta1, beta2 = h["betas"]
        states = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq" if h["amsgrad"] else ""]
        return kernel.ADAM, bool(h["amsgrad"]), [1.0 - beta1, beta2, 1.0 - beta2, h["eps"], h["weight_decay"]], states
    return None


class CompiledEpoch:
    """An :class:`~fusednn.backends.epoch_plan.EpochTrainer` for the CPU; build it with :func:`compile_plan`."""

    def __init__(
        self,
        plan: EpochPlan,
        table: np.ndarray,
        workspace_size: int,
        optimizer: tuple[int, bool, list[float], list[str]],
    ) -> None:
        dtype = plan.dtype
        self._plan = plan
        self._table = table
        self._penalties = np.array([[layer.l1, layer.l2, 2 * layer.l2] for layer in plan.layers], dtype=dtype)
        self._loss_code = (
            kernel.CATEGORICAL_CROSSENTROPY if plan.loss == "categorical_crossentropy" else kernel.LOSS_CODES[plan.loss]
        )
        self._optimizer_code, self._flag, hyper, state_names = optimizer
        self._hyper = np.array(hyper, dtype=dtype)
        empty = np.empty(0, dtype=dtype)
        states = [plan.optimizer.state[name] if name else empty for name in state_names]
        self._states = (states + [empty] * 3)[:3]
        self._workspace = np.zeros(workspace_size, dtype=dtype)
        self._accumulated = np.zeros(plan.params.shape[0], dtype=dtype) if plan.accumulate > 1 else empty
        self._no_labels = np.empty(0, dtype=np.int64)
        self._no_rows = np.empty((0, plan.layers[-1].out_features), dtype=dtype)
        # One specialisation per dtype serves every plan; typing its 24 arguments cost 0.2 ms a fit call.
        self._kernel = _SPECIALISATIONS.get(dtype) or _SPECIALISATIONS.setdefault(
            dtype, Specialisation(kernel.train_epoch, self._example_arguments())
        )

    def _rates(self, learning_rates: Sequence[float], step_count: int) -> np.ndarray:
        """Each update's ``(rate, sqrt(1 - beta2^t))``; for Adam the rate is its step size ``lr / (1 - beta1^t)``.

        :func:`~fusednn.backends.base.adam_scalars` vectorised over the epoch's updates: a Python call
        per update costs 0.37 µs (measured), an eighth of a whole xor step on this path.
        """
        lr = np.asarray(learning_rates, dtype=np.float64)
        rates = np.zeros((lr.shape[0], 2))
        if self._optimizer_code == kernel.ADAM:
            beta1, beta2 = self._plan.optimizer.hyperparameters["betas"]
            t = np.arange(step_count + 1, step_count + 1 + lr.shape[0], dtype=np.float64)
            rates[:, 0] = lr / (1.0 - beta1**t)
            rates[:, 1] = np.sqrt(1.0 - beta2**t)
        else:
            rates[:, 0] = lr
        return rates.astype(self._plan.dtype)

    path = "compiled"
    """What ``fit`` reports in ``History.params["epoch_path"]`` for the epochs this trainer runs."""

    def ready(self) -> bool:
        """Whether the epoch kernel for this plan's dtype runs now without compiling (see :meth:`compile`)."""
        return self._kernel.ready()

    def compile(self, wait: bool) -> None:
        """Compile the epoch kernel for this dtype (several seconds, once; then cached on disk), or start that
        on a background thread and return at once (``wait=False``)."""
        self._kernel.compile(wait)

    def __call__(
        self,
        x: Array,
        y: Array,
        order: np.ndarray | None,
        learning_rates: Sequence[float],
        step_count: int,
        step_losses: Array,
        outputs: Array | None,
    ) -> None:
        """Train one epoch; see :class:`~fusednn.backends.epoch_plan.EpochTrainer`."""
        _train_epoch(
            *self._arguments(x, y, order, self._rates(learning_rates, step_count), step_count, step_losses, outputs)
        )

    def _arguments(
        self,
        x: Array,
        y: Array,
        order: np.ndarray | None,
        rates: np.ndarray,
        step_count: int,
        step_losses: Array,
        outputs: Array | None,
    ) -> tuple[Any, ...]:
        """:func:`~fusednn.kernels.cpu.epoch.train_epoch`'s arguments, each of the type its one specialisation takes.

        The kernel only reads ``x`` and ``y``, but a read-only array is another Numba type, and so another
        specialisation to compile: such data is copied instead (once per epoch).
        """
        plan = self._plan
        x = _writable(np.ascontiguousarray(x))
        n = x.shape[0]
        if plan.labels:
            labels, rows = _writable(np.ascontiguousarray(y, dtype=np.int64)), self._no_rows
        else:
            labels, rows = self._no_labels, _writable(np.ascontiguousarray(y).reshape(n, -1))
        order = np.arange(n, dtype=np.int64) if order is None else np.ascontiguousarray(order, dtype=np.int64)
        return (
            x,
            labels,
            rows,
            order,
            self._table,
            self._penalties,
            self._loss_code,
            plan.batch_size,
            plan.accumulate,
            plan.params,
            plan.grads,
            self._accumulated,
            self._optimizer_code,
            self._flag,
            self._hyper,
            *self._states,
            rates,
            step_count,
            self._workspace,
            step_losses,
            self._no_rows if outputs is None else outputs,
            LOOP_GEMM_MAX,
        )

    def _example_arguments(self) -> tuple[Any, ...]:
        """Arguments of one-row data, typed as every epoch's are: the signature to compile."""
        plan, dtype = self._plan, self._plan.dtype
        x = np.zeros((1, plan.layers[0].in_features), dtype=dtype)
        y = np.zeros(1, dtype=np.int64) if plan.labels else np.zeros((1, plan.layers[-1].out_features), dtype=dtype)
        return self._arguments(x, y, None, np.zeros((1, 2), dtype=dtype), 0, np.zeros(1, dtype=dtype), None)


def _writable(a: np.ndarray) -> np.ndarray:
    return a if a.flags.writeable else a.copy()


def compile_plan(plan: EpochPlan) -> CompiledEpoch | None:
    """A :class:`CompiledEpoch` for ``plan``, or ``None`` when the kernel cannot run it (then ``fit`` steps)."""
    if plan.dtype not in (np.float32, np.float64) or not plan.layers:
        return None
    if plan.loss != "categorical_crossentropy" and (plan.labels or plan.loss not in kernel.LOSS_CODES):
        return None
    buffers = [plan.params, plan.grads, *plan.optimizer.state.values()]
    if any(not isinstance(a, np.ndarray) or a.dtype != plan.dtype or not a.flags.c_contiguous for a in buffers):
        return None
    layout = _layer_table(plan)
    optimizer = _optimizer_layout(plan)
    if layout is None or optimizer is None:
        return None
    return CompiledEpoch(plan, *layout, optimizer)
