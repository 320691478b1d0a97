// Warp-level pieces shared by the kernels: CuTe's SM80 MMA atoms (fp32 accumulate) per element type,
// packing of two 16-bit values into the 32-bit registers those atoms take, ldmatrix / stmatrix / cp.async
// through CuTe's copy atoms, and the lane addressing of ldmatrix operands.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/copy_sm80.hpp>
#include <cute/arch/copy_sm90.hpp>
#include <cute/arch/mma_sm80.hpp>

namespace monarchrt {

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  using k16 = cute::SM80_16x8x16_F32BF16BF16F32_TN;
  using k8 = cute::SM80_16x8x8_F32BF16BF16F32_TN;
};
template <> struct Mma<__half> {
  using k16 = cute::SM80_16x8x16_F32F16F16F32_TN;
  using k8 = cute::SM80_16x8x8_F32F16F16F32_TN;
};

// Two values already in T, low half first.
template <typename T> __device__ __forceinline__ uint32_t pack(T lo, T hi) {
  return uint32_t(reinterpret_cast<uint16_t&>(lo)) | (uint32_t(reinterpret_cast<uint16_t&>(hi)) << 16);
}
// One float rounded to T (round to nearest).
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
// Two floats rounded to T (round to nearest), low half first.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return reinterpret_cast<uint32_t&>(v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return reinterpret_cast<uint32_t&>(v);
}

// The two T values of a packed word as floats, low half first.
template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t w);
template <> __device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t w) {
  return __bfloat1622float2(reinterpret_cast<__nv_bfloat162&>(w));
}
template <> __device__ __forceinline__ float2 unpack2<__half>(uint32_t w) {
  return __half22float2(reinterpret_cast<__half2&>(w));
}

template <typename T>
__device__ __forceinline__ void mma16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Mma<T>::k16::fma(c[0], c[1], c[2], c[3], a[0], a[1], a[2], a[3], b0, b1, c[0], c[1], c[2], c[3]);
}
template <typename T>
__device__ __forceinline__ void mma8(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  Mma<T>::k8::fma(c[0], c[1], c[2], c[3], a0, a1, b0, c[0], c[1], c[2], c[3]);
}

constexpr float kLn2 = 0.6931471805599453f;
constexpr float kLog2e = 1.4426950408889634f;

// 2^x on the MUFU unit, subnormal results flushed to 0 (exp2f adds range fix-ups around it: 3 more
// instructions per element, measured as a third of the fused forward's softmax)
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Max and sum over the 4 lanes of a quad: the threads that hold one row of an MMA accumulator.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
// Sum over the 32 lanes of a warp.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int lanes = 16; lanes >= 4; lanes >>= 1) x += __shfl_xor_sync(0xffffffffu, x, lanes);
  return quad_sum(x);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
// A hint: the 128-byte line holding `p` into L2.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  cute::SM75_U32x4_LDSM_N::copy(*reinterpret_cast<const cute::uint128_t*>(p), r[0], r[1], r[2], r[3]);
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  cute::SM75_U16x8_LDSM_T::copy(*reinterpret_cast<const cute::uint128_t*>(p), r[0], r[1], r[2], r[3]);
}
// stmatrix (sm_90 and newer): four 8x8 matrices from the accumulator-shaped registers r0..r3; the _t form
// stores each transposed (lane 8i + j gives the address of stored row j of matrix i).
__device__ __forceinline__ void stsm_x4(void* p, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  cute::SM90_U32x4_STSM_N::copy(r0, r1, r2, r3, *reinterpret_cast<cute::uint128_t*>(p));
}
__device__ __forceinline__ void stsm_x4_t(void* p, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  cute::SM90_U16x8_STSM_T::copy(r0, r1, r2, r3, *reinterpret_cast<cute::uint128_t*>(p));
}
__device__ __forceinline__ void cp16(void* smem, const void* gmem) {
  cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(gmem),
                                                        *reinterpret_cast<cute::uint128_t*>(smem));
}
// cp.async of one 4-byte word (through L1: 4-byte copies cannot bypass it)
__device__ __forceinline__ void cp4(void* smem, const void* gmem) {
  cute::SM80_CP_ASYNC_CACHEALWAYS<uint32_t>::copy(*reinterpret_cast<const uint32_t*>(gmem),
                                                 *reinterpret_cast<uint32_t*>(smem));
}

// ldmatrix addresses of one lane: rows r0 + (lane % 8) + 8 * ((lane / 8) % 2), columns c0 + 8 * (lane / 16)
// give an A operand (16 x 16, row-major) or a transposed B pair; "n-major" B pairs swap the roles.
__device__ __forceinline__ int a_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
__device__ __forceinline__ int a_col(int lane) { return (lane >> 4) * 8; }
__device__ __forceinline__ int bn_row(int lane) { return (lane & 7) + (lane >> 4) * 8; }
__device__ __forceinline__ int bn_col(int lane) { return ((lane >> 3) & 1) * 8; }

}  // namespace monarchrt
