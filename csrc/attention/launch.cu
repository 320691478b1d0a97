// Host launcher of the fused Monarch attention forward: pointers, sizes, strides and a stream.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../launch.h"
#include "monarch_fwd_cluster.cuh"

namespace monarchrt {

namespace {
template <typename T>
void launch(const attention::FwdParams& p, int batch, bool mma_sync_only, cudaStream_t stream) {
  using namespace attention;
  static_assert(kSmemBytes <= 227 * 1024, "the fused forward must fit sm_90 / sm_100 shared memory");
  auto kernel = mma_sync_only ? monarch_fwd_cluster_kernel<T, false> : monarch_fwd_cluster_kernel<T, true>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes), "smem attribute");
  const dim3 grid(unsigned(p.n_q_tiles * kCluster), unsigned(p.nh), unsigned(batch));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(p);
  check(cudaGetLastError(), "monarch_fwd_cluster_kernel launch");
}
}  // namespace

int monarch_attention_fwd_smem_bytes() { return attention::kSmemBytes; }

std::string monarch_attention_fwd_reason(int64_t batch, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles, int64_t b1,
                                         int64_t b2, int64_t head_dim, int64_t causal_block_tiles, float sm_scale,
                                         int dtype) {
  using namespace limits;
  if (head_dim != kAttnHeadDim)
    return "head_dim=" + std::to_string(head_dim) + " (the fused kernel takes " + std::to_string(kAttnHeadDim) + ")";
  if (b1 < 1 || b1 > kAttnMaxB1 || b2 < 1 || b2 > kAttnMaxB2)
    return "tile " + std::to_string(b1) + "x" + std::to_string(b2) + " (the fused kernel takes b1 <= " +
           std::to_string(kAttnMaxB1) + ", b2 <= " + std::to_string(kAttnMaxB2) + ")";
  // written so that NaN fails too
  if (!(sm_scale >= kAttnMinScale && sm_scale <= kAttnMaxScale))
    return "sm_scale=" + std::to_string(sm_scale) + " (the fused kernel takes 1e-20 <= sm_scale <= 1e8)";
  if (n_q_tiles > kMaxGridYZ / kAttnCluster || nh > kMaxGridYZ || batch > kMaxGridYZ || n_kv_tiles < 1 ||
      causal_block_tiles < 0)
    return "grid too large or no key tiles (the fused kernel takes up to " + std::to_string(kMaxGridYZ / kAttnCluster) +
           " query tiles, " + std::to_string(kMaxGridYZ) + " heads and batch " + std::to_string(kMaxGridYZ) + ")";
  if (dtype != kBFloat16 && dtype != kFloat16)
    return "dtype code " + std::to_string(dtype) + " is not fp16 (0) or bf16 (1)";
  return "";
}

void monarch_attention_fwd(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t z, uintptr_t lse,
                           const std::vector<int64_t>& q_strides, const std::vector<int64_t>& k_strides,
                           const std::vector<int64_t>& v_strides, int64_t batch, int64_t nh, int64_t n_q_tiles,
                           int64_t n_kv_tiles, int64_t b1, int64_t b2, int64_t head_dim,
                           int64_t causal_block_tiles, float sm_scale, int dtype, uintptr_t stream,
                           bool mma_sync_only) {
  using namespace attention;
  auto fail = [](const std::string& what) { throw std::invalid_argument("monarch_attention_fwd: " + what); };
  const std::string reason = monarch_attention_fwd_reason(batch, nh, n_q_tiles, n_kv_tiles, b1, b2, head_dim,
                                                          causal_block_tiles, sm_scale, dtype);
  if (!reason.empty()) fail(reason);
  const std::string strides = attention::stride_reason(q_strides, k_strides, v_strides);
  if (!strides.empty()) fail(strides);
  if ((q | k | v | z) % limits::kAlignBytes) fail("q, k, v and z must be 16-byte aligned");
  if (batch == 0 || n_q_tiles == 0 || nh == 0) return;
  FwdParams p{};
  p.q = reinterpret_cast<const void*>(q);
  p.k = reinterpret_cast<const void*>(k);
  p.v = reinterpret_cast<const void*>(v);
  p.z = reinterpret_cast<void*>(z);
  p.lse = reinterpret_cast<float*>(lse);
  static_cast<attention::AttnDims&>(p) =
      attention::make_dims(q_strides, k_strides, v_strides, nh, n_q_tiles, n_kv_tiles, b1, b2, causal_block_tiles,
                           sm_scale);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == kBFloat16)
    launch<__nv_bfloat16>(p, int(batch), mma_sync_only, s);
  else
    launch<__half>(p, int(batch), mma_sync_only, s);
}

}  // namespace monarchrt
