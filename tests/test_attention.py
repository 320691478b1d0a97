"""Monarch attention on every backend the registry knows (reference, Triton, the fused CUDA forward)
against the float64 reference, by the one tolerance rule (conftest.assert_close_to_float64,
docs/testing.md). A backend that cannot run a case here skips it with the registry's reason: on the
CPU Triton runs under TRITON_INTERPRET=1 (fp32/fp16; the interpreter cannot do bf16 tl.dot) and the
CUDA backend needs the built extension and a GPU. The fused CUDA forward has no backward of its own:
its gradients go through the backward the registry chooses (Triton's).

Every case is also held at its dtype's floor (``at_most=FLOOR[dtype]``): the bound these cases had
before the rule. The rule alone is never tighter (its floors are those bounds) and is looser wherever
twice the error of the same math in PyTorch passes the floor, so the floor is the stricter of the two."""

import pytest
import torch
from conftest import FLOOR, assert_close_to_float64, clear_error_test, qkv, skip_unless_supported

import monarchrt_ops as m
from monarchrt_ops import registry
from monarchrt_ops.backends import cuda

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
BACKENDS = registry.backend_names("attention")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_TIER = pytest.mark.skipif(not GPU, reason="GPU tier")

# (frames_q, frames_kv, frame_shape, batch, heads, head_dim, kwargs)
# Every machine: tiny, since the interpreter runs each program in Python (d=64: the fused CUDA forward,
# which takes d=128 only, skips them through supports()).
CASES = {
    "6x10": (2, 2, (6, 10), 1, 2, 64, {}),
    "7x11-batch2": (2, 2, (7, 11), 2, 2, 64, {}),
    "3x20-rows-across-tiles": (2, 2, (3, 20), 1, 2, 64, {}),  # b2 > 16: several l blocks in fp32; 40 (a, j) rows
    "tiled-f2-h2-w2": (2, 2, (6, 10), 1, 2, 64, {"f_tied": 2, "h_reduce": 2, "w_reduce": 2}),
    "causal-1": (3, 3, (5, 6), 1, 2, 64, {"causal_block_frames": 1}),
    "causal-3": (4, 4, (3, 4), 1, 2, 64, {"causal_block_frames": 3}),
    "kv-slice-3-vs-5": (3, 5, (5, 6), 1, 2, 64, {}),
    "iters2": (2, 2, (5, 6), 1, 2, 64, {"num_iters": 2}),
    "iters3-causal": (3, 3, (3, 4), 1, 2, 64, {"num_iters": 3, "causal_block_frames": 2}),
}
# GPU tier, d=128: every split of rows and columns over the fused forward's 8-CTA cluster
GPU_CASES = {
    "30x52-3-frames": (3, 3, (30, 52), 1, 3, 128, {}),
    "32x64-batch2": (2, 2, (32, 64), 2, 3, 128, {}),
    "7x11": (2, 3, (7, 11), 1, 3, 128, {}),
    "9x3-few-columns": (3, 3, (9, 3), 1, 3, 128, {}),
    "17x8-causal-1": (4, 4, (17, 8), 1, 3, 128, {"causal_block_frames": 1}),
    "6x10-causal-3": (5, 5, (6, 10), 1, 3, 128, {"causal_block_frames": 3}),
    "tiled-f2-h2-w2-d128": (2, 2, (6, 10), 1, 3, 128, {"f_tied": 2, "h_reduce": 2, "w_reduce": 2}),
    "ar-2-vs-5": (2, 5, (30, 52), 1, 3, 128, {}),
    "45x20": (2, 2, (45, 20), 1, 2, 128, {}),  # b1 = 45: the 720p frames' rows, padded to 48
    "64x6-causal-1": (3, 3, (64, 6), 1, 2, 128, {"causal_block_frames": 1}),  # b1 = 64, the widest
    # b2 over 64: stage R's backward on wgmma forms dK and dV by two launches at d = 128, one at d = 64
    "45x80": (2, 2, (45, 80), 1, 2, 128, {}),  # the 720p frames
    "4x80-causal-1": (3, 3, (4, 80), 1, 2, 128, {"causal_block_frames": 1}),
    "3x72-iters2": (2, 2, (3, 72), 1, 2, 128, {"num_iters": 2}),  # 8 padded columns; a later pass's dK alone
    "5x70-d64-kv-slice": (2, 3, (5, 70), 1, 2, 64, {}),
}
ALL_CASES = {**CASES, **GPU_CASES}
CASE_PARAMS = list(CASES) + [pytest.param(name, marks=GPU_TIER) for name in GPU_CASES]


