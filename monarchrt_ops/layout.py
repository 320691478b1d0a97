"""Natural video token order <-> Monarch tile order.

Natural order: ``(B, S, nh, d)`` with ``S = frames * H * W``, frame-major, then row, then column.
Tile order: ``(B, T, b1, b2, nh, d)`` with ``T = (frames / f_tied) * h_reduce * w_reduce`` tiles of
``b1 = f_tied * H / h_reduce`` rows and ``b2 = W / w_reduce`` columns (docs/math.md, Inputs and tiles).

A token at (frame t, row y, column x) lands in tile ``((t // f_tied) * h_reduce + y // (H / h_reduce))
* w_reduce + x // (W / w_reduce)``, tile row ``(t % f_tied) * (H / h_reduce) + y % (H / h_reduce)`` and
tile column ``x % (W / w_reduce)``. With f_tied = h_reduce = w_reduce = 1 a tile is one frame and the
conversion is a free view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tiling:
    """Frame geometry and tiling factors; all the layout functions need."""

    frame_h: int
    frame_w: int
    f_tied: int = 1
    h_reduce: int = 1
    w_reduce: int = 1

    def __post_init__(self):
        for name in ("frame_h", "frame_w", "f_tied", "h_reduce", "w_reduce"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Tiling: {name} must be an int, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"Tiling: {name}={value} must be >= 1")
        if self.frame_h % self.h_reduce:
            raise ValueError(f"H={self.frame_h} is not divisible by h_reduce={self.h_reduce}")
        if self.frame_w % self.w_reduce:
            raise ValueError(f"W={self.frame_w} is not divisible by w_reduce={self.w_reduce}")

    @property
    def b1(self) -> int:
        """Rows of one tile."""
        return self.f_tied * self.frame_h // self.h_reduce

    @property
    def b2(self) -> int:
        """Columns of one tile."""
        return self.frame_w // self.w_reduce

    @property
    def tokens_per_frame(self) -> int:
        return self.frame_h * self.frame_w

    @property
    def tiles_per_group(self) -> int:
        """Tiles made from one group of f_tied frames."""
        return self.h_reduce * self.w_reduce

    def num_tiles(self, seq_len: int) -> int:
        return seq_len // self.tokens_per_frame // self.f_tied * self.tiles_per_group

    def is_identity(self) -> bool:
        return self.f_tied == 1 and self.h_reduce == 1 and self.w_reduce == 1


def _check_sequence(name: str, x: torch.Tensor, tiling: Tiling) -> None:
    """``x (B, S, nh, d)`` with S a whole number of f_tied-frame groups (a symbolic S, traced with
    dynamic shapes, is left to the eager call)."""
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be (B, S, nh, d), got shape {tuple(x.shape)}")
    group = tiling.tokens_per_frame * tiling.f_tied
    seq = x.shape[1]
    if not isinstance(seq, torch.SymInt) and seq % group:
        raise ValueError(
            f"{name}: S={seq} is not a multiple of H*W*f_tied={group} "
            f"({tiling.frame_h}x{tiling.frame_w}, f_tied={tiling.f_tied})"
        )


def tile_shape(shape, tiling: Tiling) -> tuple:
    """The tile-order shape ``(B, T, b1, b2, nh, d)`` of a natural-order (or tile-sequence) shape
    ``(B, S, nh, d)`` whose S is a whole number of f_tied-frame groups (unchecked: for shapes checked
    before). With the identity tiling, ``to_tiles(x) == x.reshape(tile_shape(x.shape))``."""
    bsz, seq, nh, d = shape
    return bsz, tiling.num_tiles(seq), tiling.b1, tiling.b2, nh, d


def to_tiles(x: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """``(B, S, nh, d)`` natural order -> ``(B, T, b1, b2, nh, d)`` tile order.

    A view when the tiling is the identity and ``x`` is contiguous in S; a copy otherwise.

    Example:
        >>> t = Tiling(frame_h=6, frame_w=10, h_reduce=2)
        >>> to_tiles(torch.randn(1, 2 * 60, 3, 8), t).shape
        torch.Size([1, 4, 3, 10, 3, 8])
    """
    _check_sequence("to_tiles", x, tiling)
    bsz, seq, nh, d = x.shape
    t = tiling
    if t.is_identity():  # a tile is a frame: one reshape (the permute below would be the identity)
        return x.reshape(bsz, seq // t.tokens_per_frame, t.frame_h, t.frame_w, nh, d)
    groups = seq // (t.tokens_per_frame * t.f_tied)
    x = x.reshape(bsz, groups, t.f_tied, t.h_reduce, t.frame_h // t.h_reduce, t.w_reduce, t.b2, nh, d)
    # [B, g, tau, rho, H/rho, omega, W/omega, nh, d] -> [B, g, rho, omega, tau, H/rho, W/omega, nh, d]
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7, 8)
    return x.reshape(bsz, groups * t.tiles_per_group, t.b1, t.b2, nh, d)


def from_tiles(x: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """``(B, T, b1, b2, nh, d)`` tile order -> ``(B, S, nh, d)`` natural order (inverse of to_tiles)."""
    if x.dim() != 6 or tuple(x.shape[2:4]) != (tiling.b1, tiling.b2):
        raise ValueError(
            f"from_tiles: x must be (B, T, b1={tiling.b1}, b2={tiling.b2}, nh, d) for {tiling}, "
            f"got shape {tuple(x.shape)}"
        )
    tiles = x.shape[1]
    if not isinstance(tiles, torch.SymInt) and tiles % tiling.tiles_per_group:
        raise ValueError(f"from_tiles: T={tiles} tiles is not a multiple of h_reduce*w_reduce={tiling.tiles_per_group}")
    bsz, tiles, _, _, nh, d = x.shape
    t = tiling
    if t.is_identity():
        return x.reshape(bsz, tiles * t.tokens_per_frame, nh, d)
    groups = tiles // t.tiles_per_group
    x = x.reshape(bsz, groups, t.h_reduce, t.w_reduce, t.f_tied, t.frame_h // t.h_reduce, t.b2, nh, d)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7, 8)
    return x.reshape(bsz, groups * t.f_tied * t.tokens_per_frame, nh, d)


def causal_block_tiles(tiling: Tiling, causal_block_frames: int) -> int:
    """Causal block in tiles: ``c * h_reduce * w_reduce / f_tied`` (0 when not causal)."""
    return causal_block_frames * tiling.tiles_per_group // tiling.f_tied


def tile_sequence_as_tiles(x: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """A tile-order sequence ``(B, S, nh, d)`` (a KV cache slice as stored) viewed as tiles
    ``(B, T, b1, b2, nh, d)``: a view when the slice is contiguous (a prefix of a contiguous cache)."""
    _check_sequence("tile_sequence_as_tiles", x, tiling)
    return x.reshape(tile_shape(x.shape, tiling))


def to_tile_sequence(x: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """``(B, S, nh, d)`` natural order -> ``(B, S, nh, d)`` with tokens in tile order.

    This is how a KV cache stores keys and values.
    """
    _check_sequence("to_tile_sequence", x, tiling)
    bsz, seq, nh, d = x.shape
    return to_tiles(x, tiling).reshape(bsz, seq, nh, d)


def from_tile_sequence(x: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """Inverse of :func:`to_tile_sequence`."""
    return from_tiles(tile_sequence_as_tiles(x, tiling), tiling)
