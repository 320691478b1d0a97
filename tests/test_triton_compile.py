"""Compile tier for the Triton kernels: every launch the launchers make with the default configs
(and with a sample of the configs is_valid accepts) is compiled for sm_90, sm_100 and sm_120
(Triton ships ptxas, so no GPU is needed) and must fit that target's shared memory. GPU-only
compile errors (a non-constexpr global, blocks too large for shared memory) show up here, not on a
lent GPU. The interpreter replaces the kernels in the main test run, so these tests run in a
subprocess without it."""

import os
import random
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
COMPILING = os.environ.get("TRITON_INTERPRET") != "1"


@pytest.mark.skipif(COMPILING, reason="Triton compiles in this process: the tests below run here")
def test_compile_tier_in_a_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import monarchrt_ops as m  # noqa: E402
from monarchrt_ops.arch import Arch  # noqa: E402
from monarchrt_ops.hadamard_matrices import factor  # noqa: E402
from monarchrt_ops.problem import AttentionProblem  # noqa: E402
from monarchrt_ops.registry import get_backend  # noqa: E402

# (capability, opt-in shared memory per block in bytes): H100, B200, RTX 5090
TARGETS = {"sm90": (90, 232448), "sm100": (100, 232448), "sm120": (120, 101376)}
_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int64: "i64"}


class Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kw)`` records instead of launching."""

    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((self.fn, args, kw))


def record(monkeypatch, module, names):
    calls = []
    for name in names:
        monkeypatch.setattr(module, name, Recorder(getattr(module, name), calls))
    return calls


def compile_for(fn, args, kw, capability):
    options = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
    signature, constexprs = {}, {}
    for param, value in zip(fn.params, list(args) + [kw[p.name] for p in fn.params[len(args) :]], strict=True):
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _TYPES[value.dtype]
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        else:
            signature[param.name] = "fp32"
    src = ASTSource(fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)


def check(calls, target):
    capability, smem = TARGETS[target]
    assert calls, "the launcher launched nothing"
    for fn, args, kw in calls:
        kernel = compile_for(fn, args, dict(kw), capability)
        assert kernel.metadata.shared <= smem, f"{fn.__name__} needs {kernel.metadata.shared} B of shared memory"


def tiles(frames_q, frames_kv, dtype):
    shape = (30, 52)  # the Self-Forcing tile: 30 x 52, d = 128
    q = torch.randn(1, frames_q * 1560, 2, 128).to(dtype)
    k = torch.randn(1, frames_kv * 1560, 2, 128).to(dtype)
    t = m.make_tiling(shape)
    return m.to_tiles(q, t), m.to_tiles(k, t)


def _attention_configs(dtype, target, samples=2):
    """The default config and a seeded sample of the valid ones, for the Self-Forcing tile."""
    q, k = tiles(1, 2, dtype)
    arch = Arch(target, (TARGETS[target][0] // 10, 0), target, 132, TARGETS[target][1])
    backend = get_backend("attention", "triton")
    problem = AttentionProblem.from_tiles(q, k, 0, 2)
    space = backend.search_space(problem, arch)
    rng = random.Random(f"{dtype}-{target}")
    sample = []
    while len(sample) < samples:
        config = {key: rng.choice(values) for key, values in space.items()}
        if backend.is_valid(config, problem, arch) is None:
            sample.append(config)
    return [backend.default_config(problem, arch), *sample]


compile_only = pytest.mark.skipif(not COMPILING, reason="runs in test_compile_tier_in_a_subprocess")


@compile_only
@pytest.mark.parametrize("which", [0, 1, 2], ids=["default", "valid-1", "valid-2"])
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_attention_kernels_compile(dtype, target, which, monkeypatch):
    from monarchrt_ops.triton_kernels import monarch_attention as launch
    from monarchrt_ops.triton_kernels.limits import fused_bwd_rows

    stage_l_bwd = ["_stage_l_bwd", "_stage_l_bwd_kv", "_stage_l_bwd_q"]
    names = ["_stage_r_fwd", "_stage_l_fwd", "_stage_l_update", *stage_l_bwd,
             "_stage_l_bwd_delta", "_stage_r_bwd_kv", "_stage_r_bwd_q"]  # fmt: skip
    calls = record(monkeypatch, launch, names)
    q, k = tiles(1, 2, dtype)
    # the fused stage-L backward where b1 is within its limit (bf16 here), else the two kernels (fp32)
    unused = stage_l_bwd[1:] if fused_bwd_rows(q.shape[2], q.element_size()) else stage_l_bwd[:1]
    config = _attention_configs(dtype, target)[which]
    kw = {"sm_scale": 0.088, "causal_block_tiles": 0, "config": config}
    launch.monarch_attention_fwd(q, k, k, num_iters=2, **kw)
    lse = torch.zeros(q.shape[:5])
    launch.monarch_attention_bwd(q, lse, q, k, k, q, lse, num_iters=2, **kw)  # both pass kinds
    assert {fn.__name__ for fn, _, _ in calls} == set(names) - set(unused)
    check(calls, target)


@compile_only
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("fp32_intermediate", [False, True], ids=["round", "fp32-mid"])
@pytest.mark.parametrize("n", [128, 1024, 4096, 2**15, 40 * 512])
def test_hadamard_kernels_compile(n, fp32_intermediate, target, monkeypatch):
    from monarchrt_ops.triton_kernels import hadamard as launch

    calls = record(monkeypatch, launch, ["_hadamard_kernel"])
    x = torch.randn(4, n).to(torch.bfloat16)
    mm, n2 = factor(n)
    launch.hadamard_rows(x, torch.empty_like(x), mm, n2, n**-0.5, False, {"tile": 8192}, fp32_intermediate)
    check(calls, target)


@compile_only
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize(
    "shapes",
    [((64, 64, 64), (64, 64, 64)), ((8, 192, 96), (24, 16, 64)), ((4, 256, 256), (4, 256, 256))],
    ids=["sq", "rect", "few-large-blocks"],  # the last: l < 16, the second product as l strided GEMMs
)
def test_monarch_matmul_kernels_compile(shapes, target, monkeypatch):
    from monarchrt_ops.triton_kernels import monarch_matmul as launch

    names = ["_block_product", "_reordered_block_matmul", "_row_sum_partials", "_sum_chunks"]
    calls = record(monkeypatch, launch, names)
    w1, w2 = (torch.randn(*s).to(torch.bfloat16) for s in shapes)
    rows = 4096  # enough for several chunks of the weight gradients' rows, so their sum launches too
    x = torch.empty(rows, shapes[0][0] * shapes[0][2], dtype=torch.bfloat16)
    config = {"block_m": 64, "num_warps": 4}
    launch.monarch_matmul_fwd(x, w1, w2, config)
    launch.monarch_matmul_bwd(torch.empty(rows, shapes[1][0] * shapes[1][1], dtype=torch.bfloat16), x, w1, w2, config)
    assert {fn.__name__ for fn, _, _ in calls} >= set(names) - (
        {"_reordered_block_matmul"} if shapes[1][0] < 16 else set()
    )
    check(calls, target)
