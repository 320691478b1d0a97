// Host launchers of stage R on warpgroup MMA, forward (stage_r.cuh) and key-row backward (stage_r_bwd.cuh):
// pointers, sizes, strides and a stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../launch.h"
#include "stage_r_bwd.cuh"
#include "wgmma_launch.h"

namespace monarchrt {

namespace {
// Fewer CTAs than this many per SM split each key row's query rows over grid y.
constexpr int kMinCtasPerSm = 8;
using wgmma_launch::launch;
using wgmma_launch::with_dtype;
using wgmma_launch::with_tile;
// Blocks of 64 query rows (a, j) flat across the query tiles: what stage R's kernels walk.
int64_t q_row_blocks(int64_t n_q_tiles, int64_t b2) {
  return (n_q_tiles * b2 + attention::kStageRBlockM - 1) / attention::kStageRBlockM;
}
}  // namespace

std::string monarch_stage_r_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1,
                                   int64_t b2, int64_t head_dim, int64_t causal_block_tiles, int dtype) {
  using namespace limits;
  const std::string reason = wgmma_launch::head_dim_dtype_reason(head_dim, dtype, "stage R");
  if (!reason.empty()) return reason;
  if (b1 < 1 || b2 < 1 || b2 > kStageRMaxB2)
    return "tile " + std::to_string(b1) + "x" + std::to_string(b2) + " (stage R on wgmma takes b2 <= " +
           std::to_string(kStageRMaxB2) + ")";
  if (n_q_tiles * b2 >= kStageRMaxQueryRows)
    return std::to_string(n_q_tiles) + " query tiles of " + std::to_string(b2) +
           " columns (stage R on wgmma takes fewer than 2^24 query rows per key row)";
  if (n_kv_tiles < 1 || n_kv_tiles * b1 > kMaxGridX || batch * nh > kMaxGridYZ || causal_block_tiles < 0)
    return "grid too large or no key tiles (stage R on wgmma takes up to " + std::to_string(kMaxGridX) +
           " key rows and batch * heads up to " + std::to_string(kMaxGridYZ) + ")";
  return "";
}

int monarch_stage_r_smem_bytes(int64_t b2, int64_t head_dim) {
  return with_tile(b2, head_dim, [](auto d, auto l) { return attention::StageRSmem<decltype(d)::value, decltype(l)::value>::kBytes; });
}

void monarch_stage_r(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t a_r, uintptr_t c_r, uintptr_t a_l,
                     uintptr_t y, uintptr_t c_l, uintptr_t lse_r, const std::vector<int64_t>& q_strides,
                     const std::vector<int64_t>& k_strides, const std::vector<int64_t>& v_strides, int64_t batch,
                     int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim,
                     int64_t causal_block_tiles, float sm_scale, int dtype, uintptr_t stream) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("monarch_stage_r: " + what); };
  const std::string reason =
      monarch_stage_r_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, causal_block_tiles, dtype);
  if (!reason.empty()) fail(reason);
  const std::string strides = attention::stride_reason(q_strides, k_strides, v_strides);
  if (!strides.empty()) fail(strides);
  if ((q | k | v | a_r | a_l | y) % limits::kAlignBytes) fail("q, k, v, aR, aL and Y must be 16-byte aligned");
  if (!c_l || !a_l || (a_r && !c_r)) fail("aL and cL are required, and cR with aR");
  if (batch == 0 || nh == 0 || n_q_tiles == 0) return;
  attention::StageRParams p{};
  p.q = reinterpret_cast<const void*>(q);
  p.k = reinterpret_cast<const void*>(k);
  p.v = reinterpret_cast<const void*>(v);
  p.a_r = reinterpret_cast<const void*>(a_r);
  p.c_r = reinterpret_cast<const float*>(c_r);
  p.a_l = reinterpret_cast<void*>(a_l);
  p.y = reinterpret_cast<void*>(y);
  p.c_l = reinterpret_cast<float*>(c_l);
  p.lse_r = reinterpret_cast<float*>(lse_r);
  static_cast<attention::AttnDims&>(p) =
      attention::make_dims(q_strides, k_strides, v_strides, nh, n_q_tiles, n_kv_tiles, b1, b2, causal_block_tiles,
                           sm_scale);
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
  const int64_t key_rows = n_kv_tiles * b1, batch_heads = batch * nh;
  const int64_t row_blocks = q_row_blocks(n_q_tiles, b2);
  const int64_t wanted = (int64_t(kMinCtasPerSm) * sms + key_rows * batch_heads - 1) / (key_rows * batch_heads);
  const int split = int(std::max<int64_t>(1, std::min({row_blocks, wanted, limits::kMaxGridYZ})));
  const dim3 grid{unsigned(key_rows), unsigned(split), unsigned(batch_heads)};
  auto s = reinterpret_cast<cudaStream_t>(stream);
  with_tile(b2, head_dim, [&](auto d, auto l) {
    constexpr int kD = decltype(d)::value, kL = decltype(l)::value;
    constexpr int kBytes = attention::StageRSmem<kD, kL>::kBytes;
    with_dtype(dtype, [&](auto t) {
      launch<attention::stage_r_kernel<decltype(t), kD, kL>, kBytes>(p, grid, s, "stage_r_kernel");
    });
  });
}

