"""`python -m monarchrt_ops info|demo` on a machine without a GPU."""

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
