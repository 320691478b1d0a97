// Issue rate of narrow warpgroup MMAs on sm_90a: wgmma m64nNk16 (bf16 in, fp32 accumulate) for
// N = 8..128, A from shared memory (SS) or registers (RS), one or two warpgroups per CTA, 2 to 8
// independent accumulators per warpgroup; and the warp-level mma.sync m16n8k16 beside them.
// The question it answers (docs/attention-kernels.md, decomposition (d)): at what fraction of the
// tensor peak do N = 8 and N = 16 products run, the shapes a column-owning fused forward issues.
// Throughput only: the operands are whatever shared memory holds; the result is kept so the
// compiler cannot drop the loop.
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I<cutlass>/include bench/wgmma_rate.cu -o wgmma_rate
//   ./wgmma_rate   (one line per shape: TFLOP/s and share of the 64x128 SS rate)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/arch/mma_sm90_gmma.hpp>
#include <utility>

namespace gmma = cute::SM90::GMMA;
using gmma::Major;

template <int N> struct Ops;
#define MONARCHRT_OPS(N)                                                                   \
  template <> struct Ops<N> {                                                              \
    using ss = gmma::MMA_64x##N##x16_F32BF16BF16_SS<Major::K, Major::K>;                   \
    using rs = gmma::MMA_64x##N##x16_F32BF16BF16_RS<Major::K, Major::K>;                   \
  };
MONARCHRT_OPS(8)
MONARCHRT_OPS(16)
MONARCHRT_OPS(32)
MONARCHRT_OPS(64)
MONARCHRT_OPS(128)
#undef MONARCHRT_OPS

// K-major, 128-byte swizzle, 1024 B between 8-row groups (the layout csrc/attention uses).
__device__ __forceinline__ uint64_t desc(uint32_t addr) {
  return (uint64_t(1) << 62) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 16) | ((addr >> 4) & 0x3FFF);
}

template <class Op, size_t... I>
__device__ __forceinline__ void mma_ss(uint64_t a, uint64_t b, float* d, gmma::ScaleOut acc, std::index_sequence<I...>) {
  Op::fma(a, b, d[I]..., acc);
}
template <class Op, size_t... I>
__device__ __forceinline__ void mma_rs(const uint32_t (&a)[4], uint64_t b, float* d, gmma::ScaleOut acc,
                                       std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]..., acc);
}
template <int K>
__device__ __forceinline__ void fence(float (&d)[K]) {
#pragma unroll
  for (int i = 0; i < K; ++i) cute::warpgroup_fence_operand(d[i]);
}

// kChains: independent accumulators per warpgroup, so one MMA's latency can overlap the next (a
// narrow MMA may be bound by the latency of its accumulator chain, not by its issue rate).
template <int N, bool RS, int kChains>
__global__ void __launch_bounds__(256) rate_kernel(int iters, float* sink) {
  extern __shared__ __align__(1024) unsigned char smem[];
  constexpr int kAcc = N / 2;  // fp32 accumulators per thread of a 64 x N tile
  float d[kChains][kAcc];  // no initial value: the first MMA overwrites (ScaleOut::Zero)
  uint32_t a_regs[4] = {threadIdx.x, threadIdx.x * 3u, threadIdx.x * 5u, threadIdx.x * 7u};
  uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint64_t a = desc(base), b = desc(base + 16384);
  for (int it = 0; it < iters; ++it) {
    const gmma::ScaleOut acc = it > 0 ? gmma::ScaleOut::One : gmma::ScaleOut::Zero;
#pragma unroll
    for (int c = 0; c < kChains; ++c) fence(d[c]);
    cute::warpgroup_arrive();
#pragma unroll
    for (int c = 0; c < kChains; ++c) {
      if constexpr (RS)
        mma_rs<typename Ops<N>::rs>(a_regs, b, d[c], acc, std::make_index_sequence<kAcc>{});
      else
        mma_ss<typename Ops<N>::ss>(a, b, d[c], acc, std::make_index_sequence<kAcc>{});
    }
    cute::warpgroup_commit_batch();
#pragma unroll
    for (int c = 0; c < kChains; ++c) fence(d[c]);
  }
  cute::warpgroup_wait<0>();
#pragma unroll
  for (int c = 0; c < kChains; ++c) fence(d[c]);
  float s = 0.f;
  for (int c = 0; c < kChains; ++c)
    for (int i = 0; i < kAcc; ++i) s += d[c][i];
  if (s == 12345.f) sink[threadIdx.x] = s;
}

