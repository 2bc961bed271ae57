"""Kernels refuse codes outside their tables instead of computing some other function.

Before, an unknown activation code fell through to the identity in the Numba and CUDA C
kernels, an unknown loss code to binary cross-entropy and an unknown optimizer code to Adam.
Now every CPU kernel that takes a code raises :class:`UnknownCodeError` before it writes
anything (serial and parallel forms: an exception raised inside ``prange`` would be lost), the
CUDA launcher refuses one on the host before a launch, and the CUDA C traps should one reach it
some other way. The backends never produce an unknown code (they map validated names to
codes), so these tests hand the codes to the kernels directly.
"""

from __future__ import annotations

import ctypes
import inspect
import signal
import subprocess
import sys

import numpy as np
import pytest
from cuda_shim.build import build_shim_library, have, wrapper_name
from cuda_shim.simulated import simulated_cuda_backend

from fusednn import nn
from fusednn.kernels.activation_codes import ACTIVATION_CODES, ACTIVATIONS
from fusednn.kernels.cpu import activations, dense, epoch
from fusednn.kernels.cuda.sources import CODE_PARAMETERS, KERNELS
from fusednn.kernels.cuda.step_codes import ELEMENTWISE_LOSSES
from fusednn.kernels.errors import UnknownCodeError
from fusednn.nn.compiled import epoch_plan

UNKNOWN_ACTIVATIONS = [-1, len(ACTIVATIONS), 2**31 - 1]
SENTINEL = 7.0


def activation_message(code: int) -> str:
    return (
        f"Unknown activation code {code}; expected an integer from 0 to {len(ACTIVATIONS) - 1} "
        "(fusednn.kernels.activation_codes.ACTIVATIONS)"
    )


def _flat(n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"z": rng.standard_normal(n), "h": rng.standard_normal(n), "dh": rng.standard_normal(n)}


def _call_activation_forward(code: int, a: dict[str, np.ndarray], out: np.ndarray) -> None:
    activations.activation_forward(code, a["z"], out)


def _call_activation_forward_parallel(code: int, a: dict[str, np.ndarray], out: np.ndarray) -> None:
    activations.activation_forward_parallel(code, a["z"], out, 2)


def _call_activation_backward(code: int, a: dict[str, np.ndarray], out: np.ndarray) -> None:
    activations.activation_backward(code, a["z"], a["h"], a["dh"], out)


def _call_activation_backward_parallel(code: int, a: dict[str, np.ndarray], out: np.ndarray) -> None:
    activations.activation_backward_parallel(code, a["z"], a["h"], a["dh"], out, 2)


def _call_bias_activation(code: int, a: dict[str, np.ndarray], out: np.ndarray) -> None:
    z = a["z"].reshape(2, 3)
    dense.bias_activation(code, z, a["h"][:3].copy(), out.reshape(2, 3))


def _call_activation_grad_bias(code: int, a: dict[str, np.ndarray], out: np.ndarray) -> None:
    z = a["z"].reshape(2, 3)
    dense.activation_grad_bias(code, a["dh"].reshape(2, 3), z, a["h"].reshape(2, 3), out.reshape(2, 3), np.ones(3))


CPU_KERNELS = {
    "activation_forward": _call_activation_forward,
    "activation_forward_parallel": _call_activation_forward_parallel,
    "activation_backward": _call_activation_backward,
    "activation_backward_parallel": _call_activation_backward_parallel,
    "bias_activation": _call_bias_activation,
    "activation_grad_bias": _call_activation_grad_bias,
}


@pytest.mark.parametrize("code", UNKNOWN_ACTIVATIONS)
@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_cpu_kernel_refuses_an_unknown_activation_code_and_writes_nothing(kernel: str, code: int) -> None:
    arrays = _flat()
    inputs = {name: a.copy() for name, a in arrays.items()}
    out = np.full(6, SENTINEL)
    with pytest.raises(UnknownCodeError) as raised:
        CPU_KERNELS[kernel](code, arrays, out)
    assert str(raised.value) == activation_message(code)
    assert isinstance(raised.value, ValueError) and raised.value.code == code
    assert np.all(out == SENTINEL)
    for name, a in arrays.items():
        np.testing.assert_array_equal(a, inputs[name])


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_cpu_kernel_still_computes_every_known_code(kernel: str) -> None:
    # The control for the test above: the same call with each known code writes every element.
    for code in ACTIVATION_CODES.values():
        out = np.full(6, np.nan)
        CPU_KERNELS[kernel](code, _flat(), out)
        assert np.all(np.isfinite(out)), (kernel, ACTIVATIONS[code])


def test_per_step_dense_kernels_refuse_an_unknown_code_before_compiling() -> None:
    with pytest.raises(UnknownCodeError, match="Unknown activation code 10;"):
        dense.for_activation(10)


@pytest.fixture(params=["float32", "float64"])
def epoch_arguments(request: pytest.FixtureRequest) -> dict[str, object]:
    """The compiled epoch kernel's arguments for a small MLP trained with MSE and SGD, by parameter name.

    Built by the backend's own trainer, so the call below hits the specialisation it compiled.
    """
    model = nn.MLP([2, 3, 1], activation="tanh", device="cpu", dtype=request.param, seed=0)
    optimizer = nn.SGD(model.parameters(), lr=0.1)
    plan = epoch_plan(model, nn.get_loss("mse", device="cpu"), optimizer, 4, 1, labels=False)
    assert plan is not None
    trainer = model.backend.epoch_trainer(plan)
    trainer.compile(wait=True)
    names = list(inspect.signature(epoch.train_epoch.py_func).parameters)
    arguments = dict(zip(names, trainer._example_arguments(), strict=True))
    for name, value in (("x", 1.0), ("targets", 2.0), ("rates", 0.1)):  # a step that changes the parameters
        np.asarray(arguments[name])[...] = value
    return arguments


