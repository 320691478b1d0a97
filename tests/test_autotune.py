"""The tuner against synthetic timings, and the config tables' write / read / lookup / fallbacks."""

import json
import math
import warnings

import pytest

from monarchrt_ops.autotune import tables
from monarchrt_ops.autotune.search import Measurement, search, valid_grid

pytest.importorskip("optuna")

SPACE = {"a": [16, 32, 64, 128], "b": [16, 32, 64, 128], "w": [2, 4, 8], "s": [1, 2, 3, 4]}


def is_valid(c):
    return None if c["a"] * c["b"] <= 4096 else f"a*b={c['a'] * c['b']} > 4096"


def model(c):
    """A bowl with its minimum at a=32, b=16, w=4, s=3, plus deterministic ripple."""
    t = 1 + 0.3 * (math.log2(c["a"]) - 5) ** 2 + 0.2 * (math.log2(c["b"]) - 4) ** 2
    t += 0.05 * (c["w"] - 4) ** 2 + 0.1 * abs(c["s"] - 3)
    return t * (1 + 0.001 * ((c["a"] * 7 + c["b"] * 3 + c["w"] + c["s"]) % 5))


class Counter:
    def __init__(self, wrong=()):
        self.calls, self.wrong = [], wrong

    def __call__(self, c):
        assert is_valid(c) is None, "an invalid config reached the timer"
        self.calls.append(dict(c))
        if (c["a"], c["b"], c["w"], c["s"]) in self.wrong:
            return Measurement(0.5, ok=False, error="rel_err 0.3 > 0.015")
        return Measurement(model(c), (model(c) * 0.99, model(c) * 1.01))


def best_valid():
    return min(model(c) for c in valid_grid(SPACE, is_valid))


def test_finds_the_optimum_in_a_fraction_of_the_grid():
    grid = valid_grid(SPACE, is_valid)
    timer = Counter()
    res = search(SPACE, is_valid, timer, n_trials=40, seed=1, progress=lambda s: None)
    assert len(grid) > 3 * 40
    assert res.measurement.time_ms <= best_valid() * 1.03
    assert len(timer.calls) <= 40 + 3  # trials plus the top-3 re-timing


def test_is_deterministic_under_a_seed():
    a, b = Counter(), Counter()
    ra = search(SPACE, is_valid, a, n_trials=15, seed=7, progress=lambda s: None)
    rb = search(SPACE, is_valid, b, n_trials=15, seed=7, progress=lambda s: None)
    assert ra.config == rb.config and a.calls == b.calls


def test_resumes_an_interrupted_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = Counter()
    search(
        SPACE, is_valid, first, n_trials=10, seed=3, storage=storage, study_name="t", top_k=1, progress=lambda s: None
    )
    second = Counter()
    res = search(SPACE, is_valid, second, n_trials=25, seed=3, storage=storage, study_name="t", resume=True,
                 top_k=1, progress=lambda s: None)  # fmt: skip
    assert len(second.calls) == 15 + 1  # only the missing trials, then one re-time
    assert res.trials == 25
    assert not {json.dumps(c, sort_keys=True) for c in second.calls[:-1]} & {
        json.dumps(c, sort_keys=True) for c in first.calls[:-1]
    }


def test_small_space_is_swept_and_wrong_configs_never_win():
    space = {"a": [16, 32], "b": [16, 32, 64], "w": [4], "s": [3]}
    optimum = min(valid_grid(space, is_valid), key=model)
    timer = Counter(wrong={(optimum["a"], optimum["b"], 4, 3)})
    res = search(space, is_valid, timer, n_trials=10, seed=0, progress=lambda s: None)
    as_ids = lambda cs: sorted(json.dumps(c, sort_keys=True) for c in cs)  # noqa: E731
    assert as_ids(timer.calls[:6]) == as_ids(valid_grid(space, is_valid))
    assert res.config != optimum and res.pruned_wrong == 1


