"""The forward's stage L on warpgroup MMA against the Triton kernel: same outputs, and the time of each.

python -m monarchrt_ops.bench.stage_l_fwd_check [--json PATH] [--quick]

docs/attention-kernels.md, design (i). Stage R fills one scratch (aL, Y, cL); both stage-L launchers read
it: Z must agree to the rounding of its dtype and lse to fp32 rounding, with Z written and on a pass
without it (num_iters > 1). Then, in the same process, the CUDA-graph median of each launcher alone and
of the whole one-pass forward with each. The shapes are stage_l_check's.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from monarchrt_ops.arch import arch_of
from monarchrt_ops.backends import cuda
from monarchrt_ops.triton_kernels import monarch_attention as kernels

from .common import graph_ms, header
from .stage_l_check import CHECKS, TIMED, _problem, _rel

LAUNCHERS = (("triton", kernels._stage_l), ("wgmma", cuda.stage_l_wgmma))


def _run(b1, b2, n_a, n_f, cbt, heads, d, timed: bool) -> dict:
    from monarchrt_ops import registry

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, n_a, b1, b2, heads, d, device="cuda", generator=g).to(torch.bfloat16)
    k, v = (torch.randn(1, n_f, b1, b2, heads, d, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2))
    problem = _problem(b1, b2, n_a, n_f, cbt, heads, d)
    config = registry.select("attention", problem, arch_of("cuda"), "triton").config
    common, scale = (heads, n_a, n_f, b1, b2, cbt), d**-0.5
    sc = kernels._Scratch(q, n_f)
    cuda.stage_r_wgmma(q, k, v, sc, None, None, scale, common, config)
    outs = {}
    for label, launcher in LAUNCHERS:
        z = torch.empty(1, n_a, b1, b2, heads, d, dtype=q.dtype, device="cuda")
        lse, lse_only = (torch.empty(1, n_a, b1, b2, heads, device="cuda") for _ in range(2))
        launcher(q, sc, z, lse, scale, common, config, write_z=True)
        launcher(q, sc, z, lse_only, scale, common, config, write_z=False)
        outs[label] = (z, lse, lse_only)
    torch.cuda.synchronize()
    (z_t, lse_t, lo_t), (z_c, lse_c, lo_c) = outs["triton"], outs["wgmma"]
    row = {
        "z_rel": _rel(z_c, z_t),
        "lse_abs": float((lse_c - lse_t).abs().max()),
        "lse_only_abs": float((lo_c - lo_t).abs().max()),
        "finite": bool(torch.isfinite(z_c.float()).all() and torch.isfinite(lse_c).all()),
    }
    if timed:
        for label, launcher in LAUNCHERS:
            z, lse = outs[label][:2]
            row[f"stage_l_{label}_ms"] = graph_ms(
                lambda launcher=launcher, z=z, lse=lse: launcher(q, sc, z, lse, scale, common, config, write_z=True)
            )
            fwd = dict(sm_scale=scale, causal_block_tiles=cbt, num_iters=1, config=config,
                       stage_r=cuda.stage_r_wgmma, stage_l=launcher)  # fmt: skip
            row[f"forward_{label}_ms"] = graph_ms(lambda fwd=fwd: kernels.monarch_attention_fwd(q, k, v, **fwd))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="checks only, no timing")
    args = ap.parse_args(argv)
    result = {"header": header(), "checks": [], "timed": []}
    worst = 0.0
    for name, *shape in CHECKS:
        if cuda.stage_l_reason(_problem(*shape), arch_of("cuda")) is not None:
            continue
        row = {"case": name, **_run(*shape, timed=False)}
        print(json.dumps(row), flush=True)
        result["checks"].append(row)
        worst = max(worst, row["z_rel"], row["lse_abs"], row["lse_only_abs"], 0.0 if row["finite"] else math.inf)
    print(f"worst difference {worst:.3g}", flush=True)
    if not args.quick:
        for name, *shape in TIMED:
            row = {"case": name, **_run(*shape, timed=True)}
            print(json.dumps(row), flush=True)
            result["timed"].append(row)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if worst < 2e-2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
