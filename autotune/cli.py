"""``monarchrt-tune``: tune on the GPU you have, verify a table, or warm its kernels up.

monarchrt-tune --gpu h100 [--ops attention hadamard monarch_matmul] [--shapes NAME ...] [--backward] [--trials N]
               [--storage URL] [--resume | --fresh] [--seed S] [--out DIR]
monarchrt-tune verify --gpu h100      re-time and re-check every entry on this GPU and code
monarchrt-tune warmup --gpu h100      = monarchrt-warmup, after checking the table is this GPU's

Shapes come from autotune/shapes.py (attention shapes selectable by name). Each trial's output is
checked against the reference backend (fp32 on the GPU) before its time counts; the top 3 are
re-timed with 4x the repetitions; Optuna studies are stored in SQLite (``monarchrt-tune-<gpu>.db``)
so ``--resume`` continues a killed run and several workers (one per GPU, same ``--storage``, each
with ``--resume``) share a study and its trial budget. A stored study is only deleted by ``--fresh``;
without either flag a study that already holds trials is an error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from . import tables
from .cases import DTYPE_BY_NAME, AttentionCase, Case, HadamardCase, MonarchMatmulCase, case_from
from .search import search
from .shapes import ATTENTION_SHAPES, HADAMARD_BYTES, HADAMARD_SIZES, MONARCH_MATMUL_SHAPES

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPS = ("attention", "hadamard", "monarch_matmul")


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
        "seed": seed, "command": command,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def build_cases(ops, attention_shapes, backward: bool, dtype, device="cuda", timer=None) -> Iterator[Case]:
    """The cases of the shared shape lists (autotune/shapes.py) for the requested ops, made one at a time
    (each holds its inputs on the device: the caller drops one before the next is made)."""
    if "attention" in ops:
        for name in attention_shapes:
            for bwd in (False, True) if backward else (False,):
                yield AttentionCase(name, dtype, bwd, device=device, timer=timer)
    if "hadamard" in ops:
        for n in HADAMARD_SIZES:
            yield HadamardCase(n, HADAMARD_BYTES // (2 * n), dtype, device=device, timer=timer)
    if "monarch_matmul" in ops:
        for _, rows, w1_shape, w2_shape in MONARCH_MATMUL_SHAPES:
            yield MonarchMatmulCase(rows, w1_shape, w2_shape, dtype, device=device, timer=timer)


def tune_cases(
    cases, *, trials: int, seed: int, storage: str | None, resume: bool, fresh: bool = False, progress=print
) -> list[dict]:
    """Search each case; the table entries (the default config stays when nothing beats it)."""
    entries = []
    for case in cases:
        desc = case.describe()
        name = "/".join([case.backend.name, *map(str, desc.values()), str(case.dtype).removeprefix("torch.")])
        progress(f"== {name}: {case.problem.key()}")
        default = case.backend.default_config(case.problem, case.arch)
        default_m = case.measure(default, rep_ms=400)
        t0 = time.monotonic()
        res = search(
            case.backend.search_space(case.problem, case.arch),
            lambda c, case=case: case.backend.is_valid(c, case.problem, case.arch),
            case.measure, n_trials=trials, seed=seed, storage=storage, study_name=name, resume=resume, fresh=fresh,
            retime=lambda c, case=case: case.measure(c, rep_ms=400), progress=lambda s: progress("  " + s),
        )  # fmt: skip
        if default_m.ok and default_m.time_ms <= res.measurement.time_ms:
            res.config, res.measurement = default, default_m
        exact, bucket = tables.split_key(case.problem.key())
        entries.append({
            "op": case.op, "backend": case.backend.name, "key": exact, "bucket": bucket, "config": res.config,
            "time_ms": res.measurement.time_ms, "spread_ms": list(res.measurement.spread_ms),
            "rel_err": res.measurement.rel_err, "default_ms": default_m.time_ms, "trials": res.trials,
            "pruned_invalid": res.pruned_invalid, "pruned_wrong": res.pruned_wrong,
            "source_hash": tables.source_hash(case.op), "case": desc,
        })  # fmt: skip
        progress(f"  best {res.measurement.time_ms:.4f} ms (default {default_m.time_ms:.4f} ms) "
                 f"{json.dumps(res.config)} in {time.monotonic() - t0:.0f} s")  # fmt: skip
    return entries


def tune(args) -> int:
    problem = _check_gpu(args.gpu)
    if problem:
        return _fail(problem)
    out_dir = Path(args.out) if args.out else tables.tables_dir()
    storage = args.storage or f"sqlite:///monarchrt-tune-{args.gpu}.db"
    shapes = args.shapes or [s.name for s in ATTENTION_SHAPES if s.heads == 12]
    entries = []
    path = out_dir / f"{args.gpu}.json"
    try:
        for case in build_cases(args.ops, shapes, args.backward, DTYPES[args.dtype]):  # one at a time: memory
            entries += tune_cases([case], trials=args.trials, seed=args.seed, storage=storage, resume=args.resume,
                                  fresh=args.fresh, progress=lambda s: print(s, flush=True))  # fmt: skip
            del case
            torch.cuda.empty_cache()
            # after every case, so a run stopped part-way keeps the cases it finished
            tables.write_table(path, args.gpu, provenance(args.seed, " ".join(sys.argv)), entries)
    except ValueError as e:  # a stored study without --resume/--fresh, an unknown shape
        return _fail(str(e))
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


def _case_of(entry: dict) -> Case:
    return case_from(entry["case"], DTYPE_BY_NAME[entry["key"]["dtype"]], entry["backend"])


def verify(args) -> int:
    data, problem = _this_gpus_table(args.gpu)
    if problem:
        return _fail(problem)
    prov = data["provenance"]
    if prov.get("gpu_name") != torch.cuda.get_device_name():
        print(f"warning: table made on {prov.get('gpu_name')}, this is {torch.cuda.get_device_name()}")
    stale = tables.stale_entries(data)
    if stale:
        print(f"warning: {len(stale)} entries were tuned on other kernel sources: re-tune them")
    bad = 0
    for e in data["entries"]:
        case = _case_of(e)
        m = case.measure(e["config"], rep_ms=400)
        d = case.measure(case.backend.default_config(case.problem, case.arch), rep_ms=400)
        ok = m.ok and (not d.ok or m.time_ms <= d.time_ms * 1.05)
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {json.dumps(e['case'])}: {m.time_ms:.4f} ms (table said "
              f"{e['time_ms']:.4f}), default {d.time_ms:.4f} ms, rel_err {m.rel_err:.2e} {m.error}")  # fmt: skip
    return 1 if bad else 0


def warmup(args) -> int:
    """The table of ``--gpu`` must be this GPU's; then monarchrt-warmup (one implementation) compiles."""
    _, problem = _this_gpus_table(args.gpu)
    if problem:
        return _fail(problem)
    from monarchrt_ops import warmup as warm

    return warm.main([])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("verify", "warmup") else "tune"
    p = argparse.ArgumentParser(prog=f"monarchrt-tune{'' if command == 'tune' else ' ' + command}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--gpu", required=True, help="table name of this GPU: h100, h200, b200, rtx5090")
    if command == "tune":
        p.add_argument("--ops", nargs="+", default=["attention"], choices=OPS)
        p.add_argument(
            "--shapes", nargs="*", default=None, help=f"attention shapes, from {[s.name for s in ATTENTION_SHAPES]}"
        )
        p.add_argument("--backward", action="store_true", help="tune the backward too")
        p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
        p.add_argument(
            "--trials", type=_positive_int, default=30, help="measured trials per study, >= 1 (default %(default)s)"
        )
        p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///monarchrt-tune-<gpu>.db)")
        stored = p.add_mutually_exclusive_group()
        stored.add_argument("--resume", action="store_true", help="continue (or join) the stored studies")
        stored.add_argument("--fresh", action="store_true", help="delete the stored studies and start again")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", default=None, help="folder for <gpu>.json (default: the package's tuned_configs)")
    args = p.parse_args(argv)
    if command == "tune":
        for name in args.shapes or ():
            if name not in {s.name for s in ATTENTION_SHAPES}:
                p.error(f"--shapes: unknown shape {name!r}; known: {[s.name for s in ATTENTION_SHAPES]}")
    return {"tune": tune, "verify": verify, "warmup": warmup}[command](args)


if __name__ == "__main__":
    sys.exit(main())
