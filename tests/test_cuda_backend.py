"""The CUDA extension: built wherever nvcc is (CI compiles sm_90a, sm_100a, sm_120a), clear reasons
when it is missing or built for other architectures, selection and limits. The kernels' numbers are
tested with every other backend's, one file per op: test_attention.py, test_hadamard.py and
test_monarch_matmul.py."""

import os
import shutil

import pytest
import torch
from conftest import FakeExtension

import monarchrt_ops as m
from monarchrt_ops.arch import Arch
from monarchrt_ops.backends import cuda
from monarchrt_ops.problem import HadamardProblem

GPU = torch.cuda.is_available()
H100 = Arch("sm90", (9, 0), "NVIDIA H100 80GB HBM3", 132, 232448)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine: nothing is built")
def test_extension_is_built_for_the_configured_architectures():
    module, reason = cuda.extension()
    assert module is not None, reason
    want = os.environ.get("MONARCHRT_CUDA_ARCHS", "90a;100a;120a").replace(";", ",").split(",")
    assert module.compiled_archs() == want


def test_missing_extension_gives_a_clear_reason(monkeypatch):
    monkeypatch.setattr(cuda, "extension", lambda: (None, "the CUDA extension monarchrt_ops._C is not built (x)"))
    problem = HadamardProblem(4, 1024, 1, torch.bfloat16)
    assert "is not built" in cuda.CudaHadamard().supports(problem, H100)


def test_other_architecture_gives_a_clear_reason(monkeypatch):
    class Fake:
        @staticmethod
        def compiled_archs():
            return ["90a", "100a"]

    monkeypatch.setattr(cuda, "extension", lambda: (Fake, None))
    ada = Arch("sm89", (8, 9), "NVIDIA L40S")
    reason = cuda.CudaHadamard().supports(HadamardProblem(4, 1024, 1, torch.float16), ada)
    assert reason == "the extension was built for sm_90a, sm_100a; this device is sm_89"
    fp32_mid = HadamardProblem(4, 1024, 1, torch.float16, fp32_intermediate=True)
    assert "no fp32_intermediate" in cuda.CudaHadamard().supports(fp32_mid, H100)


def test_explicit_cuda_backend_on_cpu_raises():
    with pytest.raises(ValueError, match="backend='cuda' cannot run hadamard here"):
        m.hadamard(torch.randn(2, 256, dtype=torch.float16), backend="cuda")


def test_hadamard_supports_every_size_whose_rows_fit_shared_memory(monkeypatch):
    monkeypatch.setattr(cuda, "extension", lambda: (FakeExtension, None))
    for n, mm in [(2, 1), (128, 1), (65536, 1), (12, 12), (20 * 4096, 20), (28 * 4096, 28)]:
        assert cuda.CudaHadamard().supports(HadamardProblem(4, n, mm, torch.bfloat16), H100) is None
    rtx5090 = Arch("sm120", (12, 0), "NVIDIA GeForce RTX 5090", 170, 101376)
    reason = cuda.CudaHadamard().supports(HadamardProblem(4, 65536, 1, torch.bfloat16), rtx5090)
    assert reason == "n=65536: needs 131072 B of shared memory per block; the device has 101376"
    assert "not fp16/bf16" in cuda.CudaHadamard().supports(HadamardProblem(4, 256, 1, torch.float32), H100)


def test_hadamard_automatic_selection_follows_the_measurements(monkeypatch):
    """The measured choices of the shipped sm_90 default table (tuned_configs/default-sm90.json)."""
    from monarchrt_ops import registry

    monkeypatch.setattr(cuda, "extension", lambda: (FakeExtension, None))

    def chosen(problem, arch):
        sel = registry.select("hadamard", problem, arch)
        return sel.backend.name, dict(sel.rejected).get("cuda", "")

    assert chosen(HadamardProblem(4, 4096, 1, torch.bfloat16), H100) == ("cuda", "")
    assert chosen(HadamardProblem(4, 28 * 1024, 28, torch.bfloat16), H100) == ("cuda", "")
    name, why = chosen(HadamardProblem(4, 12 * 256, 12, torch.bfloat16), H100)
    assert name == "triton" and "measured slower than Triton" in why and "(default-sm90.json)" in why
    b200 = Arch("sm100", (10, 0), "NVIDIA B200", 148, 232448)
    name, why = chosen(HadamardProblem(4, 4096, 1, torch.bfloat16), b200)
    assert name == "triton" and "not measured against Triton on sm100" in why


