import math
import os

import pytest
import torch

# Triton decides at import time whether to interpret: set it before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import monarchrt_ops  # noqa: E402


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere fails."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all(), "non-finite values in the output"
    return ((out - ref).norm() / ref.norm()).item()


# docs/testing.md: against float64, relative norm error.
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def qkv(bsz, frames_q, frames_kv, frame_shape, nh, d, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    hw = frame_shape[0] * frame_shape[1]
    q = torch.randn(bsz, frames_q * hw, nh, d, generator=g, dtype=torch.float64)
    k = torch.randn(bsz, frames_kv * hw, nh, d, generator=g, dtype=torch.float64)
    v = torch.randn(bsz, frames_kv * hw, nh, d, generator=g, dtype=torch.float64)
    return tuple(x.to(dtype).requires_grad_(requires_grad) for x in (q, k, v))


def self_forcing_error_bf16(backend: str, q_frames: int, kv_frames: int) -> float:
    """GPU tier: ``backend`` in bf16 at Self-Forcing sizes (30x52 frames, 12 heads, d=128) against the
    float64 reference computed on the GPU; returns the relative error."""
    hw, shape = 30 * 52, (30, 52)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, q_frames * hw, 12, 128, device="cuda", generator=gen).bfloat16()
    k, v = (torch.randn(1, kv_frames * hw, 12, 128, device="cuda", generator=gen).bfloat16() for _ in range(2))
    out = monarchrt_ops.monarch_attention(q, k, v, shape, backend=backend)
    ref = monarchrt_ops.monarch_attention(q.double(), k.double(), v.double(), shape, backend="reference")
    return rel_err(out, ref)


def state_of(q, k, v, frame_shape, sm_scale=None, causal_block_frames=None, num_iters=1, **tiling_kw):
    """Reference intermediates for natural-order inputs."""
    from monarchrt_ops import reference
    from monarchrt_ops.layout import causal_block_tiles

    tiling = monarchrt_ops.make_tiling(frame_shape, **tiling_kw)
    scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
    cbt = causal_block_tiles(tiling, causal_block_frames or 0)
    return reference.monarch_state(
        monarchrt_ops.to_tiles(q, tiling),
        monarchrt_ops.to_tiles(k, tiling),
        monarchrt_ops.to_tiles(v, tiling),
        sm_scale=scale,
        causal_block_tiles=cbt,
        num_iters=num_iters,
    )


@pytest.fixture
def poison_empty(monkeypatch):
    """Fill every float torch.empty / empty_like with NaN, so an unwritten output cannot pass."""
    orig_empty, orig_like = torch.empty, torch.empty_like

    def poisoned(out):
        if out.is_floating_point():
            out.fill_(math.nan)
        return out

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poisoned(orig_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poisoned(orig_like(*a, **kw)))


class FakeExtension:
    """Stand-in for the built ``monarchrt_ops._C`` on machines without it: the architectures and the
    shared memory of the real build, and no size, scale or grid limit (``*_reason`` return ''); the
    tests of those limits use the built extension itself, or a subclass that answers otherwise."""

    @staticmethod
    def compiled_archs():
        return ["90a", "100a", "120a"]

    @staticmethod
    def limits():
        return {"attention": {"smem_bytes": 230944, "max_num_iters": 1}}

    @staticmethod
    def hadamard_smem_bytes(n, m):
        return max(32768, 2 * n)

    @staticmethod
    def hadamard_reason(rows, n, m, dtype):
        return ""

    @staticmethod
    def monarch_attention_fwd_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, sm_scale, dtype):
        return ""

    @staticmethod
    def monarch_matmul_reason(rows, k, q, p, l, s, r, dtype):
        return ""


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    """An empty folder of tuned-config tables, read instead of the package's (MONARCHRT_TUNED_CONFIGS)."""
    from monarchrt_ops import tables

    monkeypatch.setenv("MONARCHRT_TUNED_CONFIGS", str(tmp_path))
    tables.clear_cache()
    yield tmp_path
    tables.clear_cache()
