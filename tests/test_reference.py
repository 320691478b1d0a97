"""The reference backend against independent formulas and the identities of docs/math.md (float64)."""

import itertools
import math

import pytest
import torch
from conftest import qkv, state_of

import monarchrt_ops as m
from monarchrt_ops import reference

REF = {"backend": "reference"}


def loop_monarch(q, k, v, b1, b2, scale):
    """num_iters = 1 straight from docs/math.md, with Python loops over tile indices. One batch/head,
    q [A, b1, b2, d], k, v [F, b1, b2, d]."""
    n_a, n_f = q.shape[0], k.shape[0]
    qs, ks = q * math.sqrt(scale), k * math.sqrt(scale)
    z = torch.zeros_like(q)
    for a in range(n_a):
        a_l = torch.zeros(n_f, b1, b2, q.shape[-1], dtype=q.dtype)
        y, c_l = torch.zeros_like(a_l), torch.zeros(n_f, b1, b2, dtype=q.dtype)
        for f, kr, j in itertools.product(range(n_f), range(b1), range(b2)):
            s_r = ks[f, kr] @ qs[a, kr, j]  # [b2(l)]
            r = torch.softmax(s_r, 0)
            a_l[f, kr, j], y[f, kr, j] = r @ ks[f, kr], r @ v[f, kr]
            c_l[f, kr, j] = (r * torch.log(r)).sum()
        for i, j in itertools.product(range(b1), range(b2)):
            s_l = a_l[:, :, j] @ qs[a, i, j] - c_l[:, :, j]  # [F, b1]
            l = torch.softmax(s_l.flatten(), 0).reshape(n_f, b1)
            z[a, i, j] = torch.einsum("fk,fkd->d", l, y[:, :, j])
    return z


def test_matches_loop_formulas():
    q, k, v = qkv(1, 2, 3, (2, 3), 1, 5)
    t = m.Tiling(2, 3)
    out = m.monarch_attention(q, k, v, (2, 3), sm_scale=0.7, **REF)
    ref = loop_monarch(*(m.to_tiles(x, t)[0, ..., 0, :] for x in (q, k, v)), 2, 3, 0.7)
    torch.testing.assert_close(m.to_tiles(out, t)[0, ..., 0, :], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("frame_shape", [(6, 1), (7, 1)])
def test_single_column_tiles_are_dense_attention(frame_shape):
    q, k, v = qkv(2, 3, 4, frame_shape, 2, 8)
    out = m.monarch_attention(q, k, v, frame_shape, **REF)
    torch.testing.assert_close(out, reference.dense_attention(q, k, v, 8**-0.5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kw",
    [{}, {"causal_block_frames": 1}, {"num_iters": 3}, {"f_tied": 2, "h_reduce": 2, "w_reduce": 5}],
    ids=["plain", "causal", "iters3", "tiled"],
)
def test_rows_of_w_sum_to_one_and_w_gives_z(kw):
    q, k, v = qkv(1, 4, 4, (6, 10), 2, 4)
    st = state_of(q, k, v, (6, 10), **kw)
    w = reference.implied_attention_matrix(st)
    assert w.min() > 0 if "causal_block_frames" not in kw else w.min() >= 0
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), rtol=0, atol=1e-12)
    # one-hot V (value width = number of keys): the output is the row of W at that key
    tiling = m.make_tiling((6, 10), **{x: kw[x] for x in ("f_tied", "h_reduce", "w_reduce") if x in kw})
    seq = k.shape[1]
    v_onehot = torch.eye(seq, dtype=torch.float64)[None, :, None, :].expand(1, seq, 2, seq).contiguous()
    st1 = state_of(q, k, m.from_tile_sequence(v_onehot, tiling), (6, 10), **kw)
    torch.testing.assert_close(st1.z.flatten(2, 4), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c, tiling_kw", [(1, {}), (2, {}), (3, {}), (2, {"f_tied": 2, "h_reduce": 3})])
def test_block_causal_equals_per_block_prefix_calls(c, tiling_kw):
    frames = 6
    q, k, v = qkv(2, frames, frames, (6, 10), 2, 4)
    out = m.monarch_attention(q, k, v, (6, 10), causal_block_frames=c, **tiling_kw, **REF)
    hw = 60
    for start in range(0, frames, c):
        end = min(start + c, frames)
        part = m.monarch_attention(
            q[:, start * hw : end * hw], k[:, : end * hw], v[:, : end * hw], (6, 10), **tiling_kw, **REF
        )
        torch.testing.assert_close(out[:, start * hw : end * hw], part, rtol=1e-12, atol=1e-12)


def test_objective_does_not_decrease_with_iterations():
    q, k, v = qkv(1, 3, 3, (5, 6), 1, 8, seed=3)
    scale = 8**-0.5
    tiling = m.Tiling(5, 6)
    qt, kt = m.to_tile_sequence(q, tiling), m.to_tile_sequence(k, tiling)
    s = torch.einsum("bqhd,bkhd->bhqk", qt, kt) * scale
    objective = []
    for iters in (1, 2, 3, 5):
        w = reference.implied_attention_matrix(state_of(q, k, v, (5, 6), num_iters=iters))
        objective.append(((w * s).sum() - (w * w.log()).sum()).item())
    upper = torch.logsumexp(s, -1).sum().item()  # exact softmax attains it
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(objective)), objective
    assert objective[-1] <= upper + 1e-9
    assert objective[-1] > objective[0]


