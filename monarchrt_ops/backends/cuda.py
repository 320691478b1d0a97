"""The ``cuda`` backend: kernels of the compiled extension ``monarchrt_ops._C`` (csrc/).

The extension takes raw pointers, strides and the current stream, so it needs no torch headers
and works across torch versions. Its limits are stated once, in ``csrc/kernel_limits.h``: the
launchers check them through ``_C.<kernel>_reason(...)``, which ``supports()`` calls too (so
automatic selection never picks a kernel that then raises), and ``_C.limits()`` reports them.
cuda-python has no job here: torch already reads the device properties we need, and pybind11 loads
the module, so there is no cubin to load by hand.
"""

from __future__ import annotations

import functools

import torch

from ..arch import Arch
from ..hadamard_matrices import padded_matrix
from ..problem import AttentionProblem, HadamardProblem, MonarchMatmulProblem
from ..registry import NoConfig

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1}


@functools.cache
def extension():
    """(module, None) or (None, reason it cannot be used)."""
    try:
        from .. import _C
    except ImportError as e:
        return None, f"the CUDA extension monarchrt_ops._C is not built ({e}); reinstall with nvcc on PATH"
    return _C, None


def cuda_limits() -> dict | None:
    """The extension's limits per kernel (``csrc/kernel_limits.h``: head_dim, tile sizes, sm_scale range,
    shared memory, grid sizes, dtypes), or None when it is not built."""
    module, _ = extension()
    return None if module is None else module.limits()


def arch_reason(arch: Arch, sm90_feature: str | None = None) -> str | None:
    """Why the extension cannot run on ``arch`` (None: it can); ``sm90_feature`` names an instruction
    of sm_90 and newer that the kernel needs."""
    module, reason = extension()
    if module is None:
        return reason
    if not arch.is_cuda:
        return f"no CUDA device ({arch.family})"
    built = module.compiled_archs()
    major, minor = arch.capability
    if f"{major}{minor}a" not in built and f"{major}{minor}" not in built:
        return f"the extension was built for sm_{', sm_'.join(built)}; this device is sm_{major}{minor}"
    if sm90_feature and arch.capability < (9, 0):
        return f"the kernel uses {sm90_feature}, which needs sm_90 or newer (device is sm_{major}{minor})"
    return None


class CudaHadamard(NoConfig):
    """One kernel (csrc/hadamard): a CTA transforms ~32 KB of whole rows in shared memory with 16x16
    Hadamard factors on tensor cores, then H_m for n = m * 2^k (hadamard.cuh says how)."""

    name = "cuda"
    measured_only = True  # taken automatically where a table's measured choice says so (tables.py)

    def supports(self, problem: HadamardProblem, arch: Arch) -> str | None:
        reason = arch_reason(arch, "stmatrix")
        if reason is not None:
            return reason
        if problem.dtype not in _DTYPE_CODES:
            return f"dtype {problem.dtype} is not fp16/bf16"
        if problem.fp32_intermediate:
            return "the CUDA kernel rounds to the input dtype between factors (no fp32_intermediate)"
        module, _ = extension()
        reason = module.hadamard_reason(problem.rows, problem.n, problem.m, _DTYPE_CODES[problem.dtype])
        if reason:
            return reason
        smem = module.hadamard_smem_bytes(problem.n, problem.m)
        if arch.smem_per_block and smem > arch.smem_per_block:
            return f"n={problem.n}: needs {smem} B of shared memory per block; the device has {arch.smem_per_block}"
        return None

    def launch(self, config, x2d, out2d, *, m, n2, scale, transpose, fp32_intermediate=False):
        module, _ = extension()
        src = _aligned_contiguous(x2d)  # flat rows, 16-byte vector loads
        dst = out2d if out2d.data_ptr() % 16 == 0 and out2d.is_contiguous() else torch.empty_like(src)
        hm = None
        if m > 1:  # H_m (H_m^T for the transpose) zero-padded to 16 or 32: the kernel's A operand
            hm = padded_matrix("special", m, 16 if m <= 16 else 32, transpose, src.dtype, str(src.device))
        with torch.cuda.device(src.device):  # the launcher uses the current device
            module.hadamard(
                src.data_ptr(), dst.data_ptr(), src.shape[0], src.shape[1], m,
                0 if hm is None else hm.data_ptr(), 0 if hm is None else hm.shape[0], scale,
                _DTYPE_CODES[src.dtype], torch.cuda.current_stream(src.device).cuda_stream,
            )  # fmt: skip
        if dst is not out2d:
            out2d.copy_(dst)
        return out2d


