"""Monarch matmul (Triton, and the CUDA kernels where built) vs two batched matmuls plus permutes (the
reference) and a dense matmul.

``stage1_batched_gemm``: the first block-diagonal factor alone as one strided-batched GEMM (cuBLAS
through torch.matmul on views: x's blocks need no copy). It bounds from below any design built from
library batched/grouped GEMMs (CUTLASS's included): the second factor's operands are strided in both
dimensions (columns r*L + l), so such a design needs that GEMM again plus a permute pass.

``--linear``: MonarchLinear's two paths per shape of ``MONARCH_LINEAR_SHAPES`` (structured kernel vs
``F.linear`` with the materialised dense weight, forward and forward + backward, plus the dense
GEMM alone: what a cached weight would cost), and the measured ``monarch_linear`` choice each row
suggests for the GPU's table (``suggested_choice``; docs/design.md, MonarchLinear).

python -m monarchrt_ops.bench.bench_monarch_matmul [--json PATH] [--linear]
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
from monarchrt_ops.autotune.shapes import MONARCH_LINEAR_SHAPES, MONARCH_MATMUL_SHAPES
from monarchrt_ops.monarch_matmul import linear_path_key
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


# dense is chosen only when measured this much faster: timing noise never flips a shape to dense
DENSE_MARGIN = 0.95


def suggested_choice(row: dict) -> dict:
    """The ``monarch_linear`` choice a bench row measures (tables.py's format): dense where its forward
    and its forward + backward, both from CUDA graphs, beat the structured path's by DENSE_MARGIN."""
    s_fwd, d_fwd = row["structured_fwd_graph_ms"], row["dense_fwd_graph_ms"]
    s_all, d_all = row["structured_fwd_bwd_ms"], row["dense_fwd_bwd_ms"]
    dense = d_fwd < DENSE_MARGIN * s_fwd and d_all < DENSE_MARGIN * s_all
    where = linear_path_key(row["rows"], row["in_features"], row["out_features"], row["nblocks"], row["dtype"])
    why = (
        f"dense {d_fwd:.3f} ms forward, {d_all:.3f} ms forward + backward against structured {s_fwd:.3f} / "
        f"{s_all:.3f} ms on {row['gpu']} (bench_monarch_matmul --linear, {row['shape']})"
    )
    return {"op": "monarch_linear", "backend": "dense", "auto": dense, "where": where, "why": why}


def run_linear_shape(name, rows, n_in, n_out, nblocks, dt=torch.bfloat16) -> dict:
    layer = m.MonarchLinear(n_in, n_out, nblocks, device="cuda", dtype=dt)
    x = torch.randn(rows, n_in, device="cuda", dtype=dt)
    xg = x.clone().requires_grad_()
    dy = torch.randn(rows, n_out, device="cuda", dtype=dt)
    with torch.no_grad():
        w = layer.dense_weight()
    row = {"shape": name, "rows": rows, "in_features": n_in, "out_features": n_out, "nblocks": nblocks,
           "dtype": dt, "gpu": torch.cuda.get_device_name()}  # fmt: skip
    for path in ("structured", "dense"):
        layer.matmul = path

        def fwd():
            with torch.no_grad():
                return layer(x)

        def fwd_bwd():
            torch.autograd.grad(layer(xg), [xg, layer.w1, layer.w2], dy)

        row[f"{path}_fwd_ms"] = bench_ms(fwd)
        row[f"{path}_fwd_graph_ms"] = graph_ms(fwd)
        row[f"{path}_fwd_bwd_ms"] = bench_ms(fwd_bwd)  # eager: autograd's graph is rebuilt per call
    row["dense_gemm_only_graph_ms"] = graph_ms(lambda: torch.nn.functional.linear(x, w, layer.bias))
    row["suggested_choice"] = suggested_choice(row)
    row["dtype"] = str(dt).removeprefix("torch.")
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--linear", action="store_true", help="MonarchLinear: structured vs dense per shape instead")
    args = p.parse_args(argv)
    result = {"header": header(), "rows": []}
    print(json.dumps(result["header"]), flush=True)
    for shape in MONARCH_LINEAR_SHAPES if args.linear else MONARCH_MATMUL_SHAPES:
        row = run_linear_shape(*shape) if args.linear else run_shape(*shape)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.linear:
        result["suggested_choices"] = [row["suggested_choice"] for row in result["rows"]]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
