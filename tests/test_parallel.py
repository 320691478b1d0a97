"""Sequence parallelism: 2-process gloo runs (CPU, reference backend, float64) equal the single-process
call, forward and backward."""

import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monarchrt_ops import monarch_attention
from monarchrt_ops.parallel import ring_attention, ulysses_attention

SHAPE = (4, 6)
HW = 24


def full_inputs(frames, nh, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, frames * HW, nh, 8, generator=g, dtype=torch.float64) for _ in range(4)]  # q k v dout


def check(fn, frames, nh, seed, rank, world, **kwargs):
    """Sharded ``fn`` on this rank vs the unsharded monarch_attention: output and q/k/v gradients."""
    q, k, v, dout = full_inputs(frames, nh, seed)
    ref_in = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = monarch_attention(*ref_in, SHAPE, backend="reference", **kwargs)
    (ref * dout).sum().backward()
    n = q.shape[1] // world
    part = slice(rank * n, (rank + 1) * n)
    shard_in = [x[:, part].clone().requires_grad_() for x in (q, k, v)]
    out = fn(*shard_in, SHAPE, backend="reference", **kwargs)
    (out * dout[:, part]).sum().backward()
    torch.testing.assert_close(out, ref[:, part], rtol=0, atol=1e-12)
    for name, got, want in zip("qkv", shard_in, ref_in, strict=True):
        assert want.grad[:, part].abs().max() > 0, name
        torch.testing.assert_close(got.grad, want.grad[:, part], rtol=0, atol=1e-12, msg=f"d{name}")


def worker(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # Ulysses: every mode; shards need not be whole frames (3 frames over 2 ranks).
        check(ulysses_attention, 3, 4, 0, rank, world, h_reduce=2, w_reduce=2)
        check(ulysses_attention, 4, 2, 1, rank, world, f_tied=2, w_reduce=3, causal_block_frames=2, num_iters=2)
        # Ring: whole key tiles per shard; non-causal and block-causal (rank 0 skips rank 1's keys).
        check(ring_attention, 4, 2, 2, rank, world, f_tied=2, h_reduce=2, w_reduce=2)
        check(ring_attention, 4, 2, 3, rank, world, w_reduce=2, causal_block_frames=1)
        check(ring_attention, 8, 2, 4, rank, world, f_tied=2, w_reduce=3, causal_block_frames=2)
        q, k, v, _ = full_inputs(2, 2, 5)
        with pytest.raises(ValueError, match="exact only for num_iters=1"):
            ring_attention(q, k, v, SHAPE, num_iters=2)
        with pytest.raises(ValueError, match="whole f_tied-frame groups"):
            ring_attention(q, k, v, SHAPE, f_tied=4)
        with pytest.raises(ValueError, match="whole causal blocks"):
            ring_attention(q, k, v, SHAPE, causal_block_frames=4)
        with pytest.raises(ValueError, match="heads divisible"):
            ulysses_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], SHAPE)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process():
    with tempfile.NamedTemporaryFile(delete=False) as f:
        init_file = f.name
    mp.spawn(worker, args=(2, init_file), nprocs=2, join=True)


def test_needs_an_initialised_process_group():
    q = torch.randn(1, HW, 2, 8)
    with pytest.raises(ValueError, match="init_process_group"):
        ulysses_attention(q, q, q, SHAPE)
    with pytest.raises(ValueError, match="init_process_group"):
        ring_attention(q, q, q, SHAPE)
