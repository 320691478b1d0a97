"""Configs of the Triton backend, one stage at a time, timed in the whole Triton forward (or backward).

python -m monarchrt_ops.bench.sweep_forward [--stage r|l|bwd-l] [--cases NAME ...] [--json PATH]

For each case: the backend default and every config of a short list that ``is_valid`` accepts
(stage R: ``fwd_block_m x fwd_block_l x fwd_warps x num_stages``; stage L: ``fwd_block_k x
l_warps``; the backward's fused stage-L kernel: ``block_k x l_warps``, timed in the Triton
backward; ``bwd_block_k`` steps only the unfused dQ kernel (b1 over the fused limit, none of these
cases) and the delta kernel (num_iters > 1)), CUDA-graph replay time, the other keys at their defaults.
Feeds the defaults and the tuner's space (docs/attention-kernels.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

import monarchrt_ops as m
from monarchrt_ops.arch import arch_of
from monarchrt_ops.problem import AttentionProblem
from monarchrt_ops.registry import get_backend

from .common import graph_ms, header

CASES = {"30x52": ((30, 52), {}), "45x80": ((45, 80), {}), "15x26": ((30, 52), {"h_reduce": 2, "w_reduce": 2})}


SCALE = 128**-0.5


def _forward_and_grads(q, k, v, config):
    """z, lse of the Triton forward and the output gradients the backward sweep feeds it."""
    from monarchrt_ops.triton_kernels.monarch_attention import monarch_attention_fwd

    z, lse = monarch_attention_fwd(q, k, v, sm_scale=SCALE, causal_block_tiles=0, num_iters=1, config=config)
    return z, lse, torch.randn_like(z), torch.zeros_like(lse)


def _call(stage, q, k, v, z, lse, dz, dlse, config):
    from monarchrt_ops.triton_kernels.monarch_attention import monarch_attention_bwd, monarch_attention_fwd

    kw = {"sm_scale": SCALE, "causal_block_tiles": 0, "num_iters": 1, "config": config}
    if stage == "bwd-l":
        return monarch_attention_bwd(dz, dlse, q, k, v, z, lse, **kw)
    return monarch_attention_fwd(q, k, v, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--stage", choices=("r", "l", "bwd-l"), default="r")
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = p.parse_args(argv)

    backend = get_backend("attention", "triton")
    arch = arch_of(torch.device("cuda"))
    out = {"header": header(), "cases": {}}
    for name in args.cases:
        frame, kw = CASES[name]
        tiling = m.make_tiling(frame, **kw)
        hw = frame[0] * frame[1]
        q, k, v = (
            m.to_tiles(torch.randn(1, args.frames * hw, 12, 128, device="cuda", dtype=torch.bfloat16), tiling)
            for _ in range(3)
        )
        prob = AttentionProblem.from_tiles(q, k, 0, 1)
        base = backend.default_config(prob, arch)
        rows = []
        widest_l = max(16, 1 << (tiling.b2 - 1).bit_length())
        if args.stage == "r":
            keys = ("fwd_block_m", "fwd_block_l", "fwd_warps", "num_stages")
            grid = itertools.product([64, 128], [widest_l // 2, widest_l], [4, 8], [2, 3])
        elif args.stage == "l":
            keys = ("fwd_block_k", "l_warps")
            grid = itertools.product([32, 64, 128], [4, 8])
        else:
            keys = ("block_k", "l_warps")
            grid = itertools.product([16, 32, 64], [4, 8])
        tensors = (q, k, v, *_forward_and_grads(q, k, v, base))

        for cfg in [None, *grid]:
            config = dict(base)
            if cfg is not None:
                config.update(zip(keys, cfg, strict=True))
            if backend.is_valid(config, prob, arch) is not None:
                continue
            try:
                ms = graph_ms(lambda c=config, t=tensors: _call(args.stage, *t, c))
            except Exception as e:  # noqa: BLE001 - a config that fails to compile is recorded
                ms = None
                config["error"] = str(e).splitlines()[0][:200]
            rows.append({"default": cfg is None, "ms": ms, **config})
            print(name, "default" if cfg is None else cfg, ms, flush=True)
        out["cases"][name] = sorted(rows, key=lambda r: r["ms"] or 1e9)
        best = out["cases"][name][0]
        print(f"BEST {name}: {best['ms']:.3f} ms {best}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
