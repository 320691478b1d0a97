"""bench/wgmma_rate.cu (the narrow-wgmma rate measurement docs/attention-kernels.md plans with) must
keep building for sm_90a wherever nvcc is on PATH, as the extension must."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_wgmma_rate_builds_for_sm90a(tmp_path):
    pytest.importorskip("cutlass_library")
    import cutlass_library

    inc = Path(cutlass_library.__file__).parent / "source" / "include"
    cmd = ["nvcc", "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", f"-I{inc}",
           str(ROOT / "bench" / "wgmma_rate.cu"), "-o", str(tmp_path / "wgmma_rate")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "serialized" not in run.stderr, "ptxas serialises the MMAs: the rate would not be the issue rate"
