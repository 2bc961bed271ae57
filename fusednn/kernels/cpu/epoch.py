"""One whole training epoch of a stack of dense layers in one serial Numba call.

:func:`train_epoch` walks an int64 table of the layers (one row per layer, columns
:data:`LAYER_COLUMNS`) over the model's flat parameter and gradient buffers and one
flat workspace, so a single compiled specialisation per dtype serves every depth and
width. Per step it gathers the batch from the epoch's row order, runs the forward
pass, the loss and its gradient, the backward pass with the L1/L2 gradients, the
gradient accumulation and the optimizer update, and stores the step's loss (and,
when asked, the outputs) in the caller's buffers. The maths is that of the per-step
kernels: it calls the serial dense and optimizer kernels (:mod:`.dense`, :mod:`.optim`),
whose loops specialise the cheap activations so that they vectorise (a generic ReLU loop
cost digits 70 µs a step in mispredicted branches), and inlines the cross-entropy rows
of :mod:`.losses`.

GEMMs go to BLAS (``np.dot`` with an output, through SciPy's BLAS) except at tiny
shapes, where a BLAS call costs more than the arithmetic: a product of at most
``loop_gemm_max`` multiply-adds runs as a plain loop (see
:data:`fusednn.backends.cpu_epoch.LOOP_GEMM_MAX`). The kernel is serial: no BLAS
inside ``prange``, and a training step of the sizes that gain from it is far below
the size where Numba's threads pay for their wake-up.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..errors import UnknownCodeError
from .common import JitOptions, like
from .dense import activation_grad_bias, bias_activation
from .losses import label_row, probability_row
from .optim import adam, rmsprop, sgd

_JIT: JitOptions = {"cache": True, "error_model": "numpy"}

# Columns of the layer table: sizes, activation code, parameter offsets (into the flat buffers)
# and workspace offsets of the layer's input, pre-activation, output and output gradient.
IN, OUT, ACTIVATION, WEIGHT, BIAS, INPUT, PRE, OUTPUT, OUTPUT_GRAD = range(9)
LAYER_COLUMNS = ("in", "out", "activation", "weight", "bias", "input", "pre", "output", "output_grad")
"""Names of the layer table's columns, in order."""

# Penalty table columns (parameter dtype): l1, l2 and 2 * l2 (the gradient's factor).
L1, L2, TWO_L2 = range(3)

MSE, MAE, BINARY_CROSSENTROPY, CATEGORICAL_CROSSENTROPY = range(4)
LOSS_CODES = {"mse": MSE, "mae": MAE, "binary_crossentropy": BINARY_CROSSENTROPY}
"""Loss codes by loss name (categorical cross-entropy is :data:`CATEGORICAL_CROSSENTROPY`)."""
_LOSS_COUNT = CATEGORICAL_CROSSENTROPY + 1

SGD, RMSPROP, ADAM = range(3)
_OPTIMIZER_COUNT = ADAM + 1
_TABLE = f"the codes of {__name__}"


@njit(**_JIT)
def _matrix(flat: np.ndarray, offset: int, rows: int, cols: int) -> np.ndarray:
    """The ``(rows, cols)`` C-contiguous view of ``flat`` starting at ``offset``."""
    return flat[offset : offset + rows * cols].reshape((rows, cols))


@njit(**_JIT)
def _gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, loop_gemm_max: int) -> None:
    """``out = a @ b`` for ``a (N, K)``, ``b (K, M)``; a loop at tiny shapes, BLAS otherwise."""
    n, k = a.shape
    m = b.shape[1]
    if n * k * m > loop_gemm_max:
        np.dot(a, b, out)
        return
    for i in range(n):
        for j in range(m):
            out[i, j] = 0
        for p in range(k):
            s = a[i, p]
            for j in range(m):
                out[i, j] += s * b[p, j]


