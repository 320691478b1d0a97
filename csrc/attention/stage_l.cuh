// Stage L of Monarch attention on warpgroup MMA, the forward (docs/attention-kernels.md, design (i); the math
// in docs/math.md, Forward; the Triton kernel it stands in for is _stage_l_fwd of
// triton_kernels/monarch_attention_fwd.py). For one query column (b, h, a, j), its rows i < b1, over every
// key row (f, k) it sees, taken flat (key = f b1 + k):
//
//     S_L = s <Q_i, aL> - cL,   lse_i = logsumexp_keys S_L,   Z_i = sum_keys exp(S_L - lse_i) Y
//
// One CTA of one warpgroup per column (grid x = A b2, z = B nh), two CTAs per SM. The rows i are M (b1
// padded to 64), the keys N in blocks of 64. Q of the column is read once; each block's aL, Y and cL come
// by cp.async into one of two stages, the next block's in flight while this one computes. Per block:
//   1. S = Q aL^T: wgmma SS m64n64k16 (K = head_dim), a row per quad;
//   2. the online softmax in registers (log2 domain: running row max, per-thread partial sums, the Z
//      accumulator rescaled by the change of the max), P as 16-bit A fragments;
//   3. Z += P Y: wgmma RS m64n64k16 per 64 features (K = the block's keys), fp32 accumulators.
// Keys past the visible ones are zero in shared memory and their logits -inf. A pass that forms no Z
// (num_iters > 1: z null) reads no Y and writes lse only. Limits (kernel_limits.h, checked by the
// launcher): head_dim 64 or 128, b1 <= kStageLMaxB1, sm_90a.
#pragma once

#include <cmath>

#include "stage_r.cuh"