std::string monarch_stage_r_bwd_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1,
                                       int64_t b2, int64_t head_dim, int64_t causal_block_tiles, int dtype) {
  if (b2 > limits::kStageRBwdMaxB2)
    return "tile " + std::to_string(b1) + "x" + std::to_string(b2) + " (stage R's backward on wgmma takes b2 <= " +
           std::to_string(limits::kStageRBwdMaxB2) + ")";
  if (n_q_tiles < 1) return "no query tiles (stage R's backward on wgmma writes dK and dV only for some)";
  if (q_row_blocks(n_q_tiles, b2) * b1 > limits::kMaxGridX)
    return "grid too large (stage R's backward on wgmma takes up to " + std::to_string(limits::kMaxGridX) +
           " blocks of 64 query rows)";
  return monarch_stage_r_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, causal_block_tiles, dtype);
}

int monarch_stage_r_bwd_smem_bytes(int64_t b2, int64_t head_dim) {
  using namespace attention;
  if (b2 > limits::kStageRBwdMaxB2) return 0;
  return with_tile(b2, head_dim, [](auto d, auto l) {
    constexpr int kD = decltype(d)::value, kL = std::min(decltype(l)::value, limits::kStageRBwdMaxB2);
    constexpr int kKeyRow = stage_r_bwd_splits(kD, kL) ? StageRBwdSmem<kD, kL, kPartDk>::kBytes
                                                       : StageRBwdSmem<kD, kL, kPartBoth>::kBytes;
    return std::max(kKeyRow, StageRBwdQSmem<kD, kL>::kBytes);
  });
}

namespace {
// The inputs both backward launchers take, checked and filled once.
attention::StageRGradInputs grad_inputs(const char* name, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t a_r,
                                        uintptr_t c_r, uintptr_t lse_r, uintptr_t da_l, uintptr_t dy, uintptr_t dc_l,
                                        uintptr_t delta_r, const std::vector<int64_t>& q_strides,
                                        const std::vector<int64_t>& k_strides,
                                        const std::vector<int64_t>& v_strides, int64_t batch, int64_t nh,
                                        int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1, int64_t b2,
                                        int64_t head_dim, int64_t causal_block_tiles, float sm_scale, int dtype) {
  auto fail = [&](const std::string& what) { throw std::invalid_argument(std::string(name) + ": " + what); };
  const std::string reason =
      monarch_stage_r_bwd_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, causal_block_tiles, dtype);
  if (!reason.empty()) fail(reason);
  const std::string strides = attention::stride_reason(q_strides, k_strides, v_strides);
  if (!strides.empty()) fail(strides);
  if ((q | k | v | a_r | da_l | dy) % limits::kAlignBytes) fail("q, k, v, aR, daL and dY must be 16-byte aligned");
  if (!lse_r || !da_l || !dc_l || !delta_r || (a_r && !c_r)) fail("lse_R, daL, dcL and D_R are required, cR with aR");
  attention::StageRGradInputs in{};
  in.q = reinterpret_cast<const void*>(q);
  in.k = reinterpret_cast<const void*>(k);
  in.v = reinterpret_cast<const void*>(v);
  in.a_r = reinterpret_cast<const void*>(a_r);
  in.c_r = reinterpret_cast<const float*>(c_r);
  in.lse_r = reinterpret_cast<const float*>(lse_r);
  in.da_l = reinterpret_cast<const void*>(da_l);
  in.dy = reinterpret_cast<const void*>(dy);
  in.dc_l = reinterpret_cast<const float*>(dc_l);
  in.delta_r = reinterpret_cast<const float*>(delta_r);
  static_cast<attention::AttnDims&>(in) = attention::make_dims(q_strides, k_strides, v_strides, nh, n_q_tiles,
                                                               n_kv_tiles, b1, b2, causal_block_tiles, sm_scale);
  return in;
}
}  // namespace