def with_lse(backend, dtype, q, k, v, shape, kw):
    """monarch_attention_with_lse on q, k, v cast to ``dtype`` on DEVICE."""
    q, k, v = (x.to(device=DEVICE, dtype=dtype) for x in (q, k, v))
    return m.monarch_attention_with_lse(q, k, v, shape, **kw, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASE_PARAMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_reference(backend, name, dtype, poison_empty):
    fq, fk, shape, bsz, nh, d, kw = ALL_CASES[name]
    q, k, v = qkv(bsz, fq, fk, shape, nh, d)
    with skip_unless_supported(backend):
        out, lse = with_lse(backend, dtype, q, k, v, shape, kw)
    ref, ref_lse = m.monarch_attention_with_lse(q, k, v, shape, **kw, backend="reference")
    same, same_lse = with_lse("reference", dtype, q, k, v, shape, kw)
    assert out.dtype == dtype
    assert_close_to_float64(out, ref, same, dtype, at_most=FLOOR[dtype], what="out")
    assert_close_to_float64(lse, ref_lse, same_lse, dtype, at_most=FLOOR[dtype], what="lse")


@GPU_TIER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["30x52-3-frames", "7x11", "17x8-causal-1", "ar-2-vs-5"])
def test_cuda_portable_path_matches_reference(name, dtype, poison_empty, monkeypatch):
    """The mma.sync stage R that sm_100a and sm_120a run, forced on this GPU (on sm_90a it replaces wgmma)."""
    monkeypatch.setattr(cuda.CudaAttention, "mma_sync_only", True)
    test_forward_matches_reference("cuda", name, dtype, poison_empty)


@GPU_TIER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(ALL_CASES))
def test_stage_r_on_wgmma_matches_reference(name, dtype, poison_empty, monkeypatch):
    """Stage R on warpgroup MMA (the triton backend's config ``stage_r='wgmma'``, not the default for
    num_iters > 1 with b2 <= 64) forced wherever it runs: forward, and gradients (its backward
    recomputes stage R with it)."""
    from monarchrt_ops.backends import triton as triton_backend

    default = triton_backend.TritonAttention.default_config
    calls = []

    def wgmma_default(self, problem, arch):
        config = default(self, problem, arch)
        return {**config, "stage_r": "wgmma"} if cuda.stage_r_reason(problem, arch) is None else config

    def counted(*args, **kw):
        calls.append(1)
        return stage_r_wgmma(*args, **kw)

    stage_r_wgmma = cuda.stage_r_wgmma
    with monkeypatch.context() as patched:
        patched.setattr(triton_backend.TritonAttention, "default_config", wgmma_default)
        patched.setattr(cuda, "stage_r_wgmma", counted)
        registry.invalidate()  # selections made with the unpatched default
        try:
            test_forward_matches_reference("triton", name, dtype, poison_empty)
            grads_before = len(calls)
            if calls and name in GRADIENT_CASES:
                test_gradients_match_reference("triton", name, dtype, poison_empty)
        finally:
            registry.invalidate()
    if not calls:
        pytest.skip("stage R on wgmma does not run this case here (cuda.stage_r_reason)")
    assert name not in GRADIENT_CASES or len(calls) > grads_before


