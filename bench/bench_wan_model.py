"""Whole-model timing: the Wan 2.1 T2V 1.3B transformer (random weights) with dense vs Monarch attention.

    python -m monarchrt_ops.bench.bench_wan_model --json bench/results/wan_model_h200.json   # GPU, bf16
    python -m monarchrt_ops.bench.bench_wan_model --quick --device cpu                     # tiny smoke test

Cases (each in its own try/except; an error is recorded, the rest still run):

- ``forward/<attn>/<eager|compiled>``: one transformer forward on 21 latent frames of 480x832
  (30x52 tokens per frame, 32760 tokens), 30 layers, 12 heads, head_dim 128, bf16. ``dense`` is
  diffusers' own processor with SDPA restricted to cuDNN (on a GPU; if cuDNN cannot run the case,
  its error is recorded); ``monarch`` is
  :func:`monarchrt_ops.integrations.diffusers.apply_monarch_attention` (default tiling, automatic
  backend). ``compiled`` is ``torch.compile(fullgraph=True)`` of each block (regional compilation).
- ``ar/<attn>[/compiled]``: a Self-Forcing style autoregressive loop of 7 chunks of 3 frames over the
  same layers' self-attention: each chunk's K/V go into a per-layer cache and its queries attend to
  every cached frame. ``monarch`` uses :class:`monarchrt_ops.MonarchKVCache`; ``dense`` concatenates
  the cached K/V and calls cuDNN SDPA. Only self-attention + projections + MLP are run per layer
  (the block's cross-attention and modulation stay as in the model, see ``ar_chunk``). ``compiled``
  compiles the blocks' work around the attention call (``ar_pre_attention``, ``ar_post_attention``,
  fullgraph); the attention call stays eager in both.

Timing: CUDA-synchronised wall time, ``--warmup`` untimed runs, median (and min/max) of ``--runs``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
import traceback

import torch

import monarchrt_ops
from monarchrt_ops import MonarchKVCache

QUICK = {"num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4, "out_channels": 4, "text_dim": 16,
         "freq_dim": 16, "ffn_dim": 32, "num_layers": 2, "rope_max_seq_len": 64}  # fmt: skip


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs}


def wan_inputs(model, frames, height, width, text_len, device, dtype):
    g = torch.Generator(device=device).manual_seed(1)
    latent = torch.randn(1, model.config.in_channels, frames, height, width, generator=g, device=device)
    text = torch.randn(1, text_len, model.config.text_dim, generator=g, device=device)
    return latent.to(dtype), torch.tensor([500.0], device=device), text.to(dtype)


def ar_pre_attention(block, hs, temb, cos, sin):
    """A block's work before self-attention in the AR loop: modulation, norm, q/k/v with RoPE."""
    from monarchrt_ops.integrations.diffusers import apply_wan_rotary

    shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + temb.float()).chunk(6, dim=1)
    a = block.attn1
    n = (block.norm1(hs.float()) * (1 + scale) + shift).type_as(hs)
    q = a.norm_q(a.to_q(n)).unflatten(2, (a.heads, -1))
    k = a.norm_k(a.to_k(n)).unflatten(2, (a.heads, -1))
    v = a.to_v(n).unflatten(2, (a.heads, -1))
    return apply_wan_rotary(q, cos, sin), apply_wan_rotary(k, cos, sin), v, (gate, c_shift, c_scale, c_gate)


def ar_post_attention(block, hs, o, text, mods):
    """A block's work after self-attention: output projection, cross-attention, feed-forward."""
    gate, c_shift, c_scale, c_gate = mods
    o = block.attn1.to_out[0](o.flatten(2, 3).type_as(hs))
    hs = (hs.float() + o * gate).type_as(hs)
    hs = hs + block.attn2(block.norm2(hs.float()).type_as(hs), text, None, None)
    n = (block.norm3(hs.float()) * (1 + c_scale) + c_shift).type_as(hs)
    return (hs.float() + block.ffn(n).float() * c_gate).type_as(hs)


