"""Monarch self-attention in a diffusers Wan 2.1 transformer, in one call.

    python examples/wan_diffusers.py --tiny                 # CPU, a tiny random-weight model, float64
    python examples/wan_diffusers.py --device cuda          # the Wan 2.1 T2V 1.3B config, random weights, bf16,
                                                            # 21 latent frames of 480x832 (30x52 tokens)
    python examples/wan_diffusers.py --device cuda --pretrained Wan-AI/Wan2.1-T2V-1.3B-Diffusers

It runs the transformer once with its own (dense) attention and once with Monarch attention, and
prints the relative difference and the time of each. ``--tiny --w-reduce-all`` sets one column per
tile (b2 = 1), where Monarch attention is exactly dense attention.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import WanTransformer3DModel

from monarchrt_ops.integrations.diffusers import WAN_2_1_T2V_1_3B, apply_monarch_attention, random_wan_transformer

TINY = {**WAN_2_1_T2V_1_3B, "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 4,
        "out_channels": 4, "text_dim": 16, "freq_dim": 16, "ffn_dim": 32, "num_layers": 2,
        "rope_max_seq_len": 64}  # fmt: skip


def build(args):
    if args.pretrained:
        model = WanTransformer3DModel.from_pretrained(args.pretrained, subfolder="transformer", torch_dtype=args.dtype)
        return model.to(args.device).eval()
    return random_wan_transformer(TINY if args.tiny else WAN_2_1_T2V_1_3B, dtype=args.dtype, device=args.device)


def inputs(model, args):
    cfg = model.config
    frames, height, width = (3, 8, 12) if args.tiny else (21, 60, 104)  # latent: 480x832 / 8, 81 video frames
    g = torch.Generator(device=args.device).manual_seed(1)
    latent = torch.randn(1, cfg.in_channels, frames, height, width, generator=g, device=args.device)
    text = torch.randn(1, 5 if args.tiny else 512, cfg.text_dim, generator=g, device=args.device)
    return latent.to(args.dtype), torch.tensor([500.0], device=args.device), text.to(args.dtype)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny random model (CPU-friendly)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=("fp64", "fp32", "bf16"))
    p.add_argument("--pretrained", default=None, help="a diffusers Wan repo or folder (loads real weights)")
    p.add_argument("--h-reduce", type=int, default=1)
    p.add_argument("--w-reduce", type=int, default=1)
    p.add_argument("--w-reduce-all", action="store_true", help="w_reduce = W: one column per tile (dense-exact)")
    p.add_argument("--dense-layers", type=int, nargs="*", default=())
    p.add_argument("--backend", default=None)
    args = p.parse_args(argv)
    names = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}
    args.dtype = names[args.dtype or ("fp64" if args.tiny else "bf16")]
    model = build(args)
    x = inputs(model, args)
    w_tokens = x[0].shape[-1] // model.config.patch_size[2]
    w_reduce = w_tokens if args.w_reduce_all else args.w_reduce
    with torch.no_grad():
        dense, t_dense = timed(lambda: model(*x, return_dict=False)[0])
        handle = apply_monarch_attention(
            model, h_reduce=args.h_reduce, w_reduce=w_reduce, dense_layers=args.dense_layers, backend=args.backend
        )
        monarch, t_monarch = timed(lambda: model(*x, return_dict=False)[0])
        handle.remove()
    err = ((monarch.double() - dense.double()).norm() / dense.double().norm()).item()
    f, h, w = handle.grid
    print(f"grid {f} frames x {h}x{w} tokens, w_reduce={w_reduce}: dense {t_dense * 1e3:.1f} ms (first call), "
          f"Monarch {t_monarch * 1e3:.1f} ms (first call); relative difference {err:.3e}; "
          f"finite: {bool(torch.isfinite(monarch).all())}")  # fmt: skip
    return err


if __name__ == "__main__":
    main()
