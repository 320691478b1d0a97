"""Host overhead per call: eager calls against the same calls replayed from a CUDA graph.

python -m monarchrt_ops.bench.host_overhead [--json PATH] [--calls N] [--profile] [--cpu-host-path]

For each small problem (attention on 30x52 frames, 12 heads, d=128, bf16: 1 vs 1, 3 vs 3 and
3 vs 21 frames, and the KV-cache call 3 vs 21; a small Hadamard and Monarch matmul), under
torch.no_grad:

- ``eager_ms``: wall time per call of N back-to-back eager calls, one synchronisation at the end
  (when the host is slower than the kernels, this is the host's time per call);
- ``graph_ms``: the same, replaying one call captured in a CUDA graph (the kernels' time, no Python);
- ``host_overhead_ms = eager_ms - graph_ms``; the target is <= 0.025 ms (docs/design.md);
- ``host_us``: microseconds of Python per eager call, timed without waiting for the GPU (where the
  kernels take longer than the host, the launch queue fills and this approaches the GPU time);
- ``op_eager_ms``: attention through ``torch.ops.<namespace>.attention`` (the dispatcher path that
  autograd and torch.compile take) on the same tile-order tensors, for comparison;
- ``sdpa_<backend>_eager_ms`` / ``_graph_ms`` and ``sdpa_fastest_*``: dense SDPA on the same tokens.

``--profile`` adds the 15 functions with the most own time (cProfile) per eager call to each row.

``--cpu-host-path`` needs no GPU: it times the Python of each eager call on small CPU tensors with
the GPU parts stubbed (:func:`stubbed_gpu`): the device is said to be an H200 (so selection and
tables act as there, ``backend='triton'`` named), the Triton kernels are compiled for a GPU (not
interpreted) and every launch goes through ``triton_kernels/_launch.py``'s cache, whose hit path runs
as on the GPU up to the compiled launcher, which is a no-op. Per case: ``us`` (microseconds per
call, best of 5 loops of N calls), ``python_calls`` (Python-level function calls per call, counted
with ``sys.setprofile``: a machine-independent measure, which tests/test_fast_path.py bounds) and
with ``--profile`` the cProfile rows. The GPU's own costs (the launch itself, CUDA allocations) are
not in it: it is the Python path only, not the GPU's host overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import sys
import time
import types
from pathlib import Path
from unittest import mock

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import monarchrt_ops as m
from monarchrt_ops import ops

from .common import header

SDPA_BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
FRAME = (30, 52)
ATTENTION_CASES = [(1, 1), (3, 3), (3, 21)]  # (query frames, key frames)
TARGET_MS = 0.025


def loop_ms(fn, calls: int) -> float:
    """Wall ms per call of ``calls`` back-to-back calls, synchronised once at the end."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) * 1e3 / calls)
    return best


def host_us(fn, calls: int) -> float:
    """Microseconds of Python per call, not waiting for the GPU (a sync only between the repeats)."""
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) * 1e6 / calls)
    return best


def graph_loop_ms(fn, calls: int) -> float:
    """:func:`loop_ms` of ``fn`` captured once in a CUDA graph."""
    fn()  # compile and allocate outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return loop_ms(graph.replay, calls)


def profile_top(fn, calls: int, top: int = 15) -> list[str]:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    if torch.cuda.is_available():  # (--cpu-host-path runs on the CPU)
        torch.cuda.synchronize()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime")
    rows = []
    for (path, line, name), (_, ncalls, tottime, cumtime, _) in list(stats.stats.items()):
        rows.append((tottime, f"{tottime * 1e6 / calls:7.2f} us own, {cumtime * 1e6 / calls:7.2f} us cum "
                              f"{ncalls // calls:3d}x {Path(path).name}:{line}({name})"))  # fmt: skip
    return [text for _, text in sorted(rows, reverse=True)[:top]]


