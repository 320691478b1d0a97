"""Stage R and its key-row backward on warpgroup MMA against the Triton kernels: same outputs, and the
time of each.

python -m monarchrt_ops.bench.stage_r_check [--json PATH] [--quick] [--cases NAME ...]

docs/attention-kernels.md, decompositions (f) and (g). Both stage-R launchers fill a scratch from the
same inputs; aL and Y must agree to the rounding of their dtype and cL / lse_R to fp32 rounding, on
the first pass and on a later pass (num_iters > 1: aR and cR from the update). Both key-row backward
launchers form dK and dV from the same stage-L gradients (random, with the real lse_R), on the first
pass (dK and dV written) and a later one (dK read-added, no dV). Then CUDA-graph medians of each
kernel alone and of the whole forward (and backward) with each, in the same process.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from monarchrt_ops.arch import arch_of
from monarchrt_ops.backends import cuda
from monarchrt_ops.problem import AttentionProblem
from monarchrt_ops.triton_kernels import monarch_attention as kernels

from .common import graph_ms, header

# name, b1, b2, query tiles, key tiles, causal block tiles, heads, d (bf16, batch 1)
CHECKS = [("30x52", 30, 52, 3, 4, 0, 2, 128), ("block-causal", 30, 52, 6, 6, 3, 2, 128),
          ("45x80", 45, 80, 2, 3, 0, 2, 128), ("15x26 d64", 15, 26, 5, 4, 0, 3, 64),
          ("b2=96", 8, 96, 2, 2, 0, 1, 128), ("b2=7", 9, 7, 4, 3, 0, 2, 64),
          ("b2=1", 4, 1, 3, 3, 0, 1, 128)]  # fmt: skip
TIMED = [("30x52", 30, 52, 21, 21, 0, 12, 128), ("block-causal", 30, 52, 21, 21, 3, 12, 128),
         ("720p", 45, 80, 21, 21, 0, 12, 128), ("15x26", 15, 26, 84, 84, 0, 12, 128),
         ("AR 3 vs 21", 30, 52, 3, 21, 0, 12, 128), ("90x52", 90, 52, 7, 7, 0, 12, 128)]  # fmt: skip


def _inputs(b1, b2, n_a, n_f, heads, d, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, n_a, b1, b2, heads, d, device="cuda", generator=g).to(dtype)
    k, v = (torch.randn(1, n_f, b1, b2, heads, d, device="cuda", generator=g).to(dtype) for _ in range(2))
    return q, k, v


def _rel(a, b, floor=1e-30):
    """Max |a - b| over max |b|, at least ``floor``: 1 for log-domain values (cL, lse_R), whose error is
    absolute (cL is exactly 0 when b2 = 1, where any rounding would be an infinite relative error)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(floor)).item()


def _compare(name, q, k, v, cbt, config):
    """Max relative differences of the two stage-R launchers' outputs, first pass and a later pass."""
    n_f = k.shape[1]
    bsz, n_a, b1, b2, nh, d = q.shape
    common = (nh, n_a, n_f, b1, b2, cbt)
    scale = d**-0.5
    out = {"case": name}
    a_r = c_r = None
    for pass_name in ("first", "later"):
        sc_t, sc_c = kernels._Scratch(q, n_f, with_lse_r=True), kernels._Scratch(q, n_f, with_lse_r=True)
        kernels._stage_r(q, k, v, sc_t, a_r, c_r, scale, common, config, write_lse=True)
        cuda.stage_r_wgmma(q, k, v, sc_c, a_r, c_r, scale, common, config, write_lse=True)
        torch.cuda.synchronize()
        # only the (a, f) pairs a query tile sees are written (block-causal leaves the others)
        seen = torch.ones(n_a, n_f, dtype=torch.bool, device=q.device)
        if cbt > 0:
            a_idx = torch.arange(n_a, device=q.device)[:, None]
            f_idx = torch.arange(n_f, device=q.device)[None, :]
            seen = f_idx // cbt <= a_idx // cbt
        for field in ("a_l", "y", "c_l", "lse_r"):
            t, c = getattr(sc_t, field)[:, :, seen], getattr(sc_c, field)[:, :, seen]
            out[f"{pass_name}_{field}_rel"] = _rel(c, t, 1.0 if field in ("c_l", "lse_r") else 1e-30)
            out[f"{pass_name}_{field}_finite"] = bool(torch.isfinite(c.float()).all())
        # the next pass's query: stage L and the update from the Triton scratch
        z = torch.empty(bsz, n_a, b1, b2, nh, d, dtype=q.dtype, device=q.device)
        lse = torch.empty(bsz, n_a, b1, b2, nh, dtype=torch.float32, device=q.device)
        kernels._stage_l(q, sc_t, z, lse, scale, common, config, write_z=False)
        a_r, c_r = kernels._update(q, sc_t, lse, scale, common, config)
    return out


