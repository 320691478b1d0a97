"""Launchers of the Monarch attention Triton kernels: tensors in, tensors out, config given.

Knows nothing of torch ops or the registry. Config keys (see backends/triton.py for validity):
``block_j, block_l, r_warps`` (stage R), ``block_i, block_k, l_warps`` (stage L), ``num_stages``.
"""

from __future__ import annotations

import torch
import triton

from .monarch_attention_fwd import _stage_l_fwd, _stage_l_update, _stage_r_fwd


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def monarch_attention_fwd(q, k, v, *, sm_scale: float, causal_block_tiles: int, num_iters: int, config: dict):
    """Tile-order ``q [B, A, b1, b2, nh, d]``, ``k, v [B, F, b1, b2, nh, d]`` -> ``(z, lse)``.

    ``z`` is ``[B, A, b1, b2, nh, d]`` in q's dtype, ``lse`` ``[B, A, b1, b2, nh]`` float32.
    """
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    bsz, n_a, b1, b2, nh, d = q.shape
    n_f = k.shape[1]
    dev = q.device
    a_l = torch.empty(bsz, nh, n_a, n_f, b2, b1, d, dtype=q.dtype, device=dev)
    y = torch.empty_like(a_l)
    c_l = torch.empty(bsz, nh, n_a, n_f, b2, b1, dtype=torch.float32, device=dev)
    z = torch.empty(bsz, n_a, b1, b2, nh, d, dtype=q.dtype, device=dev)
    lse = torch.empty(bsz, n_a, b1, b2, nh, dtype=torch.float32, device=dev)
    a_r = c_r = None
    common = (nh, n_a, n_f, b1, b2, causal_block_tiles)
    stages = config["num_stages"]
    for it in range(num_iters):
        last = it == num_iters - 1
        grid_r = (n_a * n_f * b1, triton.cdiv(b2, config["block_j"]), bsz * nh)
        _stage_r_fwd[grid_r](
            q,
            k,
            v,
            q if a_r is None else a_r,
            c_l if c_r is None else c_r,
            a_l,
            y,
            c_l,
            sm_scale,
            *q.stride()[:5],
            *k.stride()[:5],
            *v.stride()[:5],
            *common,
            FIRST=a_r is None,
            HEAD_DIM=d,
            BLOCK_J=config["block_j"],
            BLOCK_L=config["block_l"],
            num_warps=config["r_warps"],
            num_stages=stages,
        )
        grid_l = (n_a * b2, triton.cdiv(b1, config["block_i"]), bsz * nh)
        _stage_l_fwd[grid_l](
            q,
            a_l,
            y,
            c_l,
            z,
            lse,
            sm_scale,
            *q.stride()[:5],
            *common,
            WRITE_Z=last,
            HEAD_DIM=d,
            BLOCK_I=config["block_i"],
            BLOCK_K=config["block_k"],
            num_warps=config["l_warps"],
            num_stages=stages,
        )
        if not last:
            if a_r is None:
                a_r = torch.empty(bsz, nh, n_a, n_f, b1, b2, d, dtype=q.dtype, device=dev)
                c_r = torch.empty(bsz, nh, n_a, n_f, b1, b2, dtype=torch.float32, device=dev)
            grid_u = (n_a * n_f * b2, triton.cdiv(b1, config["block_k"]), bsz * nh)
            _stage_l_update[grid_u](
                q,
                a_l,
                c_l,
                lse,
                a_r,
                c_r,
                sm_scale,
                *q.stride()[:5],
                *common,
                HEAD_DIM=d,
                BLOCK_I=config["block_i"],
                BLOCK_K=config["block_k"],
                num_warps=config["l_warps"],
                num_stages=stages,
            )
    return z, lse
