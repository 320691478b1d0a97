"""Seeded fuzzing of every public function and op (issue 18): random valid and invalid arguments on
tiny shapes, through the public functions, the layout functions and each torch op called directly
(attention, attention_backward, kv_cache_write, hadamard, hadamard_, monarch_matmul,
monarch_matmul_backward). Each call either matches a float64 oracle within docs/testing.md's tolerance or raises
ValueError/TypeError whose message names the argument that was made invalid; any other exception, a
valid call refused, or a call slower than SLOW_S (a runaway) fails. Bounded to BUDGET_S in all.

Oracles: the dense Hadamard matrix and the dense Monarch product built from the factors (independent
formulas; autograd of them for the matmul backward), the input itself for a layout round trip, the
written rows for a cache write, and for attention the reference backend in float64 (itself checked against independent
formulas in test_reference.py). Direct torch.ops calls get only tensor-typed mutations: torch's own
schema check raises RuntimeError for a non-tensor, outside this package.
"""

import math
import random
import time

import pytest
import torch
from conftest import FLOOR

import monarchrt_ops as m
from monarchrt_ops import ops
from monarchrt_ops.hadamard_matrices import hadamard_matrix

SEED = 18
BUDGET_S = 60.0
SLOW_S = 10.0
# FP8 outputs, dequantised: one rounding to 4 (3) significant bits, half an ulp relative (docs/math.md)
TOLERANCE = {**FLOOR, torch.float64: 1e-10, torch.float8_e4m3fn: 2**-4, torch.float8_e5m2: 2**-3}
NOT_A_TENSOR = [1.0]


class Case:
    """One call: ``run()`` -> output; ``oracle()`` -> float64 expectation; ``bad``: the mutated
    argument's accepted names in the message (None: a valid call)."""

    def __init__(self, run, oracle, bad=None, dtype=torch.float64):
        self.run, self.oracle, self.bad, self.dtype = run, oracle, bad, dtype


def rel(out, ref) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return math.inf
    return 0.0 if ref.norm() == 0 and out.norm() == 0 else ((out - ref).norm() / ref.norm()).item()


def pick(rng, valid: dict, mutations: dict):
    """Half the calls valid; the others with one argument replaced by an invalid value."""
    if rng.random() < 0.5:
        return dict(valid), None
    name = rng.choice(sorted(mutations))
    value, names = rng.choice(mutations[name](valid))
    return {**valid, name: value}, names


