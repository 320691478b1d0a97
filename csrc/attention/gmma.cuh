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

#include "../warp_atoms.cuh"

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
// The same for 16-bit A fragments in registers (an RS product's): before the arrive that starts the
// products that read them (their writes done), and after the wait (kept until then).
template <int kK> __device__ __forceinline__ void fence_fragments(uint32_t (&a)[kK][4]) {
#pragma unroll
  for (int ks = 0; ks < kK; ++ks)
#pragma unroll
    for (int i = 0; i < 4; ++i) cute::warpgroup_fence_operand(a[ks][i]);
}

// m64nNk16, fp32 accumulators, both operands MN-major in shared memory: the products whose K is a block's
// 64 rows (A a row buffer read transposed, B a [row][column] buffer), N in 16..64.
template <typename T, int N> struct SSmn;
#define MONARCHRT_GMMA_SS_MN(N)                                                                        \
  template <> struct SSmn<__nv_bfloat16, N> {                                                          \
    using op = atoms::MMA_64x##N##x16_F32BF16BF16_SS<atoms::Major::MN, atoms::Major::MN>;              \
  };                                                                                                   \
  template <> struct SSmn<__half, N> {                                                                 \
    using op = atoms::MMA_64x##N##x16_F32F16F16_SS<atoms::Major::MN, atoms::Major::MN>;                \
  };
MONARCHRT_GMMA_SS_MN(16)
MONARCHRT_GMMA_SS_MN(32)
MONARCHRT_GMMA_SS_MN(48)
MONARCHRT_GMMA_SS_MN(64)
#undef MONARCHRT_GMMA_SS_MN

// d (+)= A B^T over K = kD features: A a swizzled row buffer of kRowsA rows (M = 64 of them from `a` on),
// B one of kN rows (N = kN), both K-major.
template <typename T, int kD, int kN, int kRowsA>
__device__ __forceinline__ void mma_over_features(uint64_t a, uint64_t b, float* d, bool acc) {
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk)
    mma_ss<typename SS<T, kN>::op>(advance(a, (kk >> 2) * kRowsA * 128 + (kk & 3) * 32),
                                   advance(b, (kk >> 2) * kN * 128 + (kk & 3) * 32), d, acc || kk > 0,
                                   std::make_index_sequence<kN / 2>{});
}
// d += A^T B over K = 64 rows: A a 64-row buffer read MN-major, its features 64 dh.. 64 dh + 63 as M; B a
// [row][column] buffer (store_accumulator_rows: 64-column blocks of 64 rows of 128 bytes), its kN columns
// as N. Past 64 columns the product is an N = 64 one on the first block and an N = kN - 64 one on the
// second: an m64n{kN} accumulator's registers are an m64n64 one's followed by the rest's.
template <typename T, int kN>
__device__ __forceinline__ void mma_over_rows(uint64_t a, uint64_t b, float* d, int dh) {
  constexpr int kFirst = kN < 64 ? kN : 64;
#pragma unroll
  for (int ks = 0; ks < 4; ++ks)
    mma_ss<typename SSmn<T, kFirst>::op>(advance(a, dh * 64 * 128 + ks * 2048), advance(b, ks * 2048), d, true,
                                         std::make_index_sequence<kFirst / 2>{});
  if constexpr (kN > 64) {
    static_assert(kN <= 128, "two column blocks");
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
      mma_ss<typename SSmn<T, kN - 64>::op>(advance(a, dh * 64 * 128 + ks * 2048), advance(b, 64 * 128 + ks * 2048),
                                            d + 32, true, std::make_index_sequence<(kN - 64) / 2>{});
  }
}
// d (+)= A B over K = kK: A 16-bit fragments in registers (one [4] per 16 of K, as an m64nKk16
// accumulator packs: accumulator_fragments), B a swizzled row buffer of kRowsB rows read MN-major, its
// features 64 dh.. 64 dh + 63 as N.
template <typename T, int kK, int kRowsB>
__device__ __forceinline__ void mma_from_registers(const uint32_t (&a)[kK / 16][4], uint64_t b, float* d, int dh,
                                                   bool acc) {
#pragma unroll
  for (int ks = 0; ks < kK / 16; ++ks)
    mma_rs<typename RS64<T>::op>(a[ks], advance(b, dh * kRowsB * 128 + ks * 2048), d, acc || ks > 0,
                                 std::make_index_sequence<32>{});
}
#endif

// The layout of an m64nNk16 accumulator (N / 2 fp32 registers a thread): element 4 c + e is row
// 16 warp + g + 8 (e / 2) and column 8 c + 2 tig + e % 2 (g = lane / 4, tig = lane % 4).
// As the A operand of a product with K = N: fragment [c / 2][2 (c % 2) + e / 2] packs elements 4 c + e,
// 4 c + e + 1 (e = 0, 2) in T.
template <typename T, int kN>
__device__ __forceinline__ void accumulator_fragments(const float* acc, uint32_t (&frag)[kN / 16][4]) {
#pragma unroll
  for (int c = 0; c < kN / 8; ++c) {
    frag[c >> 1][(c & 1) * 2] = pack2<T>(acc[4 * c], acc[4 * c + 1]);
    frag[c >> 1][(c & 1) * 2 + 1] = pack2<T>(acc[4 * c + 2], acc[4 * c + 3]);
  }
}
// The warp's 16 rows of an m64nNk16 accumulator into a [row][column] buffer of 64 rows: 64-column blocks
// of 64 rows of 128 bytes (16-byte chunk n of row r at n ^ (r % 8), the swizzled row layout), in T, by
// stmatrix.
template <typename T, int kN> __device__ __forceinline__ void store_accumulator_rows(const float* acc, unsigned char* buf) {
  static_assert(kN <= 128, "two column blocks");
  const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3;
#pragma unroll
  for (int qq = 0; qq < kN / 16; ++qq) {
    const int mi = lane >> 3, row = 16 * warp + (mi & 1) * 8 + (lane & 7), n = 2 * qq + (mi >> 1);
    const float* c = acc + 8 * qq;
    stsm_x4(buf + (n >> 3) * (64 * 128) + row * 128 + (((n & 7) ^ (row & 7)) << 4), pack2<T>(c[0], c[1]),
            pack2<T>(c[2], c[3]), pack2<T>(c[4], c[5]), pack2<T>(c[6], c[7]));
  }
}

}  // namespace monarchrt::gmma