def measure(name: str, fn, calls: int, profile: bool, **extra) -> dict:
    row = {"case": name, **extra}
    row["eager_ms"] = loop_ms(fn, calls)
    row["graph_ms"] = graph_loop_ms(fn, calls)
    row["host_overhead_ms"] = row["eager_ms"] - row["graph_ms"]
    row["host_us"] = host_us(fn, calls)
    row["meets_target"] = row["host_overhead_ms"] <= TARGET_MS
    if profile:
        row["profile"] = profile_top(fn, calls)
    return row


def attention_rows(calls: int, profile: bool) -> list[dict]:
    rows = []
    hw = FRAME[0] * FRAME[1]
    gen = torch.Generator(device="cuda").manual_seed(0)
    tiling = m.make_tiling(FRAME)
    for fq, fk in ATTENTION_CASES:

        def mk(frames):
            return torch.randn(1, frames * hw, 12, 128, device="cuda", dtype=torch.bfloat16, generator=gen)

        q, k, v = mk(fq), mk(fk), mk(fk)
        row = measure(f"attention {fq} vs {fk} frames", lambda q=q, k=k, v=v: m.monarch_attention(q, k, v, FRAME),
                      calls, profile, q_frames=fq, kv_frames=fk)  # fmt: skip
        qt, kt, vt = (m.to_tiles(x, tiling) for x in (q, k, v))
        row["op_eager_ms"] = loop_ms(lambda qt=qt, kt=kt, vt=vt: ops.attention(qt, kt, vt, 128**-0.5, 0, 1, ""), calls)
        for sdpa, be in SDPA_BACKENDS.items():
            qs, ks, vs = (x.transpose(1, 2) for x in (q, k, v))

            def dense(qs=qs, ks=ks, vs=vs, be=be):
                with sdpa_kernel(be):
                    return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs)

            try:
                row[f"sdpa_{sdpa}_eager_ms"] = loop_ms(dense, calls)
                row[f"sdpa_{sdpa}_graph_ms"] = graph_loop_ms(dense, calls)
            except RuntimeError as e:
                row[f"sdpa_{sdpa}_error"] = str(e).splitlines()[0][:200]
        timed = [s for s in SDPA_BACKENDS if f"sdpa_{s}_graph_ms" in row]
        if timed:
            best = min(timed, key=lambda s: row[f"sdpa_{s}_graph_ms"])
            row["sdpa_fastest"] = best
            row["sdpa_fastest_eager_ms"] = row[f"sdpa_{best}_eager_ms"]
            row["sdpa_fastest_graph_ms"] = row[f"sdpa_{best}_graph_ms"]
        rows.append(row)
    # the Self-Forcing inference call: a 3-frame chunk over a 21-frame KV cache
    cache = m.MonarchKVCache(1, 12, 128, FRAME, max_frames=21, dtype=torch.bfloat16, device="cuda")
    kv = torch.randn(1, 21 * hw, 12, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    cache.append(kv, kv)
    q = torch.randn(1, 3 * hw, 12, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    rows.append(measure("kv-cache attention 3 vs 21 frames", lambda: cache.attend(q), calls, profile))
    return rows


def small_op_rows(calls: int, profile: bool) -> list[dict]:
    x = torch.randn(256, 1024, device="cuda", dtype=torch.bfloat16)
    w1 = torch.randn(32, 32, 32, device="cuda", dtype=torch.bfloat16) / 32**0.5
    w2 = torch.randn(32, 32, 32, device="cuda", dtype=torch.bfloat16) / 32**0.5
    return [
        measure("hadamard 256 x 1024", lambda: m.hadamard(x), calls, profile),
        measure("monarch_matmul 256 x 1024 (32, 32, 32)", lambda: m.monarch_matmul(x, w1, w2), calls, profile),
    ]


# --- the CPU measurement of the Python path (--cpu-host-path) --------------------------------------
# What the stubbed device is said to be: the H200 of the GPU measurements, so the tables' configs
# (and the number of launches) are that machine's.
CPU_STAND_IN = ("sm90", (9, 0), "NVIDIA H200", 132, 232448)


class _NoLaunch:
    """What a compiled kernel is to ``_launch.launch``'s cache, launching nothing."""

    function = None
    packed_metadata = None

    def run(self, *args):
        pass


class _NoDriver:
    """Triton's active driver as ``_launch.launch`` asks it: the current device that of the CPU tensors
    (``get_device()`` -1, as a GPU's is the inputs' device in the common case), stream 0."""

    def get_current_device(self):
        return -1

    def get_current_stream(self, device):
        return 0


class _ExtensionNoLaunch:
    """The built extension with its launches doing nothing; reasons and limits are the real ones. The
    launch is a C function as the extension's is (``str.format`` of an empty string takes any arguments
    and reads none), so it adds no Python call."""

    monarch_stage_r = "".format

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)


@contextlib.contextmanager
def stubbed_gpu():
    """Eager calls on CPU tensors take the GPU's host path: the architecture an H200's, every Triton
    launch through ``_launch.launch`` (its first call per specialisation, Triton's ``kernel[grid]``,
    yields :class:`_NoLaunch`; later ones run the cache's hit path into ``_NoLaunch.run``).
    The extension's stage-R launch (``stage_r='wgmma'``, the H200's default) goes through its Python
    launcher into a no-op, ``torch.cuda.device`` and the stream query included (``extension()`` stays a
    cached function, a C call on a hit as on the GPU); Triton's driver answers device -1 (the CPU
    tensors' ``get_device()``), stream 0, and the capture query no capture.
    Needs the Triton kernels compiled for a GPU: TRITON_INTERPRET is unset before they are imported."""
    os.environ.pop("TRITON_INTERPRET", None)
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    from monarchrt_ops.arch import Arch
    from monarchrt_ops.triton_kernels import _launch, hadamard, monarch_attention

    if type(monarch_attention._stage_r_fwd) is not JITFunction or type(hadamard._hadamard_kernel) is not JITFunction:
        raise RuntimeError(
            "--cpu-host-path: the Triton kernels were imported for the interpreter; unset TRITON_INTERPRET"
        )
    from monarchrt_ops.backends import cuda as cuda_backend

    arch = Arch(*CPU_STAND_IN)
    built, _ = cuda_backend.extension()  # the stage-R kernel's launcher as the H200 runs it (no launch)
    stand_in = (_ExtensionNoLaunch(built), None)
    extension = functools.cache(lambda: stand_in) if built is not None else cuda_backend.extension
    with (
        mock.patch.object(ops, "arch_of", lambda device: arch),
        mock.patch.object(cuda_backend, "extension", extension),
        mock.patch.object(torch.cuda, "device", lambda device: contextlib.nullcontext()),
        mock.patch.object(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=0)),
        mock.patch.object(_launch, "_capturing", [bool]),  # no capture: bool() is False, a C call as torch's
        mock.patch.object(driver, "_active", _NoDriver()),
        mock.patch.object(JITFunction, "__getitem__", lambda kernel, grid: lambda *args, **kwargs: _NoLaunch()),
    ):
        yield