@pytest.mark.skipif(not GPU, reason="GPU tier")
def test_cuda_hadamard_is_chosen_automatically_on_sm90():
    from monarchrt_ops.arch import arch_of
    from monarchrt_ops.registry import select

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("automatic selection of the CUDA Hadamard is measured on sm_90 only")
    sel = select("hadamard", HadamardProblem(64, 4096, 1, torch.bfloat16), arch_of("cuda"), None)
    assert sel.backend.name == "cuda"


@pytest.mark.skipif(cuda.extension()[0] is None, reason="the extension is not built on this machine")
@pytest.mark.parametrize(
    "args, msg",
    [
        ((0, 0, 1, 100, 1, 0, 0, 1.0, 1, 0), "n / m = 100 must be a power of two"),
        ((0, 0, 1, 2**17, 1, 0, 0, 1.0, 1, 0), "must be a power of two <= 65536"),
        ((0, 0, 1, 24, 24, 0, 0, 1.0, 1, 0), "m must be 1, 12, 20 or 28"),
        ((0, 0, 1, 24, 12, 0, 0, 1.0, 1, 0), "m=12 needs H_m zero-padded to 16x16"),
        ((8, 0, 1, 256, 1, 0, 0, 1.0, 1, 0), "16-byte aligned"),
        ((0, 0, 1, 256, 1, 0, 0, 1.0, 7, 0), "dtype code 7 is not fp16 \\(0\\) or bf16 \\(1\\)"),
    ],
    ids=["not-pow2", "too-large", "bad-m", "no-table", "misaligned", "dtype"],
)
def test_launcher_rejects_bad_arguments_before_touching_the_device(args, msg):
    module, _ = cuda.extension()
    with pytest.raises(ValueError, match=msg):
        module.hadamard(*args)


# --- fused attention forward (csrc/attention) ----------------------------------------------------
def _attention_problem(**kw):
    from monarchrt_ops.problem import AttentionProblem

    base = dict(batch=1, heads=12, head_dim=128, b1=30, b2=52, q_tiles=21, kv_tiles=21, causal_block_tiles=0,
                num_iters=1, dtype=torch.bfloat16)  # fmt: skip
    return AttentionProblem(**{**base, **kw})


@pytest.mark.parametrize(
    "change, arch, reason",
    [
        ({}, H100, None),
        ({"dtype": torch.float16, "causal_block_tiles": 3, "kv_tiles": 24}, H100, None),
        ({"backward": True}, H100, "forward only"),  # the registry chooses the backward (Triton's)
        ({"backward": True, "dtype": torch.float32}, H100, "dtype torch.float32 is not fp16/bf16"),
        ({"num_iters": 2}, H100, "num_iters=2: the fused kernel takes num_iters <= 1"),
        ({"dtype": torch.float32}, H100, "dtype torch.float32 is not fp16/bf16"),
        ({}, Arch("sm80", (8, 0), "NVIDIA A100", 108, 166912), "the extension was built for sm_90a, sm_100a, sm_120a"),
        ({}, Arch("sm120", (12, 0), "NVIDIA GeForce RTX 5090", 170, 101376), "needs 230944 B of shared memory"),
    ],
    ids=[
        "sf-bf16",
        "causal-fp16",
        "backward",
        "backward-fp32",
        "iters2",
        "fp32",
        "sm80",
        "rtx5090-smem",
    ],  # fmt: skip
)
def test_cuda_attention_supports(monkeypatch, change, arch, reason):
    monkeypatch.setattr(cuda, "extension", lambda: (FakeExtension, None))
    got = cuda.CudaAttention().supports(_attention_problem(**change), arch)
    assert got == reason if reason is None else reason in got


B200 = Arch("sm100", (10, 0), "NVIDIA B200", 148, 232448)
BUILT = cuda.extension()[0] is not None


def test_supports_asks_the_kernel_with_the_calls_sm_scale(monkeypatch):
    seen = []

    class Recording(FakeExtension):
        @staticmethod
        def monarch_attention_fwd_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, sm_scale, dtype):
            seen.append((batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, sm_scale, dtype))
            return "sm_scale=1e9 (out of range)" if sm_scale > 1e8 else ""

    monkeypatch.setattr(cuda, "extension", lambda: (Recording, None))
    assert cuda.CudaAttention().supports(_attention_problem(sm_scale=0.125, causal_block_tiles=3), H100) is None
    assert seen == [(1, 12, 21, 21, 30, 52, 128, 3, 0.125, 1)]
    assert cuda.CudaAttention().supports(_attention_problem(sm_scale=1e9), H100) == "sm_scale=1e9 (out of range)"


