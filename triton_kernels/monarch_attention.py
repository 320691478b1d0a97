"""Launchers of the Monarch attention Triton kernels: tensors in, tensors out, config given.

Knows nothing of torch ops or the registry. Config keys (validity: backends/triton.py):
``fwd_block_m, fwd_block_l, fwd_warps`` (the forward stage-R kernel, also the backward's recompute),
``fwd_block_k``, ``bwd_block_k`` (key rows per step of the forward stage-L kernel and of the
backward's dQ stage-L kernel, across key tiles),
``block_j, block_l, r_warps`` (the backward stage-R kernels), ``block_i, block_k, l_warps``
(stage-L kernels), ``num_stages``. Tile-order shapes: q ``[B, A, b1, b2, nh, d]``, k and v ``[B, F, b1, b2, nh, d]``.
"""

from __future__ import annotations

import torch
import triton

from ._interpreter import guarded
from .monarch_attention_bwd import _stage_l_bwd_kv, _stage_l_bwd_q, _stage_r_bwd_kv, _stage_r_bwd_q
from .monarch_attention_fwd import _stage_l_fwd, _stage_l_update, _stage_r_fwd


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get 3-pass tf32 (about fp32 accuracy; one tf32 pass loses ~2e-3 over two stages)
    return "tf32x3" if dtype == torch.float32 else "tf32"


class _Scratch:
    """Stage-R intermediates, heads first: aL, Y ``[B, nh, A, F, b2, b1, d]``; cL ``[B, nh, A, F, b2, b1]``."""

    def __init__(self, q, n_f, with_lse_r=False):
        bsz, n_a, b1, b2, nh, d = q.shape
        self.a_l = torch.empty(bsz, nh, n_a, n_f, b2, b1, d, dtype=q.dtype, device=q.device)
        self.y = torch.empty_like(self.a_l)
        self.c_l = torch.empty(bsz, nh, n_a, n_f, b2, b1, dtype=torch.float32, device=q.device)
        self.lse_r = torch.empty_like(self.c_l) if with_lse_r else self.c_l


# Fewer stage-R programs than this (small F * b1 * heads) split each key row's (a, j) rows.
_MIN_STAGE_R_PROGRAMS = 1024


def _stage_r(q, k, v, sc: _Scratch, a_r, c_r, sm_scale, common, config, write_y=True, write_lse=False):
    n_a, b1, b2 = q.shape[1], q.shape[2], q.shape[3]
    n_f, bsz, nh = k.shape[1], q.shape[0], q.shape[4]
    programs = n_f * b1 * bsz * nh
    row_blocks = triton.cdiv(n_a * b2, config["fwd_block_m"])
    split = min(row_blocks, max(1, triton.cdiv(_MIN_STAGE_R_PROGRAMS, programs)))
    _stage_r_fwd[(n_f * b1, split, bsz * nh)](
        q, k, v, q if a_r is None else a_r, sc.c_l if c_r is None else c_r, sc.a_l, sc.y, sc.c_l, sc.lse_r,
        sm_scale, *q.stride()[:5], *k.stride()[:5], *v.stride()[:5], *common,
        FIRST=a_r is None, WRITE_Y=write_y, WRITE_LSE=write_lse, ONE_L_BLOCK=b2 <= config["fwd_block_l"],
        HEAD_DIM=q.shape[5], DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_M=config["fwd_block_m"], BLOCK_L=config["fwd_block_l"], num_warps=config["fwd_warps"],
        num_stages=config["num_stages"],
    )  # fmt: skip


