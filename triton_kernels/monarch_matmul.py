"""Monarch (block-diagonal butterfly) matmul in Triton: two block-diagonal products, the two
reorders folded into the second kernel's load and store indices (no permute pass touches HBM).

Kernel 1 writes y1 = x B1 in natural (k q) = (r l) order. Kernel 2 takes a block of BL consecutive
l at once (a batched dot over l): it reads y1[:, r * L + l] and writes out[:, s * L + l], both
contiguous in l, so the reorders cost no extra memory transactions. (Writing the (l r) order from
kernel 1 scatters 2-byte stores at a stride of L elements: 0.27x of bmm + permute on an H100.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._interpreter import guarded


@triton.jit(do_not_specialize=["rows"])  # a new batch size must not compile a new kernel
def _block_diag_matmul(
    X, W, Y,
    rows, x_stride, y_stride, C, P,
    BM: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # y[:, g*C + c] = sum_p x[:, g*P + p] * W[g, c, p]
    pid_m = tl.program_id(0)
    g = tl.program_id(1)
    pid_c = tl.program_id(2)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_c = pid_c * BC + tl.arange(0, BC)
    mask_m = offs_m < rows
    mask_c = offs_c < C
    acc = tl.zeros([BM, BC], tl.float32)
    for p0 in range(0, P, BP):
        offs_p = p0 + tl.arange(0, BP)
        mask_p = offs_p < P
        x = tl.load(X + offs_m[:, None].to(tl.int64) * x_stride + g * P + offs_p[None, :],
                    mask=mask_m[:, None] & mask_p[None, :], other=0.0)  # fmt: skip
        w = tl.load(
            W + (g * C + offs_c[None, :]) * P + offs_p[:, None], mask=mask_c[None, :] & mask_p[:, None], other=0.0
        )  # [BP, BC]  fmt: skip
        acc += tl.dot(x, w, input_precision=DOT_PRECISION)  # [BM, BP] @ [BP, BC]
    tl.store(Y + offs_m[:, None].to(tl.int64) * y_stride + g * C + offs_c[None, :], acc.to(Y.dtype.element_ty),
             mask=mask_m[:, None] & mask_c[None, :])  # fmt: skip


@triton.jit(do_not_specialize=["rows"])
def _reordered_block_matmul(
    Y1, W2, OUT,
    rows, y_stride, out_stride, L, S, R,
    BL: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # out[:, s*L + l] = sum_r y1[:, r*L + l] * W2[l, s, r], for BL consecutive l at once
    pid_m = tl.program_id(0)
    pid_l = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_l = pid_l * BL + tl.arange(0, BL)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_s = pid_s * BS + tl.arange(0, BS)
    mask_l = offs_l < L
    rows_ptr = offs_m[None, :, None].to(tl.int64)
    mask_lm = mask_l[:, None, None] & (offs_m[None, :, None] < rows)
    acc = tl.zeros([BL, BM, BS], tl.float32)
    for r0 in range(0, R, BR):
        offs_r = r0 + tl.arange(0, BR)
        y = tl.load(
            Y1 + rows_ptr * y_stride + offs_r[None, None, :] * L + offs_l[:, None, None],
            mask=mask_lm & (offs_r[None, None, :] < R),
            other=0.0,
        )  # [BL, BM, BR]  fmt: skip
        w = tl.load(
            W2 + (offs_l[:, None, None] * S + offs_s[None, None, :]) * R + offs_r[None, :, None],
            mask=mask_l[:, None, None] & (offs_r[None, :, None] < R) & (offs_s[None, None, :] < S),
            other=0.0,
        )  # [BL, BR, BS]  fmt: skip
        acc += tl.dot(y, w, input_precision=DOT_PRECISION)  # batched over l: [BM, BR] @ [BR, BS]
    tl.store(OUT + rows_ptr * out_stride + offs_s[None, None, :] * L + offs_l[:, None, None],
             acc.to(OUT.dtype.element_ty), mask=mask_lm & (offs_s[None, None, :] < S))  # fmt: skip


def _pow2(n: int, lo: int = 16, hi: int = 128) -> int:
    return min(hi, max(lo, 1 << (n - 1).bit_length()))


def _precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"


@guarded(_block_diag_matmul, _reordered_block_matmul)
def monarch_matmul_fwd(x2d: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, config: dict) -> torch.Tensor:
    """``x2d [rows, k*p]``, ``w1 [k, q, p]``, ``w2 [l, s, r]`` -> ``[rows, s*l]`` (SPEC 2)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    rows, bm = x2d.shape[0], config["block_m"]
    y1 = torch.empty(rows, k * q, dtype=x2d.dtype, device=x2d.device)  # natural (k q) = (r l) order
    bc, bp = _pow2(q), _pow2(p, hi=64)
    _block_diag_matmul[(triton.cdiv(rows, bm), k, triton.cdiv(q, bc))](
        x2d, w1.contiguous(), y1, rows, x2d.stride(0), y1.stride(0), q, p,
        BM=bm, BC=bc, BP=bp, DOT_PRECISION=_precision(x2d.dtype), num_warps=config["num_warps"],
    )  # fmt: skip
    out = torch.empty(rows, s * l, dtype=x2d.dtype, device=x2d.device)
    # [BL, BR, BS] weight and [BL, BM, BR] input blocks: 32-wide keeps both within shared memory
    # (64-wide bf16 needed 320 KB on an H100), one stage since the r loop is short
    bl, bm2, bs, br = 16, 16, _pow2(s, hi=32), _pow2(r, hi=32)
    _reordered_block_matmul[(triton.cdiv(rows, bm2), triton.cdiv(l, bl), triton.cdiv(s, bs))](
        y1, w2.contiguous(), out, rows, y1.stride(0), out.stride(0), l, s, r,
        BL=bl, BM=bm2, BS=bs, BR=br, DOT_PRECISION=_precision(x2d.dtype), num_warps=config["num_warps"],
        num_stages=1,
    )  # fmt: skip
    return out
