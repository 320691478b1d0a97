// Stage L's backward on warpgroup MMA, the last pass (docs/attention-kernels.md, design (h); the math in
// docs/math.md, Backward; the Triton kernel it stands in for is _stage_l_bwd of
// triton_kernels/monarch_attention_bwd.py with UPDATE false). For one query column (b, h, a, j), its rows
// i < b1, over every key row (f, k) it sees, taken flat (key = f b1 + k):
//
//     L = exp(s <Q_i, aL> - cL - lse_i),   dS = L (<dZ_i, Y> - D_L_i),   D_L = <Z, dZ> - dlse
//     dY = sum_i L dZ_i,   daL = s sum_i dS Q_i,   dcL = -sum_i dS,   D_R = <daL, aL> + <dY, Y> + dcL (1 + cL)
//     dQ_i = s sum_keys dS aL
//
// One CTA of one warpgroup per column (grid x = A b2, z = B nh), two CTAs per SM. Keys are on M (64 a
// block), the column's rows on N (b1 padded to kN = 16..64), so b1 = 30 or 45 pads to 32 or 48 rather
// than to M = 64. Q and dZ of the column and the rows' lse log2(e) and D_L are read once; each block's aL,
// Y and cL come by cp.async into one of two stages, the next block's in flight while this one computes.
// Per block:
//   1. S^T = aL Q^T and dP^T = Y dZ^T: wgmma SS m64n{kN}k16 (K = head_dim), a key row per quad;
//   2. L^T and dS^T in registers (masked to the visible keys), dcL as quad sums; dS^T also stored as a
//      [key][i] buffer (stmatrix);
//   3. dQ^T += aL^T dS^T: wgmma SS with both operands MN-major (M = head_dim in parts of 64, K = the keys),
//      fp32 accumulators held across the blocks;
//   4. per 64 features, dY = L^T dZ and daL = s dS^T Q: wgmma RS m64n64k16 (A = the 16-bit L^T and dS^T
//      fragments, K = kN), each with its part of D_R (Y and aL read from the stage), stored in the dtype
//      through the dS^T buffer (stmatrix, then 16-byte stores of 128-byte runs of key rows).
// Key rows past the visible ones are zero in shared memory and their L and dS are 0 (selected, not
// multiplied: 0 times a garbage logit may be NaN); rows i >= b1 have lse = +inf (L = 0) and D_L = 0.
// Limits (kernel_limits.h, checked by the launcher): head_dim 64 or 128, b1 <= kStageLBwdMaxB1, sm_90a.
#pragma once

#include <cmath>

#include "stage_l.cuh"