@GPU_TIER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(ALL_CASES))
def test_stage_l_on_wgmma_matches_reference(name, dtype, poison_empty, monkeypatch):
    """The forward's stage L on warpgroup MMA (config ``stage_l='wgmma'``, csrc/attention/stage_l.cuh) forced
    wherever cuda.stage_l_reason allows it: one launch per pass (lse only on the passes before the last),
    through the one-pass plan's prepared call and the launcher alike."""
    from monarchrt_ops.backends import triton as triton_backend

    default = triton_backend.TritonAttention.default_config
    module, _ = cuda.extension()
    launch = module.monarch_stage_l
    calls = []

    def forced(self, problem, arch):
        if cuda.stage_l_reason(problem, arch) is not None:
            pytest.skip(f"stage L on wgmma does not run {name} here: {cuda.stage_l_reason(problem, arch)}")
        return {**default(self, problem, arch), "stage_l": "wgmma"}

    with monkeypatch.context() as patched:
        patched.setattr(triton_backend.TritonAttention, "default_config", forced)
        patched.setattr(module, "monarch_stage_l", lambda *a: calls.append(a[4] != 0) or launch(*a))
        registry.invalidate()  # selections made with the unpatched default
        try:
            test_forward_matches_reference("triton", name, dtype, poison_empty)
        finally:
            registry.invalidate()
    passes = ALL_CASES[name][6].get("num_iters", 1)
    assert calls == [False] * (passes - 1) + [True]  # Z on the last pass only


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_cache_slice_of_a_longer_buffer_batch2(backend, poison_empty):
    hw, shape, dtype = 30, (5, 6), torch.float32
    q, k, v = qkv(2, 1, 3, shape, 2, 64)
    k_cache = torch.randn(2, 6 * hw, 2, 64, dtype=torch.float64)
    v_cache = torch.randn_like(k_cache)
    m.write_kv_cache(k_cache, v_cache, k, v, 0, shape)

    def attend(backend, dtype):
        qd, kc, vc = (x.to(DEVICE, dtype) for x in (q, k_cache, v_cache))
        return m.monarch_attention_kv_cache(qd, kc, vc, 3, shape, backend=backend)

    with skip_unless_supported(backend):
        out = attend(backend, dtype)
    ref = m.monarch_attention_kv_cache(q, k_cache, v_cache, 3, shape, backend="reference")
    assert_close_to_float64(out, ref, attend("reference", dtype), dtype, at_most=FLOOR[dtype])


def gradients(backend, dtype, q, k, v, dout, dlse, shape, kw):
    """Gradients of (out, lse) with respect to q, k, v cast to ``dtype`` on DEVICE."""
    ql, kl, vl = (x.detach().to(DEVICE, dtype).requires_grad_() for x in (q, k, v))
    out, lse = m.monarch_attention_with_lse(ql, kl, vl, shape, **kw, backend=backend)
    return torch.autograd.grad((out, lse), (ql, kl, vl), (dout.to(DEVICE, dtype), dlse.to(DEVICE, torch.float32)))


