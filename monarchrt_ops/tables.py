"""Tuned tables at run time: reading, validation, config lookup and the measured automatic choices.

A table is ``tuned_configs/<gpu>.json``, written by ``monarchrt-tune --gpu <gpu>`` on that GPU
(the writing lives in the tuner, ``monarchrt_ops.autotune.tables``)::

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
      ],
      "choices": [
        {"op": "hadamard", "backend": "cuda", "auto": false, "where": {"m": {"min": 2}, "n": {"max": 16384}},
         "why": "measured slower than Triton ... (bench/NOTES.md)"}
      ]
    }

Config lookup order (the step taken is reported by ``python -m monarchrt_ops info``):
exact key and bucket -> same key, nearest bucket -> a table of another GPU of the same
architecture family (same key, nearest bucket) -> the backend's default config.

Measured choices (``choices``): whether automatic selection takes a backend that is only taken where
it was measured faster (``measured_only`` backends: ``cuda``) for a problem. The first choice of the
op and backend whose ``where`` matches the problem's key decides (``auto`` true: take it; false: pass
it over, saying ``why``), looked up in this GPU's table, then in the other tables of its architecture
family, then in the shipped per-architecture default ``default-<family>.json``. No match anywhere: the
backend was not measured there, and only an explicit ``backend=`` runs it. The same format, with op
``monarch_linear`` and backend ``dense``, says where ``MonarchLinear`` takes its dense path
(``monarch_matmul.linear_path``; no match: structured).

Tables never break a call: a table that is not JSON (or not UTF-8), or lacks its structure, is
ignored with a warning; an entry or a choice with a field of the wrong type (a string or list
``bucket``, a float config value) is dropped with a warning and the rest of the table is used.
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
DEFAULT_PREFIX = "default-"  # default-<family>.json: the shipped per-architecture table
_ENTRY_FIELDS = ("op", "backend", "key", "bucket", "config")
_CHOICE_FIELDS = ("op", "backend", "auto", "where", "why")


def gpu_table_name(device_name: str) -> str | None:
    """Table name of a GPU (``'NVIDIA H100 80GB HBM3'`` -> ``'h100'``); None if we have none for it."""
    for marker, name in GPU_TABLE_NAMES.items():
        if marker in device_name:
            return name
    return None


def _sibling(name: str) -> str:
    """``<package>.<name>`` for the package this module is installed in: a vendored copy under
    another name reads its own tables and kernels, not monarchrt_ops'."""
    return f"{__package__}.{name}"


def packaged_dir() -> Path:
    """The installed ``tuned_configs`` folder of this package (its tables and per-architecture defaults)."""
    return Path(str(importlib.resources.files(_sibling("tuned_configs"))))


def tables_dir() -> Path:
    """``MONARCHRT_TUNED_CONFIGS`` if set, else the installed ``<package>/tuned_configs``."""
    override = os.environ.get("MONARCHRT_TUNED_CONFIGS")
    if override:
        return Path(override)
    return packaged_dir()


# --- validation ------------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _scalar(x) -> bool:
    """A key value: a str, a bool, an int, or a list of ints (Monarch matmul's weight shapes)."""
    return isinstance(x, (str, bool)) or _is_int(x) or (isinstance(x, list) and all(map(_is_int, x)))


def _str_dict(x, value_ok) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and value_ok(v) for k, v in x.items())


