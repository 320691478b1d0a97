"""Hadamard transform over the last dim: ``hadamard(x) = x @ H_n^T * scale`` (docs/math.md)."""

from __future__ import annotations

import math

import torch

from . import ops
from .hadamard_matrices import SPECIAL_ORDERS, factor
from .registry import backend_names

MAX_POW2 = 1 << 16
MAX_SPECIAL_POW2 = 1 << 12  # n = m * 2^k with k <= 12
HADAMARD_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def supported_size(n: int) -> tuple[int, int]:
    """n -> (m, 2^k) as ``factor`` splits it, or ValueError naming what is accepted. The limit on 2^k
    applies to the documented form m * 2^k: 40 * 4096 is accepted though ``factor`` splits it as 20 * 8192."""
    f = factor(n) if isinstance(n, int) and n >= 1 else None
    special_ok = any(n % m == 0 and _is_pow2(n // m) and n // m <= MAX_SPECIAL_POW2 for m in SPECIAL_ORDERS)
    if f is None or (f[0] == 1 and n > MAX_POW2) or (f[0] > 1 and not special_ok):
        raise ValueError(
            f"hadamard: last dim n={n} is not supported; use 2^k (2 <= n <= {MAX_POW2}) or m*2^k with "
            f"m in {SPECIAL_ORDERS} and 2^k <= {MAX_SPECIAL_POW2}"
        )
    return f


_sizes: dict[int, tuple[int, int]] = {}


def _supported_size(n: int) -> tuple[int, int]:
    """:func:`supported_size`, remembered per n in eager calls (every call asks)."""
    if torch.compiler.is_compiling():
        return supported_size(n)
    found = _sizes.get(n)
    if found is None:
        found = _sizes[n] = supported_size(n)  # raises for an unsupported n (nothing is stored)
    return found


def _check(x, scale, backend) -> tuple[int, int, float, str]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"hadamard: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in HADAMARD_DTYPES:
        raise TypeError(f"hadamard: x.dtype={x.dtype} is not supported; use one of {HADAMARD_DTYPES}")
    if x.dim() == 0:
        raise ValueError("hadamard: x must have at least one dimension")
    n = x.shape[-1]
    m, n2 = _supported_size(n)
    if scale is None:
        scale = 1.0 / math.sqrt(n)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"hadamard: scale must be a finite float or None, got {scale!r}")
    if backend is not None and backend not in backend_names("hadamard"):
        raise ValueError(f"backend={backend!r} is not one of {backend_names('hadamard')} (or None for automatic)")
    return m, n2, float(scale), backend or ""


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
    m, n2, scale, backend = _check(x, scale, backend)
    return ops.call_hadamard(x, scale, False, bool(fp32_intermediate), backend)


def hadamard_(
    x: torch.Tensor, scale: float | None = None, *, fp32_intermediate: bool = False, backend: str | None = None
) -> None:
    """In-place :func:`hadamard`: overwrites ``x`` and returns None (an aliasing return would break
    CUDA graphs). Not differentiable: raises if x requires grad. x must be contiguous."""
    m, n2, scale, backend = _check(x, scale, backend)
    if x.requires_grad:
        raise ValueError("hadamard_: x requires grad; use hadamard(x) for autograd")
    if not x.is_contiguous():
        raise ValueError("hadamard_: x must be contiguous to be transformed in place")
    ops.call_hadamard_(x, scale, False, bool(fp32_intermediate), backend)
