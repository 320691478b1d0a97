"""MonarchKVCache: chunked writes/reads equal direct Monarch attention; windows, sinks, grads, misuse."""

import pytest
import torch
from conftest import clear_error_test, qkv

import monarchrt_ops as m
from monarchrt_ops import MonarchKVCache, monarch_attention, ops

SHAPE = (4, 6)
HW = SHAPE[0] * SHAPE[1]
NH, D = 2, 8
TILING = {"f_tied": 2, "h_reduce": 2, "w_reduce": 3}


def chunks(frames, seed=0):
    """Natural-order q, k, v of ``frames`` frames, float64."""
    return qkv(1, frames, frames, SHAPE, NH, D, seed=seed)


def frames_of(x, lo, hi):
    return x[:, lo * HW : hi * HW]


def make(max_frames, **kw):
    return MonarchKVCache(1, NH, D, SHAPE, max_frames, dtype=torch.float64, **{**TILING, **kw})


def test_chunked_appends_equal_attention_over_the_prefix():
    q, k, v = chunks(6)
    cache = make(6)
    for lo in (0, 2, 4):
        cq, ck, cv = (frames_of(x, lo, lo + 2) for x in (q, k, v))
        out = cache.update_and_attend(cq, ck, cv)
        ref = monarch_attention(cq, frames_of(k, 0, lo + 2), frames_of(v, 0, lo + 2), SHAPE, **TILING)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        assert cache.num_frames == lo + 2 and cache.next_frame == lo + 2
    torch.testing.assert_close(cache.keys(), k, rtol=0, atol=0)
    torch.testing.assert_close(cache.values(), v, rtol=0, atol=0)


def test_tiling_travels_with_the_cache():
    """The issue's bug: a write with w_reduce=2 and a read with the default gave a wrong answer.
    The cache reads with the tiling it was written with, whatever the caller does."""
    q, k, v = chunks(2)
    cache = MonarchKVCache(1, NH, D, SHAPE, 2, w_reduce=2, dtype=torch.float64)
    out = cache.update_and_attend(q, k, v)
    torch.testing.assert_close(out, monarch_attention(q, k, v, SHAPE, w_reduce=2), rtol=0, atol=1e-12)
    assert not torch.allclose(out, monarch_attention(q, k, v, SHAPE), atol=1e-3)


def test_sliding_window_with_sinks_keeps_the_front_and_the_last_frames():
    q, k, v = chunks(12, seed=1)
    cache = make(8, local_attn_size=6, sink_size=2)
    for lo in range(0, 12, 2):
        cq, ck, cv = (frames_of(x, lo, lo + 2) for x in (q, k, v))
        out = cache.update_and_attend(cq, ck, cv)
        hi = lo + 2
        kept = list(range(0, min(hi, 2))) + list(range(max(2, hi - 4), hi))  # 2 sinks + last 4
        kk = torch.cat([frames_of(k, f, f + 1) for f in kept], dim=1)
        vv = torch.cat([frames_of(v, f, f + 1) for f in kept], dim=1)
        ref = monarch_attention(cq, kk, vv, SHAPE, **TILING)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(cache.keys(), kk, rtol=0, atol=0)
        assert cache.num_frames == len(kept) and cache.next_frame == hi
    assert cache.capacity == 6


def test_sliding_window_without_sinks():
    q, k, v = chunks(8, seed=2)
    cache = make(4, local_attn_size=4)
    for lo in range(0, 8, 2):
        cache.append(frames_of(k, lo, lo + 2), frames_of(v, lo, lo + 2))
    cq = frames_of(q, 6, 8)
    ref = monarch_attention(cq, frames_of(k, 4, 8), frames_of(v, 4, 8), SHAPE, **TILING)
    torch.testing.assert_close(cache.attend(cq), ref, rtol=0, atol=1e-12)


def test_rewriting_the_last_chunk_replaces_it():
    """Denoising steps (and the clean-context pass) write the same chunk again."""
    q, k, v = chunks(4, seed=3)
    _, k2, v2 = chunks(4, seed=4)
    cache = make(4)
    cache.write(frames_of(k, 0, 2), frames_of(v, 0, 2), 0)
    cache.write(frames_of(k, 2, 4), frames_of(v, 2, 4), 2)
    cache.write(frames_of(k2, 2, 4), frames_of(v2, 2, 4), 2)  # rewrite
    assert cache.num_frames == 4 and cache.next_frame == 4 and cache.last_write == (2, 2)
    kk = torch.cat([frames_of(k, 0, 2), frames_of(k2, 2, 4)], 1)
    vv = torch.cat([frames_of(v, 0, 2), frames_of(v2, 2, 4)], 1)
    cq = frames_of(q, 2, 4)
    torch.testing.assert_close(cache.attend(cq), monarch_attention(cq, kk, vv, SHAPE, **TILING), rtol=0, atol=1e-12)


