"""The CUDA C sources, their kernel signatures and the one set of compile options.

Everything that compiles the ``.cu`` files reads from here: the backend's
``cupy.RawModule`` and the GPU-free checks in the tests (NVRTC, ``nvcc`` and
``g++`` with the CPU shim). So the compile options, the template
instantiations and the argument types a launch passes come from one place.

The activation codes and constants are not written in the ``.cu`` files; they
arrive as ``-D`` defines generated from :mod:`fusednn.kernels.activation_codes`
and :mod:`.step_codes`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import activation_codes as codes
from .. import philox_constants as philox
from .step_codes import ELEMENTWISE_LOSSES, step_defines

SOURCE_DIR = Path(__file__).resolve().parent
"""Folder holding the ``.cu`` files."""

SOURCE_FILES: tuple[str, ...] = ("activations.cu", "losses.cu", "optimizers.cu", "training_step.cu", "layers.cu")
"""Every CUDA C source; each is compiled into one ``cupy.RawModule``."""

C_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}
"""The C type each template is instantiated for, by NumPy dtype."""


def compile_defines() -> tuple[str, ...]:
    """The ``-D`` defines that give the kernels the activation codes and constants.

    >>> "-DFUSEDNN_ACT_RELU=3" in compile_defines()
    True
    """
    defines = [f"-DFUSEDNN_ACT_{name.upper()}={code}" for name, code in codes.ACTIVATION_CODES.items()]
    constants = {
        "LEAKY_RELU_SLOPE": codes.LEAKY_RELU_SLOPE,
        "ELU_ALPHA": codes.ELU_ALPHA,
        "SELU_ALPHA": codes.SELU_ALPHA,
        "SELU_SCALE": codes.SELU_SCALE,
        "SOFTPLUS_THRESHOLD": codes.SOFTPLUS_THRESHOLD,
        "SQRT_HALF": math.sqrt(0.5),
        "INV_SQRT_2PI": 1.0 / math.sqrt(2.0 * math.pi),
    }
    # repr() round-trips a float exactly; every value is written as a double literal.
    defines += [f"-DFUSEDNN_{name}={float(value)!r}" for name, value in constants.items()]
    words = {"M0": philox.PHILOX_M0, "M1": philox.PHILOX_M1, "W0": philox.PHILOX_W0, "W1": philox.PHILOX_W1}
    defines += [f"-DFUSEDNN_PHILOX_{name}={value:#x}u" for name, value in words.items()]
    defines.append(f"-DFUSEDNN_PHILOX_ROUNDS={philox.PHILOX_ROUNDS}")
    return (*defines, *step_defines())


COMPILE_OPTIONS: tuple[str, ...] = ("-std=c++17", *compile_defines())
"""Options for every compiler of the sources (CuPy adds ``-arch`` and ``-ftz=true``)."""

CODE_PARAMETERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "act": ("activation", codes.ACTIVATIONS, codes.ACTIVATIONS_TABLE),
    "loss": ("loss", ELEMENTWISE_LOSSES, "fusednn.kernels.cuda.step_codes.ELEMENTWISE_LOSSES"),
}
"""Kernel parameters (by name, all ``int``) that take a code: ``name -> (kind, names, table)``.

The launcher refuses any value outside ``range(len(names))``; the kernels' switches
trap on one should it reach them another way.
"""


@dataclass(frozen=True)
class KernelSpec:
    """One ``__global__`` template: its source file and its parameters.

    Each parameter is ``(C type, name)``, where the C type is written with
    ``T`` for the float type: ``"const T*"``, ``"T*"``, ``"const long long*"``,
    ``"long long*"``, ``"const double*"``, ``"T"``, ``"double"``, ``"long long"``
    or ``"int"``. The launcher casts and checks arguments by these types, and
    the compile checks instantiate the template with exactly this signature, so
    a mismatch with the ``.cu`` fails to build.
    """

    name: str
    source: str
    params: tuple[tuple[str, str], ...]

    def c_params(self, dtype: np.dtype) -> list[str]:
        """The C parameter types for ``dtype``, e.g. ``["const float*", "int"]``."""
        return [ctype.replace("T", C_TYPES[np.dtype(dtype)]) for ctype, _ in self.params]

    def name_expression(self, dtype: np.dtype) -> str:
        """The instantiation's name for NVRTC, e.g. ``"adam_step<float>"``."""
        return f"{self.name}<{C_TYPES[np.dtype(dtype)]}>"


