"""Philox 4x32-10 (Salmon et al., SC'11; Random123) over ``xp`` arrays: the reference of every dropout mask.

A counter-based generator: the 4 output words are a pure function of a 4-word counter
and a 2-word key, so any element's random bits can be computed anywhere, in any order.
The Numba kernel (:mod:`fusednn.kernels.cpu.layers`) and the CUDA C kernel
(``fusednn/kernels/cuda/layers.cu``) compute the same function; tests hold all three to
Random123's published known-answer vectors and to each other, bit for bit.

Dropout keys one layer's masks by ``(seed, step, layer)``: element ``i`` of a batch uses
word ``i % 4`` of ``philox4x32_10((i // 4, layer, step_lo, step_hi), (seed_lo, seed_hi))``
(:func:`dropout_bits`) and is kept when that word is at least :func:`dropout_threshold`,
an integer comparison, so every device draws the same mask. ``i`` counts in the whole
batch: a part of it that starts at element ``first`` (a rank's rows, in data-parallel
training) takes the words of elements ``first, first + 1, ...``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..kernels.philox_constants import PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1

_MASK = 0xFFFFFFFF


def philox4x32_10(xp: ModuleType, counter: tuple[Any, Any, Any, Any], key: tuple[int, int]) -> list[Any]:
    """The four output words of Philox 4x32-10 for ``counter`` (four uint64 arrays or ints below 2**32) and ``key``.

    Words are carried in uint64 so that the 32x32-bit products are exact.

    >>> import numpy as np
    >>> [hex(int(w)) for w in philox4x32_10(np, (0, 0, 0, 0), (0, 0))]
    ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    mask = np.uint64(_MASK)
    shift = np.uint64(32)
    c0, c1, c2, c3 = (xp.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = int(key[0]) & _MASK, int(key[1]) & _MASK
    for _ in range(PHILOX_ROUNDS):
        p0 = c0 * np.uint64(PHILOX_M0)
        p1 = c2 * np.uint64(PHILOX_M1)
        c0, c1, c2, c3 = (
            (p1 >> shift) ^ c1 ^ np.uint64(k0),
            p1 & mask,
            (p0 >> shift) ^ c3 ^ np.uint64(k1),
            p0 & mask,
        )
        k0, k1 = (k0 + PHILOX_W0) & _MASK, (k1 + PHILOX_W1) & _MASK
    return [c0, c1, c2, c3]


def split_key(seed: int, step: int) -> tuple[int, int, int, int]:
    """``(seed_lo, seed_hi, step_lo, step_hi)``: the 32-bit words of a dropout mask's seed and step."""
    return seed & _MASK, (seed >> 32) & _MASK, step & _MASK, (step >> 32) & _MASK


def dropout_threshold(rate: float) -> int:
    """The 32-bit threshold below which a word drops its element: ``floor(rate * 2**32)``, for ``0 <= rate < 1``.

    >>> dropout_threshold(0.5)
    2147483648
    """
    return min(int(rate * 2.0**32), _MASK)


def dropout_bits(xp: ModuleType, n: int, seed: int, step: int, layer: int, first: int = 0) -> Any:
    """The random words of elements ``first, ..., first + n - 1`` of one dropout mask, as a uint64 array of ``n``
    values below 2**32.

    A part of a batch that starts at element ``first`` gets the words of those elements of the whole batch:

    >>> import numpy as np
    >>> whole = dropout_bits(np, 10, seed=1, step=2, layer=3)
    >>> bool(np.array_equal(dropout_bits(np, 4, seed=1, step=2, layer=3, first=5), whole[5:9]))
    True
    """
    seed_lo, seed_hi, step_lo, step_hi = split_key(seed, step)
    groups = xp.arange(first // 4, (first + n + 3) // 4, dtype=np.uint64)
    zeros = xp.zeros_like(groups)
    counter = (groups, zeros + np.uint64(layer), zeros + np.uint64(step_lo), zeros + np.uint64(step_hi))
    words = philox4x32_10(xp, counter, (seed_lo, seed_hi))
    start = first % 4
    return xp.stack(words, axis=1).reshape(-1)[start : start + n]
