"""What the tuner measures: one op at one shape on one device, checked against the reference.

A case builds its inputs once, computes the reference result once (fp32, on the same device),
and times a config only after its output passed the docs/testing.md tolerance. ``describe()`` is stored in
the table entry, so ``verify`` and ``warmup`` rebuild the same case with ``case_from``.
"""

from __future__ import annotations

import torch

from .search import Measurement
from .shapes import attention_inputs, shape_by_name

TOLERANCE = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3, torch.float32: 5e-4}  # docs/testing.md (fp32: tf32)
DTYPE_BY_NAME = {str(d).removeprefix("torch."): d for d in TOLERANCE}  # "bfloat16" -> torch.bfloat16


def do_bench_timer(fn, rep_ms: int) -> tuple[float, float, float]:
    """(median, p20, p80) ms with CUDA events and L2 flushes."""
    import triton

    p50, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return p50, p20, p80


def _rel(out, ref) -> float:
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


class Case:
    """Subclasses set op, backend, arch, problem, dtype and ref (a tuple of tensors), and run(config)."""

    op: str

    def __init__(self, backend_name: str, device: str, timer):
        from ..arch import arch_of
        from ..registry import get_backend

        self.backend = get_backend(self.op, backend_name)
        self.reference = get_backend(self.op, "reference")
        self.arch = arch_of(device)
        self.device = device
        self.timer = timer or do_bench_timer

    def measure(self, config, rep_ms: int = 100) -> Measurement:
        try:
            out = self.run(config)
            err = max(_rel(o, r) for o, r in zip(out, self.ref, strict=True))
            if not err < TOLERANCE[self.dtype]:
                return Measurement(float("inf"), rel_err=err, ok=False, error=f"rel_err {err:.3g}")
            p50, p20, p80 = self.timer(lambda: self.run(config), rep_ms)
        except Exception as e:  # a config the compiler or the device rejects loses, with its reason
            return Measurement(float("inf"), ok=False, error=f"{type(e).__name__}: {str(e)[:200]}")
        return Measurement(p50, (p20, p80), err)


class AttentionCase(Case):
    op = "attention"

    def __init__(self, shape_name: str, dtype, backward: bool, backend_name="triton", device="cuda", timer=None):
        from .. import make_tiling, to_tiles
        from ..layout import causal_block_tiles
        from ..problem import AttentionProblem

        super().__init__(backend_name, device, timer)
        shape = shape_by_name(shape_name)
        self.shape_name, self.dtype, self.backward = shape_name, dtype, backward
        tiling = make_tiling(shape.frame_shape)
        self.q, self.k, self.v = (to_tiles(x, tiling) for x in attention_inputs(shape, dtype, device))
        cbt = causal_block_tiles(tiling, shape.causal_block_frames or 0)
        self.problem = AttentionProblem.from_tiles(self.q, self.k, cbt, 1, backward=backward)
        self.kw = {"sm_scale": shape.head_dim**-0.5, "causal_block_tiles": cbt, "num_iters": 1}
        with torch.no_grad():
            q32, k32, v32 = (x.float() for x in (self.q, self.k, self.v))
            z, lse = self.reference.launch({}, q32, k32, v32, **self.kw)
            if backward:
                gen = torch.Generator(device=device).manual_seed(1)
                self.dz = torch.randn(z.shape, device=device, generator=gen).to(dtype)
                self.dlse = torch.zeros_like(lse)
                self.ref = self.reference.launch_backward(
                    {}, self.dz.float(), self.dlse, q32, k32, v32, z, lse, **self.kw
                )
                default = self.backend.default_config(self.problem, self.arch)
                self.z, self.lse = self.backend.launch(default, self.q, self.k, self.v, **self.kw)
            else:
                self.ref = (z,)

    def run(self, config):
        if self.backward:
            return self.backend.launch_backward(config, self.dz, self.dlse, self.q, self.k, self.v, self.z,
                                                self.lse, **self.kw)  # fmt: skip
        return self.backend.launch(config, self.q, self.k, self.v, **self.kw)[:1]

    def describe(self) -> dict:
        return {"op": self.op, "shape": self.shape_name, "backward": self.backward}


class HadamardCase(Case):
    op = "hadamard"

    def __init__(self, n: int, rows: int, dtype, backend_name="triton", device="cuda", timer=None):
        from ..hadamard import supported_size
        from ..problem import HadamardProblem
        from ..structured_reference import reference_hadamard

        super().__init__(backend_name, device, timer)
        self.n, self.rows, self.dtype = n, rows, dtype
        self.m, self.n2 = supported_size(n)
        gen = torch.Generator(device=device).manual_seed(0)
        self.x = torch.randn(rows, n, device=device, generator=gen).to(dtype)
        self.out = torch.empty_like(self.x)
        self.problem = HadamardProblem(rows, n, self.m, dtype)
        self.kw = {"m": self.m, "n2": self.n2, "scale": n**-0.5, "transpose": False, "fp32_intermediate": False}
        self.ref = (reference_hadamard(self.x.float(), self.m, self.n2, n**-0.5, False),)

    def run(self, config):
        return (self.backend.launch(config, self.x, self.out, **self.kw),)

    def describe(self) -> dict:
        return {"op": self.op, "n": self.n, "rows": self.rows}


class MonarchMatmulCase(Case):
    op = "monarch_matmul"

    def __init__(self, rows: int, w1_shape, w2_shape, dtype, backend_name="triton", device="cuda", timer=None):
        from ..problem import MonarchMatmulProblem
        from ..structured_reference import reference_monarch_matmul

        super().__init__(backend_name, device, timer)
        self.rows, self.w1_shape, self.w2_shape, self.dtype = rows, tuple(w1_shape), tuple(w2_shape), dtype
        gen = torch.Generator(device=device).manual_seed(0)
        self.w1 = (torch.randn(*w1_shape, device=device, generator=gen) / w1_shape[2] ** 0.5).to(dtype)
        self.w2 = (torch.randn(*w2_shape, device=device, generator=gen) / w2_shape[2] ** 0.5).to(dtype)
        self.x = torch.randn(rows, w1_shape[0] * w1_shape[2], device=device, generator=gen).to(dtype)
        self.problem = MonarchMatmulProblem(rows, self.w1_shape, self.w2_shape, dtype)
        self.ref = (reference_monarch_matmul(self.x.float(), self.w1.float(), self.w2.float()),)

    def run(self, config):
        return (self.backend.launch(config, self.x, self.w1, self.w2),)

    def describe(self) -> dict:
        return {"op": self.op, "rows": self.rows, "w1_shape": list(self.w1_shape), "w2_shape": list(self.w2_shape)}


def case_from(desc: dict, dtype, backend_name: str, device: str = "cuda", timer=None) -> Case:
    """Rebuild the case a table entry was measured on."""
    kw = {"backend_name": backend_name, "device": device, "timer": timer}
    if desc["op"] == "attention":
        return AttentionCase(desc["shape"], dtype, desc["backward"], **kw)
    if desc["op"] == "hadamard":
        return HadamardCase(desc["n"], desc["rows"], dtype, **kw)
    if desc["op"] == "monarch_matmul":
        return MonarchMatmulCase(desc["rows"], desc["w1_shape"], desc["w2_shape"], dtype, **kw)
    raise ValueError(f"no tuner case for op {desc['op']!r}")