// Warp-level m16n8k16 (bf16 in, fp32 accumulate), operands in registers: kChains accumulators per warp.
template <int kChains>
__global__ void __launch_bounds__(256) mma_sync_kernel(int iters, float* sink) {
  float d[kChains][4] = {};
  const uint32_t a0 = threadIdx.x, a1 = threadIdx.x * 3u, a2 = threadIdx.x * 5u, a3 = threadIdx.x * 7u;
  const uint32_t b0 = threadIdx.x * 11u, b1 = threadIdx.x * 13u;
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c)
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(d[c][0]), "+f"(d[c][1]), "+f"(d[c][2]), "+f"(d[c][3])
          : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  float s = 0.f;
  for (int c = 0; c < kChains; ++c)
    for (int i = 0; i < 4; ++i) s += d[c][i];
  if (s == 12345.f) sink[threadIdx.x] = s;
}

template <class Kernel>
double time_ms(Kernel kernel, int blocks, int threads, int smem, int iters, float* sink) {
  kernel<<<blocks, threads, smem>>>(iters, sink);  // warm-up
  cudaEvent_t t0, t1;
  cudaEventCreate(&t0);
  cudaEventCreate(&t1);
  cudaEventRecord(t0);
  kernel<<<blocks, threads, smem>>>(iters, sink);
  cudaEventRecord(t1);
  cudaEventSynchronize(t1);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, t0, t1);
  return ms;
}

template <int kChains>
double mma_sync_tflops(int warps, int sms, float* sink) {
  const int iters = 4096, blocks = sms * 2;
  double ms = time_ms(mma_sync_kernel<kChains>, blocks, 32 * warps, 0, iters, sink);
  return double(blocks) * warps * iters * kChains * 2.0 * 16 * 8 * 16 / (ms * 1e-3) / 1e12;
}

template <int N, bool RS, int kChains = 2>
double tflops(int warpgroups, int sms, float* sink) {
  constexpr int kSmem = 32768;
  auto kernel = rate_kernel<N, RS, kChains>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  const int iters = 4096, blocks = sms * 2;
  double ms = time_ms(kernel, blocks, 128 * warpgroups, kSmem, iters, sink);
  double flop = double(blocks) * warpgroups * iters * kChains * 2.0 * 64 * N * 16;
  return flop / (ms * 1e-3) / 1e12;
}

template <int N, int kChains = 2>
void row(int sms, float* sink, double ref) {
  for (int wg = 1; wg <= 2; ++wg) {
    double ss = tflops<N, false, kChains>(wg, sms, sink), rs = tflops<N, true, kChains>(wg, sms, sink);
    printf("{\"n\": %d, \"warpgroups\": %d, \"chains\": %d, \"ss_tflops\": %.1f, \"rs_tflops\": %.1f, "
           "\"ss_share\": %.3f, \"rs_share\": %.3f}\n", N, wg, kChains, ss, rs, ss / ref, rs / ref);
  }
}

template <int kChains>
void mma_sync_row(int sms, float* sink, double ref) {
  for (int warps : {4, 8}) {
    double t = mma_sync_tflops<kChains>(warps, sms, sink);
    printf("{\"mma_sync\": \"m16n8k16\", \"warps\": %d, \"chains\": %d, \"tflops\": %.1f, \"share\": %.3f}\n",
           warps, kChains, t, t / ref);
  }
}

int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  float* sink = nullptr;
  cudaMalloc(&sink, 256 * sizeof(float));
  double ref = tflops<128, false>(2, sms, sink);
  printf("{\"reference\": \"m64n128k16 SS, 2 warpgroups\", \"tflops\": %.1f, \"sms\": %d}\n", ref, sms);
  row<8>(sms, sink, ref);
  row<8, 4>(sms, sink, ref);
  row<8, 8>(sms, sink, ref);
  row<16>(sms, sink, ref);
  row<16, 4>(sms, sink, ref);
  row<16, 8>(sms, sink, ref);
  row<32>(sms, sink, ref);
  row<64>(sms, sink, ref);
  row<128>(sms, sink, ref);
  mma_sync_row<1>(sms, sink, ref);
  mma_sync_row<2>(sms, sink, ref);
  mma_sync_row<4>(sms, sink, ref);
  mma_sync_row<8>(sms, sink, ref);
  cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    printf("{\"error\": \"%s\"}\n", cudaGetErrorString(err));
    return 1;
  }
  return 0;
}
