"""``monarchrt-warmup``: compile, once per machine, every Triton kernel the tuned tables name.

monarchrt-warmup [--device cuda] [--shapes NAME ...] [--backward] [--dtype bf16] [--first-call]

Triton compiles a kernel the first time a process launches it with a new config, dtype or
specialisation, and keeps the binary in its on-disk cache (``TRITON_CACHE_DIR``, default
``~/.triton/cache``). This command launches each Triton config of the tables this GPU reads (its
own table, then the other tables of its architecture family, as the registry does) once, on inputs
of the entry's own problem (its key and bucket), so a later process finds every kernel compiled
and reaches its first forward + backward without compiling. ``--shapes`` adds the benchmark shapes
of ``autotune/shapes.py`` (forward, and backward with ``--backward``) with whatever config the
registry chooses for them (a tuned one or the default): the calls a GPU without a table of its own
makes. ``--first-call`` then times, in a fresh process, the first forward + backward of each shape.
Nothing is tuned or timed here (``monarchrt-tune`` does that). The CUDA backend is compiled ahead of
time (csrc/), so it is not warmed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from . import tables
from .arch import arch_of
from .hadamard_matrices import factor
from .problem import AttentionProblem, HadamardProblem, MonarchMatmulProblem
from .registry import get_backend, select

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_DTYPE_BY_NAME = {str(d).removeprefix("torch."): d for d in DTYPES.values()}


class Progress:
    """A progress bar on a terminal (one line, redrawn), one line per step elsewhere (logs)."""

    def __init__(self, total: int, stream=None, width: int = 30):
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()

    def step(self, label: str, seconds: float) -> None:
        self.done += 1
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {label} ({seconds:.1f} s)"
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if self.done == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def _problem_of(entry: dict):
    """The problem a table entry was tuned for (its exact key and its bucket)."""
    fields = {**entry["key"], **entry["bucket"]}
    dtype = _DTYPE_BY_NAME.get(fields.get("dtype"))
    if dtype is None:
        raise ValueError(f"dtype {fields.get('dtype')!r} is not one of {sorted(_DTYPE_BY_NAME)}")
    fields["dtype"] = dtype
    op = entry["op"]
    if op == "attention":
        return AttentionProblem(**fields)
    if op == "hadamard":
        return HadamardProblem(**fields)
    if op == "monarch_matmul":
        return MonarchMatmulProblem(**{**fields, "w1_shape": tuple(fields["w1_shape"]),
                                       "w2_shape": tuple(fields["w2_shape"])})  # fmt: skip
    raise ValueError(f"no warmup for op {op!r}")


def run_problem(op: str, backend, config: dict, problem, device) -> None:
    """One launch of ``backend`` with ``config`` on random inputs of ``problem`` (both directions of
    an attention backward problem: the backward needs the forward's output)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(problem.dtype)

    if op == "attention":
        p = problem
        q = randn(p.batch, p.q_tiles, p.b1, p.b2, p.heads, p.head_dim)
        k, v = (randn(p.batch, p.kv_tiles, p.b1, p.b2, p.heads, p.head_dim) for _ in range(2))
        kw = {"sm_scale": p.head_dim**-0.5, "causal_block_tiles": p.causal_block_tiles, "num_iters": p.num_iters}
        if not p.backward:
            backend.launch(config, q, k, v, **kw)
            return
        z, lse = backend.launch(backend.default_config(p, arch_of(device)), q, k, v, **kw)
        backend.launch_backward(config, randn(*z.shape), torch.zeros_like(lse), q, k, v, z, lse, **kw)
    elif op == "hadamard":
        x = randn(problem.rows, problem.n)
        m, n2 = factor(problem.n)
        backend.launch(config, x, torch.empty_like(x), m=m, n2=n2, scale=problem.n**-0.5, transpose=False,
                       fp32_intermediate=problem.fp32_intermediate)  # fmt: skip
    elif op == "monarch_matmul":
        (k, q, p), (l, s, r) = problem.w1_shape, problem.w2_shape
        backend.launch(config, randn(problem.rows, k * p), randn(k, q, p), randn(l, s, r))
    else:
        raise ValueError(f"no warmup for op {op!r}")


def table_jobs(device) -> list[tuple[str, str, dict, object, str]]:
    """``(op, backend, config, problem, label)`` for each distinct Triton config of the tables this
    device reads, in the registry's order; entries that fail is_valid here are left out (the
    registry ignores them too)."""
    arch = arch_of(device)
    gpu = tables.gpu_table_name(arch.device_name) if arch.is_cuda else None
    loaded = tables.loaded()
    jobs, seen = [], set()
    for name in tables.family_tables(loaded, gpu, arch.family):
        for e in loaded[name]["entries"]:
            if e["backend"] != "triton":
                continue
            ident = json.dumps([e["op"], e["key"], e["bucket"], e["config"]], sort_keys=True)
            if ident in seen:
                continue
            seen.add(ident)
            try:
                problem = _problem_of(e)
            except (TypeError, ValueError) as err:
                print(f"monarchrt-warmup: skipping an entry of {name}.json: {err}", file=sys.stderr)
                continue
            backend = get_backend(e["op"], "triton")
            if backend.supports(problem, arch) is not None or backend.is_valid(e["config"], problem, arch):
                continue
            label = f"{name}.json {e['op']} {'/'.join(f'{k}={v}' for k, v in e['bucket'].items())}"
            jobs.append((e["op"], "triton", e["config"], problem, label))
    return jobs


def shape_jobs(names, backward: bool, dtype, device) -> list[tuple[str, str, dict, object, str]]:
    """The configs the registry chooses for the named attention shapes of autotune/shapes.py."""
    from .autotune.shapes import shape_by_name  # data only: imports no tuner dependency

    arch = arch_of(device)
    jobs = []
    for name in names:
        shape = shape_by_name(name)
        h, w = shape.frame_shape
        cbt = shape.causal_block_frames or 0  # tiles = frames with the identity tiling
        for bwd in (False, True) if backward else (False,):
            problem = AttentionProblem(shape.batch, shape.heads, shape.head_dim, h, w, shape.q_frames, shape.kv_frames,
                                       cbt, 1, dtype, bwd, shape.head_dim**-0.5)  # fmt: skip
            sel = select("attention", problem, arch, None if arch.is_cuda else "triton")  # CPU: the interpreter
            if sel.backend.name == "triton":
                jobs.append(("attention", "triton", sel.config, problem, f"{name} {'backward' if bwd else 'forward'}"))
    return jobs


FIRST_CALL = """
import sys, time, torch
import monarchrt_ops as m
from monarchrt_ops.autotune.shapes import attention_inputs, shape_by_name
shape = shape_by_name(sys.argv[1])
q, k, v = (x.requires_grad_() for x in attention_inputs(shape, getattr(torch, sys.argv[2]), sys.argv[3]))
t0 = time.perf_counter()
out = m.monarch_attention(q, k, v, shape.frame_shape, causal_block_frames=shape.causal_block_frames)
out.float().square().sum().backward()
torch.cuda.synchronize() if q.is_cuda else None
print(f"{time.perf_counter() - t0:.2f}")
"""


def first_call_seconds(shape: str, dtype, device) -> float:
    """Seconds a fresh process takes for its first forward + backward of ``shape`` (compiling included)."""
    name = str(dtype).removeprefix("torch.")
    out = subprocess.run([sys.executable, "-c", FIRST_CALL, shape, name, str(device)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def warmup(jobs, device, progress: Progress | None = None) -> None:
    progress = progress or Progress(len(jobs))
    for op, backend_name, config, problem, label in jobs:
        t0 = time.monotonic()
        run_problem(op, get_backend(op, backend_name), config, problem, device)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        progress.step(label, time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="monarchrt-warmup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", default="cuda", help="default cuda; cpu runs the path under TRITON_INTERPRET=1")
    p.add_argument("--shapes", nargs="*", default=[], help="attention shapes of autotune/shapes.py to warm too")
    p.add_argument("--backward", action="store_true", help="the backward of --shapes too")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="of --shapes (default %(default)s)")
    p.add_argument("--first-call", action="store_true", help="then time a fresh process's first fwd+bwd of --shapes")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("monarchrt-warmup: error: no CUDA device (use --device cpu under TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    try:
        jobs = table_jobs(device) + shape_jobs(args.shapes, args.backward, dtype, device)
    except ValueError as e:
        print(f"monarchrt-warmup: error: {e}", file=sys.stderr)
        return 2
    if not jobs:
        print("monarchrt-warmup: no Triton config to compile (no table for this GPU and no --shapes)")
        return 0
    progress = Progress(len(jobs))
    warmup(jobs, device, progress)
    print(f"compiled {len(jobs)} kernel configs in {progress.elapsed():.1f} s")
    if args.first_call:
        for name in args.shapes:
            print(f"first forward + backward of {name} in a fresh process: {first_call_seconds(name, dtype, device)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