# ---------------------------------------------------------------- attention
def attention_case(rng):
    h, w = rng.choice([(2, 3), (2, 4), (4, 2)])
    f_tied = rng.choice([1, 1, 2])
    frames_q = f_tied * rng.randint(1, 2)
    frames_kv = f_tied * rng.randint(1, 2)
    nh, d = rng.randint(1, 2), rng.choice([2, 4])
    dtype = rng.choice([torch.float32, torch.float64, torch.float16])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    q, k, v = (torch.randn(1, n * h * w, nh, d, generator=g, dtype=torch.float64).to(dtype)
               for n in (frames_q, frames_kv, frames_kv))  # fmt: skip
    causal = frames_q == frames_kv and rng.random() < 0.3
    valid = {"q": q, "k": k, "v": v, "frame_shape": (h, w), "f_tied": f_tied,
             "h_reduce": rng.choice([r for r in (1, 2) if h % r == 0]),
             "w_reduce": rng.choice([r for r in (1, 2) if w % r == 0]),
             "sm_scale": rng.choice([None, 0.3, 1.7]), "num_iters": rng.choice([1, 2]),
             "causal_block_frames": f_tied if causal else None, "backend": rng.choice([None, "reference"])}  # fmt: skip
    hw = h * w
    mutations = {
        "q": lambda a: [
            (NOT_A_TENSOR, ["q"]),
            (a["q"][0], ["q"]),
            (a["q"].long(), ["q"]),
            (a["q"][:, : hw - 1], ["q"]),
            (a["q"][..., :1].expand(*a["q"].shape[:3], 300).contiguous(), ["head_dim"]),
        ],  # fmt: skip
        "k": lambda a: [
            (a["k"][:, :, :, :1], ["k"]),
            (torch.cat([a["k"]] * 2), ["k"]),
            (a["k"].to(torch.bfloat16), ["k"]),
        ],
        "v": lambda a: [(a["v"][:, :hw], ["v"]) if a["v"].shape[1] > hw else (a["v"][:, :, :, :1], ["v"])],
        "frame_shape": lambda a: [
            ((0, w), ["frame_shape"]),
            (hw, ["frame_shape"]),
            ((h,), ["frame_shape"]),
            ((float(h), w), ["frame_shape"]),
            ((h, w + 1), ["S=", "W="]),
        ],  # fmt: skip
        "f_tied": lambda a: [(0, ["f_tied"]), (-1, ["f_tied"]), (1.5, ["f_tied"]), (True, ["f_tied"]), (3, ["f_tied"])],
        "h_reduce": lambda a: [(0, ["h_reduce"]), (h + 1, ["h_reduce"]), ("2", ["h_reduce"])],
        "w_reduce": lambda a: [(-2, ["w_reduce"]), (w + 1, ["w_reduce"])],
        "sm_scale": lambda a: [
            (-1.0, ["sm_scale"]),
            (math.nan, ["sm_scale"]),
            (math.inf, ["sm_scale"]),
            ("0.3", ["sm_scale"]),
            (1e300, ["sm_scale"]),
            (0.0, ["sm_scale"]),
        ],  # fmt: skip
        "num_iters": lambda a: [(0, ["num_iters"]), (17, ["num_iters"]), (2.0, ["num_iters"]), (True, ["num_iters"])],
        "causal_block_frames": lambda a: [
            (0, ["causal_block_frames"]),
            (-1, ["causal_block_frames"]),
            (1.0, ["causal_block_frames"]),
            (99, ["causal_block_frames"]),
        ],  # fmt: skip
        "backend": lambda a: [("nope", ["backend"]), (3, ["backend"])],
    }
    args, bad = pick(rng, valid, mutations)
    fn = rng.choice([m.monarch_attention, lambda *a, **kw: m.monarch_attention_with_lse(*a, **kw)[0]])

    def run():
        a = dict(args)
        return fn(a.pop("q"), a.pop("k"), a.pop("v"), a.pop("frame_shape"), **a)

    def oracle():
        a = {**args, "backend": "reference"}
        return m.monarch_attention(*(a.pop(n).double() for n in ("q", "k", "v")), a.pop("frame_shape"), **a)

    return Case(run, oracle, bad, dtype)


