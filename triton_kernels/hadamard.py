"""Hadamard transform in Triton, the HadaCore way: Hadamard factors applied as small matrix products.

A row of n = m * n2 elements is a tile [M_PAD, N_PAD] (m and n2 padded to powers of two >= 16 with
zero rows/columns of H, masked on load and store). H_n = H_m (x) H_n2 and H_n2 = H_F0 (x) H_F1 (x) H_F2
with factors of 16..64 (128 only for n2 = 128), so the transform is one `tl.dot` per factor: move the
factor's axis last, multiply by H^T, move it back. One pass over the data when a row block fits a
program (``tile`` elements, up to 32768); larger rows take two passes (n2 factors on contiguous
chunks, then the m factor across them), each safe in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..hadamard_matrices import SPECIAL_ORDERS, padded_matrix
from ._interpreter import guarded, interpreting
from ._launch import Prepared, cdiv, launch

# A 128x128 factor measured 77 % of clone at n = 128 and 42 % at n = 2048 = 128 x 16 on an H100,
# against 99 % for 16 x 16 (bench/NOTES.md): factors stay <= 64 where the size allows.
MAX_FACTOR_BITS = 6


@triton.jit
def _contract(x, h, R: tl.constexpr, C: tl.constexpr, B: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """x viewed [R, C, B]: y[r, c', b] = sum_c h[c', c] x[r, c, b]."""
    x = tl.permute(tl.reshape(x, (R, C, B)), (0, 2, 1))
    y = tl.dot(tl.reshape(x, (R * B, C)), tl.trans(h), input_precision=DOT_PRECISION)  # [R*B, C] @ [C, C]
    y = tl.permute(tl.reshape(y, (R, B, C)), (0, 2, 1))
    return tl.reshape(y, (R * C * B,))


@triton.jit(do_not_specialize=["rows"])  # a new batch size must not compile a new kernel
def _hadamard_kernel(
    X, Y, HM, HF0, HF1, HF2,
    rows, m, n2, x_stride, y_stride, scale,
    BR: tl.constexpr, M_PAD: tl.constexpr, NB: tl.constexpr, F0: tl.constexpr, F1: tl.constexpr, F2: tl.constexpr,
    APPLY_M: tl.constexpr, APPLY_N: tl.constexpr, FP32_INTERMEDIATE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    # fp32 intermediates: factors multiply fp32 values (3-pass tf32), no rounding between factors.
    # A constexpr if statement, the form every Triton version compiles.
    if FP32_INTERMEDIATE:  # noqa: SIM108
        dtype = tl.float32
    else:
        dtype = X.dtype.element_ty
    offs_r = pid_r * BR + tl.arange(0, BR)
    offs_m = tl.arange(0, M_PAD)
    offs_n = pid_c * NB + tl.arange(0, NB)
    mask = (offs_r[:, None, None] < rows) & (offs_m[None, :, None] < m) & (offs_n[None, None, :] < n2)
    col = offs_m[None, :, None] * n2 + offs_n[None, None, :]
    x = tl.load(X + offs_r[:, None, None].to(tl.int64) * x_stride + col, mask=mask, other=0.0).to(dtype)
    x = tl.reshape(x, (BR * M_PAD * NB,))  # [BR, M_PAD, NB] flattened
    if APPLY_N:
        # NB == N_PAD == F0 * F1 * F2 (F1, F2 = 1 when absent)
        h = tl.load(HF0 + tl.arange(0, F0)[:, None] * F0 + tl.arange(0, F0)[None, :])
        x = _contract(x, h, BR * M_PAD, F0, F1 * F2, DOT_PRECISION).to(dtype)
        if F1 > 1:
            h = tl.load(HF1 + tl.arange(0, F1)[:, None] * F1 + tl.arange(0, F1)[None, :])
            x = _contract(x, h, BR * M_PAD * F0, F1, F2, DOT_PRECISION).to(dtype)
        if F2 > 1:
            h = tl.load(HF2 + tl.arange(0, F2)[:, None] * F2 + tl.arange(0, F2)[None, :])
            x = _contract(x, h, BR * M_PAD * F0 * F1, F2, 1, DOT_PRECISION).to(dtype)
    if APPLY_M:
        h = tl.load(HM + offs_m[:, None] * M_PAD + offs_m[None, :])
        x = _contract(x, h, BR, M_PAD, NB, DOT_PRECISION)
    y = tl.reshape(x.to(tl.float32) * scale, (BR, M_PAD, NB))
    tl.store(Y + offs_r[:, None, None].to(tl.int64) * y_stride + col, y.to(Y.dtype.element_ty), mask=mask)


def _pow2_at_least(n: int, floor: int = 16) -> int:
    return max(floor, 1 << (n - 1).bit_length())


def _factors(n_pad: int) -> tuple[int, int, int]:
    """N_PAD (a power of two >= 16) -> (F0, F1, F2), each 16..64 as even as possible (1: absent)."""
    bits = n_pad.bit_length() - 1
    parts = max(1, -(-bits // MAX_FACTOR_BITS))
    while parts > 1 and bits // parts < 4:
        parts -= 1
    sizes = [bits // parts + (1 if i < bits % parts else 0) for i in range(parts)]
    if len(sizes) > 3:
        raise ValueError(f"hadamard: n_pad={n_pad} needs more than three factors")
    return tuple(1 << b for b in sizes) + (1,) * (3 - len(sizes))


def _launch_args(x, y, m, n2, scale, transpose, apply_m, br, nb, fp32_intermediate):
    """One launch over 2-D x, y (H_n2 along rows when nb covers them, else H_m only) but for x and y:
    ``(grid, values after x and y, keyword arguments)``."""
    apply_n = nb >= n2
    m_tile = _pow2_at_least(m) if apply_m else 1
    n_pad = _pow2_at_least(n2)
    f0, f1, f2 = _factors(n_pad)
    dev = str(x.device)
    dt = torch.float32 if fp32_intermediate else x.dtype
    hm = padded_matrix("special" if m in SPECIAL_ORDERS else "sylvester", m, _pow2_at_least(m), transpose, dt, dev)
    hf = [padded_matrix("sylvester", min(n2, f), f, False, dt, dev) for f in (f0, max(f1, 16), max(f2, 16))]
    tile = br * m_tile * (n_pad if apply_n else nb)
    grid = (cdiv(x.shape[0], br), cdiv(n2, nb))
    return grid, (hm, *hf, x.shape[0], m, n2, x.stride(0), y.stride(0), scale), dict(
        BR=br, M_PAD=m_tile, NB=nb, F0=f0, F1=f1, F2=f2, APPLY_M=apply_m, APPLY_N=apply_n,
        FP32_INTERMEDIATE=dt == torch.float32, DOT_PRECISION="tf32x3" if dt == torch.float32 else "tf32",
        # H100: 8192-element tiles ran at 52 % of clone with 4 warps and 96 % with 8; 16384 at 95 % with
        # 8 warps and 64 % with 16
        num_warps=4 if tile < 8192 else 8,
    )  # fmt: skip


def _launch(x, y, m, n2, scale, transpose, apply_m, br, nb, fp32_intermediate):
    grid, rest, meta = _launch_args(x, y, m, n2, scale, transpose, apply_m, br, nb, fp32_intermediate)
    launch(_hadamard_kernel, grid, x, y, *rest, **meta)


def _one_pass_rows(x, m: int, n2: int, tile: int, fp32_intermediate: bool) -> int | None:
    """Rows per program where one program holds whole rows (one pass), else None (two passes)."""
    m_tile = _pow2_at_least(m) if m > 1 else 1
    n_pad = _pow2_at_least(n2)
    # one program holds a whole row up to 64 KB (32768 halves, 16384 fp32: 32768 fp32 needs 256 KB of
    # shared memory for the layout changes, more than an H100 has)
    elem = 4 if fp32_intermediate else x.element_size()  # bytes a value takes inside the kernel
    if m_tile * n_pad * elem > max(tile * elem, 65536):
        return None
    br = max(1, min(tile // (m_tile * n_pad), _pow2_at_least(x.shape[0], 1)))
    if n_pad <= 128:
        br = max(br, 16 // m_tile)  # the first factor's dot needs >= 16 rows (BR * M_PAD)
    return br


# one-pass calls' launches per problem (hadamard_rows's key) -> Prepared; False: two passes, not prepared
_prepared: dict = {}
_MAX_PREPARED = 1024


def _one_pass(x, y, m: int, n2: int, scale: float, transpose: bool, config: dict, fp32_intermediate: bool):
    """The one-pass launch of this problem (kept in ``_prepared``), or False where it takes two passes."""
    # the kernel's id too (the plan keeps it alive): a stand-in for it, a test's recorder, is a new problem
    key = (x.shape, x.stride(), y.stride(), x.dtype, x.device, m, n2, scale, type(scale), transpose,
           tuple(config.items()), fp32_intermediate, id(_hadamard_kernel))  # fmt: skip
    prepared = _prepared.get(key)
    if prepared is None:
        br = _one_pass_rows(x, m, n2, config["tile"], fp32_intermediate)
        prepared = False
        if br is not None:
            grid, rest, meta = _launch_args(x, y, m, n2, scale, transpose, m > 1, br, _pow2_at_least(n2),
                                            fp32_intermediate)  # fmt: skip
            prepared = Prepared(_hadamard_kernel, grid, rest, meta)
        if len(_prepared) >= _MAX_PREPARED:
            _prepared.clear()
        _prepared[key] = prepared
    return prepared


@guarded(_hadamard_kernel)
def prepare_rows(x, y, m: int, n2: int, scale: float, transpose: bool, config: dict, fp32_intermediate=False):
    """The eager fast path's launch of :func:`hadamard_rows` for 2-D x and y laid out as these (the
    tensors passed to it may be any with the same data pointers and dtypes: only those are read), or
    None (two passes, or the interpreter, whose launches take its lock)."""
    if interpreting():
        return None
    return _one_pass(x, y, m, n2, scale, transpose, config, fp32_intermediate or x.dtype == torch.float32) or None


@guarded(_hadamard_kernel)
def hadamard_rows(x, y, m: int, n2: int, scale: float, transpose: bool, config: dict, fp32_intermediate=False):
    """y = x @ (H_m (x) H_n2)^T * scale (H_m^T with transpose) for 2-D ``x [rows, m*n2]``; y may be x.

    ``fp32_intermediate``: half inputs are not rounded between factors (nor between the two passes).
    A one-pass call's launch is built once per problem (shapes, strides, dtype, device, parameters,
    config) and kept (:class:`_launch.Prepared`).
    """
    fp32_intermediate = fp32_intermediate or x.dtype == torch.float32
    prepared = _one_pass(x, y, m, n2, scale, transpose, config, fp32_intermediate)
    if prepared:
        prepared(x, y)
        return y
    rows, tile = x.shape[0], config["tile"]
    if m == 1:  # a power of two too long for one program: H_n = H_M (x) H_4096
        m, n2 = n2 // 4096, 4096
    n_pad = _pow2_at_least(n2)
    # pass 1: H_n2 on each contiguous chunk of n2; pass 2: H_m across the chunks, a column block at a time
    keep_fp32 = fp32_intermediate and y.dtype != torch.float32  # an fp32 buffer between the passes
    mid = torch.empty(x.shape, dtype=torch.float32, device=x.device) if keep_fp32 else y
    _launch(x.reshape(rows * m, n2), mid.reshape(rows * m, n2), 1, n2, 1.0, False, False, 1, n_pad, fp32_intermediate)
    nb = max(16, min(n_pad, tile // _pow2_at_least(m)))
    _launch(mid, y, m, n2, scale, transpose, True, 1, nb, fp32_intermediate)
    return y
