// Declarations shared by the launchers and the Python bindings. Launchers take raw pointers,
// sizes, strides and a cudaStream_t as integers, so the module needs no torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace monarchrt {

enum DType : int { kFloat16 = 0, kBFloat16 = 1 };

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Hadamard transform (csrc/hadamard): out = x @ H_n^T * scale over contiguous rows [rows, n], n = m * 2^k;
// out may be x. For m > 1, hm is H_m (or H_m^T) zero-padded to [hm_size, hm_size] in the dtype.
void hadamard(uintptr_t x, uintptr_t out, int64_t rows, int64_t n, int64_t m, uintptr_t hm, int64_t hm_size,
              float scale, int dtype, uintptr_t stream);
int64_t hadamard_smem_bytes(int64_t n, int64_t m);
// Why hadamard() cannot take rows of n = m * 2^k in this dtype code ("" when it can), pointers and the
// device's shared memory aside: the checks the launcher runs, for automatic selection to run first.
std::string hadamard_reason(int64_t rows, int64_t n, int64_t m, int dtype);

// Fused Monarch attention forward, num_iters = 1 (csrc/attention). Tile-order q [B, A, b1, b2, nh, d],
// k, v [B, F, b1, b2, nh, d] (element strides of the first five dims); z like q and lse [B, A, b1, b2, nh]
// float32, both contiguous. mma_sync_only: the portable stage-R path (sm_100a / sm_120a's) on sm_90a too.
void monarch_attention_fwd(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t z, uintptr_t lse,
                           const std::vector<int64_t>& q_strides, const std::vector<int64_t>& k_strides,
                           const std::vector<int64_t>& v_strides, int64_t batch, int64_t nh, int64_t n_q_tiles,
                           int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim,
                           int64_t causal_block_tiles, float sm_scale, int dtype, uintptr_t stream,
                           bool mma_sync_only);
int monarch_attention_fwd_smem_bytes();
// Why monarch_attention_fwd() cannot run this problem ("" when it can), pointers and strides aside.
std::string monarch_attention_fwd_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1,
                                         int64_t b2, int64_t head_dim, int64_t causal_block_tiles, float sm_scale,
                                         int dtype);

// Stage R of Monarch attention on warpgroup MMA (csrc/attention/stage_r.cuh, sm_90a): for every key row, aL, Y
// (skipped when y is 0), cL and lse_R (skipped when lse_r is 0) of every query row that sees it, into the
// scratch [B, nh, A, F, b2, b1(, d)]; q, k, v as for monarch_attention_fwd. a_r (0 on the first pass): aR
// [B, nh, A, F, b1, b2, d] and c_r its cR, the query and temperature of a later pass.
void monarch_stage_r(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t a_r, uintptr_t c_r, uintptr_t a_l,
                     uintptr_t y, uintptr_t c_l, uintptr_t lse_r, const std::vector<int64_t>& q_strides,
                     const std::vector<int64_t>& k_strides, const std::vector<int64_t>& v_strides, int64_t batch,
                     int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim,
                     int64_t causal_block_tiles, float sm_scale, int dtype, uintptr_t stream);
int monarch_stage_r_smem_bytes(int64_t b2, int64_t head_dim);
// Why monarch_stage_r() cannot run this problem ("" when it can), pointers, strides and the device aside.
std::string monarch_stage_r_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1,
                                   int64_t b2, int64_t head_dim, int64_t causal_block_tiles, int dtype);
// Stage R's key-row backward on warpgroup MMA (csrc/attention/stage_r_bwd.cuh, sm_90a): dK (added to the fp32
// partial dk when `accumulate`; stored to dk_out in the inputs' dtype where given, else to dk) and dV (in the
// dtype; skipped when dy and dv are 0) of every key row, [B, F, b1, b2, nh, d], from the stage-L backward's
// daL, dY, dcL, D_R [B, nh, A, F, b2, b1(, d)] and the forward's lse_R; the query as for monarch_stage_r.
void monarch_stage_r_bwd_kv(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t a_r, uintptr_t c_r, uintptr_t lse_r,
                            uintptr_t da_l, uintptr_t dy, uintptr_t dc_l, uintptr_t delta_r, uintptr_t dk,
                            uintptr_t dk_out, uintptr_t dv, const std::vector<int64_t>& q_strides,
                            const std::vector<int64_t>& k_strides, const std::vector<int64_t>& v_strides,
                            int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1, int64_t b2,
                            int64_t head_dim, int64_t causal_block_tiles, float sm_scale, bool accumulate, int dtype,
                            uintptr_t stream);
