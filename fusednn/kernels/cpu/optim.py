"""Fused optimizer steps over flat parameter buffers: one serial loop per step, as ``torch.optim``.

Every kernel takes ``(param, grad, *state, *scalars)``: the 1-D, contiguous buffers of
one dtype, then its scalars in exactly the order of the CUDA kernel of the same rule
in ``optimizers.cu`` (without CUDA's element count ``n``). Scalars arrive already cast
to the buffers' dtype, flags as booleans; the host computes bias corrections in float64
first. An unused state buffer (e.g. SGD's without momentum) is an empty array and never
touched. The reference rules are :mod:`fusednn.backends.optimizer_rules`. Flags are loop
invariant, so LLVM hoists their branches out of the loops.

The per-tensor rules (LAMB, LARS) also take ``segments``, an int64 ``(tensors, 2)`` table
of each tensor's ``[start, stop)`` in the flat buffer: a first pass over a tensor sums the
squared norms its trust ratio needs, a second applies the update. Elements outside every
segment (the flat buffer's padding) are never touched.

The kernels are serial: they are memory-bound, and on the 2-core development VM two
threads gained 6% at 8e6 parameters and lost below 4e6 (see
:data:`fusednn.backends.numba_backend.PARALLEL_MIN_ELEMENTS`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .common import JitOptions, like

_JIT: JitOptions = {"cache": True, "error_model": "numpy"}

_NORM_BLOCK = 512  # elements whose LAMB directions are computed, vectorised, before their norm is summed


@njit(inline="always", **_JIT)
def _descend(param, momentum_buffer, i, g, lr, momentum, one_minus_dampening, use_momentum, nesterov, first_step):
    """``param[i] -= lr * d`` for direction ``g``, through SGD's momentum when ``use_momentum`` (SGD's and LARS's)."""
    if use_momentum:
        b = g if first_step else momentum * momentum_buffer[i] + one_minus_dampening * g
        momentum_buffer[i] = b
        g = g + momentum * b if nesterov else b
    param[i] -= lr * g


@njit(**_JIT)
def sgd(
    param, grad, momentum_buffer, lr, momentum, one_minus_dampening, weight_decay, use_momentum, nesterov, first_step
):
    """``torch.optim.SGD``."""
    for i in range(param.shape[0]):
        g = grad[i]
        if weight_decay != 0:
            g = g + weight_decay * param[i]
        _descend(param, momentum_buffer, i, g, lr, momentum, one_minus_dampening, use_momentum, nesterov, first_step)


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
    use_momentum,
):
    """``torch.optim.RMSprop`` (``eps`` outside the square root)."""
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
        if use_momentum:
            b = momentum * momentum_buffer[i] + g / avg
            momentum_buffer[i] = b
            param[i] -= lr * b
        else:
            param[i] -= lr * (g / avg)


