"""Reference Monarch attention in plain PyTorch: the oracle for every backend and the CPU path.

Written for clarity, not speed: it materialises R (size A*F*b1*b2*b2 per head) and L.
Any floating dtype; half inputs are computed in float32, float64 stays float64; differentiable.

Shapes (tile order, see layout.py): q ``[B, A, b1, b2, nh, d]``, k and v ``[B, F, b1, b2, nh, d]``.
Inside, heads move to the front: ``[B, nh, A, b1, b2, d]``. Index names follow docs/math.md:
query (a, i, j), key (f, k, l).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Inverse temperature cap and its guard for key rows that receive no query mass (docs/math.md, Several iterations).
TEMPERATURE_EPS = 1e-6
TEMPERATURE_MAX = 1e4


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def visible_tiles(num_q_tiles: int, num_kv_tiles: int, causal_block_tiles: int | None, device) -> torch.Tensor | None:
    """``[A, F]`` bool: query tile a sees key tile f iff ``f // cbs <= a // cbs``; None if not causal."""
    if not causal_block_tiles:
        return None
    a = torch.arange(num_q_tiles, device=device) // causal_block_tiles
    f = torch.arange(num_kv_tiles, device=device) // causal_block_tiles
    return f[None, :] <= a[:, None]


@dataclass
class MonarchState:
    """Every intermediate of the final pass, heads first (``[B, nh, ...]``)."""

    r: torch.Tensor  # [B, nh, A, F, b1(k), b2(j), b2(l)]  stage-R softmax over l
    log_r: torch.Tensor  # same shape
    l: torch.Tensor  # [B, nh, A, b1(i), b2(j), F, b1(k)]  stage-L softmax over (f, k)
    lse_l: torch.Tensor  # [B, nh, A, b1(i), b2(j)]  stage-L log-normaliser
    z: torch.Tensor  # [B, nh, A, b1, b2, d]


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    # [B, T, b1, b2, nh, d] -> [B, nh, T, b1, b2, d]
    return x.permute(0, 4, 1, 2, 3, 5)


def _stage_r(a_r, k_s, v, temperature):
    """Softmax within each key row, the query taken at the key's row.

    a_r: [B, nh, A, F|1, b1(k), b2(j), d]; k_s, v: [B, nh, F, b1(k), b2(l), d];
    temperature: scalar or [B, nh, A, F, b1, b2].
    """
    s_r = torch.einsum("bhafkjd,bhfkld->bhafkjl", a_r, k_s)
    s_r = s_r * (temperature if isinstance(temperature, float) else temperature[..., None])
    log_r = torch.log_softmax(s_r, dim=-1)
    r = log_r.exp()
    a_l = torch.einsum("bhafkjl,bhfkld->bhafkjd", r, k_s)
    y = torch.einsum("bhafkjl,bhfkld->bhafkjd", r, v)
    c_l = (r * log_r).sum(-1)  # [B, nh, A, F, k, j] = -entropy of R
    return r, log_r, a_l, y, c_l


def _stage_l(q_s, a_l, c_l, visible):
    """Softmax over every visible key row (f, k); returns L and its log-normaliser.

    q_s: [B, nh, A, b1(i), b2(j), d]; a_l: [B, nh, A, F, b1(k), b2(j), d]; c_l: [B, nh, A, F, k, j].
    """
    s_l = torch.einsum("bhaijd,bhafkjd->bhaijfk", q_s, a_l)
    s_l = s_l - c_l.permute(0, 1, 2, 5, 3, 4)[:, :, :, None]  # [B, nh, A, 1, j, F, k]
    if visible is not None:
        s_l = s_l.masked_fill(~visible[:, None, None, :, None], float("-inf"))
    lse_l = torch.logsumexp(s_l.flatten(-2), dim=-1)
    l = torch.exp(s_l - lse_l[..., None, None])
    return l, lse_l


def monarch_state(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sm_scale: float,
    causal_block_tiles: int | None = None,
    num_iters: int = 1,
) -> MonarchState:
    """All intermediates of Monarch attention on tile-order inputs (docs/math.md)."""
    dtype = compute_dtype(q.dtype)
    root = math.sqrt(sm_scale)  # kept in full precision, never rounded to the input dtype
    q_s = _heads_first(q).to(dtype) * root  # Q~ [B, nh, A, b1, b2, d]
    k_s = _heads_first(k).to(dtype) * root  # K~ [B, nh, F, b1, b2, d]
    v_c = _heads_first(v).to(dtype)
    num_kv_tiles = k.shape[1]
    visible = visible_tiles(q.shape[1], num_kv_tiles, causal_block_tiles, q.device)

    a_r = q_s.unsqueeze(3)  # L = identity: the query of row k for key row k, every f
    temperature: float | torch.Tensor = 1.0
    for _ in range(num_iters - 1):
        _, _, a_l, _, c_l = _stage_r(a_r.expand(-1, -1, -1, num_kv_tiles, -1, -1, -1), k_s, v_c, temperature)
        l, _ = _stage_l(q_s, a_l, c_l, visible)
        a_r = torch.einsum("bhaijfk,bhaijd->bhafkjd", l, q_s)
        c_r = l.sum(dim=3).permute(0, 1, 2, 4, 5, 3)  # [B, nh, A, F, k, j]
        temperature = torch.clamp(1.0 / (c_r + TEMPERATURE_EPS), max=TEMPERATURE_MAX)
    a_r = a_r.expand(-1, -1, -1, num_kv_tiles, -1, -1, -1)
    r, log_r, a_l, y, c_l = _stage_r(a_r, k_s, v_c, temperature)
    l, lse_l = _stage_l(q_s, a_l, c_l, visible)
    z = torch.einsum("bhaijfk,bhafkjd->bhaijd", l, y)
    return MonarchState(r=r, log_r=log_r, l=l, lse_l=lse_l, z=z)


def monarch_attention_tiles(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sm_scale: float,
    causal_block_tiles: int | None = None,
    num_iters: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monarch attention on tile-order tensors.

    Returns ``z [B, A, b1, b2, nh, d]`` in q's dtype and the stage-L log-normaliser
    ``lse [B, A, b1, b2, nh]`` (natural log) in the compute dtype (float32, or float64).
    """
    st = monarch_state(q, k, v, sm_scale=sm_scale, causal_block_tiles=causal_block_tiles, num_iters=num_iters)
    z = st.z.permute(0, 2, 3, 4, 1, 5).to(q.dtype)
    lse = st.lse_l.permute(0, 2, 3, 4, 1)
    return z, lse


def implied_attention_matrix(state: MonarchState) -> torch.Tensor:
    """Dense ``W[(a,i,j), (f,k,l)] = L[a,i,j,f,k] * R[a,f,k,j,l]`` as ``[B, nh, A*b1*b2, F*b1*b2]``.

    Token order inside both axes is tile order. For tests and analysis on small shapes only.
    """
    w = torch.einsum("bhaijfk,bhafkjl->bhaijfkl", state.l, state.r)
    bsz, nh, a, b1, b2, f = w.shape[:6]
    return w.reshape(bsz, nh, a * b1 * b2, f * b1 * b2)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """Plain softmax attention on ``(B, S, nh, d)`` tensors, in the compute dtype of q."""
    dtype = compute_dtype(q.dtype)
    s = torch.einsum("bqhd,bkhd->bhqk", q.to(dtype), k.to(dtype)) * sm_scale
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v.to(dtype))
