"""Every backend states its limits in supports(), so automatic selection passes over a kernel that
would raise at launch, and an explicit backend= raises before any kernel runs."""

import torch

from monarchrt_ops import registry
from monarchrt_ops.arch import Arch
from monarchrt_ops.backends import triton
from monarchrt_ops.problem import AttentionProblem, MonarchMatmulProblem

H100 = Arch("sm90", (9, 0), "NVIDIA H100 80GB HBM3", 132, 232448)


def test_triton_attention_states_its_grid_limit():
    ok = AttentionProblem(1, 65535, 64, 4, 8, 2, 2, 0, 1, torch.float16, sm_scale=0.125)
    too_many = AttentionProblem(2, 40000, 64, 4, 8, 2, 2, 0, 1, torch.float16, sm_scale=0.125)
    assert triton.TritonAttention().supports(ok, H100) is None
    assert triton.TritonAttention().supports(too_many, H100) == "batch * heads = 80000: the kernels take up to 65535"
    sel = registry.select("attention", too_many, H100)
    assert sel.backend.name == "reference" and "batch * heads = 80000" in dict(sel.rejected)["triton"]


def test_triton_monarch_matmul_states_its_grid_limit():
    ok = MonarchMatmulProblem(64, (4, 4, 4), (4, 4, 4), torch.float16)
    wide = MonarchMatmulProblem(64, (70000, 1, 1), (70000, 1, 1), torch.float16)
    assert triton.TritonMonarchMatmul().supports(ok, H100) is None
    assert "the kernels take k, l / 16 up to 65535" in triton.TritonMonarchMatmul().supports(wide, H100)
