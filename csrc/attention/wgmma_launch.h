// What the host launchers of the warpgroup-MMA kernels (stage_r_launch.cu, stage_l_launch.cu) share: one
// launch of a one-warpgroup kernel at two CTAs per SM, and the dispatch of a tile width to its compile-time
// padding.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>

#include "../launch.h"
#include "stage_r.cuh"

namespace monarchrt::wgmma_launch {

// One launch of kKernel (two CTAs per SM of kBytes each) on `grid`. The shared-memory attribute is set
// once per kernel and device (it belongs to the device's context): the kernel is a template argument so
// that each has its own record (a function-pointer argument would share one between kernels of the same
// type), and the record holds a bit per device.
template <auto kKernel, int kBytes, class Params>
void launch(const Params& p, dim3 grid, cudaStream_t stream, const char* name) {
  static_assert(2 * kBytes <= 227 * 1024, "two CTAs per SM");
  static std::atomic<uint64_t> devices_set{0};
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (!(devices_set.load(std::memory_order_relaxed) & bit)) {  // (devices past 64 set it every launch)
    check(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes),
          (std::string(name) + " shared memory attribute").c_str());
    devices_set.fetch_or(bit, std::memory_order_relaxed);
  }
  kKernel<<<grid, attention::kStageRThreads, kBytes, stream>>>(p);
  check(cudaGetLastError(), (std::string(name) + " launch").c_str());
}

// f(T{}) with T the 16-bit element type of a dtype code that head_dim_dtype_reason allowed: bf16 for
// kBFloat16, else fp16.
template <class F> void with_dtype(int dtype, F&& f) {
  if (dtype == kBFloat16)
    f(__nv_bfloat16{});
  else
    f(__half{});
}

// "" or why a warpgroup-MMA attention kernel (`what`, e.g. "stage R") cannot take this head_dim or dtype code.
inline std::string head_dim_dtype_reason(int64_t head_dim, int dtype, const std::string& what) {
  bool head_dim_ok = false;
  for (int d : limits::kStageRHeadDims) head_dim_ok |= head_dim == d;
  if (!head_dim_ok) return "head_dim=" + std::to_string(head_dim) + " (" + what + " on wgmma takes 64 or 128)";
  if (dtype != kBFloat16 && dtype != kFloat16)
    return "dtype code " + std::to_string(dtype) + " is not fp16 (0) or bf16 (1)";
  return "";
}

// f(head_dim, padded) with both as compile-time constants: padded is `width` (b2 for stage R, b1 for stage
// L) rounded up to 16, at most 96.
template <class F> auto with_tile(int64_t width, int64_t head_dim, F&& f) {
  auto per_d = [&](auto d) {
    switch ((width + 15) / 16) {
      case 1: return f(d, std::integral_constant<int, 16>{});
      case 2: return f(d, std::integral_constant<int, 32>{});
      case 3: return f(d, std::integral_constant<int, 48>{});
      case 4: return f(d, std::integral_constant<int, 64>{});
      case 5: return f(d, std::integral_constant<int, 80>{});
      default: return f(d, std::integral_constant<int, 96>{});
    }
  };
  return head_dim == 64 ? per_d(std::integral_constant<int, 64>{}) : per_d(std::integral_constant<int, 128>{});
}

}  // namespace monarchrt::wgmma_launch