def test_no_valid_config_is_an_error():
    with pytest.raises(ValueError, match="no valid config"):
        search({"a": [256], "b": [256], "w": [4], "s": [1]}, is_valid, Counter(), n_trials=5, progress=lambda s: None)


KEY = {"b1": 30, "b2": 52, "head_dim": 128, "dtype": "bfloat16", "causal_block_tiles": 0, "num_iters": 1,
       "backward": False}  # fmt: skip


def entry(q_tiles, config, kv_tiles=21, source_hash=None):
    return {"op": "attention", "backend": "triton", "key": KEY, "config": config, "time_ms": 1.0,
            "bucket": {"q_tiles": q_tiles, "kv_tiles": kv_tiles, "batch": 1, "heads": 12},
            "source_hash": source_hash or tables.source_hash("attention")}  # fmt: skip


def prov(family="sm90"):
    return {"gpu_name": "NVIDIA H100 80GB HBM3", "family": family}


def test_table_round_trip_and_lookup_steps(table_dir):
    tables.write_table(table_dir / "h100.json", "h100", prov(), [entry(21, {"x": 1}), entry(3, {"x": 2})])
    problem = {**KEY, "q_tiles": 3, "kv_tiles": 21, "batch": 1, "heads": 12}
    hit = tables.lookup("attention", "triton", problem, "h100", "sm90")
    assert (hit.config, hit.step) == ({"x": 2}, "exact")
    hit = tables.lookup("attention", "triton", {**problem, "q_tiles": 18}, "h100", "sm90")
    assert (hit.config, hit.step) == ({"x": 1}, "nearest bucket")
    # an H200 shares the sm90 family: it borrows the H100 table
    hit = tables.lookup("attention", "triton", problem, "h200", "sm90")
    assert hit.step == "same architecture (h100)"
    # another architecture, or another exact key, gets nothing: the backend default
    assert tables.lookup("attention", "triton", problem, "b200", "sm100") is None
    assert tables.lookup("attention", "triton", {**problem, "head_dim": 64}, "h100", "sm90") is None


def test_rewriting_replaces_entries_with_the_same_identity(table_dir):
    path = table_dir / "h100.json"
    tables.write_table(path, "h100", prov(), [entry(21, {"x": 1})])
    tables.write_table(path, "h100", prov(), [entry(21, {"x": 5}), entry(7, {"x": 6})])
    data = json.loads(path.read_text())
    assert sorted(e["config"]["x"] for e in data["entries"]) == [5, 6]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"schema": 99, "entries": []}), json.dumps([1])])
