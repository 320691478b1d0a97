// Host launcher of the Hadamard kernel: pointers, sizes and a stream; no torch headers.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "hadamard.cuh"
#include "../launch.h"
#include "../kernel_limits.h"

namespace monarchrt {

namespace {
constexpr int64_t kChunkTarget = 16384;  // elements per CTA (32 KB): several CTAs per SM overlap load and compute

// Elements per CTA: whole rows, ~kChunkTarget, a multiple of 256 (the factors' 16x16 fields), and for
// n = m * n2 an even number of 8-column blocks.
int64_t chunk_elems(int64_t n, int64_t n2) {
  const int64_t unit = n2 >= 256 ? 1 : 256 / n2;  // rows
  const int64_t rows = std::max(unit, kChunkTarget / n / unit * unit);
  return rows * n;
}

// Why n = m * 2^k is not a size of the kernel ("" when it is); log2 of 2^k in *log2n2.
std::string size_reason(int64_t n, int64_t m, int* log2n2) {
  bool order = false;
  for (int o : limits::kHadamardOrders) order = order || m == o;
  if (!order || n < 1 || n % m)
    return "hadamard: n=" + std::to_string(n) + ", m=" + std::to_string(m) + ": m must be 1, 12, 20 or 28 and divide n";
  const int64_t n2 = n / m;
  int k = 0;
  while ((int64_t(1) << k) < n2) ++k;
  if ((int64_t(1) << k) != n2 || n2 > limits::kHadamardMaxPow2)
    return "hadamard: n / m = " + std::to_string(n2) + " must be a power of two <= " +
           std::to_string(limits::kHadamardMaxPow2);
  *log2n2 = k;
  return "";
}

// log2 of n2 = n / m, a power of two, m in limits::kHadamardOrders; throws otherwise.
int log2_n2(int64_t n, int64_t m) {
  int k = 0;
  const std::string reason = size_reason(n, m, &k);
  if (!reason.empty()) throw std::invalid_argument(reason);
  return k;
}

template <typename T, int kSpecial>
void run_kernel(const hadacore::Params& p, int64_t blocks, int64_t smem, cudaStream_t s) {
  auto kernel = hadacore::hadamard_kernel<T, kSpecial>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), "smem attribute");
  kernel<<<dim3(unsigned(blocks)), hadacore::kThreads, size_t(smem), s>>>(p);
  check(cudaGetLastError(), "hadamard_kernel launch");
}

template <typename T> void run(int special, const hadacore::Params& p, int64_t blocks, int64_t smem, cudaStream_t s) {
  switch (special) {
    case hadacore::kNone: return run_kernel<T, hadacore::kNone>(p, blocks, smem, s);
    case hadacore::kScalar: return run_kernel<T, hadacore::kScalar>(p, blocks, smem, s);
    case 1: return run_kernel<T, 1>(p, blocks, smem, s);
    default: return run_kernel<T, 2>(p, blocks, smem, s);
  }
}
}  // namespace

int64_t hadamard_smem_bytes(int64_t n, int64_t m) {
  const int k = log2_n2(n, m);
  return chunk_elems(n, int64_t(1) << k) * 2;
}

std::string hadamard_reason(int64_t rows, int64_t n, int64_t m, int dtype) {
  int k = 0;
  std::string reason = size_reason(n, m, &k);
  if (!reason.empty()) return reason;
  if (dtype != kBFloat16 && dtype != kFloat16)
    return "hadamard: dtype code " + std::to_string(dtype) + " is not fp16 (0) or bf16 (1)";
  const int64_t chunk = chunk_elems(n, int64_t(1) << k);
  if (rows < 0 || (rows * n + chunk - 1) / chunk > limits::kMaxGridX)
    return "hadamard: rows=" + std::to_string(rows) + ": too many rows for one launch";
  return "";
}

void hadamard(uintptr_t x, uintptr_t out, int64_t rows, int64_t n, int64_t m, uintptr_t hm, int64_t hm_size,
              float scale, int dtype, uintptr_t stream) {
  const int k = log2_n2(n, m);
  if (x % limits::kAlignBytes || out % limits::kAlignBytes)
    throw std::invalid_argument("hadamard: x and out must be 16-byte aligned");
  const int mp = m == 1 ? 0 : m <= 16 ? 16 : 32;
  if (m > 1 && (hm == 0 || hm_size != mp))
    throw std::invalid_argument("hadamard: m=" + std::to_string(m) + " needs H_m zero-padded to " +
                                std::to_string(mp) + "x" + std::to_string(mp));
  const std::string reason = hadamard_reason(rows, n, m, dtype);
  if (!reason.empty()) throw std::invalid_argument(reason);
  if (rows <= 0) return;
  const int64_t chunk = chunk_elems(n, int64_t(1) << k), smem = chunk * 2;
  int device = 0, smem_max = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "smem limit");
  if (smem > smem_max)
    throw std::invalid_argument("hadamard: n=" + std::to_string(n) + " needs " + std::to_string(smem) +
                                " B of shared memory per block; the device has " + std::to_string(smem_max));
  const int64_t blocks = (rows * n + chunk - 1) / chunk;
  hadacore::Params p{};
  p.x = reinterpret_cast<const void*>(x);
  p.out = reinterpret_cast<void*>(out);
  p.hm = reinterpret_cast<const void*>(hm);
  p.elems = rows * n;
  p.n = int(n);
  p.m = int(m);
  p.mp = mp;
  p.log2n2 = k;
  p.chunk = int(chunk);
  p.scale = scale;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const int special = m == 1 ? hadacore::kNone : k < 3 ? hadacore::kScalar : mp / 16;
  if (dtype == kBFloat16)
    run<__nv_bfloat16>(special, p, blocks, smem, s);
  else
    run<__half>(special, p, blocks, smem, s);
}

}  // namespace monarchrt
