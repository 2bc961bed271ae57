"""Optimizers track torch.optim step by step, validate like it, and save/restore/move their state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm_optim import Lamb, Lars

import fusednn
from fusednn import nn

# After 25 steps float32 rounding has compounded; float64 stays at rounding level.
STEP_TOL = {"float64": {"rtol": 1e-9, "atol": 1e-11}, "float32": {"rtol": 1e-4, "atol": 2e-5}}

CASES = {
    "sgd_momentum_dampening_wd": (
        nn.SGD,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
    ),
    "sgd_nesterov": (nn.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.02}),
    "sgd_plain": (nn.SGD, torch.optim.SGD, {"lr": 0.1}),
    "rmsprop_centered_momentum": (
        nn.RMSprop,
        torch.optim.RMSprop,
        {"lr": 0.003, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.01, "momentum": 0.5, "centered": True},
    ),
    "rmsprop_plain": (nn.RMSprop, torch.optim.RMSprop, {"lr": 0.01}),
    "adam_amsgrad_wd": (
        nn.Adam,
        torch.optim.Adam,
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.05, "amsgrad": True},
    ),
    "adam_plain": (nn.Adam, torch.optim.Adam, {"lr": 0.01}),
    "adamw_amsgrad": (
        nn.AdamW,
        torch.optim.AdamW,
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.05, "amsgrad": True},
    ),
    "adamw_plain": (nn.AdamW, torch.optim.AdamW, {"lr": 0.01}),
    # timm's defaults differ from the papers' (see nn.LAMB / nn.LARS): the cases set them to the papers'.
    "lamb_wd": (nn.LAMB, Lamb, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}),
    "lamb_no_decay": (nn.LAMB, Lamb, {"lr": 0.01, "weight_decay": 0.0}),
    "lars_nesterov_wd": (
        nn.LARS,
        Lars,
        {"lr": 0.5, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "trust_coefficient": 0.02},
    ),
    "lars_dampening": (nn.LARS, Lars, {"lr": 2.0, "momentum": 0.5, "dampening": 0.2, "eps": 1e-6}),
    "lars_plain": (nn.LARS, Lars, {"lr": 1.0}),
}

# The timm arguments that make its LAMB and LARS the papers' (and ours); our name -> timm's.
TIMM_SETTINGS = {Lamb: {"max_grad_norm": None, "always_adapt": True}, Lars: {"always_adapt": True}}
TIMM_NAMES = {"trust_coefficient": "trust_coeff"}


def torch_optimizer(torch_cls, params, hyper):
    """The PyTorch (or timm) optimizer of a case; a timm one skips the test when timm is not installed."""
    if torch_cls is None:
        pytest.skip("timm is not installed (pip install timm torchvision==0.28.0)")
    extra = TIMM_SETTINGS.get(torch_cls, {})
    return torch_cls(params, **{TIMM_NAMES.get(k, k): v for k, v in hyper.items()}, **extra)


def make_problem(device: str, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    model = nn.MLP([5, 7, 3], activation="tanh", device=device, dtype=dtype, seed=seed)
    x = rng.normal(size=(8, 5)).astype(dtype)
    y = rng.integers(0, 3, size=8)
    return model, x, y


def train_step(model, loss_fn, opt, x, y) -> None:
    loss, dout = loss_fn(model.forward(x), y)
    model.backward(dout, need_input_grad=False)
    opt.step()


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_tracks_torch_for_25_steps(device: str, dtype: str, case: str) -> None:
    ours_cls, torch_cls, hyper = CASES[case]
    model, x, y = make_problem(device, dtype)
    loss_fn = nn.get_loss("categorical_crossentropy", device=device)
    opt = ours_cls(model.parameters(), **hyper)

    w = model.get_weights()
    layers = [torch.nn.Linear(5, 7, dtype=torch.float64), torch.nn.Linear(7, 3, dtype=torch.float64)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.weight.copy_(torch.from_numpy(w[2 * i].T.astype(np.float64)))
            layer.bias.copy_(torch.from_numpy(w[2 * i + 1].astype(np.float64)))
    torch_opt = torch_optimizer(torch_cls, [p for layer in layers for p in layer.parameters()], hyper)
    x_t, y_t = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y)

    for step in range(25):
        train_step(model, loss_fn, opt, x, y)
        torch_opt.zero_grad()
        torch.nn.CrossEntropyLoss()(layers[1](torch.tanh(layers[0](x_t))), y_t).backward()
        torch_opt.step()
        expected = [t for layer in layers for t in (layer.weight.detach().numpy().T, layer.bias.detach().numpy())]
        for ours, theirs in zip(model.get_weights(), expected, strict=True):
            np.testing.assert_allclose(ours, theirs, **STEP_TOL[dtype], err_msg=f"step {step + 1}")
    assert opt.step_count == 25


@pytest.mark.parametrize(
    "case", ["sgd_nesterov", "rmsprop_centered_momentum", "adam_amsgrad_wd", "lamb_wd", "lars_plain"]
)
def test_checks_once_one_backend_call_per_step_and_padding_stays_zero(device: str, case: str, monkeypatch) -> None:
    ours_cls, _, hyper = CASES[case]
    model, x, y = make_problem(device, "float64")
    opt = ours_cls(model.parameters(), **hyper)
    be = model.backend
    # The optimizer binds the backend's checked entry point once, then calls the trusted step it returned.
    binds, calls = [], []
    original = be.optimizer_step

    def counted_bind(*args, **kwargs):
        binds.append(args[0])
        step = original(*args, **kwargs)
        return lambda *scalars: calls.append(1) or step(*scalars)

    monkeypatch.setattr(be, "optimizer_step", counted_bind)
    loss_fn = nn.get_loss("categorical_crossentropy", device=device)
    for _ in range(3):
        train_step(model, loss_fn, opt, x, y)
    assert binds == [ours_cls.rule]
    assert len(calls) == 3
    params = model.parameters()
    padding = np.ones(params.size, dtype=bool)
    for offset, shape in zip(params.offsets, params.shapes, strict=True):
        padding[offset : offset + int(np.prod(shape))] = False
    assert padding.any()
    assert not be.to_numpy(params.data)[padding].any()
    for name, state in opt.state.items():
        assert state.shape == (params.size,), name


def test_lr_is_read_at_every_step(device: str) -> None:
    model, x, y = make_problem(device, "float64")
    reference, _, _ = make_problem(device, "float64")
    loss_fn = nn.get_loss("categorical_crossentropy", device=device)
    opt, ref_opt = nn.SGD(model.parameters(), lr=0.1), nn.SGD(reference.parameters(), lr=0.05)
    opt.lr = 0.05  # what an LR schedule does
    train_step(model, loss_fn, opt, x, y)
    train_step(reference, loss_fn, ref_opt, x, y)
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["sgd_momentum_dampening_wd", "rmsprop_centered_momentum", "adam_amsgrad_wd"])
def test_state_dict_and_config_resume_exactly(device: str, case: str) -> None:
    ours_cls, _, hyper = CASES[case]
    loss_fn = nn.get_loss("categorical_crossentropy", device=device)
    model, x, y = make_problem(device, "float64")
    opt = ours_cls(model.parameters(), **hyper)
    for _ in range(3):
        train_step(model, loss_fn, opt, x, y)
    saved_model, saved_opt, config = model.state_dict(), opt.state_dict(), opt.get_config()

    resumed = nn.Sequential.from_config(model.get_config(), device=device)
    resumed.load_state_dict(saved_model)
    resumed_opt = nn.optimizer_from_config(config, resumed.parameters())
    assert type(resumed_opt) is ours_cls and resumed_opt.get_config() == config
    resumed_opt.load_state_dict(saved_opt)
    assert resumed_opt.step_count == 3
    for _ in range(2):
        train_step(model, loss_fn, opt, x, y)
        train_step(resumed, loss_fn, resumed_opt, x, y)
    for a, b in zip(model.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_optimizer_state_follows_model_to_another_device(device: str) -> None:
    """Train 3 steps on numpy, move to ``device``, train 3 more: same as 6 steps without the move."""
    on_numpy = nn.get_loss("categorical_crossentropy", device="numpy")
    moved, x, y = make_problem("numpy", "float64")
    stay, _, _ = make_problem("numpy", "float64")
    opt = nn.Adam(moved.parameters(), lr=0.01, amsgrad=True)
    stay_opt = nn.Adam(stay.parameters(), lr=0.01, amsgrad=True)
    for _ in range(3):
        train_step(moved, on_numpy, opt, x, y)
        train_step(stay, on_numpy, stay_opt, x, y)
    assert moved.to(device) is moved and moved.device == fusednn.backend(device).name
    for a, b in zip(moved.get_weights(), stay.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the move itself is exact
    loss_fn = nn.get_loss("categorical_crossentropy", device=device)
    for _ in range(3):
        train_step(moved, loss_fn, opt, x, y)
        train_step(stay, on_numpy, stay_opt, x, y)
    assert all(moved.backend.check(s) is s for s in opt.state.values())
    for a, b in zip(moved.get_weights(), stay.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda p: nn.SGD(p, lr=-1.0), "Invalid learning rate: -1.0"),
        (lambda p: nn.Adam(p, lr=-1e-3), "Invalid learning rate: -0.001"),
        (lambda p: nn.RMSprop(p, lr=-0.5), "Invalid learning rate: -0.5"),
        (lambda p: nn.SGD(p, momentum=-0.1), "Invalid momentum value: -0.1"),
        (lambda p: nn.SGD(p, weight_decay=-1), "Invalid weight_decay value: -1.0"),
        (lambda p: nn.SGD(p, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
        (
            lambda p: nn.SGD(p, momentum=0.9, dampening=0.1, nesterov=True),
            "Nesterov momentum requires a momentum and zero dampening",
        ),
        (lambda p: nn.Adam(p, betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
        (lambda p: nn.Adam(p, betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
        (lambda p: nn.Adam(p, betas=(0.9,)), "betas must be a pair of floats (beta1, beta2)"),
        (lambda p: nn.Adam(p, eps=-1e-8), "Invalid epsilon value: -1e-08"),
        (lambda p: nn.Adam(p, weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
        (lambda p: nn.RMSprop(p, alpha=-0.9), "Invalid alpha value: -0.9"),
        (lambda p: nn.RMSprop(p, eps=-1.0), "Invalid epsilon value: -1.0"),
        (lambda p: nn.RMSprop(p, momentum=-1.0), "Invalid momentum value: -1.0"),
        (lambda p: nn.optimizer_from_config({"name": "Adagrad"}, p), "Unknown optimizer 'Adagrad'"),
    ],
)
def test_invalid_hyperparameters_raise_like_torch(factory, message: str) -> None:
    model = nn.MLP([2, 1], device="numpy")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        factory(model.parameters())


def test_optimizer_rejects_what_is_not_parameters() -> None:
    model = nn.MLP([2, 1], device="numpy")
    with pytest.raises(TypeError, match=r"model.parameters\(\)"):
        nn.Adam(model.get_weights())


def test_load_state_dict_validates() -> None:
    model = nn.MLP([2, 3, 1], device="numpy")
    opt = nn.Adam(model.parameters())
    state = opt.state_dict()
    with pytest.raises(KeyError, match="missing \\['exp_avg'\\]"):
        opt.load_state_dict({k: v for k, v in state.items() if k != "exp_avg"})
    with pytest.raises(KeyError, match="unexpected \\['max_exp_avg_sq'\\]"):
        opt.load_state_dict({**state, "max_exp_avg_sq": state["exp_avg"]})
    with pytest.raises(ValueError, match="State 'exp_avg' has shape \\(3,\\)"):
        opt.load_state_dict({**state, "exp_avg": np.zeros(3)})
    with pytest.raises(ValueError, match="Invalid step count: -1"):
        opt.load_state_dict({**state, "step": -1})


def test_get_optimizer_by_name_and_zero_grad() -> None:
    model, x, y = make_problem("numpy", "float64")
    opt = nn.get_optimizer("rmsprop", model.parameters(), lr=0.02, centered=True)
    assert isinstance(opt, nn.RMSprop) and opt.lr == 0.02 and set(opt.state) == {"square_avg", "grad_avg"}
    assert nn.get_optimizer(opt, model.parameters()) is opt
    loss, dout = nn.get_loss("categorical_crossentropy", device="numpy")(model.forward(x), y)
    model.backward(dout)
    assert np.any(model.parameters().grad)
    opt.zero_grad()
    assert not np.any(model.parameters().grad)


NON_FINITE = [float("nan"), float("inf"), float("-inf")]
# Every numeric hyperparameter of every optimizer, with PyTorch's label for it.
HYPERPARAMETERS = [
    (nn.SGD, "lr", "learning rate"),
    (nn.SGD, "momentum", "momentum value"),
    (nn.SGD, "dampening", "dampening value"),
    (nn.SGD, "weight_decay", "weight_decay value"),
    (nn.RMSprop, "lr", "learning rate"),
    (nn.RMSprop, "alpha", "alpha value"),
    (nn.RMSprop, "weight_decay", "weight_decay value"),
    (nn.RMSprop, "momentum", "momentum value"),
    (nn.Adam, "lr", "learning rate"),
    (nn.Adam, "weight_decay", "weight_decay value"),
]


@pytest.mark.parametrize("value", NON_FINITE, ids=str)
@pytest.mark.parametrize(("cls", "name", "label"), HYPERPARAMETERS, ids=lambda v: getattr(v, "__name__", v))
def test_non_finite_hyperparameters_are_refused_in_the_constructor_and_later(cls, name, label, value) -> None:
    params = nn.MLP([2, 1], device="numpy").parameters()
    with pytest.raises(ValueError, match=rf"^Invalid {label}: {value} \(expected a finite number >= 0\)$"):
        cls(params, **{name: value})
    opt = cls(params)
    before = getattr(opt, name)
    with pytest.raises(ValueError, match=rf"^Invalid {label}: {value} "):
        setattr(opt, name, value)  # what a schedule (or a user) does between steps
    assert getattr(opt, name) == before


@pytest.mark.parametrize("value", [*NON_FINITE, 0.0, -1e-8])
@pytest.mark.parametrize("cls", [nn.RMSprop, nn.Adam])
def test_eps_must_be_positive_and_finite(cls, value: float) -> None:
    """0 / 0 in the zero-gradient padding otherwise: Adam's and RMSprop's first step would write NaN there."""
    params = nn.MLP([2, 1], device="numpy").parameters()
    with pytest.raises(ValueError, match=rf"^Invalid epsilon value: {value} \(expected a finite number > 0\)$"):
        cls(params, eps=value)


@pytest.mark.parametrize("value", [*NON_FINITE, 1.0, -0.1])
@pytest.mark.parametrize("index", [0, 1])
def test_adam_betas_must_be_finite_and_in_the_unit_interval(index: int, value: float) -> None:
    params = nn.MLP([2, 1], device="numpy").parameters()
    betas = [0.9, 0.999]
    betas[index] = value
    with pytest.raises(ValueError, match=rf"^Invalid beta parameter at index {index}: {value} \(expected .*\[0, 1\)"):
        nn.Adam(params, betas=tuple(betas))


@pytest.mark.parametrize("betas", [0.9, None, "ab", (0.9, 0.99, 0.999)])
def test_adam_betas_that_are_not_a_pair_get_a_clear_message(betas) -> None:
    params = nn.MLP([2, 1], device="numpy").parameters()
    with pytest.raises((TypeError, ValueError), match=r"betas must be a pair of floats|Invalid beta parameter"):
        nn.Adam(params, betas=betas)
    if not isinstance(betas, str):
        with pytest.raises((TypeError, ValueError), match=r"^betas must be a pair of floats \(beta1, beta2\)"):
            nn.Adam(params, betas=betas)


@pytest.mark.parametrize("value", ["0.1", True, None, [0.1], 1j])
def test_hyperparameters_that_are_not_real_numbers_are_refused(value) -> None:
    params = nn.MLP([2, 1], device="numpy").parameters()
    with pytest.raises(TypeError, match=r"^Invalid learning rate: .* is not a real number$"):
        nn.SGD(params, lr=value)


@pytest.mark.parametrize("cls", [nn.SGD, nn.RMSprop, nn.Adam])
def test_a_zero_learning_rate_is_valid_as_in_torch(cls) -> None:
    """``torch.optim`` checks ``0.0 <= lr``; a schedule that anneals to 0 must be able to set it."""
    model, x, y = make_problem("numpy", "float64")
    opt = cls(model.parameters(), lr=0.0)
    before = model.get_weights()
    train_step(model, nn.get_loss("categorical_crossentropy", device="numpy"), opt, x, y)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert nn.optimizer_from_config(opt.get_config(), model.parameters()).lr == 0.0


@pytest.mark.parametrize("cls", [nn.AdamW, nn.LAMB, nn.LARS])
def test_fit_steps_the_new_optimizers_from_python(cls) -> None:
    """No compiled epoch knows AdamW, LAMB or LARS: epoch_plan returns None and fit runs per step."""
    model, x, y = make_problem("cpu", "float64")
    history = nn.fit(model, x, y, loss="categorical_crossentropy", optimizer=cls(model.parameters()), epochs=1)
    assert history.params["epoch_path"] == "per-step"


def _paper_lamb(p, g, m, v, t, lr, beta1, beta2, eps, wd):
    """One LAMB step on one tensor, as You et al. (2019), Algorithm 2, with phi the identity."""
    m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
    r = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps) + wd * p
    ratio = np.linalg.norm(p) / np.linalg.norm(r) if np.linalg.norm(p) and np.linalg.norm(r) else 1.0
    return p - lr * ratio * r, m, v


def _paper_lars(p, g, buf, lr, momentum, wd, trust, eps):
    """One LARS step on one tensor, as You et al. (2017), Algorithm 1 (torch's momentum form)."""
    local = trust * np.linalg.norm(p) / (np.linalg.norm(g) + wd * np.linalg.norm(p) + eps)
    step = (g + wd * p) * (local if np.linalg.norm(p) and np.linalg.norm(g) else 1.0)
    buf = step if buf is None else momentum * buf + step
    return p - lr * buf, buf


@pytest.mark.parametrize("cls", [nn.LAMB, nn.LARS])
def test_lamb_and_lars_follow_the_papers_without_timm(device: str, cls) -> None:
    """A float64 reference written from the papers, tensor by tensor (needs no timm)."""
    model, x, y = make_problem(device, "float64")
    hyper = {"lr": 0.02, "weight_decay": 0.03}
    hyper.update(
        {"betas": (0.8, 0.95), "eps": 1e-6} if cls is nn.LAMB else {"momentum": 0.9, "trust_coefficient": 0.05}
    )
    opt = cls(model.parameters(), **hyper)
    loss_fn = nn.get_loss("categorical_crossentropy", device=device)
    weights = [w.astype(np.float64) for w in model.get_weights()]
    state = [(np.zeros_like(w), np.zeros_like(w)) for w in weights] if cls is nn.LAMB else [None] * len(weights)
    for t in range(1, 6):
        loss, dout = loss_fn(model.forward(x), y)
        model.backward(dout, need_input_grad=False)
        grads = [model.backend.to_numpy(g).astype(np.float64) for g in model.parameters().grad_views()]
        opt.step()
        for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
            if cls is nn.LAMB:
                weights[i], *moments = _paper_lamb(w, g, *state[i], t, 0.02, 0.8, 0.95, 1e-6, 0.03)
                state[i] = tuple(moments)
            else:
                weights[i], state[i] = _paper_lars(w, g, state[i], 0.02, 0.9, 0.03, 0.05, 1e-8)
        for ours, theirs in zip(model.get_weights(), weights, strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12, err_msg=f"step {t}")


def test_an_assignment_that_would_change_the_state_is_refused() -> None:
    model, _, _ = make_problem("numpy", "float64")
    adam, sgd = nn.Adam(model.parameters()), nn.SGD(model.parameters(), momentum=0.9)
    with pytest.raises(ValueError, match=r"amsgrad=True would change the state Adam keeps \(exp_avg, exp_avg_sq\)"):
        adam.amsgrad = True
    with pytest.raises(ValueError, match="momentum=0.0 would change the state SGD keeps"):
        sgd.momentum = 0.0
    assert adam.amsgrad is False and sgd.momentum == 0.9  # unchanged
    sgd.momentum = 0.5  # a momentum schedule keeps the buffer
    adam.betas = (0.8, 0.9)
    assert sgd.get_config()["momentum"] == 0.5 and adam.get_config()["betas"] == [0.8, 0.9]