class CudaMonarchMatmul(NoConfig):
    """Two kernels (csrc/monarch_matmul): the first block product writes y1 tile-transposed into a
    workspace so that both reorders are contiguous reads and writes (block_matmul.cuh says how).
    Forward only: the registry chooses the backward (Triton's)."""

    name = "cuda"
    measured_only = True  # taken automatically where a table's measured choice says so (tables.py)
    forward_only = True

    def supports(self, problem: MonarchMatmulProblem, arch: Arch) -> str | None:
        reason = arch_reason(arch, "stmatrix")
        if reason is not None:
            return reason
        if problem.dtype not in _DTYPE_CODES:
            return f"dtype {problem.dtype} is not fp16/bf16"
        if problem.backward:
            return "forward only: the CUDA kernels have no backward (the registry chooses one)"
        module, _ = extension()
        (k, q, p), (l, s, r) = problem.w1_shape, problem.w2_shape
        return module.monarch_matmul_reason(problem.rows, k, q, p, l, s, r, _DTYPE_CODES[problem.dtype]) or None

    def launch(self, config, x2d, w1, w2):
        module, _ = extension()
        (k, q, p), (l, s, r) = w1.shape, w2.shape
        rows = x2d.shape[0]
        x2d, w1, w2 = (_aligned_contiguous(t) for t in (x2d, w1, w2))
        out = torch.empty(rows, s * l, dtype=x2d.dtype, device=x2d.device)
        workspace = torch.empty(module.monarch_matmul_workspace_elems(rows, k, q), dtype=x2d.dtype, device=x2d.device)
        with torch.cuda.device(x2d.device):  # the launcher uses the current device
            module.monarch_matmul(
                x2d.data_ptr(), w1.data_ptr(), w2.data_ptr(), workspace.data_ptr(), out.data_ptr(),
                rows, k, q, p, l, s, r, _DTYPE_CODES[x2d.dtype], torch.cuda.current_stream(x2d.device).cuda_stream,
            )  # fmt: skip
        return out


class CudaAttention(NoConfig):
    """Fused forward (csrc/attention): one 8-CTA cluster per (batch, head, query tile), aL/Y exchanged
    through distributed shared memory. Forward only: the registry chooses the backward (Triton's)."""

    name = "cuda"
    measured_only = True  # taken automatically where a table's measured choice says so (tables.py)
    forward_only = True
    # True runs the portable stage-R path (mma.sync, what sm_100a and sm_120a run) on sm_90a too, instead of
    # warpgroup MMA: the GPU tests set it to check that path on an H100.
    mma_sync_only = False

    def supports(self, problem: AttentionProblem, arch: Arch) -> str | None:
        reason = arch_reason(arch, "thread-block clusters")
        if reason is not None:
            return reason
        module, _ = extension()
        limits = module.limits()["attention"]
        if arch.smem_per_block and arch.smem_per_block < limits["smem_bytes"]:
            return (
                f"the fused forward needs {limits['smem_bytes']} B of shared memory per block; "
                f"the device has {arch.smem_per_block}"
            )
        if problem.dtype not in _DTYPE_CODES:
            return f"dtype {problem.dtype} is not fp16/bf16"
        if problem.num_iters > limits["max_num_iters"]:
            return f"num_iters={problem.num_iters}: the fused kernel takes num_iters <= {limits['max_num_iters']}"
        if problem.backward:
            return "forward only: the fused kernel has no backward (the registry chooses one)"
        # sm_scale None (a table lookup, `info`): the scale is not known; 1.0 is inside every range
        scale = 1.0 if problem.sm_scale is None else problem.sm_scale
        p = problem
        reason = module.monarch_attention_fwd_reason(
            p.batch, p.heads, p.q_tiles, p.kv_tiles, p.b1, p.b2, p.head_dim, p.causal_block_tiles, scale,
            _DTYPE_CODES[p.dtype],
        )  # fmt: skip
        return reason or None

    def launch(self, config, q, k, v, *, sm_scale, causal_block_tiles, num_iters):
        module, _ = extension()
        q, k, v = (_aligned_rows(x) for x in (q, k, v))
        bsz, n_a, b1, b2, nh, d = q.shape
        z = torch.empty(bsz, n_a, b1, b2, nh, d, dtype=q.dtype, device=q.device)
        lse = torch.empty(bsz, n_a, b1, b2, nh, dtype=torch.float32, device=q.device)
        with torch.cuda.device(q.device):  # the launcher uses the current device
            module.monarch_attention_fwd(
                q.data_ptr(), k.data_ptr(), v.data_ptr(), z.data_ptr(), lse.data_ptr(),
                list(q.stride()[:5]), list(k.stride()[:5]), list(v.stride()[:5]),
                bsz, nh, n_a, k.shape[1], b1, b2, d, causal_block_tiles, sm_scale, _DTYPE_CODES[q.dtype],
                torch.cuda.current_stream(q.device).cuda_stream, self.mma_sync_only,
            )  # fmt: skip
        return z, lse


