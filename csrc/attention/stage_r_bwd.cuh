// Stage R's backward on warpgroup MMA (docs/attention-kernels.md, decomposition (g); the math in docs/math.md,
// Backward, and the Triton kernels these replace, _stage_r_bwd_kv and _stage_r_bwd_q in
// triton_kernels/monarch_attention_bwd.py). Two kernels, as the Triton ones: the key-row kernel owns dK and
// dV, the query-row kernel dQ, so each sums its own gradient with no reduction across CTAs (deterministic).
//
// Key-row kernel: for one key row (b, h, f, k), over every query row (a, j) of every query tile that sees
// key tile f,
//
//     dS_R = R (daL K^T + dY V^T + dcL (1 + ln R) - D_R),
//     dK[f, k] (+)= sum_{a, j} (s t) dS_R^T Q' + R^T daL,   dV[f, k] = sum_{a, j} R^T dY
//
// with R recomputed from the query Q' (Q[a, k, j] on the first pass, aR[a, f, k, j] with temperature t on
// later ones) and lse_R. daL, dY, dcL and D_R come from the stage-L backward.
//
// One CTA of one warpgroup per key row (grid x), two CTAs per SM, walking (f)'s 64-row blocks of query
// rows across query tiles (stage_r.cuh). Per block, with the block's Q', daL and dY rows and their row
// statistics in shared memory (all copied with cp.async, so the block waits once):
//   1. S = Q' K^T and dR = daL K^T + dY V^T: wgmma SS m64n{kL}k16 (K = head_dim), a row per quad;
//   2. R and dS (scaled by the row's s t) in registers, stored as 16-bit [j][l] buffers (stmatrix);
//   3. dK^T += Q'^T dS + daL^T R and dV^T += dY^T R: wgmma SS with both operands MN-major (M = head_dim in
//      parts of 64, N = kL, K = the block's 64 rows), fp32 accumulators held across every block.
// One buffer per operand (but R and dS in a dK-only launch), two CTAs per SM (an L2 prefetch of the next block's daL and dY, and a CTA of two
// warpgroups over three stages, were measured slower: docs/attention-kernels.md (g), (g2)). Where kL > 64 at
// d = 128 the two accumulators do not fit one thread's registers, so dK and dV are formed by two launches
// (StageRBwdParts, docs/attention-kernels.md (g3)), the dK one keeping dS and R in one buffer in turn.
// dK and dV are stored once at the end (dK added to its fp32 partial on earlier passes: `accumulate`;
// in the dtype on dK's last write, `dk_out`, and always for dV, whose only writer is the last pass). Taking them
// transposed pads only the key columns to 16 (kL) and puts head_dim on M. Columns l >= b2 need no mask
// here: whatever they hold (even inf in a 16-bit R or dS) reaches only dK^T's and dV^T's column l, which
// is not stored. Query rows past the last tile are zero in shared memory, R = dS = 0. (The query-row
// kernel sums over l, so it masks those columns.)
//
// Query-row kernel (the first pass only: later passes' daR and dcR stay with the Triton kernel): for 64
// query rows (a, j) of one key-row index k, flat across query tiles as the key-row kernel walks them, over
// every key tile f the last of them sees,
//
//     dQ[a, k, j] (+)= s sum_f sum_l dS_R K[f, k, l]
//
// per key tile: K and V of (f, k) (shared by every query tile), the rows' daL and dY and statistics into
// shared memory (zero for a row whose tile does not see f; the next tile's daL and dY prefetched into L2),
// S and dR as in the key-row kernel (SS), dS as 16-bit A fragments in registers (as stage_r.cuh's R), and
// dQ += dS K (wgmma RS m64n64k16, K = kL), accumulated in fp32 over the key tiles; the first pass is dQ's
// last writer, so it stores dQ (read-added to the fp32 partial of the other kernels) in the dtype.
// Limits (kernel_limits.h, checked by the launchers): head_dim 64 or 128, b2 <= kStageRBwdMaxB2, sm_90a.
#pragma once

#include "stage_r.cuh"

