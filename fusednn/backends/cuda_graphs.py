"""The CUDA backend's compiled epochs: each kind of training step captured once into a CUDA graph, then replayed.

:func:`graph_trainer` turns an :class:`~fusednn.backends.epoch_plan.EpochPlan` into a
:class:`GraphEpoch` (or ``None`` for a plan it cannot run). On its first epoch the
trainer allocates every buffer a step touches and captures one graph per *kind* of
step (:class:`StepKind`: its row count, and with gradient accumulation its place in
its group); each later step of each epoch is one ``Graph.launch``. A step's graph
gathers the batch from the epoch's row order, runs the forward pass, the loss and its
gradient, the backward pass with the L1/L2 gradients, the accumulation, the optimizer
update and writes the step's loss (and outputs) into the trainer's buffers.

A graph replays the arguments it captured, so the values that change from step to
step live on the device (:mod:`fusednn.kernels.cuda.step_codes`): an int64 vector of
counters (the batch, the update of the epoch, the optimizer's step count) that the
step's own kernels read and advance, the epoch's learning rates, uploaded once per
epoch, and the update's scalars, which a kernel computes from both (Adam's bias
corrections in float64, as :func:`~fusednn.backends.base.adam_scalars` does on the
host). Nothing inside a graph allocates or synchronises.

CuPy's ``matmul`` cannot be captured (it raises ``NotImplementedError`` while a stream
captures), so a captured step runs its GEMMs through :class:`.CapturableGemm`: cuBLAS
called directly on a handle bound to the capturing stream, or a kernel for tiny shapes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kernels.activation_codes import ACTIVATION_CODES
from ..kernels.cuda.launch import KernelLauncher, bias_grad_rows_per_chunk, reduction_chunks
from ..kernels.cuda.step_codes import COUNTERS, ELEMENTWISE_LOSSES, SCALARS
from .cuda_capturable_gemm import CapturableGemm
from .epoch_plan import EpochPlan, EpochTrainerUnavailable, LayerPlan

Array = Any

_STEP = COUNTERS.index("step")


@dataclass(frozen=True)
class StepKind:
    """What one step's graph depends on: its rows and, with accumulation, its place in its group.

    ``share`` is the step's weight in its group's gradient (its rows over the group's);
    ``first`` starts a group, ``update`` ends one with an optimizer update.
    """

    rows: int
    first: bool
    update: bool
    share: float


def step_kinds(n: int, batch: int, accumulate: int) -> list[StepKind]:
    """The kind of each step of an epoch over ``n`` rows, as ``fit``'s per-step loop runs them.

    >>> [k.rows for k in step_kinds(10, 4, 1)]
    [4, 4, 2]
    >>> [(k.first, k.update, k.share) for k in step_kinds(10, 4, 2)]
    [(True, False, 0.5), (False, True, 0.5), (True, True, 1.0)]
    """
    kinds = []
    group_rows = 1
    for step in range(math.ceil(n / batch)):
        start = step * batch
        rows = min(n, start + batch) - start
        first = step % accumulate == 0
        if first:
            group_rows = min(n, start + accumulate * batch) - start
        update = step % accumulate == accumulate - 1 or start + rows == n
        kinds.append(StepKind(rows, first, update, rows / group_rows if accumulate > 1 else 1.0))
    return kinds


@dataclass(frozen=True)
class _Optimizer:
    """The scheduled optimizer kernel, its state buffers and its constant hyperparameters, in launch order."""

    kernel: str
    states: tuple[Array, ...]
    hyper: tuple[float | int, ...]
    adam_betas: tuple[float, float] | None


def _optimizer(plan: EpochPlan) -> _Optimizer | None:
    """The plan's optimizer as its scheduled kernel takes it, or ``None`` for an optimizer it lacks.

    An unused state buffer is passed as the parameters (the kernel never reads it).
    """
    kind, h, state, params = plan.optimizer.kind, plan.optimizer.hyperparameters, plan.optimizer.state, plan.params
    hyper: tuple[float | int, ...]
    if kind == "sgd":
        buffer = state["momentum_buffer"] if h["momentum"] else params
        hyper = (h["momentum"], 1.0 - h["dampening"], h["weight_decay"], int(bool(h["momentum"])), int(h["nesterov"]))
        return _Optimizer("sgd_step_scheduled", (buffer,), hyper, None)
    if kind == "rmsprop":
        grad_avg = state["grad_avg"] if h["centered"] else params
        momentum_buffer = state["momentum_buffer"] if h["momentum"] > 0 else params
        hyper = (h["alpha"], 1.0 - h["alpha"], h["eps"], h["weight_decay"], h["momentum"])
        flags = (int(h["centered"]), int(h["momentum"] > 0))
        return _Optimizer(
            "rmsprop_step_scheduled", (state["square_avg"], grad_avg, momentum_buffer), hyper + flags, None
        )
    if kind == "adam":
        beta1, beta2 = h["betas"]
        max_sq = state["max_exp_avg_sq"] if h["amsgrad"] else params
        hyper = (1.0 - beta1, beta2, 1.0 - beta2, h["eps"], h["weight_decay"], int(h["amsgrad"]))
        return _Optimizer("adam_step_scheduled", (state["exp_avg"], state["exp_avg_sq"], max_sq), hyper, (beta1, beta2))
    return None


def _supported(plan: EpochPlan, ndarray: Any) -> bool:
    """Whether the kernels of a replayed step cover every layer, the loss and the buffers of ``plan``."""
    if plan.dtype not in (np.float32, np.float64) or not plan.layers:
        return False
    if plan.loss != "categorical_crossentropy" and (plan.labels or plan.loss not in ELEMENTWISE_LOSSES):
        return False
    for index, layer in enumerate(plan.layers):
        if layer.kind != "dense" or layer.activation not in ACTIVATION_CODES:
            return False
        if index and layer.in_features != plan.layers[index - 1].out_features:
            return False
    buffers = [plan.params, plan.grads, *plan.optimizer.state.values()]
    return all(isinstance(a, ndarray) and a.dtype == plan.dtype and a.flags.c_contiguous for a in buffers)


class _Layer:
    """One dense layer's parameter views and the activations of a full batch (``rows`` rows)."""

    def __init__(self, plan: EpochPlan, layer: LayerPlan, h: Array, xp: Any, rows: int) -> None:
        n_in, n_out = layer.in_features, layer.out_features
        w, b = layer.parameter_offsets
        self.plan = layer
        self.W = plan.params[w : w + n_in * n_out].reshape(n_in, n_out)
        self.b = plan.params[b : b + n_out]
        self.dW = plan.grads[w : w + n_in * n_out].reshape(n_in, n_out)
        self.db = plan.grads[b : b + n_out]
        self.h = h
        self.z = xp.empty((rows, n_out), dtype=plan.dtype)
        # For identity y = z, as CudaBackend.dense_forward has it.
        self.y = self.z if layer.activation == "identity" else xp.empty((rows, n_out), dtype=plan.dtype)
        self.g = xp.empty((rows, n_out), dtype=plan.dtype)  # the output gradient, overwritten by dz in place
        self.act = ACTIVATION_CODES[layer.activation]


class GraphEpoch:
    """An :class:`~fusednn.backends.epoch_plan.EpochTrainer` replaying captured CUDA graphs; see the module docstring.

    Build it with :func:`graph_trainer`. ``path`` is what ``fit`` reports as ``History.params["epoch_path"]``.
    """

    path = "cuda-graph"

    def __init__(
        self, xp: Any, launch: KernelLauncher, gemm: CapturableGemm, plan: EpochPlan, optimizer: _Optimizer
    ) -> None:
        self._xp = xp
        self._launch = launch
        self._gemm = gemm
        self._plan = plan
        self._optimizer = optimizer
        self._key: tuple[Any, ...] | None = None
        self._given: tuple[Array, Array] | None = None
        self._untried = True  # no graph of this capture has been launched yet
        self._graphs: dict[StepKind, Any] = {}
        self._stream: Any = None

    def ready(self) -> bool:
        """Always: the kernels load (NVRTC, cached by CuPy) and the graphs are captured in the first call."""
        return True

    def compile(self, wait: bool) -> None:
        """Nothing to compile ahead of the first call (see :meth:`ready`)."""

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
        """Train one epoch; see :class:`~fusednn.backends.epoch_plan.EpochTrainer`.

        Raises:
            ValueError / TypeError: ``x``, ``y``, ``order`` or ``learning_rates`` do not fit the plan.
            EpochTrainerUnavailable: a step could not be captured into a graph, or the first
                launch of a new capture was refused (nothing was changed).
        """
        xp = self._xp
        with xp.cuda.Device(self._launch.device_id):
            kinds = self._prepare(x, y, outputs is not None)
            n, steps = x.shape[0], len(kinds)
            rates = np.asarray(learning_rates, dtype=np.float64)
            if rates.shape != self._rates.shape:
                raise ValueError(f"Expected one learning rate per update, {self._rates.shape[0]}, got {rates.shape}")
            self._order.set(np.arange(n, dtype=np.int64) if order is None else self._checked_order(order, n))
            self._rates.set(rates)
            counters = np.zeros(len(COUNTERS), dtype=np.int64)
            counters[_STEP] = step_count  # the batch and update counters start the epoch at 0
            self._counters.set(counters)
            graphs = [self._graphs[kind] for kind in kinds]
            if self._untried:
                try:  # a launch the driver refuses runs nothing: the epoch can still step from Python
                    graphs[0].launch()
                except Exception as error:
                    raise EpochTrainerUnavailable(f"launching a captured CUDA graph failed: {error!r}") from error
                self._untried = False
                graphs = graphs[1:]
            for graph in graphs:
                graph.launch()
            step_losses[:steps] = self._step_losses
            if outputs is not None:
                outputs[...] = self._outputs

    # ------------------------------------------------------------ preparation

    @staticmethod
    def _checked_order(order: np.ndarray, n: int) -> np.ndarray:
        order = np.ascontiguousarray(order, dtype=np.int64)
        if order.shape != (n,):
            raise ValueError(f"order must hold one row index per row ({n}), got shape {order.shape}")
        # The gather kernels would read outside the data: a fault on the GPU, not an error here.
        if n and (order.min() < 0 or order.max() >= n):
            raise ValueError(f"order must hold row indices in [0, {n}), got [{order.min()}, {order.max()}]")
        return order

    def _prepare(self, x: Array, y: Array, want_outputs: bool) -> list[StepKind]:
        """Check the data; on the first call (or new data) allocate the buffers and capture each step kind's graph."""
        plan = self._plan
        # The graphs hold the data's addresses: they serve the arrays they were captured with, which
        # self._given keeps alive (so their ids stay theirs); other arrays are captured anew.
        key = (id(x), id(y), want_outputs)
        given = (x, y)
        x, y = self._checked_data(x, y)
        kinds = step_kinds(x.shape[0], plan.batch_size, plan.accumulate)
        if key != self._key:
            self._key = None  # a failed capture leaves no half-built state behind
            self._allocate(x, y, kinds, want_outputs)
            try:
                self._launch.load(plan.dtype)
                self._graphs = {kind: self._capture(kind) for kind in dict.fromkeys(kinds)}
            except Exception as error:
                raise EpochTrainerUnavailable(
                    f"capturing a training step into a CUDA graph failed: {error!r}"
                ) from error
            self._key, self._given, self._untried = key, given, True
        return kinds

    def _checked_data(self, x: Array, y: Array) -> tuple[Array, Array]:
        plan, xp = self._plan, self._xp
        width, out = plan.layers[0].in_features, plan.layers[-1].out_features
        if not isinstance(x, xp.ndarray) or x.dtype != plan.dtype or x.ndim != 2 or x.shape[1] != width:
            raise TypeError(f"x must be a ({width} column) {plan.dtype.name} array on the GPU, got {_describe(x)}")
        n = x.shape[0]
        if plan.labels:
            if not isinstance(y, xp.ndarray) or y.dtype != np.int64 or y.shape != (n,):
                raise TypeError(f"y must hold {n} int64 class labels on the GPU, got {_describe(y)}")
        elif not isinstance(y, xp.ndarray) or y.dtype != plan.dtype or y.size != n * out:
            raise TypeError(f"y must hold {n} target rows of {out} {plan.dtype.name} on the GPU, got {_describe(y)}")
        # fit's data is contiguous; a copy made here for other data lives as long as its graphs.
        return tuple(a if a.flags.c_contiguous else xp.ascontiguousarray(a) for a in (x, y))

    def _allocate(self, x: Array, y: Array, kinds: list[StepKind], want_outputs: bool) -> None:
        """Every buffer a step touches, sized for the epoch's largest batch (a partial batch uses their first rows)."""
        plan, xp, dtype = self._plan, self._xp, self._plan.dtype
        n, rows = x.shape[0], max(k.rows for k in kinds)
        out = plan.layers[-1].out_features
        self._x, self._y = x, y if plan.labels else y.reshape(n, out)  # kept alive: the graphs hold their addresses
        self._order = xp.empty(n, dtype=np.int64)
        self._rates = xp.zeros(sum(k.update for k in kinds), dtype=np.float64)
        self._counters = xp.zeros(len(COUNTERS), dtype=np.int64)
        self._scalars = xp.zeros(len(SCALARS), dtype=dtype)
        self._step_losses = xp.zeros(len(kinds), dtype=dtype)
        self._outputs = xp.empty((n, out), dtype=dtype) if want_outputs else None
        self._targets = xp.empty(rows, dtype=np.int64) if plan.labels else xp.empty((rows, out), dtype=dtype)
        h = xp.empty((rows, plan.layers[0].in_features), dtype=dtype)
        self._layers = []
        for layer in plan.layers:
            self._layers.append(_Layer(plan, layer, h, xp, rows))
            h = self._layers[-1].y
        row_counts = {k.rows for k in kinds}
        bias_chunks = max(
            -(-r // bias_grad_rows_per_chunk(r, c.out_features)) * c.out_features
            for r in row_counts
            for c in plan.layers
        )
        self._bias_partials = xp.empty(bias_chunks, dtype=dtype)
        self._row_loss = xp.empty(rows, dtype=dtype)
        self._loss_partials = xp.empty(max(reduction_chunks(r) for r in row_counts), dtype=dtype)
        penalised = [layer for layer in self._layers if layer.plan.l1 or layer.plan.l2]
        self._penalty_chunks = [reduction_chunks(layer.W.size) for layer in penalised]
        self._penalty_partials = xp.empty(max(sum(self._penalty_chunks), 1), dtype=dtype)
        self._accumulated = xp.zeros(plan.params.shape[0], dtype=dtype) if plan.accumulate > 1 else None

    def _capture(self, kind: StepKind) -> Any:
        """The graph of one step of ``kind``, captured on the trainer's own stream (launched on the current one)."""
        if self._stream is None:
            self._stream = self._xp.cuda.Stream(non_blocking=True)
        stream = self._stream
        if any(self._gemm.uses_cublas(kind.rows, n.out_features, n.in_features) for n in self._plan.layers):
            self._gemm.bind(stream)  # before the capture: a first bind creates the handle and its workspace
        with stream:
            stream.begin_capture()
            try:
                self._record(kind)
            except BaseException:
                with contextlib.suppress(Exception):  # the capture is broken anyway; report the first error
                    stream.end_capture()
                raise
            return stream.end_capture()

    # ------------------------------------------------------------------ a step

    def _record(self, kind: StepKind) -> None:
        """Issue the launches of one step of ``kind``: what the graph replays."""
        plan, launch, dtype, rows = self._plan, self._launch, self._plan.dtype, kind.rows
        first, last = self._layers[0], self._layers[-1]
        batch = plan.batch_size
        width, out = first.plan.in_features, last.plan.out_features
        launch(
            "gather_rows", dtype, rows * width, self._x, self._order, self._counters, first.h[:rows], batch, rows, width
        )
        if plan.labels:
            launch(
                "gather_labels", dtype, rows, self._y, self._order, self._counters, self._targets[:rows], batch, rows
            )
        else:
            targets = self._targets[:rows]
            launch("gather_rows", dtype, rows * out, self._y, self._order, self._counters, targets, batch, rows, out)
        for layer in self._layers:
            n_in, n_out = layer.plan.in_features, layer.plan.out_features
            z, y = layer.z[:rows], layer.y[:rows]
            self._gemm(layer.h[:rows], layer.W, z, rows, n_out, n_in, False, False)
            launch("bias_activation_forward", dtype, rows * n_out, z, layer.b, y, rows, n_out, layer.act)
        scale = self._loss(rows)
        if self._outputs is not None:
            launch("store_rows", dtype, rows * out, last.y[:rows], self._counters, self._outputs, batch, rows, out)
        loss_chunks = reduction_chunks(rows)
        launch("chunk_sums", dtype, loss_chunks, self._row_loss[:rows], self._loss_partials, rows, loss_chunks)
        self._backward(rows)
        penalty_chunks = sum(self._penalty_chunks)
        launch(
            "step_loss",
            dtype,
            1,
            self._loss_partials,
            loss_chunks,
            scale,
            self._penalty_partials,
            penalty_chunks,
            self._counters,
            self._step_losses,
        )
        if self._accumulated is not None:
            n = plan.params.shape[0]
            launch(
                "accumulate_gradient", dtype, n, plan.grads, self._accumulated, n, kind.share, kind.first, kind.update
            )
        if kind.update:
            self._update()

    def _loss(self, rows: int) -> float:
        """Launch the loss kernel (row losses and the output gradient); return the scale of the row losses' sum."""
        plan, last = self._plan, self._layers[-1]
        out = last.plan.out_features
        y, g, targets = last.y[:rows], last.g[:rows], self._targets[:rows]
        if plan.loss == "categorical_crossentropy":
            kernel = "softmax_xent_labels" if plan.labels else "softmax_xent_probs"
            self._launch(kernel, plan.dtype, rows, y, targets, g, self._row_loss[:rows], rows, out, 1.0 / rows)
            return 1.0 / rows
        size = rows * out
        grad_scale = (2.0 if plan.loss == "mse" else 1.0) / size
        code = ELEMENTWISE_LOSSES.index(plan.loss)
        self._launch(
            "elementwise_loss", plan.dtype, rows, y, targets, g, self._row_loss[:rows], rows, out, code, grad_scale
        )
        return 1.0 / size

    def _backward(self, rows: int) -> None:
        """Backward through every layer, the L1/L2 gradients included; dz overwrites each output gradient in place."""
        launch, dtype = self._launch, self._plan.dtype
        penalty_offset = 0
        penalised = iter(self._penalty_chunks)
        for index in range(len(self._layers) - 1, -1, -1):
            layer = self._layers[index]
            n_in, n_out = layer.plan.in_features, layer.plan.out_features
            z, y, dz = layer.z[:rows], layer.y[:rows], layer.g[:rows]
            per_chunk = bias_grad_rows_per_chunk(rows, n_out)
            chunks = -(-rows // per_chunk)
            partials = self._bias_partials[: chunks * n_out]
            launch(
                "activation_grad_bias_reduce",
                dtype,
                chunks * n_out,
                z,
                y,
                dz,
                dz,
                partials,
                rows,
                n_out,
                per_chunk,
                layer.act,
            )
            launch("bias_grad_sum_chunks", dtype, n_out, partials, layer.db, chunks, n_out)
            self._gemm(layer.h[:rows], dz, layer.dW, n_in, n_out, rows, True, False)
            l1, l2 = layer.plan.l1, layer.plan.l2
            if l1 or l2:
                count = next(penalised)
                segment = self._penalty_partials[penalty_offset : penalty_offset + count]
                launch("penalty_grad", dtype, count, layer.W, layer.dW, segment, layer.W.size, count, l1, l2, 2 * l2)
                penalty_offset += count
            if index > 0:
                self._gemm(dz, layer.W, self._layers[index - 1].g[:rows], rows, n_in, n_out, False, True)

    def _update(self) -> None:
        """The update's scalars from the device counters and rates, then the optimizer kernel."""
        plan, opt = self._plan, self._optimizer
        beta1, beta2 = opt.adam_betas or (0.0, 0.0)
        adam = int(opt.adam_betas is not None)
        self._launch("update_scalars", plan.dtype, 1, self._rates, self._counters, self._scalars, beta1, beta2, adam)
        n = plan.params.shape[0]
        self._launch(opt.kernel, plan.dtype, n, plan.params, plan.grads, *opt.states, n, self._scalars, *opt.hyper)


def _describe(a: Any) -> str:
    shape, dtype = getattr(a, "shape", None), getattr(a, "dtype", None)
    return f"{type(a).__name__} of shape {shape} and dtype {dtype}" if shape is not None else type(a).__name__


def graph_trainer(
    xp: Any, launch: KernelLauncher, plan: EpochPlan, cublas: Any | None, tf32: bool
) -> GraphEpoch | None:
    """A :class:`GraphEpoch` for ``plan`` on the GPU of ``launch``, or ``None`` when its kernels cannot run it.

    ``xp`` is CuPy (or a stand-in with its ``ndarray``, creators and ``cuda.Device``/``cuda.Stream``);
    ``cublas`` and ``tf32`` are those of :class:`.CapturableGemm`.
    """
    optimizer = _optimizer(plan) if _supported(plan, xp.ndarray) else None
    if optimizer is None:
        return None
    return GraphEpoch(xp, launch, CapturableGemm(xp, launch, plan.dtype, cublas, tf32), plan, optimizer)