void monarch_stage_r_bwd_kv(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t a_r, uintptr_t c_r, uintptr_t lse_r,
                            uintptr_t da_l, uintptr_t dy, uintptr_t dc_l, uintptr_t delta_r, uintptr_t dk,
                            uintptr_t dk_out, uintptr_t dv, const std::vector<int64_t>& q_strides,
                            const std::vector<int64_t>& k_strides, const std::vector<int64_t>& v_strides,
                            int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1, int64_t b2,
                            int64_t head_dim, int64_t causal_block_tiles, float sm_scale, bool accumulate, int dtype,
                            uintptr_t stream) {
  constexpr const char* kName = "monarch_stage_r_bwd_kv";
  attention::StageRBwdParams p{};
  static_cast<attention::StageRGradInputs&>(p) =
      grad_inputs(kName, q, k, v, a_r, c_r, lse_r, da_l, dy, dc_l, delta_r, q_strides, k_strides, v_strides, batch,
                  nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim, causal_block_tiles, sm_scale, dtype);
  if ((!dk && !dk_out) || (accumulate && !dk) || (dk && dk == dk_out) || (!dy != !dv))
    throw std::invalid_argument(std::string(kName) +
                                ": dK (or its output) is required, its fp32 partial to accumulate (not the output "
                                "itself), and dY with dV");
  if (batch == 0 || nh == 0 || n_q_tiles == 0) return;
  p.dk = reinterpret_cast<float*>(dk);
  p.dk_out = reinterpret_cast<void*>(dk_out);
  p.dv = reinterpret_cast<void*>(dv);
  p.accumulate = accumulate ? 1 : 0;
  // one CTA per key row: its dK and dV sum over every query row, so no split of them (deterministic)
  const dim3 grid{unsigned(n_kv_tiles * b1), 1u, unsigned(batch * nh)};
  auto s = reinterpret_cast<cudaStream_t>(stream);
  with_tile(b2, head_dim, [&](auto d, auto l) {
    constexpr int kD = decltype(d)::value, kL = std::min(decltype(l)::value, limits::kStageRBwdMaxB2);
    auto run = [&](auto parts) {
      constexpr int kParts = decltype(parts)::value;
      constexpr int kBytes = attention::StageRBwdSmem<kD, kL, kParts>::kBytes;
      with_dtype(dtype, [&](auto t) {
        launch<attention::stage_r_bwd_kv_kernel<decltype(t), kD, kL, kParts>, kBytes>(p, grid, s,
                                                                                       "stage_r_bwd_kv_kernel");
      });
    };
    using Parts = attention::StageRBwdParts;
    if constexpr (attention::stage_r_bwd_splits(kD, kL)) {
      run(std::integral_constant<int, Parts::kPartDk>{});
      if (dy) run(std::integral_constant<int, Parts::kPartDv>{});
    } else {
      run(std::integral_constant<int, Parts::kPartBoth>{});
    }
  });
}

void monarch_stage_r_bwd_q(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t lse_r, uintptr_t da_l, uintptr_t dy,
                           uintptr_t dc_l, uintptr_t delta_r, uintptr_t dq, uintptr_t dq_out,
                           const std::vector<int64_t>& q_strides, const std::vector<int64_t>& k_strides,
                           const std::vector<int64_t>& v_strides, int64_t batch, int64_t nh, int64_t n_q_tiles,
                           int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim, int64_t causal_block_tiles,
                           float sm_scale, int dtype, uintptr_t stream) {
  constexpr const char* kName = "monarch_stage_r_bwd_q";
  attention::StageRBwdQParams p{};
  static_cast<attention::StageRGradInputs&>(p) =
      grad_inputs(kName, q, k, v, 0, 0, lse_r, da_l, dy, dc_l, delta_r, q_strides, k_strides, v_strides, batch, nh,
                  n_q_tiles, n_kv_tiles, b1, b2, head_dim, causal_block_tiles, sm_scale, dtype);
  if (!dq || !dq_out || (dq | dq_out) % 8)
    throw std::invalid_argument(std::string(kName) + ": dQ and its output are required, 8-byte aligned");
  if (batch == 0 || nh == 0 || n_q_tiles == 0) return;
  p.dq = reinterpret_cast<const float*>(dq);
  p.dq_out = reinterpret_cast<void*>(dq_out);
  // one CTA per 64 query rows (a, j) of a row index k: their dQ sums over every key tile, so no split of it
  // (deterministic)
  const dim3 grid{unsigned(q_row_blocks(n_q_tiles, b2) * b1), 1u, unsigned(batch * nh)};
  auto s = reinterpret_cast<cudaStream_t>(stream);
  with_tile(b2, head_dim, [&](auto d, auto l) {
    constexpr int kD = decltype(d)::value, kL = std::min(decltype(l)::value, limits::kStageRBwdMaxB2);
    constexpr int kBytes = attention::StageRBwdQSmem<kD, kL>::kBytes;
    with_dtype(dtype, [&](auto t) {
      launch<attention::stage_r_bwd_q_kernel<decltype(t), kD, kL>, kBytes>(p, grid, s, "stage_r_bwd_q_kernel");
    });
  });
}

}  // namespace monarchrt
