"""Monarch (block-diagonal butterfly) matmul in Triton: two block-diagonal products with the
permutations folded into the store index, so no separate permute pass touches HBM.

For block g of width C, output column ``flat = g * C + c`` is stored at ``(flat % A) * B + flat // A``:
(A, B) = (l, r) after the first product ((r l) -> (l r)), (s, l) after the second ((l s) -> (s l)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _block_diag_matmul(
    X, W, Y,
    rows, in_width, x_stride, y_stride, C, P, A, B,
    BM: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # y[:, g*C + c] (permuted) = sum_p x[:, g*P + p] * W[g, c, p]
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
    flat = g * C + offs_c
    out_col = (flat % A) * B + flat // A
    tl.store(Y + offs_m[:, None].to(tl.int64) * y_stride + out_col[None, :], acc.to(Y.dtype.element_ty),
             mask=mask_m[:, None] & mask_c[None, :])  # fmt: skip


def _pow2(n: int, lo: int = 16, hi: int = 128) -> int:
    return min(hi, max(lo, 1 << (n - 1).bit_length()))


def _block_product(x, w, y, a, b, config):
    rows, groups, c, p = x.shape[0], w.shape[0], w.shape[1], w.shape[2]
    bm, bc, bp = config["block_m"], _pow2(c), _pow2(p, hi=64)
    grid = (triton.cdiv(rows, bm), groups, triton.cdiv(c, bc))
    _block_diag_matmul[grid](
        x, w, y, rows, groups * p, x.stride(0), y.stride(0), c, p, a, b,
        BM=bm, BC=bc, BP=bp, DOT_PRECISION="tf32x3" if x.dtype == torch.float32 else "tf32",
        num_warps=config["num_warps"],
    )  # fmt: skip


def monarch_matmul_fwd(x2d: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, config: dict) -> torch.Tensor:
    """``x2d [rows, k*p]``, ``w1 [k, q, p]``, ``w2 [l, s, r]`` -> ``[rows, s*l]`` (SPEC 2)."""
    k, q, _ = w1.shape
    l, s, r = w2.shape
    y1 = torch.empty(x2d.shape[0], k * q, dtype=x2d.dtype, device=x2d.device)  # stored in (l r) order
    _block_product(x2d, w1.contiguous(), y1, l, r, config)
    out = torch.empty(x2d.shape[0], s * l, dtype=x2d.dtype, device=x2d.device)
    _block_product(y1, w2.contiguous(), out, s, l, config)
    return out
