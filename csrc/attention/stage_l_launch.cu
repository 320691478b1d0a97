// Host launchers of stage L on warpgroup MMA, the forward (stage_l.cuh) and the last pass's backward
// (stage_l_bwd.cuh): pointers, sizes, strides and a stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../launch.h"
#include "stage_l.cuh"
#include "stage_l_bwd.cuh"
#include "wgmma_launch.h"

namespace monarchrt {

namespace {
// "" or why a stage-L kernel on warpgroup MMA (`what`, one CTA per query column, b1 <= max_b1) cannot run
// this problem.
std::string column_kernel_reason(const std::string& what, int max_b1, int64_t batch, int64_t nh, int64_t n_q_tiles,
                                 int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim,
                                 int64_t causal_block_tiles, int dtype) {
  using namespace limits;
  const std::string reason = wgmma_launch::head_dim_dtype_reason(head_dim, dtype, what);
  if (!reason.empty()) return reason;
  if (b1 < 1 || b2 < 1 || b1 > max_b1)
    return "tile " + std::to_string(b1) + "x" + std::to_string(b2) + " (" + what + " on wgmma takes b1 <= " +
           std::to_string(max_b1) + ")";
  if (n_kv_tiles < 1 || n_kv_tiles * b1 > kMaxGridX || n_q_tiles * b2 > kMaxGridX || batch * nh > kMaxGridYZ ||
      causal_block_tiles < 0)
    return "grid too large or no key tiles (" + what + " on wgmma takes up to " + std::to_string(kMaxGridX) +
           " query columns and key rows, and batch * heads up to " + std::to_string(kMaxGridYZ) + ")";
  return "";
}
}  // namespace

std::string monarch_stage_l_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1,
                                   int64_t b2, int64_t head_dim, int64_t causal_block_tiles, int dtype) {
  return column_kernel_reason("stage L", limits::kStageLMaxB1, batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim,
                              causal_block_tiles, dtype);
}

int monarch_stage_l_smem_bytes(int64_t b1, int64_t head_dim) {
  if (b1 > limits::kStageLMaxB1) return 0;
  return head_dim == 64 ? attention::StageLSmem<64>::kBytes : attention::StageLSmem<128>::kBytes;
}

void monarch_stage_l(uintptr_t q, uintptr_t a_l, uintptr_t y, uintptr_t c_l, uintptr_t z, uintptr_t lse,
                     const std::vector<int64_t>& q_strides, int64_t batch, int64_t nh, int64_t n_q_tiles,
                     int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim, int64_t causal_block_tiles,
                     float sm_scale, int dtype, uintptr_t stream) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("monarch_stage_l: " + what); };
  const std::string reason =
      monarch_stage_l_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, causal_block_tiles, dtype);
  if (!reason.empty()) fail(reason);
  const std::string strides = attention::stride_reason(q_strides, q_strides, q_strides);
  if (!strides.empty()) fail(strides);
  if ((q | a_l | y | z) % limits::kAlignBytes) fail("q, aL, Y and Z must be 16-byte aligned");
  if (!a_l || !c_l || !lse || (z && !y)) fail("aL, cL and lse are required, and Y with Z");
  if (batch == 0 || nh == 0 || n_q_tiles == 0) return;
  attention::StageLParams p{};
  static_cast<attention::AttnDims&>(p) = attention::make_dims(q_strides, q_strides, q_strides, nh, n_q_tiles,
                                                              n_kv_tiles, b1, b2, causal_block_tiles, sm_scale);
  p.q = reinterpret_cast<const void*>(q);
  p.a_l = reinterpret_cast<const void*>(a_l);
  p.y = reinterpret_cast<const void*>(y);
  p.c_l = reinterpret_cast<const float*>(c_l);
  p.z = reinterpret_cast<void*>(z);
  p.lse = reinterpret_cast<float*>(lse);
  // one CTA per query column: its softmax runs over every key row it sees
  const dim3 grid{unsigned(n_q_tiles * b2), 1u, unsigned(batch * nh)};
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto run = [&](auto d) {
    constexpr int kD = decltype(d)::value, kBytes = attention::StageLSmem<kD>::kBytes;
    wgmma_launch::with_dtype(dtype, [&](auto t) {
      wgmma_launch::launch<attention::stage_l_kernel<decltype(t), kD>, kBytes>(p, grid, s, "stage_l_kernel");
    });
  };
  if (head_dim == 64)
    run(std::integral_constant<int, 64>{});
  else
    run(std::integral_constant<int, 128>{});
}