def kv_cache_case(rng):
    h, w, nh, d = 2, 3, rng.randint(1, 2), 4
    hw = h * w
    dtype = rng.choice([torch.float32, torch.float64])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    max_frames, n_new = 3, rng.randint(1, 2)
    start = rng.randint(0, max_frames - n_new)
    new_k, new_v, q = (torch.randn(1, n * hw, nh, d, generator=g, dtype=torch.float64).to(dtype)
                       for n in (n_new, n_new, rng.randint(1, 2)))  # fmt: skip
    caches = [torch.zeros(1, max_frames * hw, nh, d, dtype=dtype) for _ in range(2)]
    valid = {"start_frame": start, "kv_frames": start + n_new, "new_k": new_k, "new_v": new_v}
    mutations = {
        "start_frame": lambda a: [(-1, ["start_frame"]), (max_frames, ["frames"]), (0.0, ["start_frame"])],
        "kv_frames": lambda a: [(0, ["kv_frames"]), (max_frames + 1, ["kv_frames"]), ("1", ["kv_frames"])],
        "new_k": lambda a: [
            (NOT_A_TENSOR, ["new_k"]),
            (a["new_k"][:, :, :, :2], ["new_k"]),
            (caches[0][:, : hw * n_new], ["new_k"]),
            (a["new_k"].half(), ["new_k"]),
        ],  # fmt: skip
        "new_v": lambda a: [(a["new_v"][:, :1], ["new_v"]), (a["new_v"].to("meta"), ["new_v"])],
    }
    args, bad = pick(rng, valid, mutations)
    kc, vc = caches

    def run():
        m.write_kv_cache(kc, vc, args["new_k"], args["new_v"], args["start_frame"], (h, w))
        return m.monarch_attention_kv_cache(q, kc, vc, args["kv_frames"], (h, w))

    def oracle():
        keys = torch.zeros(1, max_frames * hw, nh, d, dtype=torch.float64)
        vals = torch.zeros_like(keys)
        lo, hi = start * hw, (start + n_new) * hw
        keys[:, lo:hi], vals[:, lo:hi] = new_k.double(), new_v.double()  # natural order = tile order here
        n = args["kv_frames"] * hw
        return m.monarch_attention(q.double(), keys[:, :n], vals[:, :n], (h, w), backend="reference")

    return Case(run, oracle, bad, dtype)


def kv_cache_object_case(rng):
    valid = {"batch_size": 1, "num_heads": 2, "head_dim": 4, "frame_shape": (2, 2), "max_frames": 4,
             "f_tied": rng.choice([1, 2]), "local_attn_size": None, "sink_size": 0, "dtype": torch.float64,
             "device": "cpu"}  # fmt: skip
    mutations = {
        "batch_size": lambda a: [(0, ["batch_size"]), (1.0, ["batch_size"])],
        "head_dim": lambda a: [(0, ["head_dim"]), (1000, ["head_dim"])],
        "frame_shape": lambda a: [((2,), ["frame_shape"]), ((0, 2), ["frame_shape"])],
        "max_frames": lambda a: [(0, ["max_frames"]), (3 if a["f_tied"] == 2 else -1, ["max_frames"])],
        "local_attn_size": lambda a: [(8, ["local_attn_size"]), (0, ["local_attn_size"])],
        "sink_size": lambda a: [(-1, ["sink_size"]), (2, ["sink_size"])],
        "dtype": lambda a: [(torch.int32, ["dtype"]), ("float32", ["dtype"])],
        "device": lambda a: [("nope", ["device"])],
    }
    args, bad = pick(rng, valid, mutations)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    f = args["f_tied"]
    k, v, q = (torch.randn(1, f * 4, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))

    def run():
        a = dict(args)
        cache = m.MonarchKVCache(a.pop("batch_size"), a.pop("num_heads"), a.pop("head_dim"), a.pop("frame_shape"),
                                 a.pop("max_frames"), **a)  # fmt: skip
        cache.append(k, v)
        return cache.attend(q)

    return Case(run, lambda: m.monarch_attention(q, k, v, (2, 2), f_tied=f, backend="reference"), bad)