def entry_problems(e: Any) -> list[str]:
    """What is wrong with one config entry (empty: fine). Config values are ints or strings: a float
    (64.0 == 64 passes is_valid) would reach a kernel that takes only ints."""
    if not isinstance(e, dict):
        return ["not an object"]
    missing = [f for f in _ENTRY_FIELDS if f not in e]
    if missing:
        return [f"lacks {missing}"]
    out = []
    for f in ("op", "backend"):
        if not isinstance(e[f], str):
            out.append(f"{f} {e[f]!r} is not a string")
    if not _str_dict(e["key"], _scalar):
        out.append(f"key {e['key']!r} is not an object of strings, bools, ints and int lists")
    if not _str_dict(e["bucket"], lambda v: _is_int(v) and v >= 0):
        out.append(f"bucket {e['bucket']!r} is not an object of non-negative ints")
    elif set(e["bucket"]) - set(BUCKET_FIELDS):
        out.append(f"bucket fields {sorted(set(e['bucket']) - set(BUCKET_FIELDS))} are not in {BUCKET_FIELDS}")
    if not _str_dict(e["config"], lambda v: _is_int(v) or isinstance(v, str)):
        out.append(f"config {e['config']!r} is not an object of ints and strings")
    if "source_hash" in e and not isinstance(e["source_hash"], str):
        out.append(f"source_hash {e['source_hash']!r} is not a string")
    return out


def _condition_ok(c) -> bool:
    """A ``where`` condition: an exact value, or {"min": x, "max": y} (either, ints)."""
    if isinstance(c, dict):
        return bool(c) and set(c) <= {"min", "max"} and all(map(_is_int, c.values()))
    return _scalar(c)


def choice_problems(c: Any) -> list[str]:
    """What is wrong with one measured choice (empty: fine)."""
    if not isinstance(c, dict):
        return ["not an object"]
    missing = [f for f in _CHOICE_FIELDS if f not in c]
    if missing:
        return [f"lacks {missing}"]
    out = [f"{f} {c[f]!r} is not a string" for f in ("op", "backend", "why") if not isinstance(c[f], str)]
    if not isinstance(c["auto"], bool):
        out.append(f"auto {c['auto']!r} is not a bool")
    if not _str_dict(c["where"], _condition_ok):
        out.append(f"where {c['where']!r} is not an object of values and {{min, max}} int ranges")
    return out


def validate_table(data: Any) -> list[str]:
    """Problems with a table's structure, that make the whole table unusable (empty list: fine).
    Problems of single entries and choices are :func:`entry_problems` and :func:`choice_problems`."""
    if not isinstance(data, dict):
        return ["the table is not a JSON object"]
    problems = []
    if data.get("schema") != SCHEMA_VERSION:
        problems.append(f"schema={data.get('schema')!r}, expected {SCHEMA_VERSION}")
    if not isinstance(data.get("provenance"), dict):
        problems.append("no provenance object")
    if not isinstance(data.get("entries"), list):
        problems.append("no entries list")
    if not isinstance(data.get("choices", []), list):
        problems.append("choices is not a list")
    return problems


