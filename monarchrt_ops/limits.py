"""Limits of the attention arguments that every backend shares, stated once.

These bound what the public functions and the torch ops accept at all. Kernels state narrower
limits of their own through ``supports()``, which automatic selection asks first: the Triton
backend in backends/triton.py, the CUDA extension in ``csrc/kernel_limits.h`` (its launchers and
``supports()`` run the same checks, ``_C.<kernel>_reason``; ``backends.cuda.cuda_limits()`` reports
them: head_dim, tile sizes, sm_scale range, shared memory, grid sizes).
"""

from __future__ import annotations

import torch

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