# ---------------------------------------------------------------- hadamard, monarch matmul
def hadamard_case(rng):
    n = rng.choice([2, 4, 8, 16, 12, 24, 20, 40, 56, 64, 1, 3, 72, 100])  # the last four need pad=True
    dtype = rng.choice([torch.float32, torch.float64, torch.float16])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    x = torch.randn(rng.randint(1, 3), n, generator=g, dtype=torch.float64).to(dtype)
    valid = {"x": x, "scale": rng.choice([None, 0.5, -2.0]), "backend": rng.choice([None, "reference"]),
             "fp32_intermediate": rng.random() < 0.3, "pad": n in (1, 3, 72, 100) or rng.random() < 0.2,
             "out_dtype": rng.choice([None, None, None, torch.float8_e4m3fn, torch.float8_e5m2])}  # fmt: skip
    mutations = {
        "x": lambda a: [
            (NOT_A_TENSOR, ["x"]),
            (a["x"][..., :3], ["n=3"]),
            (a["x"].int(), ["x.dtype"]),
            (torch.tensor(1.0), ["x"]),
            (a["x"][..., :1], ["n=1"]),
        ],  # fmt: skip
        "scale": lambda a: [(math.nan, ["scale"]), ("1", ["scale"]), (math.inf, ["scale"])],
        "backend": lambda a: [("cudnn", ["backend"])],
        "pad": lambda a: [("yes", ["pad"]), (1, ["pad"])],
        "out_dtype": lambda a: [(torch.float16, ["out_dtype"]), ("float8_e4m3fn", ["out_dtype"])],
        "out_scale": lambda a: [(-1.0, ["out_scale"]), (math.nan, ["out_scale"]), ("2", ["out_scale"])],
    }
    args, bad = pick(rng, valid, mutations)
    in_place = rng.random() < 0.3 and not args["pad"] and args["out_dtype"] is None and "out_scale" not in args

    def run():
        a = dict(args)
        if not in_place:
            out = m.hadamard(a.pop("x"), a.pop("scale"), **a)
            return out if a["out_dtype"] is None else out[0].double() * out[1]  # FP8: dequantised
        y = a.pop("x")
        y = y.clone() if isinstance(y, torch.Tensor) else y
        a.pop("pad"), a.pop("out_dtype")
        m.hadamard_(y, a.pop("scale"), **a)
        return y

    def oracle():
        xx = args["x"].double()  # a mutated x that is still valid (n=3 with pad=True) must be right too
        size = xx.shape[-1]
        big = 1 << (size - 1).bit_length() if args["pad"] else size
        scale = args["scale"] if args["scale"] is not None else big**-0.5
        if not args["pad"]:
            return xx @ hadamard_matrix(size).T * scale
        return (torch.nn.functional.pad(xx, (0, big - size)) @ hadamard_matrix(big).T * scale)[..., :size]

    return Case(run, oracle, bad, valid["out_dtype"] or dtype)


def dense_monarch(w1, w2):
    k, q, p = w1.shape
    l, s, r = w2.shape
    p1 = torch.zeros(k * q, k * q, dtype=torch.float64)
    for ri in range(r):
        for li in range(l):
            p1[li * r + ri, ri * l + li] = 1
    p2 = torch.zeros(s * l, l * s, dtype=torch.float64)
    for li in range(l):
        for si in range(s):
            p2[si * l + li, li * s + si] = 1
    return p2 @ torch.block_diag(*w2.double()) @ p1 @ torch.block_diag(*w1.double())


def _monarch_sizes(rng, max_q):
    """A random valid Monarch factorisation ``(k, q, p, r, l, s)``, a dtype and a seeded generator."""
    k, q, p = rng.randint(1, 3), rng.randint(1, max_q), rng.randint(1, 3)
    r = rng.choice([d for d in range(1, k * q + 1) if (k * q) % d == 0])
    l, s = k * q // r, rng.randint(1, 3)
    dtype = rng.choice([torch.float32, torch.float64])
    return (k, q, p, r, l, s), dtype, torch.Generator().manual_seed(rng.randrange(2**31))


