"""The ``triton`` backend: Triton kernels on CUDA GPUs, or on the CPU under ``TRITON_INTERPRET=1``.

Triton is imported lazily, on the first launch, so importing monarchrt_ops never needs it.
Attention's stage R is one config choice (``stage_r``): the Triton kernel, or on sm_90a the compiled
extension's warpgroup-MMA kernel (csrc/attention/stage_r.cuh, docs/attention-kernels.md (f)), which
writes the same scratch for the same Triton stage L; the choice exists only where that kernel runs.
So are stage R's backward kernels (csrc/attention/stage_r_bwd.cuh, docs/attention-kernels.md (g)): the
key-row one, dK and dV (``stage_r_bwd``), and the query-row one, dQ (``stage_r_dq``); the last pass's
stage-L backward (``stage_l_bwd``: csrc/attention/stage_l_bwd.cuh, docs/attention-kernels.md (h)); and the
forward's stage L (``stage_l``: csrc/attention/stage_l.cuh, docs/attention-kernels.md (i)).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util

import torch

from ..arch import Arch
from ..problem import AttentionProblem
from ..registry import env_get
from . import cuda

HEAD_DIMS = (64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_WARPS = (2, 4, 8)
# Register budget of one program: fp32 accumulators of [block, head_dim] (two in stage R: aL and
# Y) beyond 128 KB per program spill on sm_90 (64 K registers per SM, 4 B each, at most half per program).
_MAX_ACC_BYTES = 128 * 1024
# The fused stage-L backward's blocks per thread (it is checked with its warps, l_warps): ptxas for
# sm_90a (bf16, d = 128) spills 0-84 B at <= 488 B a thread (rows x keys: 32 x 32 and 64 x 16 at 4 warps,
# 32 x 64 and 64 x 32 at 8) and 656-2532 B above (32 x 64 and 64 x 32 at 4 warps, 64 x 64 at 8).
_MAX_FUSED_BWD_BYTES_PER_THREAD = 512
_MAX_GRID_YZ = 65535  # CUDA's limit on a launch grid's y and z dimensions (x: 2^31 - 1)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _fused_bwd_bytes(rows: int, keys: int, head_dim: int) -> int:
    """fp32 blocks of the fused stage-L backward: the [rows, d] dQ accumulator, the [keys, d] dY and
    daL (counted as both live) and three [rows, keys] blocks (logits / L, dP, dS)."""
    return (rows * head_dim + 2 * keys * head_dim + 3 * rows * keys) * 4


def _fused_bwd_rows(problem: AttentionProblem) -> int | None:
    """Rows of the fused stage-L backward's programs, None where b1 takes the two unfused kernels
    (the limit: triton_kernels/limits.py, imported here, not at import, as every kernel module is)."""
    from ..triton_kernels.limits import fused_bwd_rows

    return fused_bwd_rows(problem.b1, problem.dtype.itemsize)


def _interpreting() -> bool:
    return env_get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernels(name: str):
    """The module ``triton_kernels.<name>``, imported on first use (an import statement costs ~1 us a call)."""
    return importlib.import_module(f"..triton_kernels.{name}", __package__)


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


class _Triton:
    """Shared statements of every Triton backend: where Triton runs, and config membership."""

    name = "triton"

    def supports(self, problem, arch: Arch) -> str | None:
        if not _triton_installed():
            return "triton is not installed (pip install triton)"
        if not arch.is_cuda and not (arch.family == "cpu" and _interpreting()):
            return f"no CUDA device ({arch.family}); set TRITON_INTERPRET=1 to run Triton on the CPU"
        if problem.dtype not in DTYPES:
            return f"dtype {problem.dtype} is not in {DTYPES}"
        if not arch.is_cuda and problem.dtype == torch.bfloat16:
            return "the Triton interpreter cannot run bf16 tl.dot; use fp16/fp32 on the CPU"
        if arch.is_cuda and arch.capability < (8, 0):
            return f"compute capability {arch.capability} < 8.0"
        return None

    def is_valid(self, config: dict, problem, arch: Arch) -> str | None:
        space = self.search_space(problem, arch)
        if set(config) != set(space):
            return f"config keys {sorted(config)} != {sorted(space)}"
        for key, allowed in space.items():
            if config[key] not in allowed:
                return f"{key}={config[key]} not in {allowed}"
        return None


class TritonAttention(_Triton):
    def supports(self, problem: AttentionProblem, arch: Arch) -> str | None:
        reason = super().supports(problem, arch)
        if reason is None and problem.head_dim not in HEAD_DIMS:
            return f"head_dim={problem.head_dim} is not in {HEAD_DIMS}"
        if reason is None and problem.batch * problem.heads > _MAX_GRID_YZ:  # every kernel's grid z
            return f"batch * heads = {problem.batch * problem.heads}: the kernels take up to {_MAX_GRID_YZ}"
        return reason

    def default_config(self, problem: AttentionProblem, arch: Arch) -> dict:
        # fp32 blocks are a quarter the area: 64-wide ones need 330 KB of shared memory in the stage-R
        # backward, 16-wide ones 99 KB, under even an RTX 5090's 99 KB (tests/test_triton_compile.py)
        wide = 16 if problem.dtype == torch.float32 else 64
        # forward stage R: rows of (a, j) pairs across query tiles; the H200 sweep (bench/sweep_forward.py,
        # docs/attention-kernels.md) found 64 rows, 4 warps and an l block of min(64, b2 rounded up to a
        # power of two) best or within 1 % of it at 30x52, 45x80 and 15x26
        row_block = min(wide, max(16, _next_pow2(problem.b2)))
        block_i = min(64 if wide == 64 else 32, max(16, _next_pow2(problem.b1)))
        # forward stage L: key blocks of 128 rows for up to 32 query rows, 64 for 64 (the H200 sweep,
        # bench/sweep_forward.py --stage l: 128 best at 30x52 and 15x26, 64 at 45x80, where 128 spills);
        # the backward's delta kernel (num_iters > 1) and, for b1 > 64, its dQ kernel hold three [rows,
        # keys] fp32 blocks, so half that (not yet swept); the fused stage-L backward (b1 <= 64: every
        # row, block_k key rows a step, flat across key tiles) a [rows, d] accumulator beside two
        # [keys, d] products: at 4 warps 32 keys for 32 rows, 16 for 64 (the register statement in
        # is_valid; not yet swept on the GPU: the unfused daL/dY kernel's sweep found 64 best, which
        # ptxas shows spilling 2 KB a thread there)
        # stage R on warpgroup MMA where it runs, except on num_iters > 1 passes with b2 <= 64: the H200 run
        # of bench/stage_r_check.py (bench/results/h200-stage-r-wgmma.json) measured it faster than Triton's
        # at every shape with one pass (30x52 stage R 1.86 against 2.13 ms, 720p 4.63 / 9.07, 15x26 6.06 /
        # 6.49, 3 vs 21 frames 0.35 / 0.39) and in the backward, but num_iters = 2 slower at 30x52 (8.18
        # against 7.82 ms), block-causal and 15x26, faster at 720p (24.5 / 30.3)
        wgmma = (problem.num_iters == 1 or problem.b2 > 64) and cuda.stage_r_reason(problem, arch) is None
        # stage R's backward on warpgroup MMA (docs/attention-kernels.md (g), (g3); b2 <= 80): the H200 run of
        # bench/stage_r_check.py, session 16 (bench/results/h200-stage-r-bwd.json), against Triton's: the
        # key-row kernel (dK, dV) faster at every shape (30x52 2.61 / 4.66 ms, block-causal 1.58 / 2.69,
        # 720p 9.52 / 19.01, 15x26 7.35 / 11.68, 3 vs 21 frames 0.65 / 0.94, 90x52 1.07 / 1.80); the
        # flat-row dQ kernel faster with 21 key tiles (30x52 2.56 / 2.82; block-causal 1.75 / 1.75, 3 vs 21
        # frames 0.50 / 0.50), at b2 <= 32 (15x26 7.10 / 12.87) and b2 > 64 (720p 6.93 / 11.95), slower with
        # 7 key tiles at b2 = 52 (90x52 1.13 / 1.09); between 8 and 20 key tiles it is not measured
        wgmma_bwd = cuda.stage_r_bwd_reason(problem, arch) is None
        wgmma_dq = wgmma_bwd and (problem.b2 <= 32 or problem.b2 > 64 or problem.kv_tiles >= 21)
        # the last pass's stage-L backward on warpgroup MMA (docs/attention-kernels.md (h)) wherever it runs:
        # faster than Triton's fused kernel at every shape timed (H200, bench/stage_l_check.py, session 15,
        # bench/results/h200-stage-l-bwd.json: 30x52 3.13 against 3.98 ms, block-causal 2.09 / 2.41, 720p
        # 7.43 / 16.79, 15x26 10.5 / 13.3, AR 3 vs 21 0.48 / 0.61); b1 > 45 (kN = 64) is tested, not timed
        wgmma_l_bwd = cuda.stage_l_bwd_reason(problem, arch) is None
        # the forward's stage L on warpgroup MMA (docs/attention-kernels.md (i)) for b1 over 32, where the
        # Triton kernel's 64-row blocks stream at ~2 TB/s: the H200 run of bench/stage_l_fwd_check.py,
        # session 16 (bench/results/h200-stage-l-fwd.json), wgmma against Triton 720p 3.31 / 4.96 ms, but
        # 30x52 1.46 / 1.16, block-causal 0.92 / 0.79, 15x26 5.62 / 3.91, 3 vs 21 frames 0.233 / 0.186
        wgmma_l = problem.b1 > 32 and cuda.stage_l_reason(problem, arch) is None
        l_warps = 4
        fused_rows = _fused_bwd_rows(problem)
        if wide == 16:
            block_k = 16
        elif fused_rows is None:
            block_k = min(64, 2048 // block_i)
        else:  # the widest key step whose blocks fit l_warps' registers (32 at 32 rows, 16 at 64)
            fits = [n for n in (16, 32, 64) if _fused_bwd_bytes(fused_rows, n, problem.head_dim)
                    <= _MAX_FUSED_BWD_BYTES_PER_THREAD * 32 * l_warps]  # fmt: skip
            block_k = max(fits, default=16)
        return {
            "stage_r": "wgmma" if wgmma else "triton",
            "stage_r_bwd": "wgmma" if wgmma_bwd else "triton",
            "stage_r_dq": "wgmma" if wgmma_dq else "triton",
            "stage_l": "wgmma" if wgmma_l else "triton",
            "stage_l_bwd": "wgmma" if wgmma_l_bwd else "triton",
            "fwd_block_m": wide,
            "fwd_block_l": row_block,
            "fwd_warps": 4,
            "fwd_block_k": 16 if wide == 16 else min(128, 4096 // block_i),
            "bwd_block_k": 16 if wide == 16 else min(64, 2048 // block_i),
            "block_j": row_block,
            "block_l": row_block,
            "r_warps": 4,
            "block_i": block_i,
            "block_k": block_k,
            "l_warps": l_warps,
            "num_stages": 2,
        }

    def search_space(self, problem: AttentionProblem, arch: Arch) -> dict[str, list]:
        # Blocks below 16 cannot feed tl.dot; 128-wide blocks of d=128 spill; the first H100 study
        # (bench/NOTES.md) found nothing better outside these values.
        stage_r_bwd = ["triton", "wgmma"] if cuda.stage_r_bwd_reason(problem, arch) is None else ["triton"]
        return {
            "stage_r": ["triton", "wgmma"] if cuda.stage_r_reason(problem, arch) is None else ["triton"],
            "stage_r_bwd": stage_r_bwd,
            "stage_r_dq": stage_r_bwd,
            "stage_l": ["triton", "wgmma"] if cuda.stage_l_reason(problem, arch) is None else ["triton"],
            "stage_l_bwd": ["triton", "wgmma"] if cuda.stage_l_bwd_reason(problem, arch) is None else ["triton"],
            "fwd_block_m": [16, 32, 64, 128],
            "fwd_block_l": [16, 32, 64, 128],
            "fwd_warps": [4, 8],
            "fwd_block_k": [16, 32, 64, 128],
            "bwd_block_k": [16, 32, 64, 128],
            "block_j": [16, 32, 64],
            "block_l": [16, 32, 64],
            "r_warps": [4, 8],
            "block_i": [16, 32, 64],
            "block_k": [16, 32, 64],
            "l_warps": [2, 4, 8],
            "num_stages": [1, 2, 3],
        }

    def is_valid(self, config: dict, problem: AttentionProblem, arch: Arch) -> str | None:
        """The one statement of a config's constraints, for the tuner and the run time alike."""
        reason = super().is_valid(config, problem, arch)
        if reason is not None:
            return reason
        d = problem.head_dim
        # forward stage R: one [m, d] accumulator and the [m, l] logits with one l block, else two
        fwd_m, fwd_l = config["fwd_block_m"], config["fwd_block_l"]
        fwd_acc = fwd_m * (d + fwd_l) * 4 if problem.b2 <= fwd_l else 2 * fwd_m * d * 4
        if fwd_acc > _MAX_ACC_BYTES:
            return f"forward stage-R accumulators ({fwd_m} rows, l block {fwd_l}) {fwd_acc} B exceed {_MAX_ACC_BYTES} B"
        rows = _fused_bwd_rows(problem)
        if rows is not None:  # the fused stage-L backward, per thread of its l_warps warps
            keys, threads = config["block_k"], 32 * config["l_warps"]
            l_bwd = _fused_bwd_bytes(rows, keys, d)
            if l_bwd > _MAX_FUSED_BWD_BYTES_PER_THREAD * threads:
                return (f"fused stage-L backward blocks ({keys} keys, {rows} rows) {l_bwd} B exceed "
                        f"{_MAX_FUSED_BWD_BYTES_PER_THREAD} B a thread of {threads}")  # fmt: skip
        else:
            # b1 over the fused limit, the daL/dY kernel: two [block_k, d] accumulators beside
            # [block_i, block_k] logits and dS
            l_kv = (2 * config["block_k"] * d + 2 * config["block_i"] * config["block_k"]) * 4
            if l_kv > _MAX_ACC_BYTES:
                keys, rows = config["block_k"], config["block_i"]
                return f"stage-L daL/dY blocks ({keys} keys, {rows} rows) {l_kv} B exceed {_MAX_ACC_BYTES} B"
        if 2 * config["block_j"] * d * 4 > _MAX_ACC_BYTES:
            return f"stage R accumulators 2*{config['block_j']}*{d}*4 B exceed {_MAX_ACC_BYTES} B"
        # the stage-L accumulator with the logits (forward) or logits, probabilities and dS (the
        # backward's delta kernel and, b1 over the fused limit, its dQ kernel)
        stage_l = config["block_i"] * (d + max(config["fwd_block_k"], 3 * config["bwd_block_k"])) * 4
        if stage_l > _MAX_ACC_BYTES:
            return f"stage-L accumulator and key blocks {stage_l} B exceed {_MAX_ACC_BYTES} B"
        # Shared memory measured by compiling every kernel (tests/test_triton_compile.py, d=128): 16-bit
        # inputs stay under 100 KB across this space except the forward stage R with an l block of 128,
        # 100-128 KB whatever fwd_block_m and num_stages (sm_120 compile, session 12)
        wide_l = config["fwd_block_l"] > 64 and problem.head_dim > 64
        if wide_l and problem.dtype != torch.float32 and 0 < arch.smem_per_block < 128 * 1024:
            return f"forward stage-R l block {config['fwd_block_l']} exceeds {arch.smem_per_block} B of shared memory"
        if arch.smem_per_block and problem.dtype == torch.float32:
            # fp32 reaches 330 KB at 64-wide blocks, 131 KB at 32 (two stages), 99 KB at 16 with block_i,
            # block_k <= 32 and <= 2 stages.
            widest = 32 if arch.smem_per_block >= 160 * 1024 else 16
            if max(config["block_j"], config["block_l"], config["fwd_block_m"], config["fwd_block_l"]) > widest:
                return f"fp32 stage-R blocks over {widest} exceed {arch.smem_per_block} B of shared memory"
            widest_k = max(config["block_k"], config["fwd_block_k"], config["bwd_block_k"])
            if max(config["block_i"], widest_k) > 32 or config["num_stages"] > 2:
                return "fp32 stage-L blocks over 32 or more than 2 stages exceed the shared memory"
        return None

    def launch(self, config, q, k, v, *, sm_scale, causal_block_tiles, num_iters):
        kernels = _kernels("monarch_attention")
        return kernels.monarch_attention_fwd(
            q, k, v, sm_scale=sm_scale, causal_block_tiles=causal_block_tiles, num_iters=num_iters, config=config,
            stage_r=_stage_r_launcher(config, kernels), stage_l=_stage_l_launcher(config, kernels),
        )  # fmt: skip

    def prepare(self, config, q, k, v, *, sm_scale, causal_block_tiles, num_iters, z_shape):
        """The eager fast path's forward of this problem and layout, or None (``prepare_fwd``)."""
        kernels = _kernels("monarch_attention")
        return kernels.prepare_fwd(
            q, k, v, sm_scale=sm_scale, causal_block_tiles=causal_block_tiles, num_iters=num_iters, config=config,
            z_shape=z_shape, stage_r=_stage_r_launcher(config, kernels), stage_l=_stage_l_launcher(config, kernels),
        )  # fmt: skip

    def launch_backward(self, config, dz, dlse, q, k, v, z, lse, *, sm_scale, causal_block_tiles, num_iters):
        from ..triton_kernels import monarch_attention as kernels

        return kernels.monarch_attention_bwd(
            dz, dlse, q, k, v, z, lse,
            sm_scale=sm_scale, causal_block_tiles=causal_block_tiles, num_iters=num_iters, config=config,
            stage_r=_stage_r_launcher(config, kernels),
            **_bwd_launchers(config, kernels),
        )  # fmt: skip


