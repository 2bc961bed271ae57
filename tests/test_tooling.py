"""The checks CI runs through the test command: ruff on the repository, and fusednn's doctests.

``python -m pytest`` (the README's and ``.ci/run``'s command) is the only thing CI runs, so the
lint and format checks are tests here, and the doctests are collected by ``--doctest-modules``
over the ``fusednn`` test path (``pyproject.toml``). Each check is also run on a temporary copy
of the repository with an error planted in it, to show that it fails when it should.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

needs_ruff = pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None,
    reason="ruff is not installed (it is in the test extra: pip install -e '.[test]')",
)


def ruff(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ruff <args> .`` in ``root``, with the configuration of ``root/pyproject.toml``."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "."], cwd=root, capture_output=True, text=True, timeout=120
    )


def copy_of_repository(tmp_path: Path) -> Path:
    """The package and its ``pyproject.toml`` copied under ``tmp_path`` (no caches, no tests)."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "fusednn", copy / "fusednn", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


@needs_ruff
@pytest.mark.parametrize("args", [("check",), ("format", "--check")], ids=["check", "format"])
def test_ruff_passes_on_the_repository(args: tuple[str, ...]) -> None:
    result = ruff(ROOT, *args)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_ruff
def test_ruff_check_fails_on_a_planted_lint_error(tmp_path: Path) -> None:
    copy = copy_of_repository(tmp_path)
    assert ruff(copy, "check").returncode == 0
    planted = copy / "fusednn" / "nn" / "metrics.py"
    planted.write_text("import os\n" + planted.read_text(), encoding="utf-8")
    result = ruff(copy, "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "F401" in result.stdout and "metrics.py" in result.stdout


@needs_ruff
def test_ruff_format_check_fails_on_planted_formatting(tmp_path: Path) -> None:
    copy = copy_of_repository(tmp_path)
    assert ruff(copy, "format", "--check").returncode == 0
    planted = copy / "fusednn" / "nn" / "metrics.py"
    planted.write_text(planted.read_text(encoding="utf-8") + "\nPLANTED={ 'a':1 }\n", encoding="utf-8")
    result = ruff(copy, "format", "--check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "metrics.py" in result.stdout + result.stderr


def test_the_test_command_fails_on_a_planted_bad_docstring_example(tmp_path: Path) -> None:
    # The plain `python -m pytest`, run in a copy with the repository's pytest configuration: it
    # must collect the package's doctests by itself (testpaths and --doctest-modules), so no path
    # or flag is given here; -k only keeps it from running every other example.
    copy = copy_of_repository(tmp_path)
    planted = copy / "fusednn" / "kernels" / "cuda" / "launch.py"
    text = planted.read_text(encoding="utf-8")
    example = "    >>> launch_config(1000)\n    (4, 256)\n"
    assert example in text
    planted.write_text(text.replace(example, "    >>> launch_config(1000)\n    (5, 256)\n"), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "launch_config"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert "[doctest] fusednn.kernels.cuda.launch.launch_config" in result.stdout
    assert "Expected:\n    (5, 256)\nGot:\n    (4, 256)" in result.stdout
