"""`python -m monarchrt_ops info|demo` on a machine without a GPU."""

import pytest
import torch

from monarchrt_ops.__main__ import main


def test_info_says_what_it_would_do(capsys):
    assert main(["info", "--device", "cpu", "--frames", "3", "--kv-frames", "21", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "architecture family: cpu" in out
    assert "CUDA extension: " in out
    assert '"q_tiles": 3, "kv_tiles": 21' in out
    assert "triton     cannot run: no CUDA device" in out or "triton     can run" in out
    assert "forward: would use 'reference'" in out


def test_info_rejects_bad_tiling(capsys):
    assert main(["info", "--h-reduce", "7"]) == 2
    assert "H=30 is not divisible by h_reduce=7" in capsys.readouterr().err


def test_demo_reports_error_against_dense(capsys):
    assert main(["demo", "--device", "cpu", "--frames", "2", "--frame-shape", "6", "10"]) == 0
    out = capsys.readouterr().out
    err = float(out.split("dense softmax attention: ")[1].split()[0])
    assert 0 < err < 1
    assert "FLOP ratio Monarch/dense: 35.00%" in out  # 1.5/6 + 1/10
    assert "with num_iters=2: relative error" in out and "with num_iters=3: relative error" in out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--frames", "0"], "--frames=0 must be >= 1"),  # was ZeroDivisionError
        (["--heads", "0"], "--heads=0 must be >= 1"),
        (["--head-dim", "0"], "--head-dim=0 must be >= 1"),
        (["--head-dim", "300"], "--head-dim=300 must be <= 256"),
        (["--frames", "-3"], "--frames=-3 must be >= 1"),  # was a negative GFLOP count
        (["--batch", "-1"], "--batch=-1 must be >= 1"),
        (["--kv-frames", "0"], "--kv-frames=0 must be >= 1"),
        (["--frames", "21", "--f-tied", "4"], "--frames=21 is not a multiple of --f-tied=4"),  # was rounded to 20
        (["--frames", "6", "--f-tied", "3", "--kv-frames", "4"], "--kv-frames=4 is not a multiple of --f-tied=3"),
        (["--causal-block-frames", "3", "--kv-frames", "6"], "--causal-block-frames needs --kv-frames == --frames"),
        (["--causal-block-frames", "-1"], "--causal-block-frames=-1 must be >= 0"),
        (["--num-iters", "99"], "--num-iters=99 must be <= 16"),
        (["--frame-shape", "0", "4"], "--frame-shape H=0 must be >= 1"),
        (["--device", "foo"], "--device='foo' is not a device name"),
    ],
)
@pytest.mark.parametrize("command", ["info", "demo"])
def test_bad_problem_flags_are_one_line_errors_naming_the_flag(command, flags, message, capsys):
    assert main([command, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(capsys):
    assert main(["info", "--device", "cuda", "--dtype", "fp32"]) == 2  # was an AssertionError traceback
    assert "--device='cuda': CUDA is not available here" in capsys.readouterr().err
