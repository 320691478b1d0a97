"""Limits of the op arguments that every backend shares, and the cheap checks the torch ops run
themselves (a direct ``torch.ops`` call or a compiled graph skips the public functions), stated once.

These bound what the public functions and the torch ops accept at all. Kernels state narrower
limits of their own through ``supports()``, which automatic selection asks first: the Triton
backend in backends/triton.py, the CUDA extension in ``csrc/kernel_limits.h`` (its launchers and
``supports()`` run the same checks, ``_C.<kernel>_reason``; ``backends.cuda.cuda_limits()`` reports
them: head_dim, tile sizes, sm_scale range, shared memory, grid sizes). Every check here raises
ValueError/TypeError naming the argument, touches no device memory, and runs in the ops' fake impls too.
"""

from __future__ import annotations

import torch

from .hadamard_matrices import supported_size

MAX_HEAD_DIM = 256  # the reference takes any size; kernels take 64/128 (supports())
# VMonarch-style alternating updates converge in a handful of iterations; a bound keeps a typo
# (num_iters=2**40) from running for ever.
MAX_NUM_ITERS = 16
# Softmax scale per input dtype: large enough for any sensible temperature, small enough that the
# fp32 logits stay finite. (The fused CUDA kernel states its own range, csrc/kernel_limits.h.)
SM_SCALE_RANGE = {
    torch.float16: (1e-20, 1e8),
    torch.bfloat16: (1e-20, 1e8),
    torch.float32: (1e-20, 1e8),
    torch.float64: (1e-300, 1e150),
}


def check_attention_params(sm_scale, causal_block_tiles, num_iters, dtype) -> None:
    """The checks the torch op runs itself (a direct ``torch.ops`` call skips the public
    functions): cheap, no device access; raises ValueError naming the argument."""
    if not 1 <= num_iters <= MAX_NUM_ITERS:
        raise ValueError(f"num_iters={num_iters} must be in 1..{MAX_NUM_ITERS}")
    if causal_block_tiles < 0:
        raise ValueError(f"causal_block_tiles={causal_block_tiles} must be >= 0 (0: no mask)")
    lo, hi = SM_SCALE_RANGE.get(dtype, SM_SCALE_RANGE[torch.float32])
    if not lo <= sm_scale <= hi:
        raise ValueError(f"sm_scale={sm_scale} must be in [{lo:g}, {hi:g}] for {dtype}")


HADAMARD_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_SUPPORTED_SIZES: set[int] = set()


def check_hadamard_input(x, check_size: bool = True) -> None:
    """x's dtype, rank and (unless ``check_size`` is False: ``hadamard(..., pad=True)``, which pads it)
    last dim for the Hadamard transform. A symbolic last dim (a fake impl traced with dynamic shapes)
    is left to the eager impl, which sees the concrete size."""
    if x.dtype not in HADAMARD_DTYPES:
        raise TypeError(f"hadamard: x.dtype={x.dtype} is not supported; use one of {HADAMARD_DTYPES}")
    if x.dim() == 0:
        raise ValueError("hadamard: x must have at least one dimension")
    n = x.shape[-1]
    if check_size and not isinstance(n, torch.SymInt) and n not in _SUPPORTED_SIZES:
        supported_size(n)  # raises for an unsupported n
        _SUPPORTED_SIZES.add(n)  # every eager call asks: remember the sizes that passed


def check_monarch_matmul(x, w1, w2) -> None:
    """Ranks, block sizes, shapes, dtypes and devices of ``monarch_matmul(x, w1 (k, q, p), w2 (l, s, r))``."""
    for name, t in (("w1", w1), ("w2", w2)):
        if t.dim() != 3:
            raise ValueError(f"monarch_matmul: {name} must be 3-D, got shape {tuple(t.shape)}")
    if x.dim() < 1:
        raise ValueError("monarch_matmul: x must have a last dim")
    if not (x.dtype == w1.dtype == w2.dtype) or not x.is_floating_point():
        raise TypeError(f"monarch_matmul: x, w1, w2 must share a float dtype, got {x.dtype}, {w1.dtype}, {w2.dtype}")
    if not (x.device == w1.device == w2.device):
        raise ValueError(f"monarch_matmul: x, w1, w2 must be on one device, got {x.device}, {w1.device}, {w2.device}")
    for name, t, dims in (("w1", w1, "(k, q, p)"), ("w2", w2, "(l, s, r)")):
        if min(t.shape) < 1:
            raise ValueError(
                f"monarch_matmul: {name} {dims} = {tuple(t.shape)} has a zero block size; all must be >= 1"
            )
    k, q, p = w1.shape
    l, s, r = w2.shape
    if x.shape[-1] != k * p:
        raise ValueError(f"monarch_matmul: x's last dim {x.shape[-1]} != k*p = {k}*{p} of w1 {tuple(w1.shape)}")
    if l * r != k * q:
        raise ValueError(f"monarch_matmul: w2 {tuple(w2.shape)} needs l*r = k*q = {k * q}, got {l}*{r}")