def python_calls(fn, calls: int) -> float:
    """Python-level function calls per call of ``fn`` (``sys.setprofile``'s 'call' events)."""
    count = [0]

    def tracer(frame, event, arg):
        if event == "call":
            count[0] += 1

    sys.setprofile(tracer)
    try:
        for _ in range(calls):
            fn()
    finally:
        sys.setprofile(None)
    return count[0] / calls


def cpu_us(fn, calls: int) -> float:
    """Microseconds per call of ``fn``, best of 5 loops of ``calls``."""
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) * 1e6 / calls)
    return best


def cpu_cases() -> dict:
    """The GPU rows' calls at small sizes (the Python path does not depend on the sizes), bf16."""
    gen = torch.Generator().manual_seed(0)
    frame, heads, d = (6, 10), 2, 128
    hw = frame[0] * frame[1]

    def mk(*shape):
        return torch.randn(*shape, dtype=torch.bfloat16, generator=gen)

    q, k, v = mk(1, hw, heads, d), mk(1, hw, heads, d), mk(1, hw, heads, d)
    q3, k3, v3 = mk(1, 3 * hw, heads, d), mk(1, 3 * hw, heads, d), mk(1, 3 * hw, heads, d)
    kv = mk(1, 21 * hw, heads, d)
    k_cache, v_cache = mk(1, 21 * hw, heads, d), mk(1, 21 * hw, heads, d)
    m.write_kv_cache(k_cache, v_cache, kv, kv.clone(), 0, frame)
    cache = m.MonarchKVCache(1, heads, d, frame, max_frames=21, dtype=torch.bfloat16)
    cache.append(kv, kv.clone())
    x, w1, w2 = mk(16, 256), mk(16, 16, 16) / 4, mk(16, 16, 16) / 4
    qt, kt, vt = (m.to_tiles(t, m.make_tiling(frame)) for t in (q, k, v))
    return {
        "attention 1 vs 1 frames": lambda: m.monarch_attention(q, k, v, frame, backend="triton"),
        "attention 3 vs 3 frames": lambda: m.monarch_attention(q3, k3, v3, frame, backend="triton"),
        "attention op 1 vs 1 frames (torch.ops)": lambda: ops.attention(qt, kt, vt, d**-0.5, 0, 1, "triton"),
        "kv-cache attention 3 vs 21 frames": lambda: m.monarch_attention_kv_cache(
            q3, k_cache, v_cache, 21, frame, backend="triton"
        ),
        "MonarchKVCache.attend 3 vs 21 frames": lambda: cache.attend(q3, backend="triton"),
        "hadamard 16 x 256": lambda: m.hadamard(x, backend="triton"),
        "monarch_matmul 16 x 256 (16, 16, 16)": lambda: m.monarch_matmul(x, w1, w2, backend="triton"),
    }