def _stage_r_launcher(config: dict, kernels):
    """The stage-R launcher a config names: the Triton kernel's, or the warpgroup-MMA kernel's."""
    return cuda.stage_r_wgmma if config["stage_r"] == "wgmma" else kernels._stage_r


def _stage_l_launcher(config: dict, kernels):
    """The forward's stage-L launcher a config names: the Triton kernel's, or the warpgroup-MMA kernel's."""
    return cuda.stage_l_wgmma if config["stage_l"] == "wgmma" else kernels._stage_l


def _bwd_launchers(config: dict, kernels) -> dict:
    """The backward launchers a config names, Triton's or warpgroup MMA's: stage R's (dK and dV; dQ) and
    the last pass's stage L (None: the Triton kernels)."""
    wgmma_dkdv, wgmma_dq = config["stage_r_bwd"] == "wgmma", config["stage_r_dq"] == "wgmma"
    return {
        "stage_r_dkdv": cuda.stage_r_dkdv_wgmma if wgmma_dkdv else kernels._stage_r_dkdv,
        "stage_r_dq": cuda.stage_r_dq_wgmma if wgmma_dq else kernels._stage_r_dq,
        "stage_l_bwd": cuda.stage_l_bwd_wgmma if config["stage_l_bwd"] == "wgmma" else None,
    }


