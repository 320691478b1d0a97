"""Hadamard transform in Triton, the HadaCore way: Hadamard factors applied as small matrix products.

A row of n = m * n2 elements is a tile [M_PAD, N_PAD] (m and n2 padded to powers of two >= 16 with
zero rows/columns of H, masked on load and store). H_n = H_m (x) H_n2 and H_n2 = H_C0 (x) H_16 (x) ...,
so the transform is one `tl.dot` per factor: move the factor's axis last, multiply by H^T, move it
back. One pass over the data when a row block fits a program (TILE elements); larger rows take two
passes (n2 factors on contiguous chunks, then the m factor across them), each in place-safe.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..hadamard_matrices import SPECIAL_ORDERS, special, sylvester

MAX_TILE = 8192  # elements one program holds: 32 KB of fp32, ~32 registers a thread at 8 warps


@triton.jit
def _contract(x, h, R: tl.constexpr, C: tl.constexpr, B: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """x viewed [R, C, B]: y[r, c', b] = sum_c h[c', c] x[r, c, b]."""
    x = tl.permute(tl.reshape(x, (R, C, B)), (0, 2, 1))
    y = tl.dot(tl.reshape(x, (R * B, C)), tl.trans(h), input_precision=DOT_PRECISION)  # [R*B, C] @ [C, C]
    y = tl.permute(tl.reshape(y, (R, B, C)), (0, 2, 1))
    return tl.reshape(y, (R * C * B,))


@triton.jit
def _hadamard_kernel(
    X, Y, HM, HC0, H16,
    rows, m, n2, x_stride, y_stride, scale,
    BR: tl.constexpr, M_PAD: tl.constexpr, NB: tl.constexpr, C0: tl.constexpr, N16: tl.constexpr,
    APPLY_M: tl.constexpr, APPLY_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    dtype = X.dtype.element_ty
    offs_r = pid_r * BR + tl.arange(0, BR)
    offs_m = tl.arange(0, M_PAD)
    offs_n = pid_c * NB + tl.arange(0, NB)
    mask = (offs_r[:, None, None] < rows) & (offs_m[None, :, None] < m) & (offs_n[None, None, :] < n2)
    col = offs_m[None, :, None] * n2 + offs_n[None, None, :]
    x = tl.load(X + offs_r[:, None, None].to(tl.int64) * x_stride + col, mask=mask, other=0.0)
    x = tl.reshape(x, (BR * M_PAD * NB,))  # [BR, M_PAD, NB] flattened
    if APPLY_N:
        # NB == N_PAD == C0 * 16**N16
        h = tl.load(HC0 + tl.arange(0, C0)[:, None] * C0 + tl.arange(0, C0)[None, :])
        x = _contract(x, h, BR * M_PAD, C0, NB // C0, DOT_PRECISION).to(dtype)
        h16 = tl.load(H16 + tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :])
        if N16 >= 1:
            x = _contract(x, h16, BR * M_PAD * C0, 16, NB // (C0 * 16), DOT_PRECISION).to(dtype)
        if N16 >= 2:
            x = _contract(x, h16, BR * M_PAD * C0 * 16, 16, NB // (C0 * 256), DOT_PRECISION).to(dtype)
    if APPLY_M:
        h = tl.load(HM + offs_m[:, None] * M_PAD + offs_m[None, :])
        x = _contract(x, h, BR, M_PAD, NB, DOT_PRECISION)
    y = tl.reshape(x.to(tl.float32) * scale, (BR, M_PAD, NB))
    tl.store(Y + offs_r[:, None, None].to(tl.int64) * y_stride + col, y.to(Y.dtype.element_ty), mask=mask)


def _pow2_at_least(n: int, floor: int = 16) -> int:
    return max(floor, 1 << (n - 1).bit_length())


def _split_pow2(n_pad: int) -> tuple[int, int]:
    """N_PAD (a power of two >= 16) -> (C0, N16) with C0 in [16, 128] and N_PAD = C0 * 16**N16."""
    n16 = 0
    while n_pad > 128:
        n_pad //= 16
        n16 += 1
    if n_pad < 16:  # e.g. 4096 = 16 * 16 * 16: fold one 16 back into C0
        n_pad *= 16
        n16 -= 1
    return n_pad, n16


def _padded(h: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, size, dtype=torch.float64)
    out[: h.shape[0], : h.shape[1]] = h
    return out


@functools.cache
def _matrix(kind: str, size: int, pad: int, transpose: bool, dtype: torch.dtype, device: str) -> torch.Tensor:
    h = special(size) if kind == "special" else sylvester(size)
    h = h.T if transpose else h
    return _padded(h, pad).to(dtype=dtype, device=device).contiguous()


def _launch(x, y, m, n2, scale, transpose, apply_m, br, nb, num_warps):
    """One kernel launch over 2-D x, y: H_n2 along rows when nb covers them (else H_m only)."""
    apply_n = nb >= n2
    m_tile = _pow2_at_least(m) if apply_m else 1
    n_pad = _pow2_at_least(n2)
    c0, n16 = _split_pow2(n_pad)
    dev, dt = str(x.device), x.dtype
    hm = _matrix("special" if m in SPECIAL_ORDERS else "sylvester", m, _pow2_at_least(m), transpose, dt, dev)
    hc0 = _matrix("sylvester", min(n2, c0), c0, False, dt, dev)
    h16 = _matrix("sylvester", 16, 16, False, dt, dev)
    grid = (triton.cdiv(x.shape[0], br), triton.cdiv(n2, nb))
    _hadamard_kernel[grid](
        x, y, hm, hc0, h16, x.shape[0], m, n2, x.stride(0), y.stride(0), scale,
        BR=br, M_PAD=m_tile, NB=nb, C0=c0, N16=n16, APPLY_M=apply_m, APPLY_N=apply_n,
        DOT_PRECISION="tf32x3" if dt == torch.float32 else "tf32", num_warps=num_warps,
    )  # fmt: skip


def hadamard_rows(x: torch.Tensor, y: torch.Tensor, m: int, n2: int, scale: float, transpose: bool, config: dict):
    """y = x @ (H_m (x) H_n2)^T * scale (H_m^T with transpose) for 2-D ``x [rows, m*n2]``; y may be x."""
    rows, tile, warps = x.shape[0], config["tile"], config["num_warps"]
    m_tile = _pow2_at_least(m) if m > 1 else 1
    n_pad = _pow2_at_least(n2)
    if m_tile * n_pad <= tile:
        br = min(tile // (m_tile * n_pad), _pow2_at_least(rows, 1))
        if n_pad <= 128:
            br = max(br, 16 // m_tile)  # the first factor's dot needs >= 16 rows (BR * M_PAD)
        _launch(x, y, m, n2, scale, transpose, m > 1, br, n_pad, warps)
        return y
    if m == 1:  # a large power of two: H_n = H_M (x) H_4096
        m, n2, n_pad = n2 // 4096, 4096, 4096
    # pass 1: H_n2 on each contiguous chunk of n2; pass 2: H_m across the chunks, a column block at a time
    _launch(x.reshape(rows * m, n2), y.reshape(rows * m, n2), 1, n2, 1.0, False, False, 1, n_pad, warps)
    nb = max(16, min(n_pad, tile // _pow2_at_least(m)))
    _launch(y, y, m, n2, scale, transpose, True, 1, nb, warps)
    return y
