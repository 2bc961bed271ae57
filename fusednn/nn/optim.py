"""Optimizers with exactly ``torch.optim``'s update rules, each step one backend call over the flat buffer.

An optimizer is a rule over two records: its hyperparameters (attributes with PyTorch's
names, checked on every assignment, listed in ``_checks``) and its state (flat arrays with
PyTorch's names, ``opt.state``, plus the host-side ``step_count``). Each class names its
backend rule (:mod:`fusednn.backends.optimizer_rules`), lays its state out in the rule's
order (:meth:`Optimizer._layout`) and computes the rule's scalars for a step on the host
in float64 (:meth:`Optimizer._scalars`); the backend's one trusted entry point,
:meth:`~fusednn.backends.Backend.optimizer_step`, checks the buffers once and returns the
fused step that every ``opt.step()`` then calls. ``lr`` is read at every step, so
learning-rate schedules can set ``opt.lr``.

Adding an optimizer is its class here (and its name in :data:`OPTIMIZERS` and ``nn``'s
exports) plus its rule: the reference in :mod:`fusednn.backends.optimizer_rules`, a Numba
kernel in :mod:`fusednn.kernels.cpu.optim` and a CUDA kernel in ``optimizers.cu``, whose
signatures are the only place its argument list is written. ``fit``'s compiled epochs know
SGD, RMSprop and Adam only; with any other optimizer ``fit`` steps from Python.

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

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..backends import Backend
from ..backends.base import adam_scalars
from .hyperparameters import check_real
from .parameters import Parameters

Array = Any


def _non_negative(label: str) -> Callable[[Any], float]:
    """A check for a hyperparameter that must be a finite number >= 0 (PyTorch's wording: ``Invalid <label>: -1.0``)."""
    return lambda value: check_real(label, value)


def _positive(label: str) -> Callable[[Any], float]:
    """A check for a hyperparameter that must be a finite number > 0."""
    return lambda value: check_real(label, value, low_open=True)


def _flag(value: Any) -> bool:
    return bool(value)


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

    A subclass names its backend ``rule``, lists its hyperparameters with their checks in
    ``_checks`` (in :meth:`get_config`'s order; each runs on every assignment), lays out its
    state with :meth:`_layout` and computes the rule's scalars with :meth:`_scalars`. A rule
    with per-tensor trust ratios sets ``per_tensor`` and gets the tensors' ``[start, stop)``
    in the flat buffer. Which state exists (momentum or not, AMSGrad, centering) is fixed when
    the optimizer is made: an assignment that would change it raises ``ValueError``. If the
    parameters move to another device (``model.to(...)``) the state follows on the next step.

    Raises:
        ValueError: a hyperparameter assigned at any time is NaN, infinite or out of range
            (``Invalid learning rate: nan (expected a finite number >= 0)``).
        TypeError: it is not a real number.
    """

    #: Hyperparameter name -> check that returns the value to store or raises; run on every assignment.
    _checks: ClassVar[dict[str, Callable[[Any], Any]]] = {"lr": _non_negative("learning rate")}
    #: The backend rule (:mod:`fusednn.backends.optimizer_rules`) that updates the flat buffers.
    rule: ClassVar[str]
    #: Whether the rule computes per-tensor quantities (trust ratios) and takes the tensors' bounds.
    per_tensor: ClassVar[bool] = False

    def __init__(self, params: Parameters, lr: float) -> None:
        if not isinstance(params, Parameters):
            raise TypeError(f"Optimizers take model.parameters(), got {type(params).__name__}")
        self.params = params
        self.lr = lr
        self.step_count = 0
        self._backend: Backend = params.backend
        #: The rule's state in its order: a name of ``self.state``, or ``None`` where unused.
        self._state_layout = self._layout()
        self.state: dict[str, Array] = {
            name: params.backend.zeros(params.size, params.dtype) for name in self._state_layout if name
        }
        self._kernel: Callable[..., None] | None = None
        self._bound_to: tuple[Array, Array] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        check = self._checks.get(name)
        if check is None:
            super().__setattr__(name, value)
            return
        value = check(value)
        previous = self.__dict__.get(name)
        super().__setattr__(name, value)
        layout = self.__dict__.get("_state_layout")
        if layout is not None and self._layout() != layout:  # the state exists already and would not fit
            super().__setattr__(name, previous)
            raise ValueError(
                f"{name}={value!r} would change the state {type(self).__name__} keeps "
                f"({', '.join(self.state) or 'none'}); make a new optimizer instead"
            )

    def _layout(self) -> tuple[str | None, ...]:
        """The rule's state buffers in its order, by PyTorch's names; ``None`` for one these settings leave unused."""
        raise NotImplementedError

    def _scalars(self, step: int) -> tuple[float | bool, ...]:
        """The rule's scalars for update ``step`` (from 1) in its order, computed in float64; flags as ``bool``."""
        raise NotImplementedError

    def _uses(self, name: str) -> bool:
        """Whether state ``name`` exists: the flags that select state buffers follow it, never a later assignment."""
        return name in self.state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def _bind(self) -> Callable[..., None]:
        """Check the flat buffers once and keep the backend's trusted step over them."""
        params = self.params
        segments = None
        if self.per_tensor:
            sizes = [int(np.prod(shape)) for shape in params.shapes]
            segments = np.array([[o, o + n] for o, n in zip(params.offsets, sizes, strict=True)], dtype=np.int64)
            segments = segments.reshape(-1, 2)
        state = [self.state[name] if name else None for name in self._state_layout]
        self._kernel = params.backend.optimizer_step(self.rule, params.data, params.grad, state, segments)
        self._bound_to = (params.data, params.grad)
        return self._kernel

    def step(self) -> None:
        """Apply one update to the parameters from the gradients in ``params.grad``."""
        params = self.params
        backend = params.backend
        if backend is not self._backend:
            # model.to() moved the parameters: the state follows, exactly.
            dtype = params.dtype
            self.state = {k: backend.asarray(self._backend.to_numpy(v), dtype=dtype) for k, v in self.state.items()}
            self._backend = backend
            self._kernel = None
        kernel = self._kernel
        bound = self._bound_to
        if kernel is None or bound is None or bound[0] is not params.data or bound[1] is not params.grad:
            kernel = self._bind()
        self.step_count += 1
        kernel(*self._scalars(self.step_count))

    def zero_grad(self) -> None:
        """Set every gradient to zero (``model.backward`` overwrites gradients, so only accumulation needs it)."""
        self.params.zero_grad()

    def get_config(self) -> dict[str, Any]:
        """``{"name": class name, hyperparameters...}``; :func:`optimizer_from_config` rebuilds from it."""
        config: dict[str, Any] = {"name": type(self).__name__}
        for name in self._checks:
            value = getattr(self, name)
            config[name] = list(value) if isinstance(value, tuple) else value  # JSON has no tuples
        return config

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
        self._kernel = None


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
        "nesterov": _flag,
        "weight_decay": _non_negative("weight_decay value"),
    }
    rule = "sgd"

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

    def _layout(self) -> tuple[str | None, ...]:
        return ("momentum_buffer" if self.momentum else None,)

    def _scalars(self, step: int) -> tuple[float | bool, ...]:
        return (
            self.lr, self.momentum, 1.0 - self.dampening, self.weight_decay, self._uses("momentum_buffer"),
            self.nesterov, step == 1,
        )  # fmt: skip


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
        "centered": _flag,
    }
    rule = "rmsprop"

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

    def _layout(self) -> tuple[str | None, ...]:
        return (
            "square_avg",
            "grad_avg" if self.centered else None,
            "momentum_buffer" if self.momentum > 0 else None,
        )

    def _scalars(self, step: int) -> tuple[float | bool, ...]:
        return (
            self.lr, self.alpha, 1.0 - self.alpha, self.eps, self.weight_decay, self.momentum, self._uses("grad_avg"),
            self._uses("momentum_buffer"),
        )  # fmt: skip


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
        "amsgrad": _flag,
    }
    rule = "adam"

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

    def _layout(self) -> tuple[str | None, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq" if self.amsgrad else None)

    def _scalars(self, step: int) -> tuple[float | bool, ...]:
        beta1, beta2 = self.betas
        step_size, bias_correction2_sqrt = adam_scalars(self.lr, beta1, beta2, step)
        return (
            step_size, bias_correction2_sqrt, 1.0 - beta1, beta2, 1.0 - beta2, self.eps, self._decay(),
            self._uses("max_exp_avg_sq"),
        )  # fmt: skip

    def _decay(self) -> float:
        """The rule's weight-decay scalar: Adam adds ``weight_decay * param`` to the gradient."""
        return self.weight_decay


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``::

        param = param * (1 - lr * weight_decay)       (decay applied to the weights, not the gradient)
        exp_avg = beta1 * exp_avg + (1 - beta1) * grad
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad^2
        v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)   [amsgrad]   else v = exp_avg_sq
        param = param - lr / (1 - beta1^t) * exp_avg / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    State: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad). The default ``weight_decay``
    is PyTorch's, ``1e-2``. ``fit`` steps it from Python (no compiled epoch).

    .. warning:: Unlike PyTorch, ``eps`` must be positive (see :class:`Adam`).

    >>> from fusednn import nn
    >>> model = nn.MLP([2, 4, 1], device="numpy", seed=0)
    >>> nn.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    AdamW(lr=0.001, betas=[0.9, 0.999], eps=1e-08, weight_decay=0.01, amsgrad=False)

    Raises:
        ValueError: as :class:`Adam`.
        TypeError: ``betas`` is not a pair of numbers.
    """

    rule = "adamw"

    def __init__(
        self,
        params: Parameters,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)

    def _decay(self) -> float:
        """AdamW's weight-decay scalar: the factor ``1 - lr * weight_decay`` the weights are multiplied by."""
        return 1.0 - self.lr * self.weight_decay


