"""Per-kernel GPU time of the Monarch matmul backends (torch.profiler): which kernel of a multi-kernel
op to work on, with each kernel's effective bandwidth against what it must move.

    python bench/kernel_times.py [--backward]   # on a GPU machine, after bench/device_run.sh installed it

``--backward`` profiles ``monarch_matmul_backward`` instead: Triton's kernels against the closed form
(the reference backend's einsums).
"""

import argparse
import functools

import torch
from torch.profiler import ProfilerActivity, profile

import monarchrt_ops as m
from monarchrt_ops.autotune.shapes import MONARCH_MATMUL_SHAPES

REPS = 20


def kernel_us(fn) -> dict[str, float]:
    """Mean microseconds per call of each CUDA kernel ``fn`` launches."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPS):
            fn()
        torch.cuda.synchronize()
    return {
        e.key: e.device_time_total / REPS
        for e in prof.key_averages()
        if e.device_time_total > 0 and not e.key.startswith("aten::")
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backward", action="store_true", help="the backward op, Triton against the closed form")
    backward = p.parse_args().backward
    for name, rows, s1, s2 in MONARCH_MATMUL_SHAPES:
        x = torch.randn(rows, s1[0] * s1[2], device="cuda", dtype=torch.bfloat16)
        w1 = torch.randn(*s1, device="cuda", dtype=torch.bfloat16) / s1[2] ** 0.5
        w2 = torch.randn(*s2, device="cuda", dtype=torch.bfloat16) / s2[2] ** 0.5
        mb_in, mb_mid, mb_out = (rows * c * 2 / 1e6 for c in (s1[0] * s1[2], s1[0] * s1[1], s2[0] * s2[1]))
        print(f"{name}: x {mb_in:.0f} MB, y1 {mb_mid:.0f} MB, out {mb_out:.0f} MB")
        if backward:
            dout = torch.randn(rows, s2[0] * s2[1], device="cuda", dtype=torch.bfloat16)
            calls = {b: functools.partial(torch.ops.monarchrt.monarch_matmul_backward, dout, x, w1, w2, b)
                     for b in ("triton", "reference")}  # fmt: skip
        else:
            calls = {b: functools.partial(m.monarch_matmul, x, w1, w2, backend=b) for b in ("triton", "cuda")}
        for backend, call in calls.items():
            times = kernel_us(call)
            print(f"  {backend:9} {sum(times.values()):8.1f} us in all")
            for kernel, us in times.items():
                print(f"  {backend:9} {us:8.1f} us  {kernel[:90]}")
