// Fused Monarch attention forward (docs/math.md, num_iters = 1): one thread-block cluster of 8 CTAs per
// (batch, head, query tile a); aL, Y and cL never leave the chip.
//
// Stage R is batched over key rows k and stage L over columns j, so the two stages see aL/Y in
// transposed orders. The cluster splits the tile both ways: CTA r owns key rows k = 8s + r (one per
// sub-step s) for stage R and the columns j = r + 8u for stage L.
//
// Warp roles inside a CTA, pipelined across sub-steps:
// - 4 producer warps, one warpgroup (16 columns j per warp): S = Q_k K_k^T, the softmax over l,
//   aL = R K and Y = R V with R = P / l, all in registers; each warp passes its rows through a small
//   staging buffer (stmatrix) and each lane sends 16-byte pieces of one row straight into the shared
//   memory of the CTA that owns that column (st.async: distributed shared memory stores that count
//   their bytes on the owner's "full" barrier). Q/K/V rows are cp.async'd a sub-step ahead (K/V
//   double-buffered).
// - 8 consumer warps (one per owned column, both 16-row halves of the query tile): wait on the local
//   "full" barrier (one arrival carrying the expected byte count, then the bytes), fold the 8 new key
//   rows into the online softmax over (f, k) and into Z, then arrive on every CTA's "empty" barrier
//   so producers may reuse the buffer. No fence: cluster-scope release/acquire compile to
//   MEMBAR.ALL.GPU / CCTL.IVALL, on which v2 of this kernel spent half its stalls (bench/NOTES.md).
// Exchange buffers alternate between sub-steps, so producers run up to one sub-step ahead.
//
// Matrix products, fp32 accumulators: stage R on warpgroup MMA where the target has it (sm_90a:
// wgmma m64n64k16, S with both operands in shared memory, R K / R V with R from registers), else
// mma.sync m16n8k16 through ldmatrix (CuTe's SM80 atoms, sm_100a / sm_120a); stage L on mma.sync.
// Q/K/V rows use the 128-byte-swizzled K-major layout that wgmma reads and ldmatrix reads without
// bank conflicts. Logits live in the log2 domain (sm_scale * log2(e) multiplies the fp32 dot
// products; sqrt(sm_scale) is never rounded); exponentials are ex2.approx.
// Limits: head_dim 128, b1 <= 32, b2 <= 64, fp16/bf16, 1e-20 <= sm_scale <= 1e8 (the launcher checks),
// 226 KB of shared memory per CTA (sm_90/sm_100).
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "../kernel_limits.h"
#include "../warp_atoms.cuh"
#include "dims.h"
#include "gmma.cuh"  // stage R on warpgroup MMA where the target has it (sm_90a), else mma.sync