def read_table(path: Path) -> dict | None:
    """The table at ``path`` with its bad entries and choices dropped (one warning naming them);
    None (with a warning) if it is not UTF-8 JSON or lacks the table structure."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"ignoring tuned config table {path}: {e}", stacklevel=2)
        return None
    problems = validate_table(data)
    if problems:
        warnings.warn(f"ignoring tuned config table {path}: {'; '.join(problems)}", stacklevel=2)
        return None
    dropped = []
    for field, check in (("entries", entry_problems), ("choices", choice_problems)):
        kept = []
        for n, item in enumerate(data.get(field, [])):
            bad = check(item)
            if bad:
                dropped.append(f"{field}[{n}]: {'; '.join(bad)}")
            else:
                kept.append(item)
        data[field] = kept
    if dropped:
        warnings.warn(f"tuned config table {path}: ignoring {len(dropped)} bad item(s): {' | '.join(dropped)}",
                      stacklevel=2)  # fmt: skip
    return data


# --- loading ---------------------------------------------------------------------------------------
@functools.cache
def _load(folder: str) -> dict[str, dict]:
    """Every table of ``folder``, and the packaged per-architecture defaults wherever the folder is."""
    out = {}
    path = Path(folder)
    if path.is_dir():
        for table in sorted(path.glob("*.json")):
            data = read_table(table)
            if data is not None:
                _warn_if_stale(table, data)
                out[table.stem] = data
    else:
        warnings.warn(f"MONARCHRT_TUNED_CONFIGS={folder!r} is not a folder: no tuned tables are used", stacklevel=3)
    packaged = packaged_dir()
    if path != packaged:
        for table in sorted(packaged.glob(f"{DEFAULT_PREFIX}*.json")):
            if table.stem not in out:
                data = read_table(table)
                if data is not None:
                    out[table.stem] = data
    return out


def loaded() -> dict[str, dict]:
    """Every usable table by name (``tables_dir()``'s and the packaged per-architecture defaults)."""
    return _load(str(tables_dir()))


def stale_entries(data: dict) -> list[dict]:
    """Entries tuned on other kernel sources than the installed ones (or for an op with none)."""
    return [e for e in data["entries"] if e["op"] not in OP_SOURCES or e.get("source_hash") != source_hash(e["op"])]


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
    """Read the tables again on next use (after writing one, or pointing MONARCHRT_TUNED_CONFIGS elsewhere)."""
    _load.cache_clear()
    _generation[0] += 1


# --- config lookup ---------------------------------------------------------------------------------
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


def family_tables(tables: dict, gpu: str | None, family: str) -> list[str]:
    """The tables to ask, in order: this GPU's, the other GPUs' of its family, the family's default."""
    same = [n for n in sorted(tables) if n != gpu and tables[n]["provenance"].get("family") == family]
    default = f"{DEFAULT_PREFIX}{family}"
    return ([gpu] if gpu in tables else []) + [n for n in same if n != default] + ([default] if default in same else [])


def lookup(op: str, backend: str, problem_key: dict, gpu: str | None, family: str) -> Lookup | None:
    """The tuned config for a problem, or None when no table has one (use the backend default)."""
    exact, bucket = split_key(problem_key)
    tables = loaded()

    def best_in(name: str) -> tuple[float, dict] | None:
        found = [
            (_distance(bucket, e["bucket"]), json.dumps(e["config"], sort_keys=True), e)
            for e in tables[name]["entries"]
            if e["op"] == op and e["backend"] == backend and e["key"] == exact
        ]
        return (min(found)[0], min(found)[2]) if found else None

    for name in family_tables(tables, gpu, family):
        hit = best_in(name)
        if hit is not None:
            dist, entry = hit
            if name == gpu:
                return Lookup(entry["config"], "exact" if dist == 0 else "nearest bucket", gpu, entry)
            return Lookup(entry["config"], f"same architecture ({name})", name, entry)
    return None


# --- measured choices ------------------------------------------------------------------------------
@dataclass
class Choice:
    auto: bool
    why: str
    table: str


def _matches(where: dict, problem_key: dict) -> bool:
    for field, cond in where.items():
        if field not in problem_key:
            return False
        value = problem_key[field]
        if isinstance(cond, dict):
            if not _is_int(value) or value < cond.get("min", value) or value > cond.get("max", value):
                return False
        elif value != cond:
            return False
    return True


def choice(op: str, backend: str, problem_key: dict, gpu: str | None, family: str) -> Choice | None:
    """The measured choice for taking ``backend`` automatically for a problem, or None (never measured)."""
    tables = loaded()
    for name in family_tables(tables, gpu, family):
        for c in tables[name].get("choices", []):
            if c["op"] == op and c["backend"] == backend and _matches(c["where"], problem_key):
                return Choice(c["auto"], c["why"], name)
    return None


# --- kernel sources --------------------------------------------------------------------------------
# Kernel source files each tuned op depends on (triton_kernels/), for the table's source hash.
OP_SOURCES = {
    "attention": ("monarch_attention.py", "monarch_attention_fwd.py", "monarch_attention_bwd.py", "limits.py"),
    "hadamard": ("hadamard.py",),
    "monarch_matmul": ("monarch_matmul.py",),
}


@functools.cache
def source_hash(op: str) -> str:
    """sha256 over the kernel sources of ``op`` (of this package: a vendored copy hashes its own
    copies): a table names it, ``verify`` compares it."""
    folder = Path(str(importlib.resources.files(_sibling("triton_kernels"))))
    h = hashlib.sha256()
    for name in OP_SOURCES[op]:
        h.update(name.encode())
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]
