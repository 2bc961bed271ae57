"""Kernels of the layers beyond Dense: dropout's masks from Philox 4x32-10, and batch normalisation.

:func:`philox4x32_10` is Random123's generator in uint64 arithmetic (every product of two
32-bit words is exact), the same function as :func:`fusednn.backends.philox.philox4x32_10`
and ``layers.cu``'s. :func:`dropout_apply` multiplies each element by ``scale`` or 0 as its
word is at least ``threshold`` or not: dropout's forward and, with the same key, its backward.

The batch-norm kernels take ``x (N, F)`` C-contiguous and per-feature vectors ``(F,)``; they
accumulate in float64 and each makes the fewest passes the maths allows: the forward one over
``x`` for the statistics (sums shifted by the first row, which keeps the one-pass variance
accurate) and one to normalise; the backward one for ``sum dy`` and ``sum dy * xhat`` and one
for ``dx``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..philox_constants import PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1
from .common import JitOptions

_JIT: JitOptions = {"cache": True, "error_model": "numpy"}

# uint64 constants: a plain int literal would be int64, and uint64 op int64 is float64 in Numba.
_M0, _M1, _W0, _W1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1), np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
_MASK = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


@njit(inline="always", **_JIT)
def philox4x32_10(
    c0: np.uint64, c1: np.uint64, c2: np.uint64, c3: np.uint64, k0: np.uint64, k1: np.uint64
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """Philox 4x32-10 of counter ``(c0, c1, c2, c3)`` and key ``(k0, k1)``, each word a uint64 below 2**32."""
    for _ in range(PHILOX_ROUNDS):
        p0 = c0 * _M0
        p1 = c2 * _M1
        c0, c1, c2, c3 = (p1 >> _SHIFT) ^ c1 ^ k0, p1 & _MASK, (p0 >> _SHIFT) ^ c3 ^ k1, p0 & _MASK
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return c0, c1, c2, c3


@njit(**_JIT)
def philox_block(
    c0: np.uint64, c1: np.uint64, c2: np.uint64, c3: np.uint64, k0: np.uint64, k1: np.uint64
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """:func:`philox4x32_10` as a callable kernel (the known-answer tests call it)."""
    return philox4x32_10(c0, c1, c2, c3, k0, k1)


@njit(**_JIT)
def dropout_apply(
    x: np.ndarray,
    y: np.ndarray,
    threshold: np.uint64,
    scale: float,
    seed_lo: np.uint64,
    seed_hi: np.uint64,
    step_lo: np.uint64,
    step_hi: np.uint64,
    layer: np.uint64,
    first: int,
) -> None:
    """``y[i] = x[i] * scale`` where element ``first + i``'s Philox word is ``>= threshold``, else 0; flat arrays.

    Element ``e`` of the batch takes word ``e % 4`` of the block of counter ``(e // 4, layer, step_lo,
    step_hi)`` under key ``(seed_lo, seed_hi)``, as :func:`fusednn.backends.philox.dropout_bits` does;
    ``x`` holds elements ``first, ..., first + x.size - 1``, so its first and last blocks may be partial.
    """
    n = x.size
    zero = x.dtype.type(0)
    for g in range(first // 4, (first + n + 3) // 4):
        words = philox4x32_10(np.uint64(g), layer, step_lo, step_hi, seed_lo, seed_hi)
        base = 4 * g - first  # the index in x of the block's word 0
        for k in range(max(0, -base), min(4, n - base)):
            y[base + k] = x[base + k] * scale if words[k] >= threshold else zero


@njit(**_JIT)
def batchnorm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    y: np.ndarray,
    mean: np.ndarray,
    inv_std: np.ndarray,
    momentum: float,
    eps: float,
    training: bool,
) -> None:
    """``y = (x - mean) * inv_std * gamma + beta``; in training, batch statistics that also update the running ones.

    Training: ``mean``/``inv_std`` get the batch mean and ``1 / sqrt(biased var + eps)``, and
    ``running_* = (1 - momentum) * running_* + momentum * batch_*`` with the unbiased variance
    (as ``torch.nn.BatchNorm1d``). Evaluation: they get the running statistics.
    """
    n, f = x.shape
    if training:
        s1 = np.zeros(f)
        s2 = np.zeros(f)
        for i in range(n):
            for j in range(f):
                d = np.float64(x[i, j]) - np.float64(x[0, j])
                s1[j] += d
                s2[j] += d * d
        m = np.float64(momentum)
        for j in range(f):
            shifted_mean = s1[j] / n
            var = max(s2[j] / n - shifted_mean * shifted_mean, 0.0)
            batch_mean = np.float64(x[0, j]) + shifted_mean
            mean[j] = batch_mean
            inv_std[j] = 1.0 / np.sqrt(var + np.float64(eps))
            running_mean[j] = (1.0 - m) * np.float64(running_mean[j]) + m * batch_mean
            running_var[j] = (1.0 - m) * np.float64(running_var[j]) + m * (var * n / (n - 1))
    else:
        for j in range(f):
            mean[j] = running_mean[j]
            inv_std[j] = 1.0 / np.sqrt(np.float64(running_var[j]) + np.float64(eps))
    for i in range(n):
        for j in range(f):
            y[i, j] = (x[i, j] - mean[j]) * inv_std[j] * gamma[j] + beta[j]


@njit(**_JIT)
def batchnorm_backward(
    x: np.ndarray,
    dy: np.ndarray,
    gamma: np.ndarray,
    mean: np.ndarray,
    inv_std: np.ndarray,
    dx: np.ndarray,
    dgamma: np.ndarray,
    dbeta: np.ndarray,
    training: bool,
    need_dx: bool,
) -> None:
    """Gradients of :func:`batchnorm_forward` given ``dy``: ``dbeta = sum dy``, ``dgamma = sum dy * xhat`` and
    ``dx = gamma * inv_std * (dy - dbeta / N - xhat * dgamma / N)`` (training) or ``gamma * inv_std * dy`` (evaluation).
    """
    n, f = x.shape
    s_dy = np.zeros(f)
    s_dyx = np.zeros(f)
    for i in range(n):
        for j in range(f):
            g = np.float64(dy[i, j])
            s_dy[j] += g
            s_dyx[j] += g * ((np.float64(x[i, j]) - np.float64(mean[j])) * np.float64(inv_std[j]))
    for j in range(f):
        dbeta[j] = s_dy[j]
        dgamma[j] = s_dyx[j]
    if not need_dx:
        return
    for i in range(n):
        for j in range(f):
            a = np.float64(gamma[j]) * np.float64(inv_std[j])
            g = np.float64(dy[i, j])
            if training:
                xhat = (np.float64(x[i, j]) - np.float64(mean[j])) * np.float64(inv_std[j])
                g = g - s_dy[j] / n - xhat * s_dyx[j] / n
            dx[i, j] = a * g
