"""The ``cuda`` backend: kernels of the compiled extension ``monarchrt_ops._C`` (csrc/).

The extension takes raw pointers, strides and the current stream, so it needs no torch headers
and works across torch versions. cuda-python has no job here: torch already reads the device
properties we need, and pybind11 loads the module, so there is no cubin to load by hand.
"""

from __future__ import annotations

import functools

import torch

from ..arch import Arch
from ..registry import NoConfig

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1}


@functools.cache
def extension():
    """(module, None) or (None, reason it cannot be used)."""
    try:
        from .. import _C
    except ImportError as e:
        return None, f"the CUDA extension monarchrt_ops._C is not built ({e}); reinstall with nvcc on PATH"
    return _C, None


def arch_reason(arch: Arch) -> str | None:
    """Why the extension cannot run on ``arch`` (None: it can)."""
    module, reason = extension()
    if module is None:
        return reason
    if not arch.is_cuda:
        return f"no CUDA device ({arch.family})"
    built = module.compiled_archs()
    major, minor = arch.capability
    if f"{major}{minor}a" not in built and f"{major}{minor}" not in built:
        return f"the extension was built for sm_{', sm_'.join(built)}; this device is sm_{major}{minor}"
    return None


class CudaHadamard(NoConfig):
    name = "cuda"
    # Measured on an H100 (bench/results/h100-hadamard-v1.json): 16-51 % of clone bandwidth against
    # Triton's 52-99 %, so automatic selection passes it over; backend="cuda" still runs it.
    auto = False
    auto_reason = "slower than the Triton kernel on sm_90 (bench/NOTES.md); explicit backend='cuda' only"

    def supports(self, problem, arch: Arch) -> str | None:
        reason = arch_reason(arch)
        if reason is not None:
            return reason
        if problem.dtype not in _DTYPE_CODES:
            return f"dtype {problem.dtype} is not fp16/bf16"
        if problem.m != 1 or not 256 <= problem.n <= 32768:
            return f"n={problem.n}: the CUDA kernel takes powers of two 256..32768"
        if problem.fp32_intermediate:
            return "the CUDA kernel rounds to the input dtype between factors (no fp32_intermediate)"
        return None

    def launch(self, config, x2d, out2d, *, m, n2, scale, transpose, fp32_intermediate=False):
        module, _ = extension()
        src = x2d if x2d.data_ptr() % 16 == 0 else x2d.clone()  # 16-byte vector loads
        dst = out2d if out2d.data_ptr() % 16 == 0 else torch.empty_like(out2d)
        module.hadamard_pow2(
            src.data_ptr(), dst.data_ptr(), src.shape[0], src.shape[1], src.stride(0), dst.stride(0), scale,
            _DTYPE_CODES[src.dtype], torch.cuda.current_stream(src.device).cuda_stream,
        )  # fmt: skip
        if dst is not out2d:
            out2d.copy_(dst)
        return out2d