namespace monarchrt::attention {

// AttnDims' sq are Q's strides, sk dZ's and sv Z's (the launcher's make_dims(q, dz, z)).
struct StageLBwdParams : AttnDims {
  const void* q;       // [B, A, b1, b2, nh, d]
  const void* dz;      // like q
  const void* z;       // like q
  const float* lse;    // [B, A, b1, b2, nh] contiguous: lse_L
  const float* dlse;   // like lse
  const void* a_l;     // [B, nh, A, F, b2, b1, d] contiguous
  const void* y;       // like a_l
  const float* c_l;    // [B, nh, A, F, b2, b1]
  void* da_l;          // like a_l, written
  void* dy;            // like a_l, written
  float* dc_l;         // like c_l, written
  float* delta_r;      // like c_l, written: D_R
  float* dq;           // [B, A, b1, b2, nh, d] contiguous fp32, written: dQ's stage-L part
};

// Shared memory of one CTA (byte offsets from a 1 KB aligned base): the column's Q and dZ rows, two stages
// of a block's aL, Y and cL, dS^T as a [key][i] buffer of 128-byte rows, the rows' statistics. Swizzled
// row buffers (gmma.cuh).
template <int kD, int kN> struct StageLBwdSmem {
  static constexpr int kRows = kN * kD * 2;
  static constexpr int kBlock = kStageLBlockK * kD * 2;
  static constexpr int kStage = 2 * kBlock + 1024;  // aL, Y, cL [64] (a 1 KB slot keeps the next aligned)
  static constexpr int kOffQ = 0;
  static constexpr int kOffDz = kOffQ + kRows;
  static constexpr int kOffStage = kOffDz + kRows;  // [stage]: aL at 0, Y at kBlock, cL at 2 kBlock
  static constexpr int kOffDs = kOffStage + 2 * kStage;
  static constexpr int kOffStats = kOffDs + kStageLBlockK * 128;  // [lse_i log2(e), D_L][i < kN]
  static constexpr int kBytes = kOffStats + 2 * kN * 4 + 1024;    // + alignment of the base to 1 KB
  static_assert(kN <= 64, "dS^T rows are one 128-byte row");
  static_assert(kRows % 1024 == 0 && kBlock % 1024 == 0, "swizzled buffers on 1 KB boundaries");
};

template <typename T, int kD, int kN>
__global__ void __launch_bounds__(kStageRThreads, 2) stage_l_bwd_kernel(const StageLBwdParams p) {
#ifdef MONARCHRT_WGMMA
  using Smem = StageLBwdSmem<kD, kN>;
  constexpr int kDh = kD / 64;  // 64-feature parts of dQ^T, dY and daL: one product each
  constexpr int kAcc = kN / 2;  // fp32 registers of one m64n{kN} accumulator
  constexpr int kBK = kStageLBlockK;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* const smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int b1 = p.b1, b2 = p.b2, n_f = p.n_kv_tiles;
  const int a = blockIdx.x / b2, j = blockIdx.x % b2;
  const int bh = blockIdx.z, bb = bh / p.nh, h = bh % p.nh;
  const int f_end = visible_kv_tiles(a, n_f, p.causal_block_tiles);
  const int n_keys = f_end * b1, n_blocks = (n_keys + kBK - 1) / kBK;
  const float sm_scale = p.scale_log2 * kLn2;
  const ColumnKeys keys = column_keys(p, bh, a, j);
  const int64_t tok0 = (int64_t(bb) * p.n_q_tiles + a) * b1 * b2 + j;  // token (b, a, i, j) of row i: + i b2
  const T* const q_col = static_cast<const T*>(p.q) + bb * p.sq[0] + a * p.sq[1] + j * p.sq[3] + h * p.sq[4];
  const T* const dz_col = static_cast<const T*>(p.dz) + bb * p.sk[0] + a * p.sk[1] + j * p.sk[3] + h * p.sk[4];
  const T* const z_col = static_cast<const T*>(p.z) + bb * p.sv[0] + a * p.sv[1] + j * p.sv[3] + h * p.sv[4];
  auto load_block = [&](int n) {
    load_key_block<T, kD>(smem + Smem::kOffStage + (n & 1) * Smem::kStage, n, n_keys, keys,
                          static_cast<const T*>(p.a_l), static_cast<const T*>(p.y), p.c_l);
  };

  // --- prologue: Q and dZ (rows past b1 zero) and block 0 in flight while the rows' statistics are formed
  load_rows_zero_rest<T, kD, kN>(smem + Smem::kOffQ, b1, [&](int i) { return q_col + i * p.sq[2]; });
  load_rows_zero_rest<T, kD, kN>(smem + Smem::kOffDz, b1, [&](int i) { return dz_col + i * p.sk[2]; });
  load_block(0);
  cute::cp_async_fence();
  float* const lse2_s = reinterpret_cast<float*>(smem + Smem::kOffStats);  // lse_i log2(e); +inf past b1
  float* const d_l_s = lse2_s + kN;                                         // D_L; 0 past b1
  {
    // D_L = <Z, dZ> - dlse in fp32, rows warp + 4 t (lane: kD / 32 features), unrolled so that every
    // row's loads are in flight at once (one after the other they were a tenth of the kernel's stalls)
    constexpr int kPairs = kD / 64, kWarps = kStageRThreads / 32;
#pragma unroll
    for (int t = 0; t < kN / kWarps; ++t) {
      const int i = warp + kWarps * t;
      float dot = 0.f;
      if (i < b1) {
        const uint32_t* zr = reinterpret_cast<const uint32_t*>(z_col + i * p.sv[2]) + lane * kPairs;
        const uint32_t* dzr = reinterpret_cast<const uint32_t*>(dz_col + i * p.sk[2]) + lane * kPairs;
#pragma unroll
        for (int e = 0; e < kPairs; ++e) {
          const float2 zz = unpack2<T>(zr[e]), dd = unpack2<T>(dzr[e]);
          dot = fmaf(zz.x, dd.x, fmaf(zz.y, dd.y, dot));
        }
      }
      dot = warp_sum(dot);
      if (lane == 0) {
        const int64_t at = (tok0 + int64_t(i) * b2) * p.nh + h;
        lse2_s[i] = i < b1 ? p.lse[at] * kLog2e : INFINITY;
        d_l_s[i] = i < b1 ? dot - p.dlse[at] : 0.f;
      }
    }
  }

  float dq[kDh][kAcc];
#pragma unroll
  for (int dh = 0; dh < kDh; ++dh)
#pragma unroll
    for (int i = 0; i < kAcc; ++i) dq[dh][i] = 0.f;
  const uint64_t q_desc = gmma::desc(smem_addr(smem + Smem::kOffQ), 1);
  const uint64_t dz_desc = gmma::desc(smem_addr(smem + Smem::kOffDz), 1);
  const uint64_t q_mn = gmma::desc(smem_addr(smem + Smem::kOffQ), 0);
  const uint64_t dz_mn = gmma::desc(smem_addr(smem + Smem::kOffDz), 0);
  const uint64_t ds_mn = gmma::desc(smem_addr(smem + Smem::kOffDs), 0);
  // this thread's two key rows of every m64 accumulator: 16 warp + g (+ 8) of the block
  const int rows[2] = {16 * warp + g, 16 * warp + g + 8};
  for (int n = 0; n < n_blocks; ++n) {
    if (n + 1 < n_blocks) load_block(n + 1);  // into the stage block n - 1 used (its reads are done)
    cute::cp_async_fence();
    cute::cp_async_wait<1>();
    gmma::fence_to_async_proxy();
    __syncthreads();  // block n's rows (and, on the first, Q, dZ and the statistics) are in shared memory
    const unsigned char* const st = smem + Smem::kOffStage + (n & 1) * Smem::kStage;
    const float* const c_l_s = reinterpret_cast<const float*>(st + 2 * Smem::kBlock);
    bool valid[2];
    float c_l[2];
    int64_t out_row[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = n * kBK + rows[r];
      valid[r] = key < n_keys;
      c_l[r] = c_l_s[rows[r]];
      out_row[r] = valid[r] ? keys.row(key) : 0;
    }
    // the rows whose 16-byte chunk lane % 8 this thread copies out of the staging buffer: 16 warp + lane / 8
    // + 4 t (-1: past the visible keys)
    int64_t copy_row[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const int key = n * kBK + 16 * warp + (lane >> 3) + 4 * t;
      copy_row[t] = key < n_keys ? keys.row(key) : -1;
    }

    // --- 1. S^T = aL Q^T and dP^T = Y dZ^T for the block's 64 keys
    float s[kAcc], dp[kAcc];
    const uint64_t al_desc = gmma::desc(smem_addr(st), 1), y_desc = gmma::desc(smem_addr(st + Smem::kBlock), 1);
    gmma::fence_operands<kAcc>(s);
    gmma::fence_operands<kAcc>(dp);
    cute::warpgroup_arrive();
    gmma::mma_over_features<T, kD, kN, kBK>(al_desc, q_desc, s, false);
    gmma::mma_over_features<T, kD, kN, kBK>(y_desc, dz_desc, dp, false);
    cute::warpgroup_commit_batch();
    cute::warpgroup_wait<0>();
    gmma::fence_operands<kAcc>(s);
    gmma::fence_operands<kAcc>(dp);

    // --- 2. L^T = 2^(scale_log2 S^T - (cL + lse_i) log2(e)) and dS^T = L^T (dP^T - D_L_i); dcL = -sum_i dS
    float dc_l[2] = {0.f, 0.f};
#pragma unroll
    for (int c = 0; c < kN / 8; ++c) {
      const float2 lse2 = *reinterpret_cast<const float2*>(lse2_s + 8 * c + 2 * tig);
      const float2 d_l = *reinterpret_cast<const float2*>(d_l_s + 8 * c + 2 * tig);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, i = 4 * c + e;
        const float x = fmaf(s[i], p.scale_log2, -fmaf(c_l[r], kLog2e, (e & 1) ? lse2.y : lse2.x));
        const float l = valid[r] ? fast_exp2(x) : 0.f;
        const float ds = valid[r] ? l * (dp[i] - ((e & 1) ? d_l.y : d_l.x)) : 0.f;
        s[i] = l;
        dp[i] = ds;
        dc_l[r] -= ds;
      }
    }
    uint32_t l_frag[kN / 16][4], ds_frag[kN / 16][4];
    gmma::accumulator_fragments<T, kN>(s, l_frag);
    gmma::accumulator_fragments<T, kN>(dp, ds_frag);
    gmma::fence_fragments<kN / 16>(l_frag);
    gmma::fence_fragments<kN / 16>(ds_frag);
    gmma::store_accumulator_rows<T, kN>(dp, smem + Smem::kOffDs);
    gmma::fence_to_async_proxy();
    __syncthreads();  // every warp's keys of dS^T are in

    // --- 3. dQ^T += aL^T dS^T (K = the block's keys), issued first
    const uint64_t al_mn = gmma::desc(smem_addr(st), 0);
#pragma unroll
    for (int dh = 0; dh < kDh; ++dh) gmma::fence_operands<kAcc>(dq[dh]);
    cute::warpgroup_arrive();
#pragma unroll
    for (int dh = 0; dh < kDh; ++dh) gmma::mma_over_rows<T, kN>(al_mn, ds_mn, dq[dh], dh);
    cute::warpgroup_commit_batch();

    // --- 4. dY = L^T dZ, daL = s dS^T Q, per 64 features, each with its part of D_R
    float delta_r[2] = {0.f, 0.f};
    // acc scaled, D_R += acc . `rows_s` (the stage's Y or aL), and acc stored to `out` in T: through the
    // warp's 16 rows of the dS^T buffer (free once dQ^T's product is done), so that each store is a
    // 16-byte chunk of a 128-byte run of a key row
    unsigned char* const staging = smem + Smem::kOffDs;
    auto store_part = [&](float* acc, const unsigned char* rows_s, int dh, float scale, void* out) {
#pragma unroll
      for (int c = 0; c < 8; ++c)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float2 w = unpack2<T>(
              *reinterpret_cast<const uint32_t*>(rows_s + gmma::swizzled<kBK>(rows[r], 64 * dh + 8 * c) + 4 * tig));
          float* const v = acc + 4 * c + 2 * r;
          v[0] *= scale;
          v[1] *= scale;
          delta_r[r] = fmaf(v[0], w.x, fmaf(v[1], w.y, delta_r[r]));
        }
      __syncwarp();  // this warp's reads of its staging rows (the previous part) are done
      gmma::store_accumulator_rows<T, 64>(acc, staging);
      __syncwarp();
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const int row = 16 * warp + (lane >> 3) + 4 * t, chunk = lane & 7;
        const uint4 x = *reinterpret_cast<const uint4*>(staging + row * 128 + ((chunk ^ (row & 7)) << 4));
        if (copy_row[t] >= 0)
          *reinterpret_cast<uint4*>(static_cast<T*>(out) + copy_row[t] * kD + 64 * dh + chunk * 8) = x;
      }
    };
