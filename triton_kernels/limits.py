"""Limits of the Triton kernels that both their launchers and the backend's ``is_valid``
(backends/triton.py) need, stated once; importing this never imports Triton."""

from __future__ import annotations

# The fused stage-L backward (_stage_l_bwd, docs/attention-kernels.md) holds every query row i of a
# column in one program: b1 up to this, per input element size. 16-bit: above 64 the rows pad to 128
# (dQ alone half the register budget, 16-row key blocks). fp32: its operands' shared memory grows
# with the rows (compiled, d = 128: 72 KB at 16 rows, 136 KB at 32, 288 KB at 64, against 99 KB on
# an RTX 5090 and 227 KB on an H100). Above the limit the two unfused kernels (_stage_l_bwd_kv,
# _stage_l_bwd_q) run.
FUSED_BWD_MAX_B1 = {2: 64, 4: 16}


def fused_bwd_rows(b1: int, itemsize: int) -> int | None:
    """Rows (b1 padded to a power of two, at least 16 for tl.dot) of a fused stage-L backward
    program for inputs of ``itemsize`` bytes, or None where b1 takes the two unfused kernels."""
    if b1 > FUSED_BWD_MAX_B1.get(itemsize, 0):
        return None
    return max(16, 1 << (b1 - 1).bit_length())
