"""Per-row FP8 quantisation (docs/math.md, "FP8 output"), stated once.

``quantize_rows(y, dtype, scale)`` -> ``(q, s)``: ``s`` has shape ``(..., 1)`` in y's dtype and
``q = fp8(clamp(y / s, -fp8_max, fp8_max))`` (round to nearest even), so ``q.float() * s``
approximates ``y`` row by row.

- Automatic scale (``scale=None``): ``s = amax_j |y_j| / fp8_max`` per row, computed in y's dtype
  (one correctly rounded division), except that a row whose ``s`` is 0 (all zeros, or an amax so
  small that the division underflows) gets ``s = 1``: no 0/0, q = RN(y), dequantisation by q * s
  still holds. The row's largest element maps to +-fp8_max. A row with a NaN has a NaN scale.
- Fixed scale (a positive finite float): ``s = scale`` for every row; values beyond
  ``fp8_max * scale`` saturate to +-fp8_max (as Transformer Engine and torchao cast), never to NaN.

This is a PyTorch composition (amax, divide, clamp, cast), not a fused kernel: the Triton
interpreter that the CPU tier tests with cannot store float8 faithfully (triton 3.6: e4m3
subnormals flush to zero, out-of-range values wrap instead of saturating, and e5m2 stores raise),
so a fused epilogue could not be checked here. Fusing it into the Hadamard kernel's store is the
next step (it saves y's write and read).
"""

from __future__ import annotations

import math
import numbers

import torch

# Largest finite value of each supported FP8 format (torch.finfo(dtype).max).
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def check_out_dtype(fn: str, out_dtype, out_scale) -> None:
    """``out_dtype`` (None or a dtype of FP8_MAX) and ``out_scale`` (None, or a positive finite float
    with an FP8 out_dtype); raises TypeError/ValueError naming the argument."""
    if out_dtype is not None:
        if not isinstance(out_dtype, torch.dtype):
            raise TypeError(f"{fn}: out_dtype must be a torch.dtype or None, got {type(out_dtype).__name__}")
        if out_dtype not in FP8_MAX:
            raise ValueError(f"{fn}: out_dtype={out_dtype} is not supported; use None or one of {tuple(FP8_MAX)}")
    if out_scale is None:
        return
    if out_dtype is None:
        raise ValueError(f"{fn}: out_scale={out_scale!r} needs an FP8 out_dtype ({tuple(FP8_MAX)})")
    if isinstance(out_scale, bool) or not isinstance(out_scale, numbers.Real):
        raise TypeError(f"{fn}: out_scale must be a positive finite float or None, got {type(out_scale).__name__}")
    if not (math.isfinite(out_scale) and out_scale > 0):
        raise ValueError(f"{fn}: out_scale={out_scale!r} must be positive and finite")


def quantize_rows(y: torch.Tensor, dtype: torch.dtype, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, s)`` of the module docstring: ``q`` of y's shape in ``dtype``, ``s`` ``(..., 1)`` in y's dtype."""
    fmax = FP8_MAX[dtype]
    if scale is None:
        s = y.abs().amax(dim=-1, keepdim=True) / fmax
        s = torch.where(s == 0, torch.ones_like(s), s)
    else:
        s = torch.full((*y.shape[:-1], 1), float(scale), dtype=y.dtype, device=y.device)
    q = (y / s).clamp(-fmax, fmax).to(dtype)
    return q, s
