"""Launchers of the Monarch attention Triton kernels: tensors in, tensors out, config given.

Knows nothing of torch ops or the registry. Config keys (validity: backends/triton.py):
``stage_r`` (read by the backend, which passes the stage-R launcher it names), ``fwd_block_m,
fwd_block_l, fwd_warps`` (the forward stage-R kernel, also the backward's recompute),
``fwd_block_k`` (key rows per step of the forward stage-L kernel and per program of the aR
update), ``block_k`` (per step of the fused stage-L backward; b1 > FUSED_BWD_MAX_B1: per program of
the unfused daL/dY kernel), ``bwd_block_k`` (per step of the backward's delta kernel, num_iters > 1,
and of the unfused dQ kernel), all flat across key tiles; ``block_j, block_l, r_warps`` (the
backward stage-R kernels), ``block_i`` (rows per program of the stage-L kernels, except the fused
backward's, which takes every row: limits.fused_bwd_rows), ``l_warps`` (stage-L kernels), ``num_stages``.
Tile-order shapes: q ``[B, A, b1, b2, nh, d]``, k and v ``[B, F, b1, b2, nh, d]``.
"""

from __future__ import annotations

import types

import torch

from ._interpreter import guarded, interpreting
from ._launch import Prepared, cdiv, current, keep_scratch, launch, take_scratch
from .limits import fused_bwd_rows
from .monarch_attention_bwd import (
    _stage_l_bwd,
    _stage_l_bwd_delta,
    _stage_l_bwd_kv,
    _stage_l_bwd_q,
    _stage_r_bwd_kv,
    _stage_r_bwd_q,
)
from .monarch_attention_fwd import _stage_l_fwd, _stage_l_update, _stage_r_fwd


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get 3-pass tf32 (about fp32 accuracy; one tf32 pass loses ~2e-3 over two stages)
    return "tf32x3" if dtype == torch.float32 else "tf32"


class _Scratch:
    """Stage-R intermediates, heads first: aL, Y ``[B, nh, A, F, b2, b1, d]``; cL ``[B, nh, A, F, b2, b1]``."""

    def __init__(self, q, n_f, with_lse_r=False):
        bsz, n_a, b1, b2, nh, d = q.shape
        self.a_l = torch.empty(bsz, nh, n_a, n_f, b2, b1, d, dtype=q.dtype, device=q.device)
        self.y = torch.empty_like(self.a_l)
        self.c_l = torch.empty(bsz, nh, n_a, n_f, b2, b1, dtype=torch.float32, device=q.device)
        self.lse_r = torch.empty_like(self.c_l) if with_lse_r else self.c_l


# Fewer stage-R programs than this (small F * b1 * heads) split each key row's (a, j) rows.
_MIN_STAGE_R_PROGRAMS = 1024


def _stage_r_args(q, k, v, sm_scale, common, config, first, write_y, write_lse):
    """Stage R's launch but for its tensors: ``(grid, values after the tensors, keyword arguments)``."""
    n_a, b1, b2 = q.shape[1], q.shape[2], q.shape[3]
    n_f, bsz, nh = k.shape[1], q.shape[0], q.shape[4]
    programs = n_f * b1 * bsz * nh
    row_blocks = cdiv(n_a * b2, config["fwd_block_m"])
    split = min(row_blocks, max(1, cdiv(_MIN_STAGE_R_PROGRAMS, programs)))
    return (n_f * b1, split, bsz * nh), (sm_scale, *q.stride()[:5], *k.stride()[:5], *v.stride()[:5], *common), dict(
        FIRST=first, WRITE_Y=write_y, WRITE_LSE=write_lse, ONE_L_BLOCK=b2 <= config["fwd_block_l"],
        HEAD_DIM=q.shape[5], DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_M=config["fwd_block_m"], BLOCK_L=config["fwd_block_l"], num_warps=config["fwd_warps"],
        num_stages=config["num_stages"],
    )  # fmt: skip


