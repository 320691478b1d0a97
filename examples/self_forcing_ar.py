"""Self-Forcing style autoregressive generation with Monarch attention and MonarchKVCache.

A small causal video transformer (random weights) is run two ways:

1. the whole sequence at once, with block-causal Monarch attention (``causal_block_frames=chunk``);
2. chunk by chunk, each layer keeping a :class:`monarchrt_ops.MonarchKVCache`: a chunk's RoPE
   positions start at its global frame index (``cache.next_frame``), its K/V are written into the
   cache, and its queries attend to every cached frame. As in Self-Forcing, each chunk is first run
   for a few "denoising" passes on noisy inputs (each rewrites the chunk's K/V in the cache), and then
   once on the clean chunk (the context pass), whose K/V stay for the next chunks.

The clean passes of (2) equal (1): that is what block-causal attention means. Run:

    python examples/self_forcing_ar.py                      # tiny, CPU, float64, checks the equality
    python examples/self_forcing_ar.py --device cuda --dtype bf16 --frames 21 --chunk 3 \\
        --frame-shape 30 52 --heads 12 --head-dim 128 --layers 2    # Self-Forcing sizes on a GPU
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from monarchrt_ops import MonarchKVCache, monarch_attention


def rope_angles(frames: int, frame_shape: tuple[int, int], head_dim: int, frame_offset: int, device) -> torch.Tensor:
    """Angles ``(frames*H*W, head_dim/2)`` of a 3-D RoPE (frame, row, column), float64; the frame
    axis starts at ``frame_offset`` (the chunk's global frame index)."""
    h, w = frame_shape
    half = head_dim // 2
    parts = (half - 2 * (half // 3), half // 3, half // 3)  # channel pairs for (frame, row, column)
    t = torch.arange(frame_offset, frame_offset + frames, device=device, dtype=torch.float64)
    y = torch.arange(h, device=device, dtype=torch.float64)
    x = torch.arange(w, device=device, dtype=torch.float64)
    grids = torch.meshgrid(t, y, x, indexing="ij")
    angles = []
    for pos, n in zip(grids, parts, strict=True):
        freqs = 10000.0 ** (-torch.arange(n, device=device, dtype=torch.float64) / max(n, 1))
        angles.append(pos.reshape(-1, 1) * freqs)
    return torch.cat(angles, dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2i, 2i+1)`` of ``x (B, S, nh, d)`` by ``angles (S, d/2)``."""
    cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]
    pairs = x.double().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def qkv_of(self, x, angles):
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, self.heads, -1)).unbind(2)
        return apply_rope(q, angles), apply_rope(k, angles), v

    def finish(self, x, attn):
        x = x + self.out(attn.flatten(2))
        return x + self.mlp(self.norm2(x))


class TinyCausalDiT(nn.Module):
    """Per-token layers around self-attention; the only token mixing is the attention."""

    def __init__(self, dim=32, heads=2, layers=2, frame_shape=(4, 6), tiling=None):
        super().__init__()
        self.frame_shape = tuple(frame_shape)
        self.heads, self.head_dim = heads, dim // heads
        self.tiling = dict(tiling or {})
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))

    def forward_block_causal(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """The whole sequence ``(B, frames*H*W, dim)`` with block-causal Monarch attention."""
        frames = x.shape[1] // math.prod(self.frame_shape)
        angles = rope_angles(frames, self.frame_shape, self.head_dim, 0, x.device)
        for block in self.blocks:
            q, k, v = block.qkv_of(x, angles)
            attn = monarch_attention(q, k, v, self.frame_shape, causal_block_frames=chunk, **self.tiling)
            x = block.finish(x, attn)
        return x

    def new_caches(self, batch: int, max_frames: int, dtype, device, **window) -> list[MonarchKVCache]:
        return [
            MonarchKVCache(
                batch,
                self.heads,
                self.head_dim,
                self.frame_shape,
                max_frames,
                dtype=dtype,
                device=device,
                **self.tiling,
                **window,
            )  # fmt: skip
            for _ in self.blocks
        ]

    def forward_chunk(self, x: torch.Tensor, caches: list[MonarchKVCache], start_frame: int) -> torch.Tensor:
        """One chunk ``(B, n*H*W, dim)`` at global frame ``start_frame``: each layer writes the chunk's
        K/V into its cache (appending, or rewriting the chunk written last) and attends to the cache."""
        frames = x.shape[1] // math.prod(self.frame_shape)
        angles = rope_angles(frames, self.frame_shape, self.head_dim, start_frame, x.device)
        for block, cache in zip(self.blocks, caches, strict=True):
            q, k, v = block.qkv_of(x, angles)
            x = block.finish(x, cache.update_and_attend(q, k, v, start_frame))
        return x


def autoregressive(model: TinyCausalDiT, x: torch.Tensor, chunk: int, denoise_steps: int = 2, seed: int = 0):
    """Chunk-by-chunk run with per-layer caches; returns the clean (context) passes, concatenated."""
    hw = math.prod(model.frame_shape)
    frames = x.shape[1] // hw
    caches = model.new_caches(x.shape[0], frames, x.dtype, x.device)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    outs = []
    for start in range(0, frames, chunk):
        clean = x[:, start * hw : (start + chunk) * hw]
        for _ in range(denoise_steps):  # noisy passes: each rewrites this chunk's K/V
            noisy = clean + torch.randn(clean.shape, generator=gen, device=x.device, dtype=x.dtype)
            model.forward_chunk(noisy, caches, start)
        outs.append(model.forward_chunk(clean, caches, start))  # the context pass
        assert all(c.next_frame == start + chunk for c in caches)
    return torch.cat(outs, dim=1)


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--chunk", type=int, default=2)
    p.add_argument("--frame-shape", type=int, nargs=2, default=(4, 6))
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--f-tied", type=int, default=1)
    p.add_argument("--h-reduce", type=int, default=2)
    p.add_argument("--w-reduce", type=int, default=2)
    p.add_argument("--denoise-steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp64", choices=("fp64", "fp32", "bf16", "fp16"))
    args = p.parse_args(argv)
    dtype = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    tiling = {"f_tied": args.f_tied, "h_reduce": args.h_reduce, "w_reduce": args.w_reduce}
    model = TinyCausalDiT(args.heads * args.head_dim, args.heads, args.layers, args.frame_shape, tiling)
    model = model.to(args.device, dtype).eval()
    hw = math.prod(args.frame_shape)
    x = torch.randn(1, args.frames * hw, args.heads * args.head_dim, device=args.device, dtype=dtype)
    with torch.no_grad():
        full = model.forward_block_causal(x, args.chunk)
        ar = autoregressive(model, x, args.chunk, args.denoise_steps)
    err = ((ar.double() - full.double()).norm() / full.double().norm()).item()
    print(f"{args.frames} frames of {args.frame_shape[0]}x{args.frame_shape[1]} tokens in chunks of {args.chunk}, "
          f"{args.layers} layers, {args.dtype}: AR vs block-causal relative error {err:.3e}")  # fmt: skip
    return err


if __name__ == "__main__":
    main()
