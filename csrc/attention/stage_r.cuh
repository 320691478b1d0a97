// Stage R of Monarch attention on warpgroup MMA (docs/attention-kernels.md, decomposition (f); the math
// in docs/math.md): for one key row (b, h, f, k), the softmax over its columns l for every query row
// (a, j) of every query tile that sees key tile f, and
//
//     aL[a, f, k, j] = sum_l R K[f, k, l],   Y[a, f, k, j] = sum_l R V[f, k, l],   cL = sum_l R log R
//
// (and lse_R = logsumexp_l S_R for the backward). Stage L (Triton) reads them from the scratch.
//
// One CTA of one warpgroup per key row (grid x) and share of its query rows (grid y), two CTAs per SM;
// no warp specialisation: the other CTA of the SM fills this one's gaps. Per block of 64 query rows
// (a, j), taken flat across query tiles so the products are 64 tall whatever b2 is:
//   1. S = Q K^T: wgmma m64n{kL}k16 with both operands in shared memory (K = head_dim);
//   2. the softmax over l in registers (a row lives in one quad), R = P / sum P as bf16/fp16 A fragments;
//   3. aL = R K and Y = R V: wgmma m64n64k16 with R from registers, one product per 64 features;
//   4. aL, then Y, through a per-warp staging buffer (stmatrix) into whole 128-byte lines of the scratch.
// The next block's query rows are cp.async'd while this one computes. K and V of the key row are loaded
// once, their rows l >= b2 zero (kL: b2 rounded up to 16, the products' N and K).
// Later passes (num_iters > 1) take aR[a, f, k, j] as the query and the temperature t from cR.
// Logits are in the log2 domain (sm_scale * t * log2(e) times the raw dot product); exponentials are
// ex2.approx. Limits (kernel_limits.h, checked by the launcher): head_dim 64 or 128, b2 <= 96, sm_90a.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "../kernel_limits.h"
#include "../warp_atoms.cuh"
#include "dims.h"
#include "gmma.cuh"