def ar_chunk(model, x_chunk, text, temb, caches, start, frames_shape, attn: str, dense_kv,
             pre=ar_pre_attention, post=ar_post_attention):  # fmt: skip
    """One chunk through every block: self-attention over the cache (Monarch) or over the concatenated
    K/V (dense), then the block's cross-attention and feed-forward, with the block's modulation.
    ``pre`` and ``post`` (the block's work around self-attention) may be compiled; the attention call
    itself stays eager (the cache's fill state is Python state)."""
    chunk_frames, h, w = frames_shape
    rope = model.rope.freqs_cos, model.rope.freqs_sin
    cos, sin = _rope_slice(model, rope, start, chunk_frames, h, w)
    hs = x_chunk
    for i, block in enumerate(model.blocks):
        q, k, v, mods = pre(block, hs, temb, cos, sin)
        if attn == "monarch":
            o = caches[i].update_and_attend(q, k, v, start)
        else:
            kc, vc = dense_kv[i]
            kc[:, start * h * w : (start + chunk_frames) * h * w] = k
            vc[:, start * h * w : (start + chunk_frames) * h * w] = v
            end = (start + chunk_frames) * h * w
            o = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), kc[:, :end].transpose(1, 2), vc[:, :end].transpose(1, 2)
            ).transpose(1, 2)
        hs = post(block, hs, o, text, mods)
    return hs