def _stage_r(q, k, v, sc: _Scratch, a_r, c_r, sm_scale, common, config, write_y=True, write_lse=False):
    grid, rest, meta = _stage_r_args(q, k, v, sm_scale, common, config, a_r is None, write_y, write_lse)
    launch(_stage_r_fwd, grid,
        q, k, v, q if a_r is None else a_r, sc.c_l if c_r is None else c_r, sc.a_l, sc.y, sc.c_l, sc.lse_r,
        *rest, **meta,
    )  # fmt: skip


def _stage_l_args(q, sm_scale, common, config, write_z):
    """Stage L's launch but for its tensors, as :func:`_stage_r_args`."""
    bsz, n_a, b1, b2, nh, d = q.shape
    return (n_a * b2, cdiv(b1, config["block_i"]), bsz * nh), (sm_scale, *q.stride()[:5], *common), dict(
        WRITE_Z=write_z, HEAD_DIM=d, DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_I=config["block_i"], BLOCK_K=config["fwd_block_k"],
        num_warps=config["l_warps"], num_stages=config["num_stages"],
    )  # fmt: skip


def _stage_l(q, sc: _Scratch, z, lse, sm_scale, common, config, write_z):
    grid, rest, meta = _stage_l_args(q, sm_scale, common, config, write_z)
    launch(_stage_l_fwd, grid, q, sc.a_l, sc.y, sc.c_l, z, lse, *rest, **meta)


def _update(q, sc: _Scratch, lse, sm_scale, common, config):
    """The next pass's stage-R query aR = sum_i L Q and cR = sum_i L, from this pass's stage L."""
    bsz, n_a, b1, b2, nh, d = q.shape
    n_f = common[2]
    a_r = torch.empty(bsz, nh, n_a, n_f, b1, b2, d, dtype=q.dtype, device=q.device)
    c_r = torch.empty(bsz, nh, n_a, n_f, b1, b2, dtype=torch.float32, device=q.device)
    launch(_stage_l_update, (n_a * b2, cdiv(n_f * b1, config["fwd_block_k"]), bsz * nh),
        q, sc.a_l, sc.c_l, lse, a_r, c_r, sm_scale, *q.stride()[:5], *common,
        HEAD_DIM=d, DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_I=config["block_i"], BLOCK_K=config["fwd_block_k"],
        num_warps=config["l_warps"], num_stages=config["num_stages"],
    )  # fmt: skip
    return a_r, c_r


