"""Fused CUDA forward vs Triton on tile sizes other than the benchmark shapes' 30x52 (bf16, 12 heads,
d=128, 21 frames): where automatic selection's choice of `cuda` on sm_90 was checked. The `mma.sync`
column is the CUDA forward's portable stage R (what sm_100a and sm_120a run) forced on this GPU.

    python bench/compare_tile_sizes.py   # on a GPU machine, after bench/device_run.sh installed the package
"""

import torch
from triton.testing import do_bench

import monarchrt_ops as m
from monarchrt_ops.backends.cuda import CudaAttention

TILES = [(30, 52), (32, 64), (16, 32), (8, 16), (24, 40)]


def time_backends(b1: int, b2: int, gen: torch.Generator) -> dict[str, float]:
    q, k, v = (
        torch.randn(1, 21 * b1 * b2, 12, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)
    )

    def ms(backend: str) -> float:
        return do_bench(lambda: m.monarch_attention(q, k, v, (b1, b2), backend=backend), return_mode="median")

    out = {"cuda": ms("cuda"), "triton": ms("triton")}
    CudaAttention.mma_sync_only = True
    try:
        out["cuda_mma_sync"] = ms("cuda")
    finally:
        CudaAttention.mma_sync_only = False
    return out


if __name__ == "__main__":
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"{'tile':>8} {'cuda ms':>9} {'mma.sync ms':>12} {'triton ms':>10} {'triton/cuda':>12}")
    for b1, b2 in TILES:
        t = time_backends(b1, b2, gen)
        print(
            f"{b1:>3}x{b2:<4} {t['cuda']:9.3f} {t['cuda_mma_sync']:12.3f} {t['triton']:10.3f} "
            f"{t['triton'] / t['cuda']:12.2f}"
        )
