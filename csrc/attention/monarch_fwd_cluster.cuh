// Fused Monarch attention forward (SPEC 1, num_iters = 1): one thread-block cluster of 8 CTAs per
// (batch, head, query tile a); aL, Y and cL never leave the chip.
//
// Stage R is batched over key rows k and stage L over columns j, so the two stages see aL/Y in
// transposed orders. The cluster splits the tile both ways: CTA r owns key rows k = 8s + r (one per
// sub-step s) for stage R and the columns j = r + 8u for stage L. Each sub-step, every CTA computes
// its row's aL, Y, cL for all columns (S = Q_k K_k^T, softmax over l, P K and P V) and pushes each
// column's result into the shared memory of the CTA that owns the column (16-byte distributed
// shared memory stores); after a cluster barrier each CTA folds the 8 new key rows into its
// stage-L online softmax over (f, k). Exchange buffers alternate between sub-steps, so one
// barrier per sub-step orders both the pushes and the reuse.
//
// Matrix products: mma.sync m16n8k16 / m16n8k8 with fp32 accumulators (CuTe's SM80 atoms), operands
// through ldmatrix from padded shared-memory rows. Logits live in the log2 domain
// (sm_scale * log2(e) multiplies the fp32 dot products; sqrt(sm_scale) is never rounded).
// Limits: head_dim 128, b1 <= 32, b2 <= 64, fp16/bf16, 214 KB of shared memory per CTA (sm_90/sm_100).
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/copy_sm80.hpp>
#include <cute/arch/mma_sm80.hpp>

namespace monarchrt::attention {

namespace cg = cooperative_groups;

constexpr int kCluster = 8;                 // CTAs per query tile
constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
constexpr int kD = 128;                     // head_dim
constexpr int kMaxB1 = 32;                  // rows per tile
constexpr int kMaxB2 = 64;                  // columns per tile
constexpr int kCols = kMaxB2 / kCluster;    // stage-L columns per CTA
constexpr int kRow = kD + 8;                // padded row of 136 halves: ldmatrix rows hit distinct banks
constexpr int kSRow = kMaxB2 + 4;           // fp32 logits row
constexpr int kPRow = kMaxB2 + 8;           // probabilities row (halves)
constexpr float kLn2 = 0.6931471805599453f;

// Shared memory, in halves unless noted. Y staging reuses the logits buffer (same size in bytes).
constexpr int kQlHalves = kCols * kMaxB1 * kRow;          // stage-L queries [u][i][d]
constexpr int kRowBufHalves = kMaxB2 * kRow;              // one key row of Q, K or V [j or l][d]
constexpr int kRxHalves = kCols * kCluster * kRow;        // one exchange buffer [u][kk][d]
constexpr int kSBytes = kMaxB2 * kSRow * 4;
static_assert(kSBytes == kRowBufHalves * 2, "Y staging reuses the logits buffer");
constexpr int kOffQl = 0;
constexpr int kOffQ = kOffQl + kQlHalves * 2;
constexpr int kOffK = kOffQ + kRowBufHalves * 2;
constexpr int kOffV = kOffK + kRowBufHalves * 2;
constexpr int kOffS = kOffV + kRowBufHalves * 2;
constexpr int kOffP = kOffS + kSBytes;
constexpr int kOffRxAl = kOffP + kMaxB2 * kPRow * 2;
constexpr int kOffRxY = kOffRxAl + 2 * kRxHalves * 2;
constexpr int kOffRxCl = kOffRxY + 2 * kRxHalves * 2;     // fp32 [2][u][kk]
constexpr int kOffInvL = kOffRxCl + 2 * kCols * kCluster * 4;
constexpr int kOffCl = kOffInvL + kMaxB2 * 4;
constexpr int kSmemBytes = kOffCl + kMaxB2 * 4;

struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* z;      // [B, A, b1, b2, nh, d] contiguous
  float* lse;   // [B, A, b1, b2, nh] contiguous, natural log
  int64_t sq[5], sk[5], sv[5];  // element strides of [B, tile, row, column, head]; d contiguous
  int nh, n_q_tiles, n_kv_tiles, b1, b2, causal_block_tiles;
  float scale_log2;  // sm_scale * log2(e)
};

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  using k16 = cute::SM80_16x8x16_F32BF16BF16F32_TN;
  using k8 = cute::SM80_16x8x8_F32BF16BF16F32_TN;
};
template <> struct Mma<__half> {
  using k16 = cute::SM80_16x8x16_F32F16F16F32_TN;
  using k8 = cute::SM80_16x8x8_F32F16F16F32_TN;
};

