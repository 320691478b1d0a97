"""Hadamard transform over the last dim: ``hadamard(x) = x @ H_n^T * scale`` (docs/math.md)."""

from __future__ import annotations

import math
import numbers

import torch

from . import ops
from .hadamard_matrices import MAX_POW2, MAX_SPECIAL_POW2, supported_size  # noqa: F401  (public names)
from .limits import HADAMARD_DTYPES, check_hadamard_input  # noqa: F401  (HADAMARD_DTYPES: a public name)
from .registry import backend_names


def _check(x, scale, backend) -> tuple[float, str]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"hadamard: x must be a torch.Tensor, got {type(x).__name__}")
    check_hadamard_input(x)
    if scale is None:
        scale = 1.0 / math.sqrt(x.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"hadamard: scale must be a finite float or None, got {type(scale).__name__} {scale!r}")
    elif not math.isfinite(scale):
        raise ValueError(f"hadamard: scale={scale!r} must be finite")
    if backend is not None and backend not in backend_names("hadamard"):
        raise ValueError(f"backend={backend!r} is not one of {backend_names('hadamard')} (or None for automatic)")
    return float(scale), backend or ""


@ops.traceable_errors
def hadamard(
    x: torch.Tensor, scale: float | None = None, *, fp32_intermediate: bool = False, backend: str | None = None
) -> torch.Tensor:
    """``x @ H_n^T * scale`` over the last dim.

    Args:
        x: ``(..., n)``, fp16/bf16/fp32, or float64 (reference backend). Kernels accumulate each
            Hadamard factor's products in fp32; half inputs are rounded to their dtype between
            factors (as HadaCore does), and the reference computes in fp32 throughout.
            n = 2^k (2 <= n <= 65536) or m*2^k with m in (12, 20, 28, 40) (see hadamard_matrices.py
            for which H_m) and 2^k <= 4096.
        scale: default ``1/sqrt(n)``, which makes the transform an isometry and, for powers of two,
            its own inverse.
        fp32_intermediate: keep fp16/bf16 values in fp32 between Hadamard factors (and passes);
            one rounding at the end instead of one per factor, at the cost of fp32 products.
        backend: 'reference', 'triton' or None (automatic).

    Returns a new tensor of x's shape and dtype; differentiable (the backward applies H_n, the transpose).

    Example:
        >>> x = torch.randn(4, 256)
        >>> torch.allclose(hadamard(hadamard(x)), x, atol=1e-5)
        True
    """
    scale, backend = _check(x, scale, backend)
    return ops.call_hadamard(x, scale, False, bool(fp32_intermediate), backend)


@ops.traceable_errors
def hadamard_(
    x: torch.Tensor, scale: float | None = None, *, fp32_intermediate: bool = False, backend: str | None = None
) -> None:
    """In-place :func:`hadamard`: overwrites ``x`` and returns None (an aliasing return would break
    CUDA graphs). Not differentiable: raises if x requires grad. x must be contiguous."""
    scale, backend = _check(x, scale, backend)
    if x.requires_grad:
        raise ValueError("hadamard_: x requires grad; use hadamard(x) for autograd")
    if not x.is_contiguous():
        raise ValueError("hadamard_: x must be contiguous to be transformed in place")
    ops.call_hadamard_(x, scale, False, bool(fp32_intermediate), backend)