namespace monarchrt::attention {

namespace cg = cooperative_groups;

constexpr int kCluster = limits::kAttnCluster;  // CTAs per query tile
constexpr int kProducerWarps = 4;           // stage R: 16 columns j each
constexpr int kConsumerWarps = 8;           // stage L: one owned column each
constexpr int kProducerThreads = kProducerWarps * 32;
constexpr int kThreads = (kProducerWarps + kConsumerWarps) * 32;
constexpr int kD = limits::kAttnHeadDim;      // head_dim
constexpr int kMaxB1 = limits::kAttnMaxB1;     // rows per tile
constexpr int kMaxB2 = limits::kAttnMaxB2;     // columns per tile
constexpr int kCols = kMaxB2 / kCluster;    // stage-L columns per CTA
constexpr int kRow = kD + 8;                // padded row of 136 halves: ldmatrix rows hit distinct banks
static_assert(kProducerWarps * 16 == kMaxB2 && kConsumerWarps == kCols && kMaxB1 == 32, "warp roles");

// Shared memory (byte offsets). The query, key and value rows ([j or l][d], 64 x 128 halves) use the
// canonical 128-byte-swizzled K-major layout of wgmma (CuTe's Layout_K_SW128_Atom tiled to 64 x 128):
// two 8 KB blocks of 64 features, rows of 128 B, 16-byte chunk c of row r stored at chunk c ^ (r % 8).
// ldmatrix reads the same layout without bank conflicts.
constexpr int kRowBufBytes = kMaxB2 * kD * 2;
constexpr int kRxBytes = kCols * kCluster * kRow * 2;     // one exchange buffer [u][kk][d]
constexpr int kOffQl = 0;                                 // stage-L queries [u][i][d]
constexpr int kOffQ = kOffQl + kCols * kMaxB1 * kRow * 2;
constexpr int kOffKV = kOffQ + kRowBufBytes;              // [buffer][K, V]
constexpr int kOffRxAl = kOffKV + 4 * kRowBufBytes;       // [buffer]
constexpr int kOffRxY = kOffRxAl + 2 * kRxBytes;
constexpr int kOffRxCl = kOffRxY + 2 * kRxBytes;          // fp32 [buffer][u][kk]
constexpr int kOffStage = kOffRxCl + 2 * kCols * kCluster * 4;  // per producer warp: 16 rows x 64 features
constexpr int kStageBytes = 16 * 64 * 2;                         // 128-byte rows, chunks swizzled by row
constexpr int kOffBar = kOffStage + kProducerWarps * kStageBytes;  // mbarriers full[2], empty[2]
constexpr int kSmemBytes = kOffBar + 4 * 8 + 1024;  // + alignment of the swizzled buffers to 1 KB
static_assert(kOffQ % 1024 == 0 && kOffKV % 1024 == 0, "swizzled row buffers start on 1 KB boundaries");
static_assert(kOffStage % 16 == 0, "stmatrix rows are 16-byte aligned");

// Address of the 8 halves at (row, col), col a multiple of 8, in a swizzled row buffer.
template <typename T> __device__ __forceinline__ T* row_chunk(T* buf, int row, int col) {
  return reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(buf) + (col >> 6) * 8192 + row * 128 +
                              ((((col & 63) >> 3) ^ (row & 7)) << 4));
}
template <typename T> __device__ __forceinline__ const T* row_chunk(const T* buf, int row, int col) {
  return row_chunk(const_cast<T*>(buf), row, col);
}

struct FwdParams : AttnDims {
  const void* q;
  const void* k;
  const void* v;
  void* z;      // [B, A, b1, b2, nh, d] contiguous
  float* lse;   // [B, A, b1, b2, nh] contiguous, natural log
};