@guarded(_stage_r_fwd, _stage_l_fwd, _stage_l_update)
def monarch_attention_fwd(q, k, v, *, sm_scale: float, causal_block_tiles: int, num_iters: int, config: dict):
    """-> ``(z [B, A, b1, b2, nh, d]`` in q's dtype, ``lse [B, A, b1, b2, nh]`` float32)."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    bsz, n_a, b1, b2, nh, d = q.shape
    n_f = k.shape[1]
    sc = _Scratch(q, n_f)
    z = torch.empty(bsz, n_a, b1, b2, nh, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(bsz, n_a, b1, b2, nh, dtype=torch.float32, device=q.device)
    a_r = c_r = None
    common = (nh, n_a, n_f, b1, b2, causal_block_tiles)
    grid_l = (n_a * b2, triton.cdiv(b1, config["block_i"]), bsz * nh)
    for it in range(num_iters):
        last = it == num_iters - 1
        _stage_r(q, k, v, sc, a_r, c_r, sm_scale, common, config, write_y=last)
        _stage_l_fwd[grid_l](
            q, sc.a_l, sc.y, sc.c_l, z, lse, sm_scale, *q.stride()[:5], *common,
            WRITE_Z=last, HEAD_DIM=d, DOT_PRECISION=_dot_precision(q.dtype),
            BLOCK_I=config["block_i"], BLOCK_K=config["fwd_block_k"],
            num_warps=config["l_warps"], num_stages=config["num_stages"],
        )  # fmt: skip
        if not last:
            if a_r is None:
                a_r = torch.empty(bsz, nh, n_a, n_f, b1, b2, d, dtype=q.dtype, device=q.device)
                c_r = torch.empty(bsz, nh, n_a, n_f, b1, b2, dtype=torch.float32, device=q.device)
            grid_u = (n_a * n_f * b2, triton.cdiv(b1, config["block_k"]), bsz * nh)
            _stage_l_update[grid_u](
                q, sc.a_l, sc.c_l, lse, a_r, c_r, sm_scale, *q.stride()[:5], *common,
                HEAD_DIM=d, DOT_PRECISION=_dot_precision(q.dtype),
                BLOCK_I=config["block_i"], BLOCK_K=config["block_k"],
                num_warps=config["l_warps"], num_stages=config["num_stages"],
            )  # fmt: skip
    return z, lse


@guarded(_stage_r_fwd, _stage_l_bwd_kv, _stage_l_bwd_q, _stage_r_bwd_kv, _stage_r_bwd_q)
def monarch_attention_bwd(dz, dlse, q, k, v, z, lse, *, sm_scale: float, causal_block_tiles: int, config: dict):
    """Gradients of num_iters = 1 Monarch attention (docs/math.md, Backward) -> ``(dq, dk, dv)``.

    Recomputes stage R; dQ, dK, dV accumulate in fp32 and are returned in q's dtype.
    """
    q, k, v, dz = (_last_dim_contiguous(x) for x in (q, k, v, dz))
    bsz, n_a, b1, b2, nh, d = q.shape
    n_f = k.shape[1]
    common = (nh, n_a, n_f, b1, b2, causal_block_tiles)
    sc = _Scratch(q, n_f, with_lse_r=True)
    _stage_r(q, k, v, sc, None, None, sm_scale, common, config, write_y=True, write_lse=True)
    # D_L = <Z, dZ> - dlse: the stage-L softmax "delta", with the lse output's own gradient folded in
    delta_l = ((z.float() * dz.float()).sum(-1) - dlse.float()).contiguous()  # [B, A, b1, b2, nh]
    lse = lse.float().contiguous()
    da_l = torch.empty_like(sc.a_l)
    dy = torch.empty_like(sc.y)
    dc_l = torch.empty_like(sc.c_l)
    delta_r = torch.empty_like(sc.c_l)
    dq = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.empty(k.shape[:4] + (nh, d), dtype=torch.float32, device=q.device)
    dv = torch.empty_like(dk)
    strides_q = (*q.stride()[:5], *dz.stride()[:5])
    l_meta = dict(HEAD_DIM=d, DOT_PRECISION=_dot_precision(q.dtype),
                  BLOCK_I=config["block_i"], BLOCK_K=config["block_k"],
                  num_warps=config["l_warps"], num_stages=config["num_stages"])  # fmt: skip
    r_meta = dict(HEAD_DIM=d, DOT_PRECISION=_dot_precision(q.dtype),
                  BLOCK_J=config["block_j"], BLOCK_L=config["block_l"],
                  num_warps=config["r_warps"], num_stages=config["num_stages"])  # fmt: skip
    _stage_l_bwd_kv[(n_a * n_f * b2, triton.cdiv(b1, config["block_k"]), bsz * nh)](
        q, dz, lse, delta_l, sc.a_l, sc.y, sc.c_l, da_l, dy, dc_l, delta_r, sm_scale, *strides_q, *common, **l_meta
    )
    _stage_l_bwd_q[(n_a * b2, triton.cdiv(b1, config["block_i"]), bsz * nh)](
        q, dz, lse, delta_l, sc.a_l, sc.y, sc.c_l, dq, sm_scale, *strides_q, *common,
        **{**l_meta, "BLOCK_K": config["bwd_block_k"]},
    )  # fmt: skip
    strides_kv = (*k.stride()[:5], *v.stride()[:5])
    _stage_r_bwd_kv[(n_f * b1, triton.cdiv(b2, config["block_l"]), bsz * nh)](
        q, k, v, sc.lse_r, da_l, dy, dc_l, delta_r, dk, dv, sm_scale, *q.stride()[:5], *strides_kv, *common, **r_meta
    )
    _stage_r_bwd_q[(n_a * b1, triton.cdiv(b2, config["block_j"]), bsz * nh)](
        q, k, v, sc.lse_r, da_l, dy, dc_l, delta_r, dq, sm_scale, *q.stride()[:5], *strides_kv, *common, **r_meta
    )
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