def source_path(source: str) -> Path:
    """Path of one ``.cu`` file.

    Raises:
        ValueError: ``source`` is not one of :data:`SOURCE_FILES`.
    """
    if source not in SOURCE_FILES:
        raise ValueError(f"Unknown CUDA source {source!r}; expected one of {SOURCE_FILES}")
    return SOURCE_DIR / source


def source_text(source: str) -> str:
    """The CUDA C text of one ``.cu`` file."""
    return source_path(source).read_text(encoding="utf-8")


_KERNEL_SIGNATURE = re.compile(r"template <typename T>\s*__global__ void (\w+)\(([^)]*)\)")


def specs_in_source(source: str) -> tuple[KernelSpec, ...]:
    """The ``__global__`` templates of ``source``, with the parameters as the ``.cu`` file writes them.

    ``optimizers.cu`` is read this way, so adding an optimizer's kernel needs no table entry: its
    signature is written once, in the kernel itself.

    >>> [spec.name for spec in specs_in_source("optimizers.cu")][:2]
    ['sgd_step', 'sgd_step_scheduled']
    """
    specs = []
    for name, params in _KERNEL_SIGNATURE.findall(source_text(source)):
        pairs = []
        for param in params.split(","):
            ctype, _, pname = " ".join(param.split()).rpartition(" ")
            pairs.append((ctype.replace(" *", "*"), pname))
        specs.append(KernelSpec(name, source, tuple(pairs)))
    return tuple(specs)


_LAYERS = "layers.cu"
_BATCHNORM_SHAPE = (("long long", "rows"), ("long long", "cols"))

# The training-step kernels' recurring parameters.
_BATCH_ROWS = (("long long", "batch"), ("long long", "rows"))
_STEP = "training_step.cu"