def stage_r_reason(problem: AttentionProblem, arch: Arch) -> str | None:
    """Why the warpgroup-MMA stage R (csrc/attention/stage_r.cuh) cannot run ``problem`` (None: it can);
    ``arch`` None (a config asked for without a device) never runs it."""
    return _wgmma_reason(problem, arch, "stage R", "monarch_stage_r")


def stage_r_bwd_reason(problem: AttentionProblem, arch: Arch) -> str | None:
    """Why the warpgroup-MMA backward of stage R (csrc/attention/stage_r_bwd.cuh: its key-row and
    query-row kernels) cannot run ``problem`` (None: it can)."""
    return _wgmma_reason(problem, arch, "stage R's backward", "monarch_stage_r_bwd")


def stage_l_reason(problem: AttentionProblem, arch: Arch) -> str | None:
    """Why the warpgroup-MMA forward of stage L (csrc/attention/stage_l.cuh) cannot run ``problem`` (None: it
    can)."""
    return _wgmma_reason(problem, arch, "stage L", "monarch_stage_l", width=problem.b1)


def stage_l_bwd_reason(problem: AttentionProblem, arch: Arch) -> str | None:
    """Why the warpgroup-MMA backward of the last pass's stage L (csrc/attention/stage_l_bwd.cuh) cannot run
    ``problem`` (None: it can). Its shared memory grows with b1 (the rows of a column), not b2."""
    return _wgmma_reason(problem, arch, "stage L's backward", "monarch_stage_l_bwd", width=problem.b1)


def _wgmma_reason(
    problem: AttentionProblem, arch: Arch, what: str, launcher: str, width: int | None = None
) -> str | None:
    """Why the extension's warpgroup-MMA kernel ``launcher`` (its ``_reason`` and ``_smem_bytes``
    functions answer for it) cannot run ``problem``; ``width``: the tile size its shared memory follows
    (None: b2)."""
    if arch is None:
        return "no device given"
    reason = arch_reason(arch, "warpgroup MMA")
    if reason is not None:
        return reason
    if arch.capability != (9, 0):
        return f"warpgroup MMA is sm_90a's; the device is sm_{arch.capability[0]}{arch.capability[1]}"
    module, _ = extension()
    if "90a" not in module.compiled_archs():  # an sm_90 build without the 'a' features compiles them empty
        return f"the extension was built for sm_{', sm_'.join(module.compiled_archs())}, without sm_90a"
    if problem.dtype not in _DTYPE_CODES:
        return f"dtype {problem.dtype} is not fp16/bf16"
    p = problem
    reason = getattr(module, launcher + "_reason")(
        p.batch, p.heads, p.q_tiles, p.kv_tiles, p.b1, p.b2, p.head_dim, p.causal_block_tiles, _DTYPE_CODES[p.dtype]
    )
    if reason:
        return reason
    smem = getattr(module, launcher + "_smem_bytes")(p.b2 if width is None else width, p.head_dim)
    if arch.smem_per_block and smem > arch.smem_per_block:
        return f"{what} needs {smem} B of shared memory per block; the device has {arch.smem_per_block}"
    return None


