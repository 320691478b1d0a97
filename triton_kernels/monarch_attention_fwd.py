"""Triton forward kernels of Monarch attention (docs/math.md), all query tiles in one launch.

Three kernels, each one launch per call:
- ``_stage_r_fwd``: per key row (f, k), over blocks of (a, j) rows taken across every query tile
  that sees it: softmax over the key row's columns l, giving aL = sum_l R K, Y = sum_l R V and
  cL = sum_l R log R (with an entropy accumulator).
  The first pass takes the query of row k (L = identity); later passes take aR and the temperature.
  Y is skipped on passes that only feed the aR update; the backward also takes lse_R.
- ``_stage_l_fwd``: per (a, j) and a block of query rows i: softmax over every visible (f, k), taken
  as one flat sequence of key rows, giving Z and the log-normaliser lse_L.
- ``_stage_l_update``: per (a, j) and a block of visible key rows (f, k), flat as in stage L: the
  num_iters > 1 update aR = sum_i L Q, cR = sum_i L, from the stage-L normaliser of the previous kernel.

Scaling: the dot products run on the raw inputs and the softmax scale s multiplies the fp32
logits, so sqrt(s) is never rounded. aL and aR are stored unscaled (sum of raw K or raw Q):
S_L = s * <Q, aL> - cL and S_R = s * t * <aR, K>.

Tile-order tensors: q ``[B, A, b1, b2, nh, d]``, k and v ``[B, F, b1, b2, nh, d]`` (any strides,
last dim contiguous). Scratch, heads first: aL, Y ``[B, nh, A, F, b2(j), b1(k), d]``;
cL ``[B, nh, A, F, b2, b1]``; aR ``[B, nh, A, F, b1(k), b2(j), d]``; cR ``[B, nh, A, F, b1, b2]``.
b1, b2, A and F are runtime values: a new KV length does not recompile.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Tile counts and the causal block are runtime values: a new KV-cache length or batch of query
# frames must not compile a new kernel (Triton would otherwise specialise on ==1 and %16).
RUNTIME_ARGS = ["num_q_tiles", "num_kv_tiles", "causal_block_tiles"]
TEMPERATURE_EPS = tl.constexpr(1e-6)
TEMPERATURE_MAX = tl.constexpr(1e4)


@triton.jit
def _rows(base, row_offsets, mask, HEAD_DIM: tl.constexpr):
    """[R, HEAD_DIM] block whose row r starts at ``base + row_offsets[r]``; masked rows read 0."""
    return tl.load(base + row_offsets[:, None] + tl.arange(0, HEAD_DIM)[None, :], mask=mask[:, None], other=0.0)


@triton.jit
def _flat_key_rows(bha, keys, num_kv_tiles, b1, b2, j):
    """Scratch rows ``[b, h, a, f, j, k]`` of flat key indices ``keys = f * b1 + k`` for column j of
    the query tile ``bha = (b * nh + h) * A + a``: stage L's key sequence across key tiles."""
    return ((bha * num_kv_tiles + keys // b1) * b2 + j) * b1 + keys % b1


@triton.jit
def _visible_kv_tiles(a, num_kv_tiles, causal_block_tiles):
    """Key tiles query tile a sees: every one, or those up to the end of a's causal block."""
    f_end = num_kv_tiles
    if causal_block_tiles > 0:
        f_end = tl.minimum(num_kv_tiles, (a // causal_block_tiles + 1) * causal_block_tiles)
    return f_end


@triton.jit
def _key_block(AL, CL, bha, keys, n_keys, num_kv_tiles, b1, b2, j, HEAD_DIM: tl.constexpr):
    """Scratch rows, mask, aL and cL of the flat key rows ``keys`` (of ``n_keys`` visible) of column j
    of query tile ``bha``: one step of a stage-L kernel."""
    mask_k = keys < n_keys
    rows = _flat_key_rows(bha, keys, num_kv_tiles, b1, b2, j)
    a_l = _rows(AL, rows * HEAD_DIM, mask_k, HEAD_DIM)
    c_l = tl.load(CL + rows, mask=mask_k, other=0.0)
    return rows, mask_k, a_l, c_l


@triton.jit
def _query_column(Q, sqb, sqt, sqr, sqc, sqh, nh, num_q_tiles, b1, b2,
                  BLOCK_I: tl.constexpr, HEAD_DIM: tl.constexpr):  # fmt: skip
    """A stage-L program's column j of query tile a and its block of rows i (grid: (a, j), i block,
    (b, h)) -> a, j, bb, h, bha (the scratch's query-tile index), offs_i, mask_i, the query rows and
    their token indices in the ``[B, A, b1, b2]`` outputs."""
    pid_aj = tl.program_id(0)
    pid_bh = tl.program_id(2)
    j = pid_aj % b2
    a = pid_aj // b2
    bb = (pid_bh // nh).to(tl.int64)  # int64: scratch offsets pass 2**31 at Wan 720p sizes
    h = pid_bh % nh
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = offs_i < b1
    q = _rows(Q + bb * sqb + a * sqt + j * sqc + h * sqh, offs_i * sqr, mask_i, HEAD_DIM)
    tok = ((bb * num_q_tiles + a) * b1 + offs_i) * b2 + j
    return a, j, bb, h, (bb * nh + h) * num_q_tiles + a, offs_i, mask_i, q, tok


@triton.jit
def _stage_r_query(Q, AR, CR, q_base, a, j, afk_base, k_row, b1, b2, sqt, sqc, mask, sm_scale,
                   FIRST: tl.constexpr, HEAD_DIM: tl.constexpr):  # fmt: skip
    """Stage R's query rows (a, j) for key row (f, k) and their logit scale.

    First pass: the query of row k (``q_base`` points at row k of batch and head), scale s.
    Later passes: aR rows ``[b, h, a, f, k, j]`` and s * t with the temperature t from cR.
    """
    if FIRST:
        q = _rows(q_base, a * sqt + j * sqc, mask, HEAD_DIM)
        row_scale = tl.full(mask.shape, 1.0, tl.float32) * sm_scale
    else:
        ar_rows = (afk_base * b1 + k_row) * b2 + j
        q = _rows(AR, ar_rows * HEAD_DIM, mask, HEAD_DIM)
        c_r = tl.load(CR + ar_rows, mask=mask, other=1.0)
        row_scale = sm_scale * tl.minimum(1.0 / (c_r + TEMPERATURE_EPS), TEMPERATURE_MAX)
    return q, row_scale


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _stage_r_fwd(
    Q, K, V, AR, CR, AL, Y, CL, LSE_R,
    sm_scale,
    sqb, sqt, sqr, sqc, sqh,
    skb, skt, skr, skc, skh,
    svb, svt, svr, svc, svh,
    nh, num_q_tiles, num_kv_tiles, b1, b2, causal_block_tiles,
    FIRST: tl.constexpr, WRITE_Y: tl.constexpr, WRITE_LSE: tl.constexpr, ONE_L_BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """One key row (f, k) against every query tile that sees it (docs/attention-kernels.md, stage R).

    The rows of a block are (a, j) pairs taken across query tiles, so one block of BLOCK_M rows
    shares the key row's K/V and the matrix products are BLOCK_M tall whatever b2 is.
    ONE_L_BLOCK (b2 <= BLOCK_L): the whole key row is one block, so the softmax is exact without
    rescaling and aL and Y are formed one after the other (one accumulator live at a time).
    """
    pid_fk = tl.program_id(0)
    pid_bh = tl.program_id(2)
    k_row = pid_fk % b1
    f = pid_fk // b1
    bb = (pid_bh // nh).to(tl.int64)  # int64: scratch offsets pass 2**31 at Wan 720p sizes
    h = pid_bh % nh
    dtype = Q.dtype.element_ty
    offs_d = tl.arange(0, HEAD_DIM)
    # query tiles that see key tile f: all, or from the first tile of f's causal block on
    a_first = 0
    if causal_block_tiles > 0:
        a_first = (f // causal_block_tiles) * causal_block_tiles
    row_end = num_q_tiles * b2
    k_base = K + bb * skb + f * skt + k_row * skr + h * skh
    v_base = V + bb * svb + f * svt + k_row * svr + h * svh
    bh_base = (bb * nh + h) * num_q_tiles
    q_base = Q + bb * sqb + k_row * sqr + h * sqh
    if ONE_L_BLOCK:
        # the key row's K and V, loaded once for every row block (a load in the loop is not hoisted)
        offs_l = tl.arange(0, BLOCK_L)
        mask_l = offs_l < b2
        k_blk = _rows(k_base, offs_l * skc, mask_l, HEAD_DIM)
        if WRITE_Y:
            v_blk = _rows(v_base, offs_l * svc, mask_l, HEAD_DIM)
    for row0 in range(a_first * b2 + tl.program_id(1) * BLOCK_M, row_end, BLOCK_M * tl.num_programs(1)):
        rows = row0 + tl.arange(0, BLOCK_M)
        mask_m = rows < row_end
        a = rows // b2
        j = rows % b2
        afk_base = (bh_base + a) * num_kv_tiles + f  # [BM] scratch row block of (b, h, a, f)
        a_r, row_scale = _stage_r_query(
            Q, AR, CR, q_base, a, j, afk_base, k_row, b1, b2, sqt, sqc, mask_m, sm_scale, FIRST, HEAD_DIM
        )
        out_rows = (afk_base * b2 + j) * b1 + k_row  # [b, h, a, f, j, k]
        if ONE_L_BLOCK:
            s = tl.dot(a_r, tl.trans(k_blk), input_precision=DOT_PRECISION) * row_scale[:, None]
            s = tl.where(mask_l[None, :], s, float("-inf"))
            m_i = tl.max(s, 1)
            p = tl.exp(s - m_i[:, None])
            l_i = tl.sum(p, 1)
            ps_i = tl.sum(p * tl.where(mask_l[None, :], s, 0.0), 1)
            r = (p / l_i[:, None]).to(dtype)
            acc = tl.dot(r, k_blk, input_precision=DOT_PRECISION)
            tl.store(AL + out_rows[:, None] * HEAD_DIM + offs_d[None, :], acc.to(dtype), mask=mask_m[:, None])
            if WRITE_Y:
                acc = tl.dot(r, v_blk, input_precision=DOT_PRECISION)
                tl.store(Y + out_rows[:, None] * HEAD_DIM + offs_d[None, :], acc.to(dtype), mask=mask_m[:, None])
        else:
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            ps_i = tl.zeros([BLOCK_M], tl.float32)  # sum_l p * s, for the entropy
            acc_al = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
            acc_y = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
            for l0 in range(0, b2, BLOCK_L):
                offs_l = l0 + tl.arange(0, BLOCK_L)
                mask_l = offs_l < b2
                k_blk = _rows(k_base, offs_l * skc, mask_l, HEAD_DIM)
                s = tl.dot(a_r, tl.trans(k_blk), input_precision=DOT_PRECISION) * row_scale[:, None]
                s = tl.where(mask_l[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                ps_i = ps_i * alpha + tl.sum(p * tl.where(mask_l[None, :], s, 0.0), 1)
                acc_al = acc_al * alpha[:, None] + tl.dot(p.to(dtype), k_blk, input_precision=DOT_PRECISION)
                if WRITE_Y:
                    v_blk = _rows(v_base, offs_l * svc, mask_l, HEAD_DIM)
                    acc_y = acc_y * alpha[:, None] + tl.dot(p.to(dtype), v_blk, input_precision=DOT_PRECISION)
                m_i = m_new
            al_out = (acc_al / l_i[:, None]).to(dtype)
            tl.store(AL + out_rows[:, None] * HEAD_DIM + offs_d[None, :], al_out, mask=mask_m[:, None])
            if WRITE_Y:
                y_out = (acc_y / l_i[:, None]).to(dtype)
                tl.store(Y + out_rows[:, None] * HEAD_DIM + offs_d[None, :], y_out, mask=mask_m[:, None])
        lse = m_i + tl.log(l_i)
        tl.store(CL + out_rows, ps_i / l_i - lse, mask=mask_m)
        if WRITE_LSE:
            tl.store(LSE_R + out_rows, lse, mask=mask_m)


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _stage_l_fwd(
    Q, AL, Y, CL, Z, LSE,
    sm_scale,
    sqb, sqt, sqr, sqc, sqh,
    nh, num_q_tiles, num_kv_tiles, b1, b2, causal_block_tiles,
    WRITE_Z: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    a, j, bb, h, bha, offs_i, mask_i, q, tok = _query_column(
        Q, sqb, sqt, sqr, sqc, sqh, nh, num_q_tiles, b1, b2, BLOCK_I, HEAD_DIM
    )
    dtype = Q.dtype.element_ty
    offs_d = tl.arange(0, HEAD_DIM)
    m_i = tl.full([BLOCK_I], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_I], tl.float32)
    acc = tl.zeros([BLOCK_I, HEAD_DIM], tl.float32)
    # the visible key rows (f, k) as one flat sequence, so a block spans key tiles (no per-tile padding)
    n_keys = _visible_kv_tiles(a, num_kv_tiles, causal_block_tiles) * b1
    for key0 in range(0, n_keys, BLOCK_K):
        rows, mask_k, a_l, c_l = _key_block(
            AL, CL, bha, key0 + tl.arange(0, BLOCK_K), n_keys, num_kv_tiles, b1, b2, j, HEAD_DIM
        )
        s = tl.dot(q, tl.trans(a_l), input_precision=DOT_PRECISION) * sm_scale - c_l[None, :]  # [BI, D] @ [D, BK]
        s = tl.where(mask_k[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if WRITE_Z:
            y = _rows(Y, rows * HEAD_DIM, mask_k, HEAD_DIM)
            acc = acc * alpha[:, None] + tl.dot(p.to(dtype), y, input_precision=DOT_PRECISION)  # [BI, BK] @ [BK, D]
        m_i = m_new
    # LSE and Z are contiguous [B, A, b1, b2, nh] and [B, A, b1, b2, nh, D]
    tl.store(LSE + tok * nh + h, m_i + tl.log(l_i), mask=mask_i)
    if WRITE_Z:
        tl.store(
            Z + (tok[:, None] * nh + h) * HEAD_DIM + offs_d[None, :],
            (acc / l_i[:, None]).to(dtype),
            mask=mask_i[:, None],
        )


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _stage_l_update(
    Q, AL, CL, LSE, AR, CR,
    sm_scale,
    sqb, sqt, sqr, sqc, sqh,
    nh, num_q_tiles, num_kv_tiles, b1, b2, causal_block_tiles,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """aR = sum_i L Q and cR = sum_i L for column j of query tile a and a block of its visible key
    rows, flat across key tiles as in _stage_l_fwd: products BLOCK_K key rows tall."""
    pid_aj = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_bh = tl.program_id(2)
    j = pid_aj % b2
    a = pid_aj // b2
    bb = (pid_bh // nh).to(tl.int64)  # int64: scratch offsets pass 2**31 at Wan 720p sizes
    h = pid_bh % nh
    n_keys = _visible_kv_tiles(a, num_kv_tiles, causal_block_tiles) * b1
    if pid_k * BLOCK_K >= n_keys:  # key rows of tiles masked for query tile a
        return
    dtype = Q.dtype.element_ty
    keys = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, HEAD_DIM)
    bha = (bb * nh + h) * num_q_tiles + a
    rows, mask_k, a_l, c_l = _key_block(AL, CL, bha, keys, n_keys, num_kv_tiles, b1, b2, j, HEAD_DIM)
    acc = tl.zeros([BLOCK_K, HEAD_DIM], tl.float32)
    c_r = tl.zeros([BLOCK_K], tl.float32)
    for i0 in range(0, b1, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        mask_i = offs_i < b1
        q = _rows(Q + bb * sqb + a * sqt + j * sqc + h * sqh, offs_i * sqr, mask_i, HEAD_DIM)
        tok = ((bb * num_q_tiles + a) * b1 + offs_i) * b2 + j
        lse = tl.load(LSE + tok * nh + h, mask=mask_i, other=float("inf"))
        s = tl.dot(q, tl.trans(a_l), input_precision=DOT_PRECISION) * sm_scale - c_l[None, :]  # [BI, BK]
        p = tl.exp(s - lse[:, None])  # L[a, i, j, f, k], 0 on padded i
        p = tl.where(mask_k[None, :], p, 0.0)
        acc += tl.dot(tl.trans(p).to(dtype), q, input_precision=DOT_PRECISION)  # [BK, BI] @ [BI, D]
        c_r += tl.sum(p, 0)
    ar_rows = ((bha * num_kv_tiles + keys // b1) * b1 + keys % b1) * b2 + j  # [b, h, a, f, k, j]
    tl.store(AR + ar_rows[:, None] * HEAD_DIM + offs_d[None, :], acc.to(dtype), mask=mask_k[:, None])
    tl.store(CR + ar_rows, c_r, mask=mask_k)