class TritonHadamard(_Triton):
    def default_config(self, problem, arch: Arch) -> dict:
        return {"tile": 8192}

    def search_space(self, problem, arch: Arch) -> dict[str, list]:
        # elements a program holds (rows * padded n); rows longer than a tile (up to 32768) still
        # take one program, beyond that two passes; warps follow the tile size
        return {"tile": [2048, 4096, 8192, 16384, 32768]}

    def launch(self, config, x2d, out2d, *, m, n2, scale, transpose, fp32_intermediate=False):
        return _kernels("hadamard").hadamard_rows(x2d, out2d, m, n2, scale, transpose, config, fp32_intermediate)

    def prepare(self, config, x2d, out2d, *, m, n2, scale, transpose, fp32_intermediate=False):
        """The eager fast path's launch ``(x2d, out2d)`` of this problem and layout, or None (``prepare_rows``)."""
        return _kernels("hadamard").prepare_rows(x2d, out2d, m, n2, scale, transpose, config, fp32_intermediate)


class TritonMonarchMatmul(_Triton):
    @staticmethod
    def measured_only(problem) -> bool:
        """The backward kernels are taken automatically only where a table measured them faster than the
        closed form (docs/design.md, What every backend states); the forward always."""
        return problem.backward

    @staticmethod
    def tuned_as(problem):
        """The backward runs the forward's two kernels: it takes the forward's tuned config (the tuner times
        forwards only), so MONARCHRT_STRICT asks for the forward's table entry."""
        return dataclasses.replace(problem, backward=False)

    def supports(self, problem, arch: Arch) -> str | None:
        reason = super().supports(problem, arch)
        k, l = problem.w1_shape[0], problem.w2_shape[0]
        if reason is None and max(k, -(-l // 16)) > _MAX_GRID_YZ:  # grid y: blocks k, then l / 16
            return f"w1 {problem.w1_shape}, w2 {problem.w2_shape}: the kernels take k, l / 16 up to {_MAX_GRID_YZ}"
        return reason

    def default_config(self, problem, arch: Arch) -> dict:
        return {"block_m": 64, "num_warps": 4}

    def search_space(self, problem, arch: Arch) -> dict[str, list]:
        return {"block_m": [16, 32, 64, 128], "num_warps": list(_WARPS)}

    def launch(self, config, x2d, w1, w2):
        return _kernels("monarch_matmul").monarch_matmul_fwd(x2d, w1, w2, config)

    def prepare(self, config, x2d, w1, w2, *, out_shape):
        """The eager fast path's forward of this problem and layout, or None (``prepare_fwd``)."""
        return _kernels("monarch_matmul").prepare_fwd(x2d, w1, w2, config, out_shape)

    def launch_backward(self, config, dout2d, x2d, w1, w2):
        from ..triton_kernels.monarch_matmul import monarch_matmul_bwd

        return monarch_matmul_bwd(dout2d, x2d, w1, w2, config)