class LAMB(Optimizer):
    """LAMB, layer-wise adaptive moments (You et al., 2019, arXiv:1904.00962), per tensor of the model::

        exp_avg = exp_avg + (1 - beta1) * (grad - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad^2
        update = (exp_avg / (1 - beta1^t)) / (sqrt(exp_avg_sq) / sqrt(1 - beta2^t) + eps) + weight_decay * param
        ratio = ||param|| / ||update||   (1 when either norm is 0; norms over the tensor)
        param = param - lr * ratio * update

    State: ``exp_avg``, ``exp_avg_sq``. Each weight matrix and each bias is one tensor; the flat
    buffer's padding is never touched. The fused kernels sum the squared norms in float64: one
    loop pair per tensor on the CPU, two launches per step on CUDA. ``fit`` steps it from Python.

    .. warning:: This is ``timm.optim.Lamb(..., max_grad_norm=None, always_adapt=True)``: timm's
       defaults also clip the global gradient norm to 1 and skip the trust ratio when
       ``weight_decay`` is 0; here the ratio always applies, as in the paper, and nothing is clipped.

    >>> from fusednn import nn
    >>> model = nn.MLP([2, 4, 1], device="numpy", seed=0)
    >>> nn.LAMB(model.parameters(), lr=1e-3, weight_decay=0.01)
    LAMB(lr=0.001, betas=[0.9, 0.999], eps=1e-06, weight_decay=0.01)

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
    rule = "lamb"
    per_tensor = True

    def __init__(
        self,
        params: Parameters,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
    ) -> None:
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        super().__init__(params, lr)

    def _layout(self) -> tuple[str | None, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _scalars(self, step: int) -> tuple[float | bool, ...]:
        beta1, beta2 = self.betas
        return (
            self.lr, 1.0 - beta1**step, math.sqrt(1.0 - beta2**step), 1.0 - beta1, beta2, 1.0 - beta2,
            self.eps, self.weight_decay,
        )  # fmt: skip


class LARS(Optimizer):
    """LARS, layer-wise adaptive rate scaling (You et al., 2017, arXiv:1708.03888), per tensor of the model::

        ratio = trust_coefficient * ||param|| / (||grad|| + weight_decay * ||param|| + eps)
                (1 when either norm is 0; norms over the tensor)
        g = ratio * (grad + weight_decay * param)
        buf = g (first step);  buf = momentum * buf + (1 - dampening) * g (later)    [momentum > 0]
        g = g + momentum * buf (nesterov)  or  g = buf                               [momentum > 0]
        param = param - lr * g

    State: ``momentum_buffer`` (only with momentum). The fused kernels sum the squared norms in
    float64: one loop pair per tensor on the CPU, two launches per step on CUDA. ``fit`` steps it
    from Python.

    .. warning:: This is ``timm.optim.Lars(..., always_adapt=True)``: timm's default skips the
       trust ratio when ``weight_decay`` is 0; here it always applies, as in the paper.

    >>> from fusednn import nn
    >>> model = nn.MLP([2, 4, 1], device="numpy", seed=0)
    >>> nn.LARS(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    LARS(lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0001, trust_coefficient=0.001, eps=1e-08)

    Raises:
        ValueError: ``lr``, momentum, dampening, weight decay, trust coefficient or ``eps`` negative
            or not finite; Nesterov with dampening or without momentum.
    """

    _checks = {
        **SGD._checks,
        "trust_coefficient": _non_negative("trust_coefficient value"),
        "eps": _non_negative("epsilon value"),
    }
    rule = "lars"
    per_tensor = True

    def __init__(
        self,
        params: Parameters,
        lr: float = 1.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        self.momentum = momentum
        self.dampening = dampening
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        self.trust_coefficient = trust_coefficient
        self.eps = eps
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, lr)

    def _layout(self) -> tuple[str | None, ...]:
        return ("momentum_buffer" if self.momentum else None,)

    def _scalars(self, step: int) -> tuple[float | bool, ...]:
        return (
            self.lr, self.momentum, 1.0 - self.dampening, self.weight_decay, self.trust_coefficient, self.eps,
            self._uses("momentum_buffer"), self.nesterov, step == 1,
        )  # fmt: skip


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.__name__.lower(): cls for cls in (SGD, RMSprop, Adam, AdamW, LAMB, LARS)}
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
        expected = ", ".join(c.__name__ for c in OPTIMIZERS.values())
        raise ValueError(f"Unknown optimizer {name!r}; expected one of {expected}")
    return cls(params, **config)


def get_optimizer(optimizer: str | Optimizer, params: Parameters, **kwargs: Any) -> Optimizer:
    """An optimizer by name (a key of :data:`OPTIMIZERS`, e.g. ``"adam"``) with ``kwargs``, or an Optimizer as is."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    return optimizer_from_config({"name": optimizer, **kwargs}, params)