std::string monarch_stage_l_bwd_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1,
                                       int64_t b2, int64_t head_dim, int64_t causal_block_tiles, int dtype) {
  return column_kernel_reason("stage L's backward", limits::kStageLBwdMaxB1, batch, nh, n_q_tiles, n_kv_tiles, b1,
                              b2, head_dim, causal_block_tiles, dtype);
}

int monarch_stage_l_bwd_smem_bytes(int64_t b1, int64_t head_dim) {
  if (b1 > limits::kStageLBwdMaxB1) return 0;
  return wgmma_launch::with_tile(b1, head_dim, [](auto d, auto n) {
    constexpr int kN = std::min(decltype(n)::value, limits::kStageLBwdMaxB1);
    return attention::StageLBwdSmem<decltype(d)::value, kN>::kBytes;
  });
}

void monarch_stage_l_bwd(uintptr_t q, uintptr_t dz, uintptr_t z, uintptr_t lse, uintptr_t dlse, uintptr_t a_l,
                         uintptr_t y, uintptr_t c_l, uintptr_t da_l, uintptr_t dy, uintptr_t dc_l, uintptr_t delta_r,
                         uintptr_t dq, const std::vector<int64_t>& q_strides, const std::vector<int64_t>& dz_strides,
                         const std::vector<int64_t>& z_strides, int64_t batch, int64_t nh, int64_t n_q_tiles,
                         int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim, int64_t causal_block_tiles,
                         float sm_scale, int dtype, uintptr_t stream) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("monarch_stage_l_bwd: " + what); };
  const std::string reason =
      monarch_stage_l_bwd_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, causal_block_tiles, dtype);
  if (!reason.empty()) fail(reason);
  const std::string strides = attention::stride_reason(q_strides, dz_strides, z_strides);
  if (!strides.empty()) fail(strides);
  if ((q | dz | z | a_l | y | da_l | dy) % limits::kAlignBytes)
    fail("q, dZ, Z, aL, Y, daL and dY must be 16-byte aligned");
  if (!lse || !dlse || !c_l || !dc_l || !delta_r || !dq || (lse | dlse | dq) % 8)
    fail("lse, dlse, cL, dcL, D_R and dQ are required (lse, dlse and dQ 8-byte aligned)");
  if (batch == 0 || nh == 0 || n_q_tiles == 0) return;
  attention::StageLBwdParams p{};
  static_cast<attention::AttnDims&>(p) = attention::make_dims(q_strides, dz_strides, z_strides, nh, n_q_tiles,
                                                              n_kv_tiles, b1, b2, causal_block_tiles, sm_scale);
  p.q = reinterpret_cast<const void*>(q);
  p.dz = reinterpret_cast<const void*>(dz);
  p.z = reinterpret_cast<const void*>(z);
  p.lse = reinterpret_cast<const float*>(lse);
  p.dlse = reinterpret_cast<const float*>(dlse);
  p.a_l = reinterpret_cast<const void*>(a_l);
  p.y = reinterpret_cast<const void*>(y);
  p.c_l = reinterpret_cast<const float*>(c_l);
  p.da_l = reinterpret_cast<void*>(da_l);
  p.dy = reinterpret_cast<void*>(dy);
  p.dc_l = reinterpret_cast<float*>(dc_l);
  p.delta_r = reinterpret_cast<float*>(delta_r);
  p.dq = reinterpret_cast<float*>(dq);
  // one CTA per query column: its dQ sums over every key row it sees, and each key row's daL, dY, dcL and
  // D_R over the column's rows, so no split (deterministic)
  const dim3 grid{unsigned(n_q_tiles * b2), 1u, unsigned(batch * nh)};
  auto s = reinterpret_cast<cudaStream_t>(stream);
  wgmma_launch::with_tile(b1, head_dim, [&](auto d, auto n) {
    constexpr int kD = decltype(d)::value, kN = std::min(decltype(n)::value, limits::kStageLBwdMaxB1);
    constexpr int kBytes = attention::StageLBwdSmem<kD, kN>::kBytes;
    wgmma_launch::with_dtype(dtype, [&](auto t) {
      wgmma_launch::launch<attention::stage_l_bwd_kernel<decltype(t), kD, kN>, kBytes>(p, grid, s,
                                                                                     "stage_l_bwd_kernel");
    });
  });
}

}  // namespace monarchrt
