// Per-element-type pieces shared by the kernels: CuTe's SM80 MMA atoms (fp32 accumulate) and packing of
// two 16-bit values into the 32-bit registers those atoms take.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

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

}  // namespace monarchrt
