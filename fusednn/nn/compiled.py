"""Describe a model, loss and optimizer as a backend's :class:`~fusednn.backends.epoch_plan.EpochPlan`.

:func:`fit` asks the backend for a compiled epoch trainer with the plan built here. Each
kind of layer, loss and optimizer has a compiled form only if it is listed below, by
exact class: a subclass may compute something else, so it (like any new layer kind that
brings no compiled form: :class:`~fusednn.nn.Dropout`, :class:`~fusednn.nn.BatchNorm`, a
user's :class:`~fusednn.nn.Layer`) gets no plan, and ``fit`` runs its per-step loop instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backends.epoch_plan import EpochPlan, LayerPlan, OptimizerPlan
from .layers import Dense
from .losses import BinaryCrossentropy, CategoricalCrossentropy, Loss, MeanAbsoluteError, MeanSquaredError
from .optim import SGD, Adam, Optimizer, RMSprop


def _dense_plan(layer: Any, offsets: tuple[int, ...]) -> LayerPlan:
    return LayerPlan("dense", layer.in_features, layer.out_features, layer.activation, layer.l1, layer.l2, offsets)


LAYER_PLANS: dict[type, Callable[[Any, tuple[int, ...]], LayerPlan]] = {Dense: _dense_plan}
"""Layer class -> its plan, given the offsets of its parameters in the flat buffers."""

COMPILED_LOSSES: tuple[type[Loss], ...] = (
    MeanSquaredError,
    MeanAbsoluteError,
    BinaryCrossentropy,
    CategoricalCrossentropy,
)
"""Loss classes a plan can name (by their ``name``)."""

COMPILED_OPTIMIZERS: tuple[type[Optimizer], ...] = (SGD, RMSprop, Adam)
"""Optimizer classes a plan can name (by their lower-cased class name)."""


def epoch_plan(
    model: Any, loss: Loss, optimizer: Optimizer, batch_size: int, accumulate: int, labels: bool
) -> EpochPlan | None:
    """The plan of training ``model`` with ``loss`` and ``optimizer``, or ``None`` if a part has no compiled form.

    ``labels`` says whether the targets are class labels ``(N,)`` rather than rows.
    """
    if type(loss) not in COMPILED_LOSSES or type(optimizer) not in COMPILED_OPTIMIZERS:
        return None
    params = model.parameters()
    layers = []
    first = 0
    for layer in model.layers:
        plan_of = LAYER_PLANS.get(type(layer))
        if plan_of is None:
            return None
        count = len(layer.parameter_shapes)
        layers.append(plan_of(layer, tuple(params.offsets[first : first + count])))
        first += count
    config = optimizer.get_config()
    kind = str(config.pop("name")).lower()
    config.pop("lr")
    return EpochPlan(
        layers=tuple(layers),
        loss=loss.name,
        labels=labels,
        optimizer=OptimizerPlan(kind, config, dict(optimizer.state)),
        params=params.data,
        grads=params.grad,
        batch_size=batch_size,
        accumulate=accumulate,
    )
