"""The activation functions every kernel understands, and their integer codes.

CPU and CUDA kernels take the activation as a small integer so one
parameterised kernel serves every activation. The order of ``ACTIVATIONS`` is
the contract between the backends and the kernels: never reorder it, only append.
"""

ACTIVATIONS: tuple[str, ...] = (
    "identity",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "softplus",
)
"""Activation names in code order: ``ACTIVATIONS[code] == name``."""

ACTIVATION_CODES: dict[str, int] = {name: code for code, name in enumerate(ACTIVATIONS)}
"""Name to integer code, the inverse of :data:`ACTIVATIONS`."""

ACTIVATIONS_TABLE = f"{__name__}.ACTIVATIONS"
"""Where the codes are defined, as :class:`~fusednn.kernels.errors.UnknownCodeError` names it."""

LEAKY_RELU_SLOPE = 0.01
"""Negative slope of ``leaky_relu`` (PyTorch's default)."""

ELU_ALPHA = 1.0
"""``alpha`` of ``elu`` (PyTorch's default)."""

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
"""SELU constants from Klambauer et al. (2017), as PyTorch uses them."""

SOFTPLUS_THRESHOLD = 20.0
"""Above this input softplus returns its input unchanged (PyTorch's default)."""
