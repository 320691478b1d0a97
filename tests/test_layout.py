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


# Issue 18: the layout functions are public; a wrong shape or tiling raised a reshape RuntimeError
# (or ZeroDivisionError for a zero frame size) instead of naming what is wrong.
@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: Tiling(0, 10), ValueError, "Tiling: frame_h=0 must be >= 1"),
        (lambda: Tiling(6, 10, h_reduce=4), ValueError, "H=6 is not divisible by h_reduce=4"),
        (lambda: Tiling(6, 10, w_reduce=3), ValueError, "W=10 is not divisible by w_reduce=3"),
        (lambda: Tiling(6, 10, f_tied=1.0), TypeError, "Tiling: f_tied must be an int, got float"),
        (lambda: to_tiles(torch.randn(1, 100, 2, 8), Tiling(6, 10)), ValueError, "to_tiles: S=100 is not a multiple"),
        (lambda: to_tiles(torch.randn(1, 60, 2, 8), Tiling(6, 10, f_tied=2)), ValueError, "H*W*f_tied=120"),
        (lambda: to_tiles(torch.randn(60, 2, 8), Tiling(6, 10)), ValueError, r"x must be \(B, S, nh, d\)"),
        (lambda: from_tiles(torch.randn(1, 2, 6, 10, 2, 8), Tiling(6, 10, h_reduce=2)), ValueError, "b1=3, b2=10"),
        (lambda: from_tiles(torch.randn(1, 3, 3, 10, 2, 8), Tiling(6, 10, h_reduce=2)), ValueError, "T=3 tiles"),
        (lambda: to_tile_sequence(torch.randn(1, 90, 2, 8), Tiling(6, 10)), ValueError, "S=90"),
        (lambda: from_tile_sequence(torch.randn(1, 90, 2, 8), Tiling(6, 10)), ValueError, "S=90"),
    ],
    ids=["zero-H", "h_reduce", "w_reduce", "float-f_tied", "S", "S-f_tied", "rank", "tile-shape", "T", "seq", "seq2"],
)
def test_bad_layout_arguments_raise_naming_them(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