namespace monarchrt::attention {

// What both kernels read: the pass's query, K and V (StageRInputs), and the stage-L backward's gradients.
struct StageRGradInputs : StageRInputs {
  const float* lse_r;    // [B, nh, A, F, b2, b1]
  const void* da_l;      // [B, nh, A, F, b2, b1, d] contiguous
  const void* dy;        // like da_l; null on a pass that forms no Y (then no dV)
  const float* dc_l;     // like lse_r
  const float* delta_r;  // like lse_r
};
struct StageRBwdParams : StageRGradInputs {
  float* dk;       // [B, F, b1, b2, nh, d] contiguous fp32: dK's partial over passes (null with dk_out and
                   // no accumulate)
  void* dk_out;    // like dk in the inputs' dtype: dK's last write (null: written to dk)
  void* dv;        // like dk_out; null with dy
  int accumulate;  // dK adds dk's partial (an earlier pass; the last pass, differentiated first, writes)
};
struct StageRBwdQParams : StageRGradInputs {  // the first pass: a_r and c_r null
  const float* dq;  // [B, A, b1, b2, nh, d] contiguous fp32: the other kernels' partial sums
  void* dq_out;     // like dq, in the inputs' dtype: dq + this kernel's sum
};

// What one key-row launch forms: dK and dV together, or each in a launch of its own where the two
// accumulators and the R and dS buffers do not fit one CTA (kL > 64 at d = 128: docs/attention-kernels.md
// (g3); the launcher then runs the dK launch, and the dV one where there is a dY).
enum StageRBwdParts : int { kPartDk = 1, kPartDv = 2, kPartBoth = 3 };
constexpr bool stage_r_bwd_splits(int kD, int kL) { return kD == 128 && kL > 64; }

// Shared memory of one key-row CTA (byte offsets from a 1 KB aligned base): K (and V, for dR) rows, the
// block's Q', daL (for dK) and dY rows and its four row statistics ([lse_R, dcL, D_R, cR][row], copied with
// the rows so that no load of the loop waits on its own), and R and dS as [j][l] buffers of 64-column blocks
// (store_accumulator_rows). A dK-only launch keeps dS and R in one buffer, one after the other. Swizzled
// row buffers.
template <int kD, int kL, int kParts> struct StageRBwdSmem {
  static constexpr bool kDk = kParts & kPartDk;
  static constexpr int kKV = kL * kD * 2;
  static constexpr int kBlock = kStageRBlockM * kD * 2;
  static constexpr int kProb = kStageRBlockM * (kL <= 64 ? 64 : 128) * 2;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKV;
  static constexpr int kOffQ = kOffV + (kDk ? kKV : 0);
  static constexpr int kOffDaL = kOffQ + kBlock;
  static constexpr int kOffDy = kOffDaL + (kDk ? kBlock : 0);
  static constexpr int kOffStats = kOffDy + kBlock;
  static constexpr int kOffR = kOffStats + 4 * kStageRBlockM * 4;
  static constexpr int kOffDs = kOffR + (kParts == kPartBoth ? kProb : 0);
  static constexpr int kBytes = kOffDs + kProb + 1024;  // + alignment of the base to 1 KB
  static_assert(kL <= 128, "R and dS rows are two 64-column blocks at most");
  static_assert(kKV % 1024 == 0 && kBlock % 1024 == 0, "swizzled buffers on 1 KB boundaries");
};

#ifdef MONARCHRT_WGMMA
// Step 1 of both kernels: S = Q' K^T and, with kGrad, dR = daL K^T (+ dY V^T) for one 64-row block, every
// operand K-major in shared memory (K = head_dim; q, dal, dy: 64-row buffers, k, v: kL-row ones).
template <typename T, int kD, int kL, bool kGrad = true>
__device__ __forceinline__ void block_logits(uint64_t q, uint64_t dal, uint64_t dy, uint64_t k, uint64_t v,
                                             bool has_y, float (&s)[kL / 2], float (&dr)[kL / 2]) {
  auto logits = [](uint64_t a, uint64_t b, float* d, bool acc) {
    gmma::mma_over_features<T, kD, kL, kStageRBlockM>(a, b, d, acc);
  };
  gmma::fence_operands<kL / 2>(s);
  if constexpr (kGrad) gmma::fence_operands<kL / 2>(dr);
  cute::warpgroup_arrive();
  logits(q, k, s, false);
  if constexpr (kGrad) {
    logits(dal, k, dr, false);
    if (has_y) logits(dy, v, dr, true);
  }
  cute::warpgroup_commit_batch();
  cute::warpgroup_wait<0>();
  gmma::fence_operands<kL / 2>(s);
  if constexpr (kGrad) gmma::fence_operands<kL / 2>(dr);
}
// One batch of warpgroup MMAs (`issue`) into the accumulators `acc...` (each [parts][registers]), and its wait.
template <int kP, int kN> __device__ __forceinline__ void fence_parts(float (&acc)[kP][kN]) {
#pragma unroll
  for (int i = 0; i < kP; ++i) gmma::fence_operands<kN>(acc[i]);
}
template <class Issue, class... Acc> __device__ __forceinline__ void mma_batch(Issue&& issue, Acc&... acc) {
  (fence_parts(acc), ...);
  cute::warpgroup_arrive();
  issue();
  cute::warpgroup_commit_batch();
  cute::warpgroup_wait<0>();
  (fence_parts(acc), ...);
}
#endif

// dS_R of one element: R (dR + dcL (1 + ln R) - D_R), with R = 2^x (ln R = x ln 2).
__device__ __forceinline__ float grad_logit(float r, float x, float dr, float dcl, float delta) {
  return r * (dr + fmaf(dcl, fmaf(x, kLn2, 1.f), -delta));
}

template <typename T, int kD, int kL, int kParts>
__global__ void __launch_bounds__(kStageRThreads, 2) stage_r_bwd_kv_kernel(const StageRBwdParams p) {
#ifdef MONARCHRT_WGMMA
  using Smem = StageRBwdSmem<kD, kL, kParts>;
  constexpr bool kDk = kParts & kPartDk, kDv = kParts & kPartDv;
  constexpr int kDh = kD / 64;  // 64-feature parts of dK^T and dV^T: M of one wgmma each
  constexpr int kAcc = kL / 2;  // fp32 registers of one m64n{kL} accumulator
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* const smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int b1 = p.b1, b2 = p.b2, n_f = p.n_kv_tiles;
  const int f = blockIdx.x / b1, krow = blockIdx.x % b1;
  const int bh = blockIdx.z, bb = bh / p.nh, h = bh % p.nh;
  const int a_first = first_q_tile_seeing(f, p.causal_block_tiles);
  const float inv_b2 = 1.f / float(b2);
  const bool first = p.a_r == nullptr, has_y = p.dy != nullptr;  // a dV-only launch always has dY
  const int64_t afk0 = int64_t(bh) * p.n_q_tiles * n_f + f;  // scratch index (b, h, a, f) = afk0 + a * F
  const T* const q_row = static_cast<const T*>(p.q) + bb * p.sq[0] + krow * p.sq[2] + h * p.sq[4];
  const T* const a_r = static_cast<const T*>(p.a_r);
  const T* const da_l = static_cast<const T*>(p.da_l);
  const T* const dy = static_cast<const T*>(p.dy);
  // per-thread row offsets inside a block, split once (as stage_r.cuh): the rows this thread copies, the
  // row whose statistic it copies (thread t: row t % 64, lse_R, dcL, D_R for t < 64, cR after) and the two
  // rows of its accumulator fragments (16 warp + g, + 8)
  constexpr int kChunks = kD / 8, kLdStep = kStageRThreads / kChunks;
  const int ch = tid % kChunks, ld_row = tid / kChunks;
  const RowCursor ld0 = split_row(ld_row, b2, inv_b2), ld_step = split_row(kLdStep, b2, inv_b2);
  const RowCursor stat0 = split_row(tid % kStageRBlockM, b2, inv_b2);
  const RowCursor frag0 = split_row(16 * warp + g, b2, inv_b2), eight = split_row(8, b2, inv_b2);
  const RowCursor block_step = split_row(kStageRBlockM, b2, inv_b2);
  const uint32_t ld_dst = gmma::swizzled<kStageRBlockM>(ld_row, ch * 8);  // + i * kLdStep * 128
  static_assert(kLdStep % 8 == 0, "the copied rows keep their swizzle phase");
  auto query = [&](RowCursor c) {
    return first ? q_row + c.a * p.sq[1] + c.j * p.sq[3]
                 : a_r + (((afk0 + int64_t(c.a) * n_f) * b1 + krow) * b2 + c.j) * kD;
  };
  // scratch row (b, h, a, f, j, k) of query row (a, j)
  const int64_t out0 = afk0 * b2 * b1 + krow, out_per_a = int64_t(n_f) * b2 * b1;
  auto scratch_row = [&](RowCursor c) { return out0 + c.a * out_per_a + c.j * b1; };
  // the block's Q', daL and dY rows and row statistics; rows past the last query tile zero (they meet
  // R = dS = 0, and 0 * garbage may be NaN)
  auto load_block = [&](RowCursor blk) {
    RowCursor c = add_rows(blk, ld0, b2);
#pragma unroll
    for (int i = 0; i < kStageRBlockM / kLdStep; ++i, c = add_rows(c, ld_step, b2)) {
      const uint32_t off = ld_dst + i * kLdStep * 128;
      if (c.a < p.n_q_tiles) {
        const int64_t row = scratch_row(c) * kD + ch * 8;
        cp16(smem + Smem::kOffQ + off, query(c) + ch * 8);
        if constexpr (kDk) cp16(smem + Smem::kOffDaL + off, da_l + row);
        if (has_y) cp16(smem + Smem::kOffDy + off, dy + row);
      } else {
        *reinterpret_cast<uint4*>(smem + Smem::kOffQ + off) = make_uint4(0, 0, 0, 0);
        if constexpr (kDk) *reinterpret_cast<uint4*>(smem + Smem::kOffDaL + off) = make_uint4(0, 0, 0, 0);
        if (has_y) *reinterpret_cast<uint4*>(smem + Smem::kOffDy + off) = make_uint4(0, 0, 0, 0);
      }
    }
    const RowCursor c_stat = add_rows(blk, stat0, b2);
    float* const stats = reinterpret_cast<float*>(smem + Smem::kOffStats) + tid % kStageRBlockM;
    const bool valid = c_stat.a < p.n_q_tiles;
    if (tid < kStageRBlockM) {
      const int64_t row = scratch_row(c_stat);
      if (valid) {
        cp4(stats, p.lse_r + row);
        if constexpr (kDk) {
          cp4(stats + kStageRBlockM, p.dc_l + row);
          cp4(stats + 2 * kStageRBlockM, p.delta_r + row);
        }
      } else {
        stats[0] = stats[kStageRBlockM] = stats[2 * kStageRBlockM] = 0.f;
      }
    } else if (!first && valid) {
      cp4(stats + 3 * kStageRBlockM, p.c_r + ((afk0 + int64_t(c_stat.a) * n_f) * b1 + krow) * b2 + c_stat.j);
    }
  };
  // dK^T and dV^T parts (a one-element array stands in for the one a launch does not form)
  float dk[kDk ? kDh : 1][kAcc], dv[kDv ? kDh : 1][kAcc];
#pragma unroll
  for (int dh = 0; dh < (kDk ? kDh : 1); ++dh)
#pragma unroll
    for (int i = 0; i < kAcc; ++i) dk[dh][i] = 0.f;
#pragma unroll
  for (int dh = 0; dh < (kDv ? kDh : 1); ++dh)
#pragma unroll
    for (int i = 0; i < kAcc; ++i) dv[dh][i] = 0.f;
  const uint64_t k_desc = gmma::desc(smem_addr(smem + Smem::kOffK), 1);
  const uint64_t v_desc = gmma::desc(smem_addr(smem + Smem::kOffV), 1);
  load_key_row<T, kD, kL>(smem + Smem::kOffK, kDk ? smem + Smem::kOffV : nullptr, p, bb, f, krow, h);
  const int n_blocks = (p.n_q_tiles * b2 - a_first * b2 + kStageRBlockM - 1) / kStageRBlockM;
  RowCursor blk = split_row(a_first * b2, b2, inv_b2);
  for (int n = 0; n < n_blocks; ++n, blk = add_rows(blk, block_step, b2)) {
    load_block(blk);
    cute::cp_async_fence();
    cute::cp_async_wait<0>();
    gmma::fence_to_async_proxy();
    __syncthreads();  // the block's rows and statistics are in shared memory
    // the statistics of this thread's two rows, with the log2-domain scale s t log2(e)
    float scale[2], lse2[2], dcl[2] = {0.f, 0.f}, delta[2] = {0.f, 0.f};
    bool valid[2];
    {
      const float* stats = reinterpret_cast<const float*>(smem + Smem::kOffStats);
      RowCursor c = add_rows(blk, frag0, b2);
#pragma unroll
      for (int r = 0; r < 2; ++r, c = add_rows(c, eight, b2)) {
        const int row = 16 * warp + g + 8 * r;
        valid[r] = c.a < p.n_q_tiles;
        lse2[r] = stats[row] * kLog2e;
        if constexpr (kDk) {  // (a dV-only launch copies no dcL, D_R)
          dcl[r] = stats[kStageRBlockM + row];
          delta[r] = stats[2 * kStageRBlockM + row];
        }
        scale[r] = p.scale_log2;
        if (!first && valid[r])
          scale[r] *= fminf(1.f / (stats[3 * kStageRBlockM + row] + kStageRTemperatureEps), kStageRTemperatureMax);
      }
    }

    // --- 1. S = Q' K^T and (for dK) dR = daL K^T + dY V^T for the block's 64 rows
    float s[kAcc], dr[kAcc];
    block_logits<T, kD, kL, kDk>(gmma::desc(smem_addr(smem + Smem::kOffQ), 1),
                                 gmma::desc(smem_addr(smem + Smem::kOffDaL), 1),
                                 gmma::desc(smem_addr(smem + Smem::kOffDy), 1), k_desc, v_desc, has_y, s, dr);

    // --- 2. R = exp2(x), x = s t log2(e) S - lse_R log2(e) (ln R = x ln 2), and dS times the row's s t
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      const int r = (i & 3) >> 1;
      const float x = fmaf(s[i], scale[r], -lse2[r]);
      const float pr = valid[r] ? fast_exp2(x) : 0.f;
      if constexpr (kDk) dr[i] = grad_logit(pr, x, dr[i], dcl[r], delta[r]) * (scale[r] * kLn2);
      s[i] = pr;
    }

    // --- 3. dK^T += Q'^T dS + daL^T R, dV^T += dY^T R: K = the block's rows, 16 a step
    static_assert(kStageRBlockM == 64, "K of the products is one block's 64 rows");
    const uint64_t q_mn = gmma::desc(smem_addr(smem + Smem::kOffQ), 0);
    const uint64_t dal_mn = gmma::desc(smem_addr(smem + Smem::kOffDaL), 0);
    const uint64_t dy_mn = gmma::desc(smem_addr(smem + Smem::kOffDy), 0);
    const uint64_t r_mn = gmma::desc(smem_addr(smem + Smem::kOffR), 0);
    const uint64_t ds_mn = gmma::desc(smem_addr(smem + Smem::kOffDs), 0);
    auto grads = [](uint64_t a, uint64_t b, float* d, int dh) { gmma::mma_over_rows<T, kL>(a, b, d, dh); };
    // a buffer of every warp's rows, then visible to the products
    auto stage_rows = [&](const float* acc, int off) {
      gmma::store_accumulator_rows<T, kL>(acc, smem + off);
      gmma::fence_to_async_proxy();
      __syncthreads();
    };
    if constexpr (kParts == kPartBoth) {
      gmma::store_accumulator_rows<T, kL>(s, smem + Smem::kOffR);  // [j][l] buffers
      stage_rows(dr, Smem::kOffDs);
      mma_batch([&] {
#pragma unroll
        for (int dh = 0; dh < kDh; ++dh) {
          grads(q_mn, ds_mn, dk[dh], dh);
          grads(dal_mn, r_mn, dk[dh], dh);
          if (has_y) grads(dy_mn, r_mn, dv[dh], dh);
        }
      }, dk, dv);
    } else if constexpr (kDk) {  // dS, then R in the same buffer
      stage_rows(dr, Smem::kOffDs);
      mma_batch([&] {
#pragma unroll
        for (int dh = 0; dh < kDh; ++dh) grads(q_mn, ds_mn, dk[dh], dh);
      }, dk);
      __syncthreads();  // every warp's product has read dS
      stage_rows(s, Smem::kOffR);
      mma_batch([&] {
#pragma unroll
        for (int dh = 0; dh < kDh; ++dh) grads(dal_mn, r_mn, dk[dh], dh);
      }, dk);
    } else {
      stage_rows(s, Smem::kOffR);
      mma_batch([&] {
#pragma unroll
        for (int dh = 0; dh < kDh; ++dh) grads(dy_mn, r_mn, dv[dh], dh);
      }, dv);
    }
    __syncthreads();  // every warpgroup read of this block's buffers is done: the next block may overwrite them
  }