@pytest.mark.parametrize(
    ("argument", "kind", "code"),
    [
        ("loss_code", "loss", 4),
        ("loss_code", "loss", -1),
        ("optimizer_code", "optimizer", 3),
        ("layers", "activation", 10),
    ],
)
def test_epoch_kernel_refuses_unknown_codes_before_any_update(
    epoch_arguments: dict[str, object], argument: str, kind: str, code: int
) -> None:
    if argument == "layers":
        table = np.array(epoch_arguments["layers"])
        table[-1, epoch.ACTIVATION] = code
        epoch_arguments["layers"] = table
    else:
        epoch_arguments[argument] = code
    params = np.array(epoch_arguments["params"])
    with pytest.raises(UnknownCodeError, match=f"Unknown {kind} code {code};"):
        epoch.train_epoch(*epoch_arguments.values())
    np.testing.assert_array_equal(epoch_arguments["params"], params)


def test_epoch_kernel_runs_with_the_unchanged_arguments(epoch_arguments: dict[str, object]) -> None:
    params = np.array(epoch_arguments["params"])
    epoch.train_epoch(*epoch_arguments.values())
    assert not np.array_equal(epoch_arguments["params"], params)


# CUDA: the launcher (through the simulated backend, whose kernels are the shim build of the .cu files).


@pytest.fixture(scope="module")
def shim_library(tmp_path_factory: pytest.TempPathFactory):
    if not have("g++"):
        pytest.skip("g++ is not on PATH; it builds the CUDA sources for the CPU")
    return build_shim_library(tmp_path_factory.mktemp("cuda_codes"), sanitize=False)


CODE_KERNELS = [name for name, spec in KERNELS.items() if any(p in CODE_PARAMETERS for _, p in spec.params)]


def test_every_code_parameter_is_known() -> None:
    assert sorted(CODE_KERNELS) == [
        "activation_backward",
        "activation_forward",
        "activation_grad_bias_reduce",
        "bias_activation_forward",
        "elementwise_loss",
    ]
    assert CODE_PARAMETERS["act"][1] == ACTIVATIONS and CODE_PARAMETERS["loss"][1] == ELEMENTWISE_LOSSES


def _launch_arguments(sim, kernel: str, dtype: str, code: int) -> list[object]:
    """Arguments for a one-element launch of ``kernel``: sentinel arrays, sizes and flags 1, the code given."""
    fixed = {"long long": np.int64, "double": np.float64}
    args: list[object] = []
    for ctype, name in KERNELS[kernel].params:
        if ctype.endswith("*"):
            element = ctype.removeprefix("const ").removesuffix("*")
            args.append(sim.xp.asarray(np.full(4, SENTINEL, dtype=fixed.get(element, dtype))))
        else:
            args.append(code if name in CODE_PARAMETERS else 1)
    return args


@pytest.mark.parametrize("kernel", CODE_KERNELS)
def test_cuda_launcher_refuses_an_unknown_code_before_launching(shim_library, kernel: str, dtype: str) -> None:
    sim = simulated_cuda_backend(ctypes.CDLL(str(shim_library)))
    param = next(p for _, p in KERNELS[kernel].params if p in CODE_PARAMETERS)
    kind, names, table = CODE_PARAMETERS[param]
    with sim.activate():
        for code in (-1, len(names)):
            args = _launch_arguments(sim, kernel, dtype, code)
            with pytest.raises(UnknownCodeError) as raised:
                sim._launch(kernel, dtype, 1, *args)
            assert str(raised.value) == (
                f"Unknown {kind} code {code}; expected an integer from 0 to {len(names) - 1} ({table})"
            )
            assert all(np.all(a.view(np.ndarray) == SENTINEL) for a in args if isinstance(a, np.ndarray))
        args = _launch_arguments(sim, kernel, dtype, len(names) - 1)  # the control: the last known code runs
        sim._launch(kernel, dtype, 1, *args)
        assert any(np.any(a.view(np.ndarray) != SENTINEL) for a in args if isinstance(a, np.ndarray))


_TRAP_SCRIPT = """
import ctypes, sys
import numpy as np
library = ctypes.CDLL(sys.argv[1])
kernel, code = sys.argv[2], int(sys.argv[3])
a, b, c, d = (np.ones(4, dtype=np.float32) for _ in range(4))
p = [ctypes.c_void_p(x.ctypes.data) for x in (a, b, c, d)]
one, n = ctypes.c_int(1), ctypes.c_longlong(4)
if kernel == "activation_forward_float":
    library.activation_forward_float(one, one, p[0], p[1], n, ctypes.c_int(code))
else:  # elementwise_loss_float(out, target, grad, row_loss, rows, cols, loss, grad_scale)
    library.elementwise_loss_float(one, one, *p, n, ctypes.c_longlong(1), ctypes.c_int(code), ctypes.c_float(1.0))
"""


@pytest.mark.parametrize(
    ("kernel", "unknown", "known"),
    [("activation_forward", len(ACTIVATIONS), ACTIVATION_CODES["identity"]), ("elementwise_loss", 3, 2)],
)
def test_cuda_c_traps_on_an_unknown_code_that_bypasses_the_launcher(shim_library, kernel, unknown, known) -> None:
    # The shim's __trap() aborts the process, so each call runs in a child process.
    def run(code: int) -> int:
        symbol = wrapper_name(kernel, "float")
        command = [sys.executable, "-c", _TRAP_SCRIPT, str(shim_library), symbol, str(code)]
        return subprocess.run(command, capture_output=True, timeout=60).returncode

    assert run(known) == 0
    assert run(unknown) == -signal.SIGABRT
