"""Fused optimizer steps over flat parameter buffers: one loop per step, as ``torch.optim``.

Each step reads and writes every state buffer once per element. All arrays
are 1-D, contiguous and of one dtype; scalars arrive already cast to that
dtype (the host computes Adam's bias corrections in float64 first). An unused
state buffer (e.g. SGD's without momentum) is passed as an empty array and
never touched. The rules are the docstrings of
:meth:`fusednn.backends.base.Backend.sgd_step`, ``rmsprop_step`` and ``adam_step``.
The flags are loop invariant, so LLVM hoists the branches out of the loop.
"""

from __future__ import annotations

import math

import numba
from numba import njit

from .common import JitOptions, chunk_bounds

_JIT: JitOptions = {"cache": True, "error_model": "numpy"}


@njit(inline="always", **_JIT)
def _sgd_body(
    param,
    grad,
    buf,
    lr,
    momentum,
    one_minus_dampening,
    nesterov,
    weight_decay,
    first_step,
):
    for i in range(param.shape[0]):
        g = grad[i]
        if weight_decay != 0:
            g = g + weight_decay * param[i]
        if momentum != 0:
            b = g if first_step else momentum * buf[i] + one_minus_dampening * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        param[i] -= lr * g


@njit(inline="always", **_JIT)
def _rmsprop_body(
    param,
    grad,
    square_avg,
    grad_avg,
    buf,
    lr,
    alpha,
    one_minus_alpha,
    eps,
    weight_decay,
    momentum,
    centered,
):
    for i in range(param.shape[0]):
        g = grad[i]
        if weight_decay != 0:
            g = g + weight_decay * param[i]
        sq = alpha * square_avg[i] + one_minus_alpha * g * g
        square_avg[i] = sq
        if centered:
            ga = alpha * grad_avg[i] + one_minus_alpha * g
            grad_avg[i] = ga
            avg = math.sqrt(sq - ga * ga) + eps
        else:
            avg = math.sqrt(sq) + eps
        if momentum > 0:
            b = momentum * buf[i] + g / avg
            buf[i] = b
            param[i] -= lr * b
        else:
            param[i] -= lr * (g / avg)


@njit(inline="always", **_JIT)
def _adam_body(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    weight_decay,
    amsgrad,
    step_size,
    bias_correction2_sqrt,
):
    for i in range(param.shape[0]):
        g = grad[i]
        if weight_decay != 0:
            g = g + weight_decay * param[i]
        m = exp_avg[i]
        m = m + one_minus_beta1 * (g - m)  # torch's lerp form
        exp_avg[i] = m
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g
        exp_avg_sq[i] = v
        if amsgrad:
            v = max(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        param[i] -= step_size * (m / (math.sqrt(v) / bias_correction2_sqrt + eps))


@njit(**_JIT)
def sgd(
    param,
    grad,
    momentum_buffer,
    lr,
    momentum,
    one_minus_dampening,
    nesterov,
    weight_decay,
    first_step,
):
    """One SGD step over flat buffers, serial."""
    _sgd_body(
        param,
        grad,
        momentum_buffer,
        lr,
        momentum,
        one_minus_dampening,
        nesterov,
        weight_decay,
        first_step,
    )


@njit(parallel=True, **_JIT)
def sgd_parallel(
    param,
    grad,
    momentum_buffer,
    lr,
    momentum,
    one_minus_dampening,
    nesterov,
    weight_decay,
    first_step,
    n_chunks,
):
    """:func:`sgd` over ``n_chunks`` blocks on Numba's threads."""
    for c in numba.prange(n_chunks):
        s, e = chunk_bounds(param.shape[0], n_chunks, c)
        buf = momentum_buffer[s:e]  # an unused, empty buffer slices to empty
        _sgd_body(
            param[s:e],
            grad[s:e],
            buf,
            lr,
            momentum,
            one_minus_dampening,
            nesterov,
            weight_decay,
            first_step,
        )


@njit(**_JIT)
def rmsprop(
    param,
    grad,
    square_avg,
    grad_avg,
    momentum_buffer,
    lr,
    alpha,
    one_minus_alpha,
    eps,
    weight_decay,
    momentum,
    centered,
):
    """One RMSprop step over flat buffers, serial."""
    _rmsprop_body(
        param,
        grad,
        square_avg,
        grad_avg,
        momentum_buffer,
        lr,
        alpha,
        one_minus_alpha,
        eps,
        weight_decay,
        momentum,
        centered,
    )


@njit(parallel=True, **_JIT)
def rmsprop_parallel(
    param,
    grad,
    square_avg,
    grad_avg,
    momentum_buffer,
    lr,
    alpha,
    one_minus_alpha,
    eps,
    weight_decay,
    momentum,
    centered,
    n_chunks,
):
    """:func:`rmsprop` over ``n_chunks`` blocks on Numba's threads."""
    for c in numba.prange(n_chunks):
        s, e = chunk_bounds(param.shape[0], n_chunks, c)
        _rmsprop_body(
            param[s:e],
            grad[s:e],
            square_avg[s:e],
            grad_avg[s:e],
            momentum_buffer[s:e],
            lr,
            alpha,
            one_minus_alpha,
            eps,
            weight_decay,
            momentum,
            centered,
        )


@njit(**_JIT)
def adam(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    weight_decay,
    amsgrad,
    step_size,
    bias_correction2_sqrt,
):
    """One Adam step over flat buffers, serial."""
    _adam_body(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        eps,
        weight_decay,
        amsgrad,
        step_size,
        bias_correction2_sqrt,
    )


@njit(parallel=True, **_JIT)
def adam_parallel(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    weight_decay,
    amsgrad,
    step_size,
    bias_correction2_sqrt,
    n_chunks,
):
    """:func:`adam` over ``n_chunks`` blocks on Numba's threads."""
    for c in numba.prange(n_chunks):
        s, e = chunk_bounds(param.shape[0], n_chunks, c)
        _adam_body(
            param[s:e],
            grad[s:e],
            exp_avg[s:e],
            exp_avg_sq[s:e],
            max_exp_avg_sq[s:e],
            one_minus_beta1,
            beta2,
            one_minus_beta2,
            eps,
            weight_decay,
            amsgrad,
            step_size,
            bias_correction2_sqrt,
        )