// --- synchronisation: cluster barrier, producer named barrier, mbarriers with cluster-scope release/acquire
__device__ __forceinline__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void producer_barrier() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(kProducerThreads) : "memory");
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// The address of the same shared-memory location in CTA `cta` of the cluster (shared::cluster window).
__device__ __forceinline__ uint32_t map_cta(uint32_t local, uint32_t cta) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(cta));
  return remote;
}
// Arrive on the barrier at `remote_bar`. Relaxed: the only ordering it carries is that of the reads of the
// exchange buffer before it, and those have landed in registers that earlier matrix products consumed.
// (A release arrive at cluster scope compiles to MEMBAR.ALL.GPU, measured at 48 % of the stalls.)
__device__ __forceinline__ void mbar_arrive_remote(uint32_t remote_bar) {
  asm volatile("mbarrier.arrive.relaxed.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(remote_bar) : "memory");
}
// Count `bytes` more of asynchronous stores into this phase, and arrive.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
// Stores into another CTA's shared memory that complete bytes on its barrier `remote_bar`: once the phase
// completes, the data are visible to the threads that waited on it.
__device__ __forceinline__ void st_async(uint32_t remote, uint4 v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(
                   remote),
               "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(remote_bar)
               : "memory");
}
__device__ __forceinline__ void st_async(uint32_t remote, float v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n" ::"r"(remote),
               "r"(__float_as_uint(v)), "r"(remote_bar)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n\t.reg .pred done;\n\t"
      "WAIT:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
      "@!done bra WAIT;\n\t}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

using gmma::fence_to_async_proxy;

// kWgmma: stage R on warpgroup MMA where the target has it (sm_90a); false runs the portable mma.sync path
// (what sm_100a and sm_120a run) on every target, so that path is tested on an H100 too.
template <typename T, bool kWgmma>
__global__ void __cluster_dims__(kCluster, 1, 1) __launch_bounds__(kThreads, 1)
    monarch_fwd_cluster_kernel(const FwdParams p) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* const smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  T* const s_ql = reinterpret_cast<T*>(smem + kOffQl);
  T* const s_q = reinterpret_cast<T*>(smem + kOffQ);
  T* const s_kv = reinterpret_cast<T*>(smem + kOffKV);  // K of buffer b at 2b, V at 2b + 1 (row buffers)
  T* const rx_al = reinterpret_cast<T*>(smem + kOffRxAl);
  T* const rx_y = reinterpret_cast<T*>(smem + kOffRxY);
  float* const rx_cl = reinterpret_cast<float*>(smem + kOffRxCl);
  uint64_t* const full = reinterpret_cast<uint64_t*>(smem + kOffBar);
  uint64_t* const empty = full + 2;
  constexpr int kRowBuf = kMaxB2 * kD, kRx = kCols * kCluster * kRow;  // in halves

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int a = blockIdx.x / kCluster, h = blockIdx.y, bb = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tig = lane & 3;
  const int b1 = p.b1, b2 = p.b2;
  const int n_sub = (b1 + kCluster - 1) / kCluster;
  const int f_end = visible_kv_tiles(a, p.n_kv_tiles, p.causal_block_tiles);
  const int total = f_end * n_sub;
  const T* const q = static_cast<const T*>(p.q);
  const T* const kk = static_cast<const T*>(p.k);
  const T* const vv = static_cast<const T*>(p.v);
  const int64_t q_base = bb * p.sq[0] + a * p.sq[1] + h * p.sq[4];

  // --- prologue: zero the pads and exchange buffers, load the stage-L queries, set up the barriers
  const uint4 zero4 = make_uint4(0, 0, 0, 0);
  for (int c = tid; c < kCols * kMaxB1 * 16; c += kThreads) {  // 16 chunks of 8 halves per row
    const int row = c >> 4, ch = c & 15, u = row / kMaxB1, i = row % kMaxB1, j = rank + kCluster * u;
    T* dst = s_ql + row * kRow + ch * 8;
    if (i < b1 && j < b2)
      cp16(dst, q + q_base + i * p.sq[2] + j * p.sq[3] + ch * 8);
    else
      *reinterpret_cast<uint4*>(dst) = zero4;
  }
  for (int c = tid; c < 5 * (kMaxB2 - b2) * 16; c += kThreads) {  // rows j, l >= b2 of Q, K, V stay 0
    const int which = c / ((kMaxB2 - b2) * 16), rem = c % ((kMaxB2 - b2) * 16);
    T* buf = which == 0 ? s_q : s_kv + (which - 1) * kRowBuf;
    *reinterpret_cast<uint4*>(row_chunk(buf, b2 + (rem >> 4), (rem & 15) * 8)) = zero4;
  }
  for (int c = tid; c < 2 * kRx / 8; c += kThreads) {
    reinterpret_cast<uint4*>(rx_al)[c] = zero4;
    reinterpret_cast<uint4*>(rx_y)[c] = zero4;
  }
  for (int c = tid; c < 2 * kCols * kCluster; c += kThreads) rx_cl[c] = 0.f;
  // bytes that arrive in this CTA's exchange buffer in one sub-step: for each producer CTA with a key
  // row, aL and Y of d halves plus one fp32 cL per owned column
  const int n_cols = rank < b2 ? (b2 - rank + kCluster - 1) / kCluster : 0;
  auto rx_bytes = [&](int sub) {  // sub-step index s = step % n_sub
    const int rows = min(kCluster, b1 - sub * kCluster);
    return uint32_t(rows * n_cols * (2 * kD * int(sizeof(T)) + 4));
  };
  if (tid == 0) {
    mbar_init(&full[0], 1);  // the one arrival: this CTA's expect_tx; the rest is transaction bytes
    mbar_init(&full[1], 1);
    // consumers of CTAs that own no column (b2 < 8) stay out: their "full" barriers expect no bytes, so
    // they would run ahead and arrive on later phases of the "empty" barriers
    const uint32_t owners = uint32_t(min(kCluster, b2));
    mbar_init(&empty[0], owners * kConsumerWarps);
    mbar_init(&empty[1], owners * kConsumerWarps);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    for (int step = 0; step < min(total, 2); ++step) mbar_arrive_expect_tx(&full[step], rx_bytes(step % n_sub));
  }

  // cp.async of one sub-step's key and value rows (into buffer step % 2) or query row, by the producers.
  // Producer thread t copies 16-byte chunk t % 16 of rows t / 16 + 8 i: its swizzled destination moves by
  // 1 KB per i and its source by 8 rows, so the per-step address arithmetic is two pointer bumps.
  const int ld_row = (tid >> 4) & 7, ld_ch = tid & 15;
  const int ld_dst = (ld_ch >> 3) * 8192 + ld_row * 128 + (((ld_ch & 7) ^ ld_row) << 4);
  // per-thread source offsets and 8-row strides, kept in registers (re-reading the strides from the
  // parameter bank cost ~150 instructions per sub-step)
  const int64_t k_off = bb * p.sk[0] + h * p.sk[4] + ld_row * p.sk[3] + ld_ch * 8, k_step = 8 * p.sk[3];
  const int64_t v_off = bb * p.sv[0] + h * p.sv[4] + ld_row * p.sv[3] + ld_ch * 8, v_step = 8 * p.sv[3];
  const int64_t q_off = ld_row * p.sq[3] + ld_ch * 8, q_step = 8 * p.sq[3];
  auto load_rows = [&](unsigned char* dst, const T* src, int64_t step) {
#pragma unroll
    for (int i = 0; i < kMaxB2 / 8; ++i, src += step)
      if (ld_row + 8 * i < b2) cp16(dst + ld_dst + i * 1024, src);
  };
  // (the sub-step's key tile f and index s are counted, not divided out of the step: runtime integer
  // division cost the producers ~40 instructions each time)
  auto load_kv = [&](int f, int sub, int buf) {
    const int krow = sub * kCluster + rank;
    if (krow >= b1) return;
    unsigned char* dk = reinterpret_cast<unsigned char*>(s_kv + 2 * buf * kRowBuf);
    load_rows(dk, kk + (f * p.sk[1] + krow * p.sk[2] + k_off), k_step);
    load_rows(dk + kRowBufBytes, vv + (f * p.sv[1] + krow * p.sv[2] + v_off), v_step);
  };
  auto load_q = [&](int sub) {
    const int krow = sub * kCluster + rank;
    if (krow >= b1) return;
    load_rows(reinterpret_cast<unsigned char*>(s_q), q + (q_base + krow * p.sq[2] + q_off), q_step);
  };
  if (warp < kProducerWarps && total > 0) {
    load_q(0);
    load_kv(0, 0, 0);
  }
  cute::cp_async_fence();
  cute::cp_async_wait<0>();
  fence_to_async_proxy();
  __syncthreads();
  cluster_barrier();  // every CTA of the cluster runs, has zeroed its buffers and set up its barriers

  if (warp < kProducerWarps) {
    // ================= producers: stage R for this CTA's key row, 16 columns j per warp =============
    const int mt = warp;
    unsigned char* const stage = smem + kOffStage + mt * kStageBytes;
    // each lane sends half of one row j of the warp: features 32 (lane % 2) .. + 32 of each part
    const int push_row = lane >> 1, push_j = 16 * mt + push_row;
    // shared::cluster address of the owner CTA's smem base (linear within it) and of the row's slot there
    const uint32_t push_remote = map_cta(smem_addr(smem), uint32_t(push_j % kCluster));
    const uint32_t push_offset = uint32_t((((push_j / kCluster) * kCluster + rank) * kRow + 32 * (lane & 1)) * sizeof(T));
    int sub = 0, f_next = n_sub > 1 ? 0 : 1, sub_next = n_sub > 1 ? 1 : 0;  // of this step and the next
    for (int step = 0; step < total; ++step) {
      const int buf = step & 1;
      const int krow = sub * kCluster + rank;
      const bool has_row = krow < b1;
      const T* s_k = s_kv + 2 * buf * kRowBuf;
      const T* s_v = s_k + kRowBuf;
      if (step + 1 < total) load_kv(f_next, sub_next, buf ^ 1);  // its last reader was the previous step
      cute::cp_async_fence();
      // A CTA without a key row this sub-step computes on stale (finite) rows and pushes nothing: no
      // shuffle sits in a divergent branch.
      float sacc[8][4] = {};
      {  // S[j, l] = <Q[k, j], K[k, l]>, rows 16 mt + (g, g + 8), all 64 columns l
#ifdef MONARCHRT_WGMMA
        if constexpr (kWgmma) {
        // one m64n64k16 per 16 features, the producer warpgroup's 64 rows j at once
        float* d = &sacc[0][0];
        gmma::fence_operands<32>(d);
        cute::warpgroup_arrive();
#pragma unroll
        for (int kk = 0; kk < kD / 16; ++kk) {
          const uint32_t off = (kk >> 2) * 8192 + (kk & 3) * 32;
          gmma::mma_ss<typename gmma::SS<T, 64>::op>(gmma::desc(smem_addr(s_q) + off, 1), gmma::desc(smem_addr(s_k) + off, 1), d,
                                          kk > 0, std::make_index_sequence<32>{});
        }
        cute::warpgroup_commit_batch();
        cute::warpgroup_wait<0>();
        gmma::fence_operands<32>(d);
        } else
#endif
        {
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks) {
          uint32_t af[4];
          ldsm_x4(af, row_chunk(s_q, 16 * mt + a_row(lane), 16 * ks + a_col(lane)));
#pragma unroll
          for (int np = 0; np < 4; ++np) {
            uint32_t bf[4];
            ldsm_x4(bf, row_chunk(s_k, 16 * np + bn_row(lane), 16 * ks + bn_col(lane)));
            mma16<T>(sacc[2 * np], af, bf[0], bf[1]);
            mma16<T>(sacc[2 * np + 1], af, bf[2], bf[3]);
          }
        }
        }
      }
      producer_barrier();  // every producer has read the query row
      if (step + 1 < total) load_q(sub_next);
      cute::cp_async_fence();
      if (step >= 2) mbar_wait(&empty[buf], ((step >> 1) - 1) & 1);  // consumers are done with this buffer
      {
        // softmax over l (log2 domain) in registers: this thread holds rows g and g + 8, columns 8n + 2tig (+1)
        // masked columns (l >= b2) get a finite -1e30: their p is exactly 0 and p * x stays 0 (not NaN).
        // The maximum is taken on the raw dot products (scale > 0), x = scale * (s - max) in one FFMA.
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (8 * n + 2 * tig + (e & 1) >= b2) sacc[n][e] = -1e30f;
            mx[e >> 1] = fmaxf(mx[e >> 1], sacc[n][e]);
          }
        float sum[2] = {0.f, 0.f}, sum_px[2] = {0.f, 0.f};  // sum p and sum p x, x relative to the maximum
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          mx[r] = quad_max(mx[r]);
          mx[r] *= p.scale_log2;
        }
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e >> 1;
            const float x = fmaf(sacc[n][e], p.scale_log2, -mx[r]);
            const float pe = fast_exp2(x);
            sum[r] += pe;
            sum_px[r] = fmaf(pe, x, sum_px[r]);
            sacc[n][e] = pe;
          }
        float inv_l[2], cl[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          sum[r] = quad_sum(sum[r]);
          sum_px[r] = quad_sum(sum_px[r]);
          inv_l[r] = 1.f / sum[r];
          cl[r] = sum_px[r] * inv_l[r] - log2f(sum[r]);  // cL * log2(e) = sum_l R log2 R
        }
        // R = P / l as the A operand of R K and R V, one k16 step (16 columns l) per entry
        uint32_t pf[4][4];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          pf[n >> 1][(n & 1) * 2] = pack2<T>(sacc[n][0] * inv_l[0], sacc[n][1] * inv_l[0]);
          pf[n >> 1][(n & 1) * 2 + 1] = pack2<T>(sacc[n][2] * inv_l[1], sacc[n][3] * inv_l[1]);
        }
        // aL = R K and Y = R V, 64 features (a part) at a time: part = 2 * (0 for aL, 1 for Y) + feature half
        auto push_part = [&](int part, float (&acc)[8][4]) {
          // the warp's 16 rows x 64 features go through its staging buffer (stmatrix, then 16-byte reads)
          // so that each lane sends whole 16-byte pieces of one row to the CTA that owns it
#pragma unroll
          for (int qq = 0; qq < 4; ++qq) {
            const int mi = lane >> 3, row = (mi & 1) * 8 + (lane & 7), n = 2 * qq + (mi >> 1);
            stsm_x4(stage + row * 128 + ((n ^ (row & 7)) << 4), pack2<T>(acc[2 * qq][0], acc[2 * qq][1]),
                    pack2<T>(acc[2 * qq][2], acc[2 * qq][3]), pack2<T>(acc[2 * qq + 1][0], acc[2 * qq + 1][1]),
                    pack2<T>(acc[2 * qq + 1][2], acc[2 * qq + 1][3]));
          }
          __syncwarp();
          uint4 piece[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int c = (lane & 1) * 4 + i;
            piece[i] = *reinterpret_cast<const uint4*>(stage + push_row * 128 + ((c ^ (push_row & 7)) << 4));
          }
          __syncwarp();  // the staging buffer is free for the next part
          if (has_row && push_j < b2) {
            const uint32_t dst = push_remote + uint32_t((part >> 1 ? kOffRxY : kOffRxAl) + buf * kRxBytes) +
                                 push_offset + uint32_t(64 * (part & 1) * sizeof(T));
            const uint32_t bar = push_remote + uint32_t(kOffBar + buf * 8);
#pragma unroll
            for (int i = 0; i < 4; ++i) st_async(dst + 16 * i, piece[i], bar);
          }
        };