template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return reinterpret_cast<uint32_t&>(v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return reinterpret_cast<uint32_t&>(v);
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  cute::SM75_U32x4_LDSM_N::copy(*reinterpret_cast<const cute::uint128_t*>(p), r[0], r[1], r[2], r[3]);
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  cute::SM75_U16x8_LDSM_T::copy(*reinterpret_cast<const cute::uint128_t*>(p), r[0], r[1], r[2], r[3]);
}
template <typename T>
__device__ __forceinline__ void mma16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Mma<T>::k16::fma(c[0], c[1], c[2], c[3], a[0], a[1], a[2], a[3], b0, b1, c[0], c[1], c[2], c[3]);
}
template <typename T>
__device__ __forceinline__ void mma8(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  Mma<T>::k8::fma(c[0], c[1], c[2], c[3], a0, a1, b0, c[0], c[1], c[2], c[3]);
}
__device__ __forceinline__ void cp16(void* smem, const void* gmem) {
  cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(gmem),
                                                        *reinterpret_cast<cute::uint128_t*>(smem));
}
__device__ __forceinline__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// ldmatrix addresses of one lane: rows r0 + (lane % 8) + 8 * ((lane / 8) % 2), columns c0 + 8 * (lane / 16)
// give an A operand (16 x 16, row-major) or a transposed B pair; "n-major" B pairs swap the roles.
__device__ __forceinline__ int a_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
__device__ __forceinline__ int a_col(int lane) { return (lane >> 4) * 8; }
__device__ __forceinline__ int bn_row(int lane) { return (lane & 7) + (lane >> 4) * 8; }
__device__ __forceinline__ int bn_col(int lane) { return ((lane >> 3) & 1) * 8; }

