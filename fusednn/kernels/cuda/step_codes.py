"""The layout of the device values a captured training step reads instead of host scalars.

A CUDA graph replays the kernel arguments it captured, so whatever changes from one
step to the next (which batch, which update, the optimizer's step count, the scheduled
learning rate) lives in small device vectors that the step's own kernels read and
advance. These indices, and the loss codes of ``elementwise_loss``, reach the CUDA C as
``-D`` defines (:func:`fusednn.kernels.cuda.sources.compile_defines`), so Python and C
agree by construction.
"""

from __future__ import annotations

COUNTERS: tuple[str, ...] = ("batch", "update", "step")
"""The int64 counters, in order: the batch of the epoch a step trains on, the optimizer
update of the epoch, and the optimizer's step count before that update (Adam's ``t - 1``)."""

SCALARS: tuple[str, ...] = ("rate", "bias_correction2_sqrt", "first_step")
"""The per-update scalars ``update_scalars`` writes (in the parameter dtype) for the optimizer kernels:
the learning rate (Adam: its step size ``lr / (1 - beta1^t)``), Adam's ``sqrt(1 - beta2^t)``,
and 1 when the update is the optimizer's first (SGD starts its momentum buffer there), else 0."""

ELEMENTWISE_LOSSES: tuple[str, ...] = ("mse", "mae", "binary_crossentropy")
"""Losses ``elementwise_loss`` computes, in code order (categorical cross-entropy has its own kernels)."""


def step_defines() -> list[str]:
    """The ``-D`` defines of the counter and scalar indices and the loss codes.

    >>> "-DFUSEDNN_COUNTER_STEP=2" in step_defines()
    True
    """
    groups = {"COUNTER": COUNTERS, "SCALAR": SCALARS, "LOSS": ELEMENTWISE_LOSSES}
    return [
        f"-DFUSEDNN_{group}_{name.upper()}={index}"
        for group, names in groups.items()
        for index, name in enumerate(names)
    ]