class _OnePass:
    """A one-pass forward, everything but its tensors built once per problem (shapes, strides, dtype,
    device, parameters, config, stage-R launcher: the key in :func:`monarch_attention_fwd`): the
    scratch's and outputs' shapes, whether q, k, v need a contiguous copy, and the two launches
    (:class:`_launch.Prepared`, which checks per call what it does not key; the warpgroup-MMA stage R
    prepared by its launcher's ``prepare_first_pass``). The same launches as :func:`_stage_r` and
    :func:`_stage_l` (their ``_args``); a stage-R launcher with nothing prepared is called with
    ``_stage_r``'s arguments, the scratch as views.

    Per call: Triton's current device and stream asked once for both launches (another current device
    than the tensors': the call runs under theirs); the scratch aL, Y, cL allocated, or with ``runner``
    taken from the buffers kept per stream (``_launch.take_scratch``: every element stage L reads,
    stage R writes on every call, and it is never returned); z and lse allocated (they are returned).

    ``runner``: the public functions' eager fast path (:func:`prepare_fwd`): q, k, v may be any tensors
    with the data pointers of tile-order tensors of the prepared layout (the natural-order tensors of an
    identity tiling, a KV cache whose first rows the slice is), since only their data pointers and
    dtypes are read; z is allocated as ``z_shape`` (the natural order's, the same memory layout), lse
    is scratch too (the caller discards it), and a call that the prepared launches cannot take (the
    wgmma stage R or stage L on a misaligned base or another current device, or a stage-L launcher with
    nothing prepared, which would read the stand-ins' strides) returns None before any launch."""

    def __init__(self, q, k, v, sm_scale, causal_block_tiles, config, stage_r, z_shape=None, runner=False,
                 stage_l=None):  # fmt: skip
        self.copy = tuple(x.stride(-1) != 1 for x in (q, k, v))
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        bsz, n_a, b1, b2, nh, d = q.shape
        n_f = k.shape[1]
        common = (nh, n_a, n_f, b1, b2, causal_block_tiles)
        self.dtype, self.device, self.runner = q.dtype, q.device, runner
        self.index = q.device.index if q.is_cuda else None  # the CUDA device the launches must run on
        self.scratch = (bsz, nh, n_a, n_f, b2, b1, d)  # _Scratch's shapes
        self.c_l = self.scratch[:-1]
        self.z = (bsz, n_a, b1, b2, nh, d) if z_shape is None else tuple(z_shape)
        self.lse = (bsz, n_a, b1, b2, nh)
        # what the kept scratch is (_launch.take_scratch's key with the device and stream)
        self.what = ("attention", self.scratch, self.lse if runner else None, self.dtype, self.device)
        # the Triton stage R prepared, or the launcher's own prepared first pass; else the launcher called
        # with _stage_r's arguments after the scratch
        self.triton_r = self.wgmma_r = None
        if stage_r is _stage_r:
            self.triton_r = Prepared(_stage_r_fwd, *_stage_r_args(q, k, v, sm_scale, common, config, True, True, False))
        elif getattr(stage_r, "prepare_first_pass", None) is not None:
            self.wgmma_r = stage_r.prepare_first_pass(q, k, v, sm_scale, common)
        self.stage_r, self.stage_r_rest = stage_r, (None, None, sm_scale, common, config)
        # the Triton stage L prepared, or another launcher's own prepared call (else, or where that does not
        # run, the launcher called with _stage_l's arguments)
        self.stage_l = Prepared(_stage_l_fwd, *_stage_l_args(q, sm_scale, common, config, True))
        self.other_l = None if stage_l in (None, _stage_l) else stage_l
        self.other_l_rest = (sm_scale, common, config, True)
        prepare_l = getattr(self.other_l, "prepare_one_pass", None)
        self.prepared_l = None if prepare_l is None else prepare_l(q, sm_scale, common)

    def _new_scratch(self) -> tuple:
        # shapes as separate ints: ~0.4 us less a call than a tuple or torch.Size (the argument parser)
        dtype, device = self.dtype, self.device
        a_l = torch.empty(*self.scratch, dtype=dtype, device=device)
        y = torch.empty(*self.scratch, dtype=dtype, device=device)
        c_l = torch.empty(*self.c_l, dtype=torch.float32, device=device)
        if self.runner:
            return a_l, y, c_l, torch.empty(*self.lse, dtype=torch.float32, device=device)
        return a_l, y, c_l

    def __call__(self, q, k, v):
        copy_q, copy_k, copy_v = self.copy
        if copy_q or copy_k or copy_v:
            q, k, v = (x.contiguous() if c else x for x, c in zip((q, k, v), self.copy, strict=True))
        device, stream = current()
        if self.index is not None and device is not None and device != self.index:  # launches use the current device
            if self.runner:
                return None
            with torch.cuda.device(self.device):
                return self(q, k, v)
        wgmma_r, prepared_l = self.wgmma_r, self.prepared_l
        if wgmma_r is not None and not wgmma_r.runs(device, q, k, v):
            if self.runner:
                return None
            wgmma_r = None  # the launcher itself: it copies
        if prepared_l is not None and not prepared_l.runs(device, q):
            if self.runner:  # (the launcher would read q's own strides: not a stand-in's)
                return None
            prepared_l = None
        z = torch.empty(*self.z, dtype=self.dtype, device=self.device)
        # scratch is kept between calls only on the eager fast path: the op's path is also what compiled
        # graphs run (CUDA-graph trees allocate their warm-up calls from a private pool that they reset)
        scratch, ticket = take_scratch(self.what, device, stream, self._new_scratch) if self.runner else (
            self._new_scratch(), None)  # fmt: skip
        if self.runner:
            a_l, y, c_l, lse = scratch
        else:
            a_l, y, c_l = scratch
            lse = torch.empty(*self.lse, dtype=torch.float32, device=self.device)
        try:
            if self.triton_r is not None:  # first pass: aR is q, cR and lse_R unused (cL)
                self.triton_r.on(device, stream, q, k, v, q, c_l, a_l, y, c_l, c_l)
            elif wgmma_r is not None:
                wgmma_r(stream, q, k, v, a_l, y, c_l)
            else:
                self.stage_r(q, k, v, types.SimpleNamespace(a_l=a_l, y=y, c_l=c_l, lse_r=c_l), *self.stage_r_rest)
            if self.other_l is None:
                self.stage_l.on(device, stream, q, a_l, y, c_l, z, lse)
            elif prepared_l is not None:
                prepared_l(stream, q, a_l, y, c_l, z, lse)
            else:
                self.other_l(q, types.SimpleNamespace(a_l=a_l, y=y, c_l=c_l), z, lse, *self.other_l_rest)
        finally:
            keep_scratch(ticket, scratch)
        return z, lse