def stage_r_wgmma(q, k, v, sc, a_r, c_r, sm_scale, common, config, write_y=True, write_lse=False):
    """``triton_kernels.monarch_attention._stage_r``'s arguments and effect, on the warpgroup-MMA kernel:
    aL, Y (when ``write_y``), cL and lse_R (when ``write_lse``) of every key row into the scratch ``sc``."""
    module, _ = extension()
    nh, n_a, n_f, b1, b2, causal_block_tiles = common
    q, k, v = _launchable(q, k, v)
    with torch.cuda.device(q.device):  # the launcher uses the current device
        module.monarch_stage_r(
            q.data_ptr(), k.data_ptr(), v.data_ptr(),
            0 if a_r is None else a_r.data_ptr(), 0 if c_r is None else c_r.data_ptr(),
            sc.a_l.data_ptr(), sc.y.data_ptr() if write_y else 0, sc.c_l.data_ptr(),
            sc.lse_r.data_ptr() if write_lse else 0,
            list(q.stride()[:5]), list(k.stride()[:5]), list(v.stride()[:5]),
            q.shape[0], nh, n_a, n_f, b1, b2, q.shape[5], causal_block_tiles, sm_scale, _DTYPE_CODES[q.dtype],
            torch.cuda.current_stream(q.device).cuda_stream,
        )  # fmt: skip


class _FirstPassStageR:
    """:func:`stage_r_wgmma`'s first pass (aR = q, Y written, no lse_R) of one problem and layout with its
    sizes and strides built once (the one-pass forward's plan, triton_kernels/monarch_attention.py): a call
    passes the data pointers and the stream. Where it does not run (:meth:`runs`), the caller takes
    :func:`stage_r_wgmma`, which copies and switches the device."""

    __slots__ = ("index", "strides", "sizes")

    def __init__(self, q, k, v, sm_scale, common):
        nh, n_a, n_f, b1, b2, causal_block_tiles = common
        self.index = q.get_device()
        self.strides = (list(q.stride()[:5]), list(k.stride()[:5]), list(v.stride()[:5]))
        self.sizes = (q.shape[0], nh, n_a, n_f, b1, b2, q.shape[5], causal_block_tiles, sm_scale, _DTYPE_CODES[q.dtype])

    def runs(self, device: int, q, k, v) -> bool:
        """Whether a call on the current ``device`` takes it: q's device is the current one (the launcher
        uses it) and every base is 16-byte aligned (the strides were checked when it was built)."""
        return device == self.index and not (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15

    def __call__(self, stream, q, k, v, a_l, y, c_l):
        qs, ks, vs = self.strides
        extension()[0].monarch_stage_r(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), 0, 0, a_l.data_ptr(), y.data_ptr(), c_l.data_ptr(), 0,
            qs, ks, vs, *self.sizes, stream,
        )  # fmt: skip


def _prepare_first_pass(q, k, v, sm_scale, common) -> _FirstPassStageR | None:
    """The first pass of :func:`stage_r_wgmma` prepared for tile-order q, k, v of fixed strides, or None
    where their strides are not whole 16-byte rows (then every call copies: :func:`stage_r_wgmma`)."""
    return _FirstPassStageR(q, k, v, sm_scale, common) if _row_strides(q, k, v) else None


stage_r_wgmma.prepare_first_pass = _prepare_first_pass  # what the one-pass plan looks for on a stage-R launcher


def stage_r_dkdv_wgmma(q, k, v, sc, a_r, c_r, grads, dk, dv, sm_scale, common, config, *, accumulate, dk_out=None):
    """``triton_kernels.monarch_attention._stage_r_dkdv``'s arguments and effect, on the warpgroup-MMA
    kernel: dK (added to the fp32 partial ``dk`` when ``accumulate``) into ``dk_out`` or else ``dk``,
    and, where ``dv`` is given, dV of every key row. ``dk_out`` and ``dv`` in q's dtype (the kernel
    stores 16-bit outputs); ``dk`` fp32."""
    _require_contiguous(
        "stage_r_dkdv_wgmma", ("dk", dk, torch.float32), ("dk_out", dk_out, q.dtype), ("dv", dv, q.dtype)
    )
    module, _ = extension()
    nh, n_a, n_f, b1, b2, causal_block_tiles = common
    da_l, dy, dc_l, delta_r = grads
    q, k, v = _launchable(q, k, v)
    with torch.cuda.device(q.device):  # the launcher uses the current device
        module.monarch_stage_r_bwd_kv(
            q.data_ptr(), k.data_ptr(), v.data_ptr(),
            0 if a_r is None else a_r.data_ptr(), 0 if c_r is None else c_r.data_ptr(),
            sc.lse_r.data_ptr(), da_l.data_ptr(), 0 if dv is None else dy.data_ptr(), dc_l.data_ptr(),
            delta_r.data_ptr(), 0 if dk is None else dk.data_ptr(), 0 if dk_out is None else dk_out.data_ptr(),
            0 if dv is None else dv.data_ptr(),
            list(q.stride()[:5]), list(k.stride()[:5]), list(v.stride()[:5]),
            q.shape[0], nh, n_a, n_f, b1, b2, q.shape[5], causal_block_tiles, sm_scale, accumulate,
            _DTYPE_CODES[q.dtype], torch.cuda.current_stream(q.device).cuda_stream,
        )  # fmt: skip