def test_kv_cache_workflow_reproduces_causal_rows_and_gradients():
    frames, chunk, hw = 6, 2, 60
    q, k, v = qkv(2, frames, frames, (6, 10), 2, 4, requires_grad=True)
    causal = m.monarch_attention(q, k, v, (6, 10), causal_block_frames=chunk, **REF)
    dout = torch.randn_like(causal)
    dq, dk, dv = torch.autograd.grad(causal, (q, k, v), dout)
    k_cache = torch.zeros(2, 8 * hw, 2, 4, dtype=torch.float64)  # a buffer longer than the video
    v_cache = torch.zeros_like(k_cache)
    for start in range(0, frames, chunk):
        sl = slice(start * hw, (start + chunk) * hw)
        new_k, new_v = k[:, sl].detach().requires_grad_(), v[:, sl].detach().requires_grad_()
        q_chunk = q[:, sl].detach().requires_grad_()
        m.write_kv_cache(k_cache, v_cache, new_k, new_v, start, (6, 10))
        out = m.monarch_attention_kv_cache(
            q_chunk, k_cache, v_cache, start + chunk, (6, 10), new_k=new_k, new_v=new_v, **REF
        )
        torch.testing.assert_close(out, causal[:, sl], rtol=1e-12, atol=1e-12)
        # gradients of this chunk's output alone, through the new K/V only
        g = torch.autograd.grad(out, (q_chunk, new_k, new_v), dout[:, sl])
        ref = m.monarch_attention(q[:, sl], k[:, : sl.stop], v[:, : sl.stop], (6, 10), **REF)
        g_ref = torch.autograd.grad(ref, (q, k, v), dout[:, sl])
        torch.testing.assert_close(g[0], g_ref[0][:, sl])
        torch.testing.assert_close(g[1], g_ref[1][:, sl])
        torch.testing.assert_close(g[2], g_ref[2][:, sl])
    assert dq.abs().sum() > 0 and dk.abs().sum() > 0 and dv.abs().sum() > 0


GRAD_CASES = {
    "plain": ((2, 3), {}),
    "causal1": ((3, 3), {"causal_block_frames": 1}),
    "iters2": ((2, 2), {"num_iters": 2}),
    "iters2-causal": ((3, 3), {"num_iters": 2, "causal_block_frames": 2}),
    "tiled": ((2, 2), {"f_tied": 2, "h_reduce": 2, "w_reduce": 2}),
    "kv-longer": ((1, 3), {"sm_scale": 0.3}),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradcheck(name):
    (fq, fk), kw = GRAD_CASES[name]
    q, k, v = qkv(1, fq, fk, (2, 4), 2, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: m.monarch_attention(q, k, v, (2, 4), **kw, **REF), (q, k, v))


def test_gradcheck_kv_cache_new_kv():
    hw = 8
    q, new_k, new_v = qkv(1, 1, 1, (2, 4), 1, 3, requires_grad=True)
    k_cache = torch.randn(1, 3 * hw, 1, 3, dtype=torch.float64)
    v_cache = torch.randn_like(k_cache)

    def fn(q, new_k, new_v):
        kc, vc = k_cache.clone(), v_cache.clone()
        m.write_kv_cache(kc, vc, new_k.detach(), new_v.detach(), 1, (2, 4))
        return m.monarch_attention_kv_cache(q, kc, vc, 2, (2, 4), new_k=new_k, new_v=new_v, **REF)

    assert torch.autograd.gradcheck(fn, (q, new_k, new_v))


def test_lse_gradient():
    q, k, v = qkv(1, 2, 2, (2, 4), 1, 3, requires_grad=True)
    fn = lambda q, k, v: m.monarch_attention_with_lse(q, k, v, (2, 4), **REF)[1]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    q, k, v = qkv(1, 2, 2, (6, 10), 2, 8)
    ref = m.monarch_attention(q, k, v, (6, 10), **REF)
    out, lse = m.monarch_attention_with_lse(q.to(dtype), k.to(dtype), v.to(dtype), (6, 10), **REF)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == q.shape[:-1]
    assert ((out.double() - ref).norm() / ref.norm()) < {
        torch.float32: 1e-6,
        torch.float16: 2e-3,
        torch.bfloat16: 1e-2,
    }[dtype]


def test_non_contiguous_inputs():
    q, k, v = qkv(1, 2, 2, (6, 10), 3, 8)
    qn, kn, vn = (x.transpose(2, 3).contiguous().transpose(2, 3) for x in (q, k, v))
    assert not qn.is_contiguous()
    torch.testing.assert_close(
        m.monarch_attention(qn, kn, vn, (6, 10), **REF), m.monarch_attention(q, k, v, (6, 10), **REF)
    )
