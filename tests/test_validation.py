"""Every bad input raises TypeError/ValueError naming the value, before any kernel runs."""

import re

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


# Hardening (issue 18): silent wrong answers and internal errors that now raise, each naming the argument.
KC = torch.zeros(1, 240, 2, 8)
QT = Q.reshape(1, 2, 6, 10, 2, 8)  # tile order of the identity tiling
NK = t(1, 60, 2, 8)
HARDENING = [
    (
        "new_v on another device",
        lambda: m.write_kv_cache(KC.clone(), KC.clone(), NK, NK.to("meta"), 0, (6, 10)),
        ValueError,
        "new_v, k_cache, v_cache must be on one device",
    ),
    ("k and v caches aliased", lambda: m.write_kv_cache(KC, KC, NK, NK, 0, (6, 10)), ValueError, "share memory"),
    (
        "stride-0 cache",
        lambda: m.write_kv_cache(torch.zeros(1, 1, 2, 8).expand(1, 240, 2, 8), KC.clone(), NK, NK, 0, (6, 10)),
        ValueError,
        "k_cache is a broadcast (stride-0) view",
    ),
    (
        "new_k aliases the cache",
        lambda: m.write_kv_cache(KC, KC.clone(), KC[:, :60], NK, 1, (6, 10)),
        ValueError,
        "new_k shares memory with k_cache",
    ),
    (
        "cache messages name the cache",
        lambda: m.write_kv_cache(KC, t(1, 240, 2, 4), NK, NK, 0, (6, 10)),
        ValueError,
        "k_cache and v_cache must have the same shape",
    ),
    ("num_iters bounded", lambda: m.monarch_attention(Q, Q, Q, (6, 10), num_iters=2**40), ValueError, "num_iters="),
    (
        "causal block beyond the frames",
        lambda: m.monarch_attention(Q, Q, Q, (6, 10), causal_block_frames=2**63),
        ValueError,
        "causal_block_frames=",
    ),
    ("sm_scale per dtype", lambda: m.monarch_attention(Q, Q, Q, (6, 10), sm_scale=1e38), ValueError, "sm_scale="),
    (
        "direct op: num_iters=0",
        lambda: m.ops.attention(QT, QT, QT, 0.3, 0, 0, "reference"),
        ValueError,
        "num_iters=0 must be in 1..",
    ),
    (
        "direct op: natural-order tensors",
        lambda: m.ops.attention(Q, Q, Q, 0.3, 0, 1, "reference"),
        ValueError,
        "attention takes tile-order q",
    ),
    (
        "direct op: sm_scale",
        lambda: m.ops.attention(QT, QT, QT, 1e30, 0, 1, "reference"),
        ValueError,
        "sm_scale=1e+30 must be in",
    ),
]


@pytest.mark.parametrize("name, fn, exc, match", HARDENING, ids=[c[0] for c in HARDENING])
def test_hardening_raises_naming_the_argument(name, fn, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        fn()


def test_numpy_scalars_are_accepted_like_python_ones():
    np = pytest.importorskip("numpy")
    ref = m.monarch_attention(Q, Q, Q, (6, 10), num_iters=2, sm_scale=0.25)
    got = m.monarch_attention(Q, Q, Q, (6, 10), num_iters=np.int64(2), sm_scale=np.float32(0.25))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("value, strict", [("1", True), ("true", True), ("YES", True), ("0", False), ("off", False)])
def test_strict_mode_reads_the_usual_spellings(monkeypatch, value, strict):
    from monarchrt_ops.registry import strict_mode

    monkeypatch.setenv("MONARCHRT_STRICT", value)
    assert strict_mode() is strict


def test_strict_mode_rejects_other_values(monkeypatch):
    from monarchrt_ops.registry import strict_mode

    monkeypatch.setenv("MONARCHRT_STRICT", "maybe")
    with pytest.raises(ValueError, match="MONARCHRT_STRICT='maybe'"):
        strict_mode()


@pytest.mark.parametrize("namespace", ["aten", "not-an-identifier"])
def test_bad_op_namespace_names_the_variable(namespace):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MONARCHRT_OPS_NAMESPACE": namespace}
    run = subprocess.run([sys.executable, "-c", "import monarchrt_ops"], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "MONARCHRT_OPS_NAMESPACE" in run.stderr