def test_gradients_reach_the_new_kv_only():
    q, k, v = chunks(4, seed=5)
    old_k, old_v = frames_of(k, 0, 2).clone().requires_grad_(), frames_of(v, 0, 2).clone().requires_grad_()
    new_k, new_v = frames_of(k, 2, 4).clone().requires_grad_(), frames_of(v, 2, 4).clone().requires_grad_()
    cq = frames_of(q, 2, 4).clone().requires_grad_()
    cache = make(4)
    cache.append(old_k, old_v)
    cache.append(new_k, new_v)
    dout = torch.randn_like(cq)
    (cache.attend(cq) * dout).sum().backward()
    assert old_k.grad is None and old_v.grad is None
    assert not cache.k_buffer.requires_grad and cache.k_buffer.grad is None

    rq, rk, rv = (x.detach().clone().requires_grad_() for x in (cq, new_k, new_v))
    ref = monarch_attention(rq, torch.cat([old_k.detach(), rk], 1), torch.cat([old_v.detach(), rv], 1), SHAPE, **TILING)
    (ref * dout).sum().backward()
    for got, want in ((cq, rq), (new_k, rk), (new_v, rv)):
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=1e-12)
        assert want.grad.abs().sum() > 0


def test_misuse_raises_clear_errors():
    q, k, v = chunks(2)
    cache = make(4)
    with pytest.raises(ValueError, match="empty"):
        cache.attend(q)
    with pytest.raises(TypeError, match="float32.*holds torch.float64"):
        cache.append(k.float(), v.float())
    with pytest.raises(ValueError, match="on meta.*on cpu"):
        cache.append(k.to("meta"), v.to("meta"))
    with pytest.raises(ValueError, match="heads=1.*heads=2"):
        cache.append(k[:, :, :1], v[:, :, :1])
    with pytest.raises(ValueError, match="multiple of H\\*W"):
        cache.append(k[:, :-1], v[:, :-1])
    with pytest.raises(ValueError, match="f_tied=2"):
        cache.append(frames_of(k, 0, 1), frames_of(v, 0, 1))
    with pytest.raises(ValueError, match="differ in shape"):
        cache.append(k, v[:, : HW * 2, :, :].repeat(1, 2, 1, 1))
    with pytest.raises(TypeError, match="torch.Tensor"):
        cache.append(k.numpy(), v)
    cache.append(k, v)
    with pytest.raises(ValueError, match="start_frame=4"):
        cache.write(k, v, 4)
    with pytest.raises(ValueError, match="needs 2 frames"):
        cache.write(torch.cat([k, k], 1), torch.cat([v, v], 1), 0)
    cache.append(k, v)
    with pytest.raises(ValueError, match="overflows the cache of max_frames=4"):
        cache.append(k, v)
    with pytest.raises(TypeError, match="q.dtype"):
        cache.attend(q.float())
    with pytest.raises(ValueError, match="batch=2"):
        cache.attend(q.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="sink_size needs a sliding window"):
        make(4, sink_size=2)
    with pytest.raises(ValueError, match="exceeds max_frames"):
        make(4, local_attn_size=6)
    with pytest.raises(ValueError, match="smaller than local_attn_size"):
        make(4, local_attn_size=4, sink_size=4)
    with pytest.raises(ValueError, match="max_frames=3 must be a multiple of f_tied=2"):
        make(3)
    with pytest.raises(ValueError, match="w_reduce"):
        MonarchKVCache(1, NH, D, SHAPE, 4, w_reduce=4)
    windowed = make(4, local_attn_size=4, sink_size=2)
    with pytest.raises(ValueError, match="does not fit a window"):
        windowed.append(torch.cat([k, k], 1), torch.cat([v, v], 1))
    cache.reset()
    assert cache.num_frames == 0 and cache.next_frame == 0
    with pytest.raises(ValueError, match="empty"):
        cache.keys()