template <typename T>
__global__ void __cluster_dims__(kCluster, 1, 1) __launch_bounds__(kThreads, 1)
    monarch_fwd_cluster_kernel(const FwdParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  T* const s_ql = reinterpret_cast<T*>(smem + kOffQl);
  T* const s_q = reinterpret_cast<T*>(smem + kOffQ);
  T* const s_k = reinterpret_cast<T*>(smem + kOffK);
  T* const s_v = reinterpret_cast<T*>(smem + kOffV);
  float* const s_s = reinterpret_cast<float*>(smem + kOffS);
  T* const s_p = reinterpret_cast<T*>(smem + kOffP);
  T* const rx_al = reinterpret_cast<T*>(smem + kOffRxAl);
  T* const rx_y = reinterpret_cast<T*>(smem + kOffRxY);
  float* const rx_cl = reinterpret_cast<float*>(smem + kOffRxCl);
  float* const s_inv_l = reinterpret_cast<float*>(smem + kOffInvL);
  float* const s_cl = reinterpret_cast<float*>(smem + kOffCl);
  T* const stg_al = s_q;                         // aL staging: the query row is dead by then
  T* const stg_y = reinterpret_cast<T*>(s_s);    // Y staging: the logits are dead by then

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int a = blockIdx.x / kCluster, h = blockIdx.y, bb = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tig = lane & 3;
  const int b1 = p.b1, b2 = p.b2;
  const int n_cols = rank < b2 ? (b2 - rank + kCluster - 1) / kCluster : 0;  // columns j = rank + 8u
  const int n_sub = (b1 + kCluster - 1) / kCluster;
  const int f_end = p.causal_block_tiles > 0
                        ? min(p.n_kv_tiles, (a / p.causal_block_tiles + 1) * p.causal_block_tiles)
                        : p.n_kv_tiles;
  const int total = f_end * n_sub;
  const T* const q = static_cast<const T*>(p.q);
  const T* const kk = static_cast<const T*>(p.k);
  const T* const vv = static_cast<const T*>(p.v);
  const int64_t q_base = bb * p.sq[0] + a * p.sq[1] + h * p.sq[4];

  // --- prologue: zero the pads and exchange buffers, load the stage-L queries -------------------
  const uint4 zero4 = make_uint4(0, 0, 0, 0);
  for (int c = tid; c < kCols * kMaxB1 * 16; c += kThreads) {  // 16 chunks of 8 halves per row
    const int row = c >> 4, ch = c & 15, u = row / kMaxB1, i = row % kMaxB1, j = rank + kCluster * u;
    T* dst = s_ql + row * kRow + ch * 8;
    if (i < b1 && j < b2)
      cp16(dst, q + q_base + i * p.sq[2] + j * p.sq[3] + ch * 8);
    else
      *reinterpret_cast<uint4*>(dst) = zero4;
  }
  for (int c = tid; c < 3 * (kMaxB2 - b2) * 16; c += kThreads) {  // rows j, l >= b2 of Q, K, V stay 0
    const int which = c / ((kMaxB2 - b2) * 16), rem = c % ((kMaxB2 - b2) * 16);
    T* buf = which == 0 ? s_q : which == 1 ? s_k : s_v;
    *reinterpret_cast<uint4*>(buf + (b2 + (rem >> 4)) * kRow + (rem & 15) * 8) = zero4;
  }
  for (int c = tid; c < 2 * kRxHalves / 8; c += kThreads) {
    reinterpret_cast<uint4*>(rx_al)[c] = zero4;
    reinterpret_cast<uint4*>(rx_y)[c] = zero4;
  }
  for (int c = tid; c < 2 * kCols * kCluster; c += kThreads) rx_cl[c] = 0.f;

  // cp.async of the query, key and value rows of one sub-step (rows < b2 only)
  auto load_rows = [&](int step) {
    const int f = step / n_sub, krow = (step % n_sub) * kCluster + rank;
    if (krow >= b1) return;
    const T* gq = q + q_base + krow * p.sq[2];
    const T* gk = kk + bb * p.sk[0] + f * p.sk[1] + krow * p.sk[2] + h * p.sk[4];
    const T* gv = vv + bb * p.sv[0] + f * p.sv[1] + krow * p.sv[2] + h * p.sv[4];
    for (int c = tid; c < 3 * b2 * 16; c += kThreads) {
      const int which = c / (b2 * 16), rem = c % (b2 * 16), j = rem >> 4, ch = (rem & 15) * 8;
      if (which == 0) cp16(s_q + j * kRow + ch, gq + j * p.sq[3] + ch);
      else if (which == 1) cp16(s_k + j * kRow + ch, gk + j * p.sk[3] + ch);
      else cp16(s_v + j * kRow + ch, gv + j * p.sv[3] + ch);
    }
  };
  if (total > 0) load_rows(0);
  cute::cp_async_fence();
  cute::cp_async_wait<0>();
  __syncthreads();
  cluster_barrier();  // every CTA of the cluster runs and has zeroed its exchange buffers

  // stage-L state of this warp: column u, query rows 16 * mt + (g, g + 8)
  const int lu = warp >> 1, lmt = warp & 1;
  const bool l_active = lu < n_cols && lmt * 16 < b1;
  float z_acc[16][4];
#pragma unroll
  for (int n = 0; n < 16; ++n) z_acc[n][0] = z_acc[n][1] = z_acc[n][2] = z_acc[n][3] = 0.f;
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.f, 0.f};

  for (int step = 0; step < total; ++step) {
    const int s = step % n_sub, buf = step & 1;
    const int krow = s * kCluster + rank;
    if (krow < b1) {
      // --- stage R logits: S[j, l] = <Q[k, j], K[k, l]> for j, l < 64; warp: rows 16 * (warp / 4), cols 16 * (warp % 4)
      {
        const int mt = warp >> 2, nq = warp & 3;
        float acc[2][4] = {};
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks) {
          uint32_t af[4], bf[4];
          ldsm_x4(af, s_q + (16 * mt + a_row(lane)) * kRow + 16 * ks + a_col(lane));
          ldsm_x4(bf, s_k + (16 * nq + bn_row(lane)) * kRow + 16 * ks + bn_col(lane));
          mma16<T>(acc[0], af, bf[0], bf[1]);
          mma16<T>(acc[1], af, bf[2], bf[3]);
        }
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          float* dst = s_s + (16 * mt + g) * kSRow + 16 * nq + 8 * n + 2 * tig;
          dst[0] = acc[n][0] * p.scale_log2;
          dst[1] = acc[n][1] * p.scale_log2;
          dst[8 * kSRow] = acc[n][2] * p.scale_log2;
          dst[8 * kSRow + 1] = acc[n][3] * p.scale_log2;
        }
      }
      __syncthreads();
      // --- stage R softmax over l: 8 threads per row j, 8 columns each; P unnormalised, 1/l and cL (log2 units)
      {
        const int row = tid >> 3, part = tid & 7;
        float x[8], mx = -INFINITY;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int col = part * 8 + e;
          x[e] = col < b2 ? s_s[row * kSRow + col] : -INFINITY;
          mx = fmaxf(mx, x[e]);
        }
