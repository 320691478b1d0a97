"""Monarch matmul (Triton, and the CUDA kernels where built) vs two batched matmuls plus permutes (the
reference) and a dense matmul.

``stage1_batched_gemm``: the first block-diagonal factor alone as one strided-batched GEMM (cuBLAS
through torch.matmul on views: x's blocks need no copy). It bounds from below any design built from
library batched/grouped GEMMs (CUTLASS's included): the second factor's operands are strided in both
dimensions (columns r*L + l), so such a design needs that GEMM again plus a permute pass.

python -m monarchrt_ops.bench.bench_monarch_matmul [--json PATH]
FLOPs: 2 * rows * (k*q*p + l*s*r); bytes (floor): x read + out written + weights.
``*_ms``: eager calls; ``*_graph_ms``: the same calls replayed from a CUDA graph. Calls of ~0.1 ms are
host-bound eagerly (the op costs ~0.1 ms of Python dispatch on the H100 machine's host, measured), so
the speedup is given both ways.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import monarchrt_ops as m
from monarchrt_ops.arch import arch_of
from monarchrt_ops.autotune.shapes import MONARCH_MATMUL_SHAPES
from monarchrt_ops.problem import MonarchMatmulProblem
from monarchrt_ops.registry import get_backend

from .common import bench_ms, graph_ms, header


def run_shape(name, rows, s1, s2, dt=torch.bfloat16) -> dict:
    w1 = (torch.randn(*s1, device="cuda") / s1[2] ** 0.5).to(dt)
    w2 = (torch.randn(*s2, device="cuda") / s2[2] ** 0.5).to(dt)
    x = torch.randn(rows, s1[0] * s1[2], device="cuda", dtype=dt)
    dense = torch.randn(s2[0] * s2[1], s1[0] * s1[2], device="cuda", dtype=dt)  # (out, in)
    flops = 2 * rows * (s1[0] * s1[1] * s1[2] + s2[0] * s2[1] * s2[2])
    row = {"shape": name, "gflop": flops / 1e9}
    calls = {
        "triton": lambda: m.monarch_matmul(x, w1, w2, backend="triton"),
        "bmm_permute": lambda: m.monarch_matmul(x, w1, w2, backend="reference"),
        "dense_matmul": lambda: x @ dense.T,
        "stage1_batched_gemm": lambda: x.view(rows, s1[0], s1[2]).transpose(0, 1) @ w1.transpose(1, 2),
    }
    problem = MonarchMatmulProblem(rows, tuple(s1), tuple(s2), dt)
    if get_backend("monarch_matmul", "cuda").supports(problem, arch_of(x.device)) is None:
        calls["cuda"] = lambda: m.monarch_matmul(x, w1, w2, backend="cuda")
    for key, fn in calls.items():
        row[f"{key}_ms"] = bench_ms(fn)
        row[f"{key}_graph_ms"] = graph_ms(fn)
    row["speedup_vs_bmm_permute"] = row["bmm_permute_ms"] / row["triton_ms"]
    row["speedup_vs_bmm_permute_graph"] = row["bmm_permute_graph_ms"] / row["triton_graph_ms"]
    row["triton_tflops"] = flops / row["triton_graph_ms"] / 1e9
    row["stage1_batched_gemm_over_triton_graph"] = row["stage1_batched_gemm_graph_ms"] / row["triton_graph_ms"]
    if "cuda_ms" in row:
        row["cuda_tflops"] = flops / row["cuda_graph_ms"] / 1e9
        row["triton_over_cuda_graph"] = row["triton_graph_ms"] / row["cuda_graph_ms"]
        row["speedup_cuda_vs_bmm_permute_graph"] = row["bmm_permute_graph_ms"] / row["cuda_graph_ms"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = {"header": header(), "rows": []}
    print(json.dumps(result["header"]), flush=True)
    for shape in MONARCH_MATMUL_SHAPES:
        row = run_shape(*shape)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