def test_compiled_kv_loop_compiles_once_for_every_length():
    """A fullgraph-compiled write + read step over 21 cache lengths, recompile limits at their
    defaults: Dynamo specialises the first call and generalises once (automatic dynamic), and
    every step equals the eager call."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from monarchrt_ops import monarch_attention_kv_cache, write_kv_cache

    shape, hw, frames = (2, 3), 6, 21
    k_cache = torch.zeros(1, frames * hw, NH, D, dtype=torch.float64)
    v_cache = torch.zeros_like(k_cache)

    def step(q, new_k, new_v, start, kv_frames):
        write_kv_cache(k_cache, v_cache, new_k, new_v, start, shape)
        return monarch_attention_kv_cache(q, k_cache, v_cache, kv_frames, shape)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for i in range(frames):
        q, nk, nv = qkv(1, 1, 1, shape, NH, D, seed=i)
        got = compiled(q, nk, nv, i, i + 1)
        want = monarch_attention_kv_cache(q, k_cache, v_cache, i + 1, shape)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


def test_autocast_casts_the_query_and_the_filled_slice_and_never_the_writes():
    """amp.py: attention in the region's dtype (q and the visible slice cast), the buffers untouched,
    a write in another dtype refused as outside autocast."""
    q, k, v = (x.float() for x in chunks(4))
    cache = MonarchKVCache(1, NH, D, SHAPE, 4, dtype=torch.float32, **TILING)
    cache.append(frames_of(k, 0, 2), frames_of(v, 0, 2))
    want = monarch_attention(*(frames_of(x, 0, 2).bfloat16() for x in (q, k, v)), SHAPE, **TILING)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for query in (frames_of(q, 0, 2), frames_of(q, 0, 2).bfloat16()):
            out = cache.attend(query)
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out, want, rtol=0, atol=0)
        with pytest.raises(TypeError, match="new_k.dtype=torch.bfloat16, but this cache holds torch.float32"):
            cache.append(frames_of(k, 2, 4).bfloat16(), frames_of(v, 2, 4).bfloat16())
    assert cache.k_buffer.dtype == torch.float32


# --- the kv_cache_write op's own checks (issue 18 items 4, 5): a direct torch.ops call ----------------
def _write_args():
    return [torch.zeros(1, 240, 2, 8), torch.zeros(1, 240, 2, 8), torch.randn(1, 60, 2, 8), torch.randn(1, 60, 2, 8), 0]


@pytest.mark.parametrize(
    "position, value, exc, match",
    [
        (2, lambda a: a[2].double(), TypeError, "must share a float dtype (a write never casts)"),
        (0, lambda a: a[0].long(), TypeError, "must share a float dtype"),
        (3, lambda a: a[3].to("meta"), ValueError, "must be on one device, got cpu, cpu, cpu, meta"),
        (1, lambda a: a[0], ValueError, "k_cache and v_cache share memory"),
        (0, lambda a: torch.zeros(1, 1, 2, 8).expand(1, 240, 2, 8), ValueError, "k_cache is a broadcast"),
        (2, lambda a: a[1][:, 60:120], ValueError, "new_k shares memory with v_cache"),
        (4, lambda a: 200, ValueError, "start=200: tokens [200, 260) do not fit 240"),
    ],
    ids=["dtype", "int-cache", "device", "aliased-caches", "stride-0", "new_k-aliases", "start"],
)
def test_write_op_checks_its_own_arguments(position, value, exc, match):
    """A direct kv_cache_write used to cast silently, write across devices, write one buffer twice
    (k and v aliased) or fail inside copy_ (stride-0 cache)."""
    import re

    args = _write_args()
    args[position] = value(args)
    with pytest.raises(exc, match=re.escape(match)):
        ops.kv_cache_write(*args)


def test_write_op_fake_impl_checks_shapes_and_dtypes():
    args = _write_args()
    args[2] = args[2].double()
    with (
        pytest.raises(TypeError, match="must share a float dtype"),
        torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True),
    ):
        ops.kv_cache_write(*args)


# --- new_k/new_v must be what the cache holds (issue 18 item 4): other tensors gave wrong gradients ---
def _written_cache(dtype=torch.float64):
    """A 3-frame cache of (2, 4) frames with frames [1, 3) written from new_k, new_v."""
    hw = 8
    k_cache, v_cache = torch.randn(1, 3 * hw, 2, 4, dtype=dtype), torch.randn(1, 3 * hw, 2, 4, dtype=dtype)
    new_k, new_v = torch.randn(1, 2 * hw, 2, 4, dtype=dtype), torch.randn(1, 2 * hw, 2, 4, dtype=dtype)
    from monarchrt_ops import write_kv_cache

    write_kv_cache(k_cache, v_cache, new_k.detach(), new_v.detach(), 1, (2, 4), h_reduce=2)
    return k_cache, v_cache, new_k, new_v


def _attend(k_cache, v_cache, new_k, new_v, q=None):
    from monarchrt_ops import monarch_attention_kv_cache

    q = torch.randn(1, 16, 2, 4, dtype=k_cache.dtype) if q is None else q
    return monarch_attention_kv_cache(
        q, k_cache, v_cache, 3, (2, 4), new_k=new_k, new_v=new_v, h_reduce=2, backend="reference"
    )


def test_new_kv_that_the_cache_does_not_hold_raise():
    k_cache, v_cache, new_k, new_v = _written_cache()
    other = (new_k + 1).requires_grad_()
    with pytest.raises(ValueError, match=r"new_k/new_v are not what frames \[1, 3\) of k_cache/v_cache hold"):
        _attend(k_cache, v_cache, other, new_v.requires_grad_())
    new_k.requires_grad_()
    with torch.no_grad():
        new_k.mul_(2)  # changed after the write
    with pytest.raises(ValueError, match="new_k/new_v are not what"):
        _attend(k_cache, v_cache, new_k, new_v)
    with pytest.raises(ValueError, match=r"frames \[2, 3\)"):  # the wrong frames of the write: its first, not last
        _attend(k_cache, v_cache, new_k.detach()[:, :8].requires_grad_(), new_v.detach()[:, :8].requires_grad_())


def test_new_kv_of_the_last_write_pass_without_a_comparison(monkeypatch):
    k_cache, v_cache, new_k, new_v = _written_cache()
    new_k.requires_grad_(), new_v.requires_grad_()
    calls = []
    monkeypatch.setattr(torch, "equal", lambda *a: calls.append(a) or True)
    _attend(k_cache, v_cache, new_k, new_v)  # the very tensors written (detached there)
    _attend(k_cache, v_cache, new_k[:, 8:], new_v[:, 8:])  # their last frames
    assert calls == []  # recognised from the write record: no device sync


def test_new_kv_equal_to_the_rows_are_accepted_and_give_their_gradients():
    k_cache, v_cache, new_k, new_v = _written_cache()
    copy_k, copy_v = new_k.clone().requires_grad_(), new_v.clone().requires_grad_()  # not the written tensors
    q = torch.randn(1, 16, 2, 4, dtype=torch.float64)
    out = _attend(k_cache, v_cache, copy_k, copy_v, q)
    gk, gv = torch.autograd.grad(out.sum(), (copy_k, copy_v))
    # the same call with the written tensors themselves (recognised by the write record)
    ref_k, ref_v = new_k.requires_grad_(), new_v.requires_grad_()
    ref = _attend(k_cache, v_cache, ref_k, ref_v, q)
    for a, b in zip((gk, gv), torch.autograd.grad(ref.sum(), (ref_k, ref_v)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cache_object_passes_its_last_write():
    cache = make(4)
    q, k, v = chunks(2)
    k, v = k.requires_grad_(), v.requires_grad_()
    cache.write(k, v)
    out = cache.attend(q)
    assert torch.autograd.grad(out.sum(), k)[0].abs().sum() > 0


# --- bad input of the cache functions raises TypeError/ValueError naming the argument -----------------
def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


Q = _t(1, 120, 2, 8)
KC = torch.zeros(1, 240, 2, 8)
NK = _t(1, 60, 2, 8)
BAD_INPUT = [
    (
        "cache start",
        lambda: m.write_kv_cache(_t(1, 120, 2, 8), _t(1, 120, 2, 8), Q, Q, 1, (6, 10)),
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
    # issue 18 item 4: silent no-ops, aliasing and copy_ failures that now raise, naming the argument
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
        lambda: m.write_kv_cache(KC, _t(1, 240, 2, 4), NK, NK, 0, (6, 10)),
        ValueError,
        "k_cache and v_cache must have the same shape",
    ),
]


test_bad_input_raises_a_clear_error = clear_error_test(BAD_INPUT)


def test_a_cache_too_large_for_a_tensor_names_max_frames():
    """max_frames=2**63 failed inside torch.zeros with an int64 overflow TypeError."""
    with pytest.raises(ValueError, match="max_frames=9223372036854775808 .* more elements than a tensor can hold"):
        MonarchKVCache(1, NH, D, SHAPE, 2**63)


def test_numpy_sizes_are_stored_as_ints():
    np = pytest.importorskip("numpy")
    cache = MonarchKVCache(np.int64(1), NH, D, SHAPE, np.int64(4), local_attn_size=np.int64(4), sink_size=np.int32(2))
    assert (type(cache.capacity), type(cache.local_attn_size), type(cache.sink_size)) == (int, int, int)
    q, k, v = chunks(2)
    cache = MonarchKVCache(1, NH, D, SHAPE, np.int64(4), dtype=torch.float64, **TILING)
    cache.write(k, v, np.int64(0))
    torch.testing.assert_close(cache.attend(q, num_iters=np.int64(1)), monarch_attention(q, k, v, SHAPE, **TILING))
