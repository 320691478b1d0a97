"""Every bad input raises TypeError/ValueError naming the value, before any kernel runs."""

import pytest
import torch

import monarchrt_ops as m


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


Q = t(1, 120, 2, 8)
CASES = [
    (
        "S not a multiple of H*W",
        lambda: m.monarch_attention(t(1, 100, 2, 8), Q, Q, (6, 10)),
        ValueError,
        "S=100 is not a positive multiple of H*W=60",
    ),
    (
        "kv S not a multiple",
        lambda: m.monarch_attention(Q, t(1, 90, 2, 8), t(1, 90, 2, 8), (6, 10)),
        ValueError,
        "S=90",
    ),
    (
        "h_reduce",
        lambda: m.monarch_attention(Q, Q, Q, (6, 10), h_reduce=4),
        ValueError,
        "H=6 is not divisible by h_reduce=4",
    ),
    (
        "w_reduce",
        lambda: m.monarch_attention(Q, Q, Q, (6, 10), w_reduce=3),
        ValueError,
        "W=10 is not divisible by w_reduce=3",
    ),
    (
        "f_tied",
        lambda: m.monarch_attention(Q, Q, Q, (6, 10), f_tied=3),
        ValueError,
        "2 frames are not divisible by f_tied=3",
    ),
    ("batch", lambda: m.monarch_attention(Q, t(2, 120, 2, 8), t(2, 120, 2, 8), (6, 10)), ValueError, "batch: 1 vs 2"),
    ("heads", lambda: m.monarch_attention(Q, t(1, 120, 3, 8), t(1, 120, 3, 8), (6, 10)), ValueError, "heads: 2 vs 3"),
    (
        "head_dim",
        lambda: m.monarch_attention(Q, t(1, 120, 2, 4), t(1, 120, 2, 4), (6, 10)),
        ValueError,
        "head_dim: 8 vs 4",
    ),
    (
        "k v shape",
        lambda: m.monarch_attention(Q, Q, t(1, 60, 2, 8), (6, 10)),
        ValueError,
        "k and v must have the same shape",
    ),
    ("dtype mismatch", lambda: m.monarch_attention(Q, Q.double(), Q, (6, 10)), TypeError, "share a dtype"),
    ("int dtype", lambda: m.monarch_attention(Q.long(), Q, Q, (6, 10)), TypeError, "torch.int64 is not supported"),
    (
        "unsupported head_dim",
        lambda: m.monarch_attention(*(t(1, 60, 1, 300),) * 3, (6, 10)),
        ValueError,
        "head_dim=300 is not supported",
    ),
    ("rank", lambda: m.monarch_attention(t(120, 2, 8), Q, Q, (6, 10)), ValueError, "must be (B, S, nh, d)"),
    ("not a tensor", lambda: m.monarch_attention([1.0], Q, Q, (6, 10)), TypeError, "q must be a torch.Tensor"),
    ("frame_shape", lambda: m.monarch_attention(Q, Q, Q, 60), TypeError, "frame_shape must be a pair"),
    ("float f_tied", lambda: m.monarch_attention(Q, Q, Q, (6, 10), f_tied=1.0), TypeError, "f_tied must be an int"),
    ("num_iters 0", lambda: m.monarch_attention(Q, Q, Q, (6, 10), num_iters=0), ValueError, "num_iters=0 must be >= 1"),
    (
        "causal Sq != Skv",
        lambda: m.monarch_attention(t(1, 60, 2, 8), Q, Q, (6, 10), causal_block_frames=1),
        ValueError,
        "needs Sq == Skv",
    ),
    (
        "causal vs f_tied",
        lambda: m.monarch_attention(Q, Q, Q, (6, 10), f_tied=2, causal_block_frames=1),
        ValueError,
        "multiple of f_tied=2",
    ),
    ("sm_scale", lambda: m.monarch_attention(Q, Q, Q, (6, 10), sm_scale=-1.0), ValueError, "sm_scale=-1.0"),
    (
        "sm_scale nan",
        lambda: m.monarch_attention(Q, Q, Q, (6, 10), sm_scale=float("nan")),
        ValueError,
        "positive finite",
    ),
    (
        "unknown backend",
        lambda: m.monarch_attention(Q, Q, Q, (6, 10), backend="cudnn"),
        ValueError,
        "backend='cudnn' is not one of",
    ),
    (
        "cache start",
        lambda: m.write_kv_cache(t(1, 120, 2, 8), t(1, 120, 2, 8), Q, Q, 1, (6, 10)),
        ValueError,
        "frames [1, 3) do not fit a cache of 2 frames",
    ),
    (
        "cache kv_frames",
        lambda: m.monarch_attention_kv_cache(Q, Q, Q, 3, (6, 10)),
        ValueError,
        "kv_frames=3 must be <= 2",
    ),
    (
        "cache new_k alone",
        lambda: m.monarch_attention_kv_cache(Q, Q, Q, 2, (6, 10), new_k=Q),
        ValueError,
        "both new_k and new_v",
    ),
    (
        "cache requires grad",
        lambda: m.monarch_attention_kv_cache(Q, Q.clone().requires_grad_(), Q, 2, (6, 10), new_k=Q, new_v=Q),
        ValueError,
        "the cache requires grad",
    ),
]


@pytest.mark.parametrize("fn, exc, msg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(fn, exc, msg):
    with pytest.raises(exc) as info:
        fn()
    assert msg in str(info.value)


def test_explicit_backend_never_falls_back(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' cannot run attention here: no CUDA device"):
        m.monarch_attention(Q, Q, Q, (6, 10), backend="triton")


def test_triton_rejects_other_head_dims(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match=r"head_dim=8 is not in \(64, 128\)"):
        m.monarch_attention(Q, Q, Q, (6, 10), backend="triton")
