"""The examples run at tiny sizes; the Self-Forcing loop equals the block-causal forward."""

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "tiling, chunk, frames",
    [({"h_reduce": 2, "w_reduce": 2}, 2, 6), ({"f_tied": 2, "w_reduce": 3}, 4, 8), ({}, 1, 3)],
)
def test_autoregressive_loop_equals_block_causal_forward(tiling, chunk, frames):
    ar = load("self_forcing_ar")
    torch.manual_seed(0)
    model = ar.TinyCausalDiT(32, 2, 2, (4, 6), tiling).double().eval()
    x = torch.randn(1, frames * 24, 32, dtype=torch.float64)
    with torch.no_grad():
        full = model.forward_block_causal(x, chunk)
        got = ar.autoregressive(model, x, chunk, denoise_steps=2)
        torch.testing.assert_close(got, full, rtol=0, atol=1e-12)
        # Clean passes only (no denoising passes) give the same output:
        caches = model.new_caches(1, frames, x.dtype, x.device)
        clean_only = torch.cat(
            [model.forward_chunk(x[:, s * 24 : (s + chunk) * 24], caches, s) for s in range(0, frames, chunk)], 1
        )
        assert torch.equal(clean_only, got)  # the noisy passes were rewritten away ...
        caches = model.new_caches(1, frames, x.dtype, x.device)
        zero = [ar.rope_angles(chunk, (4, 6), 16, 0, "cpu")]
        orig = ar.rope_angles
        ar.rope_angles = lambda n, shape, d, offset, device: zero[0]
        try:
            no_offset = torch.cat(
                [model.forward_chunk(x[:, s * 24 : (s + chunk) * 24], caches, s) for s in range(0, frames, chunk)], 1
            )
        finally:
            ar.rope_angles = orig
        if frames > chunk:
            assert (no_offset - full).abs().max() > 1e-3  # ... and the offsets matter


def test_self_forcing_example_main_runs():
    assert load("self_forcing_ar").main(["--frames", "4", "--chunk", "2"]) < 1e-12


def test_wan_diffusers_example_runs_tiny():
    pytest.importorskip("diffusers")
    example = load("wan_diffusers")
    assert example.main(["--tiny", "--w-reduce-all"]) < 1e-12  # b2 = 1: Monarch attention is dense attention
    assert 0 < example.main(["--tiny", "--h-reduce", "2", "--w-reduce", "2"]) < 1


def test_wan_model_bench_quick_runs_every_case():
    pytest.importorskip("diffusers")
    from monarchrt_ops.bench import bench_wan_model

    args = ["--quick", "--device", "cpu", "--compile-backend", "aot_eager", "--runs", "1", "--warmup", "0"]
    result = bench_wan_model.main(args)
    cases = result["cases"]
    assert set(cases) == {f"{what}/{attn}{kind}" for what, kinds in (("forward", ("/eager", "/compiled")),
                                                                    ("ar", ("", "/compiled")))
                          for attn in ("dense", "monarch") for kind in kinds}  # fmt: skip
    assert all("median_ms" in c for c in cases.values()), cases
    assert {"speedup_forward_eager", "speedup_forward_compiled", "speedup_ar", "speedup_ar_compiled"} <= set(result)