_plans: dict = {}  # monarch_attention_fwd's key -> _OnePass
_MAX_PLANS = 1024  # distinct problems (batch sizes, KV lengths) before it starts over


@guarded(_stage_r_fwd, _stage_l_fwd, _stage_l_update)
def prepare_fwd(q, k, v, *, sm_scale: float, causal_block_tiles: int, num_iters: int, config: dict, z_shape,
                stage_r=_stage_r, stage_l=_stage_l):  # fmt: skip
    """The eager fast path's forward of one problem and layout (:class:`_OnePass` with ``runner``): a
    callable ``(q, k, v) -> (z, lse) | None`` for tensors with the data pointers of tile-order tensors laid
    out as these, ``z`` of ``z_shape`` and ``lse`` scratch; or None where no launch is prepared (more than
    one pass, the interpreter, a contiguous copy needed, a stage-R launcher with nothing prepared). The
    caller keeps it as long as its selection stands (the config, and the environment that the guard reads)."""
    if num_iters != 1 or interpreting() or any(x.stride(-1) != 1 for x in (q, k, v)):
        return None
    plan = _OnePass(q, k, v, sm_scale, causal_block_tiles, config, stage_r, z_shape=z_shape, runner=True,
                    stage_l=stage_l)  # fmt: skip
    if plan.other_l is not None and plan.prepared_l is None:  # a stage-L launcher with nothing prepared
        return None
    return plan if plan.triton_r is not None or plan.wgmma_r is not None else None


