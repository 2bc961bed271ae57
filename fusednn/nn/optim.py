"""Optimizers with exactly ``torch.optim``'s update rules, each step one backend call over the flat buffer.

An optimizer owns validation, hyperparameters, its state (flat arrays named as in
PyTorch plus a host-side step counter) and the step count; the backend's
``sgd_step`` / ``rmsprop_step`` / ``adam_step`` own the maths. ``lr`` is an
attribute read at every step, so learning-rate schedules can set ``opt.lr``.

Every hyperparameter is checked whenever it is assigned, in the constructor or
later (``opt.lr = schedule(t)``): a value that could only produce garbage (NaN,
infinity, a negative rate) never reaches a step or a checkpoint, so whatever
:func:`fusednn.nn.save` writes, :func:`optimizer_from_config` rebuilds.

>>> from fusednn import nn
>>> opt = nn.SGD(nn.MLP([2, 1], device="numpy").parameters(), lr=0.1)
>>> opt.lr = float("nan")
Traceback (most recent call last):
    ...
ValueError: Invalid learning rate: nan (expected a finite number >= 0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..backends import Backend
from .hyperparameters import check_real
from .parameters import Parameters

Array = Any


def _non_negative(label: str) -> Callable[[Any], float]:
    """A check for a hyperparameter that must be a finite number >= 0 (PyTorch's wording: ``Invalid <label>: -1.0``)."""
    return lambda value: check_real(label, value)


def _positive(label: str) -> Callable[[Any], float]:
    """A check for a hyperparameter that must be a finite number > 0."""
    return lambda value: check_real(label, value, low_open=True)


def _check_betas(betas: Any) -> tuple[float, float]:
    # Any pair of numbers works at run time: get_config stores it as a list (JSON has no tuples).
    message = f"betas must be a pair of floats (beta1, beta2), each in [0, 1), got {betas!r}"
    try:
        pair = tuple(betas)
    except TypeError:
        raise TypeError(message) from None
    if len(pair) != 2:
        raise ValueError(message)
    beta1, beta2 = (check_real(f"beta parameter at index {i}", b, 0.0, 1.0, high_open=True) for i, b in enumerate(pair))
    return beta1, beta2


class Optimizer:
    """Base class: holds the :class:`~fusednn.nn.parameters.Parameters`, the state and the step counter.

    Subclasses list their state arrays in :meth:`_state_names`, implement :meth:`_update`, and
    name the check of each hyperparameter in ``_checks``, which runs on every assignment.
    If the parameters move to another device (``model.to(...)``) the state follows on the next step.

    Raises:
        ValueError: a hyperparameter assigned at any time is NaN, infinite or out of range
            (``Invalid learning rate: nan (expected a finite number >= 0)``).
        TypeError: it is not a real number.
    """

    #: Hyperparameter name -> check that returns the value to store or raises; run on every assignment.
    _checks: ClassVar[dict[str, Callable[[Any], Any]]] = {"lr": _non_negative("learning rate")}

    def __init__(self, params: Parameters, lr: float) -> None:
        if not isinstance(params, Parameters):
            raise TypeError(f"Optimizers take model.parameters(), got {type(params).__name__}")
        self.params = params
        self.lr = lr
        self.step_count = 0
        self._backend: Backend = params.backend
        self.state: dict[str, Array] = {
            name: params.backend.zeros(params.size, params.dtype) for name in self._state_names()
        }

    def __setattr__(self, name: str, value: Any) -> None:
        check = self._checks.get(name)
        super().__setattr__(name, value if check is None else check(value))

    def _state_names(self) -> list[str]:
        raise NotImplementedError

    def _update(self, backend: Backend) -> None:
        """Call the backend's step on ``params.data``, ``params.grad`` and the state.

        Subclasses call the backend's unchecked step (see ``Backend._adam_step_unchecked``):
        every buffer is a 1-D C-contiguous array of ``params.size`` elements in ``params.dtype``
        on ``backend``, because the optimizer made the state itself (``__init__``, the move in
        :meth:`step`, :meth:`load_state_dict`, which checks shapes) and the parameters made theirs.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def step(self) -> None:
        """Apply one update to the parameters from the gradients in ``params.grad``."""
        backend = self.params.backend
        if backend is not self._backend:
            # model.to() moved the parameters: the state follows, exactly.
            dtype = self.params.dtype
            self.state = {k: backend.asarray(self._backend.to_numpy(v), dtype=dtype) for k, v in self.state.items()}
            self._backend = backend
        self.step_count += 1
        self._update(backend)

    def zero_grad(self) -> None:
        """Set every gradient to zero (``model.backward`` overwrites gradients, so only accumulation needs it)."""
        self.params.zero_grad()

    def get_config(self) -> dict[str, Any]:
        """``{"name": class name, hyperparameters...}``; :func:`optimizer_from_config` rebuilds from it."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"step": int, <state name>: NumPy copy, ...}``."""
        out: dict[str, Any] = {"step": self.step_count}
        out.update({k: np.array(self._backend.to_numpy(v)) for k, v in self.state.items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            KeyError: a state array is missing or unexpected.
            ValueError: an array has the wrong shape, or the step is negative.
        """
        expected = set(self.state) | {"step"}
        if set(state) != expected:
            raise KeyError(
                f"Optimizer state does not match {type(self).__name__}: missing {sorted(expected - set(state))}, "
                f"unexpected {sorted(set(state) - expected)}"
            )
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"Invalid step count: {step}")
        arrays = {}
        for name in self.state:
            value = np.asarray(state[name])
            if value.shape != (self.params.size,):
                raise ValueError(f"State {name!r} has shape {value.shape}; expected ({self.params.size},)")
            arrays[name] = self.params.backend.asarray(value, dtype=self.params.dtype)
        self.state, self.step_count, self._backend = arrays, step, self.params.backend


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``::

        g = grad + weight_decay * param
        buf = g (first step);  buf = momentum * buf + (1 - dampening) * g (later)    [momentum > 0]
        g = g + momentum * buf (nesterov)  or  g = buf                               [momentum > 0]
        param = param - lr * g

    State: ``momentum_buffer`` (only with momentum).

    >>> from fusednn import nn
    >>> model = nn.MLP([2, 4, 1], device="numpy", seed=0)
    >>> opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    Raises:
        ValueError: ``lr``, momentum, dampening or weight decay negative or not finite; Nesterov
            with dampening or without momentum.
    """

    _checks = {
        **Optimizer._checks,
        "momentum": _non_negative("momentum value"),
        "dampening": _non_negative("dampening value"),
        "weight_decay": _non_negative("weight_decay value"),
    }

    def __init__(
        self,
        params: Parameters,
        lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        self.momentum = momentum
        self.dampening = dampening
        self.weight_decay = weight_decay
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, lr)

    def _state_names(self) -> list[str]:
        return ["momentum_buffer"] if self.momentum else []

    def _update(self, backend: Backend) -> None:
        backend._sgd_step_unchecked(
            self.params.data,
            self.params.grad,
            self.state.get("momentum_buffer"),
            lr=self.lr,
            momentum=self.momentum,
            dampening=self.dampening,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
            first_step=self.step_count == 1,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "name": "SGD",
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }


class RMSprop(Optimizer):
    """RMSprop, as ``torch.optim.RMSprop``::

        g = grad + weight_decay * param
        square_avg = alpha * square_avg + (1 - alpha) * g^2
        grad_avg = alpha * grad_avg + (1 - alpha) * g;  avg = sqrt(square_avg - grad_avg^2) + eps   [centered]
        avg = sqrt(square_avg) + eps                                                             [otherwise]
        buf = momentum * buf + g / avg;  param = param - lr * buf      [momentum > 0]
        param = param - lr * g / avg                                   [otherwise]

    State: ``square_avg``, ``grad_avg`` (centered), ``momentum_buffer`` (momentum > 0).

    .. warning:: As PyTorch, ``eps`` is added outside the square root (Keras and Optax's
       default add it inside), so results differ from theirs at small gradients.

    .. warning:: Unlike PyTorch, ``eps`` must be positive: the padding of the flat buffer
       (and any unit whose gradient stays zero) would otherwise compute ``0 / 0``.

    Raises:
        ValueError: ``lr``, alpha, weight decay or momentum negative or not finite; ``eps``
            not a finite number > 0.
    """

    _checks = {
        **Optimizer._checks,
        "alpha": _non_negative("alpha value"),
        "eps": _positive("epsilon value"),
        "weight_decay": _non_negative("weight_decay value"),
        "momentum": _non_negative("momentum value"),
    }

    def __init__(
        self,
        params: Parameters,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        self.alpha = alpha
        self.eps = eps
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.centered = bool(centered)
        super().__init__(params, lr)

    def _state_names(self) -> list[str]:
        return ["square_avg"] + ["grad_avg"] * self.centered + ["momentum_buffer"] * (self.momentum > 0)

    def _update(self, backend: Backend) -> None:
        backend._rmsprop_step_unchecked(
            self.params.data,
            self.params.grad,
            self.state["square_avg"],
            self.state.get("grad_avg"),
            self.state.get("momentum_buffer"),
            lr=self.lr,
            alpha=self.alpha,
            eps=self.eps,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            centered=self.centered,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "name": "RMSprop",
            "lr": self.lr,
            "alpha": self.alpha,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "momentum": self.momentum,
            "centered": self.centered,
        }


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with optional AMSGrad, as ``torch.optim.Adam``; ``t`` counts steps from 1::

        g = grad + weight_decay * param              (L2 in the gradient, not AdamW's decoupled decay)
        exp_avg = beta1 * exp_avg + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g^2
        v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)   [amsgrad]   else v = exp_avg_sq
        param = param - lr / (1 - beta1^t) * exp_avg / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    State: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).

    .. warning:: Unlike PyTorch, ``eps`` must be positive: the padding of the flat buffer
       (and any weight whose gradient stays zero) would otherwise compute ``0 / 0``.

    >>> from fusednn import nn
    >>> model = nn.MLP([2, 4, 1], device="numpy", seed=0)
    >>> opt = nn.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), amsgrad=True)

    Raises:
        ValueError: ``lr`` or weight decay negative or not finite; ``eps`` not a finite number > 0;
            a beta outside ``[0, 1)``.
        TypeError: ``betas`` is not a pair of numbers.
    """

    _checks = {
        **Optimizer._checks,
        "betas": _check_betas,
        "eps": _positive("epsilon value"),
        "weight_decay": _non_negative("weight_decay value"),
    }

    def __init__(
        self,
        params: Parameters,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.amsgrad = bool(amsgrad)
        super().__init__(params, lr)

    def _state_names(self) -> list[str]:
        return ["exp_avg", "exp_avg_sq"] + ["max_exp_avg_sq"] * self.amsgrad

    def _update(self, backend: Backend) -> None:
        backend._adam_step_unchecked(
            self.params.data,
            self.params.grad,
            self.state["exp_avg"],
            self.state["exp_avg_sq"],
            self.state.get("max_exp_avg_sq"),
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            eps=self.eps,
            weight_decay=self.weight_decay,
            amsgrad=self.amsgrad,
            step=self.step_count,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "name": "Adam",
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "amsgrad": self.amsgrad,
        }


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam}
"""Optimizer classes by lower-case name."""


def optimizer_from_config(config: dict[str, Any], params: Parameters) -> Optimizer:
    """Build an optimizer over ``params`` from :meth:`Optimizer.get_config` output.

    >>> from fusednn import nn
    >>> model = nn.MLP([2, 1], device="numpy")
    >>> nn.optimizer_from_config({"name": "Adam", "lr": 0.01}, model.parameters())
    Adam(lr=0.01, betas=[0.9, 0.999], eps=1e-08, weight_decay=0.0, amsgrad=False)

    Raises:
        ValueError: unknown optimizer name.
    """
    config = dict(config)
    name = str(config.pop("name", ""))
    cls = OPTIMIZERS.get(name.lower())
    if cls is None:
        raise ValueError(f"Unknown optimizer {name!r}; expected one of SGD, RMSprop, Adam")
    return cls(params, **config)


def get_optimizer(optimizer: str | Optimizer, params: Parameters, **kwargs: Any) -> Optimizer:
    """An optimizer by name (``"sgd"``, ``"rmsprop"``, ``"adam"``) with ``kwargs``, or an Optimizer as is."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    return optimizer_from_config({"name": optimizer, **kwargs}, params)
