"""What the Triton forward stages would take with their scratch in L2: the bound of an L2 pipeline.

python -m monarchrt_ops.bench.l2_bound [--json PATH]

A measurement tool, not a kernel: it copies the attention kernel sources into a temporary package and
takes every scratch row index (aL, Y, cL) modulo WINDOW rows, so the kernels issue the same
instructions but every intermediate line lands in a 17 MB or 34 MB window that stays in L2 (the
chunk and the two chunk slots of the pipeline in docs/attention-kernels.md). The outputs are then
wrong; only the times matter. Stage R alone, stage L alone and both, under CUDA graphs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import tempfile
from pathlib import Path

import torch
import triton

import monarchrt_ops as m
from monarchrt_ops.arch import arch_of
from monarchrt_ops.backends.triton import TritonAttention
from monarchrt_ops.problem import AttentionProblem

from .common import graph_ms, header

CASES = {"30x52": ((30, 52), {}), "45x80": ((45, 80), {}), "15x26": ((30, 52), {"h_reduce": 2, "w_reduce": 2})}
WINDOWS = {"hbm": 0, "l2_17MB": 32768, "l2_34MB": 65536}  # rows of 4 d + 4 = 516 bytes
_KERNEL_FILES = ("monarch_attention.py", "monarch_attention_fwd.py", "monarch_attention_bwd.py")


def _windowed_kernels(root: Path, name: str, window: int):
    """The launcher module of a copy of the kernels whose scratch rows wrap at ``window``."""
    from monarchrt_ops import triton_kernels

    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    src = Path(triton_kernels.__file__).parent
    for f in _KERNEL_FILES:
        s = (src / f).read_text()
        if f == "monarch_attention_fwd.py" and window:
            s = s.replace("RUNTIME_ARGS = ", f"WINDOW = tl.constexpr({window})\nRUNTIME_ARGS = ", 1)
            s, n_r = re.subn(r"(out_rows = )(\(afk_base \* b2 \+ j\) \* b1 \+ k_row)", r"\1(\2) % WINDOW", s)
            s, n_l = re.subn(r"(rows = )(_flat_key_rows\([^)]*\))", r"\1\2 % WINDOW", s)
            if (n_r, n_l) != (1, 1):
                raise RuntimeError(f"kernel source changed: {n_r} stage-R and {n_l} stage-L scratch rows found")
        (pkg / f).write_text(s)
    return importlib.import_module(f"{name}.monarch_attention")


def _time_windows(kernels: dict, q, k, v) -> dict:
    """Stage R, stage L and both for each windowed copy of the kernels, at the backend defaults."""
    scale = 128**-0.5
    cfg = TritonAttention().default_config(AttentionProblem.from_tiles(q, k, 0, 1), arch_of(q.device))
    n_a, b1, b2, nh, d = q.shape[1:]
    common = (nh, n_a, k.shape[1], b1, b2, 0)
    z, lse = torch.empty_like(q), torch.empty(q.shape[:5], device=q.device)
    grid_l = (n_a * b2, triton.cdiv(b1, cfg["block_i"]), nh)
    rows = {}
    for label, mod in kernels.items():
        sc = mod._Scratch(q, k.shape[1])

        def stage_r(mod=mod, sc=sc):
            mod._stage_r(q, k, v, sc, None, None, scale, common, cfg)

        def stage_l(mod=mod, sc=sc):
            mod._stage_l_fwd[grid_l](
                q, sc.a_l, sc.y, sc.c_l, z, lse, scale, *q.stride()[:5], *common,
                WRITE_Z=True, HEAD_DIM=d, DOT_PRECISION="tf32", BLOCK_I=cfg["block_i"],
                BLOCK_K=cfg["fwd_block_k"], num_warps=cfg["l_warps"], num_stages=cfg["num_stages"],
            )  # fmt: skip

        def both(stage_r=stage_r, stage_l=stage_l):
            stage_r()
            stage_l()

        rows[label] = {"stage_r_ms": graph_ms(stage_r), "stage_l_ms": graph_ms(stage_l), "forward_ms": graph_ms(both)}
        del sc
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp())
    sys.path.insert(0, str(root))
    kernels = {label: _windowed_kernels(root, f"windowed_{w}", w) for label, w in WINDOWS.items()}
    out = {"header": header(), "windows_rows": WINDOWS, "cases": {}}
    for name, (frame, kw) in CASES.items():
        tiling = m.make_tiling(frame, **kw)
        n = 21 * frame[0] * frame[1]
        q, k, v = (m.to_tiles(torch.randn(1, n, 12, 128, device="cuda", dtype=torch.bfloat16), tiling) for _ in "qkv")
        out["cases"][name] = _time_windows(kernels, q, k, v)
        for label, row in out["cases"][name].items():
            print(name, label, {key: round(val, 3) for key, val in row.items()}, flush=True)
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