@guarded(_stage_r_fwd, _stage_l_fwd, _stage_l_update)
def monarch_attention_fwd(
    q, k, v, *, sm_scale: float, causal_block_tiles: int, num_iters: int, config: dict, stage_r=_stage_r,
    stage_l=_stage_l,
):  # fmt: skip
    """-> ``(z [B, A, b1, b2, nh, d]`` in q's dtype, ``lse [B, A, b1, b2, nh]`` float32).

    ``stage_r``, ``stage_l``: the stage-R and stage-L launchers, ``_stage_r``'s and ``_stage_l``'s arguments
    and effect (the triton backend passes the warpgroup-MMA kernels' where its config names them)."""
    if num_iters == 1:  # the common call: its launches prepared once per problem (the kernels' ids in
        # the key, the plan keeping them alive: a stand-in for one, a test's recorder, is a new problem)
        key = (q.shape, q.stride(), k.shape, k.stride(), v.stride(), q.dtype, q.device, sm_scale, type(sm_scale),
               causal_block_tiles, type(causal_block_tiles), tuple(config.items()), stage_r, stage_l,
               id(_stage_r_fwd), id(_stage_l_fwd))  # fmt: skip
        plan = _plans.get(key)
        if plan is None:
            if len(_plans) >= _MAX_PLANS:
                _plans.clear()
            plan = _plans[key] = _OnePass(q, k, v, sm_scale, causal_block_tiles, config, stage_r, stage_l=stage_l)
        return plan(q, k, v)
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    bsz, n_a, b1, b2, nh, d = q.shape
    sc = _Scratch(q, k.shape[1])
    z = torch.empty(bsz, n_a, b1, b2, nh, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(bsz, n_a, b1, b2, nh, dtype=torch.float32, device=q.device)
    a_r = c_r = None
    common = (nh, n_a, k.shape[1], b1, b2, causal_block_tiles)
    for it in range(num_iters):
        last = it == num_iters - 1
        stage_r(q, k, v, sc, a_r, c_r, sm_scale, common, config, write_y=last)
        stage_l(q, sc, z, lse, sm_scale, common, config, write_z=last)
        if not last:
            a_r, c_r = _update(q, sc, lse, sm_scale, common, config)
    return z, lse


@guarded(
    _stage_r_fwd, _stage_l_fwd, _stage_l_update, _stage_l_bwd, _stage_l_bwd_delta, _stage_l_bwd_kv,
    _stage_l_bwd_q, _stage_r_bwd_kv, _stage_r_bwd_q,
)  # fmt: skip
def monarch_attention_bwd(
    dz, dlse, q, k, v, z, lse, *, sm_scale: float, causal_block_tiles: int, num_iters: int, config: dict,
    stage_r=_stage_r, stage_r_dkdv=None, stage_r_dq=None, stage_l_bwd=None,
):  # fmt: skip
    """Gradients of Monarch attention (docs/math.md, Backward) -> ``(dq, dk, dv)``.

    num_iters > 1: the forward passes are recomputed up to the last one, keeping each pass's aR, cR
    and stage-L normaliser; then the passes are differentiated last to first, each recomputing its
    stage R. dQ, dK, dV accumulate in fp32 and are returned in q's dtype, each stored so by its last
    writer (dV's only writer is the last pass's key-row kernel). ``stage_r``, ``stage_r_dkdv`` and
    ``stage_r_dq`` (None: :func:`_stage_r_dkdv`, :func:`_stage_r_dq`) launch stage R and its backward;
    ``stage_l_bwd`` (None: the Triton kernels) the last pass's stage-L backward, with the arguments and
    effect of ``backends.cuda.stage_l_bwd_wgmma``.
    """
    stage_r_dkdv = _stage_r_dkdv if stage_r_dkdv is None else stage_r_dkdv
    stage_r_dq = _stage_r_dq if stage_r_dq is None else stage_r_dq
    q, k, v, dz, z = (_last_dim_contiguous(x) for x in (q, k, v, dz, z))
    dlse = dlse.contiguous()  # read per token as lse_L is; a copy only for a strided (e.g. expanded) gradient
    bsz, n_a, b1, b2, nh, d = q.shape
    n_f = k.shape[1]
    common = (nh, n_a, n_f, b1, b2, causal_block_tiles)
    sc = _Scratch(q, n_f, with_lse_r=True)
    # each pass's stage-R query (None: the first pass's is q) and stage-L normaliser
    a_rs, c_rs, lses = [None], [None], []
    for _ in range(num_iters - 1):
        stage_r(q, k, v, sc, a_rs[-1], c_rs[-1], sm_scale, common, config, write_y=False)
        lses.append(torch.empty(lse.shape, dtype=torch.float32, device=q.device))
        _stage_l(q, sc, z, lses[-1], sm_scale, common, config, write_z=False)
        a_r, c_r = _update(q, sc, lses[-1], sm_scale, common, config)
        a_rs.append(a_r)
        c_rs.append(c_r)
    lses.append(lse.float().contiguous())
    da_l = torch.empty_like(sc.a_l)
    dy = torch.empty_like(sc.y)
    dc_l = torch.empty_like(sc.c_l)
    delta_r = torch.empty_like(sc.c_l)
    # the next pass's daR and dcR, in the Y and cL layouts, read by an earlier pass's stage L
    d_ar = torch.empty_like(sc.a_l) if num_iters > 1 else da_l
    d_cr = torch.empty_like(sc.c_l) if num_iters > 1 else dc_l
    # written first by the last pass's stage-L kernel (_stage_l_bwd or _stage_l_bwd_q) and key-row
    # stage-R kernel, read-added after; dQ's last writer (the first pass's query-row stage-R kernel)
    # stores it in q's dtype
    dq = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    dq_out = dq if q.dtype == torch.float32 else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    # dK's fp32 partial across passes (none with one pass), and dK, dV in k's dtype
    dk_out = torch.empty(k.shape[:4] + (nh, d), dtype=k.dtype, device=q.device)
    dv = torch.empty_like(dk_out)
    dk = torch.empty(dk_out.shape, dtype=torch.float32, device=q.device) if num_iters > 1 else None
    l_meta = dict(HEAD_DIM=d, DOT_PRECISION=_dot_precision(q.dtype),
                  BLOCK_I=config["block_i"], BLOCK_K=config["block_k"],
                  num_warps=config["l_warps"], num_stages=config["num_stages"])  # fmt: skip
    grid_l_q = (n_a * b2, cdiv(b1, config["block_i"]), bsz * nh)
    fused_rows = fused_bwd_rows(b1, q.element_size())  # None: over the fused kernel's limit, two kernels
    for it in reversed(range(num_iters)):
        last = it == num_iters - 1
        stage_r(q, k, v, sc, a_rs[it], c_rs[it], sm_scale, common, config, write_y=last, write_lse=True)
        grads = (da_l, dy, dc_l, delta_r)
        if last and stage_l_bwd is not None:  # D_L formed inside, as the fused Triton kernel does
            stage_l_bwd(q, dz, z, lses[it], dlse, sc, grads, dq, sm_scale, common)
        else:
            if last:
                # D_L = <Z, dZ> - dlse is formed by the stage-L kernel that loads dZ first (_output_delta):
                # kept in registers by the fused kernel (DELTA_L unused), stored by _stage_l_bwd_q for _stage_l_bwd_kv
                delta_l = lses[it] if fused_rows is not None else torch.empty_like(lses[it])
                l_args = (q, dz, lses[it], delta_l, sc.a_l, sc.y, sc.c_l, d_cr)
                out_args, strides_out = (z, dlse), z.stride()[:5]
            else:
                # this pass fed the next one's aR and cR: dL = <Q, daR> + dcR, and D_L with dQ += sum L daR
                delta_l = torch.empty_like(lses[it])
                launch(_stage_l_bwd_delta, grid_l_q,
                    q, lses[it], sc.a_l, sc.c_l, d_ar, d_cr, delta_l, dq, sm_scale, *q.stride()[:5], *common,
                    **{**l_meta, "BLOCK_K": config["bwd_block_k"]},
                )  # fmt: skip
                l_args = (q, q, lses[it], delta_l, sc.a_l, d_ar, sc.c_l, d_cr)
                out_args, strides_out = (q, lses[it]), q.stride()[:5]  # Z and dlse: unused (UPDATE)
            strides_l = (*q.stride()[:5], *l_args[1].stride()[:5])  # q, and dz (last pass) or q
            if fused_rows is not None:  # daL, dY, dcL, D_R and dQ in one kernel, every row i per program
                launch(_stage_l_bwd, (n_a * b2, 1, bsz * nh),
                    *l_args, *out_args, da_l, dy, dc_l, delta_r, dq, sm_scale, *strides_l, *strides_out, *common,
                    UPDATE=not last, ACCUMULATE=not last, **{**l_meta, "BLOCK_I": fused_rows},
                )  # fmt: skip
            else:  # the dQ kernel first: on the last pass it stores the D_L the daL/dY kernel reads
                launch(_stage_l_bwd_q, grid_l_q,
                    *l_args, *out_args, dq, sm_scale, *strides_l, *strides_out, *common,
                    UPDATE=not last, ACCUMULATE=not last, **{**l_meta, "BLOCK_K": config["bwd_block_k"]},
                )  # fmt: skip
                launch(_stage_l_bwd_kv, (n_a * b2, cdiv(n_f * b1, config["block_k"]), bsz * nh),
                    *l_args, da_l, dy, dc_l, delta_r, sm_scale, *strides_l, *common, UPDATE=not last, **l_meta,
                )  # fmt: skip
        stage_r_dkdv(q, k, v, sc, a_rs[it], c_rs[it], grads, dk, dv if last else None, sm_scale, common, config,
                     accumulate=not last, dk_out=dk_out if it == 0 else None)  # fmt: skip
        stage_r_dq(q, k, v, sc, a_rs[it], c_rs[it], grads, dq, dq_out, d_ar, d_cr, sm_scale, common, config,
                   has_y=last)  # fmt: skip
    return dq_out, dk_out, dv


def _stage_r_dq(q, k, v, sc, a_r, c_r, grads, dq, dq_out, d_ar, d_cr, sm_scale, common, config, *, has_y):
    """Stage R's query-row backward on the Triton kernel: on the first pass (``a_r`` None) dQ's last part,
    ``dq_out`` = dq + it in q's dtype (``dq_out`` may be ``dq``); on a later pass daR and dcR of the
    previous one into ``d_ar``, ``d_cr``. ``grads``: the stage-L backward's (daL, dY, dcL, D_R); dY is
    read where ``has_y`` (the last pass)."""
    nh, n_a, n_f, b1, b2, causal_block_tiles = common
    first = a_r is None
    r_args = (q, k, v, q if first else a_r, sc.c_l if first else c_r, sc.lse_r, *grads)
    launch(_stage_r_bwd_q, (n_a * b1, cdiv(b2, config["block_j"]), q.shape[0] * nh),
        *r_args, dq, dq_out, d_ar, d_cr, sm_scale, *q.stride()[:5], *k.stride()[:5], *v.stride()[:5], *common,
        FIRST=first, HAS_Y=has_y, HEAD_DIM=q.shape[5], DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_J=config["block_j"], BLOCK_L=config["block_l"], num_warps=config["r_warps"],
        num_stages=config["num_stages"],
    )  # fmt: skip


def _stage_r_dkdv(q, k, v, sc, a_r, c_r, grads, dk, dv, sm_scale, common, config, *, accumulate, dk_out=None):
    """Stage R's key-row backward on the Triton kernel: dK (added to the fp32 partial ``dk`` when
    ``accumulate``) into ``dk_out`` (dK's last write, in any dtype) or else ``dk``, and, where ``dv``
    is given (the last pass, the one with Y), dV of every key row (stored in dv's dtype), from the
    stage-L backward's ``grads`` = (daL, dY, dcL, D_R), ``sc.lse_r`` and the pass's query (``a_r``,
    ``c_r``: None on the first pass)."""
    if accumulate and dk is None:
        raise ValueError("_stage_r_dkdv: accumulate needs dK's fp32 partial dk")
    nh, n_a, n_f, b1, b2, causal_block_tiles = common
    first = a_r is None
    r_args = (q, k, v, q if first else a_r, sc.c_l if first else c_r, sc.lse_r, *grads)
    out = dk if dk_out is None else dk_out
    launch(_stage_r_bwd_kv, (n_f * b1, cdiv(b2, config["block_l"]), q.shape[0] * nh),
        *r_args, out if dk is None else dk, out, out if dv is None else dv, sm_scale,
        *q.stride()[:5], *k.stride()[:5], *v.stride()[:5], *common,
        FIRST=first, HAS_Y=dv is not None, ACCUMULATE=accumulate, HEAD_DIM=q.shape[5],
        DOT_PRECISION=_dot_precision(q.dtype), BLOCK_J=config["block_j"], BLOCK_L=config["block_l"],
        num_warps=config["r_warps"], num_stages=config["num_stages"],
    )  # fmt: skip