#pragma unroll
        for (int o = 1; o < 8; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float sum = 0.f, sum_px = 0.f, pe[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          pe[e] = exp2f(x[e] - mx);  // 0 on masked columns
          sum += pe[e];
          sum_px += part * 8 + e < b2 ? pe[e] * x[e] : 0.f;
        }
#pragma unroll
        for (int o = 1; o < 8; o <<= 1) {
          sum += __shfl_xor_sync(0xffffffffu, sum, o);
          sum_px += __shfl_xor_sync(0xffffffffu, sum_px, o);
        }
        uint4 packed = make_uint4(pack2<T>(pe[0], pe[1]), pack2<T>(pe[2], pe[3]), pack2<T>(pe[4], pe[5]),
                                  pack2<T>(pe[6], pe[7]));
        *reinterpret_cast<uint4*>(s_p + row * kPRow + part * 8) = packed;
        if (part == 0) {
          s_inv_l[row] = 1.f / sum;
          s_cl[row] = sum_px / sum - mx - log2f(sum);  // cL * log2(e): sum_l R log2 R
        }
      }
      __syncthreads();
      // --- stage R outputs: aL = P K / l, Y = P V / l; warp: rows 16 * (warp % 4), {aL, Y}, d half
      {
        const int mt = warp & 3, which = (warp >> 2) & 1, dh = warp >> 3;
        const T* src = which ? s_v : s_k;
        float acc[8][4] = {};
#pragma unroll
        for (int ks = 0; ks < kMaxB2 / 16; ++ks) {
          uint32_t af[4];
          ldsm_x4(af, s_p + (16 * mt + a_row(lane)) * kPRow + 16 * ks + a_col(lane));
#pragma unroll
          for (int np = 0; np < 4; ++np) {
            uint32_t bf[4];
            ldsm_x4_t(bf, src + (16 * ks + a_row(lane)) * kRow + 64 * dh + 16 * np + a_col(lane));
            mma16<T>(acc[2 * np], af, bf[0], bf[1]);
            mma16<T>(acc[2 * np + 1], af, bf[2], bf[3]);
          }
        }
        T* stg = which ? stg_y : stg_al;
        const int r0 = 16 * mt + g;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = r0 + 8 * half;
          if (row < b2) {  // rows >= b2 of the query buffer must stay zero
            const float inv = s_inv_l[row];
#pragma unroll
            for (int n = 0; n < 8; ++n)
              *reinterpret_cast<uint32_t*>(stg + row * kRow + 64 * dh + 8 * n + 2 * tig) =
                  pack2<T>(acc[n][2 * half] * inv, acc[n][2 * half + 1] * inv);
          }
        }
      }
      __syncthreads();
      // --- push column j's aL, Y, cL of this key row to the CTA that owns column j
      for (int c = tid; c < 2 * b2 * 16; c += kThreads) {
        const int which = c / (b2 * 16), rem = c % (b2 * 16), j = rem >> 4, ch = (rem & 15) * 8;
        const T* src = (which ? stg_y : stg_al) + j * kRow + ch;
        T* local = (which ? rx_y : rx_al) + buf * kRxHalves + ((j / kCluster) * kCluster + rank) * kRow + ch;
        *cluster.map_shared_rank(reinterpret_cast<uint4*>(local), j % kCluster) =
            *reinterpret_cast<const uint4*>(src);
      }
      for (int j = tid; j < b2; j += kThreads) {
        float* local = rx_cl + (buf * kCols + j / kCluster) * kCluster + rank;
        *cluster.map_shared_rank(local, j % kCluster) = s_cl[j];
      }
    }
    cluster_barrier();  // this sub-step's 8 key rows have arrived everywhere; the other buffer is free
    if (step + 1 < total) load_rows(step + 1);
    cute::cp_async_fence();

    // --- stage L: S_L[i, kk] = s <Q[i, j], aL[kk, j]> - cL[kk] for this sub-step's rows kk, online softmax
    if (l_active) {
      const T* al = rx_al + buf * kRxHalves + lu * kCluster * kRow;
      const T* y = rx_y + buf * kRxHalves + lu * kCluster * kRow;
      const T* ql = s_ql + (lu * kMaxB1 + 16 * lmt) * kRow;
      float sacc[4] = {};
#pragma unroll
      for (int ks2 = 0; ks2 < kD / 32; ++ks2) {
        uint32_t bf[4];
        ldsm_x4(bf, al + (lane & 7) * kRow + 32 * ks2 + 8 * (lane >> 3));
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          uint32_t af[4];
          ldsm_x4(af, ql + a_row(lane) * kRow + 32 * ks2 + 16 * half + a_col(lane));
          mma16<T>(sacc, af, bf[2 * half], bf[2 * half + 1]);
        }
      }
      const float* cl = rx_cl + (buf * kCols + lu) * kCluster;
      float x[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int kcol = 2 * tig + (e & 1);
        x[e] = s * kCluster + kcol < b1 ? sacc[e] * p.scale_log2 - cl[kcol] : -INFINITY;
      }
      float pr[4];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = fmaxf(x[2 * r], x[2 * r + 1]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_row[r], mx);  // finite: key row kk = 0 is valid in every sub-step
        const float alpha = exp2f(m_row[r] - m_new);
        pr[2 * r] = exp2f(x[2 * r] - m_new);
        pr[2 * r + 1] = exp2f(x[2 * r + 1] - m_new);
        l_row[r] = l_row[r] * alpha + pr[2 * r] + pr[2 * r + 1];
        m_row[r] = m_new;
