"""Monarch attention vs dense SDPA (each available backend), measured side by side in one run.

python -m monarchrt_ops.bench.bench_attention [--shapes NAME ...] [--backward] [--json PATH]

Time: median of triton.testing.do_bench (CUDA events, L2 flushed between runs).
Every GPU backend of the op that supports the shape is timed (``monarch_<backend>_ms``); ``monarch_ms``
and the speedup are the fastest of them, named in ``monarch_backend``.
TFLOP/s: useful Monarch FLOPs (AttentionProblem.forward_flops, docs/math.md, Cost) over the time;
dense SDPA: 4 * n_q * n_k * d per head forward, x3.5 for forward+backward (FA2 convention).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import monarchrt_ops as m
from monarchrt_ops.autotune.shapes import ATTENTION_SHAPES
from monarchrt_ops.problem import AttentionProblem

from .common import bench_ms, ceilings, header

SDPA_BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def dense_sdpa(q, k, v):
    # SDPA wants (B, nh, S, d); block-causal has no SDPA form, so it is timed unmasked (an upper bound)
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def monarch_backends(problem) -> dict[str, str | None]:
    """Each GPU backend of the attention op -> None where it can run ``problem``, else why not."""
    from monarchrt_ops.arch import arch_of
    from monarchrt_ops.registry import backend_names, get_backend

    arch = arch_of(torch.device("cuda"))
    names = [n for n in backend_names("attention") if n != "reference"]
    return {n: get_backend("attention", n).supports(problem, arch) for n in names}


def run_shape(shape, dtype, backward: bool) -> dict:
    hw = shape.frame_shape[0] * shape.frame_shape[1]
    gen = torch.Generator(device="cuda").manual_seed(0)

    def mk(frames):
        return torch.randn(
            shape.batch, frames * hw, shape.heads, shape.head_dim, device="cuda", dtype=dtype, generator=gen
        )

    q, k, v = mk(shape.q_frames), mk(shape.kv_frames), mk(shape.kv_frames)
    tiling = m.make_tiling(shape.frame_shape)
    cbt = shape.causal_block_frames or 0
    prob = AttentionProblem.from_tiles(m.to_tiles(q, tiling), m.to_tiles(k, tiling), cbt, 1)
    n_q, n_k = q.shape[1], k.shape[1]
    dense_flops = 4 * n_q * n_k * shape.head_dim * shape.heads * shape.batch
    row = {
        "shape": shape.name,
        "dtype": str(dtype),
        "monarch_gflop": prob.forward_flops() / 1e9,
        "dense_gflop": dense_flops / 1e9,
    }
    kw = {"causal_block_frames": shape.causal_block_frames}

    for name, be in SDPA_BACKENDS.items():
        try:
            with sdpa_kernel(be):
                row[f"sdpa_{name}_ms"] = bench_ms(lambda: dense_sdpa(q, k, v))
        except RuntimeError as e:
            row[f"sdpa_{name}_ms"] = None
            row[f"sdpa_{name}_error"] = str(e).splitlines()[0][:200]
    backends = monarch_backends(prob)
    for name, reason in backends.items():
        if reason is not None:
            row[f"monarch_{name}_skipped"] = reason
            continue
        row[f"monarch_{name}_ms"] = bench_ms(
            lambda: m.monarch_attention(q, k, v, shape.frame_shape, backend=name, **kw)  # noqa: B023
        )
    timed = {n: row[f"monarch_{n}_ms"] for n in backends if f"monarch_{n}_ms" in row}
    row["monarch_backend"] = min(timed, key=timed.get)
    row["monarch_ms"] = timed[row["monarch_backend"]]
    dense = [row[f"sdpa_{n}_ms"] for n in SDPA_BACKENDS if row.get(f"sdpa_{n}_ms")]
    row["fastest_dense_ms"] = min(dense) if dense else None
    row["speedup_vs_fastest_dense"] = row["fastest_dense_ms"] / row["monarch_ms"] if dense else None
    row["monarch_tflops"] = prob.forward_flops() / row["monarch_ms"] / 1e9
    if backward:
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        dout = torch.randn_like(q)

        for name, be in SDPA_BACKENDS.items():
            try:
                with sdpa_kernel(be):

                    def fb():
                        out = dense_sdpa(qg, kg, vg)
                        torch.autograd.grad(out, (qg, kg, vg), dout.transpose(1, 2))

                    row[f"sdpa_{name}_fwd_bwd_ms"] = bench_ms(fb)
            except RuntimeError:
                row[f"sdpa_{name}_fwd_bwd_ms"] = None
        for name in timed:

            def mon_fb():
                out = m.monarch_attention(qg, kg, vg, shape.frame_shape, backend=name, **kw)  # noqa: B023
                torch.autograd.grad(out, (qg, kg, vg), dout)

            try:
                row[f"monarch_{name}_fwd_bwd_ms"] = bench_ms(mon_fb)
            except torch.OutOfMemoryError as e:
                row[f"monarch_{name}_fwd_bwd_error"] = str(e).splitlines()[0][:200]
            torch.cuda.empty_cache()
        fb_timed = [row[f"monarch_{n}_fwd_bwd_ms"] for n in timed if row.get(f"monarch_{n}_fwd_bwd_ms")]
        row["monarch_fwd_bwd_ms"] = min(fb_timed) if fb_timed else None
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="*", default=[s.name for s in ATTENTION_SHAPES])
    p.add_argument("--backward", nargs="*", default=[], help="shape names to also time forward+backward")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = {"header": header(), "ceilings": ceilings(), "rows": []}
    print(json.dumps(result["header"]), json.dumps(result["ceilings"]), flush=True)
    for shape in ATTENTION_SHAPES:
        if shape.name not in args.shapes:
            continue
        row = run_shape(shape, torch.bfloat16, shape.name in args.backward)
        result["rows"].append(row)
        torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
    cols = f"{'backend':>8s} {'monarch ms':>10s} {'fastest dense ms':>16s} {'speedup':>8s} {'TFLOP/s':>8s}"
    print(f"\n{'shape':34s} {cols}")
    for r in result["rows"]:
        print(
            f"{r['shape']:34s} {r['monarch_backend']:>8s} {r['monarch_ms']:10.3f} "
            f"{r['fastest_dense_ms'] or float('nan'):16.3f} {r['speedup_vs_fastest_dense'] or float('nan'):8.2f} "
            f"{r['monarch_tflops']:8.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