GRADIENT_CASES = ["6x10", "7x11-batch2", "tiled-f2-h2-w2", "causal-1", "causal-3", "kv-slice-3-vs-5", "iters2",
                  "iters3-causal"]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", GRADIENT_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_reference(backend, name, dtype, poison_empty):
    """Gradients of out and of lse (the op's second output) against float64 autograd."""
    fq, fk, shape, bsz, nh, d, kw = ALL_CASES[name]
    q, k, v = qkv(bsz, fq, fk, shape, nh, d, requires_grad=True)
    dout = torch.randn_like(q)
    dlse = torch.randn(q.shape[:-1], dtype=torch.float64)
    with skip_unless_supported(backend):
        got = gradients(backend, dtype, q, k, v, dout, dlse, shape, kw)
    out, lse = m.monarch_attention_with_lse(q, k, v, shape, **kw, backend="reference")
    ref = torch.autograd.grad((out, lse), (q, k, v), (dout, dlse))
    same = gradients("reference", dtype, q, k, v, dout, dlse, shape, kw)
    for what, g, r, s in zip("qkv", got, ref, same, strict=True):
        assert g.dtype == dtype
        assert_close_to_float64(g, r, s, dtype, at_most=FLOOR[dtype], what=f"d{what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["7x11-batch2", "causal-3", "iters3-causal"])
def test_gradients_match_reference_unfused_stage_l(name, dtype, poison_empty, monkeypatch):
    """The two stage-L backward kernels that b1 over the fused kernel's limit takes
    (triton_kernels/limits.py), forced here by a limit of 0 (the cases above have b1 <= 6), and on the
    GPU by config ``stage_l_bwd='triton'`` (the last pass's default there is the wgmma kernel)."""
    from monarchrt_ops.triton_kernels import limits

    monkeypatch.setattr(limits, "FUSED_BWD_MAX_B1", {})
    no_reason = lambda problem, arch: None  # noqa: E731
    gradients_with_launchers(name, dtype, poison_empty, monkeypatch, {"stage_l_bwd": "triton"}, no_reason, None, ())


@pytest.mark.parametrize("form", ["fused", "unfused", pytest.param("wgmma", marks=GPU_TIER)])
def test_backward_takes_strided_out_dout_and_dlse(form, poison_empty, monkeypatch):
    """The stage-L backward kernels form D_L = <Z, dZ> - dlse from out and dout as given (any strides,
    last dim contiguous) and from dlse (an expanded gradient has stride 0): the gradients equal those of
    the same values contiguous, in every stage-L form (unfused: as the test above, by a limit of 0;
    wgmma: the last pass's kernel on warpgroup MMA, config ``stage_l_bwd``, where it runs)."""
    from monarchrt_ops.backends import triton as triton_backend
    from monarchrt_ops.triton_kernels import limits

    if form == "unfused":
        monkeypatch.setattr(limits, "FUSED_BWD_MAX_B1", {})
    launches = []
    if form == "wgmma":
        default, launcher = triton_backend.TritonAttention.default_config, cuda.stage_l_bwd_wgmma

        def forced(self, problem, arch):
            if cuda.stage_l_bwd_reason(problem, arch) is not None:
                pytest.skip(f"stage L's backward on wgmma does not run here: {cuda.stage_l_bwd_reason(problem, arch)}")
            return {**default(self, problem, arch), "stage_l_bwd": "wgmma"}

        monkeypatch.setattr(triton_backend.TritonAttention, "default_config", forced)
        monkeypatch.setattr(cuda, "stage_l_bwd_wgmma", lambda *a: launches.append(1) or launcher(*a))
        registry.invalidate()
    g = torch.Generator().manual_seed(5)
    dtype = torch.bfloat16 if form == "wgmma" else torch.float32  # the wgmma kernel's are 16-bit
    q, k, v = (torch.randn(1, 2, 6, 10, 2, 64, generator=g).to(DEVICE, dtype) for _ in range(3))  # tile order, 2 frames
    with skip_unless_supported("triton"):
        out, lse = m.ops.attention(q, k, v, 0.125, 0, 1, "triton")
    dout = torch.randn(out.shape, generator=g).to(DEVICE, dtype)
    dlse = torch.randn(*lse.shape[:-1], 1, generator=g).to(DEVICE).expand(lse.shape)  # one value per token

    # the same values in two other layouts (so Z's strides cannot pass for dZ's): rows i and columns j
    # swapped in memory; head_dim padded to twice its length
    out_t = out.transpose(2, 3).contiguous().transpose(2, 3)
    dout_p = torch.zeros(*dout.shape[:-1], 128, device=DEVICE, dtype=dtype)[..., :64].copy_(dout)
    try:
        got = m.ops.attention_backward(dout_p, dlse, q, k, v, out_t, lse, 0.125, 0, 1, "triton")
        want = m.ops.attention_backward(dout, dlse.contiguous(), q, k, v, out, lse, 0.125, 0, 1, "triton")
    finally:
        registry.invalidate()  # selections made under this test's config
    for what, a, b in zip("qkv", got, want, strict=True):
        assert torch.equal(a, b), f"d{what}"
    assert len(launches) == (2 if form == "wgmma" else 0)


def gradients_with_launchers(name, dtype, poison_empty, monkeypatch, choices, runs, owner, names):
    """test_gradients_match_reference on the triton backend with its default config's ``choices``
    forced (the case skipped where ``runs(problem, arch)`` gives a reason) and the launchers ``names``
    of ``owner`` counted -> {name: calls}."""
    from monarchrt_ops.backends import triton as triton_backend

    default = triton_backend.TritonAttention.default_config
    calls = {attr: 0 for attr in names}

    def forced(self, problem, arch):
        reason = runs(problem, arch)
        if reason is not None:
            pytest.skip(f"{choices} does not run {name} here: {reason}")
        return {**default(self, problem, arch), **choices}

    def counted(attr):
        launcher = getattr(owner, attr)

        def call(*args, **kw):
            calls[attr] += 1
            return launcher(*args, **kw)

        return call

    with monkeypatch.context() as patched:
        patched.setattr(triton_backend.TritonAttention, "default_config", forced)
        for attr in names:
            patched.setattr(owner, attr, counted(attr))
        registry.invalidate()  # selections made with the unpatched default
        try:
            test_gradients_match_reference("triton", name, dtype, poison_empty)
        finally:
            registry.invalidate()
    return calls


# the interpreter's cases and, on the GPU, query rows across tiles at b2 = 52 and b2 over 64
STAGE_R_BWD_CASES = GRADIENT_CASES + ["30x52-3-frames", "ar-2-vs-5", "17x8-causal-1", "45x80", "4x80-causal-1",
                                      "3x72-iters2", "5x70-d64-kv-slice"]  # fmt: skip


@GPU_TIER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", STAGE_R_BWD_CASES)
@pytest.mark.parametrize("stage_r_bwd", ["wgmma", "triton"])
def test_gradients_with_each_stage_r_bwd(stage_r_bwd, name, dtype, poison_empty, monkeypatch):
    """Stage R's backward (its dK/dV and dQ kernels: configs ``stage_r_bwd``, ``stage_r_dq``) on warpgroup
    MMA (csrc/attention/stage_r_bwd.cuh, where cuda.stage_r_bwd_reason allows it) and on Triton, each
    forced, the launches counted: one of each per pass."""
    from monarchrt_ops.triton_kernels import monarch_attention as kernels

    wgmma = stage_r_bwd == "wgmma"
    calls = gradients_with_launchers(
        name, dtype, poison_empty, monkeypatch, {"stage_r_bwd": stage_r_bwd, "stage_r_dq": stage_r_bwd},
        cuda.stage_r_bwd_reason if wgmma else lambda problem, arch: None, cuda if wgmma else kernels,
        ("stage_r_dkdv_wgmma", "stage_r_dq_wgmma") if wgmma else ("_stage_r_dkdv", "_stage_r_dq"),
    )  # fmt: skip
    passes = ALL_CASES[name][6].get("num_iters", 1)
    assert calls == dict.fromkeys(calls, passes)


# the interpreter's cases and, at d = 128, b1 = 30 (with a KV slice), 45 and 64 (block-causal)
STAGE_L_BWD_CASES = GRADIENT_CASES + ["30x52-3-frames", "ar-2-vs-5", "17x8-causal-1", "45x20", "64x6-causal-1"]


@GPU_TIER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", STAGE_L_BWD_CASES)
def test_gradients_with_stage_l_bwd_on_wgmma(name, dtype, poison_empty, monkeypatch):
    """The last pass's stage-L backward on warpgroup MMA (config ``stage_l_bwd``, csrc/attention/stage_l_bwd.cuh)
    forced where cuda.stage_l_bwd_reason allows it: one launch per backward, whatever num_iters (the earlier
    passes stay on Triton)."""
    calls = gradients_with_launchers(
        name, dtype, poison_empty, monkeypatch, {"stage_l_bwd": "wgmma"}, cuda.stage_l_bwd_reason, cuda,
        ("stage_l_bwd_wgmma",),
    )  # fmt: skip
    assert calls == {"stage_l_bwd_wgmma": 1}


@GPU_TIER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_stage_r_dq_on_wgmma_with_far_negative_logits(dtype):
    """Stage R's dQ kernel on wgmma where every logit of a key row is far below 0 (lse_R ~ -40): the
    padded columns l >= b2 (b2 = 20, 16-column steps) hold R = exp(-lse_R), whose dS overflows fp16
    unless masked, and inf times K's zero rows is NaN. Against the Triton kernel on the same inputs."""
    from monarchrt_ops.arch import arch_of
    from monarchrt_ops.problem import AttentionProblem
    from monarchrt_ops.triton_kernels import monarch_attention as kernels

    b1, b2, n_a, nh, d = 3, 20, 2, 2, 64
    g = torch.Generator(device="cuda").manual_seed(7)
    u = torch.randn(d, device="cuda", generator=g)
    u = u / u.norm()
    k = (u + 0.01 * torch.randn(1, n_a, b1, b2, nh, d, device="cuda", generator=g)).to(dtype)
    q = (-40.0 * u + 0.01 * torch.randn(1, n_a, b1, b2, nh, d, device="cuda", generator=g)).to(dtype)
    problem = AttentionProblem.from_tiles(q, k, 0, 1)
    if cuda.stage_r_bwd_reason(problem, arch_of("cuda")) is not None:
        pytest.skip("stage R's backward on wgmma does not run here")
    config = registry.select("attention", problem, arch_of("cuda"), "triton").config
    common, scale = (nh, n_a, n_a, b1, b2, 0), 1.0
    sc = kernels._Scratch(q, n_a, with_lse_r=True)
    kernels._stage_r(q, k, k, sc, None, None, scale, common, config, write_lse=True)
    assert sc.lse_r.max() < -30  # every logit of every key row far below 0
    grads = tuple(torch.randn(x.shape, device="cuda", generator=g).to(x.dtype) for x in (sc.a_l, sc.y, sc.c_l, sc.c_l))
    dq = torch.zeros(q.shape, device="cuda")
    outs = [torch.empty_like(q) for _ in range(2)]
    for launcher, out in zip((kernels._stage_r_dq, cuda.stage_r_dq_wgmma), outs, strict=True):
        launcher(q, k, k, sc, None, None, grads, dq, out, None, None, scale, common, config, has_y=True)
    assert torch.isfinite(outs[1]).all()
    err = (outs[1].float() - outs[0].float()).abs().max() / outs[0].float().abs().max()
    assert err < 2e-2, err


@GPU_TIER
@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_cache_slice_and_gradients_at_30x52(backend, poison_empty):
    """A cache slice of a longer buffer (strided rows) at 30x52, d=128, bf16, and the gradients of out."""
    shape, hw, dtype = (30, 52), 30 * 52, torch.bfloat16
    q, k, v = qkv(1, 2, 2, shape, 2, 128, requires_grad=True)
    k_cache = torch.randn(1, 5 * hw, 2, 128, dtype=torch.float64)
    v_cache = torch.randn_like(k_cache)
    with torch.no_grad():
        m.write_kv_cache(k_cache, v_cache, k, v, 2, shape)
    dout = torch.randn_like(q)

    def attend(backend):
        dev = [x.detach().to("cuda", dtype) for x in (q, k_cache, v_cache)]
        return m.monarch_attention_kv_cache(*dev, 4, shape, backend=backend)

    def grads(backend):
        ql, kl, vl = (x.detach().to("cuda", dtype).requires_grad_() for x in (q, k, v))
        return torch.autograd.grad(m.monarch_attention(ql, kl, vl, shape, backend=backend), (ql, kl, vl),
                                   dout.cuda().to(dtype))  # fmt: skip

    with skip_unless_supported(backend):
        out, got = attend(backend), grads(backend)
    ref = m.monarch_attention_kv_cache(q, k_cache, v_cache, 4, shape, backend="reference")
    assert_close_to_float64(out, ref, attend("reference"), dtype, at_most=FLOOR[dtype], what="kv-cache out")
    want = torch.autograd.grad(m.monarch_attention(q, k, v, shape, backend="reference"), (q, k, v), dout)
    for what, g, r, s in zip("qkv", got, want, grads("reference"), strict=True):
        assert_close_to_float64(g, r, s, dtype, at_most=FLOOR[dtype], what=f"d{what}")


@pytest.mark.skipif(not GPU, reason="GPU tier: Self-Forcing sizes in bf16")
@pytest.mark.parametrize("q_frames, kv_frames", [(21, 21), (3, 21)], ids=["bidir-21", "ar-3-vs-21"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_self_forcing_shapes_bf16(backend, q_frames, kv_frames, poison_empty):
    """Self-Forcing sizes (30x52 frames, 12 heads, d=128) in bf16 against the float64 reference on the GPU."""
    hw, shape, dtype = 30 * 52, (30, 52), torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, q_frames * hw, 12, 128, device="cuda", generator=gen).to(dtype)
    k, v = (torch.randn(1, kv_frames * hw, 12, 128, device="cuda", generator=gen).to(dtype) for _ in range(2))
    with skip_unless_supported(backend):
        out = m.monarch_attention(q, k, v, shape, backend=backend)
    same = out if backend == "reference" else m.monarch_attention(q, k, v, shape, backend="reference")
    ref = m.monarch_attention(q.double(), k.double(), v.double(), shape, backend="reference")
    assert_close_to_float64(out, ref, same, dtype, at_most=FLOOR[dtype])


@pytest.mark.skipif(not GPU, reason="GPU tier: compiled-kernel caches exist only when compiling")
def test_new_kv_length_does_not_recompile():
    pytest.importorskip("triton")
    from monarchrt_ops.triton_kernels import monarch_attention_fwd as fwd

    def compiled() -> int:
        dev = torch.cuda.current_device()
        return sum(len(k.device_caches[dev][0]) for k in (fwd._stage_r_fwd, fwd._stage_l_fwd))

    shape, hw = (5, 6), 30
    k_cache = torch.randn(1, 20 * hw, 2, 64, device="cuda", dtype=torch.float16)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(1, 2 * hw, 2, 64, device="cuda", dtype=torch.float16)
    m.monarch_attention_kv_cache(q, k_cache, v_cache, 2, shape, backend="triton")
    before = compiled()
    for kv_frames in (3, 4, 16, 17, 20):
        m.monarch_attention_kv_cache(q, k_cache, v_cache, kv_frames, shape, backend="triton")
    assert compiled() == before


# --- the op's own checks (issue 18 item 5): a direct torch.ops call skips the public functions ------
def _direct_backward_args():
    q = torch.randn(1, 2, 6, 10, 2, 8)  # tile order of the identity tiling of 2 frames of 6x10
    out, lse = m.ops.attention(q, q, q, 0.3, 0, 1, "reference")
    return [out, lse, q, q, q, out, lse, 0.3, 0, 1, "reference"]


@pytest.mark.parametrize(
    "position, value, exc, match",
    [
        (0, lambda a: a[0][:, :1], ValueError, "attention_backward: dout must have shape (1, 2, 6, 10, 2, 8)"),
        (1, lambda a: a[1][..., :1], ValueError, "attention_backward: dlse must have shape (1, 2, 6, 10, 2)"),
        (1, lambda a: a[1].double(), ValueError, "dlse must have shape (1, 2, 6, 10, 2), dtype torch.float32"),
        (5, lambda a: a[5].to("meta"), ValueError, "out must have shape"),
        (3, lambda a: a[3].double(), TypeError, "q, k, v must share a float dtype"),
        (9, lambda a: 0, ValueError, "num_iters=0 must be in 1..16"),
        (7, lambda a: 1e30, ValueError, "sm_scale=1e+30 must be in"),
    ],
    ids=["dout-shape", "dlse-shape", "dlse-dtype", "out-device", "k-dtype", "num_iters-0", "sm_scale"],
)
def test_backward_op_checks_its_own_arguments(position, value, exc, match):
    """attention_backward had no checks: num_iters=0 or a huge sm_scale returned numbers, wrong
    shapes failed deep inside the backend with a broadcasting RuntimeError."""
    import re

    args = _direct_backward_args()
    args[position] = value(args)
    with pytest.raises(exc, match=re.escape(match)):
        m.ops.attention_backward(*args)
    with pytest.raises(exc, match=re.escape(match)), torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
        m.ops.attention_backward(*args)  # the fake impl (compile, opcheck) checks the same


def test_forward_op_checks_dtypes_and_devices():
    q = torch.randn(1, 2, 6, 10, 2, 8)
    with pytest.raises(TypeError, match="q, k, v must share a float dtype"):
        m.ops.attention(q, q.double(), q, 0.3, 0, 1, "reference")
    with pytest.raises(TypeError, match="q, k, v must share a float dtype"):
        m.ops.attention(*(q.long(),) * 3, 0.3, 0, 1, "reference")
    with pytest.raises(ValueError, match="q, k, v must be on one device"):
        m.ops.attention(q, q, q.to("meta"), 0.3, 0, 1, "reference")


def test_backward_op_fake_impl_passes_valid_arguments():
    args = _direct_backward_args()
    with torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
        grads = m.ops.attention_backward(*args)
    assert [g.shape for g in grads] == [args[2].shape] * 3


# Second derivatives (issue 18 item 1): attention_backward has no derivative, so double backward was
# silently zero (torch only warned); it now differentiates the reference's recomputation.
@pytest.mark.parametrize(
    "kw", [{}, {"causal_block_frames": 1, "num_iters": 2}, {"h_reduce": 2}], ids=["plain", "causal-iters2", "tiled"]
)
def test_gradgradcheck(kw):
    q, k, v = qkv(1, 2, 2, (2, 4), 1, 3, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda q, k, v: m.monarch_attention_with_lse(q, k, v, (2, 4), backend="reference", **kw), (q, k, v)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_is_not_zero_on_every_backend(backend, poison_empty):
    """The Hessian-vector product of a backend's forward equals the reference's."""
    q, k, v = (x.float().to(DEVICE) for x in qkv(1, 2, 2, (2, 4), 2, 64, seed=3))

    def hvp(backend):
        qq = q.clone().requires_grad_()
        out = m.monarch_attention(qq, k, v, (2, 4), backend=backend)
        (g,) = torch.autograd.grad(out.square().sum(), qq, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), qq)
        return h

    with skip_unless_supported(backend):
        h = hvp(backend)
    assert h.abs().sum() > 0
    torch.testing.assert_close(h, hvp("reference"))


# --- bad input raises TypeError/ValueError naming the value, before any kernel runs --------------------
def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


Q = _t(1, 120, 2, 8)
QT = Q.reshape(1, 2, 6, 10, 2, 8)  # tile order of the identity tiling
BAD_INPUT = [
    (
        "S not a multiple of H*W",
        lambda: m.monarch_attention(_t(1, 100, 2, 8), Q, Q, (6, 10)),
        ValueError,
        "S=100 is not a positive multiple of H*W=60",
    ),
    (
        "kv S not a multiple",
        lambda: m.monarch_attention(Q, _t(1, 90, 2, 8), _t(1, 90, 2, 8), (6, 10)),
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
    ("batch", lambda: m.monarch_attention(Q, _t(2, 120, 2, 8), _t(2, 120, 2, 8), (6, 10)), ValueError, "batch: 1 vs 2"),
    ("heads", lambda: m.monarch_attention(Q, _t(1, 120, 3, 8), _t(1, 120, 3, 8), (6, 10)), ValueError, "heads: 2 vs 3"),
    (
        "head_dim",
        lambda: m.monarch_attention(Q, _t(1, 120, 2, 4), _t(1, 120, 2, 4), (6, 10)),
        ValueError,
        "head_dim: 8 vs 4",
    ),
    (
        "k v shape",
        lambda: m.monarch_attention(Q, Q, _t(1, 60, 2, 8), (6, 10)),
        ValueError,
        "k and v must have the same shape",
    ),
    ("dtype mismatch", lambda: m.monarch_attention(Q, Q.double(), Q, (6, 10)), TypeError, "share a dtype"),
    ("int dtype", lambda: m.monarch_attention(Q.long(), Q, Q, (6, 10)), TypeError, "torch.int64 is not supported"),
    (
        "unsupported head_dim",
        lambda: m.monarch_attention(*(_t(1, 60, 1, 300),) * 3, (6, 10)),
        ValueError,
        "head_dim=300 is not supported",
    ),
    ("rank", lambda: m.monarch_attention(_t(120, 2, 8), Q, Q, (6, 10)), ValueError, "must be (B, S, nh, d)"),
    ("not a tensor", lambda: m.monarch_attention([1.0], Q, Q, (6, 10)), TypeError, "q must be a torch.Tensor"),
    ("frame_shape", lambda: m.monarch_attention(Q, Q, Q, 60), TypeError, "frame_shape must be a pair"),
    ("float f_tied", lambda: m.monarch_attention(Q, Q, Q, (6, 10), f_tied=1.0), TypeError, "f_tied must be an int"),
    ("num_iters 0", lambda: m.monarch_attention(Q, Q, Q, (6, 10), num_iters=0), ValueError, "num_iters=0 must be >= 1"),
    (
        "causal Sq != Skv",
        lambda: m.monarch_attention(_t(1, 60, 2, 8), Q, Q, (6, 10), causal_block_frames=1),
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
    # issue 18: silent wrong answers and internal errors that now raise, each naming the argument
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


test_bad_input_raises_a_clear_error = clear_error_test(BAD_INPUT)


def test_explicit_backend_never_falls_back(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' cannot run attention here: no CUDA device"):
        m.monarch_attention(Q, Q, Q, (6, 10), backend="triton")


def test_triton_rejects_other_head_dims(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match=r"head_dim=8 is not in \(64, 128\)"):
        m.monarch_attention(Q, Q, Q, (6, 10), backend="triton")


def test_numpy_scalars_are_accepted_like_python_ones():
    np = pytest.importorskip("numpy")
    ref = m.monarch_attention(Q, Q, Q, (6, 10), num_iters=2, sm_scale=0.25)
    got = m.monarch_attention(Q, Q, Q, (6, 10), num_iters=np.int64(2), sm_scale=np.float32(0.25))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
