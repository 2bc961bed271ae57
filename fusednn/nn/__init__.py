"""Neural networks on any fusednn backend: layers, models, losses and optimizers.

>>> import numpy as np
>>> from fusednn import nn
>>> model = nn.MLP([2, 8, 2], activation="relu", device="numpy", seed=0)
>>> loss_fn = nn.get_loss("categorical_crossentropy", device=model.device)
>>> opt = nn.Adam(model.parameters(), lr=0.01)
>>> out = model.forward(np.array([[0.0, 1.0]]))
>>> loss, dout = loss_fn(out, np.array([1]))
>>> _ = model.backward(dout)
>>> opt.step()
"""

from . import data, metrics, schedules
from .batchnorm import BatchNorm
from .callbacks import EarlyStopping, History, NonFiniteError, NonFiniteLossError, NonFiniteStateError
from .checkpoint import Checkpoint, load, save
from .dropout import Dropout
from .init import INITIALIZERS
from .layers import LAYERS, Dense, Layer, layer_from_config, register_layer
from .losses import (
    LOSSES,
    BinaryCrossentropy,
    CategoricalCrossentropy,
    Loss,
    MeanAbsoluteError,
    MeanSquaredError,
    get_loss,
)
from .model import MLP, Sequential
from .optim import LAMB, LARS, OPTIMIZERS, SGD, Adam, AdamW, Optimizer, RMSprop, get_optimizer, optimizer_from_config
from .parameters import ALIGNMENT, Parameters
from .training import EPOCH_PATHS, evaluate, fit

__all__ = [
    "ALIGNMENT",
    "EPOCH_PATHS",
    "INITIALIZERS",
    "LAMB",
    "LARS",
    "LAYERS",
    "LOSSES",
    "MLP",
    "OPTIMIZERS",
    "SGD",
    "Adam",
    "AdamW",
    "BatchNorm",
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "Checkpoint",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "History",
    "Layer",
    "Loss",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "NonFiniteError",
    "NonFiniteLossError",
    "NonFiniteStateError",
    "Optimizer",
    "Parameters",
    "RMSprop",
    "Sequential",
    "data",
    "evaluate",
    "fit",
    "get_loss",
    "get_optimizer",
    "layer_from_config",
    "load",
    "metrics",
    "optimizer_from_config",
    "register_layer",
    "save",
    "schedules",
]