#ifdef MONARCHRT_WGMMA
        if constexpr (kWgmma) {
        // one m64n64k16 per 16 columns l: R from registers, K or V read MN-major (features contiguous); the
        // next part's products run while this part is pushed
        float acc[2][8][4];
        auto issue_part = [&](int part) {
          float* d = &acc[part & 1][0][0];
          const uint32_t src = smem_addr(part >> 1 ? s_v : s_k) + (part & 1) * 8192;
          gmma::fence_operands<32>(d);
          cute::warpgroup_arrive();
#pragma unroll
          for (int ks = 0; ks < kMaxB2 / 16; ++ks)
            gmma::mma_rs<typename gmma::RS64<T>::op>(pf[ks], gmma::desc(src + ks * 2048, 0), d, ks > 0,
                                            std::make_index_sequence<32>{});
          cute::warpgroup_commit_batch();
        };
        issue_part(0);
#pragma unroll
        for (int part = 0; part < 4; ++part) {
          if (part + 1 < 4) {
            issue_part(part + 1);
            cute::warpgroup_wait<1>();
          } else {
            cute::warpgroup_wait<0>();
          }
          gmma::fence_operands<32>(&acc[part & 1][0][0]);
          push_part(part, acc[part & 1]);
        }
        } else
#endif
        {
#pragma unroll
        for (int part = 0; part < 4; ++part) {
          const T* src = part >> 1 ? s_v : s_k;
          const int dh = part & 1;
          float acc[8][4] = {};
#pragma unroll
          for (int ks = 0; ks < kMaxB2 / 16; ++ks) {
#pragma unroll
            for (int np = 0; np < 4; ++np) {
              uint32_t bf[4];
              ldsm_x4_t(bf, row_chunk(src, 16 * ks + a_row(lane), 64 * dh + 16 * np + a_col(lane)));
              mma16<T>(acc[2 * np], pf[ks], bf[0], bf[1]);
              mma16<T>(acc[2 * np + 1], pf[ks], bf[2], bf[3]);
            }
          }
          push_part(part, acc);
        }
        }
        if (has_row && tig == 0) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int j = 16 * mt + g + 8 * r;
            if (j < b2)
              st_async(map_cta(smem_addr(rx_cl + (buf * kCols + j / kCluster) * kCluster + rank), j % kCluster), cl[r],
                       map_cta(smem_addr(&full[buf]), j % kCluster));
          }
        }
      }
      cute::cp_async_wait<0>();
      fence_to_async_proxy();
      producer_barrier();  // the next step's rows are in shared memory for every producer
      sub = sub_next;
      if (++sub_next == n_sub) {
        sub_next = 0;
        ++f_next;
      }
    }
  } else if (n_cols > 0) {
    // ================= consumers: stage L for column j = rank + 8u, query rows 0..31 ===============
    const int u = warp - kProducerWarps;
    const int j = rank + kCluster * u;
    const bool active = j < b2;
    const int n_mt = b1 > 16 ? 2 : 1;
    float z_acc[2][16][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int n = 0; n < 16; ++n) z_acc[mt][n][0] = z_acc[mt][n][1] = z_acc[mt][n][2] = z_acc[mt][n][3] = 0.f;
    float m_row[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};
    float l_row[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    const T* ql = s_ql + u * kMaxB1 * kRow;
    int sub = 0, sub_ahead = 2 % n_sub;  // sub-step index of this step and of step + 2
    for (int step = 0; step < total; ++step) {
      const int buf = step & 1;
      mbar_wait(&full[buf], (step >> 1) & 1);
      if (u == 0 && lane == 0 && step + 2 < total) mbar_arrive_expect_tx(&full[buf], rx_bytes(sub_ahead));
      if (active) {
        const T* al = rx_al + buf * kRx + u * kCluster * kRow;
        const T* y = rx_y + buf * kRx + u * kCluster * kRow;
        const float* cl = rx_cl + (buf * kCols + u) * kCluster;
        // S_L[i, kk] = s <Q[i, j], aL[kk, j]> - cL[kk] for this sub-step's key rows kk = 0..7
        float sacc[2][4] = {};
#pragma unroll
        for (int ks2 = 0; ks2 < kD / 32; ++ks2) {
          uint32_t bf[4];
          ldsm_x4(bf, al + (lane & 7) * kRow + 32 * ks2 + 8 * (lane >> 3));
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            if (mt >= n_mt) break;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              uint32_t af[4];
              ldsm_x4(af, ql + (16 * mt + a_row(lane)) * kRow + 32 * ks2 + 16 * half + a_col(lane));
              mma16<T>(sacc[mt], af, bf[2 * half], bf[2 * half + 1]);
            }
          }
        }
        uint32_t pa[2][2];  // P as the A operand of the m16n8k8 product with Y
        const float cl0 = cl[2 * tig], cl1 = cl[2 * tig + 1];
        const bool ok0 = sub * kCluster + 2 * tig < b1, ok1 = sub * kCluster + 2 * tig + 1 < b1;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          if (mt >= n_mt) break;
          float x[4];
          x[0] = ok0 ? sacc[mt][0] * p.scale_log2 - cl0 : -INFINITY;
          x[1] = ok1 ? sacc[mt][1] * p.scale_log2 - cl1 : -INFINITY;
          x[2] = ok0 ? sacc[mt][2] * p.scale_log2 - cl0 : -INFINITY;
          x[3] = ok1 ? sacc[mt][3] * p.scale_log2 - cl1 : -INFINITY;
          float pr[4];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            float mx = fmaxf(x[2 * r], x[2 * r + 1]);
            mx = quad_max(mx);
            const float m_new = fmaxf(m_row[mt][r], mx);  // finite: key row kk = 0 is valid in every sub-step
            const float alpha = fast_exp2(m_row[mt][r] - m_new);  // 0 on the first sub-step (-inf)
            pr[2 * r] = fast_exp2(x[2 * r] - m_new);
            pr[2 * r + 1] = fast_exp2(x[2 * r + 1] - m_new);
            l_row[mt][r] = l_row[mt][r] * alpha + pr[2 * r] + pr[2 * r + 1];
            // the running maximum settles after a few sub-steps: rescale Z only when some row's moved
            if (__any_sync(0xffffffffu, m_new != m_row[mt][r])) {
#pragma unroll
              for (int n = 0; n < 16; ++n) {
                z_acc[mt][n][2 * r] *= alpha;
                z_acc[mt][n][2 * r + 1] *= alpha;
              }
            }
            m_row[mt][r] = m_new;
          }
          pa[mt][0] = pack2<T>(pr[0], pr[1]);
          pa[mt][1] = pack2<T>(pr[2], pr[3]);
        }
