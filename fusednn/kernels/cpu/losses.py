"""Fused softmax cross-entropy: one call per row computes the loss and the gradient together.

For a row ``x`` with ``m = max(x)`` and ``log p = x - m - log(sum(exp(x - m)))``
(stable for any logits), and ``N`` rows:

* labels ``t``: ``loss_row = -log p[t]``, ``grad = (p - onehot(t)) / N``
* probabilities ``t``: ``loss_row = -sum_c t_c log p_c``, ``grad = (p * sum_c t_c - t) / N``

The drivers return the summed row losses (accumulated in float64); the caller
divides by ``N``. The parallel drivers run rows on Numba's threads.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit

from .common import JitOptions, like

_JIT: JitOptions = {"cache": True, "error_model": "numpy"}


@njit(inline="always", **_JIT)
def _log_normaliser(x: np.ndarray) -> tuple[float, float]:
    """``(max(x), log(sum(exp(x - max))))`` of one row."""
    m = x[0]
    for j in range(1, x.shape[0]):
        if x[j] > m:
            m = x[j]
    s = x[0] - x[0]
    for j in range(x.shape[0]):
        s += math.exp(x[j] - m)
    return m, math.log(s)


@njit(**_JIT)
def _sum_in_order(values: np.ndarray) -> float:
    """Sum in index order (a ``.sum()`` inside a parallel function would itself run in parallel, in another order)."""
    total = 0.0
    for i in range(values.shape[0]):
        total += values[i]
    return total


@njit(inline="always", **_JIT)
def label_row(x: np.ndarray, label: int, grad: np.ndarray, n: float) -> float:
    """Loss of one row of logits against class ``label``; writes ``(softmax - onehot) / n`` into ``grad``."""
    m, log_s = _log_normaliser(x)
    for j in range(x.shape[0]):
        grad[j] = math.exp((x[j] - m) - log_s) / n
    grad[label] = (math.exp((x[label] - m) - log_s) - like(n, 1.0)) / n
    return -float((x[label] - m) - log_s)


@njit(inline="always", **_JIT)
def probability_row(x: np.ndarray, t: np.ndarray, grad: np.ndarray, n: float) -> float:
    """Loss of one row of logits against probabilities ``t``; writes ``(softmax * sum(t) - t) / n`` into ``grad``."""
    m, log_s = _log_normaliser(x)
    t_sum = t[0] - t[0]
    loss = 0.0
    for j in range(x.shape[0]):
        t_sum += t[j]
        loss -= float(t[j] * ((x[j] - m) - log_s))
    for j in range(x.shape[0]):
        grad[j] = (math.exp((x[j] - m) - log_s) * t_sum - t[j]) / n
    return loss


# The drivers store each row's loss and sum the rows afterwards in row order:
# the total is then the same for any thread count, and the parallel loops
# carry no reduction variable (a prange reduction over an inlined row body hit
# a parfor assertion, "unexpected cycle in lookup()", in another Numba release).


@njit(**_JIT)
def cross_entropy_labels(logits: np.ndarray, labels: np.ndarray, grad: np.ndarray) -> float:
    """Summed loss over the rows of ``logits (N, C)`` with int64 ``labels (N,)``; fills ``grad (N, C)``. Serial."""
    n = like(logits[0, 0], logits.shape[0])
    row_loss = np.empty(logits.shape[0])
    for i in range(logits.shape[0]):
        row_loss[i] = label_row(logits[i], labels[i], grad[i], n)
    return _sum_in_order(row_loss)


@njit(parallel=True, **_JIT)
def cross_entropy_labels_parallel(logits: np.ndarray, labels: np.ndarray, grad: np.ndarray) -> float:
    """:func:`cross_entropy_labels` with rows on Numba's threads."""
    n = like(logits[0, 0], logits.shape[0])
    row_loss = np.empty(logits.shape[0])
    for i in numba.prange(logits.shape[0]):
        row_loss[i] = label_row(logits[i], labels[i], grad[i], n)
    return _sum_in_order(row_loss)


@njit(**_JIT)
def cross_entropy_probabilities(logits: np.ndarray, target: np.ndarray, grad: np.ndarray) -> float:
    """Summed loss over the rows of ``logits (N, C)`` with class probabilities ``target (N, C)``. Serial."""
    n = like(logits[0, 0], logits.shape[0])
    row_loss = np.empty(logits.shape[0])
    for i in range(logits.shape[0]):
        row_loss[i] = probability_row(logits[i], target[i], grad[i], n)
    return _sum_in_order(row_loss)


@njit(parallel=True, **_JIT)
def cross_entropy_probabilities_parallel(logits: np.ndarray, target: np.ndarray, grad: np.ndarray) -> float:
    """:func:`cross_entropy_probabilities` with rows on Numba's threads."""
    n = like(logits[0, 0], logits.shape[0])
    row_loss = np.empty(logits.shape[0])
    for i in numba.prange(logits.shape[0]):
        row_loss[i] = probability_row(logits[i], target[i], grad[i], n)
    return _sum_in_order(row_loss)