def stage_r_dq_wgmma(q, k, v, sc, a_r, c_r, grads, dq, dq_out, d_ar, d_cr, sm_scale, common, config, *, has_y):
    """``triton_kernels.monarch_attention._stage_r_dq``'s arguments and effect: on the first pass (``a_r``
    None) the warpgroup-MMA kernel stores ``dq_out`` = dq + stage R's part of dQ; a later pass's daR and
    dcR run the Triton kernel."""
    if a_r is not None:
        from ..triton_kernels import monarch_attention as kernels

        return kernels._stage_r_dq(q, k, v, sc, a_r, c_r, grads, dq, dq_out, d_ar, d_cr, sm_scale, common, config,
                                   has_y=has_y)  # fmt: skip
    module, _ = extension()
    nh, n_a, n_f, b1, b2, causal_block_tiles = common
    da_l, dy, dc_l, delta_r = grads
    q, k, v = _launchable(q, k, v)
    with torch.cuda.device(q.device):  # the launcher uses the current device
        module.monarch_stage_r_bwd_q(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), sc.lse_r.data_ptr(), da_l.data_ptr(),
            dy.data_ptr() if has_y else 0, dc_l.data_ptr(), delta_r.data_ptr(), dq.data_ptr(), dq_out.data_ptr(),
            list(q.stride()[:5]), list(k.stride()[:5]), list(v.stride()[:5]),
            q.shape[0], nh, n_a, n_f, b1, b2, q.shape[5], causal_block_tiles, sm_scale, _DTYPE_CODES[q.dtype],
            torch.cuda.current_stream(q.device).cuda_stream,
        )  # fmt: skip


def stage_l_wgmma(q, sc, z, lse, sm_scale, common, config, write_z):
    """``triton_kernels.monarch_attention._stage_l``'s arguments and effect, on the warpgroup-MMA kernel:
    lse ([B, A, b1, b2, nh] fp32) and, when ``write_z``, z ([B, A, b1, b2, nh, d] memory, q's dtype) from the
    scratch ``sc`` (aL, Y, cL)."""
    _require_contiguous("stage_l_wgmma", ("lse", lse, torch.float32), ("z", z if write_z else None, q.dtype))
    module, _ = extension()
    nh, n_a, n_f, b1, b2, causal_block_tiles = common
    (q,) = _launchable(q)
    with torch.cuda.device(q.device):  # the launcher uses the current device
        module.monarch_stage_l(
            q.data_ptr(), sc.a_l.data_ptr(), sc.y.data_ptr(), sc.c_l.data_ptr(), z.data_ptr() if write_z else 0,
            lse.data_ptr(), list(q.stride()[:5]),
            q.shape[0], nh, n_a, n_f, b1, b2, q.shape[5], causal_block_tiles, sm_scale, _DTYPE_CODES[q.dtype],
            torch.cuda.current_stream(q.device).cuda_stream,
        )  # fmt: skip


class _OnePassStageL:
    """:func:`stage_l_wgmma` with Z written, for one problem and q layout with its sizes and strides built
    once (the one-pass forward's plan): a call passes the data pointers and the stream. Where it does not
    run (:meth:`runs`), the caller takes :func:`stage_l_wgmma`, which copies."""

    __slots__ = ("index", "strides", "sizes")

    def __init__(self, q, sm_scale, common):
        nh, n_a, n_f, b1, b2, causal_block_tiles = common
        self.index = q.get_device()
        self.strides = list(q.stride()[:5])
        self.sizes = (q.shape[0], nh, n_a, n_f, b1, b2, q.shape[5], causal_block_tiles, sm_scale, _DTYPE_CODES[q.dtype])

    def runs(self, device: int, q) -> bool:
        """Whether a call on the current ``device`` takes it: q's, with a 16-byte aligned base."""
        return device == self.index and not q.data_ptr() & 15

    def __call__(self, stream, q, a_l, y, c_l, z, lse):
        extension()[0].monarch_stage_l(
            q.data_ptr(), a_l.data_ptr(), y.data_ptr(), c_l.data_ptr(), z.data_ptr(), lse.data_ptr(), self.strides,
            *self.sizes, stream,
        )  # fmt: skip