@pytest.mark.skipif(not BUILT, reason="the extension is not built on this machine")
@pytest.mark.parametrize(
    "change, reason, chosen",
    [
        ({"sm_scale": 1e9}, "the fused kernel takes 1e-20 <= sm_scale <= 1e8", "triton"),
        ({"sm_scale": 1e-30}, "the fused kernel takes 1e-20 <= sm_scale <= 1e8", "triton"),
        ({"head_dim": 64}, "head_dim=64 (the fused kernel takes 128)", "triton"),
        ({"b1": 45, "b2": 80}, "tile 45x80 (the fused kernel takes b1 <= 32, b2 <= 64)", "triton"),
        ({"heads": 70000}, "grid too large", "reference"),  # beyond Triton's grid too
        ({"q_tiles": 9000, "kv_tiles": 9000}, "grid too large", "triton"),
    ],
    ids=["huge-scale", "tiny-scale", "d64", "wan-tile", "heads", "q-tiles"],
)
def test_automatic_selection_never_picks_a_cuda_kernel_that_would_raise(monkeypatch, change, reason, chosen):
    """With the measured pass-over switched off, automatic selection would take the fused kernel wherever
    the kernel's own limits (csrc/kernel_limits.h, through _C.monarch_attention_fwd_reason) allow it."""
    from monarchrt_ops import registry

    monkeypatch.setattr(cuda.CudaAttention, "measured_only", False)
    assert registry.select("attention", _attention_problem(sm_scale=0.088), H100).backend.name == "cuda"
    sel = registry.select("attention", _attention_problem(**change), H100)
    assert sel.backend.name == chosen and reason in dict(sel.rejected)["cuda"]
    with pytest.raises(ValueError, match="backend='cuda' cannot run attention here"):
        registry.select("attention", _attention_problem(**change), H100, "cuda")


@pytest.mark.skipif(not BUILT, reason="the extension is not built on this machine")
def test_extension_reports_its_limits_and_the_checks_use_them():
    from monarchrt_ops.problem import MonarchMatmulProblem

    limits = cuda.cuda_limits()
    att = limits["attention"]
    assert (att["head_dim"], att["max_b1"], att["max_b2"], att["max_num_iters"]) == (128, 32, 64, 1)
    assert att["sm_scale_min"] == pytest.approx(1e-20) and att["sm_scale_max"] == 1e8
    assert att["smem_bytes"] > 200 * 1024 and att["max_q_tiles"] == 65535 // att["cluster"]
    assert limits["hadamard"]["orders"] == (1, 12, 20, 28) and limits["hadamard"]["max_pow2"] == 65536
    assert (limits["monarch_matmul"]["multiple"], limits["monarch_matmul"]["l_multiple"]) == (16, 8)
    module, _ = cuda.extension()
    assert module.hadamard_reason(4, 1024, 1, 1) == ""
    assert "m must be 1, 12, 20 or 28" in module.hadamard_reason(4, 24, 24, 1)
    tiny = MonarchMatmulProblem(64, (4, 4, 4), (4, 4, 4), torch.bfloat16)
    assert "multiples of 16 and l a multiple of 8" in cuda.CudaMonarchMatmul().supports(tiny, H100)
    square = MonarchMatmulProblem(64, (64, 64, 64), (64, 64, 64), torch.bfloat16)
    assert cuda.CudaMonarchMatmul().supports(square, H100) is None


@pytest.mark.parametrize(
    "change, arch, chosen, why_not_cuda",
    [
        ({}, H100, "triton", "measured slower than Triton at 30x52 and below (batched stage R)"),
        ({"b1": 24, "b2": 40}, H100, "triton", "measured slower than Triton"),
        ({"b1": 16, "b2": 32}, H100, "triton", "measured slower than Triton"),
        ({}, B200, "triton", "not measured against Triton on sm100"),
    ],
    ids=["h100-30x52", "h100-24x40", "h100-16x32", "b200-unmeasured"],
)
def test_automatic_selection_passes_the_fused_forward_over_where_triton_measured_faster(
    monkeypatch, change, arch, chosen, why_not_cuda
):
    from monarchrt_ops import registry

    monkeypatch.setattr(cuda, "extension", lambda: (FakeExtension, None))
    problem = _attention_problem(**change)
    sel = registry.select("attention", problem, arch)
    assert sel.backend.name == chosen
    rejected = dict(sel.rejected)
    assert (why_not_cuda is None and "cuda" not in rejected) or why_not_cuda in rejected["cuda"]
    # an explicit backend="cuda" runs it everywhere it is supported
    assert registry.select("attention", problem, arch, "cuda").backend.name == "cuda"


