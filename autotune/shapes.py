"""The one list of shapes, shared by every benchmark (bench/) and the tuner."""

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionShape:
    name: str
    q_frames: int
    kv_frames: int
    frame_shape: tuple[int, int]
    heads: int = 12
    head_dim: int = 128
    batch: int = 1
    causal_block_frames: int | None = None


# Self-Forcing / Wan 2.1 1.3B: 30x52 tokens a frame, 12 heads, d=128 (docs/design.md, Benchmark shapes and targets).
SELF_FORCING_BIDIR = AttentionShape("self-forcing-bidir-21", 21, 21, (30, 52))
SELF_FORCING_AR = AttentionShape("self-forcing-ar-3-vs-21", 3, 21, (30, 52))
SELF_FORCING_CAUSAL = AttentionShape("self-forcing-causal-21-blocks-3", 21, 21, (30, 52), causal_block_frames=3)
WAN_720P = AttentionShape("wan-720p-21", 21, 21, (45, 80))
SMALL = AttentionShape("small-4-frames-12x20", 4, 4, (12, 20), heads=4, head_dim=64)

ATTENTION_SHAPES = [SELF_FORCING_BIDIR, SELF_FORCING_AR, SELF_FORCING_CAUSAL, WAN_720P, SMALL]


def shape_by_name(name: str) -> AttentionShape:
    for s in ATTENTION_SHAPES:
        if s.name == name:
            return s
    raise ValueError(f"unknown shape {name!r}; known: {[s.name for s in ATTENTION_SHAPES]}")


def attention_inputs(shape: AttentionShape, dtype, device, seed: int = 0, heads: int | None = None):
    """Random natural-order ``q, k, v`` for a shape (never zeros: they time and test unlike data)."""
    import torch

    hw = shape.frame_shape[0] * shape.frame_shape[1]
    gen = torch.Generator(device=device).manual_seed(seed)
    nh = heads or shape.heads

    def mk(frames):
        return torch.randn(shape.batch, frames * hw, nh, shape.head_dim, device=device, generator=gen).to(dtype)

    return mk(shape.q_frames), mk(shape.kv_frames), mk(shape.kv_frames)


# Hadamard: bf16 inputs of 256 MB, n = 2^7 .. 2^15 plus the m * 2^k sizes (docs/design.md, targets).
HADAMARD_BYTES = 256 * 2**20
HADAMARD_SIZES = [2**k for k in range(7, 16)] + [12 * 256, 20 * 512, 28 * 1024, 40 * 128]

# Monarch matmul: (rows, w1 (k, q, p), w2 (l, s, r)); target (docs/design.md) n = 4096, 16K rows.
MONARCH_MATMUL_SHAPES = [
    ("square-4096-16k-rows", 16384, (64, 64, 64), (64, 64, 64)),
    ("square-1024-16k-rows", 16384, (32, 32, 32), (32, 32, 32)),
    ("rect-768-to-384-16k-rows", 16384, (8, 192, 96), (24, 16, 64)),
]
# MonarchLinear, structured kernel vs the dense product of its materialised weight (rows, in, out,
# nblocks): the square shapes above, fewer blocks (bigger, denser factors), and few rows (decode).
MONARCH_LINEAR_SHAPES = [
    ("linear-4096-nb64-16k-rows", 16384, 4096, 4096, 64),
    ("linear-1024-nb32-16k-rows", 16384, 1024, 1024, 32),
    ("linear-4096-nb16-16k-rows", 16384, 4096, 4096, 16),
    ("linear-4096-nb4-16k-rows", 16384, 4096, 4096, 4),
    ("linear-4096-nb64-256-rows", 256, 4096, 4096, 64),
    ("linear-1536-to-6144-nb16-16k-rows", 16384, 1536, 6144, 16),
]
