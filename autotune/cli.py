"""``monarchrt-tune``: tune on the GPU you have, verify a table, or warm its kernels up.

monarchrt-tune --gpu h100 [--ops attention] [--shapes NAME ...] [--backward] [--trials N]
               [--storage URL] [--resume] [--seed S] [--out DIR]
monarchrt-tune verify --gpu h100      re-time and re-check every entry on this GPU and code
monarchrt-tune warmup --gpu h100      compile every kernel config the table names

Each trial's output is checked against the reference backend (fp32 on the GPU) before its time
counts; the top 3 are re-timed with 4x the repetitions; Optuna studies are stored in SQLite
(``monarchrt-tune-<gpu>.db``) so ``--resume`` continues a killed run and several workers
(one per GPU, same ``--storage``) can share a study.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from . import tables
from .search import Measurement, search
from .shapes import ATTENTION_SHAPES, attention_inputs, shape_by_name

TOLERANCE = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3, torch.float32: 5e-4}  # SPEC 4 (fp32: tf32)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_BY_KEY = {str(v).removeprefix("torch."): v for v in DTYPES.values()}  # table keys say "bfloat16"


def _fail(msg: str) -> int:
    print(f"monarchrt-tune: error: {msg}", file=sys.stderr)
    return 2


def _check_gpu(gpu: str) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device: a table is measured on the GPU it is for, never invented"
    name = torch.cuda.get_device_name()
    have = tables.gpu_table_name(name)
    if have != gpu:
        return f"--gpu {gpu} does not match this device, {name} ({have or 'a GPU with no table name'})"
    return None


def provenance(seed: int, command: str) -> dict:
    import triton

    from ..arch import arch_of

    arch = arch_of("cuda")
    driver = torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None
    return {
        "gpu_name": arch.device_name, "capability": list(arch.capability), "family": arch.family,
        "driver": driver, "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton.__version__,
        "source_hash": tables.source_hash(), "seed": seed, "command": command,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def _rel(out, ref) -> float:
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


class AttentionCase:
    """One (shape, direction, dtype): inputs, the reference result, and a timer per config."""

    def __init__(self, shape, dtype, backward: bool, backend_name: str = "triton"):
        from .. import make_tiling, to_tiles
        from ..arch import arch_of
        from ..ops import causal_block_tiles
        from ..problem import AttentionProblem
        from ..registry import get_backend

        self.shape, self.dtype, self.backward = shape, dtype, backward
        self.backend = get_backend("attention", backend_name)
        self.ref_backend = get_backend("attention", "reference")
        self.arch = arch_of("cuda")
        tiling = make_tiling(shape.frame_shape)
        q, k, v = attention_inputs(shape, dtype, "cuda")
        self.q, self.k, self.v = (to_tiles(x, tiling) for x in (q, k, v))
        self.cbt = causal_block_tiles(tiling, shape.causal_block_frames or 0)
        self.problem = AttentionProblem.from_tiles(self.q, self.k, self.cbt, 1, backward=backward)
        self.kw = {"sm_scale": shape.head_dim**-0.5, "causal_block_tiles": self.cbt, "num_iters": 1}
        with torch.no_grad():
            q32, k32, v32 = (x.float() for x in (self.q, self.k, self.v))
            z, lse = self.ref_backend.launch({}, q32, k32, v32, **self.kw)
            if backward:
                gen = torch.Generator(device="cuda").manual_seed(1)
                self.dz = torch.randn(z.shape, device="cuda", generator=gen).to(dtype)
                self.dlse = torch.zeros_like(lse)
                self.ref = self.ref_backend.launch_backward(
                    {}, self.dz.float(), self.dlse, q32, k32, v32, z, lse, **self.kw
                )
                self.z, self.lse = self.backend.launch(self.backend.default_config(self.problem, self.arch),
                                                       self.q, self.k, self.v, **self.kw)  # fmt: skip
            else:
                self.ref = (z,)
        torch.cuda.empty_cache()

    def run(self, config):
        if self.backward:
            return self.backend.launch_backward(config, self.dz, self.dlse, self.q, self.k, self.v, self.z,
                                                self.lse, **self.kw)  # fmt: skip
        return self.backend.launch(config, self.q, self.k, self.v, **self.kw)[:1]

    def measure(self, config, rep_ms: int = 100) -> Measurement:
        import triton

        try:
            out = self.run(config)
            err = max(_rel(o, r) for o, r in zip(out, self.ref, strict=True))
            if not err < TOLERANCE[self.dtype]:
                return Measurement(float("inf"), rel_err=err, ok=False, error=f"rel_err {err:.3g}")
            p50, p20, p80 = triton.testing.do_bench(lambda: self.run(config), warmup=25, rep=rep_ms,
                                                    quantiles=[0.5, 0.2, 0.8])  # fmt: skip
        except Exception as e:  # a config the compiler or the device rejects loses, with its reason
            return Measurement(float("inf"), ok=False, error=f"{type(e).__name__}: {str(e)[:200]}")
        return Measurement(p50, (p20, p80), err)


def tune(args) -> int:
    problem = _check_gpu(args.gpu)
    if problem:
        return _fail(problem)
    out_dir = Path(args.out) if args.out else tables.tables_dir()
    storage = args.storage or f"sqlite:///monarchrt-tune-{args.gpu}.db"
    shapes = [shape_by_name(n) for n in args.shapes] if args.shapes else [s for s in ATTENTION_SHAPES if s.heads == 12]
    dtype = DTYPES[args.dtype]
    entries = []
    for shape in shapes:
        for backward in (False, True) if args.backward else (False,):
            case = AttentionCase(shape, dtype, backward)
            name = f"attention/{case.backend.name}/{shape.name}/{'bwd' if backward else 'fwd'}/{args.dtype}"
            print(f"== {name}: {case.problem.key()}", flush=True)
            default = case.backend.default_config(case.problem, case.arch)
            default_m = case.measure(default, rep_ms=400)
            t0 = time.monotonic()
            res = search(
                case.backend.search_space(case.problem, case.arch),
                lambda c, case=case: case.backend.is_valid(c, case.problem, case.arch),
                case.measure, n_trials=args.trials, seed=args.seed, storage=storage, study_name=name,
                resume=args.resume, retime=lambda c, case=case: case.measure(c, rep_ms=400),
                progress=lambda s: print("  " + s, flush=True),
            )  # fmt: skip
            if default_m.ok and default_m.time_ms <= res.measurement.time_ms:
                res.config, res.measurement = default, default_m  # the default stays when nothing beats it
            exact, bucket = tables.split_key(case.problem.key())
            entries.append({
                "op": "attention", "backend": case.backend.name, "key": exact, "bucket": bucket,
                "config": res.config, "time_ms": res.measurement.time_ms, "spread_ms": list(res.measurement.spread_ms),
                "rel_err": res.measurement.rel_err, "default_ms": default_m.time_ms, "trials": res.trials,
                "pruned_invalid": res.pruned_invalid, "pruned_wrong": res.pruned_wrong, "shape": shape.name,
            })  # fmt: skip
            print(f"  best {res.measurement.time_ms:.4f} ms (default {default_m.time_ms:.4f} ms) "
                  f"{json.dumps(res.config)} in {time.monotonic() - t0:.0f} s", flush=True)  # fmt: skip
            del case
            torch.cuda.empty_cache()
    path = out_dir / f"{args.gpu}.json"
    tables.write_table(path, args.gpu, provenance(args.seed, " ".join(sys.argv)), entries)
    print(f"wrote {len(entries)} entries to {path}")
    return 0


def _this_gpus_table(gpu: str) -> tuple[dict | None, str | None]:
    """(table, None) for this GPU, or (None, why not)."""
    problem = _check_gpu(gpu)
    if problem:
        return None, problem
    path = tables.tables_dir() / f"{gpu}.json"
    data = tables.read_table(path) if path.exists() else None
    return (data, None) if data is not None else (None, f"no readable table at {path}")


def _case_of(entry: dict) -> AttentionCase:
    key = entry["key"]
    return AttentionCase(shape_by_name(entry["shape"]), DTYPE_BY_KEY[key["dtype"]], key["backward"], entry["backend"])


def verify(args) -> int:
    data, problem = _this_gpus_table(args.gpu)
    if problem:
        return _fail(problem)
    prov = data["provenance"]
    if prov.get("gpu_name") != torch.cuda.get_device_name():
        print(f"warning: table made on {prov.get('gpu_name')}, this is {torch.cuda.get_device_name()}")
    if prov.get("source_hash") != tables.source_hash():
        print(f"warning: kernel sources changed since the table was made ({prov.get('source_hash')} -> "
              f"{tables.source_hash()}): re-tune")  # fmt: skip
    bad = 0
    for e in data["entries"]:
        case = _case_of(e)
        m = case.measure(e["config"], rep_ms=400)
        d = case.measure(case.backend.default_config(case.problem, case.arch), rep_ms=400)
        ok = m.ok and (not d.ok or m.time_ms <= d.time_ms * 1.05)
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {e['shape']} {'bwd' if e['key']['backward'] else 'fwd'}: "
              f"{m.time_ms:.4f} ms (table said {e['time_ms']:.4f}), default {d.time_ms:.4f} ms, "
              f"rel_err {m.rel_err:.2e} {m.error}")  # fmt: skip
    return 1 if bad else 0


def warmup(args) -> int:
    data, problem = _this_gpus_table(args.gpu)
    if problem:
        return _fail(problem)
    for n, e in enumerate(data["entries"], 1):
        t0 = time.monotonic()
        case = _case_of(e)
        case.run(e["config"])
        torch.cuda.synchronize()
        print(f"[{n}/{len(data['entries'])}] {e['shape']} compiled in {time.monotonic() - t0:.1f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("verify", "warmup") else "tune"
    p = argparse.ArgumentParser(prog=f"monarchrt-tune{'' if command == 'tune' else ' ' + command}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--gpu", required=True, help="table name of this GPU: h100, h200, b200, rtx5090")
    if command == "tune":
        p.add_argument("--ops", nargs="+", default=["attention"], choices=["attention"])
        p.add_argument("--shapes", nargs="*", default=None, help=f"from {[s.name for s in ATTENTION_SHAPES]}")
        p.add_argument("--backward", action="store_true", help="tune the backward too")
        p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
        p.add_argument("--trials", type=int, default=30, help="measured trials per study (default %(default)s)")
        p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///monarchrt-tune-<gpu>.db)")
        p.add_argument("--resume", action="store_true", help="continue the stored studies instead of restarting")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", default=None, help="folder for <gpu>.json (default: the package's tuned_configs)")
    args = p.parse_args(argv)
    return {"tune": tune, "verify": verify, "warmup": warmup}[command](args)


if __name__ == "__main__":
    sys.exit(main())