namespace monarchrt::attention {

// What stage R's kernels (this one and its backward's, stage_r_bwd.cuh) read: the pass's query, K and V.
struct StageRInputs : AttnDims {
  const void* q;      // [B, A, b1, b2, nh, d], strides sq; d contiguous
  const void* k;      // [B, F, b1, b2, nh, d], strides sk
  const void* v;      // like k, strides sv
  const void* a_r;    // later passes: aR [B, nh, A, F, b1, b2, d] contiguous; null on the first pass
  const float* c_r;   // later passes: cR [B, nh, A, F, b1, b2]
};

struct StageRParams : StageRInputs {
  void* a_l;          // [B, nh, A, F, b2, b1, d] contiguous
  void* y;            // like a_l; null: not written (a pass that only feeds the aR update)
  float* c_l;         // [B, nh, A, F, b2, b1]
  float* lse_r;       // like c_l; null: not written
};

constexpr int kStageRThreads = 128;  // one warpgroup
constexpr int kStageRBlockM = 64;    // query rows per block: M of one wgmma
constexpr float kStageRTemperatureEps = 1e-6f;  // t = min(1 / (cR + eps), max), docs/math.md
constexpr float kStageRTemperatureMax = 1e4f;

// Shared memory of one CTA (byte offsets from a 1 KB aligned base): K and V rows, two query blocks,
// one staging buffer of 16 rows per warp. Every buffer is a swizzled row buffer (gmma.cuh).
template <int kD, int kL> struct StageRSmem {
  static constexpr int kKV = kL * kD * 2;
  static constexpr int kQ = kStageRBlockM * kD * 2;
  static constexpr int kStage = 16 * kD * 2;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKV;
  static constexpr int kOffQ = kOffV + kKV;      // [buffer]
  static constexpr int kOffStage = kOffQ + 2 * kQ;  // [warp]
  static constexpr int kBytes = kOffStage + 4 * kStage + 1024;  // + alignment of the base to 1 KB
  static_assert(kKV % 1024 == 0 && kQ % 1024 == 0 && kStage % 1024 == 0, "swizzled buffers on 1 KB boundaries");
};

// A query row (a, j) of the flat index r = a * b2 + j. Rows are split once per thread and block
// (r < 2^24, kernel_limits.h, so the fp32 quotient is off by at most one) and then moved by constant
// offsets: a few integer instructions a row instead of a division.
struct RowCursor {
  int a, j;
};
__device__ __forceinline__ RowCursor split_row(int r, int b2, float inv_b2) {
  RowCursor c{int(float(r) * inv_b2), 0};
  c.j = r - c.a * b2;
  if (c.j < 0) {
    --c.a;
    c.j += b2;
  } else if (c.j >= b2) {
    ++c.a;
    c.j -= b2;
  }
  return c;
}
// c + d for d.j < b2
__device__ __forceinline__ RowCursor add_rows(RowCursor c, RowCursor d, int b2) {
  c.a += d.a;
  c.j += d.j;
  if (c.j >= b2) {
    c.j -= b2;
    ++c.a;
  }
  return c;
}

// cp.async of rows 0..n_rows-1 of a swizzled buffer of kRows rows from `src` (row r at row_src(r)), rows
// n_rows..kRows-1 zero. Thread t copies chunk t % (kD / 8) of rows t / (kD / 8) + i * step.
template <typename T, int kD, int kRows, class RowSrc>
__device__ __forceinline__ void load_rows_zero_rest(unsigned char* dst, int n_rows, RowSrc row_src) {
  constexpr int kChunks = kD / 8, kStep = kStageRThreads / kChunks;
  const int ch = threadIdx.x % kChunks;
#pragma unroll
  for (int r = threadIdx.x / kChunks; r < kRows; r += kStep) {
    unsigned char* d = dst + gmma::swizzled<kRows>(r, ch * 8);
    if (r < n_rows)
      cp16(d, row_src(r) + ch * 8);
    else
      *reinterpret_cast<uint4*>(d) = make_uint4(0, 0, 0, 0);
  }
}

// Key row (b, f, k, h)'s K and V (none where v_dst is null) into two swizzled buffers of kL rows, rows
// l >= b2 zero (their probabilities are 0, and 0 * garbage may be NaN).
template <typename T, int kD, int kL>
__device__ __forceinline__ void load_key_row(unsigned char* k_dst, unsigned char* v_dst, const StageRInputs& p,
                                             int bb, int f, int krow, int h) {
  const T* k_row = static_cast<const T*>(p.k) + bb * p.sk[0] + f * p.sk[1] + krow * p.sk[2] + h * p.sk[4];
  const T* v_row = static_cast<const T*>(p.v) + bb * p.sv[0] + f * p.sv[1] + krow * p.sv[2] + h * p.sv[4];
  load_rows_zero_rest<T, kD, kL>(k_dst, p.b2, [&](int l) { return k_row + l * p.sk[3]; });
  if (v_dst) load_rows_zero_rest<T, kD, kL>(v_dst, p.b2, [&](int l) { return v_row + l * p.sv[3]; });
}

template <typename T, int kD, int kL>
__global__ void __launch_bounds__(kStageRThreads, 2) stage_r_kernel(const StageRParams p) {
#ifdef MONARCHRT_WGMMA
  using Smem = StageRSmem<kD, kL>;
  constexpr int kDh = kD / 64;  // 64-feature parts of aL and Y: one m64n64 product each
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* const smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
  const int b1 = p.b1, b2 = p.b2, n_f = p.n_kv_tiles;
  const int f = blockIdx.x / b1, krow = blockIdx.x % b1;
  const int bh = blockIdx.z, bb = bh / p.nh, h = bh % p.nh;
  // query tiles that see key tile f: all, or from the first tile of f's causal block on
  const int a_first = first_q_tile_seeing(f, p.causal_block_tiles);
  const int row_end = p.n_q_tiles * b2;
  const int row_step = kStageRBlockM * int(gridDim.y);
  int row0 = a_first * b2 + int(blockIdx.y) * kStageRBlockM;
  if (row0 >= row_end) return;
  const float inv_b2 = 1.f / float(b2);
  const bool first = p.a_r == nullptr;
  const int64_t afk0 = int64_t(bh) * p.n_q_tiles * n_f + f;  // scratch index (b, h, a, f) = afk0 + a * F
  const T* const q = static_cast<const T*>(p.q);
  const T* const q_row = q + bb * p.sq[0] + krow * p.sq[2] + h * p.sq[4];
  const T* const a_r = static_cast<const T*>(p.a_r);

  load_key_row<T, kD, kL>(smem + Smem::kOffK, smem + Smem::kOffV, p, bb, f, krow, h);
  // per-thread row offsets inside a block, split once: the query rows this thread copies (chunk ch of
  // rows ld_row + i * kLdStep), the two rows of its softmax (16 warp + g, + 8) and the four it stores
  // (16 warp + lane / 8 + 4 i)
  constexpr int kChunks = kD / 8, kLdStep = kStageRThreads / kChunks;
  const int ch = threadIdx.x % kChunks, ld_row = threadIdx.x / kChunks;
  const RowCursor ld0 = split_row(ld_row, b2, inv_b2), ld_step = split_row(kLdStep, b2, inv_b2);
  const RowCursor soft0 = split_row(16 * warp + g, b2, inv_b2), eight = split_row(8, b2, inv_b2);
  const RowCursor st0 = split_row(16 * warp + (lane >> 3), b2, inv_b2), four = split_row(4, b2, inv_b2);
  const RowCursor block_step = split_row(row_step, b2, inv_b2);
  const uint32_t ld_dst = gmma::swizzled<kStageRBlockM>(ld_row, ch * 8);  // + i * kLdStep * 128 (same row % 8)
  static_assert(kLdStep % 8 == 0, "the copied rows keep their swizzle phase");
  // the stage-R query of row (a, j): Q[a, k, j] on the first pass, aR[a, f, k, j] on later ones
  auto query = [&](RowCursor c) {
    return first ? q_row + c.a * p.sq[1] + c.j * p.sq[3]
                 : a_r + (((afk0 + int64_t(c.a) * n_f) * b1 + krow) * b2 + c.j) * kD;
  };
  auto load_q = [&](RowCursor blk, int buf) {
    unsigned char* const dst = smem + Smem::kOffQ + buf * Smem::kQ + ld_dst;
    RowCursor c = add_rows(blk, ld0, b2);
#pragma unroll
    for (int i = 0; i < kStageRBlockM / kLdStep; ++i, c = add_rows(c, ld_step, b2))
      if (c.a < p.n_q_tiles) cp16(dst + i * kLdStep * 128, query(c) + ch * 8);
  };
  // scratch row (b, h, a, f, j, k) of query row (a, j)
  const int64_t out0 = afk0 * b2 * b1 + krow, out_per_a = int64_t(n_f) * b2 * b1;
  auto out_index = [&](RowCursor c) { return out0 + c.a * out_per_a + c.j * b1; };
  RowCursor blk = split_row(row0, b2, inv_b2);
  load_q(blk, 0);
  cute::cp_async_fence();

  T* const out_al = static_cast<T*>(p.a_l);
  T* const out_y = static_cast<T*>(p.y);
  unsigned char* const stage = smem + Smem::kOffStage + warp * Smem::kStage;
  for (int it = 0; row0 < row_end; ++it, row0 += row_step, blk = add_rows(blk, block_step, b2)) {
    unsigned char* const s_q = smem + Smem::kOffQ + (it & 1) * Smem::kQ;
    cute::cp_async_wait<0>();
    gmma::fence_to_async_proxy();
    __syncthreads();  // this block's rows are in shared memory; every warp is done with the other buffer
    if (row0 + row_step < row_end) load_q(add_rows(blk, block_step, b2), (it & 1) ^ 1);
    cute::cp_async_fence();

    // --- 1. S = Q K^T for the warpgroup's 64 rows; this thread holds rows g, g + 8 of its warp's 16
    float s[kL / 2];
    {
      const uint64_t q_desc = gmma::desc(smem_addr(s_q), 1), k_desc = gmma::desc(smem_addr(smem + Smem::kOffK), 1);
      gmma::fence_operands<kL / 2>(s);
      cute::warpgroup_arrive();
      gmma::mma_over_features<T, kD, kL, kStageRBlockM>(q_desc, k_desc, s, false);
      cute::warpgroup_commit_batch();
    }
    // while the logits run: this thread's rows (softmax) and the rows it stores (4 of its warp's 16)
    int64_t out_row[2];
    float row_scale[2];
    bool valid[2];
    {
      RowCursor c = add_rows(blk, soft0, b2);
#pragma unroll
      for (int r = 0; r < 2; ++r, c = add_rows(c, eight, b2)) {
        valid[r] = c.a < p.n_q_tiles;
        out_row[r] = out_index(c);
        row_scale[r] = p.scale_log2;
        if (!first && valid[r]) {
          const float cr = p.c_r[((afk0 + int64_t(c.a) * n_f) * b1 + krow) * b2 + c.j];
          row_scale[r] *= fminf(1.f / (cr + kStageRTemperatureEps), kStageRTemperatureMax);
        }
      }
    }
    int64_t st_row[4];
    bool st_valid[4];
    {
      RowCursor c = add_rows(blk, st0, b2);
#pragma unroll
      for (int i = 0; i < 4; ++i, c = add_rows(c, four, b2)) {
        st_valid[i] = c.a < p.n_q_tiles;
        st_row[i] = out_index(c);
      }
    }
    cute::warpgroup_wait<0>();
    gmma::fence_operands<kL / 2>(s);

    // --- 2. softmax over l < b2: element 4n + e is row g + 8 (e / 2), column 8n + 2 tig + e % 2. Columns
    // below kL - 16 are always < b2 (kL is b2 rounded up to 16): only the last two chunks are masked.
    // The scale (sm_scale * t > 0, limits.py) multiplies after the maximum: x = scale * (s - max).
    auto live = [&](int n, int e) { return n < kL / 8 - 2 || 8 * n + 2 * tig + (e & 1) < b2; };
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kL / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (live(n, e)) mx[e >> 1] = fmaxf(mx[e >> 1], s[4 * n + e]);
    float sum[2] = {0.f, 0.f}, sum_px[2] = {0.f, 0.f};  // sum p and sum p x, x relative to the maximum
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      mx[r] *= row_scale[r];
    }
#pragma unroll
    for (int n = 0; n < kL / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        float pe = 0.f;
        if (live(n, e)) {
          const float x = fmaf(s[4 * n + e], row_scale[r], -mx[r]);
          pe = fast_exp2(x);
          sum[r] += pe;
          sum_px[r] = fmaf(pe, x, sum_px[r]);
        }
        s[4 * n + e] = pe;
      }
    float inv_l[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      sum[r] = quad_sum(sum[r]);
      sum_px[r] = quad_sum(sum_px[r]);
      inv_l[r] = 1.f / sum[r];
    }
    // R = P / sum P as the A operand of R K and R V, one k16 step (16 columns l) per entry
    uint32_t pf[kL / 16][4];
#pragma unroll
    for (int n = 0; n < kL / 8; ++n) {
      pf[n >> 1][(n & 1) * 2] = pack2<T>(s[4 * n] * inv_l[0], s[4 * n + 1] * inv_l[0]);
      pf[n >> 1][(n & 1) * 2 + 1] = pack2<T>(s[4 * n + 2] * inv_l[1], s[4 * n + 3] * inv_l[1]);
    }

    // --- 3. aL = R K and Y = R V: one group of kL / 16 products per 64 features
    float acc[2 * kDh][32];
    gmma::fence_fragments<kL / 16>(pf);
    auto issue = [&](int part, uint64_t src) {  // src: the descriptor of K or V
      gmma::fence_operands<32>(acc[part]);
      cute::warpgroup_arrive();
      gmma::mma_from_registers<T, kL, kL>(pf, src, acc[part], part % kDh, false);
      cute::warpgroup_commit_batch();
    };
    // cL = sum_l R log R and lse_R, natural log
    auto store_cl = [&]() {
      if (tig != 0) return;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (!valid[r]) continue;
        const float log2_l = log2f(sum[r]);
        p.c_l[out_row[r]] = (sum_px[r] * inv_l[r] - log2_l) * kLn2;
        if (p.lse_r != nullptr) p.lse_r[out_row[r]] = (mx[r] + log2_l) * kLn2;
      }
    };
    // R's registers stay allocated until the products that read them are done
    auto fence_r = [&]() { gmma::fence_fragments<kL / 16>(pf); };
    // --- 4. one output (kDh parts of 16 rows x 64 features per warp) through the staging buffer
    auto store = [&](float (*parts)[32], T* out) {
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh) gmma::fence_operands<32>(parts[dh]);
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh)
#pragma unroll
        for (int qq = 0; qq < 4; ++qq) {
          const int mi = lane >> 3, row = (mi & 1) * 8 + (lane & 7), n = 2 * qq + (mi >> 1);
          const float* c = parts[dh] + 8 * qq;
          stsm_x4(stage + dh * 2048 + row * 128 + ((n ^ (row & 7)) << 4), pack2<T>(c[0], c[1]), pack2<T>(c[2], c[3]),
                  pack2<T>(c[4], c[5]), pack2<T>(c[6], c[7]));
        }
      __syncwarp();
      // each instruction writes 4 rows x 128 B: chunk lane % 8 of row 4 i + lane / 8
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = 4 * i + (lane >> 3), c = lane & 7;
          const uint4 v = *reinterpret_cast<const uint4*>(stage + dh * 2048 + row * 128 + ((c ^ (row & 7)) << 4));
          if (st_valid[i]) *reinterpret_cast<uint4*>(out + st_row[i] * kD + dh * 64 + c * 8) = v;
        }
      __syncwarp();  // the staging buffer is free for the next output
    };
    const uint64_t k_addr = gmma::desc(smem_addr(smem + Smem::kOffK), 0), v_addr = gmma::desc(smem_addr(smem + Smem::kOffV), 0);
    if (out_y != nullptr) {  // one branch holds every wait, so the compiler sees each group retired
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh) issue(dh, k_addr);
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh) issue(kDh + dh, v_addr);
      store_cl();
      cute::warpgroup_wait<kDh>();
      store(acc, out_al);  // while Y's products run
      cute::warpgroup_wait<0>();
      fence_r();
      store(acc + kDh, out_y);
    } else {
#pragma unroll
      for (int dh = 0; dh < kDh; ++dh) issue(dh, k_addr);
      store_cl();
      cute::warpgroup_wait<0>();
      fence_r();
      store(acc, out_al);
    }
  }
#endif
}

}  // namespace monarchrt::attention
