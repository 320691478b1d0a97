"""The tuner's side of the config tables: writing them. Reading, validation and the run-time lookup
live in the runtime package (``monarchrt_ops/tables.py``, which the registry uses without importing
the tuner); their names are re-exported here for the tuner's commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..tables import (  # noqa: F401  (the tuner's commands and tests use them from here)
    BUCKET_FIELDS,
    GPU_TABLE_NAMES,
    OP_SOURCES,
    SCHEMA_VERSION,
    Lookup,
    choice,
    choice_problems,
    clear_cache,
    entry_problems,
    generation,
    gpu_table_name,
    lookup,
    read_table,
    source_hash,
    split_key,
    stale_entries,
    tables_dir,
    validate_table,
)


def write_table(path: Path, gpu: str, provenance: dict, entries: list[dict]) -> None:
    """Write sorted, stable JSON (reviewable diffs); entries replace those with the same identity, and
    the table's measured choices are kept."""
    old = read_table(path) if path.exists() else None
    merged = {_identity(e): e for e in (old or {}).get("entries", [])}
    merged.update({_identity(e): e for e in entries})
    data = {
        "schema": SCHEMA_VERSION,
        "gpu": gpu,
        "provenance": provenance,
        "entries": [merged[k] for k in sorted(merged)],
    }
    if old and old.get("choices"):
        data["choices"] = old["choices"]
    path.parent.mkdir(parents=True, exist_ok=True)
    # whole or not at all: a run stopped mid-write (the tuner writes after every case) must not leave a
    # truncated table that the next write would rebuild from that run's entries alone
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    clear_cache()


def _identity(entry: dict) -> str:
    return json.dumps([entry["op"], entry["backend"], entry["key"], entry["bucket"]], sort_keys=True)
