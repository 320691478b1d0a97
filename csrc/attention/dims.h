// What every attention kernel takes besides its pointers: the tile-order strides, the sizes and the
// scale, with the one host-side check of the strides and the one way to fill them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../kernel_limits.h"

namespace monarchrt::attention {

struct AttnDims {
  int64_t sq[5], sk[5], sv[5];  // element strides of q, k, v as [B, tile, row, column, head]; d contiguous
  int nh, n_q_tiles, n_kv_tiles, b1, b2, causal_block_tiles;
  float scale_log2;  // sm_scale * log2(e)
};

// "" or why the launchers cannot take these strides (5 per tensor, whole 16-byte rows).
inline std::string stride_reason(const std::vector<int64_t>& q, const std::vector<int64_t>& k,
                                 const std::vector<int64_t>& v) {
  if (q.size() != 5 || k.size() != 5 || v.size() != 5) return "strides are of [batch, tile, row, column, head]: 5 each";
  for (const auto* s : {&q, &k, &v})
    for (int64_t x : *s)
      if (x % limits::kAttnStrideMultiple) return "strides must be multiples of 8 elements (16-byte rows)";
  return "";
}

#ifdef __CUDACC__
// Key tiles query tile a sees: all, or up to the end of a's causal block.
__device__ __forceinline__ int visible_kv_tiles(int a, int n_kv_tiles, int causal_block_tiles) {
  if (causal_block_tiles <= 0) return n_kv_tiles;
  const int end = (a / causal_block_tiles + 1) * causal_block_tiles;
  return end < n_kv_tiles ? end : n_kv_tiles;
}
// The first query tile that sees key tile f (every later one does too): 0, or the first tile of f's causal
// block.
__device__ __forceinline__ int first_q_tile_seeing(int f, int causal_block_tiles) {
  return causal_block_tiles > 0 ? (f / causal_block_tiles) * causal_block_tiles : 0;
}
#endif

// The dims of a call whose strides passed stride_reason.
inline AttnDims make_dims(const std::vector<int64_t>& q_strides, const std::vector<int64_t>& k_strides,
                          const std::vector<int64_t>& v_strides, int64_t nh, int64_t n_q_tiles, int64_t n_kv_tiles,
                          int64_t b1, int64_t b2, int64_t causal_block_tiles, float sm_scale) {
  AttnDims d{};
  for (int i = 0; i < 5; ++i) {
    d.sq[i] = q_strides[i];
    d.sk[i] = k_strides[i];
    d.sv[i] = v_strides[i];
  }
  d.nh = int(nh);
  d.n_q_tiles = int(n_q_tiles);
  d.n_kv_tiles = int(n_kv_tiles);
  d.b1 = int(b1);
  d.b2 = int(b2);
  d.causal_block_tiles = int(causal_block_tiles);
  d.scale_log2 = sm_scale * 1.4426950408889634f;
  return d;
}

}  // namespace monarchrt::attention
