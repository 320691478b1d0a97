"""What every benchmark shares: the header, the timer, the ceilings."""

from __future__ import annotations

import torch
import triton


def header() -> dict:
    p = torch.cuda.get_device_properties(0)
    return {
        "gpu": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
        "cudnn": torch.backends.cudnn.version(),
    }  # fmt: skip


def bench_ms(fn) -> float:
    """Median ms over CUDA events, L2 flushed between runs (triton.testing.do_bench)."""
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def graph_ms(fn) -> float:
    """Like bench_ms, for ``fn`` captured once in a CUDA graph: kernel time without host dispatch."""
    fn()  # compile and allocate outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench_ms(graph.replay)


def ceilings() -> dict:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm = bench_ms(lambda: a @ a)
    x = torch.empty(2**30, device="cuda", dtype=torch.uint8)
    cp = bench_ms(lambda: x.clone())
    return {"bf16_matmul_tflops": 2 * 8192**3 / mm / 1e9, "clone_tb_s": 2 * 2**30 / cp / 1e9}