#pragma unroll
        for (int n = 0; n < 16; ++n) {
          z_acc[n][2 * r] *= alpha;
          z_acc[n][2 * r + 1] *= alpha;
        }
      }
      const uint32_t a0 = pack2<T>(pr[0], pr[1]), a1 = pack2<T>(pr[2], pr[3]);
#pragma unroll
      for (int nq = 0; nq < kD / 32; ++nq) {
        uint32_t bf[4];
        ldsm_x4_t(bf, y + (lane & 7) * kRow + 32 * nq + 8 * (lane >> 3));
#pragma unroll
        for (int t = 0; t < 4; ++t) mma8<T>(z_acc[4 * nq + t], a0, a1, bf[t]);
      }
    }
    cute::cp_async_wait<0>();
    __syncthreads();
  }

  // --- epilogue: Z = acc / l, lse = (m + log2 l) ln 2
  if (l_active) {
    const int j = rank + kCluster * lu;
    T* z = static_cast<T*>(p.z);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = l_row[r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int i = 16 * lmt + g + 8 * r;
      if (i >= b1) continue;
      const int64_t tok = ((int64_t(bb) * p.n_q_tiles + a) * b1 + i) * b2 + j;
      const float inv = 1.f / l;
      T* zrow = z + (tok * p.nh + h) * kD;
#pragma unroll
      for (int n = 0; n < 16; ++n)
        *reinterpret_cast<uint32_t*>(zrow + 8 * n + 2 * tig) = pack2<T>(z_acc[n][2 * r] * inv, z_acc[n][2 * r + 1] * inv);
      if (tig == 0) p.lse[tok * p.nh + h] = (m_row[r] + log2f(l)) * kLn2;
    }
  }
}

}  // namespace monarchrt::attention
