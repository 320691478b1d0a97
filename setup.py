"""Packaging: installs `monarchrt_ops` with the top-level source folders mapped inside it, and
builds the CUDA extension `monarchrt_ops._C` through CMakeLists.txt (the build of record).

`triton_kernels/`, `autotune/`, `tuned_configs/` and `bench/` ship as `monarchrt_ops.triton_kernels`,
`monarchrt_ops.autotune`, `monarchrt_ops.tuned_configs` and `monarchrt_ops.bench`, so the distribution never claims the
top-level names `triton_kernels` (Triton ships one; vLLM imports it) or `autotune`.

CUDA build: MONARCHRT_BUILD_CUDA=1 requires it (a failure fails the install), =0 skips it, unset
builds it when nvcc is on PATH and pybind11 and nvidia-cutlass are importable, else skips it with
a message. MONARCHRT_CUDA_ARCHS (default "90a;100a;120a") is the one list of architectures.
"""

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


def cuda_build_wanted() -> tuple[bool, bool]:
    """(build it, a failure is fatal)."""
    flag = os.environ.get("MONARCHRT_BUILD_CUDA")
    if flag is not None:
        return flag == "1", flag == "1"
    return shutil.which("nvcc") is not None, False


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        _, required = cuda_build_wanted()
        try:
            import cutlass_library  # noqa: F401  (headers only)
            import pybind11  # noqa: F401
        except ImportError as e:
            if required:
                raise
            print(f"monarchrt_ops: skipping the CUDA extension ({e}); pip install pybind11 nvidia-cutlass")
            return
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


build, _ = cuda_build_wanted()
setup(
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"monarchrt_ops.tuned_configs": ["*.json", "README.md"]},
    ext_modules=[Extension("monarchrt_ops._C", sources=[])] if build else [],
    cmdclass={"build_ext": CMakeBuild},
)
