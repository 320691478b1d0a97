// Host launcher of the two-kernel Monarch matmul: pointers, shapes, a workspace for y1 and a stream.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../launch.h"
#include "../kernel_limits.h"
#include "block_matmul.cuh"

namespace monarchrt {

namespace {
using namespace blockmm;

template <typename T, int BL, int NT>
void launch_stage2(const Stage2Params& p, unsigned row_tiles, cudaStream_t stream) {
  auto kernel = reordered_matmul_kernel<T, BL, NT>;
  constexpr int bytes = Stage2Smem<BL, NT>::kBytes;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), "smem attribute");
  kernel<<<row_tiles * unsigned(p.s_tiles * (p.L / BL)), kThreads, bytes, stream>>>(p);
  check(cudaGetLastError(), "reordered_matmul_kernel launch");
}

// Kernel 2's shape: 8*NT columns s per CTA and BL consecutive l, so each (row, s) writes BL*2 contiguous
// bytes of out. Measured on an H100 at n = 4096 (bench/NOTES.md): BL = 16, NT = 4 139 us; BL = 8 (two
// CTAs share each 32-byte sector of out) 188-266 us, even with NT = 8 reading y1 once; BL = 32, NT = 2
// (64-byte runs, four column tiles) 157 us. So BL = 16 wherever L allows, and 32 columns where S does.
struct Stage2Shape {
  int nt, bl;
};
Stage2Shape stage2_shape(int64_t s, int64_t l) { return {s % 32 == 0 ? 4 : 2, l % 16 == 0 ? 16 : 8}; }

template <typename T>
void launch(const Stage1Params& p1, const Stage2Params& p2, Stage2Shape shape, unsigned row_tiles,
            cudaStream_t stream) {
  block_matmul_kernel<T><<<row_tiles * unsigned(p1.k * (p1.q / p1.bn)), kThreads, 0, stream>>>(p1);
  check(cudaGetLastError(), "block_matmul_kernel launch");
  if (shape.nt == 4 && shape.bl == 16) launch_stage2<T, 16, 4>(p2, row_tiles, stream);
  else if (shape.nt == 4) launch_stage2<T, 8, 4>(p2, row_tiles, stream);
  else if (shape.bl == 16) launch_stage2<T, 16, 2>(p2, row_tiles, stream);
  else launch_stage2<T, 8, 2>(p2, row_tiles, stream);
}
}  // namespace

int64_t monarch_matmul_workspace_elems(int64_t rows, int64_t k, int64_t q) {
  return (rows + kTileRows - 1) / kTileRows * kTileRows * k * q;
}

std::string monarch_matmul_reason(int64_t rows, int64_t k, int64_t q, int64_t p, int64_t l, int64_t s, int64_t r,
                                  int dtype) {
  using namespace limits;
  const std::string dims = "w1 (" + std::to_string(k) + ", " + std::to_string(q) + ", " + std::to_string(p) +
                           "), w2 (" + std::to_string(l) + ", " + std::to_string(s) + ", " + std::to_string(r) + ")";
  if (k < 1 || q < 1 || p < 1 || l < 1 || s < 1 || r < 1 || rows < 0) return "empty or negative sizes: " + dims;
  if (l * r != k * q) return dims + ": l*r != k*q";
  if (p % kMatmulMultiple || q % kMatmulMultiple || r % kMatmulMultiple || s % kMatmulMultiple || l % kMatmulLMultiple)
    return dims + ": the CUDA kernels take p, q, r, s multiples of 16 and l a multiple of 8";
  if (k * q > kMatmulMaxBlocks) return dims + ": too many blocks";
  if (dtype != kBFloat16 && dtype != kFloat16) return "dtype code " + std::to_string(dtype) + " is not fp16 (0) or bf16 (1)";
  const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows;
  const Stage2Shape shape = stage2_shape(s, l);
  const int64_t s_tiles = s / (8 * shape.nt);
  if (row_tiles * s_tiles * (l / 8) > kMaxGridX || row_tiles * k * (q / 16) > kMaxGridX)
    return "rows=" + std::to_string(rows) + ": too many rows for one launch";
  return "";
}

void monarch_matmul(uintptr_t x, uintptr_t w1, uintptr_t w2, uintptr_t workspace, uintptr_t out, int64_t rows,
                    int64_t k, int64_t q, int64_t p, int64_t l, int64_t s, int64_t r, int dtype, uintptr_t stream) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("monarch_matmul: " + what); };
  const std::string reason = monarch_matmul_reason(rows, k, q, p, l, s, r, dtype);
  if (!reason.empty()) fail(reason);
  if ((x | w1 | w2 | workspace | out) % limits::kAlignBytes) fail("x, w1, w2, workspace and out must be 16-byte aligned");
  const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows;
  const Stage2Shape shape = stage2_shape(s, l);
  const int s_tiles = int(s / (8 * shape.nt));
  if (rows == 0) return;
  int bn = 16;
  for (int cand : {64, 48, 32})
    if (q % cand == 0) {
      bn = cand;
      break;
    }
  const Stage1Params p1{reinterpret_cast<const void*>(x), reinterpret_cast<const void*>(w1),
                        reinterpret_cast<void*>(workspace), rows, int(k), int(q), int(p), int(l), int(r), bn};
  const Stage2Params p2{reinterpret_cast<const void*>(workspace), reinterpret_cast<const void*>(w2),
                        reinterpret_cast<void*>(out), rows, int(l), int(s), int(r), s_tiles};
  auto st = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == kBFloat16)
    launch<__nv_bfloat16>(p1, p2, shape, unsigned(row_tiles), st);
  else
    launch<__half>(p1, p2, shape, unsigned(row_tiles), st);
}

}  // namespace monarchrt
