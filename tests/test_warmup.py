"""``monarchrt-warmup`` (monarchrt_ops/warmup.py): every Triton config a table names is launched once,
on its entry's own problem, with a progress bar. On the CPU the tables are of the 'cpu' family and
the kernels run under TRITON_INTERPRET=1 (nothing is compiled there; on a GPU Triton's cache fills)."""

import io
import json

import pytest
import torch

from monarchrt_ops import tables, warmup
from monarchrt_ops.backends.triton import TritonAttention


def _entry(op, key, bucket, config):
    return {"op": op, "backend": "triton", "key": key, "bucket": bucket, "config": config,
            "source_hash": tables.source_hash(op)}  # fmt: skip


ATTN_KEY = {"b1": 4, "b2": 8, "head_dim": 64, "dtype": "float32", "causal_block_tiles": 0, "num_iters": 1}
ATTN_BUCKET = {"q_tiles": 1, "kv_tiles": 2, "batch": 1, "heads": 1}


@pytest.fixture
def cpu_tables(tmp_path, monkeypatch):
    """A 'cpu' family table with one entry of each op (and a duplicate, an invalid and a CUDA entry)."""
    from monarchrt_ops.problem import AttentionProblem

    problem = AttentionProblem(**{**ATTN_KEY, **ATTN_BUCKET, "dtype": torch.float32})
    attn_cfg = TritonAttention().default_config(problem, None)
    hadamard = _entry("hadamard", {"n": 64, "m": 1, "dtype": "float32", "fp32_intermediate": False}, {"rows": 16},
                      {"tile": 2048})  # fmt: skip
    entries = [
        hadamard,
        {**hadamard, "bucket": {"rows": 16}},  # the same config again: launched once
        {**hadamard, "config": {"tile": 1000}},  # not in the search space: the registry ignores it too
        {**hadamard, "backend": "cuda", "config": {}},  # compiled ahead of time: nothing to warm
        _entry(
            "monarch_matmul",
            {"w1_shape": [4, 16, 16], "w2_shape": [4, 16, 16], "dtype": "float32"},
            {"rows": 16},
            {"block_m": 16, "num_warps": 4},
        ),  # fmt: skip
        _entry("attention", {**ATTN_KEY, "backward": True}, ATTN_BUCKET, attn_cfg),
    ]
    table = {"schema": 1, "gpu": "cpu", "provenance": {"family": "cpu", "gpu_name": "cpu"}, "entries": entries}
    (tmp_path / "cpu.json").write_text(json.dumps(table))
    monkeypatch.setenv("MONARCHRT_TUNED_CONFIGS", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    tables.clear_cache()
    yield tmp_path
    tables.clear_cache()


def test_each_distinct_valid_triton_config_is_one_job(cpu_tables):
    jobs = warmup.table_jobs(torch.device("cpu"))
    assert [(op, cfg) for op, _, cfg, _, _ in jobs][:2] == [
        ("hadamard", {"tile": 2048}),
        ("monarch_matmul", {"block_m": 16, "num_warps": 4}),
    ]
    assert [j[0] for j in jobs] == ["hadamard", "monarch_matmul", "attention"]
    assert jobs[2][3].backward and jobs[2][4] == "cpu.json attention q_tiles=1/kv_tiles=2/batch=1/heads=1"


def test_warmup_launches_every_job_with_a_progress_bar(cpu_tables, monkeypatch):
    launched = []
    real = warmup.run_problem
    monkeypatch.setattr(warmup, "run_problem", lambda op, *a: launched.append(op) or real(op, *a))
    jobs = warmup.table_jobs(torch.device("cpu"))
    out = io.StringIO()
    warmup.warmup(jobs, torch.device("cpu"), warmup.Progress(len(jobs), stream=out))
    assert launched == ["hadamard", "monarch_matmul", "attention"]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[" + "#" * 10 + "." * 20 + "] 1/3 cpu.json hadamard rows=16 (")
    assert lines[-1].startswith("[" + "#" * 30 + "] 3/3 cpu.json attention")


def test_shapes_add_the_registrys_choice_for_forward_and_backward(cpu_tables):
    jobs = warmup.shape_jobs(["small-4-frames-12x20"], True, torch.float32, torch.device("cpu"))
    assert [label for *_, label in jobs] == ["small-4-frames-12x20 forward", "small-4-frames-12x20 backward"]
    problem = jobs[0][3]
    assert (problem.b1, problem.b2, problem.q_tiles, problem.heads, problem.head_dim) == (12, 20, 4, 4, 64)
    assert jobs[0][2] == TritonAttention().default_config(problem, None)  # no table entry: the default


def test_cli_needs_a_gpu_for_the_default_device(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert warmup.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_cli_rejects_an_unknown_shape(cpu_tables, capsys):
    assert warmup.main(["--device", "cpu", "--shapes", "nope"]) == 2
    assert "unknown shape 'nope'" in capsys.readouterr().err
