// Host launcher of the Hadamard kernel: pointers, sizes, strides and a stream; no torch headers.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "hadamard_sm80.cuh"
#include "../launch.h"

namespace monarchrt {

namespace {
constexpr int kThreads = 128;
constexpr int kSmemTarget = 16 * 1024;  // rows per block fill ~16 KB: several blocks per SM

template <typename T>
void launch(const void* x, void* out, int64_t rows, int log2n, int64_t x_stride, int64_t out_stride, float scale,
            cudaStream_t stream) {
  const int n = 1 << log2n;
  const int rows_per_block = n * int(sizeof(T)) >= kSmemTarget ? 1 : kSmemTarget / (n * int(sizeof(T)));
  const size_t smem = size_t(rows_per_block) * n * sizeof(T);
  auto kernel = hadamard_pow2_kernel<T>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), "smem attribute");
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  kernel<<<dim3(unsigned(blocks)), kThreads, smem, stream>>>(static_cast<const T*>(x), static_cast<T*>(out), rows,
                                                             log2n, x_stride, out_stride, scale, rows_per_block);
  check(cudaGetLastError(), "hadamard_pow2_kernel launch");
}
}  // namespace

void hadamard_pow2(uintptr_t x, uintptr_t out, int64_t rows, int64_t n, int64_t x_stride, int64_t out_stride,
                   float scale, int dtype, uintptr_t stream) {
  int log2n = 0;
  while ((int64_t(1) << log2n) < n) ++log2n;
  if ((int64_t(1) << log2n) != n || n < 256 || n > 32768)
    throw std::invalid_argument("hadamard_pow2: n=" + std::to_string(n) + " must be a power of two in [256, 32768]");
  if (x % 16 || out % 16 || x_stride % 8 || out_stride % 8)
    throw std::invalid_argument("hadamard_pow2: pointers must be 16-byte aligned and row strides multiples of 8");
  if (rows <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == kBFloat16)
    launch<__nv_bfloat16>(reinterpret_cast<const void*>(x), reinterpret_cast<void*>(out), rows, log2n, x_stride,
                          out_stride, scale, s);
  else if (dtype == kFloat16)
    launch<__half>(reinterpret_cast<const void*>(x), reinterpret_cast<void*>(out), rows, log2n, x_stride, out_stride,
                   scale, s);
  else
    throw std::invalid_argument("hadamard_pow2: dtype code " + std::to_string(dtype) + " is not fp16 (0) or bf16 (1)");
}

}  // namespace monarchrt