@pytest.mark.skipif(cuda.extension()[0] is None, reason="the extension is not built on this machine")
@pytest.mark.parametrize(
    "change, msg",
    [
        ({"head_dim": 64}, "head_dim=64 \\(the fused kernel takes 128\\)"),
        ({"b1": 33}, "tile 33x52 \\(the fused kernel takes b1 <= 32, b2 <= 64\\)"),
        ({"q_strides": [8, 8, 8, 8, 4]}, "strides must be multiples of 8 elements"),
        ({"q": 8}, "16-byte aligned"),
        ({"dtype": 2}, "dtype code 2 is not fp16 \\(0\\) or bf16 \\(1\\)"),
        ({"sm_scale": 1e9}, "the fused kernel takes 1e-20 <= sm_scale <= 1e8"),
        ({"sm_scale": float("nan")}, "the fused kernel takes 1e-20 <= sm_scale <= 1e8"),
    ],
    ids=["d64", "b1", "strides", "misaligned", "dtype", "huge-scale", "nan-scale"],
)
def test_attention_launcher_rejects_bad_arguments_before_touching_the_device(change, msg):
    module, _ = cuda.extension()
    args = dict(q=0, k=0, v=0, z=0, lse=0, q_strides=[8] * 5, k_strides=[8] * 5, v_strides=[8] * 5, batch=1, nh=1,
                n_q_tiles=1, n_kv_tiles=1, b1=30, b2=52, head_dim=128, causal_block_tiles=0, sm_scale=1.0, dtype=1,
                stream=0)  # fmt: skip
    with pytest.raises(ValueError, match=msg):
        module.monarch_attention_fwd(**{**args, **change})


# --- Monarch matmul (csrc/monarch_matmul) ----------------------------------------------------------
def _matmul_problem(w1_shape=(64, 64, 64), w2_shape=(64, 64, 64), dtype=torch.bfloat16, rows=16384):
    from monarchrt_ops.problem import MonarchMatmulProblem

    return MonarchMatmulProblem(rows, w1_shape, w2_shape, dtype)


@pytest.mark.parametrize(
    "change, arch, reason",
    [
        ({}, H100, None),
        ({"w1_shape": (8, 192, 96), "w2_shape": (24, 16, 64), "dtype": torch.float16}, H100, None),
        ({}, B200, None),
        ({"dtype": torch.float32}, H100, "dtype torch.float32 is not fp16/bf16"),
        ({}, Arch("sm80", (8, 0), "NVIDIA A100", 108, 166912), "the extension was built for sm_90a, sm_100a, sm_120a"),
    ],
    ids=["square-4096", "rect-fp16", "b200", "fp32", "sm80"],
)
def test_cuda_monarch_matmul_supports(monkeypatch, change, arch, reason):
    monkeypatch.setattr(cuda, "extension", lambda: (FakeExtension, None))
    got = cuda.CudaMonarchMatmul().supports(_matmul_problem(**change), arch)
    assert got == reason if reason is None else reason in got


@pytest.mark.parametrize(
    "arch, chosen, why_not_cuda",
    [(H100, "cuda", None), (B200, "triton", "not measured against Triton on sm100")],
    ids=["h100", "b200-unmeasured"],
)
def test_automatic_selection_takes_the_cuda_matmul_where_it_was_measured_faster(
    monkeypatch, arch, chosen, why_not_cuda
):
    from monarchrt_ops import registry

    monkeypatch.setattr(cuda, "extension", lambda: (FakeExtension, None))
    sel = registry.select("monarch_matmul", _matmul_problem(), arch)
    assert sel.backend.name == chosen
    rejected = dict(sel.rejected)
    assert (why_not_cuda is None and "cuda" not in rejected) or why_not_cuda in rejected["cuda"]
    assert registry.select("monarch_matmul", _matmul_problem(), arch, "cuda").backend.name == "cuda"