def cpu_rows(calls: int, profile: bool) -> list[dict]:
    rows = []
    with stubbed_gpu(), torch.no_grad():
        for name, fn in cpu_cases().items():
            row = {"case": name, "us": cpu_us(fn, calls), "python_calls": python_calls(fn, 10)}
            if profile:
                row["profile"] = profile_top(fn, calls)
            rows.append(row)
    return rows


def cpu_header() -> dict:
    import platform

    import triton

    return {"device": "cpu (GPU stubbed: --cpu-host-path)", "stand_in": CPU_STAND_IN[2], "cpu": platform.processor(),
            "python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__}  # fmt: skip


def _print_profile(row: dict) -> None:
    for line in row.get("profile", []):
        print("    " + line)


def _write_json(path, result: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--calls", type=int, default=200, help="calls per timed loop (default %(default)s)")
    p.add_argument("--profile", action="store_true", help="add a cProfile breakdown of each eager call")
    p.add_argument("--cpu-host-path", action="store_true", help="time the Python path on the CPU, GPU stubbed (no GPU)")
    args = p.parse_args(argv)
    if args.cpu_host_path:
        result = {"header": cpu_header(), "rows": cpu_rows(args.calls, args.profile)}
        print(json.dumps(result["header"]))
        for row in result["rows"]:
            print(f"{row['case']:42} {row['us']:7.1f} us  {row['python_calls']:5.0f} Python calls per call")
            _print_profile(row)
        _write_json(args.json, result)
        return 0
    if not torch.cuda.is_available():
        print("host_overhead: error: no CUDA device; this measures a GPU's host overhead", file=sys.stderr)
        return 2
    result = {"header": header(), "target_ms": TARGET_MS, "rows": []}
    print(json.dumps(result["header"]), flush=True)
    with torch.no_grad():
        for row in attention_rows(args.calls, args.profile) + small_op_rows(args.calls, args.profile):
            result["rows"].append(row)
            extra = ""
            if "sdpa_fastest" in row:
                eager, graph = row["sdpa_fastest_eager_ms"], row["sdpa_fastest_graph_ms"]
                extra = f"  sdpa {row['sdpa_fastest']} eager {eager:.4f} graph {graph:.4f}"
            if "op_eager_ms" in row:
                extra += f"  op {row['op_eager_ms']:.4f}"
            print(f"{row['case']:42} eager {row['eager_ms']:.4f} graph {row['graph_ms']:.4f} host "
                  f"{row['host_overhead_ms']:.4f} ms ({row['host_us']:.1f} us python){extra}", flush=True)  # fmt: skip
            _print_profile(row)
    _write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