#pragma unroll
        for (int nq = 0; nq < kD / 32; ++nq) {
          uint32_t bf[4];
          ldsm_x4_t(bf, y + (lane & 7) * kRow + 32 * nq + 8 * (lane >> 3));
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            if (mt >= n_mt) break;
#pragma unroll
            for (int t = 0; t < 4; ++t) mma8<T>(z_acc[mt][4 * nq + t], pa[mt][0], pa[mt][1], bf[t]);
          }
        }
      }
      __syncwarp();
      if (lane < kCluster) mbar_arrive_remote(map_cta(smem_addr(&empty[buf]), lane));  // done with the buffer
      if (++sub == n_sub) sub = 0;
      if (++sub_ahead == n_sub) sub_ahead = 0;
    }
    // --- epilogue: Z = acc / l, lse = (m + log2 l) ln 2
    if (active) {
      T* z = static_cast<T*>(p.z);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float l = l_row[mt][r];
          l = quad_sum(l);
          const int i = 16 * mt + g + 8 * r;
          if (i >= b1) continue;
          const int64_t tok = ((int64_t(bb) * p.n_q_tiles + a) * b1 + i) * b2 + j;
          const float inv = 1.f / l;
          T* zrow = z + (tok * p.nh + h) * kD;
#pragma unroll
          for (int n = 0; n < 16; ++n)
            *reinterpret_cast<uint32_t*>(zrow + 8 * n + 2 * tig) =
                pack2<T>(z_acc[mt][n][2 * r] * inv, z_acc[mt][n][2 * r + 1] * inv);
          if (tig == 0) p.lse[tok * p.nh + h] = (m_row[mt][r] + log2f(l)) * kLn2;
        }
      }
    }
  }
  cluster_barrier();  // no CTA leaves while another may still signal its barriers
}

}  // namespace monarchrt::attention
