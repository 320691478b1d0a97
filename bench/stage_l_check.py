"""The last pass's stage-L backward on warpgroup MMA against the Triton kernel: same gradients, and the
time of each.

python -m monarchrt_ops.bench.stage_l_check [--json PATH] [--quick]

docs/attention-kernels.md, design (h). The whole Triton backward (stage R and its backward on the default
launchers) runs twice on the same inputs, with the last pass's stage L on Triton's kernels and on
csrc/attention/stage_l_bwd.cuh: dQ, dK and dV must agree to the rounding of their dtype. Then, in the same
process, the CUDA-graph median of each whole backward and the profiler's time of each stage-L kernel.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from monarchrt_ops import registry
from monarchrt_ops.arch import arch_of
from monarchrt_ops.backends import cuda
from monarchrt_ops.backends.triton import _bwd_launchers
from monarchrt_ops.problem import AttentionProblem
from monarchrt_ops.triton_kernels import monarch_attention as kernels

from .common import graph_ms, header
from .kernel_times import kernel_us

# name, b1, b2, query tiles, key tiles, causal block tiles, heads, d (bf16, batch 1)
CHECKS = [("30x52", 30, 52, 3, 4, 0, 2, 128), ("block-causal", 30, 52, 6, 6, 3, 2, 128),
          ("45x80", 45, 80, 2, 3, 0, 2, 128), ("15x26 d64", 15, 26, 5, 4, 0, 3, 64),
          ("64x8", 64, 8, 3, 3, 0, 2, 128), ("3x7 d64", 3, 7, 4, 3, 0, 2, 64)]  # fmt: skip
TIMED = [("30x52", 30, 52, 21, 21, 0, 12, 128), ("block-causal", 30, 52, 21, 21, 3, 12, 128),
         ("720p", 45, 80, 21, 21, 0, 12, 128), ("15x26", 15, 26, 84, 84, 0, 12, 128),
         ("AR 3 vs 21", 30, 52, 3, 21, 0, 12, 128)]  # fmt: skip


def _problem(b1, b2, n_a, n_f, cbt, heads, d) -> AttentionProblem:
    return AttentionProblem(batch=1, heads=heads, q_tiles=n_a, kv_tiles=n_f, b1=b1, b2=b2, head_dim=d,
                            dtype=torch.bfloat16, causal_block_tiles=cbt, num_iters=1, sm_scale=d**-0.5,
                            backward=True)  # fmt: skip


def _case(b1, b2, n_a, n_f, cbt, heads, d, seed=0):
    """Inputs, the forward's z and lse, and the backward's keyword arguments without ``stage_l_bwd``."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, n_a, b1, b2, heads, d, device="cuda", generator=g).to(torch.bfloat16)
    k, v = (torch.randn(1, n_f, b1, b2, heads, d, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2))
    config = registry.select("attention", _problem(b1, b2, n_a, n_f, cbt, heads, d), arch_of("cuda"), "triton").config
    launchers = _bwd_launchers(config, kernels)
    del launchers["stage_l_bwd"]
    kw = dict(sm_scale=d**-0.5, causal_block_tiles=cbt, num_iters=1, config=config)
    z, lse = kernels.monarch_attention_fwd(q, k, v, **kw)
    dz = torch.randn(z.shape, device="cuda", generator=g).to(z.dtype)
    dlse = torch.randn(lse.shape, device="cuda", generator=g)
    return (dz, dlse, q, k, v, z, lse), {**kw, **launchers}


def _rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def _backwards(args, kw):
    """The backward with the last pass's stage L on each launcher: {label: fn}."""
    return {
        label: (lambda launcher=launcher: kernels.monarch_attention_bwd(*args, **kw, stage_l_bwd=launcher))
        for label, launcher in (("triton", None), ("wgmma", cuda.stage_l_bwd_wgmma))
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="checks only, no timing")
    args = ap.parse_args(argv)
    result = {"header": header(), "checks": [], "timed": []}
    worst = 0.0
    for name, *shape in CHECKS:
        if cuda.stage_l_bwd_reason(_problem(*shape), arch_of("cuda")) is not None:
            continue
        fns = _backwards(*_case(*shape))
        want, got = fns["triton"](), fns["wgmma"]()
        torch.cuda.synchronize()
        row = {"case": name, **{f"d{w}_rel": _rel(a, b) for w, a, b in zip("qkv", got, want, strict=True)}}
        row["finite"] = all(bool(torch.isfinite(x).all()) for x in got)
        print(json.dumps(row), flush=True)
        result["checks"].append(row)
        worst = max(worst, *(x for key, x in row.items() if key.endswith("_rel")), 0 if row["finite"] else math.inf)
    print(f"worst relative difference {worst:.3g}", flush=True)
    if not args.quick:
        for name, *shape in TIMED:
            if cuda.stage_l_bwd_reason(_problem(*shape), arch_of("cuda")) is not None:
                continue
            fns = _backwards(*_case(*shape))
            row = {"case": name}
            for label, fn in fns.items():
                row[f"backward_{label}_ms"] = graph_ms(fn)
                times = kernel_us(fn)
                row[f"stage_l_{label}_ms"] = sum(us for key, us in times.items() if "stage_l_bwd" in key) / 1e3
            print(json.dumps(row), flush=True)
            result["timed"].append(row)
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if worst < 2e-2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
