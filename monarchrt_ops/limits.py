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

import math

import torch

from .hadamard_matrices import supported_size

MAX_TENSOR_ELEMENTS = 2**63 - 1  # torch sizes are int64: a larger buffer fails inside torch.zeros
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


def check_attention_tensors(q, k, v) -> None:
    """Tile-order ``q (B, A, b1, b2, nh, d)`` and ``k, v (B, F, b1, b2, nh, d)`` of one float dtype and device."""
    if q.dim() != 6 or k.shape != v.shape or k.dim() != 6:
        raise ValueError(
            f"attention takes tile-order q (B, A, b1, b2, nh, d) and k, v (B, F, b1, b2, nh, d) of one shape, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch, tile shape, heads or head_dim")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise TypeError(f"attention: q, k, v must share a float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def check_attention_backward(dout, dlse, q, k, v, out, lse) -> None:
    """``attention_backward``'s tensors: q, k, v as the forward's, out and dout of q's shape and dtype,
    lse and dlse ``(B, A, b1, b2, nh)`` in lse's dtype (float32, float64 for float64), one device."""
    check_attention_tensors(q, k, v)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    for name, t, shape, dtype in (
        ("out", out, q.shape, q.dtype),
        ("dout", dout, q.shape, q.dtype),
        ("lse", lse, q.shape[:-1], lse_dtype),
        ("dlse", dlse, q.shape[:-1], lse_dtype),
    ):
        if t.shape != shape or t.dtype != dtype or t.device != q.device:
            raise ValueError(
                f"attention_backward: {name} must have shape {tuple(shape)}, dtype {dtype} and q's device "
                f"{q.device}, got {tuple(t.shape)} {t.dtype} {t.device}"
            )


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share memory (same storage, overlapping byte ranges)."""
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(x):
        first = x.storage_offset() * x.element_size()
        last = first + sum((n - 1) * st for n, st in zip(x.shape, x.stride(), strict=True)) * x.element_size()
        return first, last + x.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def check_cache_buffers(k_cache, v_cache, new_k, new_v, compare_storages: bool = True) -> None:
    """A cache write copies in place: the buffers must own distinct, non-broadcast memory, and the
    new K/V must not alias them. Storages are compared on real tensors only (not while torch.compile
    traces, not in a fake impl, not on the meta device, whose tensors have no memory)."""
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        if any(st == 0 and n > 1 for n, st in zip(x.shape, x.stride(), strict=True)):
            raise ValueError(f"{name} is a broadcast (stride-0) view; a cache needs its own memory")
    if not compare_storages or torch.compiler.is_compiling() or k_cache.device.type == "meta":
        return
    if _overlap(k_cache, v_cache):
        raise ValueError("k_cache and v_cache share memory; pass two separate buffers")
    for name, x in (("new_k", new_k), ("new_v", new_v)):
        for cname, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            if _overlap(x, c):
                raise ValueError(f"{name} shares memory with {cname}; pass a tensor of its own (e.g. .clone())")


def check_kv_cache_write(k_cache, v_cache, new_k, new_v, start, compare_storages: bool = True) -> None:
    """``kv_cache_write``'s arguments: caches ``(B, S, nh, d)`` and new K/V ``(B, n, nh, d)`` of one
    float dtype and device, tokens ``[start, start + n)`` inside the cache, memory as
    :func:`check_cache_buffers` requires."""
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or new_k.shape != new_v.shape or new_k.dim() != 4:
        raise ValueError(
            f"kv_cache_write takes k_cache, v_cache (B, S, nh, d) of one shape and new_k, new_v (B, n, nh, d) of "
            f"one shape, got k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}, "
            f"new_k {tuple(new_k.shape)}, new_v {tuple(new_v.shape)}"
        )
    if new_k.shape[0] != k_cache.shape[0] or new_k.shape[2:] != k_cache.shape[2:]:
        raise ValueError(f"new_k {tuple(new_k.shape)} and k_cache {tuple(k_cache.shape)} differ in batch, heads or d")
    tensors = (k_cache, v_cache, new_k, new_v)
    if len({t.dtype for t in tensors}) != 1 or not k_cache.is_floating_point():
        raise TypeError(
            "kv_cache_write: k_cache, v_cache, new_k, new_v must share a float dtype (a write never casts), "
            f"got {', '.join(str(t.dtype) for t in tensors)}"
        )
    if len({t.device for t in tensors}) != 1:
        raise ValueError(
            f"kv_cache_write: k_cache, v_cache, new_k, new_v must be on one device, got "
            f"{', '.join(str(t.device) for t in tensors)}"
        )
    if start < 0 or start + new_k.shape[1] > k_cache.shape[1]:
        raise ValueError(f"start={start}: tokens [{start}, {start + new_k.shape[1]}) do not fit {k_cache.shape[1]}")
    check_cache_buffers(k_cache, v_cache, new_k, new_v, compare_storages)


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


def check_hadamard_scale(scale) -> None:
    """A finite scale (an infinite or NaN one makes every output non-finite)."""
    if not math.isfinite(scale):
        raise ValueError(f"hadamard: scale={scale!r} must be finite")


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
