"""Launch configuration, dtype dispatch and argument checking of the CUDA launchers: plain Python, no GPU."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import HAS_GPU

from fusednn.kernels import activation_codes
from fusednn.kernels.cuda import launch as launch_module
from fusednn.kernels.cuda.launch import (
    BLOCK_SIZE,
    MAX_GRID_SIZE,
    KernelLauncher,
    bias_grad_rows_per_chunk,
    check_dtype,
    launch_config,
    prepare_args,
)
from fusednn.kernels.cuda.sources import (
    C_TYPES,
    COMPILE_OPTIONS,
    KERNELS,
    SOURCE_FILES,
    compile_defines,
    kernels_in,
    name_expressions,
    source_path,
    source_text,
    specs_in_source,
)


@dataclass
class FakeDevice:
    id: int


@dataclass
class FakeFlags:
    c_contiguous: bool = True


@dataclass
class FakeArray:
    """Just enough of a cupy.ndarray for the launcher's checks."""

    dtype: np.dtype
    device: FakeDevice = field(default_factory=lambda: FakeDevice(0))
    flags: FakeFlags = field(default_factory=FakeFlags)


def fake(dtype: str = "float32", device: int = 0, contiguous: bool = True) -> FakeArray:
    return FakeArray(np.dtype(dtype), FakeDevice(device), FakeFlags(contiguous))


class Recorder:
    """A stand-in for CuPy's get_function that records every launch."""

    def __init__(self) -> None:
        self.fetched: list[str] = []
        self.launches: list[tuple[tuple[int], tuple[int], tuple]] = []

    def get_function(self, spec, dtype):
        self.fetched.append(spec.name_expression(dtype))
        return lambda grid, block, args: self.launches.append((grid, block, args))


def make_launcher(recorder: Recorder, device_id: int = 0) -> KernelLauncher:
    return KernelLauncher(device_id, get_function=recorder.get_function, ndarray_type=FakeArray)


# ----------------------------------------------------------------- launch config


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (0, (1, BLOCK_SIZE)),
        (1, (1, BLOCK_SIZE)),
        (256, (1, 256)),
        (257, (2, 256)),
        (10**10, (MAX_GRID_SIZE, 256)),
    ],
)
def test_launch_config(items, expected):
    assert launch_config(items) == expected


