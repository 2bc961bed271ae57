"""Data that would give silently wrong results is refused up front, naming the array and the first bad entry.

Each group below was accepted quietly before: non-finite data (trained into a NaN loss, or a
``val_loss=nan`` that early stopping then "restored"), complex/masked/object/string inputs
(converted with a warning or none), targets a loss is not defined for, seeds and weights that
failed with NumPy's words, and metrics that did not fit the loss (failing after an epoch).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fusednn
from fusednn import nn
from fusednn.nn.data import one_hot
from fusednn.nn.validation import check_finite, first_outside, probability_sum_tolerance


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 3)), rng.integers(0, 2, 40)


def fresh_model(dtype: str = "float32", outputs: int = 2) -> nn.MLP:
    return nn.MLP([3, 4, outputs], device="numpy", dtype=dtype, seed=0)


def assert_untrained(model: nn.MLP) -> None:
    """Nothing ran: the weights are the initial ones and no epoch was counted."""
    for got, initial in zip(model.get_weights(), fresh_model(model.dtype.name).get_weights(), strict=True):
        np.testing.assert_array_equal(got, initial)
    assert model.epochs_trained == 0


# ----------------------------------------------------------------- non-finite data


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    ("where", "array"),
    [("training", "x"), ("training", "y"), ("validation", "x"), ("validation", "y"), ("evaluation", "x")],
)
def test_non_finite_data_is_refused_before_training(data, where: str, array: str, value: float) -> None:
    x, y = data
    model = fresh_model()
    targets = one_hot(y, 2).astype(np.float64)  # float targets, so y can hold NaN too
    bad = (x if array == "x" else targets).copy()
    bad[17, 1] = value
    x_bad, y_bad = (bad, targets) if array == "x" else (x, bad)
    expected = f"{where} {array} contains {value} at row 17, column 1; fusednn needs finite data"
    with pytest.raises(ValueError, match=expected):
        if where == "training":
            nn.fit(model, x_bad, y_bad, epochs=1, progress=False)
        elif where == "validation":
            nn.fit(model, x, targets, validation_data=(x_bad, y_bad), epochs=1, progress=False)
        else:
            nn.evaluate(model, x_bad, y_bad)
    assert_untrained(model)


def test_a_split_names_the_users_row_not_the_shuffled_one(data) -> None:
    x, y = data
    x = x.copy()
    x[33, 0] = np.nan
    with pytest.raises(ValueError, match="training x contains nan at row 33, column 0"):
        nn.fit(fresh_model(), x, y, validation_split=0.25, epochs=1, progress=False)


def test_values_beyond_the_model_dtype_are_refused_and_fit_a_wider_model(data) -> None:
    x, y = data
    x = x.copy()
    x[4, 2] = 1e39  # finite in float64, inf in a float32 model
    with pytest.raises(ValueError, match="training x contains 1e[+]39 at row 4, column 2, beyond the range of float32"):
        nn.fit(fresh_model(), x, y, epochs=1, progress=False)
    nn.evaluate(fresh_model("float64"), x, y)  # a float64 model takes it


def test_the_finite_check_finds_the_first_bad_entry_in_any_block() -> None:
    x = np.zeros((3000, 784), dtype=np.float32)  # about 9 blocks of ~1 MB
    assert first_outside(x, -1.0, 1.0) is None
    x[2500, 7] = np.inf
    x[2999, 0] = np.nan
    index, value = first_outside(x, -1.0, 1.0)
    assert index == (2500, 7) and value == np.inf
    assert first_outside(np.array([0.5, np.nan]), 0.0, 1.0)[0] == (1,)
    assert first_outside(np.array([0, 3, 1]), 0, 2) == ((1,), 3)
    assert first_outside(np.zeros((0, 4)), 0.0, 1.0) is None


def test_the_finite_check_allocates_little() -> None:
    # np.isfinite(x).all() would allocate a bool per entry (a quarter of a float32 array).
    x = np.ones((4096, 256), dtype=np.float32)  # 4 MiB
    tracemalloc.start()
    check_finite(x, "training x", np.dtype(np.float32))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes // 16


def test_integer_and_bool_data_need_no_finite_check() -> None:
    check_finite(np.array([[2**62, -1]]), "training x", np.dtype(np.float32))
    check_finite(np.array([True, False]), "training y", np.dtype(np.float32))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_early_stopping_never_takes_a_non_finite_value_as_best(data) -> None:
    x, y = data
    x_val = np.full((8, 3), 3e38)  # finite, so accepted, but the float32 model's outputs overflow on it
    model = fresh_model()
    stopper = nn.EarlyStopping(monitor="val_loss", patience=1)
    history = nn.fit(model, x, y, validation_data=(x_val, y[:8]), epochs=5, early_stopping=stopper, progress=False)
    assert not np.isfinite(history.history["val_loss"]).any()
    assert stopper.best is None and stopper.best_epoch is None and stopper.stopped_epoch == 1
    # Nothing was "restored": the model keeps the weights of its last epoch.
    assert model.epochs_trained == 2


def test_early_stopping_skips_non_finite_epochs_when_choosing_the_best() -> None:
    stopper = nn.EarlyStopping(monitor="val_loss", patience=5)
    params = np.zeros(3)
    for epoch, value in enumerate([float("nan"), 2.0, float("inf"), 1.0, float("-inf"), float("nan")]):
        params[...] = epoch
        stopper._update(epoch, {"val_loss": value}, [params])
    assert (stopper.best, stopper.best_epoch) == (1.0, 3)
    stopper._restore([params])
    np.testing.assert_array_equal(params, 3.0)


# --------------------------------------------------- conversions that change the data


def complex_array(x: np.ndarray) -> np.ndarray:
    return x + 1j


def masked_array(x: np.ndarray) -> np.ndarray:
    return np.ma.masked_array(x, mask=np.arange(x.size).reshape(x.shape) % 7 == 3)


@pytest.mark.parametrize(
    ("convert", "error", "message"),
    [
        (complex_array, TypeError, "has dtype 'complex128': complex values, whose imaginary part"),
        (masked_array, ValueError, r"is a masked array with \d+ masked entries"),
        (lambda x: x.astype(object), TypeError, "has dtype 'object': Python objects"),
        (lambda x: x.astype(str), TypeError, "has dtype 'str.*': strings; parse them into numbers"),
    ],
    ids=["complex", "masked", "object", "string"],
)
def test_inputs_a_conversion_would_change_are_refused_everywhere(data, convert, error, message) -> None:
    x, y = data
    model = fresh_model()
    regression = nn.MLP([3, 4, 1], device="numpy", seed=0)
    y_float = y.astype(np.float64)
    entries = {
        "training x": lambda: nn.fit(model, convert(x), y, epochs=1, progress=False),
        "validation x": lambda: nn.fit(model, x, y, validation_data=(convert(x), y), epochs=1, progress=False),
        "training y": lambda: nn.fit(regression, x, convert(y_float), loss="mse", epochs=1, progress=False),
        "validation y": lambda: nn.fit(
            regression, x, y_float, loss="mse", validation_data=(x, convert(y_float)), epochs=1, progress=False
        ),
        "evaluation x": lambda: nn.evaluate(model, convert(x), y),
        "x": lambda: model.predict(convert(x)),
        "target": lambda: nn.get_loss("mse", device="numpy")(np.zeros((40, 1)), convert(y_float)),
        "Weight 0": lambda: model.set_weights([convert(w) for w in model.get_weights()]),
    }
    for name, call in entries.items():
        if name == "Weight 0" and error is TypeError:
            message_here = "Weight 0 has dtype"  # set_weights takes floating-point arrays only, as before
        else:
            message_here = f"{name} {message}"
        with pytest.raises(error, match=message_here):
            call()
    assert_untrained(model)


def test_forward_refuses_a_complex_batch_at_the_backend(data) -> None:
    # The check sits in Backend.asarray, through which every way into a model passes.
    backend = fusednn.backend("cpu")
    with pytest.raises(TypeError, match="x has dtype 'complex64'"):
        nn.MLP([3, 2], device="cpu", seed=0).forward(data[0].astype(np.complex64))
    with pytest.raises(TypeError, match="array has dtype 'complex128'"):
        backend.asarray(np.ones(2) + 1j, dtype="float32")
    with pytest.raises(ValueError, match="labels is a masked array with 1 masked entries"):
        backend.asindex(np.ma.masked_array([0, 1], mask=[1, 0]), name="labels")


def test_a_masked_array_that_masks_nothing_is_plain_data(data) -> None:
    x, y = data
    plain, masked = fresh_model(), fresh_model()
    nn.fit(plain, x, y, epochs=1, progress=False)
    nn.fit(masked, np.ma.masked_array(x), np.ma.masked_array(y, mask=np.zeros(40, bool)), epochs=1, progress=False)
    for a, b in zip(plain.get_weights(), masked.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------- targets the losses refuse


@pytest.mark.parametrize(
    ("loss", "outputs", "targets", "message"),
    [
        ("binary_crossentropy", 1, lambda y: y * 2.0, r"training y contains 2 at row \d+; binary_crossentropy targets"),
        ("binary_crossentropy", 2, lambda y: one_hot(y, 2) - 0.5, "training y contains -0.5 at row 0, column 0"),
        ("categorical_crossentropy", 2, lambda y: one_hot(y, 2) * 0.9, "training y row 0 sums to 0.9; categorical"),
        ("categorical_crossentropy", 2, lambda y: y + 2, r"y class labels must lie in \[0, 2\) .*got 3 at row 0"),
    ],
)
def test_targets_the_loss_is_not_defined_for_are_refused_before_training(data, loss, outputs, targets, message) -> None:
    x, y = data
    model = fresh_model(outputs=outputs)
    with pytest.raises(ValueError, match=message):
        nn.fit(model, x, targets(y), loss=loss, epochs=1, progress=False)
    assert model.epochs_trained == 0


def test_targets_are_checked_once_per_call_not_per_step(data, monkeypatch) -> None:
    x, y = data
    names: list[str] = []
    original = nn.CategoricalCrossentropy.check_target

    def counting(self, target, n_outputs, name="target"):
        names.append(name)
        return original(self, target, n_outputs, name)

    monkeypatch.setattr(nn.CategoricalCrossentropy, "check_target", counting)
    nn.fit(fresh_model(), x, y, validation_split=0.25, batch_size=4, epochs=3, progress=False)  # 24 steps
    nn.evaluate(fresh_model(), x, y, batch_size=4)
    assert names == ["training y", "validation y", "evaluation y"]


def test_soft_target_tolerance_suits_float32() -> None:
    rng = np.random.default_rng(1)
    for classes in (2, 10, 1000):
        logits = rng.normal(size=(64, classes)).astype(np.float32)
        soft = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # float32 rounding
        assert np.abs(soft.sum(axis=1, dtype=np.float64) - 1).max() < probability_sum_tolerance(classes)
        nn.get_loss("categorical_crossentropy", device="numpy")(np.zeros((64, classes)), soft.astype(np.float64))
    assert probability_sum_tolerance(10) <= 1e-5  # a row that sums to 0.9999 is a mistake, not rounding


# ------------------------------------------------------- arguments named in messages


@pytest.mark.parametrize(
    ("seed", "error"), [(-1, ValueError), (1.5, TypeError), ("7", TypeError), (True, TypeError), ([1], TypeError)]
)
def test_bad_seeds_are_named(data, seed, error) -> None:
    message = f"seed must be a non-negative integer or None, got {seed!r}"
    for build in (
        lambda: nn.MLP([3, 2], device="numpy", seed=seed),
        lambda: nn.Sequential([nn.Dense(3, 2)], device="numpy", seed=seed),
        lambda: nn.fit(fresh_model(), *data, seed=seed, epochs=1, progress=False),
        lambda: nn.fit(fresh_model(), *data, seed=seed, validation_split=0.2, epochs=1, progress=False),
    ):
        with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
            build()


def test_good_seeds_still_work(data) -> None:
    a = nn.MLP([3, 2], device="numpy", seed=np.int64(3)).get_weights()
    b = nn.MLP([3, 2], device="numpy", seed=3).get_weights()
    np.testing.assert_array_equal(a[0], b[0])
    assert nn.fit(fresh_model(), *data, seed=None, epochs=1, progress=False).params["seed"] >= 0


def test_set_weights_says_it_takes_a_list_and_points_to_load_state_dict() -> None:
    model = fresh_model()
    with pytest.raises(TypeError, match=r"takes a list of 4 arrays laid out as get_weights\(\) .*use load_state_dict"):
        model.set_weights(model.state_dict())
    with pytest.raises(TypeError, match=r"shapes \(3, 4\), \(4,\), \(4, 2\), \(2,\)\), got a ndarray$"):
        model.set_weights(model.get_weights()[0])
    with pytest.raises(TypeError, match="got a int"):
        model.set_weights(3)
    model.load_state_dict(model.state_dict())
    model.set_weights(tuple(model.get_weights()))


def test_a_value_metric_with_categorical_labels_compares_probabilities_with_one_hot_rows(data) -> None:
    x, y = data
    model = fresh_model()
    nn.fit(model, x, y, metrics=["mae"], epochs=1, progress=False)  # failed after the epoch before
    logits = model.predict(x).astype(np.float64)
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    logs = nn.evaluate(model, x, y, metrics=["mae", "mse"])
    assert logs["mae"] == pytest.approx(np.abs(proba - one_hot(y, 2)).mean(), rel=1e-6)
    assert logs["mse"] == pytest.approx(((proba - one_hot(y, 2)) ** 2).mean(), rel=1e-6)
    one_hot_logs = nn.evaluate(model, x, one_hot(y, 2), metrics=["mae", "mse"])
    assert one_hot_logs["mae"] == pytest.approx(logs["mae"]) and one_hot_logs["mse"] == pytest.approx(logs["mse"])


def test_a_label_metric_that_does_not_fit_the_loss_fails_before_training(data) -> None:
    x, y = data
    model = fresh_model(outputs=3)
    multi_label = (np.random.default_rng(2).random((40, 3)) > 0.5).astype(np.float64)
    with pytest.raises(ValueError, match="'accuracy' .* 'binary_crossentropy' over 3 outputs .* 'mae', 'mse'"):
        nn.fit(model, x, multi_label, loss="binary_crossentropy", metrics=["accuracy"], epochs=1, progress=False)
    assert model.epochs_trained == 0
    np.testing.assert_array_equal(model.get_weights()[0], nn.MLP([3, 4, 3], device="numpy", seed=0).get_weights()[0])
    with pytest.raises(ValueError, match="'f1' compares class labels, but loss 'mae' is a regression loss"):
        nn.evaluate(model, x, multi_label, loss="mae", metrics=["f1"])


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int64", ">i8", "<i4", "uint64"])
def test_class_labels_are_checked_in_any_integer_dtype_and_byte_order(dtype: str) -> None:
    from fusednn.nn.validation import check_class_labels

    check_class_labels(np.array([0, 2, 1], dtype=dtype), 3, "y")
    check_class_labels(np.array([], dtype=dtype), 3, "y")
    with pytest.raises(ValueError, match=r"y class labels must lie in \[0, 3\) for 3 output columns, got 3 at row 1"):
        check_class_labels(np.array([0, 3], dtype=dtype), 3, "y")
    if np.dtype(dtype).kind == "i":
        with pytest.raises(ValueError, match="got -1 at row 2"):
            check_class_labels(np.array([0, 1, -1], dtype=dtype), 3, "y")
    if np.dtype(dtype).itemsize == 8:
        # 2**57 in a big-endian array reads as 2 in little-endian bytes: the check must not be fooled.
        with pytest.raises(ValueError, match=f"got {2**57} at row 0"):
            check_class_labels(np.array([2**57], dtype=dtype), 3, "y")
