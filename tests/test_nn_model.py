"""Sequential/MLP: the flat parameter buffer, weights I/O, penalties, backend agreement, XOR, and every error."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GPU_SKIP_REASON, HAS_GPU

import fusednn
from fusednn import nn
from fusednn.nn.init import initial_weights, resolve_init

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XOR_Y = np.array([0, 1, 1, 0])


def small_model(device: str = "numpy", dtype: str = "float64", **dense) -> nn.Sequential:
    return nn.Sequential(
        [nn.Dense(3, 5, activation="relu", **dense), nn.Dense(5, 2)], device=device, dtype=dtype, seed=0
    )


# ------------------------------------------------------------------ layout


def test_parameters_live_in_one_aligned_flat_buffer(device: str) -> None:
    model = nn.MLP([3, 40, 2], device=device, dtype="float32", seed=0)
    params = model.parameters()
    assert params.shapes == [(3, 40), (40,), (40, 2), (2,)]
    assert all(offset % nn.ALIGNMENT == 0 for offset in params.offsets)
    assert params.offsets == [0, 128, 192, 288] and params.size == 320
    assert params.count == model.count_params() == 3 * 40 + 40 + 40 * 2 + 2
    assert params.backend is model.backend and params.dtype == np.float32 and params.grad.shape == params.data.shape

    # Writing the flat buffer is visible through the layer views and vice versa.
    params.data[params.offsets[2]] = 7.0
    assert model.get_weights()[2][0, 0] == 7.0
    model.layers[0].b[...] = 3.0
    assert np.all(model.backend.to_numpy(params.data)[128:168] == 3.0)

    x = np.random.default_rng(0).normal(size=(4, 3))
    loss, dout = nn.get_loss("mse", device=device)(model.forward(x), np.zeros((4, 2)))
    data_before = params.data
    model.backward(dout)
    flat = model.backend.to_numpy(params.grad)
    for offset, grad in zip(params.offsets, model.get_gradients(), strict=True):
        np.testing.assert_array_equal(flat[offset : offset + grad.size], grad.ravel())
    assert params.data is data_before  # nothing rebinds a buffer


def test_backward_sets_rather_than_accumulates(device: str) -> None:
    model = small_model(device)
    x = np.random.default_rng(1).normal(size=(6, 3))
    loss_fn = nn.get_loss("mse", device=device)
    _, dout = loss_fn(model.forward(x), np.ones((6, 2)))
    model.backward(dout)
    first = model.get_gradients()
    model.backward(dout)
    for a, b in zip(first, model.get_gradients(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.backward(dout, need_input_grad=False) is None


def test_same_seed_same_weights_on_every_device(device: str) -> None:
    ours = nn.MLP([4, 6, 3], activation="tanh", device=device, dtype="float64", seed=11).get_weights()
    reference = nn.MLP([4, 6, 3], activation="tanh", device="numpy", dtype="float64", seed=11).get_weights()
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ours[0], nn.MLP([4, 6, 3], device="numpy", seed=12).get_weights()[0])
    assert not ours[1].any() and not ours[3].any()  # biases start at zero


@pytest.mark.parametrize(
    ("activation", "expected"),
    [("relu", "he"), ("gelu", "he"), ("tanh", "glorot"), ("identity", "glorot"), ("selu", "lecun")],
)
def test_auto_init_picks_by_activation_and_scales(activation: str, expected: str) -> None:
    assert resolve_init("auto", activation) == expected
    rng = np.random.default_rng(0)
    w = initial_weights(expected, 400, 300, rng)
    variance = {"he": 2 / 400, "glorot": 2 / 700, "lecun": 1 / 400}[expected]
    assert abs(w.var() / variance - 1) < 0.05
    model = nn.Sequential([nn.Dense(400, 300, activation=activation)], device="numpy", seed=0)
    assert abs(model.get_weights()[0].var() / variance - 1) < 0.05


def test_get_set_weights_round_trip_and_cast(device: str) -> None:
    model = small_model(device, dtype="float32")
    new = [np.full(w.shape, i + 0.5) for i, w in enumerate(model.get_weights())]  # float64 in, cast to float32
    model.set_weights(new)
    got = model.get_weights()
    assert all(w.dtype == np.float32 for w in got)
    for a, b in zip(got, new, strict=True):
        np.testing.assert_array_equal(a, b)
    got[0][...] = -1  # copies, not views
    assert model.get_weights()[0][0, 0] == 0.5


def test_predict_matches_forward_in_batches(device: str) -> None:
    model = nn.MLP([3, 7, 4], activation="silu", device=device, dtype="float64", seed=2)
    x = np.random.default_rng(3).normal(size=(10, 3))
    full = model.backend.to_numpy(model.forward(x))
    for batch_size in (None, 1, 3, 10, 64):
        out = model.predict(x, batch_size=batch_size)
        assert isinstance(out, np.ndarray)
        np.testing.assert_allclose(out, full, rtol=1e-12, atol=1e-14)
    assert model.predict(np.zeros((0, 3))).shape == (0, 4)


def test_predict_keeps_nothing_for_backward(device: str) -> None:
    model = small_model(device)
    model.predict(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward\\(\\)"):
        model.backward(np.ones((2, 2)))


def test_config_rebuilds_the_architecture() -> None:
    model = nn.MLP([4, 6, 3], activation="elu", output_activation="sigmoid", l1=1e-3, l2=2e-3, dtype="float64", seed=5)
    config = model.get_config()
    rebuilt = nn.Sequential.from_config(config, device="numpy")
    assert rebuilt.get_config() == config and rebuilt.dtype == np.float64
    for a, b in zip(rebuilt.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the seed is part of the config
    assert nn.Sequential.from_config(config, device="numpy", dtype="float32").dtype == np.float32
    assert [layer.activation for layer in rebuilt.layers] == ["elu", "sigmoid"]


def test_state_dict_names_and_round_trip() -> None:
    model, other = small_model(), nn.MLP([3, 5, 2], device="numpy", dtype="float64", seed=9)
    state = model.state_dict()
    assert list(state) == ["0.W", "0.b", "1.W", "1.b"]
    other.load_state_dict(state)
    for a, b in zip(other.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_to_moves_weights_and_gradients_exactly(device: str) -> None:
    model = small_model("numpy")
    x = np.random.default_rng(4).normal(size=(3, 3))
    model.backward(nn.get_loss("mse", device="numpy")(model.forward(x), np.zeros((3, 2)))[1])
    weights, grads = model.get_weights(), model.get_gradients()
    assert model.to(device) is model and model.backend is fusednn.backend(device)
    assert model.layers[0].W.shape == (3, 5)
    for a, b in zip(model.get_weights() + model.get_gradients(), weights + grads, strict=True):
        np.testing.assert_array_equal(a, b)
    if device != "numpy":
        with pytest.raises(RuntimeError, match="before forward"):
            model.backward(np.zeros((3, 2)))  # the forward cache does not travel
    assert model.predict(x).shape == (3, 2)


# -------------------------------------------------------------- penalties


def test_penalty_gradient_matches_finite_differences(device: str) -> None:
    model = nn.Sequential(
        [nn.Dense(3, 4, activation="tanh", l1=0.05, l2=0.1), nn.Dense(4, 2, l1=0.02)],
        device=device,
        dtype="float64",
        seed=1,
    )
    rng = np.random.default_rng(2)
    x, target = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    loss_fn = nn.get_loss("mse", device=device)

    def total_loss() -> float:
        return float(loss_fn(model.forward(x), target)[0]) + float(model.regularization_loss())

    model.backward(loss_fn(model.forward(x), target)[1])
    analytic = model.get_gradients()
    weights = model.get_weights()
    h = 1e-6
    for index, w in enumerate(weights):
        numeric = np.zeros_like(w)
        for pos in np.ndindex(w.shape):
            for sign in (1, -1):
                shifted = [v.copy() for v in weights]
                shifted[index][pos] += sign * h
                model.set_weights(shifted)
                numeric[pos] += sign * total_loss() / (2 * h)
        np.testing.assert_allclose(analytic[index], numeric, rtol=1e-6, atol=1e-8, err_msg=f"weight {index}")


def test_regularization_loss_is_keras_penalty_on_weights_only(device: str) -> None:
    model = small_model(device, l1=0.1, l2=0.2)
    model.set_weights([np.full(w.shape, 0.5) for w in model.get_weights()])
    value = model.regularization_loss()
    assert value.shape == ()
    W1 = model.get_weights()[0]
    assert float(value) == pytest.approx(0.1 * np.abs(W1).sum() + 0.2 * (W1**2).sum())
    assert float(small_model(device).regularization_loss()) == 0.0


# ----------------------------------------------------- backend agreement


def test_backends_agree_at_every_step_of_training(fast_device: str, dtype: str) -> None:
    tol = {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 1e-4, "atol": 1e-5}}[dtype]
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(32, 6)), rng.integers(0, 3, size=32)
    runs = []
    for device in ("numpy", fast_device):
        model = nn.MLP([6, 16, 8, 3], activation="gelu", device=device, dtype=dtype, seed=3, l2=1e-3)
        opt = nn.Adam(model.parameters(), lr=0.01, amsgrad=True)
        loss_fn = nn.get_loss("categorical_crossentropy", device=device)
        trace = []
        for step in range(8):
            batch = slice(8 * (step % 4), 8 * (step % 4) + 8)
            loss, dout = loss_fn(model.forward(x[batch]), y[batch])
            model.backward(dout, need_input_grad=False)
            opt.step()
            trace.append((float(loss), model.get_weights()))
        runs.append(trace)
    for step, ((loss_a, w_a), (loss_b, w_b)) in enumerate(zip(*runs, strict=True)):
        np.testing.assert_allclose(loss_b, loss_a, **tol, err_msg=f"loss at step {step}")
        for a, b in zip(w_a, w_b, strict=True):
            np.testing.assert_allclose(b, a, **tol, err_msg=f"weights after step {step}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP_REASON)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_and_cpu_agree_over_a_50_step_training_run(dtype: str) -> None:
    """The same model, data and optimizer on cuda and cpu stay together for 50 mini-batch steps."""
    tol = {"float64": {"rtol": 1e-9, "atol": 1e-11}, "float32": {"rtol": 2e-3, "atol": 2e-4}}[dtype]
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(512, 20)), rng.integers(0, 5, size=512)
    traces = []
    for device in ("cpu", "cuda"):
        model = nn.MLP([20, 64, 32, 5], activation="relu", device=device, dtype=dtype, seed=7, l2=1e-4)
        opt = nn.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
        loss_fn = nn.get_loss("categorical_crossentropy", device=device)
        losses = []
        for step in range(50):
            batch = slice(64 * (step % 8), 64 * (step % 8) + 64)
            loss, dout = loss_fn(model.forward(x[batch]), y[batch])
            model.backward(dout, need_input_grad=False)
            opt.step()
            losses.append(loss)
        traces.append(([float(v) for v in losses], model.get_weights()))
    (cpu_losses, cpu_weights), (cuda_losses, cuda_weights) = traces
    np.testing.assert_allclose(cuda_losses, cpu_losses, **tol)
    for a, b in zip(cpu_weights, cuda_weights, strict=True):
        np.testing.assert_allclose(b, a, **tol)


# -------------------------------------------------------------------- XOR


def train_xor(model: nn.Sequential, steps: int, lr: float) -> float:
    """Full-batch Adam on the four XOR points; returns the final accuracy."""
    loss_fn = nn.get_loss("categorical_crossentropy", device=model.device)
    opt = nn.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        _, dout = loss_fn(model.forward(XOR_X), XOR_Y)
        model.backward(dout, need_input_grad=False)
        opt.step()
    return float(np.mean(loss_fn.predict_labels(model.forward(XOR_X)) == XOR_Y))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_xor_2_3_2_reaches_full_accuracy(device: str, activation: str) -> None:
    # Seed 0 is a documented good start for both activations (seed 8 is a sigmoid seed that stalls).
    model = nn.MLP([2, 3, 2], activation=activation, device=device, seed=0)
    assert train_xor(model, steps=300, lr=0.1) == 1.0


def test_xor_2_8_2_relu_learns_for_nine_of_ten_seeds(device: str) -> None:
    # Seed 0 starts with too many dead ReLUs to separate XOR; the rest succeed.
    solved = [
        train_xor(nn.MLP([2, 8, 2], activation="relu", device=device, seed=s), steps=300, lr=0.05) for s in range(10)
    ]
    assert sum(acc == 1.0 for acc in solved) >= 9, solved


# ----------------------------------------------------------------- errors


def test_wrong_feature_count_names_the_layer(device: str) -> None:
    model = small_model(device)
    with pytest.raises(ValueError, match="Layer 0 \\(Dense\\) expects 3 input features, got 4"):
        model.forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match="Expected input of shape \\(N, 3\\)"):
        model.forward(np.ones(3))
    with pytest.raises(ValueError, match="expects 3 input features"):
        model.predict(np.ones((2, 4)))


def test_backward_before_forward_and_wrong_dout(device: str) -> None:
    model = small_model(device)
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward\\(\\)"):
        model.backward(np.ones((2, 2)))
    model.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match="dout has shape \\(3, 2\\); expected the output's shape \\(2, 2\\)"):
        model.backward(np.ones((3, 2)))


def test_layer_size_mismatch_and_bad_layers() -> None:
    with pytest.raises(ValueError, match="Layer 1 expects 4 input features but layer 0 outputs 5"):
        nn.Sequential([nn.Dense(3, 5), nn.Dense(4, 2)], device="numpy")
    with pytest.raises(ValueError, match="at least one layer"):
        nn.Sequential([], device="numpy")
    with pytest.raises(TypeError, match="Layer 0 is a str; expected nn.Dense"):
        nn.Sequential(["dense"], device="numpy")
    layer = nn.Dense(2, 2)
    nn.Sequential([layer], device="numpy")
    with pytest.raises(ValueError, match="Layer 0 already belongs to a model"):
        nn.Sequential([layer], device="numpy")
    with pytest.raises(ValueError, match="MLP sizes need at least an input and an output"):
        nn.MLP([3], device="numpy")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"activation": "swish"}, ValueError, "Unknown activation 'swish'"),
        ({"init": "orthogonal"}, ValueError, "Unknown init 'orthogonal'"),
        ({"l1": -0.1}, ValueError, "Invalid l1 value: -0.1"),
        ({"l2": float("nan")}, ValueError, "Invalid l2 value: nan"),
        ({"in_features": 0}, ValueError, "Dense in_features must be a positive integer, got 0"),
        ({"out_features": 2.5}, ValueError, "Dense out_features must be a positive integer, got 2.5"),
    ],
)
def test_dense_validates_arguments(kwargs: dict, error: type, message: str) -> None:
    args = {"in_features": 2, "out_features": 3, **kwargs}
    with pytest.raises(error, match=message):
        nn.Dense(**args)


def test_unbound_dense_says_how_to_use_it() -> None:
    with pytest.raises(RuntimeError, match="put it in nn.Sequential"):
        nn.Dense(2, 3).forward(np.ones((1, 2)))


def test_set_weights_validates_count_shape_and_dtype() -> None:
    model = small_model()
    weights = model.get_weights()
    with pytest.raises(ValueError, match="Expected 4 weight arrays, got 3"):
        model.set_weights(weights[:3])
    with pytest.raises(ValueError, match="Weight 2 has shape \\(2, 5\\); expected \\(5, 2\\)"):
        model.set_weights(weights[:2] + [weights[2].T, weights[3]])
    with pytest.raises(TypeError, match="Weight 1 has dtype 'int64'; expected a floating-point array"):
        model.set_weights([weights[0], np.zeros(5, dtype=np.int64)] + weights[2:])
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)  # a failed set_weights changes nothing


def test_load_state_dict_validates_names() -> None:
    model = small_model()
    state = model.state_dict()
    with pytest.raises(KeyError, match="missing \\['1.b'\\], unexpected \\['2.W'\\]"):
        model.load_state_dict({**{k: v for k, v in state.items() if k != "1.b"}, "2.W": state["1.W"]})


def test_predict_validates_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer or None, got 0"):
        small_model().predict(np.ones((2, 3)), batch_size=0)


def test_unsupported_dtype_and_device() -> None:
    with pytest.raises(TypeError, match="float16"):
        nn.MLP([2, 1], device="numpy", dtype="float16")
    with pytest.raises(ValueError):
        nn.MLP([2, 1], device="tpu")
