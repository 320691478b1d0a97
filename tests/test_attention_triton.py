"""Triton backend against the float64 reference. On the CPU it runs under TRITON_INTERPRET=1
(fp32/fp16; the interpreter cannot do bf16 tl.dot); on a GPU the same tests add bf16."""

import pytest
import torch
from conftest import TOL, qkv, rel_err, self_forcing_error_bf16

import monarchrt_ops as m

pytest.importorskip("triton")
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if GPU else [])


# (frames_q, frames_kv, frame_shape, batch, kwargs): tiny, since the interpreter runs each program in Python
CASES = {
    "6x10": (2, 2, (6, 10), 1, {}),
    "7x11-batch2": (2, 2, (7, 11), 2, {}),
    "3x20-rows-across-tiles": (2, 2, (3, 20), 1, {}),  # b2 > 16: several l blocks in fp32; 40 (a, j) rows
    "tiled-f2-h2-w2": (2, 2, (6, 10), 1, {"f_tied": 2, "h_reduce": 2, "w_reduce": 2}),
    "causal-1": (3, 3, (5, 6), 1, {"causal_block_frames": 1}),
    "causal-3": (4, 4, (3, 4), 1, {"causal_block_frames": 3}),
    "kv-slice-3-vs-5": (3, 5, (5, 6), 1, {}),
    "iters2": (2, 2, (5, 6), 1, {"num_iters": 2}),
    "iters3-causal": (3, 3, (3, 4), 1, {"num_iters": 3, "causal_block_frames": 2}),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_reference(name, dtype, poison_empty):
    fq, fk, shape, bsz, kw = CASES[name]
    q, k, v = qkv(bsz, fq, fk, shape, 2, 64)
    ref, ref_lse = m.monarch_attention_with_lse(q, k, v, shape, **kw, backend="reference")
    q, k, v = (x.to(device=DEVICE, dtype=dtype) for x in (q, k, v))
    out, lse = m.monarch_attention_with_lse(q, k, v, shape, **kw, backend="triton")
    tol = TOL[dtype]
    assert rel_err(out, ref) < tol
    assert rel_err(lse, ref_lse) < tol


def test_kv_cache_slice_of_a_longer_buffer_batch2(poison_empty):
    hw, shape = 30, (5, 6)
    q, k, v = qkv(2, 1, 3, shape, 2, 64)
    k_cache = torch.randn(2, 6 * hw, 2, 64, dtype=torch.float64)
    v_cache = torch.randn_like(k_cache)
    m.write_kv_cache(k_cache, v_cache, k, v, 0, shape)
    ref = m.monarch_attention_kv_cache(q, k_cache, v_cache, 3, shape, backend="reference")
    kc, vc = (x.to(DEVICE, torch.float32) for x in (k_cache, v_cache))
    out = m.monarch_attention_kv_cache(q.to(DEVICE, torch.float32), kc, vc, 3, shape, backend="triton")
    assert rel_err(out, ref) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "name",
    ["6x10", "7x11-batch2", "tiled-f2-h2-w2", "causal-1", "causal-3", "kv-slice-3-vs-5", "iters2", "iters3-causal"],
)
def test_gradients_match_reference(name, dtype, poison_empty):
    """Gradients of out and of lse (the op's second output) against float64 autograd."""
    fq, fk, shape, bsz, kw = CASES[name]
    q, k, v = qkv(bsz, fq, fk, shape, 2, 64, requires_grad=True)
    dout = torch.randn_like(q)
    dlse = torch.randn(q.shape[:-1], dtype=torch.float64)
    out, lse = m.monarch_attention_with_lse(q, k, v, shape, **kw, backend="reference")
    ref = torch.autograd.grad((out, lse), (q, k, v), (dout, dlse))
    ql, kl, vl = (x.detach().to(DEVICE, dtype).requires_grad_() for x in (q, k, v))
    out, lse = m.monarch_attention_with_lse(ql, kl, vl, shape, **kw, backend="triton")
    got = torch.autograd.grad((out, lse), (ql, kl, vl), (dout.to(DEVICE, dtype), dlse.to(DEVICE, torch.float32)))
    tol = TOL[dtype]
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == dtype
        assert rel_err(g, r) < tol


@pytest.mark.skipif(not GPU, reason="GPU tier: Self-Forcing sizes in bf16")
@pytest.mark.parametrize("q_frames, kv_frames", [(21, 21), (3, 21)], ids=["bidir-21", "ar-3-vs-21"])
def test_self_forcing_shapes_bf16(q_frames, kv_frames, poison_empty):
    assert self_forcing_error_bf16("triton", q_frames, kv_frames) < TOL[torch.bfloat16]


@pytest.mark.skipif(not GPU, reason="GPU tier: compiled-kernel caches exist only when compiling")
def test_new_kv_length_does_not_recompile():
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