def _grads(sc, seed=2):
    """Random stage-L gradients (daL, dY, dcL, D_R) in the scratch's layouts."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    da_l, dy = (torch.randn(sc.a_l.shape, device="cuda", generator=g).to(sc.a_l.dtype) for _ in range(2))
    dc_l, delta_r = (torch.randn(sc.c_l.shape, device="cuda", generator=g) for _ in range(2))
    return da_l, dy, dc_l, delta_r


def _compare_bwd(name, q, k, v, cbt, config):
    """Max relative differences of the two backward launchers' dK and dV (first and later pass) and dQ
    (first pass)."""
    n_f = k.shape[1]
    bsz, n_a, b1, b2, nh, d = q.shape
    common = (nh, n_a, n_f, b1, b2, cbt)
    scale = d**-0.5
    out = {"case": name}
    a_r = c_r = None
    for pass_name in ("first", "later"):
        sc = kernels._Scratch(q, n_f, with_lse_r=True)
        kernels._stage_r(q, k, v, sc, a_r, c_r, scale, common, config, write_lse=True)
        grads = _grads(sc)
        first = a_r is None
        # the first pass stores dK and dV in the dtype; a later pass adds dK to an fp32 partial (a random
        # start) and forms no dV
        start = torch.randn(k.shape[:4] + (nh, d), device="cuda")
        results = []
        for launcher in (kernels._stage_r_dkdv, cuda.stage_r_dkdv_wgmma):
            dk = torch.empty_like(start, dtype=q.dtype) if first else start.clone()
            dv = torch.empty_like(start, dtype=q.dtype) if first else None
            launcher(q, k, v, sc, a_r, c_r, grads, None if first else dk, dv, scale, common, config,
                     accumulate=not first, dk_out=dk if first else None)  # fmt: skip
            results.append((dk, dv))
        torch.cuda.synchronize()
        (dk_t, dv_t), (dk_c, dv_c) = results
        if first:  # dQ's kernel on wgmma serves the first pass: dq_out = dq + its part, in the dtype
            dq = torch.zeros(q.shape, device="cuda")  # (a partial of order 1 would drown stage R's part in bf16)
            dq_outs = [torch.empty_like(q) for _ in range(2)]
            for launcher, dq_out in zip((kernels._stage_r_dq, cuda.stage_r_dq_wgmma), dq_outs, strict=True):
                launcher(q, k, v, sc, None, None, grads, dq, dq_out, None, None, scale, common, config, has_y=True)
            torch.cuda.synchronize()
            out["first_dq_rel"] = _rel(dq_outs[1], dq_outs[0])
            out["first_dq_finite"] = bool(torch.isfinite(dq_outs[1]).all())
        out[f"{pass_name}_dk_rel"] = _rel(dk_c, dk_t)
        out[f"{pass_name}_dk_finite"] = bool(torch.isfinite(dk_c).all())
        if first:
            out[f"{pass_name}_dv_rel"] = _rel(dv_c, dv_t)
            out[f"{pass_name}_dv_finite"] = bool(torch.isfinite(dv_c).all())
        z = torch.empty(bsz, n_a, b1, b2, nh, d, dtype=q.dtype, device=q.device)
        lse = torch.empty(bsz, n_a, b1, b2, nh, dtype=torch.float32, device=q.device)
        kernels._stage_l(q, sc, z, lse, scale, common, config, write_z=False)
        a_r, c_r = kernels._update(q, sc, lse, scale, common, config)
    return out


def _timed_bwd(row, q, k, v, cbt, config, dz):
    """Stage R's dQ and dK/dV kernels alone with each launcher and, with ``dz``, the whole backward with
    the wgmma stage R and each pair of them (Triton's, wgmma's)."""
    n_f = k.shape[1]
    bsz, n_a, b1, b2, nh, d = q.shape
    common = (nh, n_a, n_f, b1, b2, cbt)
    scale = d**-0.5
    sc = kernels._Scratch(q, n_f, with_lse_r=True)
    cuda.stage_r_wgmma(q, k, v, sc, None, None, scale, common, config, write_lse=True)
    grads = _grads(sc)
    dk, dv = (torch.empty(k.shape[:4] + (nh, d), device="cuda", dtype=q.dtype) for _ in range(2))
    dq, dq_out = torch.zeros(q.shape, device="cuda"), torch.empty_like(q)
    for label, launcher in (("triton", kernels._stage_r_dq), ("wgmma", cuda.stage_r_dq_wgmma)):
        row[f"dq_{label}_ms"] = graph_ms(
            lambda launcher=launcher: launcher(
                q, k, v, sc, None, None, grads, dq, dq_out, None, None, scale, common, config, has_y=True
            )
        )
    out = []
    z, lse = kernels.monarch_attention_fwd(q, k, v, sm_scale=scale, causal_block_tiles=cbt, num_iters=1, config=config)
    dlse = torch.zeros_like(lse)
    for label, launcher in (("triton", kernels._stage_r_dkdv), ("wgmma", cuda.stage_r_dkdv_wgmma)):
        launchers = {
            "stage_r_dkdv": launcher,
            "stage_r_dq": kernels._stage_r_dq if label == "triton" else cuda.stage_r_dq_wgmma,
        }
        row[f"dkdv_{label}_ms"] = graph_ms(
            lambda launcher=launcher: launcher(
                q, k, v, sc, None, None, grads, None, dv, scale, common, config, accumulate=False, dk_out=dk
            )
        )
        if dz is None:
            continue
        bwd = dict(sm_scale=scale, causal_block_tiles=cbt, num_iters=1, config=config,
                   stage_r=cuda.stage_r_wgmma, **launchers)  # fmt: skip
        row[f"backward_wgmma_stage_r_bwd_{label}_ms"] = graph_ms(
            lambda bwd=bwd: kernels.monarch_attention_bwd(dz, dlse, q, k, v, z, lse, **bwd)
        )
        out.append(kernels.monarch_attention_bwd(dz, dlse, q, k, v, z, lse, **bwd))
    if out:
        row["backward_stage_r_bwd_rel"] = [_rel(c, t) for c, t in zip(out[1], out[0], strict=True)]


def _timed_launcher(row, label, stage_r, q, k, v, cbt, config, dz):
    """Times of one stage-R launcher: stage R alone, the forward (one and two passes) and, with ``dz``,
    the backward (of the Triton forward's z and lse, the same for both launchers); -> the gradients."""
    n_f = k.shape[1]
    bsz, n_a, b1, b2, nh, d = q.shape
    common = (nh, n_a, n_f, b1, b2, cbt)
    scale = d**-0.5
    sc = kernels._Scratch(q, n_f)
    fwd = dict(sm_scale=scale, causal_block_tiles=cbt, config=config, stage_r=stage_r)
    row[f"stage_r_{label}_ms"] = graph_ms(lambda: stage_r(q, k, v, sc, None, None, scale, common, config))
    row[f"forward_{label}_ms"] = graph_ms(lambda: kernels.monarch_attention_fwd(q, k, v, num_iters=1, **fwd))
    if n_a == n_f:
        row[f"forward_iters2_{label}_ms"] = graph_ms(lambda: kernels.monarch_attention_fwd(q, k, v, num_iters=2, **fwd))
    if dz is None:
        return None
    z, lse = kernels.monarch_attention_fwd(q, k, v, sm_scale=scale, causal_block_tiles=cbt, num_iters=1, config=config)
    dlse = torch.zeros_like(lse)

    def bwd():
        return kernels.monarch_attention_bwd(dz, dlse, q, k, v, z, lse, num_iters=1, **fwd)

    row[f"backward_{label}_ms"] = graph_ms(bwd)
    return bwd()


def _timed(name, q, k, v, cbt, config, with_backward: bool):
    row = {"case": name}
    gen = torch.Generator(device="cuda").manual_seed(1)
    dz = torch.randn(q.shape, device=q.device, generator=gen).to(q.dtype) if with_backward else None
    grads_t = _timed_launcher(row, "triton", kernels._stage_r, q, k, v, cbt, config, dz)
    grads_c = _timed_launcher(row, "wgmma", cuda.stage_r_wgmma, q, k, v, cbt, config, dz)
    if with_backward:
        row["backward_rel"] = [_rel(c, t) for c, t in zip(grads_c, grads_t, strict=True)]
    fwd = dict(sm_scale=q.shape[5] ** -0.5, causal_block_tiles=cbt, num_iters=1, config=config)
    z_t, _ = kernels.monarch_attention_fwd(q, k, v, **fwd)
    z_c, _ = kernels.monarch_attention_fwd(q, k, v, **fwd, stage_r=cuda.stage_r_wgmma)
    row["forward_rel"] = _rel(z_c, z_t)
    if cuda.stage_r_bwd_reason(_problem_of(q, k, cbt), arch_of("cuda")) is None:
        _timed_bwd(row, q, k, v, cbt, config, dz)
    return row


def _problem_of(q, k, cbt):
    bsz, n_a, b1, b2, nh, d = q.shape
    return AttentionProblem(batch=bsz, heads=nh, q_tiles=n_a, kv_tiles=k.shape[1], b1=b1, b2=b2, head_dim=d,
                            dtype=q.dtype, causal_block_tiles=cbt, num_iters=1, sm_scale=d**-0.5,
                            backward=True)  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="checks only, no timing")
    ap.add_argument("--cases", nargs="+", choices=[row[0] for row in TIMED], help="time only these (default: all)")
    args = ap.parse_args(argv)
    from monarchrt_ops import registry

    def config_for(b1, b2, n_a, n_f, cbt, heads, d):
        p = AttentionProblem(
            batch=1,
            heads=heads,
            q_tiles=n_a,
            kv_tiles=n_f,
            b1=b1,
            b2=b2,
            head_dim=d,
            dtype=torch.bfloat16,
            causal_block_tiles=cbt,
            num_iters=1,
            sm_scale=d**-0.5,
            backward=False,
        )
        return registry.select("attention", p, arch_of("cuda"), "triton").config

    result = {"header": header(), "checks": [], "timed": []}
    worst = 0.0
    for name, b1, b2, n_a, n_f, cbt, heads, d in CHECKS:
        q, k, v = _inputs(b1, b2, n_a, n_f, heads, d, torch.bfloat16)
        config = config_for(b1, b2, n_a, n_f, cbt, heads, d)
        row = _compare(name, q, k, v, cbt, config)
        if cuda.stage_r_bwd_reason(_problem_of(q, k, cbt), arch_of("cuda")) is None:
            row.update(_compare_bwd(name, q, k, v, cbt, config))
        print(json.dumps(row), flush=True)
        result["checks"].append(row)
        worst = max(worst, *(x for key, x in row.items() if key.endswith("_rel")))
        if not all(x for key, x in row.items() if key.endswith("_finite")):
            worst = math.inf
    print(f"worst relative difference {worst:.3g}", flush=True)
    if not args.quick:
        for name, b1, b2, n_a, n_f, cbt, heads, d in TIMED:
            if args.cases and name not in args.cases:
                continue
            q, k, v = _inputs(b1, b2, n_a, n_f, heads, d, torch.bfloat16)
            config = config_for(b1, b2, n_a, n_f, cbt, heads, d)
            row = _timed(name, q, k, v, cbt, config, name in ("30x52", "720p", "AR 3 vs 21"))
            print(json.dumps(row), flush=True)
            result["timed"].append(row)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if worst < 2e-2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