  cute::cp_async_wait<0>();  // where no query tile sees f the loop never ran: K and V's copies end here
  // dK^T and dV^T: element 4n + e of part dh is feature 64 dh + 16 warp + g + 8 (e / 2), column
  // l = 8n + 2 tig + e % 2; stored at [b, f, k, l, h, feature] for l < b2
  const int64_t kv_row0 = ((int64_t(bb) * n_f + f) * b1 + krow) * b2;
#pragma unroll
  for (int dh = 0; dh < kDh; ++dh)
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      const int l = 8 * (i >> 2) + 2 * tig + (i & 1);
      if (l >= b2) continue;
      const int64_t at = ((kv_row0 + l) * p.nh + h) * kD + 64 * dh + 16 * warp + g + 8 * ((i & 3) >> 1);
      if constexpr (kDk) {
        const float dk_at = p.accumulate ? p.dk[at] + dk[dh][i] : dk[dh][i];
        if (p.dk_out)
          static_cast<T*>(p.dk_out)[at] = from_float<T>(dk_at);
        else
          p.dk[at] = dk_at;
      }
      if constexpr (kDv)
        if (has_y) static_cast<T*>(p.dv)[at] = from_float<T>(dv[dh][i]);
    }
#endif
}

// Shared memory of the query-row kernel: the block's query rows (once), K and V of a key tile, and the
// block's daL and dY rows of that tile.
template <int kD, int kL> struct StageRBwdQSmem {
  static constexpr int kKV = kL * kD * 2;
  static constexpr int kBlock = kStageRBlockM * kD * 2;
  static constexpr int kOffQ = 0;
  static constexpr int kOffK = kOffQ + kBlock;
  static constexpr int kOffV = kOffK + kKV;
  static constexpr int kOffDaL = kOffV + kKV;
  static constexpr int kOffDy = kOffDaL + kBlock;
  static constexpr int kOffStats = kOffDy + kBlock;  // [lse_R, dcL, D_R][row], copied with the tile
  static constexpr int kBytes = kOffStats + 3 * kStageRBlockM * 4 + 1024;  // + alignment of the base to 1 KB
  static_assert(kKV % 1024 == 0 && kBlock % 1024 == 0, "swizzled buffers on 1 KB boundaries");
};

