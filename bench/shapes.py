"""The one list of benchmark shapes, shared by every benchmark and the tuner."""

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


# Self-Forcing / Wan 2.1 1.3B: 30x52 tokens a frame, 12 heads, d=128 (SPEC section 5).
SELF_FORCING_BIDIR = AttentionShape("self-forcing-bidir-21", 21, 21, (30, 52))
SELF_FORCING_AR = AttentionShape("self-forcing-ar-3-vs-21", 3, 21, (30, 52))
SELF_FORCING_CAUSAL = AttentionShape("self-forcing-causal-21-blocks-3", 21, 21, (30, 52), causal_block_frames=3)
WAN_720P = AttentionShape("wan-720p-21", 21, 21, (45, 80))
SMALL = AttentionShape("small-4-frames-12x20", 4, 4, (12, 20), heads=4, head_dim=64)

ATTENTION_SHAPES = [SELF_FORCING_BIDIR, SELF_FORCING_AR, SELF_FORCING_CAUSAL, WAN_720P, SMALL]