def test_corrupted_table_warns_and_is_ignored(table_dir, content):
    (table_dir / "h100.json").write_text(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tables.lookup("attention", "triton", {**KEY, "q_tiles": 3}, "h100", "sm90") is None
    assert any("ignoring tuned config table" in str(w.message) for w in caught)


def test_gpu_names():
    assert tables.gpu_table_name("NVIDIA H100 80GB HBM3") == "h100"
    assert tables.gpu_table_name("NVIDIA H200") == "h200"
    assert tables.gpu_table_name("NVIDIA GeForce RTX 5090") == "rtx5090"
    assert tables.gpu_table_name("Tesla T4") is None


def _worker(storage):
    res = search(SPACE, is_valid, Counter(), n_trials=12, seed=11, storage=storage, study_name="shared", resume=True,
                 top_k=1, progress=lambda s: None)  # fmt: skip
    return res.trials


def test_two_workers_share_one_study(tmp_path):
    import concurrent.futures
    import multiprocessing

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        counts = list(pool.map(_worker, [storage, storage]))
    import optuna

    study = optuna.load_study(study_name="shared", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 12 <= len(complete) <= 13  # one budget, shared; at most one trial in flight overshoots
    assert max(counts) == len(complete)


def test_tune_refuses_without_a_gpu_or_with_another_gpu(monkeypatch, capsys):
    from monarchrt_ops.autotune import cli

    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    assert cli.main(["--gpu", "h100"]) == 2
    assert "no CUDA device: a table is measured on the GPU it is for" in capsys.readouterr().err
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli.torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert cli.main(["verify", "--gpu", "h100"]) == 2
    assert "--gpu h100 does not match this device, NVIDIA H200 (h200)" in capsys.readouterr().err


def test_strict_mode_refuses_untuned_configs_and_takes_tuned_ones(table_dir, monkeypatch):
    import torch

    from monarchrt_ops import registry
    from monarchrt_ops.arch import Arch
    from monarchrt_ops.backends.triton import TritonAttention
    from monarchrt_ops.problem import AttentionProblem

    h100 = Arch("sm90", (9, 0), "NVIDIA H100 80GB HBM3", 132, 232448)
    problem = AttentionProblem(1, 12, 128, 30, 52, 3, 21, 0, 1, torch.bfloat16)
    backend = TritonAttention()
    config, source = registry._config_for("attention", backend, problem, h100)
    assert source.startswith("backend default: no entry") and config == backend.default_config(problem, h100)
    monkeypatch.setenv("MONARCHRT_STRICT", "1")
    with pytest.raises(RuntimeError, match="MONARCHRT_STRICT=1: no tuned triton config"):
        registry._config_for("attention", backend, problem, h100)
    tuned = {**config, "l_warps": 8}
    exact, bucket = tables.split_key(problem.key())

    def table_with(cfg):
        e = {"op": "attention", "backend": "triton", "key": exact, "bucket": bucket, "config": cfg,
             "source_hash": tables.source_hash("attention")}  # fmt: skip
        tables.write_table(table_dir / "h100.json", "h100", prov(), [e])

    table_with(tuned)
    assert registry._config_for("attention", backend, problem, h100) == (tuned, "tuned table h100.json: exact")
    # a config the backend no longer accepts is ignored, with the default in its place (outside strict mode)
    monkeypatch.delenv("MONARCHRT_STRICT")
    table_with({**config, "l_warps": 3})
    assert registry._config_for("attention", backend, problem, h100)[1].startswith("backend default")


def test_table_of_other_kernel_sources_warns_but_is_used(table_dir):
    tables.write_table(table_dir / "h100.json", "h100", prov(), [entry(3, {"x": 2}, source_hash="0123456789abcdef")])
    problem = {**KEY, "q_tiles": 3, "kv_tiles": 21, "batch": 1, "heads": 12}
    with pytest.warns(UserWarning, match="tuned on other kernel sources"):
        hit = tables.lookup("attention", "triton", problem, "h100", "sm90")
    assert hit.config == {"x": 2}


def test_committed_tables_are_well_formed():
    """Every shipped table passes the schema, and each entry's config is valid for its backend."""
    import torch

    from monarchrt_ops.arch import Arch
    from monarchrt_ops.problem import AttentionProblem, HadamardProblem, MonarchMatmulProblem
    from monarchrt_ops.registry import get_backend

    problem_of_op = {"attention": AttentionProblem, "hadamard": HadamardProblem, "monarch_matmul": MonarchMatmulProblem}
    folder = tables.tables_dir()
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text())
        assert tables.validate_table(data) == [], path
        assert [tables.entry_problems(e) for e in data["entries"]] == [[]] * len(data["entries"]), path
        assert [tables.choice_problems(c) for c in data.get("choices", [])] == [[]] * len(data.get("choices", []))
        for c in data.get("choices", []):  # choices are about backends taken only where measured
            if c["op"] == "monarch_linear":  # MonarchLinear's path (docs/design.md), not a backend of an op
                assert c["backend"] == "dense", (path, c)
                continue
            flag = getattr(get_backend(c["op"], c["backend"]), "measured_only", False)
            if callable(flag):  # measured-only for some problems: the choice names one of those in full
                where = {k: tuple(v) if isinstance(v, list) else v for k, v in c["where"].items()}
                flag = flag(problem_of_op[c["op"]](**{**where, "dtype": getattr(torch, where["dtype"])}))
            assert flag, (path, c)
        family = data["provenance"]["family"]
        arch = Arch(family, tuple(data["provenance"]["capability"]), data["provenance"]["gpu_name"])
        for e in data["entries"]:
            key = {**e["key"], **e["bucket"], "dtype": getattr(torch, e["key"]["dtype"])}
            key = {k: tuple(v) if isinstance(v, list) else v for k, v in key.items()}
            problem = problem_of_op[e["op"]](**key)
            assert get_backend(e["op"], e["backend"]).is_valid(e["config"], problem, arch) is None, (path, e)


def test_tune_cases_end_to_end_on_the_cpu(table_dir):
    """Hadamard and Monarch-matmul cases under the Triton interpreter, a wall-clock timer, the table
    written and read back by the registry: the whole tuner path except the GPU timer."""
    import time as _time

    import torch

    from monarchrt_ops import registry
    from monarchrt_ops.arch import Arch
    from monarchrt_ops.autotune.cases import HadamardCase, MonarchMatmulCase
    from monarchrt_ops.autotune.cli import tune_cases

    def wall_timer(fn, rep_ms):
        t0 = _time.perf_counter()
        fn()
        ms = (_time.perf_counter() - t0) * 1e3
        return ms, ms, ms

    cases = [
        HadamardCase(256, 32, torch.float32, device="cpu", timer=wall_timer),
        MonarchMatmulCase(16, (4, 4, 4), (4, 4, 4), torch.float32, device="cpu", timer=wall_timer),
    ]
    entries = tune_cases(cases, trials=3, seed=0, storage=None, resume=False, progress=lambda s: None)
    assert [e["op"] for e in entries] == ["hadamard", "monarch_matmul"]
    for e, case in zip(entries, cases, strict=True):
        assert case.backend.is_valid(e["config"], case.problem, case.arch) is None
        assert e["rel_err"] < 1e-5 and e["source_hash"] == tables.source_hash(e["op"])
    tables.write_table(table_dir / "h100.json", "h100", prov(), entries)
    h100 = Arch("sm90", (9, 0), "NVIDIA H100 80GB HBM3")
    for e, case in zip(entries, cases, strict=True):
        config, source = registry._config_for(case.op, case.backend, case.problem, h100)
        assert (config, source) == (e["config"], "tuned table h100.json: exact")


def test_attention_case_checks_configs_against_the_reference():
    import torch

    from monarchrt_ops.autotune.cases import AttentionCase

    case = AttentionCase("small-4-frames-12x20", torch.float32, False, device="cpu", timer=lambda fn, rep: (1.0,) * 3)
    default = case.backend.default_config(case.problem, case.arch)
    good = case.measure(default)
    assert good.ok and good.rel_err < 1e-5 and good.time_ms == 1.0
    case.ref = (case.ref[0] + 1.0,)  # a wrong answer must lose, whatever its time
    bad = case.measure(default)
    assert not bad.ok and bad.error.startswith("rel_err")


# Hardening (issue 18 item 9): a stored study is deleted only on request, arguments are checked, and a
# trial a killed worker left RUNNING is failed and its config measured again.
def _quiet_search(timer, storage, **kw):
    kw = {"n_trials": 10, "seed": 3, "study_name": "t", "top_k": 1, "progress": lambda s: None, **kw}
    return search(SPACE, is_valid, timer, storage=storage, **kw)


def test_a_stored_study_is_never_deleted_without_fresh(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _quiet_search(Counter(), storage)
    complete = lambda: [t for t in optuna.load_study(study_name="t", storage=storage).trials  # noqa: E731
                        if t.state == optuna.trial.TrialState.COMPLETE]  # fmt: skip
    with pytest.raises(ValueError, match=r"study 't' in sqlite:.* already holds \d+ trials.*--resume.*--fresh"):
        _quiet_search(Counter(), storage)  # a rerun without --resume: refused, nothing discarded
    assert len(complete()) == 10
    with pytest.raises(ValueError, match="resume and fresh exclude each other"):
        _quiet_search(Counter(), storage, resume=True, fresh=True)
    again = Counter()
    res = _quiet_search(again, storage, fresh=True)  # explicit: starts over
    assert res.trials == 10 and len(again.calls) == 10 + 1 and len(complete()) == 10


def test_a_second_worker_without_resume_leaves_the_first_running(tmp_path):
    """The second worker starts while the first is inside a trial: it used to delete the shared study,
    and the first died inside Optuna (UnboundLocalError)."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    errors = []

    class FirstWorker(Counter):
        def __call__(self, c):
            if len(self.calls) == 2:
                try:
                    _quiet_search(Counter(), storage)
                except ValueError as e:
                    errors.append(str(e))
            return super().__call__(c)

    res = _quiet_search(FirstWorker(), storage, resume=True)
    assert len(errors) == 1 and "pass --resume" in errors[0]
    assert res.trials == 10


@pytest.mark.parametrize(
    "kw, match", [({"n_trials": 0}, "n_trials=0 must be an int >= 1"), ({"top_k": 0}, "top_k=0 must be an int >= 1")]
)
def test_search_arguments_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        search(SPACE, is_valid, Counter(), **{"n_trials": 5, "progress": lambda s: None, **kw})


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--gpu", "h100", "--trials", "0"], "argument --trials: 0 must be >= 1"),
        (["--gpu", "h100", "--trials", "x"], "argument --trials: 'x' is not an int"),
        (["--gpu", "h100", "--resume", "--fresh"], "argument --fresh: not allowed with argument --resume"),
        (["--gpu", "h100", "--shapes", "nope"], "--shapes: unknown shape 'nope'"),
    ],
    ids=["trials-0", "trials-text", "resume-and-fresh", "unknown-shape"],
)
def test_tune_cli_rejects_bad_arguments(argv, match, capsys):
    from monarchrt_ops.autotune import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert match in capsys.readouterr().err


_KILLED_WORKER = """
import os, sys, time
sys.path.insert(0, {tests!r})
from monarchrt_ops.autotune import search as s
from test_autotune import SPACE, is_valid, Counter
s.HEARTBEAT_S, s.GRACE_S = 1, 1
class Dies(Counter):
    def __call__(self, c):
        if len(self.calls) == 3:
            # killed inside its fourth trial, once Optuna's heartbeat thread (which writes its first
            # heartbeat asynchronously) has written one: a trial with no heartbeat row is never stale
            time.sleep(1.5 * s.HEARTBEAT_S)
            os._exit(7)
        return super().__call__(c)
s.search(SPACE, is_valid, Dies(), n_trials=20, seed=0, storage={storage!r}, study_name="k", progress=lambda m: None)
"""


def test_a_trial_left_running_by_a_killed_worker_is_measured_again(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import time

    import optuna

    from monarchrt_ops.autotune import search as search_module

    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    code = _KILLED_WORKER.format(tests=os.path.dirname(__file__), storage=storage)
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 7
    study = optuna.load_study(study_name="k", storage=storage)
    running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == 1 and len([t for t in study.trials if t.state.is_finished()]) == 3
    monkeypatch.setattr(search_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(search_module, "GRACE_S", 1)
    time.sleep(2.5)  # the dead worker's heartbeat goes stale
    timer = Counter()
    res = search(SPACE, is_valid, timer, n_trials=20, seed=0, storage=storage, study_name="k", resume=True,
                 top_k=1, progress=lambda m: None)  # fmt: skip
    states = [t.state for t in optuna.load_study(study_name="k", storage=storage).trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert res.trials == 20
    assert running[0].params in timer.calls  # the killed trial's config was measured after all
