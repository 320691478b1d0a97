// Declarations shared by the launchers and the Python bindings. Launchers take raw pointers,
// sizes, strides and a cudaStream_t as integers, so the module needs no torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace monarchrt {

enum DType : int { kFloat16 = 0, kBFloat16 = 1 };

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

void hadamard_pow2(uintptr_t x, uintptr_t out, int64_t rows, int64_t n, int64_t x_stride, int64_t out_stride,
                   float scale, int dtype, uintptr_t stream);

}  // namespace monarchrt