@pytest.mark.skipif(cuda.extension()[0] is None, reason="the extension is not built on this machine")
@pytest.mark.parametrize(
    "change, msg",
    [
        ({"l": 32}, "l\\*r != k\\*q"),
        ({"p": 24}, "p, q, r, s multiples of 16 and l a multiple of 8"),
        ({"l": 4, "r": 1024}, "p, q, r, s multiples of 16 and l a multiple of 8"),
        ({"rows": -1}, "empty or negative sizes"),
        ({"workspace": 8}, "16-byte aligned"),
        ({"dtype": 5}, "dtype code 5 is not fp16 \\(0\\) or bf16 \\(1\\)"),
    ],
    ids=["l*r", "p24", "l4", "negative-rows", "misaligned", "dtype"],
)
def test_matmul_launcher_rejects_bad_arguments_before_touching_the_device(change, msg):
    module, _ = cuda.extension()
    args = dict(x=0, w1=0, w2=0, workspace=0, out=0, rows=64, k=64, q=64, p=64, l=64, s=64, r=64, dtype=1, stream=0)
    with pytest.raises(ValueError, match=msg):
        module.monarch_matmul(**{**args, **change})


@pytest.mark.skipif(cuda.extension()[0] is None, reason="the extension is not built on this machine")
@pytest.mark.parametrize(
    "change, msg",
    [
        ({"b2": 81}, "takes b2 <= 80"),
        ({"head_dim": 96}, "head_dim=96"),
        ({"dv": 0}, "dY with dV"),
        ({"dk": 0, "dk_out": 0}, r"dK \(or its output\) is required"),
        ({"dk": 0, "dk_out": 16, "accumulate": True}, "its fp32 partial to accumulate"),
        ({"dk_out": 16}, "not the output"),
        ({"a_r": 64}, "cR with aR"),
        ({"da_l": 8}, "16-byte aligned"),
        ({"dtype": 2}, "dtype code 2"),
    ],
    ids=[
        "b2",
        "head_dim",
        "dy-without-dv",
        "no-dk",
        "accumulate-without-dk",
        "dk-is-its-output",
        "ar-without-cr",
        "misaligned",
        "dtype",
    ],
)
def test_stage_r_bwd_launchers_reject_bad_arguments_before_touching_the_device(change, msg):
    module, _ = cuda.extension()
    strides = [21 * 30 * 52 * 2 * 128, 30 * 52 * 2 * 128, 52 * 2 * 128, 2 * 128, 128]
    args = dict(q=16, k=16, v=16, a_r=0, c_r=0, lse_r=16, da_l=16, dy=16, dc_l=16, delta_r=16, dk=16, dk_out=0, dv=16,
                q_strides=strides, k_strides=strides, v_strides=strides, batch=1, nh=2, n_q_tiles=21,
                n_kv_tiles=21, b1=30, b2=52, head_dim=128, causal_block_tiles=0, sm_scale=0.1, accumulate=False,
                dtype=1, stream=0)  # fmt: skip
    with pytest.raises(ValueError, match=msg):
        module.monarch_stage_r_bwd_kv(**{**args, **change})
    if {"dv", "dk", "dk_out", "a_r"} & set(change):  # arguments of the key-row kernel only
        return
    kv_only = ("a_r", "c_r", "dk", "dk_out", "dv", "accumulate")
    q_args = {key: val for key, val in args.items() if key not in kv_only}
    with pytest.raises(ValueError, match=msg):
        module.monarch_stage_r_bwd_q(**{**q_args, "dq": 16, "dq_out": 16, **change})
    with pytest.raises(ValueError, match="dQ and its output"):
        module.monarch_stage_r_bwd_q(**{**q_args, "dq": 16, "dq_out": 0})


@pytest.mark.skipif(cuda.extension()[0] is None, reason="the extension is not built on this machine")
@pytest.mark.parametrize(
    "change, msg",
    [
        ({"b1": 65}, "takes b1 <= 64"),
        ({"head_dim": 96}, "head_dim=96"),
        ({"n_kv_tiles": 0}, "no key tiles"),
        ({"dz_strides": [8, 8, 8, 8]}, "5 each"),
        ({"z_strides": [8, 8, 8, 12, 8]}, "multiples of 8"),
        ({"dz": 8}, "16-byte aligned"),
        ({"dq": 0}, "dQ are required"),
        ({"dlse": 4}, "8-byte aligned"),
        ({"dtype": 2}, "dtype code 2"),
    ],
    ids=[
        "b1",
        "head_dim",
        "no-key-tiles",
        "stride-count",
        "stride-multiple",
        "misaligned",
        "no-dq",
        "dlse",
        "dtype",
    ],  # fmt: skip
)
def test_stage_l_bwd_launcher_rejects_bad_arguments_before_touching_the_device(change, msg):
    module, _ = cuda.extension()
    strides = [21 * 30 * 52 * 2 * 128, 30 * 52 * 2 * 128, 52 * 2 * 128, 2 * 128, 128]
    args = dict(q=16, dz=16, z=16, lse=16, dlse=16, a_l=16, y=16, c_l=16, da_l=16, dy=16, dc_l=16, delta_r=16, dq=16,
                q_strides=strides, dz_strides=strides, z_strides=strides, batch=1, nh=2, n_q_tiles=21, n_kv_tiles=21,
                b1=30, b2=52, head_dim=128, causal_block_tiles=0, sm_scale=0.1, dtype=1, stream=0)  # fmt: skip
    with pytest.raises(ValueError, match=msg):
        module.monarch_stage_l_bwd(**{**args, **change})


