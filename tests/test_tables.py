"""Tuned tables at run time (monarchrt_ops/tables.py): a bad table or entry never breaks a call, and
measured automatic choices come from the tables (a GPU's own, then its architecture's default)."""

import json
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import FakeExtension

from monarchrt_ops import registry, tables
from monarchrt_ops.arch import Arch
from monarchrt_ops.backends import cuda
from monarchrt_ops.problem import AttentionProblem, HadamardProblem

H100 = Arch("sm90", (9, 0), "NVIDIA H100 80GB HBM3", 132, 232448)
H200 = Arch("sm90", (9, 0), "NVIDIA H200", 132, 232448)
HAD = HadamardProblem(1024, 1024, 1, torch.bfloat16)
KEY, BUCKET = tables.split_key(HAD.key())


def entry(config, bucket=None, **kw):
    return {"op": "hadamard", "backend": "triton", "key": KEY, "bucket": BUCKET if bucket is None else bucket,
            "config": config, "source_hash": tables.source_hash("hadamard"), **kw}  # fmt: skip


def write(path, entries=(), choices=None, family="sm90"):
    data = {"schema": 1, "gpu": path.stem, "provenance": {"family": family, "gpu_name": path.stem},
            "entries": list(entries)}  # fmt: skip
    if choices is not None:
        data["choices"] = choices
    path.write_text(json.dumps(data))


def config_of(arch=H100):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables.clear_cache()
        config, source = registry._config_for("hadamard", registry.get_backend("hadamard", "triton"), HAD, arch)
    return config, source, [str(w.message) for w in caught]


def test_a_non_utf8_table_is_ignored_with_a_warning(table_dir):
    (table_dir / "h100.json").write_bytes(b'{"schema": 1, "gpu": "h\xff100"}')
    config, source, caught = config_of()
    assert source.startswith("backend default") and config == {"tile": 8192}
    assert any("ignoring tuned config table" in w and "utf-8" in w for w in caught)


@pytest.mark.parametrize(
    "bad, problem",
    [
        (entry({"tile": 2048}, bucket="1024"), "bucket '1024' is not an object of non-negative ints"),
        (entry({"tile": 2048}, bucket=[1024]), "bucket [1024] is not an object of non-negative ints"),
        (entry({"tile": 2048}, bucket={"rows": "1024"}), "is not an object of non-negative ints"),
        (entry({"tile": 2048.0}), "config {'tile': 2048.0} is not an object of ints and strings"),
        (entry({"tile": True}), "is not an object of ints and strings"),
        (entry({"tile": 2048}, key="hadamard"), "key 'hadamard' is not an object"),
        ({**entry({"tile": 2048}), "op": 3}, "op 3 is not a string"),
        ([1, 2], "not an object"),
    ],
    ids=["str-bucket", "list-bucket", "str-rows", "float-config", "bool-config", "str-key", "int-op", "list"],
)
def test_a_bad_entry_is_dropped_with_a_warning_and_the_rest_is_used(table_dir, bad, problem):
    write(table_dir / "h100.json", [bad, entry({"tile": 4096}, bucket={"rows": 64})])
    config, source, caught = config_of()
    assert (config, source) == ({"tile": 4096}, "tuned table h100.json: nearest bucket")
    assert any("ignoring 1 bad item(s): entries[0]: " in w and problem in w for w in caught), caught


def test_a_float_config_alone_falls_back_to_the_default(table_dir):
    """64.0 == 64 passes is_valid; the kernel would then fail on every call."""
    write(table_dir / "h100.json", [entry({"tile": 4096.0})])
    config, source, _ = config_of()
    assert config == {"tile": 8192} and source.startswith("backend default")


def test_a_missing_tables_folder_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("MONARCHRT_TUNED_CONFIGS", str(tmp_path / "nowhere"))
    config, source, caught = config_of()
    assert source.startswith("backend default")
    assert any("is not a folder: no tuned tables are used" in w and "nowhere" in w for w in caught)
    tables.clear_cache()


def test_measured_choices_come_from_the_tables(table_dir, monkeypatch):
    """The shipped sm_90 default applies wherever the tables are; a GPU's own table decides first."""
    monkeypatch.setattr(cuda, "extension", lambda: (FakeExtension, None))
    problem = AttentionProblem(1, 12, 128, 30, 52, 3, 21, 0, 1, torch.bfloat16, sm_scale=0.088)
    tables.clear_cache()
    sel = registry.select("attention", problem, H200)
    assert sel.backend.name == "triton" and "(default-sm90.json)" in dict(sel.rejected)["cuda"]
    take = {"op": "attention", "backend": "cuda", "auto": True, "where": {"q_tiles": {"max": 3}}, "why": "measured"}
    write(table_dir / "h200.json", choices=[take])
    tables.clear_cache()
    assert registry.select("attention", problem, H200).backend.name == "cuda"
    assert registry.select("attention", problem, H100).backend.name == "cuda"  # same family: borrowed
    longer = AttentionProblem(**{**problem.__dict__, "q_tiles": 21})  # outside the choice: the default's
    assert registry.select("attention", longer, H200).backend.name == "triton"
    # a bad choice is dropped with a warning; the default decides again
    write(table_dir / "h200.json", choices=[{**take, "auto": "yes"}])
    with pytest.warns(UserWarning, match="choices\\[0\\]: auto 'yes' is not a bool"):
        tables.clear_cache()
        assert registry.select("attention", problem, H200).backend.name == "triton"


def test_the_registry_does_not_import_the_tuner():
    code = (
        "import sys, torch, monarchrt_ops as m; m.hadamard(torch.randn(4, 64)); "
        "print('monarchrt_ops.autotune' in sys.modules, 'optuna' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


# MONARCHRT_STRICT (issue 18 item 12): the usual spellings, anything else an error naming the variable
@pytest.mark.parametrize("value, strict", [("1", True), ("true", True), ("YES", True), ("0", False), ("off", False)])
def test_strict_mode_reads_the_usual_spellings(monkeypatch, value, strict):
    from monarchrt_ops.registry import strict_mode

    monkeypatch.setenv("MONARCHRT_STRICT", value)
    assert strict_mode() is strict


def test_strict_mode_rejects_other_values(monkeypatch):
    from monarchrt_ops.registry import strict_mode

    monkeypatch.setenv("MONARCHRT_STRICT", "maybe")
    with pytest.raises(ValueError, match="MONARCHRT_STRICT='maybe'"):
        strict_mode()
