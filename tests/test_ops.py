"""torch.library integration: opcheck, torch.compile(fullgraph=True), registration, import hygiene."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import qkv

import monarchrt_ops as m
from monarchrt_ops import ops

# (frame, tiling, frames, op params: sm_scale, causal_block_tiles, num_iters, backend)
CASES = {
    "plain": ((6, 10), {}, 2, (0.25, 0, 1, "reference")),
    "tiled-causal-iters2": ((6, 10), {"h_reduce": 2, "w_reduce": 2}, 2, (0.25, 4, 2, "reference")),
    "ftied-causal-auto": ((3, 4), {"f_tied": 2}, 4, (0.5, 1, 1, "")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_opcheck_attention(name):
    """The op on tile-order tensors, as the public functions call it."""
    frame, tiling_kw, frames, params = CASES[name]
    tiling = m.make_tiling(frame, **tiling_kw)
    q, k, v = qkv(1, frames, frames, frame, 2, 4, dtype=torch.float32)
    qt, kt, vt = (m.to_tiles(x, tiling).detach().requires_grad_() for x in (q, k, v))
    torch.library.opcheck(ops.attention, (qt, kt, vt, *params))


def test_opcheck_kv_cache_write():
    kc, vc = torch.zeros(1, 120, 2, 4), torch.zeros(1, 120, 2, 4)
    nk, nv = torch.randn(1, 60, 2, 4), torch.randn(1, 60, 2, 4)
    torch.library.opcheck(ops.kv_cache_write, (kc, vc, nk, nv, 60))


def test_compile_fullgraph_matches_eager():
    q, k, v = qkv(1, 3, 3, (6, 10), 2, 8, dtype=torch.float32, requires_grad=True)

    def fn(q, k, v):
        return m.monarch_attention(q, k, v, (6, 10), causal_block_frames=1, backend="reference")

    eager = fn(q, k, v)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(compiled, eager)
    g_eager = torch.autograd.grad(eager.square().sum(), (q, k, v))
    g_comp = torch.autograd.grad(compiled.square().sum(), (q, k, v))
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b)


def test_compile_inductor_fullgraph():
    q, k, v = qkv(1, 2, 2, (6, 10), 2, 8, dtype=torch.float32)
    fn = torch.compile(lambda q, k, v: m.monarch_attention(q, k, v, (6, 10)) * 2, fullgraph=True)
    torch.testing.assert_close(fn(q, k, v), m.monarch_attention(q, k, v, (6, 10)) * 2)


def test_registering_twice_reuses_the_ops():
    before = ops.attention
    ops._register()
    assert ops._lookup("attention") is before


def _run(code: str, **env) -> str:
    env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout


def test_namespace_is_changeable_for_vendored_copies():
    out = _run(
        "import torch, monarchrt_ops as m;"
        "q = torch.randn(1, 60, 1, 4);"
        "print(hasattr(torch.ops.vendored, 'attention'), m.monarch_attention(q, q, q, (6, 10)).shape)",
        MONARCHRT_OPS_NAMESPACE="vendored",
    )
    assert out.strip() == "True torch.Size([1, 60, 1, 4])"


def test_import_touches_no_gpu_and_no_triton():
    out = _run("import sys, torch, monarchrt_ops; print(torch.cuda.is_initialized(), 'triton' in sys.modules)")
    assert out.strip() == "False False"


def test_compile_fullgraph_kv_cache_path_matches_eager():
    hw = 60
    k_cache, v_cache = torch.zeros(1, 4 * hw, 2, 8), torch.zeros(1, 4 * hw, 2, 8)
    q, new_k, new_v = (torch.randn(1, hw, 2, 8, requires_grad=True) for _ in range(3))
    m.write_kv_cache(k_cache, v_cache, new_k.detach(), new_v.detach(), 1, (6, 10))

    def fn(q, new_k, new_v):
        return m.monarch_attention_kv_cache(q, k_cache, v_cache, 2, (6, 10), new_k=new_k, new_v=new_v)

    eager = fn(q, new_k, new_v)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(q, new_k, new_v)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(torch.autograd.grad(compiled.sum(), (q, new_k, new_v)),
                    torch.autograd.grad(eager.sum(), (q, new_k, new_v)), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", [None, "eager", "aot_eager"], ids=["eager-call", "compile-eager", "aot_eager"])
def test_autocast_attention_runs_in_the_region_dtype(backend):
    """Under autocast attention casts q, k, v to the region's dtype (as SDPA), the same eagerly, compiled
    and through the op; gradients reach the fp32 inputs in fp32 (monarchrt_ops/amp.py)."""
    q, k, v = qkv(1, 2, 2, (6, 10), 2, 8, dtype=torch.float32, requires_grad=True)
    want = m.monarch_attention(*(x.bfloat16() for x in (q, k, v)), (6, 10))  # no autocast: cast inputs
    fn = lambda q, k, v: m.monarch_attention(q, k, v, (6, 10), num_iters=2)  # noqa: E731
    tiles = lambda x: m.to_tiles(x, m.make_tiling((6, 10)))  # noqa: E731
    direct = lambda q, k, v: ops.attention(tiles(q), tiles(k), tiles(v), 8**-0.5, 0, 1, "")  # noqa: E731
    if backend is not None:
        fn, direct = (torch.compile(f, fullgraph=True, backend=backend) for f in (fn, direct))
    want2 = m.monarch_attention(*(x.bfloat16() for x in (q, k, v)), (6, 10), num_iters=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(q, k, v.bfloat16())  # mixed inputs are fine: all are cast
        z, lse = direct(q, k, v)
    assert got.dtype == z.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch.testing.assert_close(got, want2, rtol=0, atol=0)
    torch.testing.assert_close(m.from_tiles(z, m.make_tiling((6, 10))), want, rtol=0, atol=0)
    grads = torch.autograd.grad(got.float().sum(), (q, k, v))
    assert all(g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)


Q6 = torch.randn(1, 120, 2, 8)
COMPILED_ERRORS = {
    "num_iters": (lambda q: m.monarch_attention(q, q, q, (6, 10), num_iters=0), "ValueError('num_iters=0 must be >= 1"),
    "f_tied type": (lambda q: m.monarch_attention(q, q, q, (6, 10), f_tied=1.0), "TypeError('f_tied must be an int"),
    "tiling": (lambda q: m.monarch_attention(q, q, q, (6, 10), h_reduce=4), "ValueError('H=6 is not divisible"),
    "kv_frames": (lambda q: m.monarch_attention_kv_cache(q, q, q, 3, (6, 10)), "ValueError('kv_frames=3 must be"),
    "cache write": (lambda q: m.write_kv_cache(q.clone(), q.clone(), q, q, 1, (6, 10)), "ValueError('frames [1, 3)"),
    "direct op": (
        lambda q: ops.attention(
            q.reshape(1, 2, 6, 10, 2, 8), q.reshape(1, 2, 6, 10, 2, 8), q.reshape(1, 2, 6, 10, 2, 8), 0.3, 0, 0, ""
        ),
        "ValueError('num_iters=0 must be in 1..",
    ),  # fmt: skip
    "direct write": (lambda q: ops.kv_cache_write(q.clone(), q.clone(), q, q, 60), "ValueError('start=60: tokens"),
}


@pytest.mark.parametrize("name", list(COMPILED_ERRORS))
def test_compile_fullgraph_argument_errors_carry_the_message(name):
    """Under fullgraph Dynamo reported a traced raise as 'Observed exception', the message only in its
    debug context; the public functions forward it to the argument_error op and the ops check in their
    fake impls, so the error says what was wrong."""
    fn, message = COMPILED_ERRORS[name]
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError) as info:
        torch.compile(fn, fullgraph=True, backend="aot_eager")(Q6)
    assert f"got {message}" in str(info.value)


@pytest.mark.parametrize("namespace", ["aten", "not-an-identifier"])
def test_bad_op_namespace_names_the_variable(namespace):
    env = {**os.environ, "MONARCHRT_OPS_NAMESPACE": namespace}
    run = subprocess.run([sys.executable, "-c", "import monarchrt_ops"], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "MONARCHRT_OPS_NAMESPACE" in run.stderr