@pytest.mark.skipif(cuda.extension()[0] is None, reason="the extension is not built on this machine")
@pytest.mark.parametrize(
    "change, msg",
    [
        ({"b1": 65}, "takes b1 <= 64"),
        ({"head_dim": 96}, "head_dim=96"),
        ({"n_kv_tiles": 0}, "no key tiles"),
        ({"q_strides": [8, 8, 8, 12, 8]}, "multiples of 8"),
        ({"a_l": 8}, "16-byte aligned"),
        ({"y": 0}, "Y with Z"),
        ({"lse": 0}, "lse are required"),
        ({"dtype": 2}, "dtype code 2"),
    ],
    ids=["b1", "head_dim", "no-key-tiles", "stride-multiple", "misaligned", "z-without-y", "no-lse", "dtype"],
)
def test_stage_l_launcher_rejects_bad_arguments_before_touching_the_device(change, msg):
    module, _ = cuda.extension()
    strides = [21 * 30 * 52 * 2 * 128, 30 * 52 * 2 * 128, 52 * 2 * 128, 2 * 128, 128]
    args = dict(q=16, a_l=16, y=16, c_l=16, z=16, lse=16, q_strides=strides, batch=1, nh=2, n_q_tiles=21,
                n_kv_tiles=21, b1=30, b2=52, head_dim=128, causal_block_tiles=0, sm_scale=0.1, dtype=1,
                stream=0)  # fmt: skip
    with pytest.raises(ValueError, match=msg):
        module.monarch_stage_l(**{**args, **change})


@pytest.mark.parametrize(
    ("change", "arch", "wgmma", "default"),
    [
        ({}, H100, True, False),  # 30x52: b1 = 30
        ({"b2": 80, "b1": 45}, H100, True, True),  # 720p
        ({"b1": 64, "causal_block_tiles": 3}, H100, True, True),
        ({"b1": 90, "q_tiles": 7, "kv_tiles": 7}, H100, False, False),  # f_tied = 3: over kStageLMaxB1
        ({"dtype": torch.float32}, H100, False, False),
        ({"b2": 80, "b1": 45}, Arch("sm100", (10, 0), "NVIDIA B200", 148, 232448), False, False),  # no wgmma
    ],
)
def test_stage_l_choice_exists_only_where_the_wgmma_kernel_runs(monkeypatch, change, arch, wgmma, default):
    """The triton backend's ``stage_l`` config (the forward's stage L): 'wgmma' is in the search space
    exactly where cuda.stage_l_reason allows it, and the default where b1 > 32 (docs/attention-kernels.md (i))."""
    limit = staticmethod(lambda batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, dtype: "b1 > 64" * (b1 > 64))
    _check_wgmma_choice(monkeypatch, "stage_l", "monarch_stage_l_reason", limit, change, arch, wgmma, default)


def _check_wgmma_choice(monkeypatch, key, reason_name, reason, change, arch, allowed, default):
    """The triton backend's config ``key`` on the extension whose ``reason_name`` is ``reason``: 'wgmma' in
    its search space exactly when ``allowed``, the default when ``default``, and the default and the
    forced choice valid accordingly."""
    from monarchrt_ops.backends.triton import TritonAttention

    monkeypatch.setattr(cuda, "extension", lambda: (type("Limited", (FakeExtension,), {reason_name: reason}), None))
    problem = _attention_problem(**change)
    backend = TritonAttention()
    assert ("wgmma" in backend.search_space(problem, arch)[key]) == allowed
    config = backend.default_config(problem, arch)
    assert config[key] == ("wgmma" if default else "triton")
    assert backend.is_valid(config, problem, arch) is None
    assert (backend.is_valid({**config, key: "wgmma"}, problem, arch) is None) == allowed


