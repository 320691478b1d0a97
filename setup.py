"""Packaging: installs `monarchrt_ops` with the top-level source folders mapped inside it.

`triton_kernels/`, `autotune/` and `tuned_configs/` ship as `monarchrt_ops.triton_kernels`,
`monarchrt_ops.autotune` and `monarchrt_ops.tuned_configs`, so the distribution never claims the
top-level names `triton_kernels` (Triton ships one; vLLM imports it) or `autotune`.
"""

from setuptools import setup

PACKAGE_DIRS = {
    "monarchrt_ops": "monarchrt_ops",
    "monarchrt_ops.backends": "monarchrt_ops/backends",
    "monarchrt_ops.triton_kernels": "triton_kernels",
    "monarchrt_ops.autotune": "autotune",
    "monarchrt_ops.tuned_configs": "tuned_configs",
}

setup(
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"monarchrt_ops.tuned_configs": ["*.json", "README.md"]},
)