#pragma unroll
    for (int dh = 0; dh < kDh; ++dh) {
      float acc[32];
      gmma::fence_operands<32>(acc);
      cute::warpgroup_arrive();
      gmma::mma_from_registers<T, kN, kN>(l_frag, dz_mn, acc, dh, false);
      cute::warpgroup_commit_batch();
      cute::warpgroup_wait<0>();
      gmma::fence_operands<32>(acc);
      if (dh == 0) __syncthreads();  // dQ^T's product (every warp's) has read dS^T: the buffer stages now
      store_part(acc, st + Smem::kBlock, dh, 1.f, p.dy);
      gmma::fence_operands<32>(acc);
      cute::warpgroup_arrive();
      gmma::mma_from_registers<T, kN, kN>(ds_frag, q_mn, acc, dh, false);
      cute::warpgroup_commit_batch();
      cute::warpgroup_wait<0>();
      gmma::fence_operands<32>(acc);
      store_part(acc, st, dh, sm_scale, p.da_l);
    }
#pragma unroll
    for (int dh = 0; dh < kDh; ++dh) gmma::fence_operands<kAcc>(dq[dh]);
    gmma::fence_fragments<kN / 16>(l_frag);
    gmma::fence_fragments<kN / 16>(ds_frag);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      dc_l[r] = quad_sum(dc_l[r]);
      delta_r[r] = fmaf(dc_l[r], 1.f + c_l[r], quad_sum(delta_r[r]));
      if (tig == 0 && valid[r]) {
        p.dc_l[out_row[r]] = dc_l[r];
        p.delta_r[out_row[r]] = delta_r[r];
      }
    }
    __syncthreads();  // every read of this block's stage and of dS^T is done: the next block may overwrite them
  }
  cute::cp_async_wait<0>();

  // dQ = s dQ^T^T: element 4 c + e of part dh is feature 64 dh + 16 warp + g + 8 (e / 2), row i = 8 c +
  // 2 tig + e % 2; stored at token (b, a, i, j), head h, for i < b1
#pragma unroll
  for (int dh = 0; dh < kDh; ++dh)
#pragma unroll
    for (int c = 0; c < kN / 8; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = 8 * c + 2 * tig + (e & 1);
        if (i >= b1) continue;
        const int feature = 64 * dh + 16 * warp + g + 8 * (e >> 1);
        p.dq[((tok0 + int64_t(i) * b2) * p.nh + h) * kD + feature] = dq[dh][4 * c + e] * sm_scale;
      }
#endif
}

}  // namespace monarchrt::attention