@njit(**_JIT)
def _gemm_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray, loop_gemm_max: int) -> None:
    """``out = a.T @ b`` for ``a (N, K)``, ``b (N, M)``, ``out (K, M)``."""
    n, k = a.shape
    m = b.shape[1]
    if n * k * m > loop_gemm_max:
        np.dot(a.T, b, out)
        return
    for p in range(k):
        for j in range(m):
            out[p, j] = 0
    for i in range(n):
        for p in range(k):
            s = a[i, p]
            for j in range(m):
                out[p, j] += s * b[i, j]


@njit(**_JIT)
def _gemm_nt(a: np.ndarray, b: np.ndarray, out: np.ndarray, loop_gemm_max: int) -> None:
    """``out = a @ b.T`` for ``a (N, M)``, ``b (K, M)``, ``out (N, K)``."""
    n, m = a.shape
    k = b.shape[0]
    if n * k * m > loop_gemm_max:
        np.dot(a, b.T, out)
        return
    for i in range(n):
        for p in range(k):
            s = a[i, 0] - a[i, 0]
            for j in range(m):
                s += a[i, j] * b[p, j]
            out[i, p] = s


@njit(inline="always", **_JIT)
def _sign(v: float) -> float:
    """``np.sign``: -1, 0 or 1, NaN for NaN."""
    if v > 0:
        return like(v, 1.0)
    if v < 0:
        return like(v, -1.0)
    return v - v  # 0 for zero, NaN for NaN


@njit(**_JIT)
def _elementwise_loss(
    code: int, out: np.ndarray, targets: np.ndarray, order: np.ndarray, start: int, grad: np.ndarray
) -> float:
    """Mean MSE, MAE or binary cross-entropy of ``out`` against rows ``order[start:]`` of ``targets``; fills ``grad``.

    The same formulas as the reference backend's ``mean_squared_error``,
    ``mean_absolute_error`` and ``binary_cross_entropy_with_logits``.
    """
    size = out.shape[0] * out.shape[1]
    total = 0.0
    scale = like(out[0, 0], 2.0 / size)
    size_as_float = like(out[0, 0], size)
    one = like(out[0, 0], 1.0)
    for i in range(out.shape[0]):
        t_row = targets[order[start + i]]
        for j in range(out.shape[1]):
            o, t = out[i, j], t_row[j]
            if code == MSE:
                d = o - t
                total += float(d * d)
                grad[i, j] = d * scale
            elif code == MAE:
                d = o - t
                total += float(abs(d))
                grad[i, j] = _sign(d) / size_as_float
            else:
                # max(x, 0) - x t + log(1 + exp(-|x|)); gradient sigmoid(x) - t.
                e = math.exp(-abs(o))
                total += float(max(o, o - o) - o * t + math.log1p(e))
                s = one / (one + e) if o >= 0 else e / (one + e)
                grad[i, j] = (s - t) / size_as_float
    return total / size


@njit(**_JIT)
def _cross_entropy(
    out: np.ndarray, labels: np.ndarray, targets: np.ndarray, order: np.ndarray, start: int, grad: np.ndarray
) -> float:
    """Mean softmax cross-entropy against labels (when ``labels`` is not empty) or probability rows."""
    n = like(out[0, 0], out.shape[0])
    total = 0.0
    for i in range(out.shape[0]):
        row = order[start + i]
        if labels.shape[0] > 0:
            total += label_row(out[i], labels[row], grad[i], n)
        else:
            total += probability_row(out[i], targets[row], grad[i], n)
    return total / out.shape[0]