KERNELS: dict[str, KernelSpec] = {
    spec.name: spec
    for spec in (
        KernelSpec(
            "activation_forward",
            "activations.cu",
            (("const T*", "z"), ("T*", "h"), ("long long", "n"), ("int", "act")),
        ),
        KernelSpec(
            "activation_backward",
            "activations.cu",
            (
                ("const T*", "z"),
                ("const T*", "h"),
                ("const T*", "dh"),
                ("T*", "dz"),
                ("long long", "n"),
                ("int", "act"),
            ),
        ),
        KernelSpec(
            "bias_activation_forward",
            "activations.cu",
            (
                ("T*", "z"),
                ("const T*", "b"),
                ("T*", "y"),
                ("long long", "rows"),
                ("long long", "cols"),
                ("int", "act"),
            ),
        ),
        KernelSpec(
            "activation_grad_bias_reduce",
            "activations.cu",
            (
                ("const T*", "z"),
                ("const T*", "y"),
                ("const T*", "dy"),
                ("T*", "dz"),
                ("T*", "partials"),
                ("long long", "rows"),
                ("long long", "cols"),
                ("long long", "rows_per_chunk"),
                ("int", "act"),
            ),
        ),
        KernelSpec(
            "bias_grad_sum_chunks",
            "activations.cu",
            (("const T*", "partials"), ("T*", "db"), ("long long", "chunks"), ("long long", "cols")),
        ),
        KernelSpec(
            "softmax_xent_labels",
            "losses.cu",
            (
                ("const T*", "logits"),
                ("const long long*", "labels"),
                ("T*", "grad"),
                ("T*", "row_loss"),
                ("long long", "rows"),
                ("long long", "cols"),
                ("T", "inv_n"),
            ),
        ),
        KernelSpec(
            "softmax_xent_probs",
            "losses.cu",
            (
                ("const T*", "logits"),
                ("const T*", "target"),
                ("T*", "grad"),
                ("T*", "row_loss"),
                ("long long", "rows"),
                ("long long", "cols"),
                ("T", "inv_n"),
            ),
        ),
        *specs_in_source("optimizers.cu"),
        KernelSpec(
            "gemm",
            _STEP,
            (
                ("const T*", "a"),
                ("const T*", "b"),
                ("T*", "c"),
                ("long long", "m"),
                ("long long", "n"),
                ("long long", "k"),
                ("int", "trans_a"),
                ("int", "trans_b"),
            ),
        ),
        KernelSpec(
            "gather_rows",
            _STEP,
            (
                ("const T*", "src"),
                ("const long long*", "order"),
                ("const long long*", "counters"),
                ("T*", "dst"),
                *_BATCH_ROWS,
                ("long long", "cols"),
            ),
        ),
        KernelSpec(
            "gather_labels",
            _STEP,
            (
                ("const long long*", "src"),
                ("const long long*", "order"),
                ("const long long*", "counters"),
                ("long long*", "dst"),
                *_BATCH_ROWS,
            ),
        ),
        KernelSpec(
            "store_rows",
            _STEP,
            (("const T*", "src"), ("const long long*", "counters"), ("T*", "dst"), *_BATCH_ROWS, ("long long", "cols")),
        ),
        KernelSpec(
            "elementwise_loss",
            _STEP,
            (
                ("const T*", "out"),
                ("const T*", "target"),
                ("T*", "grad"),
                ("T*", "row_loss"),
                ("long long", "rows"),
                ("long long", "cols"),
                ("int", "loss"),
                ("T", "grad_scale"),
            ),
        ),
        KernelSpec(
            "chunk_sums",
            _STEP,
            (("const T*", "values"), ("T*", "partials"), ("long long", "n"), ("long long", "chunks")),
        ),
        KernelSpec(
            "penalty_grad",
            _STEP,
            (
                ("const T*", "w"),
                ("T*", "g"),
                ("T*", "partials"),
                ("long long", "n"),
                ("long long", "chunks"),
                ("T", "l1"),
                ("T", "l2"),
                ("T", "two_l2"),
            ),
        ),
        KernelSpec(
            "step_loss",
            _STEP,
            (
                ("const T*", "loss_partials"),
                ("long long", "loss_chunks"),
                ("T", "scale"),
                ("const T*", "penalty_partials"),
                ("long long", "penalty_chunks"),
                ("long long*", "counters"),
                ("T*", "step_losses"),
            ),
        ),
        KernelSpec(
            "accumulate_gradient",
            _STEP,
            (
                ("T*", "g"),
                ("T*", "accumulated"),
                ("long long", "n"),
                ("T", "share"),
                ("int", "first"),
                ("int", "write_back"),
            ),
        ),
        KernelSpec(
            "update_scalars",
            _STEP,
            (
                ("const double*", "rates"),
                ("long long*", "counters"),
                ("T*", "scalars"),
                ("double", "beta1"),
                ("double", "beta2"),
                ("int", "adam"),
            ),
        ),
        KernelSpec("philox_block", _LAYERS, (("const long long*", "words"), ("long long*", "out"))),
        KernelSpec(
            "dropout_apply",
            _LAYERS,
            (
                ("const T*", "x"),
                ("T*", "y"),
                ("long long", "n"),
                ("long long", "threshold"),
                ("T", "scale"),
                ("long long", "seed_lo"),
                ("long long", "seed_hi"),
                ("long long", "step_lo"),
                ("long long", "step_hi"),
                ("long long", "layer"),
                ("long long", "first"),
            ),
        ),
        KernelSpec(
            "batchnorm_forward",
            _LAYERS,
            (
                ("const T*", "x"),
                ("const T*", "gamma"),
                ("const T*", "beta"),
                ("T*", "running_mean"),
                ("T*", "running_var"),
                ("T*", "y"),
                ("T*", "mean"),
                ("T*", "inv_std"),
                *_BATCHNORM_SHAPE,
                ("T", "momentum"),
                ("T", "eps"),
                ("int", "training"),
            ),
        ),
        KernelSpec(
            "batchnorm_backward",
            _LAYERS,
            (
                ("const T*", "x"),
                ("const T*", "dy"),
                ("const T*", "gamma"),
                ("const T*", "mean"),
                ("const T*", "inv_std"),
                ("T*", "dx"),
                ("T*", "dgamma"),
                ("T*", "dbeta"),
                *_BATCHNORM_SHAPE,
                ("int", "training"),
                ("int", "need_dx"),
            ),
        ),
    )
}
"""Every kernel the backend launches, by name."""


def kernels_in(source: str) -> list[KernelSpec]:
    """The kernels defined in one ``.cu`` file, in table order."""
    source_path(source)
    return [spec for spec in KERNELS.values() if spec.source == source]


def name_expressions(source: str) -> list[str]:
    """Every template instantiation the runtime uses from ``source`` (both dtypes)."""
    return [spec.name_expression(dtype) for spec in kernels_in(source) for dtype in C_TYPES]
