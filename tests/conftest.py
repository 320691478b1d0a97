import contextlib
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


# docs/testing.md, Tolerances: the floors of the one rule (assert_close_to_float64), per dtype of the
# kernel's inputs; FLOOR_TF32 for fp32 where a kernel multiplies on tf32 tensor cores (one pass).
FLOOR = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}
FLOOR_TF32 = 5e-4


def tolerance(same_math: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype, *, tf32: bool = False) -> float:
    """The rule's bound on ``rel_err(out, ref64)`` for a kernel run at ``dtype`` (docs/testing.md,
    Tolerances): twice the error of the same math in PyTorch at that dtype, ``same_math`` (the
    reference backend on the inputs cast to ``dtype``), and never below the dtype's floor."""
    floor = FLOOR_TF32 if tf32 and dtype == torch.float32 else FLOOR[dtype]
    same = same_math.detach().double().cpu()
    assert torch.isfinite(same).all(), f"the same math in PyTorch at {dtype} is not finite: no bound to hold"
    return max(2 * rel_err(same, ref64), floor)


def assert_close_to_float64(
    out: torch.Tensor,
    ref64: torch.Tensor,
    same_math: torch.Tensor,
    dtype: torch.dtype,
    *,
    tf32: bool = False,
    at_most: float | None = None,
    what: str = "output",
) -> float:
    """The one tolerance rule of the op tests (docs/testing.md, Tolerances): passes when
    ``rel_err(out, ref64) <= max(2 * rel_err(same_math, ref64), floor)`` and returns the error.

    ``ref64``: the float64 reference, never all zeros; ``same_math``: the same math in PyTorch at
    ``dtype`` (see :func:`tolerance`); NaN or inf in ``out`` never passes. ``at_most``: a stricter bound
    that the case was held to before the rule; the stricter of the two is kept (a check is never
    loosened: the caller says why in a comment)."""
    assert ref64.detach().double().norm() > 0, "a relative error against zeros checks nothing"
    err = rel_err(out, ref64)
    rule = tolerance(same_math, ref64, dtype, tf32=tf32)
    bound = rule if at_most is None else min(rule, at_most)
    assert err <= bound, (
        f"{what}: relative error {err:.3g} against float64 > {bound:.3g} (the rule at {dtype}: {rule:.3g} = "
        f"max(2 x {rel_err(same_math, ref64):.3g} of the same math in PyTorch, floor)"
        + ("" if at_most is None else f"; kept at most {at_most:.3g}")
        + ")"
    )
    return err


def clear_error_test(cases):
    """A test over ``cases`` of ``(id, fn, exception type, text of its message)``: each ``fn()`` raises
    that exception with that text. Assign it to a ``test_...`` name in the module that owns the cases."""

    @pytest.mark.parametrize("fn, exc, msg", [c[1:] for c in cases], ids=[c[0] for c in cases])
    def test(fn, exc, msg):
        with pytest.raises(exc) as info:
            fn()
        assert msg in str(info.value)

    return test


@contextlib.contextmanager
def skip_unless_supported(backend: str):
    """Around calls with ``backend=backend``: where the registry refuses one (the backend cannot run on
    this machine, or its ``supports()`` rejects the problem: registry.select), the test is skipped with
    the registry's own message. Any other error propagates."""
    try:
        yield
    except ValueError as e:
        if str(e).startswith(f"backend={backend!r} cannot run "):
            pytest.skip(str(e))
        raise


def qkv(bsz, frames_q, frames_kv, frame_shape, nh, d, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    hw = frame_shape[0] * frame_shape[1]
    q = torch.randn(bsz, frames_q * hw, nh, d, generator=g, dtype=torch.float64)
    k = torch.randn(bsz, frames_kv * hw, nh, d, generator=g, dtype=torch.float64)
    v = torch.randn(bsz, frames_kv * hw, nh, d, generator=g, dtype=torch.float64)
    return tuple(x.to(dtype).requires_grad_(requires_grad) for x in (q, k, v))


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
    """Fill every float torch.empty / empty_like with NaN, so an unwritten output cannot pass; no scratch
    is kept between calls meanwhile (each is new and poisoned: triton_kernels/_launch.py, take_scratch)."""
    from monarchrt_ops.triton_kernels import _launch

    monkeypatch.setenv("MONARCHRT_SCRATCH_MB", "0")
    _launch.release_scratch()
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

    @staticmethod
    def monarch_stage_r_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, dtype):
        return ""

    @staticmethod
    def monarch_stage_r_smem_bytes(b2, head_dim):
        return 113 * 1024

    @staticmethod
    def monarch_stage_r_bwd_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, dtype):
        return ""

    @staticmethod
    def monarch_stage_r_bwd_smem_bytes(b2, head_dim):
        return 97 * 1024

    @staticmethod
    def monarch_stage_l_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, dtype):
        return ""

    @staticmethod
    def monarch_stage_l_smem_bytes(b1, head_dim):
        return 83 * 1024

    @staticmethod
    def monarch_stage_l_bwd_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, dtype):
        return ""

    @staticmethod
    def monarch_stage_l_bwd_smem_bytes(b1, head_dim):
        return 92 * 1024


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    """An empty folder of tuned-config tables, read instead of the package's (MONARCHRT_TUNED_CONFIGS)."""
    from monarchrt_ops import tables

    monkeypatch.setenv("MONARCHRT_TUNED_CONFIGS", str(tmp_path))
    tables.clear_cache()
    yield tmp_path
    tables.clear_cache()
