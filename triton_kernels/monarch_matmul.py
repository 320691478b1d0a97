"""Monarch (block-diagonal butterfly) matmul in Triton: two block-diagonal products, the two
reorders folded into the kernels' load and store indices (no permute pass touches HBM).

``_block_product`` is one block-diagonal product with element strides on both sides:
``out[:, g*og + c*oe] = sum_p x[:, g*xg + p*xe] W[g, c, p]``. The first product is it with unit
strides (y1 = x B1, written in natural (k q) = (r l) order). The second reads y1[:, r*L + l] and writes
out[:, s*L + l]: for L >= 16 ``_reordered_block_matmul`` takes a block of BL consecutive l at once (a
batched dot over l), so both accesses are contiguous in l (writing the (l r) order from the first
kernel scatters 2-byte stores at a stride of L elements: 0.27x of bmm + permute on an H100); for
fewer, larger blocks (L < 16, e.g. 4 blocks of 1024) most of such a block would be padding, and
``_block_product`` with element stride L runs it as L well-shaped GEMMs instead.

The backward (``monarch_matmul_bwd``) runs the same two kernels in the opposite order with the
blocks transposed, dy1 = dout B2^T (reorders as the forward's second product) and dx = dy1 B1^T,
and the weight gradients as batched GEMMs over chunks of rows (cuBLAS through torch.bmm); docs/math.md,
Monarch matmul.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._interpreter import guarded
from ._launch import launch


@triton.jit(do_not_specialize=["rows"])  # a new batch size must not compile a new kernel
def _block_product(
    X, W, Y,
    rows, x_stride, y_stride, C, P, x_group, x_elem, y_group, y_elem, w_g, w_c, w_p,
    BM: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # y[:, g*y_group + c*y_elem] = sum_p x[:, g*x_group + p*x_elem] * W[g, c, p]  (unit strides: 1, specialised);
    # W[g, c, p] at W + g*w_g + c*w_c + p*w_p: a transposed view of the weights is read in place
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
        x = tl.load(X + offs_m[:, None].to(tl.int64) * x_stride + g * x_group + offs_p[None, :] * x_elem,
                    mask=mask_m[:, None] & mask_p[None, :], other=0.0)  # fmt: skip
        w = tl.load(
            W + g * w_g + offs_c[None, :] * w_c + offs_p[:, None] * w_p,
            mask=mask_c[None, :] & mask_p[:, None],
            other=0.0,
        )  # [BP, BC]  fmt: skip
        acc += tl.dot(x, w, input_precision=DOT_PRECISION)  # [BM, BP] @ [BP, BC]
    tl.store(Y + offs_m[:, None].to(tl.int64) * y_stride + g * y_group + offs_c[None, :] * y_elem,
             acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])  # fmt: skip


@triton.jit(do_not_specialize=["rows"])
def _reordered_block_matmul(
    Y1, W2, OUT,
    rows, y_stride, out_stride, L, S, R, w_l, w_s, w_r,
    BL: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # out[:, s*L + l] = sum_r y1[:, r*L + l] * W2[l, s, r], for BL consecutive l at once; W2[l, s, r] at
    # W2 + l*w_l + s*w_s + r*w_r
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
            W2 + offs_l[:, None, None] * w_l + offs_s[None, None, :] * w_s + offs_r[None, :, None] * w_r,
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


# The second product takes blocks of BL = 16 consecutive l (_reordered_block_matmul) from this many l on;
# below, L strided GEMMs (_block_product with element stride L).
_BATCHED_L_FROM = 16


def _block_diag(x2d, w, out, config, *, x_group=None, x_elem=1, out_group=None, out_elem=1):
    """out[:, g*out_group + c*out_elem] = sum_p x2d[:, g*x_group + p*x_elem] w[g, c, p] for w (G, C, P)
    of any strides (a transposed view is read in place); by default both sides contiguous per block
    (x_group = P, out_group = C)."""
    g, c, p = w.shape
    rows, bm = x2d.shape[0], config["block_m"]
    if x2d.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError(f"the Monarch matmul kernels take rows of unit stride, got {x2d.stride()}, {out.stride()}")
    bc, bp = _pow2(c), _pow2(p, hi=64)
    launch(_block_product, (triton.cdiv(rows, bm), g, triton.cdiv(c, bc)),
        x2d, w, out, rows, x2d.stride(0), out.stride(0), c, p,
        p if x_group is None else x_group, x_elem, c if out_group is None else out_group, out_elem, *w.stride(),
        BM=bm, BC=bc, BP=bp, DOT_PRECISION=_precision(x2d.dtype), num_warps=config["num_warps"],
    )  # fmt: skip
    return out


def _reordered(y, w, out, config):
    """out[:, c*L + l] = sum_r y[:, r*L + l] w[l, c, r] for w (L, C, R) of any strides: the Monarch
    second product (and, with w2 transposed as a view, the first step of its backward)."""
    l, c, r = w.shape
    rows = y.shape[0]
    if y.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError(f"the Monarch matmul kernels take rows of unit stride, got {y.stride()}, {out.stride()}")
    if l < _BATCHED_L_FROM:
        return _block_diag(y, w, out, config, x_group=1, x_elem=l, out_group=1, out_elem=l)
    # [BL, BR, BS] weight and [BL, BM, BR] input blocks: 32-wide keeps both within shared memory
    # (64-wide bf16 needed 320 KB on an H100), one stage since the r loop is short
    bl, bm2, bs, br = 16, 16, _pow2(c, hi=32), _pow2(r, hi=32)
    launch(_reordered_block_matmul, (triton.cdiv(rows, bm2), triton.cdiv(l, bl), triton.cdiv(c, bs)),
        y, w, out, rows, y.stride(0), out.stride(0), l, c, r, *w.stride(),
        BL=bl, BM=bm2, BS=bs, BR=br, DOT_PRECISION=_precision(y.dtype), num_warps=config["num_warps"],
        num_stages=1,
    )  # fmt: skip
    return out


def _rows_like(x2d: torch.Tensor, width: int) -> torch.Tensor:
    return torch.empty(x2d.shape[0], width, dtype=x2d.dtype, device=x2d.device)


@guarded(_block_product, _reordered_block_matmul)
def monarch_matmul_fwd(x2d: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, config: dict) -> torch.Tensor:
    """``x2d [rows, k*p]``, ``w1 [k, q, p]``, ``w2 [l, s, r]`` -> ``[rows, s*l]`` (docs/math.md)."""
    k, q, _ = w1.shape
    l, s, _ = w2.shape
    y1 = _block_diag(x2d, w1, _rows_like(x2d, k * q), config)  # natural (k q) = (r l) order
    return _reordered(y1, w2, _rows_like(x2d, s * l), config)


@guarded(_block_product, _reordered_block_matmul)
def monarch_matmul_bwd(
    dout2d: torch.Tensor, x2d: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, config: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dx2d, dw1, dw2)`` of :func:`monarch_matmul_fwd` for ``dout2d [rows, s*l]``:
    y1 recomputed, dy1 = dout B2^T and dx = dy1 B1^T by the forward's kernels with the blocks
    transposed, dw1 = sum_rows dy1^T x and dw2 = sum_rows dout^T y1 per block (:func:`_sum_over_rows`)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    rows = x2d.shape[0]
    y1 = _block_diag(x2d, w1, _rows_like(x2d, k * q), config)
    dy1 = _reordered(dout2d, w2.transpose(1, 2), _rows_like(x2d, k * q), config)  # (l, r, s) views, no copy
    dx = _block_diag(dy1, w1.transpose(1, 2), _rows_like(x2d, k * p), config)  # (k, p, q) views, no copy
    dw1 = _sum_over_rows(dy1.view(rows, k, q), x2d.view(rows, k, p))
    dw2 = _sum_over_rows(dout2d.view(rows, s, l).transpose(1, 2), y1.view(rows, r, l).transpose(1, 2))
    return dx, dw1, dw2


# One batched GEMM per block over all rows (M, N = the block sizes, K = rows) runs on as many CTAs as
# its output has 128 x 128 tiles: 64 blocks of 64 x 64 x 16K ran at ~6 TFLOP/s on the H200. Split the
# rows into chunks of at least _MIN_CHUNK_ROWS until there are about _TARGET_TILES output tiles, and sum
# the chunks' fp32 partials in a fixed order (deterministic; the partials take chunks x G x M x N x 4
# bytes, at most ~_TARGET_TILES x 64 KB).
_MIN_CHUNK_ROWS = 512
_TARGET_TILES = 1024


def _sum_over_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [rows, G, M]``, ``b [rows, G, N]`` -> ``[G, M, N] = sum_rows a[:, g]^T b[:, g]``, each
    product accumulated in fp32 (float64 for float64) and rounded once at the end."""
    rows, g, m = a.shape
    n_out = b.shape[2]
    tiles = g * -(-m // 128) * -(-n_out // 128)
    chunks = max(1, min(rows // _MIN_CHUNK_ROWS, -(-_TARGET_TILES // tiles)))
    n = rows // chunks
    whole = chunks * n
    a_c = a[:whole].reshape(chunks, n, g, m).permute(0, 2, 3, 1).reshape(chunks * g, m, n)
    b_c = b[:whole].reshape(chunks, n, g, n_out).transpose(1, 2).reshape(chunks * g, n, n_out)
    out = _bmm_wide(a_c, b_c).view(chunks, g, m, n_out).sum(0)
    if whole < rows:
        out += _bmm_wide(a[whole:].permute(1, 2, 0), b[whole:].transpose(0, 1))
    return out.to(a.dtype)


def _bmm_wide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` batched, accumulated and returned in fp32 (float64 for float64): half inputs on a GPU
    through cuBLAS's fp32 output (``torch.bmm(..., out_dtype=)``) where this torch has it, else (and on
    the CPU) cast to the wide type first."""
    wide = torch.promote_types(a.dtype, torch.float32)
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16) and _bmm_has_out_dtype(a.device):
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.to(wide), b.to(wide))


_OUT_DTYPE: dict = {}


def _bmm_has_out_dtype(device: torch.device) -> bool:
    """Whether ``torch.bmm(..., out_dtype=float32)`` runs on ``device`` (tried once per device)."""
    if device not in _OUT_DTYPE:
        try:
            probe = torch.zeros(1, 16, 16, dtype=torch.bfloat16, device=device)
            _OUT_DTYPE[device] = torch.bmm(probe, probe, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, NotImplementedError, TypeError):
            _OUT_DTYPE[device] = False
    return _OUT_DTYPE[device]