@njit(inline="always", **_JIT)
def _adam_body(
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
    one_minus_beta2, eps, weight_decay, decay, amsgrad,
):  # fmt: skip
    """Adam's loop: ``weight_decay`` adds L2 to the gradient (Adam), ``decay`` scales the parameter first (AdamW).

    The loop lives here, not in a per-element function: that form did not vectorise (5x slower).
    Multiplying by Adam's ``decay = 1`` is exact.
    """
    for i in range(param.shape[0]):
        p = param[i] * decay
        g = grad[i]
        if weight_decay != 0:
            g = g + weight_decay * p
        m = exp_avg[i]
        m = m + one_minus_beta1 * (g - m)  # torch's lerp form
        exp_avg[i] = m
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g
        exp_avg_sq[i] = v
        if amsgrad:
            v = max(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        param[i] = p - step_size * (m / (math.sqrt(v) / bias_correction2_sqrt + eps))


@njit(**_JIT)
def adam(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    step_size,
    bias_correction2_sqrt,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    weight_decay,
    amsgrad,
):
    """``torch.optim.Adam``: L2 weight decay added to the gradient."""
    _adam_body(
        param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
        one_minus_beta2, eps, weight_decay, like(step_size, 1.0), amsgrad,
    )  # fmt: skip


@njit(**_JIT)
def adamw(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    step_size,
    bias_correction2_sqrt,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    decay,
    amsgrad,
):
    """``torch.optim.AdamW``: the parameter shrinks by ``decay = 1 - lr * weight_decay`` first."""
    _adam_body(
        param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
        one_minus_beta2, eps, like(step_size, 0.0), decay, amsgrad,
    )  # fmt: skip


@njit(inline="always", **_JIT)
def _lamb_direction(p, m, v, bias_correction1, bias_correction2_sqrt, eps, weight_decay):
    """LAMB's update direction ``m_hat / (sqrt(v_hat) + eps) + weight_decay * p`` (timm's arithmetic)."""
    return (m / bias_correction1) / (math.sqrt(v) / bias_correction2_sqrt + eps) + weight_decay * p


# The per-tensor kernels hand each tensor's views to loops that start at 0 and keep the float64
# sums of squares in loops of their own: a loop from a runtime offset, or one that carries an
# ordered reduction, does not vectorise (LAMB over 1e5 float32 took 850 µs written as one loop).


@njit(inline="always", **_JIT)
def _lamb_tensor(
    p, g, m, v, lr, bias_correction1, bias_correction2_sqrt, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay
):  # fmt: skip
    for i in range(p.shape[0]):
        mi = m[i]
        m[i] = mi + one_minus_beta1 * (g[i] - mi)  # torch's lerp form, as timm
        v[i] = beta2 * v[i] + one_minus_beta2 * g[i] * g[i]
    p_sq = 0.0  # float64 sums of the squares, whatever the dtype
    u_sq = 0.0
    block = np.empty(_NORM_BLOCK, dtype=p.dtype)
    for start in range(0, p.shape[0], _NORM_BLOCK):
        stop = min(start + _NORM_BLOCK, p.shape[0])
        pb, mb, vb, ub = p[start:stop], m[start:stop], v[start:stop], block[: stop - start]
        for i in range(ub.shape[0]):  # the directions of a block, vectorised
            ub[i] = _lamb_direction(pb[i], mb[i], vb[i], bias_correction1, bias_correction2_sqrt, eps, weight_decay)
        for i in range(ub.shape[0]):  # then their ordered sums
            p_sq += pb[i] * pb[i]
            u_sq += ub[i] * ub[i]
    rate = lr
    if p_sq > 0 and u_sq > 0:  # otherwise the trust ratio is 1, as timm's
        rate = lr * like(lr, math.sqrt(p_sq) / math.sqrt(u_sq))
    for i in range(p.shape[0]):
        p[i] = p[i] - rate * _lamb_direction(
            p[i], m[i], v[i], bias_correction1, bias_correction2_sqrt, eps, weight_decay
        )


@njit(**_JIT)
def lamb(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    segments,
    lr,
    bias_correction1,
    bias_correction2_sqrt,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    weight_decay,
):
    """LAMB (You et al. 2019) per tensor: Adam's direction plus decay, scaled by ``||p|| / ||direction||``."""
    for s in range(segments.shape[0]):
        start, stop = segments[s, 0], segments[s, 1]
        _lamb_tensor(
            param[start:stop], grad[start:stop], exp_avg[start:stop], exp_avg_sq[start:stop], lr, bias_correction1,
            bias_correction2_sqrt, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
        )  # fmt: skip


@njit(inline="always", **_JIT)
def _lars_tensor(
    p, g, buf, lr, momentum, one_minus_dampening, weight_decay, trust_coefficient, eps, use_momentum, nesterov,
    first_step,
):  # fmt: skip
    p_sq = 0.0  # float64 sums of the squares, whatever the dtype
    g_sq = 0.0
    for i in range(p.shape[0]):
        p_sq += p[i] * p[i]
        g_sq += g[i] * g[i]
    ratio = like(lr, 1.0)
    if p_sq > 0 and g_sq > 0:  # otherwise the trust ratio is 1, as timm's
        p_norm, g_norm = math.sqrt(p_sq), math.sqrt(g_sq)
        ratio = like(lr, trust_coefficient * p_norm / (g_norm + weight_decay * p_norm + eps))
    for i in range(p.shape[0]):
        d = (g[i] + weight_decay * p[i]) * ratio
        _descend(p, buf, i, d, lr, momentum, one_minus_dampening, use_momentum, nesterov, first_step)


@njit(**_JIT)
def lars(
    param,
    grad,
    momentum_buffer,
    segments,
    lr,
    momentum,
    one_minus_dampening,
    weight_decay,
    trust_coefficient,
    eps,
    use_momentum,
    nesterov,
    first_step,
):
    """LARS (You et al. 2017) per tensor: SGD on ``ratio * (g + weight_decay * p)``,
    ``ratio = trust_coefficient * ||p|| / (||g|| + weight_decay * ||p|| + eps)``."""
    for s in range(segments.shape[0]):
        start, stop = segments[s, 0], segments[s, 1]
        buf = momentum_buffer[start:stop]  # an unused, empty buffer slices to empty
        _lars_tensor(
            param[start:stop], grad[start:stop], buf, lr, momentum, one_minus_dampening, weight_decay,
            trust_coefficient, eps, use_momentum, nesterov, first_step,
        )  # fmt: skip