@pytest.mark.parametrize("items", [1, 17, 1000, 123_457, 10**8])
@pytest.mark.parametrize("block", [1, 32, 256, 1024])
def test_launch_config_never_exceeds_limits_and_covers_items_without_stride(items, block):
    grid, got_block = launch_config(items, block_size=block, max_grid=64)
    assert got_block == block and 1 <= grid <= 64
    if grid < 64:  # uncapped: one thread per item, so nothing relies on the grid-stride
        assert (grid - 1) * block < items <= grid * block


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"items": -1}, "items >= 0"),
        ({"items": 5, "block_size": 0}, r"block_size must lie in \[1, 1024\]"),
        ({"items": 5, "block_size": 2048}, r"block_size must lie in \[1, 1024\]"),
        ({"items": 5, "max_grid": 0}, "max_grid must be >= 1"),
    ],
)
def test_launch_config_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        launch_config(**kwargs)


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (17, 3), (1000, 10), (4096, 64), (10, 100_000), (0, 5)])
def test_bias_grad_chunks_cover_every_row_once(rows, cols):
    per_chunk = bias_grad_rows_per_chunk(rows, cols)
    chunks = -(-rows // per_chunk)
    assert per_chunk >= 1
    assert chunks * per_chunk >= rows and (chunks - 1) * per_chunk < max(rows, 1)
    assert chunks * cols <= max(launch_module.BIAS_GRAD_TARGET_ITEMS, cols)


def test_bias_grad_rows_per_chunk_rejects_negative_sizes():
    with pytest.raises(ValueError, match="rows and cols must be >= 0"):
        bias_grad_rows_per_chunk(-1, 3)


# ------------------------------------------------------------------ kernel table


def test_every_kernel_is_defined_in_its_source_file():
    for spec in KERNELS.values():
        assert re.search(rf"__global__ void {spec.name}\(", source_text(spec.source)), spec.name


def test_every_global_in_the_sources_is_in_the_table():
    for source in SOURCE_FILES:
        defined = set(re.findall(r"__global__ void (\w+)\(", source_text(source)))
        assert defined == {spec.name for spec in kernels_in(source)}, source


def test_sources_have_no_include():
    for source in SOURCE_FILES:
        assert not re.search(r"^\s*#\s*include", source_text(source), re.MULTILINE), source


def test_name_expressions_cover_both_dtypes():
    names = [spec.name for spec in specs_in_source("optimizers.cu")]
    assert {"sgd_step", "adam_step", "adamw_step", "lamb_norms", "lamb_step", "lars_norms", "lars_step"} <= set(names)
    assert name_expressions("optimizers.cu") == [f"{name}<{ctype}>" for name in names for ctype in ("float", "double")]


def test_optimizer_signatures_are_read_from_the_source():
    """A kernel's parameters are written once, in optimizers.cu; the table reads them."""
    plain, scheduled = KERNELS["adam_step"], KERNELS["adam_step_scheduled"]
    assert plain.params[:2] == (("T*", "param"), ("const T*", "grad"))
    assert ("const T*", "scalars") in scheduled.params
    assert KERNELS["lamb_step"].params[4:7] == (
        ("const long long*", "items"),
        ("double*", "partials"),
        ("long long", "n_items"),
    )


def test_c_params_substitute_the_float_type():
    spec = KERNELS["softmax_xent_labels"]
    assert spec.c_params(np.float64) == [
        "const double*",
        "const long long*",
        "double*",
        "double*",
        "long long",
        "long long",
        "double",
    ]


def test_source_path_rejects_unknown_files():
    with pytest.raises(ValueError, match="Unknown CUDA source 'nope.cu'"):
        source_path("nope.cu")


def test_defines_mirror_the_python_constants():
    defines = dict(d[2:].split("=", 1) for d in compile_defines())
    for name, code in activation_codes.ACTIVATION_CODES.items():
        assert int(defines[f"FUSEDNN_ACT_{name.upper()}"]) == code
    assert float(defines["FUSEDNN_SELU_ALPHA"]) == activation_codes.SELU_ALPHA
    assert float(defines["FUSEDNN_SELU_SCALE"]) == activation_codes.SELU_SCALE
    assert float(defines["FUSEDNN_LEAKY_RELU_SLOPE"]) == activation_codes.LEAKY_RELU_SLOPE
    assert float(defines["FUSEDNN_ELU_ALPHA"]) == activation_codes.ELU_ALPHA
    assert float(defines["FUSEDNN_SOFTPLUS_THRESHOLD"]) == activation_codes.SOFTPLUS_THRESHOLD
    assert set(compile_defines()) <= set(COMPILE_OPTIONS)


# ------------------------------------------------------------- argument casting


def test_prepare_args_casts_scalars_to_the_exact_c_types():
    spec = KERNELS["adam_step"]
    arrays = [fake("float64") for _ in range(5)]
    args = prepare_args(
        spec,
        np.dtype(np.float64),
        [*arrays, 7, 0.1, 0.9, 0.1, 0.999, 0.001, 1e-8, 0, True],
        ndarray_type=FakeArray,
        device_id=0,
    )
    assert args[:5] == tuple(arrays)
    assert type(args[5]) is np.int64 and args[5] == 7
    assert all(type(a) is np.float64 for a in args[6:13])
    assert type(args[13]) is np.int32 and args[13] == 1


def test_prepare_args_casts_t_to_float32_for_float32_kernels():
    spec = KERNELS["softmax_xent_labels"]
    arrays = [fake("float32"), fake("int64"), fake("float32"), fake("float32")]
    args = prepare_args(
        spec,
        np.dtype(np.float32),
        [*arrays, 3, 4, 1 / 3],
        ndarray_type=FakeArray,
        device_id=0,
    )
    assert type(args[6]) is np.float32 and args[6] == np.float32(1 / 3)
    assert [type(a) for a in args[4:6]] == [np.int64, np.int64]


ACT_ARGS = ("activation_forward", np.float32)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ([fake(), fake(), 4], TypeError, "takes 4 arguments, got 3"),
        (
            [np.zeros(4, np.float32), fake(), 4, 3],
            TypeError,
            "argument 'z' must be a CuPy array, got ndarray",
        ),
        (
            [fake(), fake("float64"), 4, 3],
            TypeError,
            "argument 'h' has dtype 'float64'; expected 'float32'",
        ),
        (
            [fake(contiguous=False), fake(), 4, 3],
            ValueError,
            "argument 'z' must be C-contiguous",
        ),
        (
            [fake(device=1), fake(), 4, 3],
            ValueError,
            "argument 'z' is on cuda:1 but launches on cuda:0",
        ),
        (
            [fake(), fake(), 4.0, 3],
            TypeError,
            "argument 'n' must be an integer, got float",
        ),
        (
            [fake(), fake(), 4, "relu"],
            TypeError,
            "argument 'act' must be an integer, got str",
        ),
        (
            [fake(), fake(), 4, 2**31],
            ValueError,
            "argument 'act' must fit a 32-bit int",
        ),
    ],
)
def test_prepare_args_rejects_bad_arguments(args, error, message):
    with pytest.raises(error, match=re.escape(message)):
        prepare_args(
            KERNELS["activation_forward"],
            np.dtype(np.float32),
            args,
            ndarray_type=FakeArray,
            device_id=0,
        )


@pytest.mark.parametrize("bad", ["0.1", None, True, 1j])
def test_prepare_args_rejects_non_real_scalars(bad):
    arrays = [fake(), fake("int64"), fake(), fake()]
    with pytest.raises(TypeError, match="argument 'inv_n' must be a real number"):
        prepare_args(
            KERNELS["softmax_xent_labels"],
            np.dtype(np.float32),
            [*arrays, 1, 1, bad],
            ndarray_type=FakeArray,
            device_id=0,
        )


