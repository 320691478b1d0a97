"""Hadamard transform over the last dim: ``hadamard(x) = x @ H_n^T * scale`` (docs/math.md), with the
opt-in zero padding of fast-hadamard-transform (``pad=True``) and an FP8 output with per-row scales
(``out_dtype``)."""

from __future__ import annotations

import math
import numbers

import torch

from . import ops
from .fp8 import check_out_dtype, quantize_rows
from .hadamard_matrices import MAX_POW2, MAX_SPECIAL_POW2, padded_size, supported_size  # noqa: F401  (public names)
from .limits import HADAMARD_DTYPES, check_hadamard_input, check_hadamard_scale  # noqa: F401  (HADAMARD_DTYPES: a public name)
from .registry import _generation as registry_generation
from .registry import _state as registry_state
from .registry import backend_names


def _is_bool(value) -> bool:
    """A Python bool or a numpy one (``np.bool_``, what comparisons of numpy values return)."""
    kind = type(value)
    return kind is bool or (kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"))


def _check(x, scale, backend, pad=False) -> tuple[float, str]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"hadamard: x must be a torch.Tensor, got {type(x).__name__}")
    if not _is_bool(pad):
        raise TypeError(f"hadamard: pad must be a bool, got {type(pad).__name__} {pad!r}")
    pad = bool(pad)
    check_hadamard_input(x, check_size=not pad)
    if pad and not 1 <= x.shape[-1] <= MAX_POW2:
        raise ValueError(f"hadamard: pad=True takes a last dim n in 1..{MAX_POW2}, got n={x.shape[-1]}")
    if scale is None:
        scale = 1.0 / math.sqrt(padded_size(x.shape[-1]) if pad else x.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"hadamard: scale must be a finite float or None, got {type(scale).__name__} {scale!r}")
    else:
        check_hadamard_scale(scale)
    if backend is not None and backend not in backend_names("hadamard"):
        raise ValueError(f"backend={backend!r} is not one of {backend_names('hadamard')} (or None for automatic)")
    return float(scale), backend or ""


# per argument key (_call_key) of the plain call (no pad, no FP8 output): its checked scale and backend,
# and the eager fast path's prepared launch (ops.CallEntry)
_CALLS: dict[tuple, ops.CallEntry] = {}
_MAX_CALLS = 4096
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_SCALE_TYPES = (float, int, type(None))


def _call_key(x, scale, fp32_intermediate, backend) -> tuple | None:
    """The key of a plain call whose checks may be cached, or None: x a plain tensor (its exact type in
    the key), scale a builtin float, int or None and fp32_intermediate a bool (their types in the key:
    1 == 1.0 == True), backend a str or None; the registry's generation for the backends' names. The
    checks read nothing else; the strides are in it for the prepared launch, which reads x's layout
    from the key."""
    if type(x) not in _PLAIN or type(scale) not in _SCALE_TYPES or type(fp32_intermediate) is not bool:
        return None
    if backend is not None and type(backend) is not str:
        return None
    return (type(x), x.shape, x.stride(), x.dtype, x.device, scale, type(scale), fp32_intermediate, backend,
            registry_generation[0])  # fmt: skip


