"""Command line: ``python -m monarchrt_ops {info,demo}`` (also installed as ``monarchrt``).

info  prints the device, the backends that can run, and for one problem which backend and config
      would be chosen and why the others were rejected.
demo  runs Monarch attention on a small synthetic video latent and prints its error against dense
      softmax attention, its FLOP ratio and its time (on the CPU when no GPU is present).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

from . import make_tiling, monarch_attention, reference, to_tiles
from .arch import arch_of
from .attention import _check_int
from .layout import Tiling, causal_block_tiles
from .limits import MAX_HEAD_DIM, MAX_NUM_ITERS
from .ops import NAMESPACE
from .problem import AttentionProblem
from .registry import backend_names, get_backend, select

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


def _problem_args(p: argparse.ArgumentParser, frames=21, frame_shape=(30, 52), heads=12, head_dim=128) -> None:
    p.add_argument("--frames", type=int, default=frames, help="query frames (default %(default)s)")
    p.add_argument("--kv-frames", type=int, default=None, help="key frames (default: --frames)")
    p.add_argument("--frame-shape", type=int, nargs=2, default=list(frame_shape), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=heads)
    p.add_argument("--head-dim", type=int, default=head_dim)
    p.add_argument("--f-tied", type=int, default=1)
    p.add_argument("--h-reduce", type=int, default=1)
    p.add_argument("--w-reduce", type=int, default=1)
    p.add_argument("--causal-block-frames", type=int, default=0)
    p.add_argument("--num-iters", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def _device(args) -> torch.device:
    """The --device, checked: a bad name or a CUDA device this build or machine lacks is a ValueError."""
    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device={args.device!r} is not a device name (cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device={args.device!r}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
            raise ValueError(f"--device={args.device!r}: CUDA is not available here ({build} {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device={args.device!r}: only {torch.cuda.device_count()} CUDA devices are visible")
    return device


def _check_problem_args(args) -> tuple[Tiling, int]:
    """The problem flags, checked with the API's validators and named by flag -> (tiling, kv frames)."""
    h, w = args.frame_shape
    for flag, value in (("--frame-shape H", h), ("--frame-shape W", w), ("--f-tied", args.f_tied),
                        ("--h-reduce", args.h_reduce), ("--w-reduce", args.w_reduce)):  # fmt: skip
        _check_int(flag, value)
    tiling = make_tiling((h, w), args.f_tied, args.h_reduce, args.w_reduce)
    frames = _check_int("--frames", args.frames)
    kv_frames = frames if args.kv_frames is None else _check_int("--kv-frames", args.kv_frames)
    for flag, value in (("--frames", frames), ("--kv-frames", kv_frames)):
        if value % args.f_tied:
            raise ValueError(f"{flag}={value} is not a multiple of --f-tied={args.f_tied}")
    _check_int("--batch", args.batch)
    _check_int("--heads", args.heads)
    _check_int("--head-dim", args.head_dim, maximum=MAX_HEAD_DIM)
    _check_int("--num-iters", args.num_iters, maximum=MAX_NUM_ITERS)
    cbf = _check_int("--causal-block-frames", args.causal_block_frames, minimum=0, maximum=frames)
    if cbf and kv_frames != frames:
        raise ValueError(f"--causal-block-frames needs --kv-frames == --frames, got {kv_frames} and {frames}")
    if cbf % args.f_tied:
        raise ValueError(f"--causal-block-frames={cbf} must be a multiple of --f-tied={args.f_tied}")
    return tiling, kv_frames


