"""Hadamard transform bandwidth vs torch.clone and a dense matmul by H_n, side by side.

python -m monarchrt_ops.bench.bench_hadamard [--json PATH]
GB/s = (bytes read + bytes written) / time = 2 * x.numel() * 2 B / time for bf16; the share is
against torch.clone of the same tensor (the copy ceiling) measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import monarchrt_ops as m
from monarchrt_ops.arch import arch_of
from monarchrt_ops.autotune.shapes import HADAMARD_BYTES, HADAMARD_SIZES
from monarchrt_ops.backends import cuda
from monarchrt_ops.hadamard_matrices import factor, hadamard_matrix
from monarchrt_ops.problem import HadamardProblem

from .common import bench_ms, header


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=HADAMARD_SIZES)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = {"header": header(), "rows": []}
    print(json.dumps(result["header"]), flush=True)
    for n in args.sizes:
        rows = HADAMARD_BYTES // (2 * n)
        x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
        moved = 2 * x.numel() * x.element_size()
        row = {"n": n, "rows": rows, "clone_ms": bench_ms(lambda x=x: x.clone())}
        row["triton_ms"] = bench_ms(lambda x=x: m.hadamard(x, backend="triton"))
        problem = HadamardProblem(rows, n, factor(n)[0], x.dtype)
        if cuda.CudaHadamard().supports(problem, arch_of(x.device)) is None:
            row["cuda_ms"] = bench_ms(lambda x=x: m.hadamard(x, backend="cuda"))
        if n <= 16384:  # the dense H_n (n^2 bf16) and its product stay reasonable
            h = (hadamard_matrix(n) / n**0.5).to("cuda", torch.bfloat16)
            row["dense_matmul_ms"] = bench_ms(lambda x=x, h=h: x @ h.T)
            del h
        for k in ("clone", "triton", "cuda", "dense_matmul"):
            if f"{k}_ms" in row:
                row[f"{k}_gb_s"] = moved / row[f"{k}_ms"] / 1e6
                row[f"{k}_share_of_clone"] = row["clone_ms"] / row[f"{k}_ms"]
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        del x
        torch.cuda.empty_cache()
    print(f"\n{'n':>6s} {'clone GB/s':>10s} {'triton share':>12s} {'cuda share':>10s} {'dense share':>11s}")
    for r in result["rows"]:
        print(f"{r['n']:6d} {r['clone_gb_s']:10.0f} {r['triton_share_of_clone']:12.1%} "
              f"{r.get('cuda_share_of_clone', float('nan')):10.1%} "
              f"{r.get('dense_matmul_share_of_clone', float('nan')):11.1%}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
