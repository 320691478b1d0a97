"""The attention forward table of docs/attention-kernels.md: every case, every baseline, one run.

python -m monarchrt_ops.bench.attention_rows [--rows NAME ...] [--peer PATH] [--profile] [--json PATH]

Per case (bf16, 12 heads, d = 128, batch 1, public API): the fastest dense SDPA (cuDNN, flash),
this package's automatic choice and each GPU backend that supports the case, and, with ``--peer``,
the MonarchRT authors' Triton kernel (a file carried for the bench only, never part of the
package). Each is timed eagerly (``bench_ms``) and replayed from a CUDA graph (``graph_ms``).
``--profile`` adds the GPU time of each kernel of the automatic choice (torch.profiler);
``--backward ROW ...`` also times forward+backward (gradients of q, k, v; for the KV-cache row, of q
and the chunk's new K/V only) of those rows, ours (automatic choice) against the fastest dense SDPA
and, with ``--peer``, the authors' backward.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import monarchrt_ops as m

from .common import bench_ms, ceilings, graph_ms, header

FRAME = (30, 52)  # Self-Forcing / Wan 2.1 480p latent frame after patchify
FRAME_720P = (45, 80)


@dataclass(frozen=True)
class Row:
    name: str
    q_frames: int = 21
    kv_frames: int = 21
    frame_shape: tuple[int, int] = FRAME
    kw: dict = field(default_factory=dict)  # f_tied, h_reduce, w_reduce, causal_block_frames, num_iters
    kv_cache: bool = False  # the chunk attends over a cache slice through the KV-cache API


ROWS = [
    Row("bidir-21"),
    Row("ar-3-vs-21", q_frames=3, kv_cache=True),
    Row("causal-21-blocks-3", kw={"causal_block_frames": 3}),
    Row("720p-21", frame_shape=FRAME_720P),
    Row("iters-2", kw={"num_iters": 2}),
    Row("iters-3", kw={"num_iters": 3}),
    Row("tiles-15x26", kw={"h_reduce": 2, "w_reduce": 2}),
    Row("tiles-90x52", kw={"f_tied": 3}),
]
HEADS, HEAD_DIM = 12, 128


def _dense(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def _load_peer(path: Path, max_configs: int):
    """The authors' module, its Triton autotune lists cut to ``max_configs`` (seeded) to fit a lease."""
    import triton

    real = triton.autotune

    def autotune(configs, *a, **kw):
        configs = list(configs)
        if len(configs) > max_configs:
            configs = random.Random(0).sample(configs, max_configs)
        return real(configs, *a, **kw)

    triton.autotune = autotune
    try:
        spec = importlib.util.spec_from_file_location("peer_monarch_attn", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        triton.autotune = real
    return mod


def _time(fn) -> dict:
    out = {}
    try:
        out["eager_ms"] = bench_ms(fn)
        out["graph_ms"] = graph_ms(fn)
    except (RuntimeError, ValueError, torch.OutOfMemoryError) as e:
        out["error"] = str(e).splitlines()[0][:300]
    torch.cuda.empty_cache()
    return out


def _profile(fn) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    rows = [
        {"kernel": e.key[:90], "ms_per_call": e.device_time_total / 3e3, "launches_per_call": e.count / 3}
        for e in prof.key_averages()
        if e.device_time_total > 0
    ]
    return sorted(rows, key=lambda r: -r["ms_per_call"])[:12]


def _fwd_bwd_step(fn, inputs, dout_like):
    """A call of forward + backward of ``fn(*inputs)`` (natural-order output)."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    dout = torch.randn_like(dout_like)

    def step():
        out = fn(*leaves)
        torch.autograd.grad(out, leaves, dout)

    return step


def _fwd_bwd(fn, inputs, dout_like) -> dict:
    """Forward + backward of ``fn(*inputs)``, timed like the forward."""
    return _time(_fwd_bwd_step(fn, inputs, dout_like))


def run_row(row: Row, peer, profile: bool, backward: bool = False) -> dict:
    hw = row.frame_shape[0] * row.frame_shape[1]
    gen = torch.Generator(device="cuda").manual_seed(0)

    def mk(frames):
        return torch.randn(1, frames * hw, HEADS, HEAD_DIM, device="cuda", generator=gen).to(torch.bfloat16)

    q, k, v = mk(row.q_frames), mk(row.kv_frames), mk(row.kv_frames)
    tiling = dict((key, row.kw[key]) for key in ("f_tied", "h_reduce", "w_reduce") if key in row.kw)
    out: dict = {"row": row.name, "frame_shape": row.frame_shape, "q_frames": row.q_frames, **row.kw}
    dense_ms = []
    for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        with sdpa_kernel(be):
            out[f"dense_{name}"] = _time(lambda: _dense(q, k, v))
        if "graph_ms" in out[f"dense_{name}"]:
            dense_ms.append(min(out[f"dense_{name}"]["eager_ms"], out[f"dense_{name}"]["graph_ms"]))
    out["fastest_dense_ms"] = min(dense_ms) if dense_ms else None

    if row.kv_cache:
        k_cache, v_cache = torch.empty_like(k), torch.empty_like(v)
        m.write_kv_cache(k_cache, v_cache, k, v, 0, row.frame_shape, **tiling)

        def ours(backend):
            return lambda: m.monarch_attention_kv_cache(
                q, k_cache, v_cache, row.kv_frames, row.frame_shape, backend=backend, **row.kw
            )
    else:

        def ours(backend):
            return lambda: m.monarch_attention(q, k, v, row.frame_shape, backend=backend, **row.kw)

    for backend in (None, "cuda", "triton"):
        label = backend or "auto"
        try:
            ours(backend)()
        except (ValueError, RuntimeError) as e:
            out[f"ours_{label}"] = {"skipped": str(e).splitlines()[0][:300]}
            continue
        out[f"ours_{label}"] = _time(ours(backend))
    if profile:
        out["auto_kernels"] = _profile(ours(None))

    if peer is not None and not row.kv_cache and row.kw.get("num_iters", 1) == 1:
        tiles = dict(
            f_tied=row.kw.get("f_tied", 1), h_reduce=row.kw.get("h_reduce", 1), w_reduce=row.kw.get("w_reduce", 1)
        )
        cbf = row.kw.get("causal_block_frames")
        block = cbf * hw if cbf else None

        def peer_fn():
            return peer.monarch_attn(
                q, k, v, **tiles, h=row.frame_shape[0], w=row.frame_shape[1], block_causal_size=block
            )

        try:
            with torch.no_grad():
                peer_fn()  # autotune outside the timing
                out["peer"] = _time(peer_fn)
                ref = m.monarch_attention(q, k, v, row.frame_shape, **row.kw).float()
                got = peer_fn().float()
                out["peer"]["rel_err_vs_ours"] = ((got - ref).norm() / ref.norm()).item()
        except Exception as e:  # noqa: BLE001 - a peer failure is recorded, never fatal
            out["peer"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    if backward:
        dense_fb = []
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            with sdpa_kernel(be):
                t = _fwd_bwd(lambda a, b, c: _dense(a, b, c).transpose(1, 2), (q, k, v), q)
            out[f"dense_{name}_fwd_bwd"] = t
            dense_fb += [t[key] for key in ("eager_ms", "graph_ms") if key in t]
        out["fastest_dense_fwd_bwd_ms"] = min(dense_fb) if dense_fb else None
        if row.kv_cache:
            # Self-Forcing training: gradients to q and to the chunk's own K/V (the cache's last frames,
            # written above), none to the cache; the dense baseline above has gradients to all of k, v
            n_new = row.q_frames * hw

            def ours_kv(a, new_k, new_v):
                return m.monarch_attention_kv_cache(
                    a, k_cache, v_cache, row.kv_frames, row.frame_shape, new_k=new_k, new_v=new_v, **row.kw
                )

            step = _fwd_bwd_step(ours_kv, (q, k[:, -n_new:], v[:, -n_new:]), q)
        else:
            step = _fwd_bwd_step(lambda a, b, c: m.monarch_attention(a, b, c, row.frame_shape, **row.kw), (q, k, v), q)
        out["ours_auto_fwd_bwd"] = _time(step)
        if profile:
            out["auto_fwd_bwd_kernels"] = _profile(step)
        if "peer" in out and "error" not in out["peer"]:
            try:  # the authors' backward (num_iters = 1 only, as their forward above)
                out["peer_fwd_bwd"] = _fwd_bwd(
                    lambda a, b, c: peer.monarch_attn(
                        a, b, c, **tiles, h=row.frame_shape[0], w=row.frame_shape[1], block_causal_size=block
                    ),
                    (q, k, v),
                    q,
                )
            except Exception as e:  # noqa: BLE001 - a peer failure is recorded, never fatal
                out["peer_fwd_bwd"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    best = [
        out[f"ours_{b}"].get("graph_ms") for b in ("auto", "cuda", "triton") if "graph_ms" in out.get(f"ours_{b}", {})
    ]
    if best and out["fastest_dense_ms"]:
        auto = out["ours_auto"]
        out["speedup_auto_eager"] = out["fastest_dense_ms"] / auto["eager_ms"]
        out["speedup_auto_graph"] = out["fastest_dense_ms"] / auto["graph_ms"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="*", default=[r.name for r in ROWS])
    p.add_argument("--peer", type=Path, default=None, help="the authors' monarch_attn.py, carried for the bench")
    p.add_argument("--peer-configs", type=int, default=12, help="autotune configs kept per peer kernel")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--backward", nargs="*", default=[], help="rows to also time forward+backward")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    peer = _load_peer(args.peer, args.peer_configs) if args.peer and args.peer.exists() else None
    result = {
        "header": header(),
        "ceilings": ceilings(),
        "peer_configs": args.peer_configs if peer else None,
        "rows": [],
    }
    print(json.dumps(result["header"]), json.dumps(result["ceilings"]), flush=True)
    for row in ROWS:
        if row.name not in args.rows:
            continue
        r = run_row(row, peer, args.profile, row.name in args.backward)
        result["rows"].append(r)
        print(json.dumps(r), flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))

    def ms(d, key):
        return f"{d.get(key, float('nan')):8.3f}" if isinstance(d, dict) and key in d else "       -"

    cols = ("auto eager", "auto graph", "cuda graph", "triton graph", "peer graph")
    print(f"\n{'row':20s} {'dense':>8s} " + " ".join(f"{c:>12s}" for c in cols) + f" {'x dense':>7s}")
    for r in result["rows"]:
        cells = [
            ms(r.get("ours_auto"), "eager_ms"),
            ms(r.get("ours_auto"), "graph_ms"),
            ms(r.get("ours_cuda"), "graph_ms"),
            ms(r.get("ours_triton"), "graph_ms"),
            ms(r.get("peer"), "graph_ms"),
        ]
        dense = r["fastest_dense_ms"] or float("nan")
        print(
            f"{r['row']:20s} {dense:8.3f} "
            + " ".join(f"{c:>12s}" for c in cells)
            + f" {r.get('speedup_auto_graph', float('nan')):7.2f}"
        )
    for r in result["rows"]:
        if "ours_auto_fwd_bwd" in r:
            ours = r["ours_auto_fwd_bwd"]
            best = min((ours[key] for key in ("eager_ms", "graph_ms") if key in ours), default=float("nan"))
            dense = r["fastest_dense_fwd_bwd_ms"] or float("nan")
            print(f"fwd+bwd {r['row']:20s} dense {dense:8.3f}  ours {best:8.3f}  x dense {dense / best:5.2f}  {ours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