@njit(**_JIT)
def _optimizer_update(
    code: int,
    params: np.ndarray,
    grads: np.ndarray,
    state0: np.ndarray,
    state1: np.ndarray,
    state2: np.ndarray,
    hyper: np.ndarray,
    flag: bool,
    rate: float,
    bias_correction2_sqrt: float,
    first_step: bool,
) -> None:
    """One update with the optimizer ``code``; ``hyper`` and the states are laid out as in :func:`train_epoch`."""
    if code == SGD:
        sgd(params, grads, state0, rate, hyper[0], hyper[1], hyper[2], hyper[0] != 0, flag, first_step)
    elif code == RMSPROP:
        rmsprop(
            params, grads, state0, state1, state2, rate, hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], flag,
            hyper[4] > 0,
        )  # fmt: skip
    else:
        adam(
            params, grads, state0, state1, state2, rate, bias_correction2_sqrt, hyper[0], hyper[1], hyper[2],
            hyper[3], hyper[4], flag,
        )  # fmt: skip


@njit(**_JIT)
def train_epoch(
    x,
    labels,
    targets,
    order,
    layers,
    penalties,
    loss_code,
    batch,
    accumulate,
    params,
    grads,
    accumulated,
    optimizer_code,
    flag,
    hyper,
    state0,
    state1,
    state2,
    rates,
    first_step_count,
    workspace,
    step_losses,
    outputs,
    loop_gemm_max,
):
    """Train one epoch over the rows ``x[order]`` in batches of ``batch`` rows; see the module docstring.

    Args:
        x: inputs ``(N, in)``; ``order``: int64 ``(N,)``, the epoch's row order.
        labels / targets: int64 class labels ``(N,)`` for categorical cross-entropy with labels,
            or target rows ``(N, out)``; the unused one is empty.
        layers: int64 ``(L, 9)``, columns :data:`LAYER_COLUMNS`; ``penalties``: ``(L, 3)`` (l1, l2, 2 l2).
        loss_code: a :data:`LOSS_CODES` value or :data:`CATEGORICAL_CROSSENTROPY`.
            An unknown loss, optimizer or activation code raises
            :class:`~fusednn.kernels.errors.UnknownCodeError` before the first update.
        accumulate: micro-batches per update, each gradient weighted by its share of the
            group's rows into ``accumulated`` (empty when ``accumulate == 1``).
        optimizer_code, flag, hyper, state0..2: SGD (momentum, 1 - dampening, weight_decay;
            flag nesterov; momentum_buffer), RMSprop (alpha, 1 - alpha, eps, weight_decay,
            momentum; flag centered; square_avg, grad_avg, momentum_buffer) or Adam
            (1 - beta1, beta2, 1 - beta2, eps, weight_decay; flag amsgrad; exp_avg,
            exp_avg_sq, max_exp_avg_sq). Unused states are empty.
        rates: ``(updates, 2)``, each update's learning rate (Adam: step size) and Adam's
            ``sqrt(1 - beta2^t)``; ``first_step_count``: the optimizer's steps before this epoch.
        workspace: flat scratch the layer table points into; ``step_losses``: receives each
            step's loss (penalties included); ``outputs``: ``(N, out)`` receives the outputs in
            visiting order, or is empty.
    """
    # The branches on these codes would fall through to binary cross-entropy and Adam; refuse
    # before anything is written. Activation codes are refused by the dense kernels' own checks.
    if loss_code < 0 or loss_code >= _LOSS_COUNT:
        raise UnknownCodeError("loss", loss_code, _LOSS_COUNT, _TABLE)
    if optimizer_code < 0 or optimizer_code >= _OPTIMIZER_COUNT:
        raise UnknownCodeError("optimizer", optimizer_code, _OPTIMIZER_COUNT, _TABLE)
    n = x.shape[0]
    steps = (n + batch - 1) // batch
    last = layers.shape[0] - 1
    width = layers[0, IN]
    update = 0
    group_rows = 1
    for step in range(steps):
        start = step * batch
        rows = min(n, start + batch) - start
        first_in_group = step % accumulate == 0
        if first_in_group:
            group_rows = min(n, start + accumulate * batch) - start
        xb = _matrix(workspace, layers[0, INPUT], rows, width)
        for i in range(rows):
            source = x[order[start + i]]
            for j in range(width):
                xb[i, j] = source[j]
        for layer in range(last + 1):
            n_in, n_out = layers[layer, IN], layers[layer, OUT]
            h = _matrix(workspace, layers[layer, INPUT], rows, n_in)
            z = _matrix(workspace, layers[layer, PRE], rows, n_out)
            y = _matrix(workspace, layers[layer, OUTPUT], rows, n_out)
            W = _matrix(params, layers[layer, WEIGHT], n_in, n_out)
            _gemm(h, W, z, loop_gemm_max)
            bias_activation(layers[layer, ACTIVATION], z, params[layers[layer, BIAS] : layers[layer, BIAS] + n_out], y)
        out = _matrix(workspace, layers[last, OUTPUT], rows, layers[last, OUT])
        dout = _matrix(workspace, layers[last, OUTPUT_GRAD], rows, layers[last, OUT])
        if loss_code == CATEGORICAL_CROSSENTROPY:
            value = _cross_entropy(out, labels, targets, order, start, dout)
        else:
            value = _elementwise_loss(loss_code, out, targets, order, start, dout)
        if outputs.shape[0] > 0:
            for i in range(rows):
                for j in range(out.shape[1]):
                    outputs[start + i, j] = out[i, j]
        penalty = 0.0
        has_penalty = False
        for layer in range(last, -1, -1):
            n_in, n_out = layers[layer, IN], layers[layer, OUT]
            h = _matrix(workspace, layers[layer, INPUT], rows, n_in)
            z = _matrix(workspace, layers[layer, PRE], rows, n_out)
            y = _matrix(workspace, layers[layer, OUTPUT], rows, n_out)
            dz = _matrix(workspace, layers[layer, OUTPUT_GRAD], rows, n_out)
            W = _matrix(params, layers[layer, WEIGHT], n_in, n_out)
            dW = _matrix(grads, layers[layer, WEIGHT], n_in, n_out)
            # dz overwrites the output gradient in place: each element is read before it is written.
            activation_grad_bias(
                layers[layer, ACTIVATION], dz, z, y, dz, grads[layers[layer, BIAS] : layers[layer, BIAS] + n_out]
            )
            _gemm_tn(h, dz, dW, loop_gemm_max)
            if layer > 0:
                _gemm_nt(dz, W, _matrix(workspace, layers[layer - 1, OUTPUT_GRAD], rows, n_in), loop_gemm_max)
            l1, l2, two_l2 = penalties[layer, L1], penalties[layer, L2], penalties[layer, TWO_L2]
            if l1 != 0 or l2 != 0:
                has_penalty = True
                first = layers[layer, WEIGHT]
                for k in range(first, first + n_in * n_out):
                    w = params[k]
                    penalty += float(l1 * abs(w) + l2 * w * w)
                    grads[k] += l1 * _sign(w) + two_l2 * w
        loss = like(out[0, 0], value)
        if has_penalty:
            loss = loss + like(out[0, 0], penalty)
        step_losses[step] = loss
        if accumulated.shape[0] > 0:
            share = like(out[0, 0], rows / group_rows)
            if first_in_group:
                for k in range(grads.shape[0]):
                    accumulated[k] = grads[k] * share
            else:
                for k in range(grads.shape[0]):
                    accumulated[k] += grads[k] * share
            if step % accumulate != accumulate - 1 and start + rows != n:
                continue
            # A loop, not ``grads[:] = accumulated``: Numba compiles an array-to-slice assignment with its
            # shape-mismatch message, whose string formatting cost 3 of the kernel's 15 s cold compile.
            for k in range(grads.shape[0]):
                grads[k] = accumulated[k]
        _optimizer_update(
            optimizer_code,
            params,
            grads,
            state0,
            state1,
            state2,
            hyper,
            flag,
            rates[update, 0],
            rates[update, 1],
            first_step_count + update == 0,
        )
        update += 1
