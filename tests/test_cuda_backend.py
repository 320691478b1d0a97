"""The CUDA extension: built wherever nvcc is (CI compiles sm_90a, sm_100a, sm_120a), clear reasons
when it is missing or built for other architectures, and (on a GPU) the kernels against the reference."""

import os
import shutil

import pytest
import torch
from conftest import TOL, rel_err

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
    assert cuda.CudaHadamard().supports(HadamardProblem(4, 1024, 1, torch.float16), H100) is None
    assert "n=24" in cuda.CudaHadamard().supports(HadamardProblem(4, 24, 12, torch.float16), H100)
    fp32_mid = HadamardProblem(4, 1024, 1, torch.float16, fp32_intermediate=True)
    assert "no fp32_intermediate" in cuda.CudaHadamard().supports(fp32_mid, H100)


def test_explicit_cuda_backend_on_cpu_raises():
    with pytest.raises(ValueError, match="backend='cuda' cannot run hadamard here"):
        m.hadamard(torch.randn(2, 256, dtype=torch.float16), backend="cuda")


@pytest.mark.skipif(not GPU, reason="GPU tier")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [2**k for k in range(8, 16)])
def test_cuda_hadamard_matches_reference(n, dtype, poison_empty):
    x = torch.randn(37, n, dtype=torch.float64)
    ref = m.hadamard(x, backend="reference")
    out = m.hadamard(x.to("cuda", dtype), backend="cuda")
    assert rel_err(out, ref) < TOL[dtype]
    y = x.to("cuda", dtype)
    m.hadamard_(y, backend="cuda")
    assert rel_err(y, ref) < TOL[dtype]


@pytest.mark.skipif(cuda.extension()[0] is None, reason="the extension is not built on this machine")
@pytest.mark.parametrize(
    "args, msg",
    [
        ((0, 0, 1, 100, 100, 100, 1.0, 1, 0), "n=100 must be a power of two in \\[256, 32768\\]"),
        ((0, 0, 1, 65536, 65536, 65536, 1.0, 1, 0), "n=65536 must be a power of two"),
        ((8, 0, 1, 256, 256, 256, 1.0, 1, 0), "16-byte aligned"),
        ((0, 0, 1, 256, 256, 256, 1.0, 7, 0), "dtype code 7 is not fp16 \\(0\\) or bf16 \\(1\\)"),
    ],
    ids=["not-pow2", "too-large", "misaligned", "dtype"],
)
def test_launcher_rejects_bad_arguments_before_touching_the_device(args, msg):
    module, _ = cuda.extension()
    with pytest.raises(ValueError, match=msg):
        module.hadamard_pow2(*args)
