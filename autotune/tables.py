"""Tuned config tables: schema, reading, writing, and the run-time lookup.

A table is ``tuned_configs/<gpu>.json``, written by ``monarchrt-tune --gpu <gpu>`` on that GPU::

    {
      "schema": 1,
      "gpu": "h100",
      "provenance": {"gpu_name", "capability", "family", "driver", "cuda", "torch", "triton",
                     "seed", "created", "command"},
      "entries": [
        {"op": "attention", "backend": "triton",
         "key": {...problem fields that must match exactly...},
         "bucket": {"q_tiles": 21, "kv_tiles": 21, "batch": 1, "heads": 12},
         "config": {...}, "time_ms": 5.1, "spread_ms": [5.0, 5.2], "default_ms": 6.0, "rel_err": 0.004,
         "trials": 40, "source_hash": "<sha256 of the op's kernel sources>", "case": {...how to rebuild it...}}
      ]
    }

Lookup order (the step taken is reported by ``python -m monarchrt_ops info``):
exact key and bucket -> same key, nearest bucket -> a table of another GPU of the same
architecture family (same key, nearest bucket) -> the backend's default config.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
# Shape fields that may be bucketed (nearest in log space); every other field must match exactly.
BUCKET_FIELDS = ("q_tiles", "kv_tiles", "batch", "heads", "rows")
# Substring of torch.cuda.get_device_name() -> table name
GPU_TABLE_NAMES = {"H100": "h100", "H200": "h200", "B200": "b200", "RTX 5090": "rtx5090"}
_ENTRY_FIELDS = ("op", "backend", "key", "bucket", "config")


def gpu_table_name(device_name: str) -> str | None:
    """Table name of a GPU (``'NVIDIA H100 80GB HBM3'`` -> ``'h100'``); None if we have none for it."""
    for marker, name in GPU_TABLE_NAMES.items():
        if marker in device_name:
            return name
    return None


def _sibling(name: str) -> str:
    """``<package>.<name>`` for the package this module is installed in (a vendored copy under
    another name reads its own tables and kernels, not monarchrt_ops')."""
    return f"{__package__.rpartition('.')[0]}.{name}"


def tables_dir() -> Path:
    """``MONARCHRT_TUNED_CONFIGS`` if set, else the installed ``monarchrt_ops/tuned_configs``."""
    override = os.environ.get("MONARCHRT_TUNED_CONFIGS")
    if override:
        return Path(override)
    return Path(str(importlib.resources.files(_sibling("tuned_configs"))))


def validate_table(data: Any) -> list[str]:
    """Problems with a table's structure (empty list: fine)."""
    if not isinstance(data, dict):
        return ["the table is not a JSON object"]
    problems = []
    if data.get("schema") != SCHEMA_VERSION:
        problems.append(f"schema={data.get('schema')!r}, expected {SCHEMA_VERSION}")
    if not isinstance(data.get("provenance"), dict):
        problems.append("no provenance object")
    entries = data.get("entries")
    if not isinstance(entries, list):
        return problems + ["no entries list"]
    for n, e in enumerate(entries):
        missing = [f for f in _ENTRY_FIELDS if not isinstance(e, dict) or f not in e]
        if missing:
            problems.append(f"entry {n} lacks {missing}")
    return problems


def read_table(path: Path) -> dict | None:
    """The table at ``path``; None (with a warning) if it is missing fields or is not JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        warnings.warn(f"ignoring tuned config table {path}: {e}", stacklevel=2)
        return None
    problems = validate_table(data)
    if problems:
        warnings.warn(f"ignoring tuned config table {path}: {'; '.join(problems)}", stacklevel=2)
        return None
    return data


@functools.cache
def _tables() -> dict[str, dict]:
    out = {}
    folder = tables_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            data = read_table(path)
            if data is not None:
                _warn_if_stale(path, data)
                out[path.stem] = data
    return out


def stale_entries(data: dict) -> list[dict]:
    """Entries tuned on other kernel sources than the installed ones."""
    return [e for e in data["entries"] if e.get("source_hash") != source_hash(e["op"])]


def _warn_if_stale(path: Path, data: dict) -> None:
    stale = stale_entries(data)
    if stale:
        ops = sorted({e["op"] for e in stale})
        warnings.warn(
            f"tuned config table {path.name}: {len(stale)} entries ({', '.join(ops)}) were tuned on other kernel "
            f"sources; their configs still pass is_valid before use, but re-tune or run monarchrt-tune verify",
            stacklevel=3,
        )


_generation = [0]  # bumped whenever the tables may have changed: lets callers key caches on it


def generation() -> int:
    return _generation[0]


def clear_cache() -> None:
    _tables.cache_clear()
    _generation[0] += 1


def write_table(path: Path, gpu: str, provenance: dict, entries: list[dict]) -> None:
    """Write sorted, stable JSON (reviewable diffs); entries replace those with the same identity."""
    old = read_table(path) if path.exists() else None
    merged = {_identity(e): e for e in (old or {}).get("entries", [])}
    merged.update({_identity(e): e for e in entries})
    data = {
        "schema": SCHEMA_VERSION,
        "gpu": gpu,
        "provenance": provenance,
        "entries": [merged[k] for k in sorted(merged)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    clear_cache()


def _identity(entry: dict) -> str:
    return json.dumps([entry["op"], entry["backend"], entry["key"], entry["bucket"]], sort_keys=True)


def split_key(problem_key: dict) -> tuple[dict, dict]:
    """Problem fields -> (exact-match fields, bucket fields)."""
    bucket = {f: problem_key[f] for f in BUCKET_FIELDS if f in problem_key}
    exact = {f: v for f, v in problem_key.items() if f not in BUCKET_FIELDS}
    return exact, bucket


def _distance(a: dict, b: dict) -> float:
    return sum(abs(math.log(max(a[f], 1)) - math.log(max(b.get(f, 1), 1))) for f in a)


@dataclass
class Lookup:
    config: dict
    step: str  # "exact", "nearest bucket", "same architecture (<table>)"
    table: str
    entry: dict


def lookup(op: str, backend: str, problem_key: dict, gpu: str | None, family: str) -> Lookup | None:
    """The tuned config for a problem, or None when no table has one (use the backend default)."""
    exact, bucket = split_key(problem_key)
    tables = _tables()

    def best_in(name: str) -> tuple[float, dict] | None:
        found = [
            (_distance(bucket, e["bucket"]), json.dumps(e["config"], sort_keys=True), e)
            for e in tables[name]["entries"]
            if e["op"] == op and e["backend"] == backend and e["key"] == exact
        ]
        return (min(found)[0], min(found)[2]) if found else None

    if gpu in tables:
        hit = best_in(gpu)
        if hit is not None:
            dist, entry = hit
            return Lookup(entry["config"], "exact" if dist == 0 else "nearest bucket", gpu, entry)
    for name in sorted(tables):
        if name != gpu and tables[name]["provenance"].get("family") == family:
            hit = best_in(name)
            if hit is not None:
                return Lookup(hit[1]["config"], f"same architecture ({name})", name, hit[1])
    return None


# Kernel source files each tuned op depends on (triton_kernels/), for the table's source hash.
OP_SOURCES = {
    "attention": ("monarch_attention.py", "monarch_attention_fwd.py", "monarch_attention_bwd.py"),
    "hadamard": ("hadamard.py",),
    "monarch_matmul": ("monarch_matmul.py",),
}


def source_hash(op: str) -> str:
    """sha256 over the kernel sources of ``op``: a table names it, ``verify`` compares it."""
    folder = Path(str(importlib.resources.files(_sibling("triton_kernels"))))
    h = hashlib.sha256()
    for name in OP_SOURCES[op]:
        h.update(name.encode())
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]
