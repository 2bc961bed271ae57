"""Compiled epochs on the cpu backend: the same numbers as the reference's per-step loop, and honest fallbacks.

Every case trains the same small model twice, on ``"numpy"`` (the executable spec,
stepping from Python) and on ``"cpu"`` (one Numba call per epoch), and compares the
epoch losses, a metric computed on the epoch's outputs, the weights, the optimizer
state and its step count. float64 runs compare tightly; one float32 case uses the
tolerances of ``test_training.test_fast_device_trains_like_the_reference``.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusednn
from fusednn import nn
from fusednn.backends import ACTIVATIONS, cpu_epoch
from fusednn.backends.epoch_plan import EpochPlan, LayerPlan, OptimizerPlan
from fusednn.nn import schedules
from fusednn.nn.compiled import epoch_plan
from fusednn.nn.data import one_hot

ROWS, IN, OUT = 37, 3, 3  # 37 rows in batches of 8: a partial last batch of 5
RNG = np.random.default_rng(0)
X = RNG.standard_normal((ROWS, IN))
LABELS = RNG.integers(0, OUT, ROWS)
TARGETS = {
    "labels": LABELS,
    "probabilities": one_hot(LABELS, OUT) * 0.7 + 0.1,
    "binary": RNG.uniform(0, 1, (ROWS, OUT)),
    "regression": RNG.standard_normal((ROWS, OUT)),
}
# Float64 over a run: the kernels sum in other orders than NumPy (BLAS vs loops, row vs pairwise sums),
# and ten updates of a twelve-layer net (RMSprop divides by a small root) grow the last-bit differences.
FLOAT64_RUN = {"rtol": 1e-9, "atol": 1e-11}
# Ten hidden layers, one per activation, so that one fit exercises every activation forward and backward.
WIDTHS = [IN] + [4] * len(ACTIVATIONS) + [OUT]


def _model(device: str, dtype: str = "float64", l1: float = 0.0, l2: float = 0.0) -> nn.Sequential:
    layers = [
        nn.Dense(n_in, n_out, activation=act, l1=l1 if i == 0 else 0.0, l2=l2 if i == 1 else 0.0)
        for i, (n_in, n_out, act) in enumerate(zip(WIDTHS[:-2], WIDTHS[1:-1], ACTIVATIONS, strict=True))
    ]
    return nn.Sequential([*layers, nn.Dense(WIDTHS[-2], OUT)], device=device, dtype=dtype, seed=1)


def _train(device: str, target: str, loss: str, dtype: str = "float64", l1: float = 0.0, l2: float = 0.0, **kwargs):
    model = _model(device, dtype, l1, l2)
    metric = "accuracy" if loss == "categorical_crossentropy" else "mae"
    kwargs = {"lr": 0.05, "epochs": 2, "batch_size": 8, "progress": False, **kwargs}
    history = nn.fit(model, X, TARGETS[target], loss=loss, metrics=[metric], **kwargs)
    return model, history


def _assert_same_training(device_run, reference_run, tol: dict[str, float]) -> None:
    (model, history), (ref_model, ref_history) = device_run, reference_run
    assert history.params["epoch_path"] == "compiled"
    assert ref_history.params["epoch_path"] == "per-step"
    assert history.history.keys() == ref_history.history.keys()
    for key, values in ref_history.history.items():
        np.testing.assert_allclose(history.history[key], values, **tol, err_msg=key)
    for ours, reference in zip(model.get_weights(), ref_model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, reference, **tol)
    opt, ref_opt = history.optimizer, ref_history.optimizer
    assert opt.step_count == ref_opt.step_count
    assert opt.lr == ref_opt.lr
    for name, state in ref_opt.state_dict().items():
        np.testing.assert_allclose(opt.state_dict()[name], state, **tol, err_msg=name)


LOSS_TARGETS = [
    ("categorical_crossentropy", "labels"),
    ("categorical_crossentropy", "probabilities"),
    ("binary_crossentropy", "binary"),
    ("mse", "regression"),
    ("mae", "regression"),
]
OPTIMIZERS = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9, "dampening": 0.2, "weight_decay": 0.01}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.01}),
    ("adam", {}),
    ("adam", {"amsgrad": True, "weight_decay": 0.01, "betas": (0.8, 0.9)}),
]


@pytest.mark.parametrize(("loss", "target"), LOSS_TARGETS)
@pytest.mark.parametrize(("optimizer", "options"), OPTIMIZERS)
def test_compiled_epochs_match_the_reference(loss: str, target: str, optimizer: str, options: dict) -> None:
    runs = [_train(device, target, loss, optimizer=optimizer, optimizer_kwargs=options) for device in ("cpu", "numpy")]
    _assert_same_training(*runs, FLOAT64_RUN)


@pytest.mark.parametrize(
    "options",
    [
        {"accumulate": 3, "shuffle": False},  # 5 micro-batches: the last group is 2 of 3, the last batch short
        {"accumulate": 2, "schedule": schedules.CosineDecay(0.1, epochs=2), "schedule_interval": "step"},
        {"schedule": schedules.StepDecay(0.1, step_epochs=1, gamma=0.5), "schedule_interval": "epoch"},
        {"batch_size": 64},  # one batch larger than the data
    ],
)
def test_compiled_epochs_follow_the_loop_options(options: dict) -> None:
    options = {"l1": 1e-3, "l2": 1e-2, "optimizer": "adam", **options}
    runs = [_train(device, "regression", "mse", **options) for device in ("cpu", "numpy")]
    _assert_same_training(*runs, FLOAT64_RUN)


@pytest.mark.parametrize("loop_gemm_max", [0, 10**9], ids=["blas", "loops"])
def test_blas_and_loop_gemms_give_the_reference_numbers(monkeypatch: pytest.MonkeyPatch, loop_gemm_max: int) -> None:
    # The small models above fall under the loop threshold; this runs every GEMM one way or the other.
    monkeypatch.setattr(cpu_epoch, "LOOP_GEMM_MAX", loop_gemm_max)
    options = {"optimizer": "adam", "l2": 1e-2, "accumulate": 2}
    runs = [_train(device, "labels", "categorical_crossentropy", **options) for device in ("cpu", "numpy")]
    _assert_same_training(*runs, FLOAT64_RUN)


def test_compiled_float32_matches_the_reference() -> None:
    loss = "categorical_crossentropy"
    runs = [_train(device, "labels", loss, dtype="float32", l2=1e-3) for device in ("cpu", "numpy")]
    _assert_same_training(*runs, {"rtol": 1e-4, "atol": 1e-5})


def test_compiled_epochs_are_deterministic_and_resume_exactly() -> None:
    straight, _ = _train("cpu", "labels", "categorical_crossentropy", dtype="float32", epochs=4)
    resumed = _model("cpu", dtype="float32")
    opt = nn.Adam(resumed.parameters(), lr=0.05)
    for _ in range(2):
        nn.fit(resumed, X, LABELS, optimizer=opt, epochs=2, batch_size=8, progress=False)
    for ours, reference in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, reference)


class _PlainDense(nn.Dense):
    """A layer kind of the user's own: fusednn knows no compiled form of it."""