def info(args) -> int:
    tiling, kv_frames = _check_problem_args(args)
    device = _device(args)
    arch = arch_of(device)
    tiles = lambda frames: frames // args.f_tied * tiling.tiles_per_group  # noqa: E731
    problem = AttentionProblem(
        args.batch,
        args.heads,
        args.head_dim,
        tiling.b1,
        tiling.b2,
        tiles(args.frames),
        tiles(kv_frames),
        causal_block_tiles(tiling, args.causal_block_frames),
        args.num_iters,
        DTYPES[args.dtype],
    )
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = "not installed"
    print(f"monarchrt_ops: ops under torch.ops.{NAMESPACE}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    cap = f" (sm_{arch.capability[0]}{arch.capability[1]}, {arch.num_sms} SMs)" if arch.is_cuda else ""
    print(f"device: {device} = {arch.device_name}{cap}; architecture family: {arch.family}")
    print(f"problem: {json.dumps(problem.key())}")
    flops, dense = problem.forward_flops(), problem.dense_forward_flops()
    print(f"  useful forward GFLOP {flops / 1e9:.1f} vs dense {dense / 1e9:.1f} ({flops / dense:.2%})")
    from .backends.cuda import extension

    module, reason = extension()
    print(f"CUDA extension: {'built for sm_' + ', sm_'.join(module.compiled_archs()) if module else reason}")
    if module is not None:  # csrc/kernel_limits.h, the one statement of each kernel's limits
        for kernel, limits in module.limits().items():
            print(f"  {kernel}: {json.dumps(limits)}")
    print("attention backends:")
    for name in backend_names("attention"):
        reason = get_backend("attention", name).supports(problem, arch)
        print(f"  {name:10s} {'can run' if reason is None else 'cannot run: ' + reason}")
    for direction, prob in (
        ("forward", problem),
        ("backward", AttentionProblem(**{**problem.__dict__, "backward": True})),
    ):
        try:
            sel = select("attention", prob, arch)
        except ValueError as e:
            print(f"{direction}: no backend: {e}")
            continue
        print(f"{direction}: would use {sel.backend.name!r} with config {json.dumps(sel.config)} ({sel.config_source})")
        for name, reason in sel.rejected:
            print(f"  rejected {name!r}: {reason}")
    return 0


def _smooth_latent(bsz, frames, h, w, heads, d, dtype, device, gen):
    """A latent with video-like structure: smooth in space and time plus noise."""
    base = torch.randn(bsz, heads * d, frames // 2 + 1, h // 2 + 1, w // 2 + 1, generator=gen, dtype=torch.float64)
    x = torch.nn.functional.interpolate(base, size=(frames, h, w), mode="trilinear", align_corners=True)
    x = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    # [B, nh*d, frames, H, W] -> [B, frames*H*W, nh, d]
    return x.reshape(bsz, heads, d, -1).permute(0, 3, 1, 2).to(device=device, dtype=dtype).contiguous()


def demo(args) -> int:
    _check_problem_args(args)
    device = _device(args)
    dtype = DTYPES[args.dtype]
    if device.type == "cpu" and dtype == torch.bfloat16:
        dtype = torch.float32  # the CPU path computes in float32 anyway
    h, w = args.frame_shape
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        _smooth_latent(args.batch, args.frames, h, w, args.heads, args.head_dim, dtype, device, gen) for _ in range(3)
    )
    tiling = make_tiling((h, w), args.f_tied, args.h_reduce, args.w_reduce)
    kw = {"f_tied": args.f_tied, "h_reduce": args.h_reduce, "w_reduce": args.w_reduce, "num_iters": args.num_iters}
    print(
        f"demo: {args.frames} frames of {h}x{w} tokens, {args.heads} heads, d={args.head_dim}, {dtype}, {device}; "
        f"tiles {tiling.b1}x{tiling.b2}"
    )
    out = monarch_attention(q, k, v, (h, w), **kw)  # warm-up (compilation on a GPU)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = monarch_attention(q, k, v, (h, w), **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    dense = reference.dense_attention(q, k, v, args.head_dim**-0.5)
    err = ((out.double() - dense.double()).norm() / dense.double().norm()).item()
    qt, kt = to_tiles(q, tiling), to_tiles(k, tiling)
    prob = AttentionProblem.from_tiles(qt, kt, 0, args.num_iters)
    ratio = prob.forward_flops() / prob.dense_forward_flops()
    print(f"  relative error of Monarch vs dense softmax attention: {err:.4f}")
    print(
        f"  FLOP ratio Monarch/dense: {ratio:.2%}"
        f" (one iteration: 1.5/b1 + 1/b2 = {1.5 / tiling.b1 + 1 / tiling.b2:.2%})"
    )
    print(f"  time: {elapsed * 1e3:.1f} ms")
    for iters in range(args.num_iters + 1, args.num_iters + 3):  # more alternating updates, closer to softmax
        more = monarch_attention(q, k, v, (h, w), **{**kw, "num_iters": iters})
        more_err = ((more.double() - dense.double()).norm() / dense.double().norm()).item()
        print(f"  with num_iters={iters}: relative error {more_err:.4f}")
    if not math.isfinite(err):
        print("error: non-finite output", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="monarchrt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="device, backends and the choice for one problem")
    _problem_args(p_info)
    p_demo = sub.add_parser("demo", help="Monarch vs dense attention on a small synthetic video latent")
    _problem_args(p_demo, frames=4, frame_shape=(12, 20), heads=2, head_dim=64)
    args = parser.parse_args(argv)
    try:
        return {"info": info, "demo": demo}[args.command](args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
