"""Packaging: installs `monarchrt_ops` with the top-level source folders mapped inside it, and
builds the CUDA extension `monarchrt_ops._C` through CMakeLists.txt (the build of record).

`triton_kernels/`, `autotune/`, `tuned_configs/` and `bench/` ship as `monarchrt_ops.triton_kernels`,
`monarchrt_ops.autotune`, `monarchrt_ops.tuned_configs` and `monarchrt_ops.bench`, so the distribution never claims the
top-level names `triton_kernels` (Triton ships one; vLLM imports it) or `autotune`.

CUDA build: MONARCHRT_BUILD_CUDA=1 requires it (a missing prerequisite or a failed build fails the
install), =0 skips it, unset builds it when nvcc is on PATH and pybind11 and nvidia-cutlass are
importable, else skips it with one line saying what is missing. MONARCHRT_CUDA_ARCHS (default
"90a;100a;120a") is the one list of architectures.
"""

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PACKAGE_DIRS = {
    "monarchrt_ops": "monarchrt_ops",
    "monarchrt_ops.backends": "monarchrt_ops/backends",
    "monarchrt_ops.integrations": "monarchrt_ops/integrations",
    "monarchrt_ops.triton_kernels": "triton_kernels",
    "monarchrt_ops.autotune": "autotune",
    "monarchrt_ops.tuned_configs": "tuned_configs",
    "monarchrt_ops.bench": "bench",
}
CUDA_ARCHS = os.environ.get("MONARCHRT_CUDA_ARCHS", "90a;100a;120a")


def cuda_build_plan() -> bool:
    """Whether to build the extension; decided before setup() so that a skipped build declares no
    extension (declaring one and then skipping it fails an editable install: "can't copy _C...so").
    MONARCHRT_BUILD_CUDA=1 with a prerequisite missing stops the install with the reason."""
    flag = os.environ.get("MONARCHRT_BUILD_CUDA")
    if flag == "0":
        return False
    missing = [] if shutil.which("nvcc") else ["nvcc on PATH"]
    for module, dist in (("pybind11", "pybind11"), ("cutlass_library", "nvidia-cutlass")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing and flag == "1":
        sys.exit(f"monarchrt_ops: MONARCHRT_BUILD_CUDA=1 but {', '.join(missing)} missing")
    if missing:
        print(f"monarchrt_ops: skipping the CUDA extension (missing {', '.join(missing)}); "
              "pip install pybind11 nvidia-cutlass with nvcc on PATH to build it")  # fmt: skip
        return False
    return True


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(
            ["cmake", "-S", str(Path(__file__).resolve().parent), "-B", str(build_dir), *generator,
             f"-DPython3_EXECUTABLE={sys.executable}", f"-DMONARCHRT_CUDA_ARCHS={CUDA_ARCHS}",
             f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}", "-DCMAKE_BUILD_TYPE=Release"],
            check=True,
        )  # fmt: skip
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel"], check=True)


build = cuda_build_plan()
setup(
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"monarchrt_ops.tuned_configs": ["*.json", "README.md"]},
    ext_modules=[Extension("monarchrt_ops._C", sources=[])] if build else [],
    cmdclass={"build_ext": CMakeBuild},
)
