// Warpgroup MMA (wgmma, sm_90a) pieces shared by the attention kernels: CuTe's GMMA atoms per element
// type, shared-memory descriptors of the 128-byte-swizzled row buffers, issue helpers and operand fences.
//
// Row buffers ([row][feature], 16-bit elements) use the canonical 128-byte-swizzled K-major layout of
// wgmma (CuTe's Layout_K_SW128_Atom tiled to rows x features): one block of `rows * 128` bytes per 64
// features, rows of 128 B, 16-byte chunk c of row r stored at chunk c ^ (r % 8). ldmatrix and stmatrix
// read and write the same layout without bank conflicts.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

// N = 48 and 80 are CuTe's extended shapes (mma_sm90_gmma_ext.hpp)
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#include <cute/arch/mma_sm90_gmma.hpp>

// Warpgroup MMA where the target has it: sm_90a. Elsewhere the kernels that need it compile empty and
// their launchers' reasons keep them from being chosen.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MONARCHRT_WGMMA 1
#endif

namespace monarchrt::gmma {

// Byte offset of the 16-byte chunk holding features col..col+7 (col a multiple of 8) of `row` in a
// swizzled row buffer of kRows rows.
template <int kRows> __device__ __forceinline__ uint32_t swizzled(int row, int col) {
  return uint32_t((col >> 6) * (kRows * 128) + row * 128 + ((((col & 63) >> 3) ^ (row & 7)) << 4));
}

// Shared-memory writes of the generic proxy (cp.async, stores) become visible to wgmma's reads.
__device__ __forceinline__ void fence_to_async_proxy() {
#ifdef MONARCHRT_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

#ifdef MONARCHRT_WGMMA
namespace atoms = cute::SM90::GMMA;

// m64nNk16 with fp32 accumulators: SS (A and B K-major in shared memory) for N in 16..96 step 16, and
// RS (A from registers, B MN-major in shared memory) for N = 64.
template <typename T, int N> struct SS;
#define MONARCHRT_GMMA_SS(N)                                                                           \
  template <> struct SS<__nv_bfloat16, N> {                                                             \
    using op = atoms::MMA_64x##N##x16_F32BF16BF16_SS<atoms::Major::K, atoms::Major::K>;                \
  };                                                                                                    \
  template <> struct SS<__half, N> {                                                                    \
    using op = atoms::MMA_64x##N##x16_F32F16F16_SS<atoms::Major::K, atoms::Major::K>;                  \
  };
MONARCHRT_GMMA_SS(16)
MONARCHRT_GMMA_SS(32)
MONARCHRT_GMMA_SS(48)
MONARCHRT_GMMA_SS(64)
MONARCHRT_GMMA_SS(80)
MONARCHRT_GMMA_SS(96)
#undef MONARCHRT_GMMA_SS
template <typename T> struct RS64;
template <> struct RS64<__nv_bfloat16> {
  using op = atoms::MMA_64x64x16_F32BF16BF16_RS<atoms::Major::K, atoms::Major::MN>;
};
template <> struct RS64<__half> {
  using op = atoms::MMA_64x64x16_F32F16F16_RS<atoms::Major::K, atoms::Major::MN>;
};

// Descriptor of an operand slice of a swizzled row buffer (fields as CuTe's make_gmma_desc gives for this
// layout: 128-byte swizzle, 1024 B between 8-row groups; the K-major view's leading offset is unused and
// 1 by convention). K-major slice kk (16 features) of a buffer of R rows: (kk / 4) * R * 128 + (kk % 4) * 32.
// MN-major slice (feature block dh, 16 rows ks): dh * R * 128 + ks * 2048.
__device__ __forceinline__ uint64_t desc(uint32_t addr, uint32_t lbo) {
  return (uint64_t(1) << 62) | (uint64_t(1024 >> 4) << 32) | (uint64_t(lbo) << 16) | ((addr >> 4) & 0x3FFF);
}
// The descriptor of the same buffer `bytes` further on (shared-memory addresses stay below 2^18 bytes, so
// the 14-bit address field of the descriptor never carries into the next one).
__device__ __forceinline__ uint64_t advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }
template <class Op, size_t... I>
__device__ __forceinline__ void mma_ss(uint64_t a, uint64_t b, float* d, bool acc, std::index_sequence<I...>) {
  Op::fma(a, b, d[I]..., acc ? atoms::ScaleOut::One : atoms::ScaleOut::Zero);
}
template <class Op, size_t... I>
__device__ __forceinline__ void mma_rs(const uint32_t (&a)[4], uint64_t b, float* d, bool acc,
                                       std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]..., acc ? atoms::ScaleOut::One : atoms::ScaleOut::Zero);
}
// Keeps the compiler from moving accesses of an accumulator across the asynchronous MMAs that write it.
template <int kN> __device__ __forceinline__ void fence_operands(float* d) {
#pragma unroll
  for (int i = 0; i < kN; ++i) cute::warpgroup_fence_operand(d[i]);
}
#endif

}  // namespace monarchrt::gmma
