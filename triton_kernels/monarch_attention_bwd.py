"""Triton backward kernels of Monarch attention (docs/math.md, Backward), any num_iters.

Stored quantities are unscaled (see monarch_attention_fwd.py): aL = sum_l R K, S_R = tau <aR, K>
(tau = s on the first pass, aR the query of row k; later tau = s t with the temperature t from cR),
S_L = s <Q, aL> - cL. The last pass, with D_L = <Z, dZ> - dlse (_output_delta, in the stage-L kernel
that needs it first):

  dS_L = L (<dZ, Y> - D_L);  dY = sum_i L dZ;  dcL = -sum_i dS_L;  daL = s sum_i dS_L Q
  dQ  += s sum_{f,k} dS_L aL
  D_R  = <daL, aL> + <dY, Y> + dcL (1 + cL)                          (_stage_l_bwd: all of stage L)
  dR   = <daL, K> + <dY, V> + dcL (1 + log R);  dS_R = R (dR - D_R)
  dK  += sum_{a,j} (tau dS_R aR + R daL);  dV = sum_{a,j} R dY         (_stage_r_bwd_kv)
  first pass: dQ[a,k,j] += s sum_{f,l} dS_R K                        (_stage_r_bwd_q)
  later pass: daR = tau sum_l dS_R K;  dcR = -t sum_l dS_R S_R (0 where t is clamped)

An earlier pass t feeds the next one through aR' = sum_i L Q and cR' = sum_i L, so its stage L
sees dL = <Q, daR'> + dcR' in place of <dZ, Y> (UPDATE): Q plays dZ and daR' plays Y, there is no
dY, and the direct term dQ += sum_{f,k} L daR' comes with D = <Q, sum L daR'> + sum L dcR'
(_stage_l_bwd_delta, run first).

Stage L's backward is one kernel, _stage_l_bwd, per (a, j) with every row i (b1 <= FUSED_BWD_MAX_B1,
triton_kernels/limits.py); above that limit two kernels share it: _stage_l_bwd_kv (daL, dY, dcL, D_R
per block of key rows) and _stage_l_bwd_q (dQ per block of rows i).

Each kernel owns its outputs (no atomics): the last pass, differentiated first, writes dQ (stage
L), dK and dV; every later launch read-adds (ACCUMULATE), one after the other. The first pass's
_stage_r_bwd_q and _stage_r_bwd_kv, the last to touch dQ and dK, store them in the dtype (DQ_OUT,
DK_OUT). Scratch layouts are those of the forward: aL, Y, daL, dY, daR ``[B, nh, A, F, b2(j), b1(k),
d]``; cL, dcL, dcR, D_R, lse_R ``[B, nh, A, F, b2, b1]``; aR ``[B, nh, A, F, b1, b2, d]``; lse_L,
dlse and D_L ``[B, A, b1, b2, nh]``; dQ ``[B, A, b1, b2, nh, d]``, dK and dV ``[B, F, b1, b2, nh, d]``
fp32 partials, each stored in its dtype by its last writer (DQ_OUT, DK_OUT; dV has one writer).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .monarch_attention_fwd import (
    RUNTIME_ARGS,
    TEMPERATURE_EPS,
    TEMPERATURE_MAX,
    _key_block,
    _query_column,
    _rows,
    _stage_r_query,
    _visible_kv_tiles,
)


@triton.jit
def _output_delta(q, DZ, szb, szt, szr, szc, szh, Z, sob, sot, sor, soc, soh, DLSE, DELTA_L,
                  bb, a, j, h, offs_i, mask_i, tok, nh, UPDATE: tl.constexpr, HEAD_DIM: tl.constexpr):  # fmt: skip
    """The rows i of column j of query tile a that stand in dZ's place, and their D_L: on an earlier
    pass (UPDATE) the query rows ``q`` and D_L read from DELTA_L; on the last pass dZ's rows and D_L =
    <Z, dZ> - dlse (docs/math.md, Backward: the lse output's gradient folded in), the dot product in
    fp32. Padded rows: 0."""
    if UPDATE:
        dz = q
        d_l = tl.load(DELTA_L + tok * nh + h, mask=mask_i, other=0.0)
    else:
        dz = _rows(DZ + bb * szb + a * szt + j * szc + h * szh, offs_i * szr, mask_i, HEAD_DIM)
        z = _rows(Z + bb * sob + a * sot + j * soc + h * soh, offs_i * sor, mask_i, HEAD_DIM)
        d_lse = tl.load(DLSE + tok * nh + h, mask=mask_i, other=0.0)
        d_l = tl.sum(z.to(tl.float32) * dz.to(tl.float32), 1) - d_lse
    return dz, d_l


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _stage_l_bwd(
    Q, DZ, LSE, DELTA_L, AL, Y, CL, DCR, Z, DLSE, DAL, DY, DCL, DELTA_R, DQ,
    sm_scale,
    sqb, sqt, sqr, sqc, sqh,
    szb, szt, szr, szc, szh,
    sob, sot, sor, soc, soh,
    nh, num_q_tiles, num_kv_tiles, b1, b2, causal_block_tiles,
    UPDATE: tl.constexpr, ACCUMULATE: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The whole stage-L backward of column j of query tile a (docs/attention-kernels.md, Fused
    stage-L backward): every row i in one block (BLOCK_I >= b1), the visible key rows flat across key
    tiles, BLOCK_K at a time. Per key block: daL, dcL and D_R (and dY on the last pass) of those key
    rows, summed over i, stored; dQ (+)= s sum_{f,k} dS_L aL carried across the blocks.
    UPDATE: an earlier pass, with Q in dZ's place, Y the next pass's daR and dcR added to dL, D_L
    read from DELTA_L; no dY. Else D_L is formed here from Z, dZ and dlse (DELTA_L unused).
    ACCUMULATE: dQ read-added; the last pass, differentiated first, writes it."""
    a, j, bb, h, bha, offs_i, mask_i, q, tok = _query_column(
        Q, sqb, sqt, sqr, sqc, sqh, nh, num_q_tiles, b1, b2, BLOCK_I, HEAD_DIM
    )
    dtype = Q.dtype.element_ty
    offs_d = tl.arange(0, HEAD_DIM)
    lse = tl.load(LSE + tok * nh + h, mask=mask_i, other=float("inf"))  # padded rows: L = 0, so dS_L = 0
    dz, d_l = _output_delta(q, DZ, szb, szt, szr, szc, szh, Z, sob, sot, sor, soc, soh, DLSE, DELTA_L,
                            bb, a, j, h, offs_i, mask_i, tok, nh, UPDATE, HEAD_DIM)  # fmt: skip
    acc_dq = tl.zeros([BLOCK_I, HEAD_DIM], tl.float32)
    n_keys = _visible_kv_tiles(a, num_kv_tiles, causal_block_tiles) * b1
    for key0 in range(0, n_keys, BLOCK_K):
        keys = key0 + tl.arange(0, BLOCK_K)
        rows, mask_k, a_l, c_l = _key_block(AL, CL, bha, keys, n_keys, num_kv_tiles, b1, b2, j, HEAD_DIM)
        y = _rows(Y, rows * HEAD_DIM, mask_k, HEAD_DIM)
        s = tl.dot(q, tl.trans(a_l), input_precision=DOT_PRECISION) * sm_scale - c_l[None, :]  # [BI, BK]
        p = tl.where(mask_k[None, :], tl.exp(s - lse[:, None]), 0.0)  # L
        dp = tl.dot(dz, tl.trans(y), input_precision=DOT_PRECISION)  # [BI, D] @ [D, BK]
        if UPDATE:
            dp += tl.load(DCR + rows, mask=mask_k, other=0.0)[None, :]
            delta_r = tl.zeros([BLOCK_K], tl.float32)
        else:  # dY first, stored with its part of D_R, so one [BK, D] product is live at a time
            d_y = tl.dot(tl.trans(p).to(dtype), dz, input_precision=DOT_PRECISION)  # [BK, BI] @ [BI, D]
            delta_r = tl.sum(d_y * y.to(tl.float32), 1)
            tl.store(DY + rows[:, None] * HEAD_DIM + offs_d[None, :], d_y.to(dtype), mask=mask_k[:, None])
        ds = p * (dp - d_l[:, None])
        d_al = tl.dot(tl.trans(ds).to(dtype), q, input_precision=DOT_PRECISION) * sm_scale
        d_cl = -tl.sum(ds, 0)
        delta_r += tl.sum(d_al * a_l.to(tl.float32), 1) + d_cl * (1.0 + c_l)
        tl.store(DAL + rows[:, None] * HEAD_DIM + offs_d[None, :], d_al.to(dtype), mask=mask_k[:, None])
        tl.store(DCL + rows, d_cl, mask=mask_k)
        tl.store(DELTA_R + rows, delta_r, mask=mask_k)
        acc_dq += tl.dot(ds.to(dtype), a_l, input_precision=DOT_PRECISION)  # [BI, BK] @ [BK, D]
    p_dq = DQ + (tok[:, None] * nh + h) * HEAD_DIM + offs_d[None, :]
    d_q = acc_dq * sm_scale
    if ACCUMULATE:
        d_q += tl.load(p_dq, mask=mask_i[:, None], other=0.0)
    tl.store(p_dq, d_q, mask=mask_i[:, None])


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _stage_l_bwd_kv(
    Q, DZ, LSE, DELTA_L, AL, Y, CL, DCR, DAL, DY, DCL, DELTA_R,
    sm_scale,
    sqb, sqt, sqr, sqc, sqh,
    szb, szt, szr, szc, szh,
    nh, num_q_tiles, num_kv_tiles, b1, b2, causal_block_tiles,
    UPDATE: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """b1 > FUSED_BWD_MAX_B1 only (else _stage_l_bwd). daL, dcL and D_R (and dY on the last pass) of
    column j of query tile a and a block of its visible key rows (flat across key tiles, as the
    forward's stage L), summed over rows i, D_L read (the last pass's: from _stage_l_bwd_q, launched
    first). UPDATE: an earlier pass, with Y the next pass's daR and dcR added to dL."""
    pid_aj = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_bh = tl.program_id(2)
    j = pid_aj % b2
    a = pid_aj // b2
    bb = (pid_bh // nh).to(tl.int64)
    h = pid_bh % nh
    n_keys = _visible_kv_tiles(a, num_kv_tiles, causal_block_tiles) * b1
    if pid_k * BLOCK_K >= n_keys:  # key rows of tiles masked for query tile a
        return
    dtype = Q.dtype.element_ty
    offs_d = tl.arange(0, HEAD_DIM)
    bha = (bb * nh + h) * num_q_tiles + a
    keys = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rows, mask_k, a_l, c_l = _key_block(AL, CL, bha, keys, n_keys, num_kv_tiles, b1, b2, j, HEAD_DIM)
    y = _rows(Y, rows * HEAD_DIM, mask_k, HEAD_DIM)
    if UPDATE:
        d_cr = tl.load(DCR + rows, mask=mask_k, other=0.0)
    acc_dal = tl.zeros([BLOCK_K, HEAD_DIM], tl.float32)
    acc_dy = tl.zeros([BLOCK_K, HEAD_DIM], tl.float32)
    acc_dcl = tl.zeros([BLOCK_K], tl.float32)
    for i0 in range(0, b1, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        mask_i = offs_i < b1
        q = _rows(Q + bb * sqb + a * sqt + j * sqc + h * sqh, offs_i * sqr, mask_i, HEAD_DIM)
        tok = ((bb * num_q_tiles + a) * b1 + offs_i) * b2 + j
        lse = tl.load(LSE + tok * nh + h, mask=mask_i, other=float("inf"))
        d_l = tl.load(DELTA_L + tok * nh + h, mask=mask_i, other=0.0)
        s = tl.dot(q, tl.trans(a_l), input_precision=DOT_PRECISION) * sm_scale - c_l[None, :]  # [BI, BK]
        p = tl.where(mask_k[None, :], tl.exp(s - lse[:, None]), 0.0)  # L
        if UPDATE:
            dp = tl.dot(q, tl.trans(y), input_precision=DOT_PRECISION) + d_cr[None, :]
        else:
            dz = _rows(DZ + bb * szb + a * szt + j * szc + h * szh, offs_i * szr, mask_i, HEAD_DIM)
            dp = tl.dot(dz, tl.trans(y), input_precision=DOT_PRECISION)  # [BI, D] @ [D, BK]
            acc_dy += tl.dot(tl.trans(p).to(dtype), dz, input_precision=DOT_PRECISION)  # [BK, BI] @ [BI, D]
        ds = p * (dp - d_l[:, None])
        acc_dal += tl.dot(tl.trans(ds).to(dtype), q, input_precision=DOT_PRECISION)
        acc_dcl -= tl.sum(ds, 0)
    acc_dal = acc_dal * sm_scale
    delta_r = tl.sum(acc_dal * a_l.to(tl.float32), 1) + acc_dcl * (1.0 + c_l)
    if not UPDATE:
        delta_r += tl.sum(acc_dy * y.to(tl.float32), 1)
        tl.store(DY + rows[:, None] * HEAD_DIM + offs_d[None, :], acc_dy.to(dtype), mask=mask_k[:, None])
    tl.store(DAL + rows[:, None] * HEAD_DIM + offs_d[None, :], acc_dal.to(dtype), mask=mask_k[:, None])
    tl.store(DCL + rows, acc_dcl, mask=mask_k)
    tl.store(DELTA_R + rows, delta_r, mask=mask_k)


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _stage_l_bwd_delta(
    Q, LSE, AL, CL, DAR, DCR, DELTA_L, DQ,
    sm_scale,
    sqb, sqt, sqr, sqc, sqh,
    nh, num_q_tiles, num_kv_tiles, b1, b2, causal_block_tiles,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """An earlier pass's stage-L delta D = <Q, P> + sum L dcR', with P = sum_{f,k} L daR', and the
    update's direct term dQ += P; per (a, j) and a block of rows i, keys flat as in the forward."""
    a, j, bb, h, bha, offs_i, mask_i, q, tok = _query_column(
        Q, sqb, sqt, sqr, sqc, sqh, nh, num_q_tiles, b1, b2, BLOCK_I, HEAD_DIM
    )
    dtype = Q.dtype.element_ty
    offs_d = tl.arange(0, HEAD_DIM)
    lse = tl.load(LSE + tok * nh + h, mask=mask_i, other=float("inf"))
    acc_p = tl.zeros([BLOCK_I, HEAD_DIM], tl.float32)
    acc_c = tl.zeros([BLOCK_I], tl.float32)
    n_keys = _visible_kv_tiles(a, num_kv_tiles, causal_block_tiles) * b1
    for key0 in range(0, n_keys, BLOCK_K):
        keys = key0 + tl.arange(0, BLOCK_K)
        rows, mask_k, a_l, c_l = _key_block(AL, CL, bha, keys, n_keys, num_kv_tiles, b1, b2, j, HEAD_DIM)
        s = tl.dot(q, tl.trans(a_l), input_precision=DOT_PRECISION) * sm_scale - c_l[None, :]
        p = tl.where(mask_k[None, :], tl.exp(s - lse[:, None]), 0.0)
        d_ar = _rows(DAR, rows * HEAD_DIM, mask_k, HEAD_DIM)
        d_cr = tl.load(DCR + rows, mask=mask_k, other=0.0)
        acc_p += tl.dot(p.to(dtype), d_ar, input_precision=DOT_PRECISION)  # [BI, BK] @ [BK, D]
        acc_c += tl.sum(p * d_cr[None, :], 1)
    tl.store(DELTA_L + tok * nh + h, tl.sum(q.to(tl.float32) * acc_p, 1) + acc_c, mask=mask_i)
    p_dq = DQ + (tok[:, None] * nh + h) * HEAD_DIM + offs_d[None, :]
    tl.store(p_dq, tl.load(p_dq, mask=mask_i[:, None], other=0.0) + acc_p, mask=mask_i[:, None])


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _stage_l_bwd_q(
    Q, DZ, LSE, DELTA_L, AL, Y, CL, DCR, Z, DLSE, DQ,
    sm_scale,
    sqb, sqt, sqr, sqc, sqh,
    szb, szt, szr, szc, szh,
    sob, sot, sor, soc, soh,
    nh, num_q_tiles, num_kv_tiles, b1, b2, causal_block_tiles,
    UPDATE: tl.constexpr, ACCUMULATE: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """b1 > FUSED_BWD_MAX_B1 only (else _stage_l_bwd). dQ (+)= s sum_{f,k} dS_L aL per (a, j) and a
    block of rows i (UPDATE: as _stage_l_bwd_kv, D_L read). The last pass: D_L formed from Z, dZ and
    dlse and stored in DELTA_L for _stage_l_bwd_kv, launched after (each of its programs walks every
    row i of a column, so forming D_L there would repeat it per block of key rows).
    ACCUMULATE: read-add; the last pass, differentiated first, writes dQ."""
    a, j, bb, h, bha, offs_i, mask_i, q, tok = _query_column(
        Q, sqb, sqt, sqr, sqc, sqh, nh, num_q_tiles, b1, b2, BLOCK_I, HEAD_DIM
    )
    dtype = Q.dtype.element_ty
    offs_d = tl.arange(0, HEAD_DIM)
    lse = tl.load(LSE + tok * nh + h, mask=mask_i, other=float("inf"))
    dz, d_l = _output_delta(q, DZ, szb, szt, szr, szc, szh, Z, sob, sot, sor, soc, soh, DLSE, DELTA_L,
                            bb, a, j, h, offs_i, mask_i, tok, nh, UPDATE, HEAD_DIM)  # fmt: skip
    if not UPDATE:  # for _stage_l_bwd_kv, launched after
        tl.store(DELTA_L + tok * nh + h, d_l, mask=mask_i)
    acc = tl.zeros([BLOCK_I, HEAD_DIM], tl.float32)
    # the visible key rows (f, k) as one flat sequence, as in the forward stage L
    n_keys = _visible_kv_tiles(a, num_kv_tiles, causal_block_tiles) * b1
    for key0 in range(0, n_keys, BLOCK_K):
        keys = key0 + tl.arange(0, BLOCK_K)
        rows, mask_k, a_l, c_l = _key_block(AL, CL, bha, keys, n_keys, num_kv_tiles, b1, b2, j, HEAD_DIM)
        y = _rows(Y, rows * HEAD_DIM, mask_k, HEAD_DIM)
        s = tl.dot(q, tl.trans(a_l), input_precision=DOT_PRECISION) * sm_scale - c_l[None, :]
        p = tl.where(mask_k[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(dz, tl.trans(y), input_precision=DOT_PRECISION)
        if UPDATE:
            dp += tl.load(DCR + rows, mask=mask_k, other=0.0)[None, :]
        ds = p * (dp - d_l[:, None])
        acc += tl.dot(ds.to(dtype), a_l, input_precision=DOT_PRECISION)  # [BI, BK] @ [BK, D]
    p_dq = DQ + (tok[:, None] * nh + h) * HEAD_DIM + offs_d[None, :]
    d_q = acc * sm_scale
    if ACCUMULATE:
        d_q += tl.load(p_dq, mask=mask_i[:, None], other=0.0)
    tl.store(p_dq, d_q, mask=mask_i[:, None])


@triton.jit
def _stage_r_grads(LSE_R, DAL, DY, DCL, DELTA_R, rows, mask, HAS_Y: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The stage-L results stage R's backward reads for rows (a, f, j, k): lse_R, daL, dY, dcL, D_R.
    dY is 0 on a pass that forms no Y (HAS_Y false)."""
    lse_r = tl.load(LSE_R + rows, mask=mask, other=0.0)
    d_al = _rows(DAL, rows * HEAD_DIM, mask, HEAD_DIM)
    d_y = _rows(DY, rows * HEAD_DIM, mask, HEAD_DIM) if HAS_Y else tl.zeros_like(d_al)
    d_cl = tl.load(DCL + rows, mask=mask, other=0.0)
    delta_r = tl.load(DELTA_R + rows, mask=mask, other=0.0)
    return lse_r, d_al, d_y, d_cl, delta_r


@triton.jit
def _stage_r_grad_logits(q, row_scale, k_blk, v_blk, lse_r, d_al, d_y, d_cl, delta_r, mask,
                         HAS_Y: tl.constexpr, DOT_PRECISION: tl.constexpr):  # fmt: skip
    """S_R, R and dS_R of one [BJ, BL] block: rows (a, j) of key row (f, k), columns l."""
    s = tl.dot(q, tl.trans(k_blk), input_precision=DOT_PRECISION) * row_scale[:, None]  # [BJ, D] @ [D, BL]
    log_r = s - lse_r[:, None]
    r = tl.where(mask, tl.exp(log_r), 0.0)
    d_r = tl.dot(d_al, tl.trans(k_blk), input_precision=DOT_PRECISION) + d_cl[:, None] * (1.0 + log_r)
    if HAS_Y:
        d_r += tl.dot(d_y, tl.trans(v_blk), input_precision=DOT_PRECISION)
    return s, r, r * (d_r - delta_r[:, None])


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _stage_r_bwd_kv(
    Q, K, V, AR, CR, LSE_R, DAL, DY, DCL, DELTA_R, DK, DK_OUT, DV,
    sm_scale,
    sqb, sqt, sqr, sqc, sqh,
    skb, skt, skr, skc, skh,
    svb, svt, svr, svc, svh,
    nh, num_q_tiles, num_kv_tiles, b1, b2, causal_block_tiles,
    FIRST: tl.constexpr, HAS_Y: tl.constexpr, ACCUMULATE: tl.constexpr,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """dK (and dV on the last pass) of key row (f, k), columns l, summed over one pass's (a, j).
    ACCUMULATE: added to DK's fp32 partial; the last pass, differentiated first, writes dK and dV.
    dK goes to DK_OUT (DK, or dK's last write in k's dtype), dV to DV in its dtype."""
    pid_fk = tl.program_id(0)
    pid_l = tl.program_id(1)
    pid_bh = tl.program_id(2)
    k_row = pid_fk % b1
    f = pid_fk // b1
    bb = (pid_bh // nh).to(tl.int64)
    h = pid_bh % nh
    dtype = Q.dtype.element_ty
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_l = offs_l < b2
    k_blk = _rows(K + bb * skb + f * skt + k_row * skr + h * skh, offs_l * skc, mask_l, HEAD_DIM)
    v_blk = _rows(V + bb * svb + f * svt + k_row * svr + h * svh, offs_l * svc, mask_l, HEAD_DIM)
    q_base = Q + bb * sqb + k_row * sqr + h * sqh
    a_start = 0
    if causal_block_tiles > 0:
        a_start = (f // causal_block_tiles) * causal_block_tiles
    acc_dk = tl.zeros([BLOCK_L, HEAD_DIM], tl.float32)
    acc_dv = tl.zeros([BLOCK_L, HEAD_DIM], tl.float32)
    # (a, j) rows of every query tile that sees f, BLOCK_J at a time across tiles (as the forward)
    row_end = num_q_tiles * b2
    for row0 in range(a_start * b2, row_end, BLOCK_J):
        qrows = row0 + tl.arange(0, BLOCK_J)
        mask_j = qrows < row_end
        a = qrows // b2
        offs_j = qrows % b2
        afk_base = ((bb * nh + h) * num_q_tiles + a) * num_kv_tiles + f
        q, row_scale = _stage_r_query(
            Q, AR, CR, q_base, a, offs_j, afk_base, k_row, b1, b2, sqt, sqc, mask_j, sm_scale, FIRST, HEAD_DIM
        )
        rows = (afk_base * b2 + offs_j) * b1 + k_row
        lse_r, d_al, d_y, d_cl, delta_r = _stage_r_grads(LSE_R, DAL, DY, DCL, DELTA_R, rows, mask_j, HAS_Y, HEAD_DIM)
        mask = mask_j[:, None] & mask_l[None, :]
        _, r, ds = _stage_r_grad_logits(
            q, row_scale, k_blk, v_blk, lse_r, d_al, d_y, d_cl, delta_r, mask, HAS_Y, DOT_PRECISION
        )
        r_t = tl.trans(r).to(dtype)
        ds_t = tl.trans(ds * row_scale[:, None]).to(dtype)
        acc_dk += tl.dot(ds_t, q, input_precision=DOT_PRECISION)  # [BL, BJ] @ [BJ, D]
        acc_dk += tl.dot(r_t, d_al, input_precision=DOT_PRECISION)
        if HAS_Y:
            acc_dv += tl.dot(r_t, d_y, input_precision=DOT_PRECISION)
    out = (((bb * num_kv_tiles + f) * b1 + k_row) * b2 + offs_l) * nh + h
    at = out[:, None] * HEAD_DIM + offs_d[None, :]
    if ACCUMULATE:
        acc_dk += tl.load(DK + at, mask=mask_l[:, None], other=0.0)
    tl.store(DK_OUT + at, acc_dk.to(DK_OUT.dtype.element_ty), mask=mask_l[:, None])
    if HAS_Y:  # only the last pass forms Y, so only it has a dV
        tl.store(DV + at, acc_dv.to(DV.dtype.element_ty), mask=mask_l[:, None])


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _stage_r_bwd_q(
    Q, K, V, AR, CR, LSE_R, DAL, DY, DCL, DELTA_R, DQ, DQ_OUT, DAR, DCR,
    sm_scale,
    sqb, sqt, sqr, sqc, sqh,
    skb, skt, skr, skc, skh,
    svb, svt, svr, svc, svh,
    nh, num_q_tiles, num_kv_tiles, b1, b2, causal_block_tiles,
    FIRST: tl.constexpr, HAS_Y: tl.constexpr,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """Stage R's query gradient per (a, k) and a block of columns j: on the first pass dQ[a, k, j]
    (summed over key tiles f, added to DQ's fp32 partial and stored in DQ_OUT's dtype: this is dQ's
    last writer; DQ_OUT may be DQ); on a later pass daR and dcR of every (a, f, k, j)."""
    pid_ak = tl.program_id(0)
    pid_j = tl.program_id(1)
    pid_bh = tl.program_id(2)
    k_row = pid_ak % b1
    a = pid_ak // b1
    bb = (pid_bh // nh).to(tl.int64)
    h = pid_bh % nh
    dtype = Q.dtype.element_ty
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_j = offs_j < b2
    q_base = Q + bb * sqb + k_row * sqr + h * sqh
    f_end = _visible_kv_tiles(a, num_kv_tiles, causal_block_tiles)
    acc_dq = tl.zeros([BLOCK_J, HEAD_DIM], tl.float32)
    if FIRST:  # the first pass's query, row k of tile a, is the same for every key tile: loaded once
        q, row_scale = _stage_r_query(
            Q, AR, CR, q_base, a, offs_j, a, k_row, b1, b2, sqt, sqc, mask_j, sm_scale, True, HEAD_DIM
        )
    for f in range(0, f_end):
        afk_base = ((bb * nh + h) * num_q_tiles + a) * num_kv_tiles + f
        if not FIRST:
            q, row_scale = _stage_r_query(
                Q, AR, CR, q_base, a, offs_j, afk_base, k_row, b1, b2, sqt, sqc, mask_j, sm_scale, False, HEAD_DIM
            )
        rows = (afk_base * b2 + offs_j) * b1 + k_row
        lse_r, d_al, d_y, d_cl, delta_r = _stage_r_grads(LSE_R, DAL, DY, DCL, DELTA_R, rows, mask_j, HAS_Y, HEAD_DIM)
        acc = tl.zeros([BLOCK_J, HEAD_DIM], tl.float32)
        ds_s = tl.zeros([BLOCK_J], tl.float32)  # sum_l dS_R S_R, for the temperature's gradient
        for l0 in range(0, b2, BLOCK_L):
            offs_l = l0 + tl.arange(0, BLOCK_L)
            mask_l = offs_l < b2
            k_blk = _rows(K + bb * skb + f * skt + k_row * skr + h * skh, offs_l * skc, mask_l, HEAD_DIM)
            v_blk = _rows(V + bb * svb + f * svt + k_row * svr + h * svh, offs_l * svc, mask_l, HEAD_DIM)
            mask = mask_j[:, None] & mask_l[None, :]
            s, _, ds = _stage_r_grad_logits(
                q, row_scale, k_blk, v_blk, lse_r, d_al, d_y, d_cl, delta_r, mask, HAS_Y, DOT_PRECISION
            )
            acc += tl.dot(ds.to(dtype), k_blk, input_precision=DOT_PRECISION)  # [BJ, BL] @ [BL, D]
            ds_s += tl.sum(tl.where(mask, ds * s, 0.0), 1)
        if FIRST:
            acc_dq += acc
        else:
            tl.store(DAR + rows[:, None] * HEAD_DIM + offs_d[None, :], (acc * row_scale[:, None]).to(dtype),
                     mask=mask_j[:, None])  # fmt: skip
            # t = min(1 / (cR + eps), t_max): dcR = -t sum_l dS_R S_R where t is not clamped
            ar_rows = (afk_base * b1 + k_row) * b2 + offs_j
            inv = 1.0 / (tl.load(CR + ar_rows, mask=mask_j, other=1.0) + TEMPERATURE_EPS)
            d_cr = tl.where(inv <= TEMPERATURE_MAX, -ds_s * tl.minimum(inv, TEMPERATURE_MAX), 0.0)
            tl.store(DCR + rows, d_cr, mask=mask_j)
    if FIRST:
        tok = ((bb * num_q_tiles + a) * b1 + k_row) * b2 + offs_j
        out = (tok[:, None] * nh + h) * HEAD_DIM + offs_d[None, :]
        d_q = tl.load(DQ + out, mask=mask_j[:, None], other=0.0) + acc_dq * sm_scale
        tl.store(DQ_OUT + out, d_q.to(DQ_OUT.dtype.element_ty), mask=mask_j[:, None])