@ops.traceable_errors
def hadamard(
    x: torch.Tensor,
    scale: float | None = None,
    *,
    fp32_intermediate: bool = False,
    backend: str | None = None,
    pad: bool = False,
    out_dtype: torch.dtype | None = None,
    out_scale: float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``x @ H_n^T * scale`` over the last dim.

    Args:
        x: ``(..., n)``, fp16/bf16/fp32, or float64 (reference backend). Kernels accumulate each
            Hadamard factor's products in fp32; half inputs are rounded to their dtype between
            factors (as HadaCore does), and the reference computes in fp32 throughout.
            n = 2^k (2 <= n <= 65536) or m*2^k with m in (12, 20, 28, 40) (see hadamard_matrices.py
            for which H_m) and 2^k <= 4096; any 1 <= n <= 65536 with ``pad=True``.
        scale: default ``1/sqrt(n)`` (``1/sqrt(N)`` with ``pad=True``), which makes the transform an
            isometry and, for powers of two, its own inverse.
        fp32_intermediate: keep fp16/bf16 values in fp32 between Hadamard factors (and passes);
            one rounding at the end instead of one per factor, at the cost of fp32 products.
        backend: 'reference', 'triton' or None (automatic).
        pad: fast-hadamard-transform's convention for any n: zero-pad the last dim to
            ``N = 2^ceil(log2 n)``, apply the Sylvester ``H_N``, keep the first n outputs; that is
            ``x @ H_N[:n, :n]^T * scale``. Always the power of two, also where n itself is supported
            (n = 40 with pad=True uses H_64's corner, not H_40). Note the default scale: here
            ``1/sqrt(N)``; fast-hadamard-transform's ``hadamard_transform(x, scale=1.0)`` defaults
            to 1, so pass its scale explicitly to port a call. Unfused: pads a copy of x.
        out_dtype: ``torch.float8_e4m3fn`` or ``torch.float8_e5m2`` to return ``(q, s)``: the
            transform y (computed in fp32, float64 for a float64 x) quantised per row, q in out_dtype
            with ``q.float() * s ~= y``, s ``(..., 1)`` in y's dtype (monarchrt_ops/fp8.py states the
            rounding and the zero-row rule). Not differentiable: raises if x requires grad.
            Unfused: y is written, then quantised.
        out_scale: with an FP8 out_dtype, a fixed positive scale for every row instead of the per-row
            ``amax / fp8_max``; values beyond ``fp8_max * out_scale`` saturate.

    Returns a new tensor of x's shape and dtype, differentiable (the backward applies the transpose:
    H_n^T, or with ``pad=True`` the gradient padded, transformed by H_N and cut to n); or, with
    ``out_dtype``, the pair ``(q, s)``.

    Example:
        >>> x = torch.randn(4, 256)
        >>> torch.allclose(hadamard(hadamard(x)), x, atol=1e-5)
        True
        >>> hadamard(torch.randn(4, 100), pad=True).shape
        torch.Size([4, 100])
    """
    key = None
    if pad is False and out_dtype is None and out_scale is None and not torch.compiler.is_compiling():
        key = _call_key(x, scale, fp32_intermediate, backend)
    call = _CALLS.get(key) if key is not None else None
    if call is not None and ops.ready(call, x):  # the eager fast path: the launch prepared for this key
        return call.run(x)
    if call is None:
        scale, backend = _check(x, scale, backend, pad)
        check_out_dtype("hadamard", out_dtype, out_scale)
        if key is not None:
            if len(_CALLS) >= _MAX_CALLS:
                _CALLS.clear()
            call = _CALLS[key] = ops.CallEntry((scale, backend))
    else:
        scale, backend = call.checked
    fp32_intermediate = bool(fp32_intermediate)
    if call is not None and call.state != registry_state() and ops.eager(x):  # asked once per registry state
        call.state, call.run = ops.prepare_hadamard(x, scale, False, fp32_intermediate, backend)
        if call.run is not None:
            return call.run(x)
    if out_dtype is not None:
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"hadamard: out_dtype={out_dtype} is not differentiable and x requires grad; "
                f"call it on x.detach() or under torch.no_grad()"
            )
        x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)  # y in fp32 (fp8.py)
    n = x.shape[-1]
    size = max(padded_size(n), 2) if pad else n  # n = 1: H_2's corner is H_1's [1]
    if size == n:
        y = ops.call_hadamard(x, scale, False, fp32_intermediate, backend)
    else:
        # x @ H_N[:n, :n]^T: autograd of pad and slice gives the transpose (pad dy, H_N^T, cut to n)
        xp = torch.nn.functional.pad(x, (0, size - n))
        y = ops.call_hadamard(xp, scale, False, fp32_intermediate, backend)[..., :n].contiguous()
    return y if out_dtype is None else quantize_rows(y, out_dtype, out_scale)


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