@pytest.mark.parametrize(
    ("change", "arch", "wgmma"),
    [
        ({}, H100, True),  # 30x52
        ({"b2": 80, "b1": 45}, H100, True),  # 720p
        ({"b1": 64, "num_iters": 2, "causal_block_tiles": 3}, H100, True),
        ({"b1": 90, "q_tiles": 7, "kv_tiles": 7}, H100, False),  # f_tied = 3: over kStageLBwdMaxB1
        ({"dtype": torch.float32}, H100, False),
        ({"b2": 80, "b1": 45}, Arch("sm100", (10, 0), "NVIDIA B200", 148, 232448), False),  # no wgmma on sm_100
    ],
)
def test_stage_l_bwd_choice_exists_only_where_the_wgmma_kernel_runs(monkeypatch, change, arch, wgmma):
    """The triton backend's ``stage_l_bwd`` config (the last pass's stage-L backward): 'wgmma' is in the
    search space exactly where cuda.stage_l_bwd_reason allows it, and the shared memory it asks about
    follows b1; the default wherever it runs (measured faster at every timed shape)."""
    from monarchrt_ops.backends.triton import TritonAttention

    widths = []

    class Limited(FakeExtension):
        @staticmethod
        def monarch_stage_l_bwd_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, dtype):
            return "b1 > 64" if b1 > 64 else ""

        @staticmethod
        def monarch_stage_l_bwd_smem_bytes(b1, head_dim):
            widths.append(b1)
            return 92 * 1024

    monkeypatch.setattr(cuda, "extension", lambda: (Limited, None))
    problem = _attention_problem(**change)
    backend = TritonAttention()
    assert ("wgmma" in backend.search_space(problem, arch)["stage_l_bwd"]) == wgmma
    assert set(widths) <= {problem.b1}
    default = backend.default_config(problem, arch)
    assert default["stage_l_bwd"] == ("wgmma" if wgmma else "triton")
    assert backend.is_valid(default, problem, arch) is None
    assert (backend.is_valid({**default, "stage_l_bwd": "wgmma"}, problem, arch) is None) == wgmma


@pytest.mark.parametrize(
    ("change", "arch", "wgmma_allowed", "wgmma_default"),
    [
        ({"b2": 80, "b1": 45}, H100, True, True),  # 720p: measured faster than Triton's stage R
        ({}, H100, True, True),  # 30x52, one pass: measured faster
        ({"num_iters": 2}, H100, True, False),  # 30x52, two passes: measured slower, still in the search space
        ({"num_iters": 2, "b2": 80, "b1": 45}, H100, True, True),  # 720p, two passes: measured faster
        ({"b2": 96, "head_dim": 64}, H100, True, True),
        ({"b2": 97}, H100, False, False),  # beyond kernel_limits.h's kStageRMaxB2
        ({"dtype": torch.float32}, H100, False, False),
        ({"b2": 80}, Arch("sm100", (10, 0), "NVIDIA B200", 148, 232448), False, False),  # no wgmma on sm_100
    ],
)
def test_stage_r_choice_exists_only_where_the_wgmma_kernel_runs(
    monkeypatch, change, arch, wgmma_allowed, wgmma_default
):
    """The triton backend's ``stage_r`` config: 'wgmma' is in the search space (so the tuner and the
    tables may pick it) only where cuda.stage_r_reason allows it, and the default where it was measured
    faster (one pass, or b2 > 64)."""
    limit = staticmethod(lambda batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, dtype: "b2 > 96" * (b2 > 96))
    _check_wgmma_choice(monkeypatch, "stage_r", "monarch_stage_r_reason", limit, change, arch, wgmma_allowed,
                        wgmma_default)  # fmt: skip


