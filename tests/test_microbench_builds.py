"""bench/wgmma_rate.cu and bench/dsmem_rate.cu (the MMA-rate and distributed-shared-memory
measurements docs/attention-kernels.md designs with) must keep building for sm_90a wherever nvcc is
on PATH, as the extension must."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build(source: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = ["nvcc", "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", *flags,
           str(ROOT / "bench" / source), "-o", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_wgmma_rate_builds_for_sm90a(tmp_path):
    pytest.importorskip("cutlass_library")
    import cutlass_library

    inc = Path(cutlass_library.__file__).parent / "source" / "include"
    run = _build("wgmma_rate.cu", tmp_path / "wgmma_rate", f"-I{inc}")
    assert "serialized" not in run.stderr, "ptxas serialises the MMAs: the rate would not be the issue rate"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_dsmem_rate_builds_for_sm90a(tmp_path):
    _build("dsmem_rate.cu", tmp_path / "dsmem_rate")