def test_labels_must_be_int64():
    arrays = [fake(), fake("int32"), fake(), fake()]
    with pytest.raises(TypeError, match="argument 'labels' has dtype 'int32'; expected 'int64'"):
        prepare_args(
            KERNELS["softmax_xent_labels"],
            np.dtype(np.float32),
            [*arrays, 1, 1, 1.0],
            ndarray_type=FakeArray,
            device_id=0,
        )


# -------------------------------------------------------------------- dispatch


@pytest.mark.parametrize(("dtype", "ctype"), [("float32", "float"), ("float64", "double")])
def test_launcher_dispatches_on_dtype_and_memoises_functions(dtype, ctype):
    recorder = Recorder()
    launch = make_launcher(recorder)
    z, h = fake(dtype), fake(dtype)
    launch("activation_forward", dtype, 1000, z, h, 1000, 3)
    launch("activation_forward", dtype, 10, z, h, 10, 3)
    assert recorder.fetched == [f"activation_forward<{ctype}>"]
    (grid1, block1, args1), (grid2, block2, _) = recorder.launches
    assert (grid1, block1) == ((4,), (256,)) and (grid2, block2) == ((1,), (256,))
    assert args1[0] is z and args1[1] is h and type(args1[2]) is np.int64 and type(args1[3]) is np.int32


def test_launcher_rejects_unknown_kernels_and_dtypes():
    launch = make_launcher(Recorder())
    with pytest.raises(ValueError, match="Unknown CUDA kernel 'conv2d'"):
        launch("conv2d", "float32", 1)
    with pytest.raises(TypeError, match="CUDA kernels exist for float32 and float64, not 'float16'"):
        launch("activation_forward", "float16", 1, fake("float16"), fake("float16"), 1, 0)
    assert check_dtype("float64") == np.float64


def test_launcher_checks_arrays_against_its_own_device():
    recorder = Recorder()
    launch = make_launcher(recorder, device_id=1)
    with pytest.raises(ValueError, match="is on cuda:0 but launches on cuda:1"):
        launch("activation_forward", "float32", 4, fake(device=0), fake(device=0), 4, 0)
    launch("activation_forward", "float32", 4, fake(device=1), fake(device=1), 4, 0)
    assert len(recorder.launches) == 1


def test_every_kernel_dtype_pair_has_a_c_type():
    assert set(C_TYPES) == {np.dtype(np.float32), np.dtype(np.float64)}


# --------------------------------------------------------------- without a GPU


def test_importing_fusednn_and_the_cuda_backend_does_not_import_cupy():
    code = (
        "import sys, fusednn, fusednn.backends.cuda_backend, fusednn.kernels.cuda;"
        "assert 'cupy' not in sys.modules, 'cupy was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(HAS_GPU, reason="checks the error raised where no GPU is usable")
def test_cuda_backend_without_a_gpu_raises_a_clear_runtime_error():
    import fusednn

    with pytest.raises(RuntimeError, match="CuPy|CUDA|GPU"):
        fusednn.backend("cuda")
    assert "cuda:0" not in fusednn.available_devices()


def test_matmul_precision_switch():
    from fusednn.backends import cuda_backend

    assert cuda_backend.get_matmul_precision() == "highest"
    try:
        cuda_backend.set_matmul_precision("tf32")
        assert cuda_backend.get_matmul_precision() == "tf32"
    finally:
        cuda_backend.set_matmul_precision("highest")
    with pytest.raises(
        ValueError,
        match=r"Unknown matmul precision 'medium'; expected one of \('highest', 'tf32'\)",
    ):
        cuda_backend.set_matmul_precision("medium")


def test_load_fetches_every_kernel_once_before_any_launch():
    recorder = Recorder()
    launch = make_launcher(recorder)
    launch.load("float32")
    assert recorder.fetched == [spec.name_expression(np.dtype(np.float32)) for spec in KERNELS.values()]
    assert recorder.launches == []
    launch("activation_forward", "float32", 4, fake(), fake(), 4, 0)
    assert len(recorder.fetched) == len(KERNELS) and len(recorder.launches) == 1


def test_reduction_chunks_are_about_the_square_root_and_capped():
    assert [launch_module.reduction_chunks(n) for n in (0, 1, 15, 16, 10**6, 10**8)] == [1, 1, 3, 4, 1000, 1024]
    with pytest.raises(ValueError, match="n must be >= 0"):
        launch_module.reduction_chunks(-1)


def test_every_public_operation_of_the_cuda_backend_runs_with_its_gpu_current():
    """The class body says what runs: each public Backend method is defined or re-bound there with on_device."""
    from fusednn.backends.base import Backend
    from fusednn.backends.cuda_backend import CudaBackend

    public = [name for name, member in vars(Backend).items() if not name.startswith("_") and callable(member)]
    assert len(public) > 20
    missing = [
        name
        for name in public
        # activate returns the context that makes the GPU current; trusted hands out on-device callables
        if name not in ("activate", "trusted") and not getattr(CudaBackend.__dict__.get(name), "runs_on_device", False)
    ]
    assert missing == []
