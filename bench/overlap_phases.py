"""Does stage L of one group of heads, on a second stream, run beside stage R of the next group?

python -m monarchrt_ops.bench.overlap_phases [--json PATH]

docs/attention-kernels.md, decomposition (b): the same Triton kernels and configs as the automatic
forward (num_iters = 1), heads split into C chunks; per chunk stage R on the current stream and
stage L on a side stream that waits for it ("overlap"), or both on one stream ("seq"). CUDA-graph
medians beside the one-launch-per-phase forward and each phase alone; the chunked outputs are
checked bit-equal to the forward's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from monarchrt_ops import registry
from monarchrt_ops.arch import arch_of
from monarchrt_ops.problem import AttentionProblem
from monarchrt_ops.triton_kernels import monarch_attention as kernels

from .common import graph_ms, header

# name, b1, b2, query tiles, key tiles, causal block tiles (12 heads, d = 128, bf16)
CASES = [("30x52", 30, 52, 21, 21, 0), ("block-causal", 30, 52, 21, 21, 3), ("720p", 45, 80, 21, 21, 0),
         ("15x26", 15, 26, 84, 84, 0), ("AR 3 vs 21", 30, 52, 3, 21, 0)]  # fmt: skip
CHUNKS = (2, 3, 4, 6)


def _chunked(q, k, v, cbt, cfg, sm_scale, chunks: int, overlap: bool):
    """-> (a function running the chunked forward, a function returning its z)."""
    bsz, n_a, b1, b2, nh, d = q.shape
    n_f = k.shape[1]
    heads = [(i * nh // chunks, (i + 1) * nh // chunks) for i in range(chunks)]
    zs = [torch.empty(bsz, n_a, b1, b2, h1 - h0, d, device=q.device, dtype=q.dtype) for h0, h1 in heads]
    lses = [torch.empty(bsz, n_a, b1, b2, h1 - h0, device=q.device, dtype=torch.float32) for h0, h1 in heads]
    scratch = [kernels._Scratch(q[..., h0:h1, :], n_f) for h0, h1 in heads]
    side = torch.cuda.Stream()

    def run():
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        for (h0, h1), z, lse, sc in zip(heads, zs, lses, scratch, strict=True):
            qc, kc, vc = q[..., h0:h1, :], k[..., h0:h1, :], v[..., h0:h1, :]
            common = (h1 - h0, n_a, n_f, b1, b2, cbt)
            kernels._stage_r(qc, kc, vc, sc, None, None, sm_scale, common, cfg)
            if overlap:
                done = torch.cuda.Event()
                done.record(main)
                side.wait_event(done)
                with torch.cuda.stream(side):
                    kernels._stage_l(qc, sc, z, lse, sm_scale, common, cfg, True)
            else:
                kernels._stage_l(qc, sc, z, lse, sm_scale, common, cfg, True)
        main.wait_stream(side)

    return run, lambda: torch.cat(zs, dim=4)


def measure_case(name, b1, b2, n_a, n_f, cbt) -> dict:
    nh, d, dtype = 12, 128, torch.bfloat16
    q = torch.randn(1, n_a, b1, b2, nh, d, device="cuda", dtype=dtype)
    k = torch.randn(1, n_f, b1, b2, nh, d, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    problem = AttentionProblem(1, nh, d, b1, b2, n_a, n_f, cbt, 1, dtype)
    cfg = registry.select("attention", problem, arch_of("cuda"), backend="triton").config
    s = d**-0.5

    def forward():
        return kernels.monarch_attention_fwd(q, k, v, sm_scale=s, causal_block_tiles=cbt, num_iters=1, config=cfg)

    z_ref = forward()[0]
    row = {"case": name, "b1": b1, "b2": b2, "q_tiles": n_a, "kv_tiles": n_f, "config": cfg}
    row["forward_ms"] = graph_ms(forward)
    for chunks in CHUNKS:
        for overlap in (False, True):
            run, z_of = _chunked(q, k, v, cbt, cfg, s, chunks, overlap)
            label = f"C{chunks}_{'overlap' if overlap else 'seq'}"
            row[label + "_ms"] = graph_ms(run)
            row[label + "_bit_equal"] = bool(torch.equal(z_of(), z_ref))
    sc = kernels._Scratch(q, n_f)
    common = (nh, n_a, n_f, b1, b2, cbt)
    z, lse = torch.empty_like(z_ref), torch.empty(z_ref.shape[:-1], device="cuda", dtype=torch.float32)
    row["stage_r_ms"] = graph_ms(lambda: kernels._stage_r(q, k, v, sc, None, None, s, common, cfg))
    row["stage_l_ms"] = graph_ms(lambda: kernels._stage_l(q, sc, z, lse, s, common, cfg, True))
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    out = {"header": header(), "rows": []}
    for case in CASES:
        row = measure_case(*case)
        print(json.dumps(row), flush=True)
        out["rows"].append(row)
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
