"""Forward, loss, every parameter gradient and dL/dx of fusednn models against PyTorch.

Each case builds the same two-layer network in fusednn and in torch (our ``W`` is
``torch.nn.Linear.weight.T``), runs one forward/backward and compares.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from fusednn import ACTIVATIONS, nn

# fusednn vs torch computes in a different order: float64 agrees to rounding, float32 to these.
TORCH_TOL = {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 2e-4, "atol": 2e-5}}

TORCH_ACTIVATIONS = {
    "identity": lambda z: z,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, 0.01),
    "elu": lambda z: torch.nn.functional.elu(z, 1.0),
    "selu": torch.nn.functional.selu,
    "gelu": torch.nn.functional.gelu,
    "silu": torch.nn.functional.silu,
    "softplus": torch.nn.functional.softplus,
}

# (batch, in, hidden, out); batch 1 and a single output column included.
SHAPES = [(1, 3, 4, 2), (6, 4, 5, 3), (9, 3, 7, 1)]

# loss name -> (torch loss on (out, target), target maker)
LOSS_CASES = {
    "mse": (torch.nn.MSELoss(), lambda rng, n, c: rng.normal(size=(n, c))),
    "mae": (torch.nn.L1Loss(), lambda rng, n, c: rng.normal(size=(n, c))),
    "binary_crossentropy": (torch.nn.BCEWithLogitsLoss(), lambda rng, n, c: rng.uniform(size=(n, c))),
    "categorical_crossentropy": (torch.nn.CrossEntropyLoss(), lambda rng, n, c: rng.integers(0, c, size=n)),
    "categorical_crossentropy_probs": (
        torch.nn.CrossEntropyLoss(),
        lambda rng, n, c: rng.dirichlet(np.ones(c), size=n),
    ),
}


def torch_model(weights: list[np.ndarray], activations: list[str]) -> tuple[list[torch.nn.Linear], callable]:
    """Linear layers holding ``weights`` (float64 copies) and a forward function applying ``activations``."""
    linears = []
    for W, b in zip(weights[::2], weights[1::2], strict=True):
        linear = torch.nn.Linear(*W.shape, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.T.astype(np.float64)))
            linear.bias.copy_(torch.from_numpy(b.astype(np.float64)))
        linears.append(linear)

    def forward(x: torch.Tensor) -> torch.Tensor:
        for linear, act in zip(linears, activations, strict=True):
            x = TORCH_ACTIVATIONS[act](linear(x))
        return x

    return linears, forward


def torch_gradients(linears: list[torch.nn.Linear]) -> list[np.ndarray]:
    """Gradients laid out as fusednn's get_gradients: [dW (in, out), db, ...]."""
    out = []
    for linear in linears:
        out += [linear.weight.grad.numpy().T, linear.bias.grad.numpy()]
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("loss_name", list(LOSS_CASES))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_loss_and_gradients_match_torch(device: str, dtype: str, activation: str, loss_name: str, shape) -> None:
    n, n_in, n_hidden, n_out = shape
    rng = np.random.default_rng(zlib.crc32(f"{activation}-{loss_name}-{shape}".encode()))
    # The activation sits on both layers so the loss gradient also flows through it directly.
    model = nn.Sequential(
        [nn.Dense(n_in, n_hidden, activation=activation), nn.Dense(n_hidden, n_out, activation=activation)],
        device=device,
        dtype=dtype,
        seed=int(rng.integers(1000)),
    )
    model.set_weights([w + rng.normal(scale=0.1, size=w.shape) for w in model.get_weights()])  # non-zero biases
    x = rng.normal(size=(n, n_in)).astype(dtype)
    torch_loss, make_target = LOSS_CASES[loss_name]
    target = make_target(rng, n, n_out)

    out = model.forward(x)
    loss_fn = nn.get_loss(loss_name.removesuffix("_probs"), device=device)
    loss, dout = loss_fn(out, target)
    dx = model.backward(dout)

    linears, forward = torch_model(model.get_weights(), [activation, activation])
    x_t = torch.tensor(x.astype(np.float64), requires_grad=True)
    out_t = forward(x_t)
    target_t = torch.from_numpy(target) if target.ndim == 1 else torch.from_numpy(target.astype(np.float64))
    loss_t = torch_loss(out_t, target_t)
    loss_t.backward()

    be = model.backend
    tol = TORCH_TOL[dtype]
    assert be.to_numpy(out).dtype == np.dtype(dtype)
    np.testing.assert_allclose(be.to_numpy(out), out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(float(loss), loss_t.item(), **tol)
    np.testing.assert_allclose(be.to_numpy(dx), x_t.grad.numpy(), **tol)
    for ours, theirs in zip(model.get_gradients(), torch_gradients(linears), strict=True):
        np.testing.assert_allclose(ours, theirs, **tol)


@pytest.mark.parametrize("shape", [(1, 3, 4, 2), (7, 5, 6, 3)], ids=lambda s: "x".join(map(str, s)))
def test_l1_l2_penalties_match_torch(device: str, dtype: str, shape) -> None:
    n, n_in, n_hidden, n_out = shape
    rng = np.random.default_rng(7)
    l1, l2 = 1e-2, 3e-2
    model = nn.Sequential(
        [nn.Dense(n_in, n_hidden, activation="tanh", l1=l1, l2=l2), nn.Dense(n_hidden, n_out, l2=l2)],
        device=device,
        dtype=dtype,
        seed=3,
    )
    x = rng.normal(size=(n, n_in))
    target = rng.normal(size=(n, n_out))
    loss, dout = nn.get_loss("mse", device=device)(model.forward(x), target)
    model.backward(dout, need_input_grad=False)
    total = float(loss) + float(model.regularization_loss())

    linears, forward = torch_model(model.get_weights(), ["tanh", "identity"])
    W1, W2 = linears[0].weight, linears[1].weight
    loss_t = torch.nn.MSELoss()(forward(torch.from_numpy(x)), torch.from_numpy(target))
    loss_t = loss_t + l1 * W1.abs().sum() + l2 * (W1**2).sum() + l2 * (W2**2).sum()
    loss_t.backward()

    tol = TORCH_TOL[dtype]
    np.testing.assert_allclose(total, loss_t.item(), **tol)
    for ours, theirs in zip(model.get_gradients(), torch_gradients(linears), strict=True):
        np.testing.assert_allclose(ours, theirs, **tol)