namespace monarchrt::attention {

// AttnDims' sq are Q's strides (sk and sv unused).
struct StageLParams : AttnDims {
  const void* q;    // [B, A, b1, b2, nh, d]
  const void* a_l;  // [B, nh, A, F, b2, b1, d] contiguous
  const void* y;    // like a_l
  const float* c_l; // [B, nh, A, F, b2, b1]
  void* z;          // [B, A, b1, b2, nh, d] contiguous, in the dtype; null: not formed
  float* lse;       // [B, A, b1, b2, nh] contiguous: lse_L
};

constexpr int kStageLBlockK = 64;  // key rows per block of both stage-L kernels (here N of the logits, K of
                                   // Z's product; M of stage_l_bwd.cuh's)
constexpr int kStageLRows = 64;    // a column's rows i, padded: M of the products

// Shared memory of one CTA (byte offsets from a 1 KB aligned base): the column's Q rows and two stages of
// a block's aL, Y and cL. Swizzled row buffers (gmma.cuh).
template <int kD> struct StageLSmem {
  static constexpr int kBlock = kStageLBlockK * kD * 2;
  static constexpr int kStage = 2 * kBlock + 1024;  // aL, Y, cL [64] (a 1 KB slot keeps the next aligned)
  static constexpr int kOffQ = 0;
  static constexpr int kOffStage = kOffQ + kStageLRows * kD * 2;  // [stage]: aL at 0, Y at kBlock, cL after
  static constexpr int kBytes = kOffStage + 2 * kStage + 1024;   // + alignment of the base to 1 KB
  static_assert(kBlock % 1024 == 0, "swizzled buffers on 1 KB boundaries");
};

// The visible keys of one query column (b, h, a, j), flat: key f b1 + k is scratch row (b, h, a, f, j, k).
struct ColumnKeys {
  int64_t col0;  // the scratch row of key 0
  int b1, b2;
  __device__ __forceinline__ int64_t row(int key) const {
    const int f = key / b1;
    return col0 + int64_t(f) * b2 * b1 + (key - f * b1);
  }
};
__device__ __forceinline__ ColumnKeys column_keys(const AttnDims& p, int bh, int a, int j) {
  return {((int64_t(bh) * p.n_q_tiles + a) * p.n_kv_tiles * p.b2 + j) * p.b1, p.b1, p.b2};
}

// Block n of a column's keys (kStageLBlockK rows) into a stage of both stage-L kernels: aL at 0, Y (none
// where y is null) at kBlock, cL [64] after. Thread t copies chunk t % (kD / 8) of rows t / (kD / 8) + i
// kLdStep, and cL of key t for t < 64; keys past the visible ones zero.
template <typename T, int kD>
__device__ __forceinline__ void load_key_block(unsigned char* st, int n, int n_keys, const ColumnKeys& keys,
                                               const T* a_l, const T* y, const float* c_l) {
  constexpr int kBlock = kStageLBlockK * kD * 2, kChunks = kD / 8, kLdStep = kStageRThreads / kChunks;
  const int tid = threadIdx.x, ch = tid % kChunks, key0 = n * kStageLBlockK;
#pragma unroll
  for (int r = tid / kChunks; r < kStageLBlockK; r += kLdStep) {
    const uint32_t off = gmma::swizzled<kStageLBlockK>(r, ch * 8);
    if (key0 + r < n_keys) {
      const int64_t row = keys.row(key0 + r) * kD + ch * 8;
      cp16(st + off, a_l + row);
      if (y) cp16(st + kBlock + off, y + row);
    } else {
      *reinterpret_cast<uint4*>(st + off) = make_uint4(0, 0, 0, 0);
      if (y) *reinterpret_cast<uint4*>(st + kBlock + off) = make_uint4(0, 0, 0, 0);
    }
  }
  if (tid < kStageLBlockK) {
    float* const dst = reinterpret_cast<float*>(st + 2 * kBlock) + tid;
    if (key0 + tid < n_keys)
      cp4(dst, c_l + keys.row(key0 + tid));
    else
      *dst = 0.f;
  }
}

template <typename T, int kD>
__global__ void __launch_bounds__(kStageRThreads, 2) stage_l_kernel(const StageLParams p) {
#ifdef MONARCHRT_WGMMA
  using Smem = StageLSmem<kD>;
  constexpr int kDh = kD / 64;  // 64-feature parts of Z: one product each
  constexpr int kBK = kStageLBlockK;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* const smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int b1 = p.b1, b2 = p.b2, n_f = p.n_kv_tiles;
  const int a = blockIdx.x / b2, j = blockIdx.x % b2;
  const int bh = blockIdx.z, bb = bh / p.nh, h = bh % p.nh;
  const int n_keys = visible_kv_tiles(a, n_f, p.causal_block_tiles) * b1, n_blocks = (n_keys + kBK - 1) / kBK;
  const bool has_z = p.z != nullptr;
  const ColumnKeys keys = column_keys(p, bh, a, j);
  const int64_t tok0 = (int64_t(bb) * p.n_q_tiles + a) * b1 * b2 + j;  // token (b, a, i, j) of row i: + i b2
  const T* const q_col = static_cast<const T*>(p.q) + bb * p.sq[0] + a * p.sq[1] + j * p.sq[3] + h * p.sq[4];
  const T* const y = has_z ? static_cast<const T*>(p.y) : nullptr;
  auto load_block = [&](int n) {
    load_key_block<T, kD>(smem + Smem::kOffStage + (n & 1) * Smem::kStage, n, n_keys, keys,
                          static_cast<const T*>(p.a_l), y, p.c_l);
  };

  load_rows_zero_rest<T, kD, kStageLRows>(smem + Smem::kOffQ, b1, [&](int i) { return q_col + i * p.sq[2]; });
  load_block(0);
  cute::cp_async_fence();

  float z[kDh][32];
#pragma unroll
  for (int dh = 0; dh < kDh; ++dh)
#pragma unroll
    for (int i = 0; i < 32; ++i) z[dh][i] = 0.f;
  // this thread's two rows i (16 warp + g, + 8): running max (log2 domain) and partial sum of its columns
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const uint64_t q_desc = gmma::desc(smem_addr(smem + Smem::kOffQ), 1);
  for (int n = 0; n < n_blocks; ++n) {
    if (n + 1 < n_blocks) load_block(n + 1);  // into the stage block n - 1 used (its reads are done)
    cute::cp_async_fence();
    cute::cp_async_wait<1>();
    gmma::fence_to_async_proxy();
    __syncthreads();  // block n's rows (and, on the first, Q) are in shared memory
    const unsigned char* const st = smem + Smem::kOffStage + (n & 1) * Smem::kStage;
    const float* const c_l_s = reinterpret_cast<const float*>(st + 2 * Smem::kBlock);

    // --- 1. S = Q aL^T for the block's 64 keys
    float s[32];
    gmma::fence_operands<32>(s);
    cute::warpgroup_arrive();
    gmma::mma_over_features<T, kD, kBK, kStageLRows>(q_desc, gmma::desc(smem_addr(st), 1), s, false);
    cute::warpgroup_commit_batch();
    cute::warpgroup_wait<0>();
    gmma::fence_operands<32>(s);

    // --- 2. x = s log2(e) S - cL log2(e) (-inf past the visible keys); online softmax over the keys
    float block_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int c = 0; c < kBK / 8; ++c) {
      const int key = 8 * c + 2 * tig;
      const float2 cl = *reinterpret_cast<const float2*>(c_l_s + key);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool valid = n * kBK + key + (e & 1) < n_keys;
        const float x = valid ? fmaf(s[4 * c + e], p.scale_log2, -((e & 1) ? cl.y : cl.x) * kLog2e) : -INFINITY;
        s[4 * c + e] = x;
        block_max[e >> 1] = fmaxf(block_max[e >> 1], x);
      }
    }
    float rescale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m = fmaxf(row_max[r], quad_max(block_max[r]));  // finite: key n * 64 is visible
      rescale[r] = fast_exp2(row_max[r] - m);
      row_max[r] = m;
      row_sum[r] *= rescale[r];
    }
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const float pr = fast_exp2(s[i] - row_max[(i & 3) >> 1]);
      row_sum[(i & 3) >> 1] += pr;
      s[i] = pr;
    }

    // --- 3. Z = rescale Z + P Y, per 64 features (K = the block's keys)
    if (has_z) {
      uint32_t p_frag[kBK / 16][4];
      gmma::accumulator_fragments<T, kBK>(s, p_frag);
      gmma::fence_fragments<kBK / 16>(p_frag);
      const uint64_t y_mn = gmma::desc(smem_addr(st + Smem::kBlock), 0);
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh) {
#pragma unroll
        for (int i = 0; i < 32; ++i) z[dh][i] *= rescale[(i & 3) >> 1];
        gmma::fence_operands<32>(z[dh]);
      }
      cute::warpgroup_arrive();
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh) gmma::mma_from_registers<T, kBK, kBK>(p_frag, y_mn, z[dh], dh, true);
      cute::warpgroup_commit_batch();
      cute::warpgroup_wait<0>();
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh) gmma::fence_operands<32>(z[dh]);
      gmma::fence_fragments<kBK / 16>(p_frag);
    }
    __syncthreads();  // every read of this block's stage is done: the next block may overwrite it
  }
  cute::cp_async_wait<0>();

  // lse_i = ln 2 (max + log2 sum) and Z_i / sum: element 4 c + e of part dh is row i = 16 warp + g + 8 (e / 2),
  // feature 64 dh + 8 c + 2 tig + e % 2; stored at token (b, a, i, j), head h, for i < b1
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = 16 * warp + g + 8 * r;
    const float total = quad_sum(row_sum[r]);
    if (i >= b1) continue;
    const int64_t at = (tok0 + int64_t(i) * b2) * p.nh + h;
    if (tig == 0) p.lse[at] = (row_max[r] + log2f(total)) * kLn2;
    if (!has_z) continue;
    const float inv = 1.f / total;
    T* const out = static_cast<T*>(p.z) + at * kD + 2 * tig;
#pragma unroll
    for (int dh = 0; dh < kDh; ++dh)
#pragma unroll
      for (int c = 0; c < 8; ++c)
        *reinterpret_cast<uint32_t*>(out + 64 * dh + 8 * c) =
            pack2<T>(z[dh][4 * c + 2 * r] * inv, z[dh][4 * c + 2 * r + 1] * inv);
  }
#endif
}

}  // namespace monarchrt::attention
