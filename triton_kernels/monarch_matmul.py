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

The backward (``monarch_matmul_bwd``, seven launches, no copies) runs the same two kernels in the
opposite order with the blocks transposed (strided views of the weights), dy1 = dout B2^T (reorders
as the forward's second product) and dx = dy1 B1^T, and the weight gradients, sums over all rows of
per-block outer products, as ``_row_sum_partials`` (an fp32 partial per chunk of rows; the strided
columns r L + l of w2's gradient 16 consecutive l at once, as the forward's second product) and
``_sum_chunks`` (the partials summed in one fixed order: bit-reproducible, no atomics); docs/math.md,
Monarch matmul; the cost model in docs/design.md, Monarch matmul backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._interpreter import guarded, interpreting
from ._launch import Prepared, cdiv, current, keep_scratch, launch, take_scratch


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


@triton.jit(do_not_specialize=["rows", "chunk_rows"])
def _row_sum_partials(
    A, B, PART,
    rows, chunk_rows, a_stride, b_stride, G, M, N, a_group, a_elem, b_group, b_elem,
    BL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # PART[chunk, g, m, n] = sum over the chunk's rows i of A[i, g*a_group + m*a_elem] * B[i, g*b_group + n*b_elem]
    # in fp32, rows in increasing order, for one block g (BL = 1: a 2-D dot) or BL consecutive g at once
    # (a batched dot over g); PART in the gradient's own dtype (rounded once) where one chunk takes every row
    tiles_n = tl.cdiv(N, BN)
    offs_m = (tl.program_id(0) // tiles_n) * BM + tl.arange(0, BM)
    offs_n = (tl.program_id(0) % tiles_n) * BN + tl.arange(0, BN)
    chunk = tl.program_id(2)
    first = chunk * chunk_rows
    end = tl.minimum(first + chunk_rows, rows)
    offs_k = tl.arange(0, BK)
    if BL == 1:
        g = tl.program_id(1)
        mask_a = offs_m[:, None] < M
        mask_b = offs_n[None, :] < N
        a_ptr = A + first.to(tl.int64) * a_stride + g * a_group + offs_m[:, None] * a_elem + offs_k[None, :] * a_stride
        b_ptr = B + first.to(tl.int64) * b_stride + g * b_group + offs_n[None, :] * b_elem + offs_k[:, None] * b_stride
        acc = tl.zeros([BM, BN], tl.float32)
        for i0 in range(first, end, BK):
            a = tl.load(a_ptr, mask=mask_a & (i0 + offs_k[None, :] < end), other=0.0)  # [BM, BK]
            b = tl.load(b_ptr, mask=mask_b & (i0 + offs_k[:, None] < end), other=0.0)  # [BK, BN]
            acc += tl.dot(a, b, input_precision=DOT_PRECISION)
            a_ptr += BK * a_stride
            b_ptr += BK * b_stride
        part = ((chunk * G + g).to(tl.int64) * M + offs_m[:, None]) * N + offs_n[None, :]
        tl.store(PART + part, acc.to(PART.dtype.element_ty), mask=mask_a & mask_b)
    else:
        offs_g = tl.program_id(1) * BL + tl.arange(0, BL)
        mask_a = (offs_g[:, None, None] < G) & (offs_m[None, :, None] < M)  # [BL, BM, 1]
        mask_b = (offs_g[:, None, None] < G) & (offs_n[None, None, :] < N)  # [BL, 1, BN]
        a_ptr = (A + first.to(tl.int64) * a_stride + offs_g[:, None, None] * a_group + offs_m[None, :, None] * a_elem
                 + offs_k[None, None, :] * a_stride)  # fmt: skip
        b_ptr = (B + first.to(tl.int64) * b_stride + offs_g[:, None, None] * b_group + offs_n[None, None, :] * b_elem
                 + offs_k[None, :, None] * b_stride)  # fmt: skip
        acc = tl.zeros([BL, BM, BN], tl.float32)
        for i0 in range(first, end, BK):
            a = tl.load(a_ptr, mask=mask_a & (i0 + offs_k[None, None, :] < end), other=0.0)  # [BL, BM, BK]
            b = tl.load(b_ptr, mask=mask_b & (i0 + offs_k[None, :, None] < end), other=0.0)  # [BL, BK, BN]
            acc += tl.dot(a, b, input_precision=DOT_PRECISION)  # batched over g: [BM, BK] @ [BK, BN]
            a_ptr += BK * a_stride
            b_ptr += BK * b_stride
        block = (chunk * G + offs_g[:, None, None]).to(tl.int64)
        part = (block * M + offs_m[None, :, None]) * N + offs_n[None, None, :]
        tl.store(PART + part, acc.to(PART.dtype.element_ty), mask=mask_a & mask_b)


@triton.jit
def _sum_chunks(PART, OUT, numel, chunks, BLOCK: tl.constexpr):
    # OUT[j] = (PART[0, j] + PART[1, j]) + PART[2, j] + ...: one fixed order, no atomics (bit-reproducible)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros([BLOCK], tl.float32)
    part = PART + offs
    for _ in range(0, chunks):
        acc += tl.load(part, mask=mask, other=0.0)
        part += numel
    tl.store(OUT + offs, acc.to(OUT.dtype.element_ty), mask=mask)


def _pow2(n: int, lo: int = 16, hi: int = 128) -> int:
    return min(hi, max(lo, 1 << (n - 1).bit_length()))


def _precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"


# The second product takes blocks of BL = 16 consecutive l (_reordered_block_matmul) from this many l on;
# below, L strided GEMMs (_block_product with element stride L). The same rule for w2's gradient.
_BATCHED_L_FROM = 16


def _block_diag_args(x2d, w, out, config, *, x_group=None, x_elem=1, out_group=None, out_elem=1):
    """:func:`_block_diag`'s launch but for its tensors (x2d, w, out): ``(kernel, grid, values after
    them, keyword arguments)``."""
    g, c, p = w.shape
    rows, bm = x2d.shape[0], config["block_m"]
    if x2d.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError(f"the Monarch matmul kernels take rows of unit stride, got {x2d.stride()}, {out.stride()}")
    bc, bp = _pow2(c), _pow2(p, hi=64)
    x_group, out_group = p if x_group is None else x_group, c if out_group is None else out_group
    rest = (rows, x2d.stride(0), out.stride(0), c, p, x_group, x_elem, out_group, out_elem, *w.stride())
    meta = dict(BM=bm, BC=bc, BP=bp, DOT_PRECISION=_precision(x2d.dtype), num_warps=config["num_warps"])
    return _block_product, (cdiv(rows, bm), g, cdiv(c, bc)), rest, meta


def _block_diag(x2d, w, out, config, **groups):
    """out[:, g*out_group + c*out_elem] = sum_p x2d[:, g*x_group + p*x_elem] w[g, c, p] for w (G, C, P)
    of any strides (a transposed view is read in place); by default both sides contiguous per block
    (x_group = P, out_group = C)."""
    kernel, grid, rest, meta = _block_diag_args(x2d, w, out, config, **groups)
    launch(kernel, grid, x2d, w, out, *rest, **meta)
    return out


def _reordered_args(y, w, out, config):
    """:func:`_reordered`'s launch but for its tensors (y, w, out), as :func:`_block_diag_args`."""
    l, c, r = w.shape
    rows = y.shape[0]
    if y.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError(f"the Monarch matmul kernels take rows of unit stride, got {y.stride()}, {out.stride()}")
    if l < _BATCHED_L_FROM:
        return _block_diag_args(y, w, out, config, x_group=1, x_elem=l, out_group=1, out_elem=l)
    # [BL, BR, BS] weight and [BL, BM, BR] input blocks: 32-wide keeps both within shared memory
    # (64-wide bf16 needed 320 KB on an H100), one stage since the r loop is short
    bl, bm2, bs, br = 16, 16, _pow2(c, hi=32), _pow2(r, hi=32)
    rest = (rows, y.stride(0), out.stride(0), l, c, r, *w.stride())
    meta = dict(BL=bl, BM=bm2, BS=bs, BR=br, DOT_PRECISION=_precision(y.dtype), num_warps=config["num_warps"],
                num_stages=1)  # fmt: skip
    return _reordered_block_matmul, (cdiv(rows, bm2), cdiv(l, bl), cdiv(c, bs)), rest, meta


def _reordered(y, w, out, config):
    """out[:, c*L + l] = sum_r y[:, r*L + l] w[l, c, r] for w (L, C, R) of any strides: the Monarch
    second product (and, with w2 transposed as a view, the first step of its backward)."""
    kernel, grid, rest, meta = _reordered_args(y, w, out, config)
    launch(kernel, grid, y, w, out, *rest, **meta)
    return out


# The weight gradients sum over every row: one program per (block, tile) over all rows would run on
# as few CTAs as there are output tiles (64 for 64 blocks of 64 x 64, of 132 SMs on an H200), so the
# rows are split into chunks until the grid has about _TARGET_PROGRAMS programs (8 per SM of an H200),
# each chunk's fp32 partial written by _row_sum_partials and the chunks summed by _sum_chunks in a
# fixed order. A chunk keeps at least _MIN_CHUNK_ROWS rows and _ROWS_PER_PARTIAL * M N / (M + N), so
# the fp32 partials it writes are at most 1/8 of the bytes it reads (4 M N against 2 rows (M + N)).
_TARGET_PROGRAMS = 1056
_MIN_CHUNK_ROWS = 128
_ROWS_PER_PARTIAL = 16


def _weight_tiles(batched: bool) -> dict:
    """Tiles of _row_sum_partials (not from the table: the tuner times forwards only; none measured yet).
    Batched over 16 consecutive blocks: 32-byte runs of the strided columns r L + l, as
    _reordered_block_matmul; its [16, 32, 32] fp32 accumulator (64 KB) on 8 warps (ptxas for sm_90a:
    128 registers, no spills; 32 KB of shared memory). One block at a time: 64 x 64 tiles, 64 rows a
    step, 3 stages (wgmma on sm_90a from 64-wide blocks; 64 registers, 48 KB of shared memory)."""
    if batched:
        return {"BL": 16, "hi": 32, "BK": 16, "num_warps": 8, "num_stages": 2}
    return {"BL": 1, "hi": 64, "BK": 64, "num_warps": 4, "num_stages": 3}


def _row_chunks(rows: int, m: int, n: int, programs_per_chunk: int, bk: int) -> tuple[int, int]:
    """``(chunk_rows, chunks)``: the rows of one chunk (a multiple of bk) and how many chunks cover ``rows``."""
    least = max(_MIN_CHUNK_ROWS, -(-_ROWS_PER_PARTIAL * m * n // (m + n)))
    chunks = max(1, min(rows // least, -(-_TARGET_PROGRAMS // programs_per_chunk)))
    chunk_rows = cdiv(cdiv(rows, chunks), bk) * bk
    return chunk_rows, cdiv(rows, chunk_rows)


def _weight_grad(a, b, g, m, n, *, a_group, a_elem, b_group, b_elem, batched):
    """``[g, m, n] = sum_rows a[:, g*a_group + m*a_elem] * b[:, g*b_group + n*b_elem]`` in a's dtype,
    accumulated in fp32 and rounded once: _row_sum_partials per chunk of rows, then _sum_chunks (one
    launch where a single chunk takes every row)."""
    rows = a.shape[0]
    out = torch.empty(g, m, n, dtype=a.dtype, device=a.device)
    if rows == 0:
        return out.zero_()  # a sum over no rows
    t = _weight_tiles(batched)
    bl, bk = t["BL"], t["BK"]
    bm, bn = _pow2(m, hi=t["hi"]), _pow2(n, hi=t["hi"])
    tiles = cdiv(m, bm) * cdiv(n, bn)
    chunk_rows, chunks = _row_chunks(rows, m, n, tiles * cdiv(g, bl), bk)
    part = out if chunks == 1 else torch.empty(chunks, g, m, n, dtype=torch.float32, device=a.device)
    launch(_row_sum_partials, (tiles, cdiv(g, bl), chunks),
        a, b, part, rows, chunk_rows, a.stride(0), b.stride(0), g, m, n, a_group, a_elem, b_group, b_elem,
        BL=bl, BM=bm, BN=bn, BK=bk, DOT_PRECISION=_precision(a.dtype), num_warps=t["num_warps"],
        num_stages=t["num_stages"],
    )  # fmt: skip
    if chunks > 1:
        launch(_sum_chunks, (cdiv(out.numel(), 1024),), part, out, out.numel(), chunks, BLOCK=1024)
    return out


def _rows_like(x2d: torch.Tensor, width: int) -> torch.Tensor:
    return torch.empty(x2d.shape[0], width, dtype=x2d.dtype, device=x2d.device)


class _Forward:
    """The forward's two launches of one problem (shapes, strides, dtype, device, config: the key in
    :func:`monarch_matmul_fwd`), built once (:class:`_launch.Prepared`; the stride checks run here, and a
    failing problem is never kept). Per call: Triton's current device and stream asked once for both
    launches, y1 taken from the buffers kept per stream (``_launch.take_scratch``: the first kernel writes
    every element the second reads, and y1 is never returned), ``out`` allocated (``out_shape``: the
    caller's ``(..., s*l)`` where it wants that shape, the same memory layout as ``[rows, s*l]``). Any
    tensors with the data pointers and dtypes of tensors laid out as the prepared ones may be passed."""

    def __init__(self, x2d, w1, w2, config, out_shape=None, keep=False):
        k, q, _ = w1.shape
        l, s, _ = w2.shape
        rows, self.dtype, self.device = x2d.shape[0], x2d.dtype, x2d.device
        self.index = x2d.device.index if x2d.is_cuda else None  # the CUDA device the launches must run on
        # y1 kept between calls only on the eager fast path (``keep``): the op's path is also what
        # compiled graphs run (CUDA-graph trees allocate their warm-up calls from a pool they reset)
        self.keep = keep
        self.y1 = (rows, k * q)  # natural (k q) = (r l) order
        self.out = (rows, s * l) if out_shape is None else tuple(out_shape)
        self.what = ("monarch_matmul y1", self.y1, self.dtype, self.device)
        y1 = torch.empty(*self.y1, dtype=self.dtype, device=self.device)  # the layouts the launches are built for
        out = torch.empty(rows, s * l, dtype=self.dtype, device=self.device)
        self.first = Prepared(*_block_diag_args(x2d, w1, y1, config))
        self.second = Prepared(*_reordered_args(y1, w2, out, config))

    def _new_y1(self) -> tuple:
        return (torch.empty(*self.y1, dtype=self.dtype, device=self.device),)

    def __call__(self, x2d, w1, w2):
        device, stream = current()
        if self.index is not None and device is not None and device != self.index:  # launches use the current device
            with torch.cuda.device(self.device):
                return self(x2d, w1, w2)
        out = torch.empty(*self.out, dtype=self.dtype, device=self.device)
        if self.keep:
            scratch, ticket = take_scratch(self.what, device, stream, self._new_y1)
        else:
            scratch, ticket = self._new_y1(), None
        (y1,) = scratch
        try:
            self.first.on(device, stream, x2d, w1, y1)
            self.second.on(device, stream, y1, w2, out)
        finally:
            keep_scratch(ticket, scratch)
        return out


# the forward's launches per problem (monarch_matmul_fwd's key) -> _Forward
_prepared: dict = {}
_MAX_PREPARED = 1024


def _forward_key(x2d, w1, w2, config) -> tuple:
    # the kernels' ids too (the plan keeps them alive): a stand-in for one, a test's recorder, is a new problem
    return (x2d.shape, x2d.stride(), w1.shape, w1.stride(), w2.shape, w2.stride(), x2d.dtype, x2d.device,
            tuple(config.items()), id(_block_product), id(_reordered_block_matmul))  # fmt: skip


@guarded(_block_product, _reordered_block_matmul)
def monarch_matmul_fwd(x2d: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, config: dict) -> torch.Tensor:
    """``x2d [rows, k*p]``, ``w1 [k, q, p]``, ``w2 [l, s, r]`` -> ``[rows, s*l]`` (docs/math.md).

    The two launches are built once per problem (shapes, strides, dtype, device, config) and kept
    (:class:`_Forward`); a call allocates out and launches."""
    key = _forward_key(x2d, w1, w2, config)
    plan = _prepared.get(key)
    if plan is None:
        plan = _Forward(x2d, w1, w2, config)
        if len(_prepared) >= _MAX_PREPARED:
            _prepared.clear()
        _prepared[key] = plan
    return plan(x2d, w1, w2)


@guarded(_block_product, _reordered_block_matmul)
def prepare_fwd(x2d: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, config: dict, out_shape):
    """The eager fast path's forward of this problem and layout: ``(x, w1, w2) -> out`` of ``out_shape``
    for tensors with the data pointers and dtypes of tensors laid out as these (:class:`_Forward`), or
    None under the interpreter (whose launches take its lock). The caller keeps it as long as its
    selection stands."""
    return None if interpreting() else _Forward(x2d, w1, w2, config, out_shape, keep=True)


@guarded(_block_product, _reordered_block_matmul, _row_sum_partials, _sum_chunks)
def monarch_matmul_bwd(
    dout2d: torch.Tensor, x2d: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, config: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dx2d, dw1, dw2)`` of :func:`monarch_matmul_fwd` for ``dout2d [rows, s*l]``, in seven
    launches and no copies: y1 recomputed, dy1 = dout B2^T and dx = dy1 B1^T by the forward's kernels
    reading the transposed blocks as strided views, dw1[g] = sum_rows dy1_g^T x_g and dw2[l] =
    sum_rows dout_l^T y1_l (the strided columns s L + l, r L + l read in place) by :func:`_weight_grad`."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    y1 = _block_diag(x2d, w1, _rows_like(x2d, k * q), config)
    dy1 = _reordered(dout2d, w2.transpose(1, 2), _rows_like(x2d, k * q), config)  # (l, r, s) views, no copy
    dx = _block_diag(dy1, w1.transpose(1, 2), _rows_like(x2d, k * p), config)  # (k, p, q) views, no copy
    dw1 = _weight_grad(dy1, x2d, k, q, p, a_group=q, a_elem=1, b_group=p, b_elem=1, batched=False)
    dw2 = _weight_grad(dout2d, y1, l, s, r, a_group=1, a_elem=l, b_group=1, b_elem=l, batched=l >= _BATCHED_L_FROM)
    return dx, dw1, dw2