// Its query-row backward (the first pass): dq_out = dq + dQ's stage-R part, in the dtype, [B, A, b1, b2, nh, d].
void monarch_stage_r_bwd_q(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t lse_r, uintptr_t da_l, uintptr_t dy,
                           uintptr_t dc_l, uintptr_t delta_r, uintptr_t dq, uintptr_t dq_out,
                           const std::vector<int64_t>& q_strides, const std::vector<int64_t>& k_strides,
                           const std::vector<int64_t>& v_strides, int64_t batch, int64_t nh, int64_t n_q_tiles,
                           int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim, int64_t causal_block_tiles,
                           float sm_scale, int dtype, uintptr_t stream);
// Shared memory per CTA of the larger of the two (0 over their b2 limit).
int monarch_stage_r_bwd_smem_bytes(int64_t b2, int64_t head_dim);
// Why monarch_stage_r_bwd_kv() and _q() cannot run this problem ("" when they can), pointers, strides and the
// device aside.
std::string monarch_stage_r_bwd_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles,
                                          int64_t b1, int64_t b2, int64_t head_dim, int64_t causal_block_tiles,
                                          int dtype);

// Stage L's forward on warpgroup MMA (csrc/attention/stage_l.cuh, sm_90a): per query column, lse [B, A, b1, b2,
// nh] (contiguous fp32) and, where z is not 0, Z [B, A, b1, b2, nh, d] (contiguous, in the dtype) from the
// scratch aL, Y, cL; q with its strides.
void monarch_stage_l(uintptr_t q, uintptr_t a_l, uintptr_t y, uintptr_t c_l, uintptr_t z, uintptr_t lse,
                     const std::vector<int64_t>& q_strides, int64_t batch, int64_t nh, int64_t n_q_tiles,
                     int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim, int64_t causal_block_tiles,
                     float sm_scale, int dtype, uintptr_t stream);
int monarch_stage_l_smem_bytes(int64_t b1, int64_t head_dim);
// Why monarch_stage_l() cannot run this problem ("" when it can), pointers, strides and the device aside.
std::string monarch_stage_l_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1,
                                   int64_t b2, int64_t head_dim, int64_t causal_block_tiles, int dtype);

// Stage L's backward on warpgroup MMA, the last pass (csrc/attention/stage_l_bwd.cuh, sm_90a): per query column,
// daL, dY (in the dtype), dcL and D_R [B, nh, A, F, b2, b1(, d)] of every key row it sees, and dQ's stage-L
// part written to the fp32 dq [B, A, b1, b2, nh, d], from the forward's aL, Y, cL (the scratch), lse and the
// output Z; dZ and Z with their own strides, lse and dlse [B, A, b1, b2, nh] contiguous fp32.
void monarch_stage_l_bwd(uintptr_t q, uintptr_t dz, uintptr_t z, uintptr_t lse, uintptr_t dlse, uintptr_t a_l,
                         uintptr_t y, uintptr_t c_l, uintptr_t da_l, uintptr_t dy, uintptr_t dc_l, uintptr_t delta_r,
                         uintptr_t dq, const std::vector<int64_t>& q_strides, const std::vector<int64_t>& dz_strides,
                         const std::vector<int64_t>& z_strides, int64_t batch, int64_t nh, int64_t n_q_tiles,
                         int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim, int64_t causal_block_tiles,
                         float sm_scale, int dtype, uintptr_t stream);
int monarch_stage_l_bwd_smem_bytes(int64_t b1, int64_t head_dim);
// Why monarch_stage_l_bwd() cannot run this problem ("" when it can), pointers, strides and the device aside.
std::string monarch_stage_l_bwd_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1,
                                       int64_t b2, int64_t head_dim, int64_t causal_block_tiles, int dtype);

// Monarch matmul (csrc/monarch_matmul): x [rows, k*p], w1 [k, q, p], w2 [l, s, r] -> out [rows, s*l], all
// contiguous; `workspace` holds monarch_matmul_workspace_elems(rows, k, q) elements of the dtype (y1).
void monarch_matmul(uintptr_t x, uintptr_t w1, uintptr_t w2, uintptr_t workspace, uintptr_t out, int64_t rows,
                    int64_t k, int64_t q, int64_t p, int64_t l, int64_t s, int64_t r, int dtype, uintptr_t stream);
int64_t monarch_matmul_workspace_elems(int64_t rows, int64_t k, int64_t q);
// Why monarch_matmul() cannot run these shapes ("" when it can), pointers aside.
std::string monarch_matmul_reason(int64_t rows, int64_t k, int64_t q, int64_t p, int64_t l, int64_t s, int64_t r,
                                  int dtype);

}  // namespace monarchrt