def monarch_matmul_case(rng):
    (k, q, p, r, l, s), dtype, g = _monarch_sizes(rng, max_q=4)
    x, w1, w2 = (torch.randn(*sh, generator=g, dtype=torch.float64).to(dtype)
                 for sh in ((rng.randint(1, 3), k * p), (k, q, p), (l, s, r)))  # fmt: skip
    valid = {"x": x, "w1": w1, "w2": w2, "backend": rng.choice([None, "reference"])}
    mutations = {
        "x": lambda a: [
            (NOT_A_TENSOR, ["x"]),
            (torch.randn(2, k * p + 1, dtype=dtype), ["x"]),
            (torch.tensor(1.0, dtype=dtype), ["x"]),
            (a["x"].long(), ["x"]),
        ],  # fmt: skip
        "w1": lambda a: [(a["w1"][0], ["w1"]), (torch.zeros(0, q, p, dtype=dtype), ["w1"]), (a["w1"].half(), ["w1"])],
        "w2": lambda a: [(torch.randn(l + 1, s, r, dtype=dtype), ["w2"]), (torch.zeros(l, 0, r, dtype=dtype), ["w2"])],
        "backend": lambda a: [("nope", ["backend"])],
    }
    args, bad = pick(rng, valid, mutations)
    direct = rng.random() < 0.3 and all(isinstance(args[n], torch.Tensor) for n in ("x", "w1", "w2"))
    if direct and args["backend"] not in (None, "reference"):
        direct = False

    def run():
        if direct:
            return ops.monarch_matmul(args["x"], args["w1"], args["w2"], args["backend"] or "")
        return m.monarch_matmul(args["x"], args["w1"], args["w2"], backend=args["backend"])

    return Case(run, lambda: x.double() @ dense_monarch(w1, w2).T, bad, dtype)


def monarch_linear_case(rng):
    nblocks = rng.choice([1, 2, 4])
    valid = {"in_features": nblocks * rng.randint(1, 3), "out_features": nblocks * rng.randint(1, 3),
             "nblocks": nblocks, "bias": rng.random() < 0.7,
             "matmul": rng.choice([None, "structured", "dense"])}  # fmt: skip
    mutations = {
        "matmul": lambda a: [("fast", ["matmul"]), (1, ["matmul"])],
        "in_features": lambda a: [(0, ["in_features"]), (2.0, ["in_features"]), (a["nblocks"] * 2 + 1, ["nblocks"])],
        "out_features": lambda a: [(-4, ["out_features"])],
        "nblocks": lambda a: [(0, ["nblocks"]), (True, ["nblocks"])],
    }
    args, bad = pick(rng, valid, mutations)
    seed = rng.randrange(2**31)
    rows = rng.randint(1, 3)

    def build():
        torch.manual_seed(seed)
        return m.MonarchLinear(**args, dtype=torch.float64)

    def run():
        layer = build()
        return layer(torch.ones(rows, args["in_features"], dtype=torch.float64))

    def oracle():
        layer = build()
        dense = dense_monarch(layer.w1.detach(), layer.w2.detach())
        out = torch.ones(rows, args["in_features"], dtype=torch.float64) @ dense.T
        return out + layer.bias.detach() if layer.bias is not None else out

    return Case(run, oracle, bad)


# ---------------------------------------------------------------- the ops directly (tile order)
def direct_op_case(rng):
    b1, b2, nh, d = rng.choice([2, 3]), rng.choice([2, 4]), 1, 4
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    qt, kt, vt = (torch.randn(1, 2, b1, b2, nh, d, generator=g) for _ in range(3))
    valid = {"q": qt, "k": kt, "v": vt, "sm_scale": 0.5, "causal_block_tiles": rng.choice([0, 1]),
             "num_iters": rng.choice([1, 2]), "backend": rng.choice(["", "reference"])}  # fmt: skip
    mutations = {
        "q": lambda a: [(a["q"][0], ["q"]), (a["q"][:, :, :1], ["q"])],
        "k": lambda a: [(a["k"][..., :2], ["k"])],
        "v": lambda a: [(a["v"][:, :1], ["q", "k", "v"])],
        "sm_scale": lambda a: [(-1.0, ["sm_scale"]), (math.nan, ["sm_scale"]), (1e30, ["sm_scale"])],
        "causal_block_tiles": lambda a: [(-1, ["causal_block_tiles"])],
        "num_iters": lambda a: [(0, ["num_iters"]), (99, ["num_iters"])],
        "backend": lambda a: [("nope", ["backend"])],
    }
    args, bad = pick(rng, valid, mutations)
    names = ("q", "k", "v", "sm_scale", "causal_block_tiles", "num_iters", "backend")

    def oracle():
        from monarchrt_ops import reference

        z, _ = reference.monarch_attention_tiles(
            qt.double(), kt.double(), vt.double(), sm_scale=0.5,
            causal_block_tiles=args["causal_block_tiles"], num_iters=args["num_iters"],
        )  # fmt: skip
        return z

    return Case(lambda: ops.attention(*(args[n] for n in names))[0], oracle, bad, torch.float32)


