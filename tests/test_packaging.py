"""Install without the CUDA prerequisites: with nvcc on PATH but nvidia-cutlass missing, an editable
build skips the extension with one line (it used to fail: "can't copy ... _C...so"); with
MONARCHRT_BUILD_CUDA=1 it stops with the reason. Runs setuptools' PEP 660 hook on a copy of the tree."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREE = ["setup.py", "pyproject.toml", "CMakeLists.txt", "README.md", "monarchrt_ops", "triton_kernels",
        "autotune", "tuned_configs", "bench"]  # fmt: skip


@pytest.fixture
def tree_without_cutlass(tmp_path):
    copy = tmp_path / "tree"
    copy.mkdir()
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy(src, copy / name)
    hide = tmp_path / "hide"  # a cutlass_library that cannot be imported
    hide.mkdir()
    (hide / "cutlass_library.py").write_text("raise ImportError('nvidia-cutlass is not installed')\n")
    fake_bin = tmp_path / "bin"  # an nvcc on PATH
    fake_bin.mkdir()
    (fake_bin / "nvcc").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "nvcc").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MONARCHRT_BUILD_CUDA"}
    env.update(PYTHONPATH=str(hide), PATH=f"{fake_bin}{os.pathsep}{env.get('PATH', '')}")
    return copy, env, tmp_path / "wheel"


def _build_editable(copy, env, out):
    out.mkdir(exist_ok=True)
    code = "import sys, setuptools.build_meta as b; print(b.build_editable(sys.argv[1]))"
    return subprocess.run([sys.executable, "-c", code, str(out)], cwd=copy, env=env, capture_output=True, text=True)


def test_editable_build_skips_the_extension_when_cutlass_is_missing(tree_without_cutlass):
    copy, env, out = tree_without_cutlass
    run = _build_editable(copy, env, out)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "skipping the CUDA extension (missing nvidia-cutlass)" in run.stdout + run.stderr
    assert list(out.glob("monarchrt_ops-*.whl"))


def test_required_cuda_build_names_what_is_missing(tree_without_cutlass):
    copy, env, out = tree_without_cutlass
    run = _build_editable(copy, {**env, "MONARCHRT_BUILD_CUDA": "1"}, out)
    assert run.returncode != 0
    assert "MONARCHRT_BUILD_CUDA=1 but nvidia-cutlass missing" in run.stdout + run.stderr
