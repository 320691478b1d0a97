"""The shape key of one Monarch attention call, as backends and config tables see it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class AttentionProblem:
    batch: int
    heads: int
    head_dim: int
    b1: int  # rows of a tile
    b2: int  # columns of a tile
    q_tiles: int  # A
    kv_tiles: int  # F
    causal_block_tiles: int  # 0: no mask
    num_iters: int
    dtype: torch.dtype
    backward: bool = False
    # the softmax scale of the call, for the backends' limits on it (None: not known, as in a table
    # lookup or ``info``; supports() then takes any scale the public functions accept). Not a table
    # key: configs do not depend on it.
    sm_scale: float | None = None

    @classmethod
    def from_tiles(
        cls, q: torch.Tensor, k: torch.Tensor, causal_block_tiles: int, num_iters: int, backward=False, sm_scale=None
    ):
        """From tile-order tensors ``q [B, A, b1, b2, nh, d]`` and ``k [B, F, b1, b2, nh, d]``."""
        bsz, a, b1, b2, nh, d = q.shape
        return cls(bsz, nh, d, b1, b2, a, k.shape[1], causal_block_tiles, num_iters, q.dtype, backward, sm_scale)

    def key(self) -> dict:
        """JSON-able description, used by config tables and the ``info`` command (without sm_scale)."""
        out = asdict(self)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        del out["sm_scale"]
        return out

    def visible_tile_pairs(self) -> int:
        """(query tile, key tile) pairs that stage L reads: all of them, or the block-causal ones."""
        if not self.causal_block_tiles:
            return self.q_tiles * self.kv_tiles
        c = self.causal_block_tiles
        return sum(min(self.kv_tiles, (a // c + 1) * c) for a in range(self.q_tiles))

    def forward_flops(self) -> float:
        """Useful forward FLOPs (docs/math.md, Cost), unpadded, over the visible tile pairs.

        Final pass: b1 * b2 * d * (6 * b2 + 4 * b1) per visible (query tile, key tile) pair and head.
        Each earlier iteration adds b1 * b2 * d * (4 * b2 + 4 * b1): S_R and aL, then S_L and the aR
        update (no Y, no Z).
        """
        final = 6 * self.b2 + 4 * self.b1
        extra = (self.num_iters - 1) * (4 * self.b2 + 4 * self.b1)
        per_pair = self.b1 * self.b2 * self.head_dim * (final + extra)
        return float(self.batch * self.heads * self.visible_tile_pairs() * per_pair)

    def dense_forward_flops(self) -> float:
        """FLOPs of dense softmax attention on the same tokens: 4 * n_q * n_k * d per head."""
        n_q = self.q_tiles * self.b1 * self.b2
        n_k = self.kv_tiles * self.b1 * self.b2
        return float(self.batch * self.heads * 4 * n_q * n_k * self.head_dim)


@dataclass(frozen=True)
class HadamardProblem:
    rows: int
    n: int
    m: int  # 1 or the special order of H_m in n = m * 2^k
    dtype: torch.dtype
    fp32_intermediate: bool = False

    def key(self) -> dict:
        out = asdict(self)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        return out


@dataclass(frozen=True)
class MonarchMatmulProblem:
    rows: int
    w1_shape: tuple[int, int, int]  # (k, q, p)
    w2_shape: tuple[int, int, int]  # (l, s, r)
    dtype: torch.dtype
    backward: bool = False  # the gradients (dx, dw1, dw2) rather than the product

    def key(self) -> dict:
        out = asdict(self)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        out["w1_shape"], out["w2_shape"] = list(self.w1_shape), list(self.w2_shape)  # as JSON reads them back
        if not self.backward:  # the forward's key as the tables have always written it
            del out["backward"]
        return out