class _HalvedMSE(nn.MeanSquaredError):
    def _compute(self, backend, out, target):
        loss, grad = super()._compute(backend, out, target)
        return loss / 2, grad / 2


def test_compiled_and_per_step_paths_agree_on_one_backend() -> None:
    compiled, history = _train("cpu", "labels", "categorical_crossentropy", dtype="float32")
    layers = [_PlainDense(**layer.get_config()) for layer in _model("cpu").layers]
    stepped = nn.Sequential(layers, device="cpu", dtype="float32", seed=1)
    stepped_history = nn.fit(stepped, X, LABELS, lr=0.05, epochs=2, batch_size=8, metrics=["accuracy"], progress=False)
    assert (history.params["epoch_path"], stepped_history.params["epoch_path"]) == ("compiled", "per-step")
    np.testing.assert_allclose(history.history["loss"], stepped_history.history["loss"], rtol=1e-5)
    for ours, reference in zip(compiled.get_weights(), stepped.get_weights(), strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


def test_anything_without_a_compiled_form_steps_from_python() -> None:
    def path(model, loss="mse", optimizer="sgd"):
        history = nn.fit(model, X, TARGETS["regression"], loss=loss, optimizer=optimizer, progress=False)
        return history.params["epoch_path"]

    assert path(_model("numpy")) == "per-step"
    assert path(nn.Sequential([_PlainDense(IN, OUT)], device="cpu")) == "per-step"
    assert path(_model("cpu"), loss=_HalvedMSE()) == "per-step"
    model = _model("cpu")
    subclassed = type("MySGD", (nn.SGD,), {})(model.parameters(), lr=0.1)
    assert path(model, optimizer=subclassed) == "per-step"
    assert path(_model("cpu")) == "compiled"


def test_the_backend_declines_a_plan_it_cannot_run() -> None:
    model = _model("cpu")
    opt = nn.Adam(model.parameters())
    plan = epoch_plan(model, nn.get_loss("mse"), opt, batch_size=8, accumulate=1, labels=False)
    assert plan is not None
    cpu, reference = fusednn.backend("cpu"), fusednn.backend("numpy")
    assert cpu.epoch_trainer(plan) is not None
    assert reference.epoch_trainer(plan) is None
    conv = LayerPlan("conv2d", IN, OUT, "relu", 0.0, 0.0, (0, 32))
    assert cpu.epoch_trainer(EpochPlan(**{**plan.__dict__, "layers": (conv,)})) is None
    lion = OptimizerPlan("lion", {}, {})
    assert cpu.epoch_trainer(EpochPlan(**{**plan.__dict__, "optimizer": lion})) is None


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_a_diverging_compiled_epoch_is_reported_like_a_stepped_one() -> None:
    x = X.copy()
    x[20] = 1e200  # finite, but its squared error overflows float64: the third batch of 8 when not shuffled
    messages = []
    for device in ("cpu", "numpy"):
        model = nn.MLP([IN, 4, OUT], activation="relu", device=device, dtype="float64", seed=0)
        with pytest.raises(nn.NonFiniteLossError) as caught:
            nn.fit(model, x, TARGETS["regression"], loss="mse", batch_size=8, shuffle=False, progress=False)
        messages.append(str(caught.value))
        assert (caught.value.epoch, caught.value.step, model.epochs_trained) == (1, 3, 0)
    assert messages[0] == messages[1]


@pytest.mark.parametrize("loss", ["binary_crossentropy", "mse"])
def test_one_output_takes_a_target_vector(loss: str) -> None:
    y = TARGETS["binary"][:, 0] if loss == "binary_crossentropy" else TARGETS["regression"][:, 0]
    runs = []
    for device in ("cpu", "numpy"):
        model = nn.MLP([IN, 5, 1], device=device, dtype="float64", seed=0)
        runs.append((model, nn.fit(model, X, y, loss=loss, epochs=2, batch_size=8, metrics=["mae"], progress=False)))
    _assert_same_training(*runs, FLOAT64_RUN)
