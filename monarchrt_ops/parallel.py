"""Sequence parallelism for Monarch attention on torch.distributed (NCCL on GPUs, gloo on CPUs).

Each rank holds a contiguous ``1/P`` of the token sequence (rank order), ``(B, S/P, nh, d)`` in
natural video order. Two schemes (``docs/integrations.md``, "Sequence parallelism"):

- :func:`ulysses_attention`: an all-to-all turns the sequence shards into head shards
  ``(B, S, nh/P, d)``, so each rank runs Monarch attention on whole frames for its heads, and a
  second all-to-all turns the output back. Exact for every mode (block-causal, ``num_iters > 1``).
  Needs ``nh % P == 0``.
- :func:`ring_attention`: the K/V shards travel round a ring; each rank computes Monarch attention
  of its queries over each K/V shard with :func:`~monarchrt_ops.monarch_attention_with_lse` and
  merges the partial outputs through their stage-L log-normalisers. With ``num_iters = 1`` this is
  exact when every shard is made of whole key tiles (whole ``f_tied``-frame groups): stage R is a
  softmax inside one key row of one key tile, so it never crosses a shard, and stage L is one
  softmax over every visible key row of every key tile, which splits over shards as
  ``Z = sum_s exp(lse_s - lse) Z_s`` with ``lse = logsumexp_s lse_s``. With ``num_iters > 1`` the
  later iterations couple all key tiles through the queries' stage-L weights, so no per-shard merge
  is exact: it raises ValueError (use Ulysses). Block-causal is handled when each shard holds whole
  causal blocks (a shard is fully visible, masked within, or invisible).

Both are differentiable: gradients go back through the all-to-alls and the ring rotations.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .attention import _check_int, monarch_attention, monarch_attention_with_lse

__all__ = ["ring_attention", "ulysses_attention"]


def _world(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("sequence parallel attention needs torch.distributed initialised (init_process_group)")
    return dist.get_world_size(group), dist.get_rank(group)


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """``x (P, ...)``: chunk ``p`` goes to rank ``p``; returns ``(P, ...)`` with chunk ``p`` from rank ``p``."""
    x = x.contiguous()
    out = torch.empty_like(x)  # after .contiguous(): empty_like of a permuted view would keep its strides
    dist.all_to_all_single(out, x, group=group)
    return out


def _seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """``(B, S/P, nh, d)`` -> ``(B, S, nh/P, d)``."""
    p = dist.get_world_size(group)
    b, s, nh, d = x.shape
    x = x.reshape(b, s, p, nh // p, d).permute(2, 0, 1, 3, 4)  # (P [head group], B, s, h, d)
    x = _all_to_all(x, group)  # (P [sequence shard], B, s, h, d)
    return x.permute(1, 0, 2, 3, 4).reshape(b, p * s, nh // p, d)


def _heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    """``(B, S, nh/P, d)`` -> ``(B, S/P, nh, d)`` (inverse of :func:`_seq_to_heads`)."""
    p = dist.get_world_size(group)
    b, seq, h, d = x.shape
    x = x.reshape(b, p, seq // p, h, d).permute(1, 0, 2, 3, 4)  # (P [sequence shard], B, s, h, d)
    x = _all_to_all(x, group)  # (P [head group], B, s, h, d)
    return x.permute(1, 2, 0, 3, 4).reshape(b, seq // p, p * h, d)


class _AllToAll(torch.autograd.Function):
    """The Ulysses all-to-all, sequence shards -> head groups (``to_heads``) or back; its gradient
    is the all-to-all the other way."""

    @staticmethod
    def forward(ctx, x, group, to_heads: bool):
        ctx.group, ctx.to_heads = group, to_heads
        return _seq_to_heads(x, group) if to_heads else _heads_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return (_heads_to_seq(grad, ctx.group) if ctx.to_heads else _seq_to_heads(grad, ctx.group)), None, None


def _check_shards(q, k, v, world: int) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a (B, S/P, nh, d) tensor")
    if k.shape != v.shape or q.shape[1] != k.shape[1]:
        raise ValueError(
            "each rank must hold q, k, v shards of one length, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def ulysses_attention(q, k, v, frame_shape, *, group=None, **kwargs) -> torch.Tensor:
    """Monarch attention on a sequence sharded over ranks, through head all-to-alls (DeepSpeed-Ulysses).

    Args:
        q, k, v: this rank's ``(B, S/P, nh, d)`` shard (natural order; rank ``r`` holds tokens
            ``[r*S/P, (r+1)*S/P)``). The shards need not be whole frames; ``nh`` must divide by P.
        frame_shape, kwargs: as :func:`monarchrt_ops.monarch_attention` (every mode).
        group: the process group (default: the world).

    Returns:
        This rank's ``(B, S/P, nh, d)`` shard of the output.
    """
    world, _ = _world(group)
    _check_shards(q, k, v, world)
    if q.shape[2] % world:
        raise ValueError(f"ulysses_attention needs heads divisible by the group size: nh={q.shape[2]}, P={world}")
    if world == 1:
        return monarch_attention(q, k, v, frame_shape, **kwargs)
    qf, kf, vf = (_AllToAll.apply(x, group, True) for x in (q, k, v))
    out = monarch_attention(qf, kf, vf, frame_shape, **kwargs)
    return _AllToAll.apply(out, group, False)


class _Rotate(torch.autograd.Function):
    """Send ``(k, v)`` to the next rank of the ring and receive the previous rank's; the backward
    sends the gradients the other way."""

    @staticmethod
    def forward(ctx, k, v, group):
        ctx.group = group
        return _shift(k, v, group, +1)

    @staticmethod
    def backward(ctx, dk, dv):
        return (*_shift(dk.contiguous(), dv.contiguous(), ctx.group, -1), None)


def _shift(k, v, group, direction: int):
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    dst = dist.get_global_rank(group, (rank + direction) % world) if group is not None else (rank + direction) % world
    src = dist.get_global_rank(group, (rank - direction) % world) if group is not None else (rank - direction) % world
    k, v = k.contiguous(), v.contiguous()
    rk, rv = torch.empty_like(k), torch.empty_like(v)
    ops = [
        dist.P2POp(dist.isend, k, dst, group),
        dist.P2POp(dist.isend, v, dst, group),
        dist.P2POp(dist.irecv, rk, src, group),
        dist.P2POp(dist.irecv, rv, src, group),
    ]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return rk, rv


def ring_attention(
    q,
    k,
    v,
    frame_shape,
    *,
    group=None,
    causal_block_frames: int | None = None,
    num_iters: int = 1,
    **kwargs,
) -> torch.Tensor:
    """Monarch attention with K/V shards passed round a ring and merged through the stage-L LSE.

    Args:
        q, k, v: this rank's ``(B, S/P, nh, d)`` shard; rank ``r`` holds frames
            ``[r*n, (r+1)*n)`` with ``n`` whole frames, a multiple of ``f_tied`` (whole key tiles).
        causal_block_frames: block-causal mask; ``n`` must be a multiple of it.
        num_iters: must be 1 (the merge is exact only there; module docstring).
        frame_shape, kwargs: as :func:`monarchrt_ops.monarch_attention` (tiling, sm_scale, backend).

    Returns:
        This rank's ``(B, S/P, nh, d)`` shard of the output, equal to the unsharded call's.
    """
    world, rank = _world(group)
    _check_shards(q, k, v, world)
    _check_int("num_iters", num_iters)
    if num_iters != 1:
        raise ValueError(
            f"ring_attention is exact only for num_iters=1 (got {num_iters}): later iterations couple every key "
            "tile through the queries' stage-L weights; use ulysses_attention"
        )
    h, w = frame_shape
    hw, f_tied = h * w, kwargs.get("f_tied", 1)
    if q.shape[1] % (hw * f_tied):
        raise ValueError(
            f"ring_attention needs each shard to be whole f_tied-frame groups (whole key tiles): "
            f"S/P={q.shape[1]} tokens is not a multiple of f_tied*H*W={f_tied * hw}"
        )
    shard_frames = q.shape[1] // hw
    if causal_block_frames is not None:
        _check_int("causal_block_frames", causal_block_frames)
        if shard_frames % causal_block_frames:
            raise ValueError(
                f"ring_attention with causal_block_frames={causal_block_frames} needs whole causal blocks per shard, "
                f"got {shard_frames} frames per shard"
            )
    outs, lses, unused = [], [], []
    ks, vs = k, v
    for step in range(world):
        if step:
            ks, vs = _Rotate.apply(ks, vs, group)
        src = (rank - step) % world
        if causal_block_frames is not None and src > rank:
            unused.append((ks, vs))  # a later shard is invisible to these queries
            continue
        cbf = causal_block_frames if (causal_block_frames is not None and src == rank) else None
        o, lse = monarch_attention_with_lse(q, ks, vs, frame_shape, causal_block_frames=cbf, **kwargs)
        outs.append(o)
        lses.append(lse)
    lse = torch.logsumexp(torch.stack(lses), dim=0)
    out = sum(torch.exp(l - lse).unsqueeze(-1) * o.to(lse.dtype) for o, l in zip(outs, lses, strict=True))
    # Keep every rotated shard in the graph (with weight 0) so every rank runs the same backward
    # communication: a rank that skipped a shard must still pass its gradient on round the ring.
    for ks_, vs_ in unused:
        out = out + 0.0 * (ks_.sum() + vs_.sum()).to(out.dtype)
    return out.to(q.dtype)