@pytest.mark.parametrize(
    ("change", "arch", "wgmma"),
    [
        ({}, H100, True),  # 30x52
        ({"num_iters": 2, "causal_block_tiles": 3}, H100, True),
        ({"b2": 26, "b1": 15, "head_dim": 64}, H100, True),
        ({"b1": 90, "q_tiles": 7, "kv_tiles": 7}, H100, True),  # f_tied = 3: 7 key tiles
        ({"b2": 80, "b1": 45}, H100, True),  # 720p: dK and dV by two launches
        ({"b2": 96, "b1": 8}, H100, False),  # over kernel_limits.h's kStageRBwdMaxB2
        ({"dtype": torch.float32}, H100, False),
        ({}, Arch("sm120", (12, 0), "NVIDIA RTX 5090", 170, 101376), False),  # no wgmma on sm_120
    ],
)
def test_stage_r_bwd_choice_exists_only_where_the_wgmma_kernels_run(monkeypatch, change, arch, wgmma):
    """The triton backend's ``stage_r_bwd`` and ``stage_r_dq`` configs (stage R's backward kernels): 'wgmma'
    is in the search space exactly where cuda.stage_r_bwd_reason allows it, the default for dK/dV, and for dQ
    where b2 <= 32, b2 > 64 or with 21 key tiles or more (measured faster there)."""
    from monarchrt_ops.backends.triton import TritonAttention

    class Limited(FakeExtension):
        @staticmethod
        def monarch_stage_r_bwd_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, cbt, dtype):
            return "b2 > 80" if b2 > 80 else ""

    monkeypatch.setattr(cuda, "extension", lambda: (Limited, None))
    problem = _attention_problem(**change)
    backend = TritonAttention()
    assert ("wgmma" in backend.search_space(problem, arch)["stage_r_bwd"]) == wgmma
    default = backend.default_config(problem, arch)
    assert default["stage_r_bwd"] == ("wgmma" if wgmma else "triton")
    assert backend.is_valid(default, problem, arch) is None
    dq_wgmma = wgmma and (problem.b2 <= 32 or problem.b2 > 64 or problem.kv_tiles >= 21)
    assert default["stage_r_dq"] == ("wgmma" if dq_wgmma else "triton")
    forced = {**default, "stage_r_bwd": "wgmma"}
    assert (backend.is_valid(forced, problem, arch) is None) == wgmma
    assert (backend.is_valid({**default, "stage_r_dq": "wgmma"}, problem, arch) is None) == wgmma


def test_wide_forward_stage_r_blocks_are_invalid_where_their_shared_memory_does_not_fit(monkeypatch):
    """A 16-bit forward stage R with an l block of 128 at d = 128 needs 100-128 KB of shared memory
    (compiled for sm_120): invalid on an RTX 5090's 99 KB, valid on an H100/H200."""
    from monarchrt_ops.backends.triton import TritonAttention

    monkeypatch.setattr(cuda, "extension", lambda: (FakeExtension, None))
    rtx5090 = Arch("sm120", (12, 0), "NVIDIA RTX 5090", 170, 101376)
    backend, problem = TritonAttention(), _attention_problem()
    for arch, valid in ((H100, True), (rtx5090, False)):
        config = {**backend.default_config(problem, arch), "fwd_block_l": 128}
        assert (backend.is_valid(config, problem, arch) is None) == valid
    assert backend.is_valid(backend.default_config(problem, rtx5090), problem, rtx5090) is None


def test_wgmma_kernels_need_an_sm90a_build(monkeypatch):
    """An sm_90 build without the 'a' features compiles the warpgroup-MMA kernels empty: they are never
    chosen from it (their launches would succeed and write nothing)."""

    class Plain90(FakeExtension):
        @staticmethod
        def compiled_archs():
            return ["90", "100a"]

    monkeypatch.setattr(cuda, "extension", lambda: (Plain90, None))
    problem = _attention_problem()
    assert "without sm_90a" in cuda.stage_r_reason(problem, H100)
    assert "without sm_90a" in cuda.stage_r_bwd_reason(problem, H100)
    assert "without sm_90a" in cuda.stage_l_bwd_reason(problem, H100)
    monkeypatch.setattr(cuda, "extension", lambda: (FakeExtension, None))
    assert cuda.stage_r_reason(problem, H100) is None and cuda.stage_r_bwd_reason(problem, H100) is None
    assert cuda.stage_l_bwd_reason(problem, H100) is None


def test_aligned_rows_copies_a_size_one_dim_with_an_odd_stride():
    """torch's contiguous() keeps a tensor whose only odd stride is a size-1 dim's; the kernels' launchers
    check every stride, so the launch wrappers must copy it."""
    x = torch.randn(2, 1, 3, 16).as_strided((2, 1, 3, 16), (48, 5, 16, 1))
    assert x.is_contiguous() and not cuda._row_strides(x)
    y = cuda._aligned_rows(x)
    assert cuda._row_strides(y) and torch.equal(y, x)


@pytest.mark.skipif(cuda.extension()[0] is None, reason="the extension is not built on this machine")
def test_stage_r_bwd_reason_refuses_no_query_tiles():
    """With no query tiles the wgmma backward would launch nothing and leave dK, dV unwritten."""
    module, _ = cuda.extension()
    assert "no query tiles" in module.monarch_stage_r_bwd_reason(1, 2, 0, 3, 30, 52, 128, 0, 1)
    assert module.monarch_stage_r_bwd_reason(1, 2, 1, 3, 30, 52, 128, 0, 1) == ""
