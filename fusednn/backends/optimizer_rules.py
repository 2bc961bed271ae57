"""The optimizer rules written with ``xp`` calls only: the executable specification of every fused kernel.

Each rule updates flat 1-D buffers in place and takes ``(xp, param, grad, *state, *scalars)``;
the per-tensor rules (LAMB, LARS) take ``segments``, an int64 ``(tensors, 2)`` host table of
each tensor's ``[start, stop)``, after the state. The state and the scalars come in exactly the
order of the Numba kernel of the same name (:mod:`fusednn.kernels.cpu.optim`) and of the CUDA
kernel ``<name>_step`` (``optimizers.cu``); that order is the signature, written once per kernel.
An unused state buffer is ``None``. The rules are ``torch.optim``'s single-tensor, non-maximising
updates; LAMB and LARS follow ``timm.optim.Lamb`` and ``timm.optim.Lars`` (see :mod:`fusednn.nn.optim`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Array = Any


def sgd(
    xp,
    param,
    grad,
    momentum_buffer,
    lr,
    momentum,
    one_minus_dampening,
    weight_decay,
    use_momentum,
    nesterov,
    first_step,
):  # type: ignore[no-untyped-def]  # noqa: E501
    g = grad + weight_decay * param if weight_decay else grad
    if use_momentum:
        if first_step:
            momentum_buffer[...] = g
        else:
            momentum_buffer *= momentum
            momentum_buffer += one_minus_dampening * g
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    param -= lr * g


def rmsprop(  # type: ignore[no-untyped-def]
    xp, param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, one_minus_alpha, eps, weight_decay, momentum,
    centered, use_momentum,
):  # fmt: skip
    g = grad + weight_decay * param if weight_decay else grad
    square_avg *= alpha
    square_avg += one_minus_alpha * g * g
    if centered:
        grad_avg *= alpha
        grad_avg += one_minus_alpha * g
        avg = xp.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = xp.sqrt(square_avg) + eps
    if use_momentum:
        momentum_buffer *= momentum
        momentum_buffer += g / avg
        param -= lr * momentum_buffer
    else:
        param -= lr * (g / avg)


def _adam_moments(xp, g, exp_avg, exp_avg_sq, max_exp_avg_sq, one_minus_beta1, beta2, one_minus_beta2, amsgrad):  # type: ignore[no-untyped-def]  # noqa: E501
    exp_avg += one_minus_beta1 * (g - exp_avg)
    exp_avg_sq *= beta2
    exp_avg_sq += one_minus_beta2 * g * g
    if not amsgrad:
        return exp_avg_sq
    xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
    return max_exp_avg_sq


def adam(  # type: ignore[no-untyped-def]
    xp, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
    one_minus_beta2, eps, weight_decay, amsgrad,
):  # fmt: skip
    g = grad + weight_decay * param if weight_decay else grad
    v = _adam_moments(xp, g, exp_avg, exp_avg_sq, max_exp_avg_sq, one_minus_beta1, beta2, one_minus_beta2, amsgrad)
    param -= step_size * (exp_avg / (xp.sqrt(v) / bias_correction2_sqrt + eps))


def adamw(  # type: ignore[no-untyped-def]
    xp, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
    one_minus_beta2, eps, decay, amsgrad,
):  # fmt: skip
    param *= decay
    v = _adam_moments(xp, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, one_minus_beta1, beta2, one_minus_beta2, amsgrad)
    param -= step_size * (exp_avg / (xp.sqrt(v) / bias_correction2_sqrt + eps))


def _norm(xp, x) -> float:  # type: ignore[no-untyped-def]
    """The 2-norm, summed in float64 as the fused kernels do."""
    return math.sqrt(float((x.astype(xp.float64) ** 2).sum()))


def lamb(  # type: ignore[no-untyped-def]
    xp, param, grad, exp_avg, exp_avg_sq, segments, lr, bias_correction1, bias_correction2_sqrt, one_minus_beta1,
    beta2, one_minus_beta2, eps, weight_decay,
):  # fmt: skip
    for start, stop in segments:
        p, g, m, v = (a[start:stop] for a in (param, grad, exp_avg, exp_avg_sq))
        m += one_minus_beta1 * (g - m)
        v *= beta2
        v += one_minus_beta2 * g * g
        update = (m / bias_correction1) / (xp.sqrt(v) / bias_correction2_sqrt + eps) + weight_decay * p
        p_norm, u_norm = _norm(xp, p), _norm(xp, update)
        ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
        p -= (lr * param.dtype.type(ratio)) * update


def lars(  # type: ignore[no-untyped-def]
    xp, param, grad, momentum_buffer, segments, lr, momentum, one_minus_dampening, weight_decay, trust_coefficient,
    eps, use_momentum, nesterov, first_step,
):  # fmt: skip
    for start, stop in segments:
        p, g_raw = param[start:stop], grad[start:stop]
        p_norm, g_norm = _norm(xp, p), _norm(xp, g_raw)
        ratio = 1.0
        if p_norm > 0 and g_norm > 0:
            ratio = float(trust_coefficient) * p_norm / (g_norm + float(weight_decay) * p_norm + float(eps))
        g = (g_raw + weight_decay * p) * param.dtype.type(ratio)
        buffer = momentum_buffer[start:stop] if use_momentum else None
        sgd(xp, p, g, buffer, lr, momentum, one_minus_dampening, 0, use_momentum, nesterov, first_step)


RULES: dict[str, Callable[..., None]] = {
    "sgd": sgd,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
    "lamb": lamb,
    "lars": lars,
}
"""Every rule by name; a rule with ``segments`` in its signature is per tensor."""

SEGMENTED = frozenset({"lamb", "lars"})
"""The rules that take the ``segments`` table (per-tensor trust ratios)."""