template <typename T, int kD, int kL>
__global__ void __launch_bounds__(kStageRThreads, 2) stage_r_bwd_q_kernel(const StageRBwdQParams p) {
#ifdef MONARCHRT_WGMMA
  using Smem = StageRBwdQSmem<kD, kL>;
  constexpr int kDh = kD / 64;  // 64-feature parts of dQ: one m64n64 product each
  constexpr int kAcc = kL / 2;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* const smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int b1 = p.b1, b2 = p.b2, n_f = p.n_kv_tiles, n_a = p.n_q_tiles;
  // 64 query rows (a, j) flat across query tiles from row0 on, all of key-row index k
  const int krow = blockIdx.x % b1, row0 = (blockIdx.x / b1) * kStageRBlockM;
  const int bh = blockIdx.z, bb = bh / p.nh, h = bh % p.nh;
  const float inv_b2 = 1.f / float(b2);
  // the key tiles the block's last query tile sees (an earlier tile sees no more)
  const int a_last = min(n_a - 1, (row0 + kStageRBlockM - 1) / b2);
  const int f_end = visible_kv_tiles(a_last, n_f, p.causal_block_tiles);
  const bool has_y = p.dy != nullptr;
  const T* const da_l = static_cast<const T*>(p.da_l);
  const T* const dy = static_cast<const T*>(p.dy);
  // per-thread rows, split once (as the key-row kernel): the rows this thread copies, the row whose
  // statistics it copies (t < 64) and the two rows of its accumulator fragments (16 warp + g, + 8)
  constexpr int kChunks = kD / 8, kLdStep = kStageRThreads / kChunks, kLdRows = kStageRBlockM / kLdStep;
  const int ch = tid % kChunks, ld_row = tid / kChunks;
  const RowCursor blk = split_row(row0, b2, inv_b2), ld_step = split_row(kLdStep, b2, inv_b2);
  const RowCursor ld0 = add_rows(blk, split_row(ld_row, b2, inv_b2), b2);
  const RowCursor stat = add_rows(blk, split_row(tid % kStageRBlockM, b2, inv_b2), b2);
  const RowCursor frag[2] = {add_rows(blk, split_row(16 * warp + g, b2, inv_b2), b2),
                             add_rows(blk, split_row(16 * warp + g + 8, b2, inv_b2), b2)};
  const uint32_t ld_dst = gmma::swizzled<kStageRBlockM>(ld_row, ch * 8);  // + i * kLdStep * 128
  static_assert(kLdStep % 8 == 0, "the copied rows keep their swizzle phase");
  // scratch row (b, h, a, f, j, k) of query row (a, j)
  const int64_t a0 = int64_t(bh) * n_a;
  auto scratch_row = [&](RowCursor c, int f) { return ((a0 + c.a) * n_f + f) * b2 * b1 + int64_t(c.j) * b1 + krow; };
  {  // the block's query rows; rows past the last query tile zero
    const T* q_row = static_cast<const T*>(p.q) + bb * p.sq[0] + krow * p.sq[2] + h * p.sq[4];
    RowCursor c = ld0;
#pragma unroll
    for (int i = 0; i < kLdRows; ++i, c = add_rows(c, ld_step, b2)) {
      unsigned char* const dst = smem + Smem::kOffQ + ld_dst + i * kLdStep * 128;
      if (c.a < n_a)
        cp16(dst, q_row + c.a * p.sq[1] + c.j * p.sq[3] + ch * 8);
      else
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
  // whether query row c sees key tile f (a tile before f's causal block, or past the last, does not)
  auto sees = [&](RowCursor c, int a_min) { return c.a >= a_min && c.a < n_a; };
  // key tile f's K, V and the block's daL, dY rows and statistics (zero for a row that does not see f: it
  // meets R = dS = 0, and 0 * garbage may be NaN)
  auto load_tile = [&](int f, int a_min) {
    load_key_row<T, kD, kL>(smem + Smem::kOffK, smem + Smem::kOffV, p, bb, f, krow, h);
    RowCursor c = ld0;
#pragma unroll
    for (int i = 0; i < kLdRows; ++i, c = add_rows(c, ld_step, b2)) {
      const uint32_t off = ld_dst + i * kLdStep * 128;
      if (sees(c, a_min)) {
        const int64_t row = scratch_row(c, f) * kD + ch * 8;
        cp16(smem + Smem::kOffDaL + off, da_l + row);
        if (has_y) cp16(smem + Smem::kOffDy + off, dy + row);
      } else {
        *reinterpret_cast<uint4*>(smem + Smem::kOffDaL + off) = make_uint4(0, 0, 0, 0);
        if (has_y) *reinterpret_cast<uint4*>(smem + Smem::kOffDy + off) = make_uint4(0, 0, 0, 0);
      }
    }
    if (tid < kStageRBlockM) {
      float* const stats = reinterpret_cast<float*>(smem + Smem::kOffStats) + tid;
      if (sees(stat, a_min)) {
        const int64_t row = scratch_row(stat, f);
        cp4(stats, p.lse_r + row);
        cp4(stats + kStageRBlockM, p.dc_l + row);
        cp4(stats + 2 * kStageRBlockM, p.delta_r + row);
      } else {
        stats[0] = stats[kStageRBlockM] = stats[2 * kStageRBlockM] = 0.f;
      }
    }
  };
  // the next key tile's daL and dY rows into L2 (each 128-byte line of this thread's rows once)
  auto prefetch_tile = [&](int f, int a_min) {
    if (ch % 8) return;
    RowCursor c = ld0;
#pragma unroll
    for (int i = 0; i < kLdRows; ++i, c = add_rows(c, ld_step, b2))
      if (sees(c, a_min)) {
        const int64_t at = scratch_row(c, f) * kD + ch * 8;
        prefetch_l2(da_l + at);
        if (has_y) prefetch_l2(dy + at);
      }
  };

  float dq[kDh][32];
#pragma unroll
  for (int dh = 0; dh < kDh; ++dh)
#pragma unroll
    for (int i = 0; i < 32; ++i) dq[dh][i] = 0.f;
  const uint64_t q_desc = gmma::desc(smem_addr(smem + Smem::kOffQ), 1);
  const uint64_t k_desc = gmma::desc(smem_addr(smem + Smem::kOffK), 1);
  const uint64_t v_desc = gmma::desc(smem_addr(smem + Smem::kOffV), 1);
  const uint64_t dal_desc = gmma::desc(smem_addr(smem + Smem::kOffDaL), 1);
  const uint64_t dy_desc = gmma::desc(smem_addr(smem + Smem::kOffDy), 1);
  const uint64_t k_mn = gmma::desc(smem_addr(smem + Smem::kOffK), 0);
  for (int f = 0; f < f_end; ++f) {
    const int a_min = first_q_tile_seeing(f, p.causal_block_tiles);
    load_tile(f, a_min);
    cute::cp_async_fence();
    if (f + 1 < f_end) prefetch_tile(f + 1, first_q_tile_seeing(f + 1, p.causal_block_tiles));
    cute::cp_async_wait<0>();
    gmma::fence_to_async_proxy();
    __syncthreads();  // the tile's rows and statistics are in shared memory
    float lse2[2], dcl[2], delta[2];
    bool live[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float* stats = reinterpret_cast<const float*>(smem + Smem::kOffStats) + 16 * warp + g + 8 * r;
      live[r] = sees(frag[r], a_min);
      lse2[r] = stats[0] * kLog2e;
      dcl[r] = stats[kStageRBlockM];
      delta[r] = stats[2 * kStageRBlockM];
    }

    // --- S = Q K^T and dR = daL K^T + dY V^T for the block's rows
    float s[kAcc], dr[kAcc];
    block_logits<T, kD, kL>(q_desc, dal_desc, dy_desc, k_desc, v_desc, has_y, s, dr);
    // --- dS = R (dR + dcL (1 + ln R) - D_R), R = exp2(s log2(e) S - lse_R log2(e)), as A fragments (K = l)
    uint32_t ds[kL / 16][4];
#pragma unroll
    for (int n = 0; n < kL / 8; ++n) {
      float v4[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, i = 4 * n + e;
        // columns l >= b2 (only in the last two 8-column chunks) meet zero K rows, but their dS may
        // overflow the 16-bit A fragment (R = exp(-lse_R) with lse_R far below 0), and inf * 0 is NaN
        const bool in = live[r] && (n < kL / 8 - 2 || 8 * n + 2 * tig + (e & 1) < b2);
        const float x = fmaf(s[i], p.scale_log2, -lse2[r]);
        const float pr = in ? fast_exp2(x) : 0.f;
        v4[e] = grad_logit(pr, x, dr[i], dcl[r], delta[r]);
      }
      ds[n >> 1][(n & 1) * 2] = pack2<T>(v4[0], v4[1]);
      ds[n >> 1][(n & 1) * 2 + 1] = pack2<T>(v4[2], v4[3]);
    }
    // --- dQ += dS K: K = the key columns l, one product per 64 features
    gmma::fence_fragments<kL / 16>(ds);
    mma_batch([&] {
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh) gmma::mma_from_registers<T, kL, kL>(ds, k_mn, dq[dh], dh, true);
    }, dq);
    gmma::fence_fragments<kL / 16>(ds);
    __syncthreads();  // every read of this tile's buffers is done: the next tile may overwrite them
  }

  // dQ: element 4n + e of part dh is row 16 warp + g + 8 (e / 2) of the block, feature 64 dh + 8n + 2 tig +
  // e % 2; row (a, j) is token (b, a, k, j), head h
  const float sm_scale = p.scale_log2 * kLn2;
  T* const out = static_cast<T*>(p.dq_out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (frag[r].a >= n_a) continue;
    const int64_t tok = ((int64_t(bb) * n_a + frag[r].a) * b1 + krow) * b2 + frag[r].j;
    const int64_t base = (tok * p.nh + h) * kD + 2 * tig;
#pragma unroll
    for (int dh = 0; dh < kDh; ++dh)
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const int64_t at = base + 64 * dh + 8 * n;
        const float2 part = *reinterpret_cast<const float2*>(p.dq + at);
        *reinterpret_cast<uint32_t*>(out + at) = pack2<T>(fmaf(dq[dh][4 * n + 2 * r], sm_scale, part.x),
                                                         fmaf(dq[dh][4 * n + 2 * r + 1], sm_scale, part.y));
      }
  }
#endif
}

}  // namespace monarchrt::attention
