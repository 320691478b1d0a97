"""``monarchrt-bench``: every op's benchmark in one run, as a table, one JSON and a PNG plot.

monarchrt-bench [--ops attention hadamard monarch_matmul] [--out DIR] [--backward SHAPE ...]
                [--shapes SHAPE ...]
Writes DIR/<gpu>.json (header, ceilings and each op's rows) and DIR/<gpu>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

OPS = ("attention", "hadamard", "monarch_matmul")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="monarchrt-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--shapes", nargs="*", default=None, help="attention shapes (default: all)")
    p.add_argument("--backward", nargs="*", default=[], help="attention shapes to time forward+backward too")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("monarchrt-bench: error: no CUDA device; benchmarks measure a GPU", file=sys.stderr)
        return 2
    from monarchrt_ops.autotune.tables import gpu_table_name

    from . import bench_attention, bench_hadamard, bench_monarch_matmul
    from .common import ceilings, header
    from .plot import plot

    result = {"header": header(), "ceilings": ceilings()}
    runners = {"attention": bench_attention, "hadamard": bench_hadamard, "monarch_matmul": bench_monarch_matmul}
    with tempfile.TemporaryDirectory() as tmp:
        for op in args.ops:
            path = Path(tmp) / f"{op}.json"
            extra = []
            if op == "attention":
                extra = (["--shapes", *args.shapes] if args.shapes else []) + ["--backward", *args.backward]
            runners[op].main(["--json", str(path), *extra])
            result[op] = {"rows": json.loads(path.read_text())["rows"]}
    name = gpu_table_name(result["header"]["gpu"]) or result["header"]["gpu"].replace(" ", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / f"{name}.png")
    print(f"wrote {args.out / (name + '.json')} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