def direct_attention_backward_case(rng):
    b1, b2, nh, d = rng.choice([2, 3]), rng.choice([2, 4]), 1, 4
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    qt, kt, vt = (torch.randn(1, 2, b1, b2, nh, d, generator=g) for _ in range(3))
    params = {"sm_scale": 0.5, "causal_block_tiles": rng.choice([0, 1]), "num_iters": rng.choice([1, 2])}
    out, lse = ops.attention(qt, kt, vt, *params.values(), "reference")
    dout, dlse = torch.randn(out.shape, generator=g), torch.randn(lse.shape, generator=g)
    valid = {"dout": dout, "dlse": dlse, "q": qt, "k": kt, "v": vt, "out": out, "lse": lse, **params,
             "backend": rng.choice(["", "reference"])}  # fmt: skip
    mutations = {
        "dout": lambda a: [(a["dout"][:, :1], ["dout"]), (a["dout"].double(), ["dout"])],
        "dlse": lambda a: [(a["dlse"][..., :1], ["dlse"]), (a["dlse"].to("meta"), ["dlse"])],
        "out": lambda a: [(a["out"][..., :2], ["out"])],
        "lse": lambda a: [(a["lse"].half(), ["lse"])],
        "k": lambda a: [(a["k"].double(), ["k"]), (a["k"][:, :, :1], ["k"])],
        "sm_scale": lambda a: [(1e30, ["sm_scale"]), (0.0, ["sm_scale"])],
        "num_iters": lambda a: [(0, ["num_iters"]), (99, ["num_iters"])],
        "causal_block_tiles": lambda a: [(-1, ["causal_block_tiles"])],
        "backend": lambda a: [("nope", ["backend"])],
    }
    args, bad = pick(rng, valid, mutations)

    def oracle():
        from monarchrt_ops import reference

        inputs = [x.double().requires_grad_() for x in (qt, kt, vt)]
        z, lse64 = reference.monarch_attention_tiles(*inputs, **params)
        grads = torch.autograd.grad((z, lse64), inputs, (dout.double(), dlse.double()))
        return torch.cat([x.flatten() for x in grads])

    def run():
        return torch.cat([x.flatten() for x in ops.attention_backward(*args.values())])

    return Case(run, oracle, bad, torch.float32)