def _prepare_one_pass(q, sm_scale, common) -> _OnePassStageL | None:
    """:func:`stage_l_wgmma` prepared for a tile-order q of fixed strides, or None where they are not whole
    16-byte rows."""
    return _OnePassStageL(q, sm_scale, common) if _row_strides(q) else None


stage_l_wgmma.prepare_one_pass = _prepare_one_pass  # what the one-pass plan looks for on a stage-L launcher


def stage_l_bwd_wgmma(q, dz, z, lse, dlse, sc, grads, dq, sm_scale, common):
    """The last pass's stage-L backward on the warpgroup-MMA kernel (``_stage_l_bwd`` of
    triton_kernels/monarch_attention_bwd.py with UPDATE false): daL, dY, dcL and D_R of every key row into
    ``grads`` = (daL, dY, dcL, D_R), and dQ's stage-L part written to the fp32 ``dq``, from the scratch
    ``sc`` (aL, Y, cL), lse and dlse ([B, A, b1, b2, nh] fp32) and the output z with its gradient dz."""
    da_l, dy, dc_l, delta_r = grads
    f32 = torch.float32
    _require_contiguous(
        "stage_l_bwd_wgmma", ("lse", lse, f32), ("dlse", dlse, f32), ("dq", dq, f32),
        ("daL", da_l, q.dtype), ("dY", dy, q.dtype), ("dcL", dc_l, f32), ("D_R", delta_r, f32),
    )  # fmt: skip
    module, _ = extension()
    nh, n_a, n_f, b1, b2, causal_block_tiles = common
    q, dz, z = _launchable(q, dz, z)
    with torch.cuda.device(q.device):  # the launcher uses the current device
        module.monarch_stage_l_bwd(
            q.data_ptr(), dz.data_ptr(), z.data_ptr(), lse.data_ptr(), dlse.data_ptr(),
            sc.a_l.data_ptr(), sc.y.data_ptr(), sc.c_l.data_ptr(),
            da_l.data_ptr(), dy.data_ptr(), dc_l.data_ptr(), delta_r.data_ptr(), dq.data_ptr(),
            list(q.stride()[:5]), list(dz.stride()[:5]), list(z.stride()[:5]),
            q.shape[0], nh, n_a, n_f, b1, b2, q.shape[5], causal_block_tiles, sm_scale, _DTYPE_CODES[q.dtype],
            torch.cuda.current_stream(q.device).cuda_stream,
        )  # fmt: skip


def _require_contiguous(launcher: str, *checks) -> None:
    """Raise unless each (name, tensor, dtype) of ``checks`` is a contiguous tensor of that dtype (None
    passes: an output the launch does not write)."""
    for name, x, dtype in checks:
        if x is not None and (x.dtype != dtype or not x.is_contiguous()):
            raise ValueError(f"{launcher}: {name} must be contiguous {dtype}, got {x.dtype}")


def _aligned_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Contiguous with a 16-byte aligned base."""
    x = x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


def _row_strides(*tensors: torch.Tensor) -> bool:
    """Every tensor's last dim contiguous and its other strides whole 16-byte rows (8 elements)."""
    for x in tensors:  # loops, not generators: this runs on every eager call
        strides = x.stride()
        if strides[-1] != 1:
            return False
        for s in strides[:-1]:
            if s % 8:
                return False
    return True


def _launchable(*xs) -> tuple:
    """q, k, v (or q, dz, z; or q alone) as the warpgroup-MMA launchers take them (16-byte aligned bases and
    row strides): themselves, or copies where one is not."""
    if any(x.data_ptr() % 16 for x in xs) or not _row_strides(*xs):
        return tuple(_aligned_rows(x) for x in xs)
    return xs


def _aligned_rows(x: torch.Tensor) -> torch.Tensor:
    """Contiguous last dim, 16-byte aligned base and strides (the kernel's 16-byte copies). A copy, never
    ``x.contiguous()``: that returns ``x`` itself when only a size-1 dim's stride is off."""
    if x.data_ptr() % 16 == 0 and _row_strides(x):
        return x
    return x.clone(memory_format=torch.contiguous_format)
