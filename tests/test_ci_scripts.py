"""The CI entry points under ``.ci/``: they parse, and the GPU script refuses to pass vacuously without a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import HAS_GPU

CI = Path(__file__).resolve().parent.parent / ".ci"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


@pytest.mark.parametrize("script", ["run", "gpu"])
def test_script_is_valid_bash(script: str) -> None:
    result = subprocess.run([BASH, "-n", str(CI / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(HAS_GPU, reason="on a GPU machine the script would run the whole suite")
def test_gpu_script_without_a_gpu_runs_nothing_and_says_why(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name != "PYTHON"}  # the script's interpreter override
    result = subprocess.run(
        [BASH, str(CI / "gpu"), str(tmp_path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 3
    assert "no usable CUDA GPU" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_ci_runs_the_readme_test_command() -> None:
    readme = (CI.parent / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python -m pip install")]
    assert len(commands) == 2, commands  # one runs the main job, one the tests
    ci = (CI / "run").read_text().strip().splitlines()[-1]
    assert ci.replace("pip install -q ", "pip install ") == commands[1]
    assert "distributed" in commands[1]  # the two-rank MPI tests run in CI