def _rope_slice(model, rope, start, frames, h, w):
    """Wan's RoPE tables for frames ``[start, start+frames)`` of an ``h x w`` token grid."""
    r = model.rope
    cos_parts = rope[0].split([r.t_dim, r.h_dim, r.w_dim], dim=1)
    sin_parts = rope[1].split([r.t_dim, r.h_dim, r.w_dim], dim=1)

    def table(parts):
        f = parts[0][start : start + frames].view(frames, 1, 1, -1).expand(frames, h, w, -1)
        y = parts[1][:h].view(1, h, 1, -1).expand(frames, h, w, -1)
        x = parts[2][:w].view(1, 1, w, -1).expand(frames, h, w, -1)
        return torch.cat([f, y, x], dim=-1).reshape(1, frames * h * w, 1, -1)

    return table(cos_parts), table(sin_parts)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model and video (runs on CPU too)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"))
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled cases")
    p.add_argument("--backend", default=None, help="Monarch backend (default automatic)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    from monarchrt_ops.integrations.diffusers import WAN_2_1_T2V_1_3B, apply_monarch_attention, random_wan_transformer

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("fp32" if device.type == "cpu" else "bf16")
    ]
    runs = args.runs or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    config = {**WAN_2_1_T2V_1_3B, **QUICK} if args.quick else WAN_2_1_T2V_1_3B
    frames, height, width, text_len = (6, 8, 12, 8) if args.quick else (21, 60, 104, 512)
    chunk, n_chunks = (2, 3) if args.quick else (3, 7)
    model = random_wan_transformer(config, dtype=dtype, device=device)
    x = wan_inputs(model, frames, height, width, text_len, device, dtype)
    grid = (frames, height // 2, width // 2)
    dense_kind = "cudnn" if device.type == "cuda" else "default (CPU)"
    result = {
        "config": {"model": "quick" if args.quick else "Wan2.1-T2V-1.3B (random weights)", **config,
                   "latent": [frames, height, width], "tokens_grid": list(grid), "text_len": text_len,
                   "dtype": str(dtype), "ar_chunks": n_chunks, "ar_chunk_frames": chunk},
        "env": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                "torch": torch.__version__, "monarchrt_ops": monarchrt_ops.__version__,
                "dense_sdpa": dense_kind, "runs": runs, "warmup": warmup},
        "cases": {},
    }  # fmt: skip
    try:
        import diffusers

        result["env"]["diffusers"] = diffusers.__version__
    except ImportError:
        pass

    def record(name, fn):
        try:
            result["cases"][name] = measure(fn, device, warmup, runs)
        except Exception as e:  # noqa: BLE001 - every case is recorded, failures included
            result["cases"][name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        print(f"{name:28s} {_fmt(result['cases'][name])}", flush=True)

    def forward():
        with torch.no_grad():
            return model(*x, return_dict=False)[0]

    def dense_forward():
        with _cudnn(device):
            return forward()

    # 1. whole-transformer forward, eager
    record("forward/dense/eager", dense_forward)
    handle = apply_monarch_attention(model, backend=args.backend)
    record("forward/monarch/eager", forward)
    handle.remove()
    # 2. compiled (each block, fullgraph)
    if not args.no_compile:
        try:
            for block in model.blocks:
                block.compile(fullgraph=True, backend=args.compile_backend)
        except Exception as e:  # noqa: BLE001
            result["cases"]["compile"] = {"error": f"{type(e).__name__}: {e}"}
        record("forward/dense/compiled", dense_forward)
        handle = apply_monarch_attention(model, backend=args.backend)
        record("forward/monarch/compiled", forward)
        handle.remove()
        torch._dynamo.reset()
        del model
        model = random_wan_transformer(config, dtype=dtype, device=device)  # uncompiled again for the AR loop
    # 3. autoregressive loop
    with torch.no_grad():
        temb, tproj, text, _ = model.condition_embedder(x[1], x[2], None)
        tproj = tproj.unflatten(1, (6, -1))
        hw = grid[1] * grid[2]
        tokens = model.patch_embedding(x[0]).flatten(2).transpose(1, 2).contiguous()[:, : n_chunks * chunk * hw]
        heads, hd = config["num_attention_heads"], config["attention_head_dim"]

        def ar_loop(attn, pre=ar_pre_attention, post=ar_post_attention):
            caches = [MonarchKVCache(1, heads, hd, grid[1:], n_chunks * chunk, dtype=dtype, device=device)
                      for _ in model.blocks]  # fmt: skip
            dense_kv = [(torch.empty(1, n_chunks * chunk * hw, heads, hd, device=device, dtype=dtype),
                         torch.empty(1, n_chunks * chunk * hw, heads, hd, device=device, dtype=dtype))
                        for _ in model.blocks] if attn == "dense" else None  # fmt: skip
            ctx = _cudnn(device) if attn == "dense" else contextlib.nullcontext()
            with ctx:
                for c in range(n_chunks):
                    start = c * chunk
                    ar_chunk(model, tokens[:, start * hw : (start + chunk) * hw], text, tproj, caches, start,
                             (chunk, grid[1], grid[2]), attn, dense_kv, pre, post)  # fmt: skip

        record("ar/dense", lambda: ar_loop("dense"))
        record("ar/monarch", lambda: ar_loop("monarch"))
        if not args.no_compile:  # the blocks' work around attention compiled (one graph each for all blocks)
            pre = torch.compile(ar_pre_attention, fullgraph=True, backend=args.compile_backend)
            post = torch.compile(ar_post_attention, fullgraph=True, backend=args.compile_backend)
            record("ar/dense/compiled", lambda: ar_loop("dense", pre, post))
            record("ar/monarch/compiled", lambda: ar_loop("monarch", pre, post))

    cases = result["cases"]
    for kind in ("eager", "compiled"):
        d, m = cases.get(f"forward/dense/{kind}", {}), cases.get(f"forward/monarch/{kind}", {})
        if "median_ms" in d and "median_ms" in m:
            result[f"speedup_forward_{kind}"] = d["median_ms"] / m["median_ms"]
    for suffix in ("", "/compiled"):
        d, m = cases.get(f"ar/dense{suffix}", {}), cases.get(f"ar/monarch{suffix}", {})
        if "median_ms" in d and "median_ms" in m:
            result["speedup_ar" + suffix.replace("/", "_")] = d["median_ms"] / m["median_ms"]
    for key in ("speedup_forward_eager", "speedup_forward_compiled", "speedup_ar", "speedup_ar_compiled"):
        if key in result:
            print(f"{key:28s} {result[key]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return result


def _cudnn(device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION])


def _fmt(case: dict) -> str:
    if "error" in case:
        return "ERROR " + case["error"][:200]
    return f"{case['median_ms']:9.2f} ms (min {case['min_ms']:.2f}, max {case['max_ms']:.2f}, n={case['runs']})"


if __name__ == "__main__":
    main()
