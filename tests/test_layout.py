import pytest
import torch

from monarchrt_ops import Tiling, from_tile_sequence, from_tiles, to_tile_sequence, to_tiles

CASES = [Tiling(6, 10), Tiling(6, 10, 2, 3, 2), Tiling(7, 11, 1, 7, 1), Tiling(30, 52, 3, 2, 4)]


@pytest.mark.parametrize("t", CASES, ids=lambda t: f"{t.frame_h}x{t.frame_w}-{t.f_tied}{t.h_reduce}{t.w_reduce}")
def test_token_lands_where_the_spec_says(t):
    frames = 2 * t.f_tied
    seq = frames * t.tokens_per_frame
    # encode each token's natural index in its value
    x = torch.arange(seq, dtype=torch.float64).reshape(1, seq, 1, 1)
    tiles = to_tiles(x, t)
    hb, wb = t.frame_h // t.h_reduce, t.frame_w // t.w_reduce
    for frame in range(frames):
        for y in range(t.frame_h):
            for col in range(t.frame_w):
                tile = ((frame // t.f_tied) * t.h_reduce + y // hb) * t.w_reduce + col // wb
                row = (frame % t.f_tied) * hb + y % hb
                natural = (frame * t.frame_h + y) * t.frame_w + col
                assert tiles[0, tile, row, col % wb, 0, 0] == natural
    assert torch.equal(from_tiles(tiles, t), x)
    assert torch.equal(from_tile_sequence(to_tile_sequence(x, t), t), x)


def test_identity_tiling_is_a_view():
    x = torch.randn(2, 3 * 60, 2, 4)
    assert to_tiles(x, Tiling(6, 10)).data_ptr() == x.data_ptr()
    assert to_tiles(x, Tiling(6, 10))._base is x