def direct_kv_cache_write_case(rng):
    nh, d, seq, n = rng.randint(1, 2), 4, 6, rng.randint(1, 3)
    dtype = rng.choice([torch.float32, torch.float64])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    new_k, new_v = (torch.randn(1, n, nh, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    caches = [torch.zeros(1, seq, nh, d, dtype=dtype) for _ in range(2)]
    valid = {
        "k_cache": caches[0],
        "v_cache": caches[1],
        "new_k": new_k,
        "new_v": new_v,
        "start": rng.randint(0, seq - n),
    }
    mutations = {
        "k_cache": lambda a: [
            (torch.zeros(1, 1, nh, d, dtype=dtype).expand(1, seq, nh, d), ["k_cache"]),
            (a["k_cache"].long(), ["k_cache"]),
            (a["k_cache"][..., :2], ["k_cache"]),
        ],  # fmt: skip
        "v_cache": lambda a: [(a["k_cache"], ["v_cache"]), (a["v_cache"].to("meta"), ["v_cache"])],
        "new_k": lambda a: [(a["new_k"].half(), ["new_k"]), (a["k_cache"][:, :n], ["new_k"])],
        "new_v": lambda a: [(a["new_v"][:, :, :1], ["new_v"])],
        "start": lambda a: [(-1, ["start"]), (seq, ["start"])],
    }
    args, bad = pick(rng, valid, mutations)

    def run():
        ops.kv_cache_write(*args.values())
        return torch.cat([args["k_cache"], args["v_cache"]])

    def oracle():
        k, v = torch.zeros(1, seq, nh, d, dtype=torch.float64), torch.zeros(1, seq, nh, d, dtype=torch.float64)
        lo = args["start"]
        k[:, lo : lo + n], v[:, lo : lo + n] = new_k.double(), new_v.double()
        return torch.cat([k, v])

    return Case(run, oracle, bad, dtype)


def direct_hadamard_case(rng):
    n = rng.choice([2, 8, 12, 16, 20, 40])
    dtype = rng.choice([torch.float32, torch.float64])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    x = torch.randn(rng.randint(1, 3), n, generator=g, dtype=torch.float64).to(dtype)
    valid = {"x": x, "scale": rng.choice([0.5, -2.0, n**-0.5]), "transpose": rng.random() < 0.5,
             "fp32_intermediate": rng.random() < 0.3, "backend": rng.choice(["", "reference"])}  # fmt: skip
    in_place = rng.random() < 0.4
    mutations = {
        "x": lambda a: [
            (torch.randn(2, 72, dtype=dtype), ["n=72"]),
            (a["x"].int(), ["x.dtype"]),
            (torch.tensor(1.0, dtype=dtype), ["x"]),
            (torch.randn(n, 3, dtype=dtype).T if in_place else torch.randn(2, 1, dtype=dtype), ["x", "n=1"]),
        ],  # fmt: skip
        "scale": lambda a: [(math.nan, ["scale"]), (math.inf, ["scale"])],
        "backend": lambda a: [("cudnn", ["backend"])],
    }
    args, bad = pick(rng, valid, mutations)

    def run():
        if not in_place:
            return ops.hadamard(*args.values())
        y = args["x"].clone() if args["x"].is_contiguous() else args["x"]  # a strided x stays strided
        ops.hadamard_(y, *list(args.values())[1:])
        return y

    def oracle():
        h = hadamard_matrix(args["x"].shape[-1])
        return args["x"].double() @ (h if args["transpose"] else h.T) * args["scale"]

    return Case(run, oracle, bad, dtype)


def direct_monarch_matmul_backward_case(rng):
    (k, q, p, r, l, s), dtype, g = _monarch_sizes(rng, max_q=3)
    rows = rng.randint(1, 3)
    x, w1, w2, dout = (torch.randn(*sh, generator=g, dtype=torch.float64).to(dtype)
                       for sh in ((rows, k * p), (k, q, p), (l, s, r), (rows, s * l)))  # fmt: skip
    valid = {"dout": dout, "x": x, "w1": w1, "w2": w2, "backend": rng.choice(["", "reference"])}
    mutations = {
        "dout": lambda a: [(a["dout"][:, :-1] if s * l > 1 else a["dout"][:0], ["dout"]), (a["dout"].half(), ["dout"])],
        "x": lambda a: [(torch.randn(rows, k * p + 1, dtype=dtype), ["x"])],
        "w1": lambda a: [(torch.zeros(0, q, p, dtype=dtype), ["w1"]), (a["w1"][0], ["w1"])],
        "w2": lambda a: [(torch.randn(l + 1, s, r, dtype=dtype), ["w2"])],
        "backend": lambda a: [("nope", ["backend"])],
    }
    args, bad = pick(rng, valid, mutations)

    def run():
        return torch.cat([t.flatten() for t in ops.monarch_matmul_backward(*args.values())])

    def oracle():
        xx, a, b = (t.double().requires_grad_() for t in (x, w1, w2))
        y = xx @ dense_monarch(a, b).T
        return torch.cat([t.flatten() for t in torch.autograd.grad(y, (xx, a, b), dout.double())])

    return Case(run, oracle, bad, dtype)


# ---------------------------------------------------------------- the layout functions
def layout_case(rng):
    h, w = rng.choice([(2, 3), (2, 4), (4, 2)])
    f_tied = rng.choice([1, 2])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    x = torch.randn(1, f_tied * rng.randint(1, 2) * h * w, 2, 3, generator=g, dtype=torch.float64)
    valid = {"x": x, "frame_h": h, "frame_w": w, "f_tied": f_tied,
             "h_reduce": rng.choice([r for r in (1, 2) if h % r == 0]),
             "w_reduce": rng.choice([r for r in (1, 2) if w % r == 0])}  # fmt: skip
    mutations = {
        "x": lambda a: [(a["x"][:, :-1], ["S="]), (a["x"][0], ["x must be"])],
        "frame_h": lambda a: [(0, ["frame_h"]), (2.0, ["frame_h"])],
        "f_tied": lambda a: [(-1, ["f_tied"])],
        "h_reduce": lambda a: [(h + 1, ["h_reduce"]), (True, ["h_reduce"])],
        "w_reduce": lambda a: [(w + 1, ["w_reduce"])],
    }
    args, bad = pick(rng, valid, mutations)
    sequence = rng.random() < 0.5

    def run():
        a = dict(args)
        tiling = m.Tiling(a.pop("frame_h"), a.pop("frame_w"), **{n: a[n] for n in ("f_tied", "h_reduce", "w_reduce")})
        if sequence:
            return m.from_tile_sequence(m.to_tile_sequence(a["x"], tiling), tiling)
        return m.from_tiles(m.to_tiles(a["x"], tiling), tiling)

    return Case(run, lambda: args["x"], bad)


GENERATORS = [attention_case, kv_cache_case, kv_cache_object_case, hadamard_case, monarch_matmul_case,
              monarch_linear_case, direct_op_case, direct_attention_backward_case, direct_kv_cache_write_case,
              direct_hadamard_case, direct_monarch_matmul_backward_case, layout_case]  # fmt: skip


def check(case: Case) -> str | None:
    """None when the case behaved, else what went wrong."""
    t0 = time.monotonic()
    try:
        out = case.run()
    except (ValueError, TypeError) as e:
        if case.bad is None:
            return f"a valid call raised {type(e).__name__}: {e}"
        if not any(name in str(e) for name in case.bad):
            return f"{type(e).__name__} does not name {case.bad}: {e}"
        return None
    except Exception as e:  # noqa: BLE001  (any other exception is the finding)
        return f"{type(e).__name__} (not ValueError/TypeError): {e}"
    finally:
        if time.monotonic() - t0 > SLOW_S:
            return f"took {time.monotonic() - t0:.1f} s"  # noqa: B012
    if case.bad is not None:
        ref = case.oracle()
        # an invalid value can still be a valid call (e.g. 3 frames that happen to divide): then it must be right
        err = rel(out, ref) if out.shape == ref.shape else math.inf
        return None if err <= TOLERANCE[case.dtype] else f"accepted {case.bad} and returned a wrong answer ({err:.2e})"
    err = rel(out, case.oracle())
    return None if err <= TOLERANCE[case.dtype] else f"relative error {err:.2e} > {TOLERANCE[case.dtype]:g}"


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_fuzz(generator):
    rng = random.Random(f"{SEED}-{generator.__name__}")
    deadline = time.monotonic() + BUDGET_S / len(GENERATORS)
    failures, calls = [], 0
    while time.monotonic() < deadline and calls < 300:
        case = generator(rng)
        problem = check(case)
        calls += 1
        if problem:
            failures.append(problem)
    assert calls >= 20, f"only {calls} calls in the time budget"
    assert not failures, f"{len(failures)} of {calls} calls misbehaved:\n" + "\n".join(sorted(set(failures))[:20])
