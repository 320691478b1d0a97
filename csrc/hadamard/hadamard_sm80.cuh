// Hadamard transform of rows of n = 2^k (256 <= n <= 32768) halves, the HadaCore way:
// the low 4*floor(k/4) bits of the index are 16-point factors applied as H16 x T products on
// tensor cores (CuTe's SM80 m16n8k16 MMA atom, fp32 accumulate, rounded to the input type
// between factors); the remaining top k mod 4 bits are scalar butterflies. Rows live in shared
// memory for the whole transform: one read and one write of global memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../warp_atoms.cuh"

namespace monarchrt {

__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_float(float v) { return __float2half(v); }

// H16[i][j] = (-1)^popcount(i & j)
template <typename T> __device__ __forceinline__ T h16(int i, int j) {
  return from_float<T>((__popc(i & j) & 1) ? -1.f : 1.f);
}

// One 16x16 tile T[k][c] = s[col_addr(c) + k * inner], c in [0, 16): T <- H16 T, by one warp.
template <typename T>
__device__ __forceinline__ void h16_tile(T* s, int tile_col0, int inner, int lane) {
  const int g = lane >> 2, tig = lane & 3;
  const uint32_t a0 = pack(h16<T>(g, 2 * tig), h16<T>(g, 2 * tig + 1));
  const uint32_t a1 = pack(h16<T>(g + 8, 2 * tig), h16<T>(g + 8, 2 * tig + 1));
  const uint32_t a2 = pack(h16<T>(g, 2 * tig + 8), h16<T>(g, 2 * tig + 9));
  const uint32_t a3 = pack(h16<T>(g + 8, 2 * tig + 8), h16<T>(g + 8, 2 * tig + 9));
  uint32_t b[2][2];
  int base[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int col = tile_col0 + g + 8 * h;                    // this lane's column of the tile
    base[h] = (col / inner) * 16 * inner + (col % inner);     // its address at k = 0
    b[h][0] = pack(s[base[h] + (2 * tig) * inner], s[base[h] + (2 * tig + 1) * inner]);
    b[h][1] = pack(s[base[h] + (2 * tig + 8) * inner], s[base[h] + (2 * tig + 9) * inner]);
  }
  __syncwarp();  // every lane has read the tile before any lane writes it
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
    Mma<T>::k16::fma(d0, d1, d2, d3, a0, a1, a2, a3, b[h][0], b[h][1], 0.f, 0.f, 0.f, 0.f);
    // D[row][col] with row = g (+8), col = 2 tig (+1) of this n-half
    const int c0 = tile_col0 + 8 * h + 2 * tig;
    const int addr0 = (c0 / inner) * 16 * inner + (c0 % inner);
    const int addr1 = ((c0 + 1) / inner) * 16 * inner + ((c0 + 1) % inner);
    s[addr0 + g * inner] = from_float<T>(d0);
    s[addr1 + g * inner] = from_float<T>(d1);
    s[addr0 + (g + 8) * inner] = from_float<T>(d2);
    s[addr1 + (g + 8) * inner] = from_float<T>(d3);
  }
}

template <typename T>
__global__ void hadamard_pow2_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t rows, int log2n,
                                     int64_t x_stride, int64_t out_stride, float scale, int rows_per_block) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int n = 1 << log2n;
  const int64_t row0 = int64_t(blockIdx.x) * rows_per_block;
  const int nrows = int(rows - row0 < rows_per_block ? rows - row0 : rows_per_block);
  const int total = nrows * n;
  constexpr int kVec = 16 / sizeof(T);  // 16-byte accesses
  for (int e = threadIdx.x * kVec; e < total; e += blockDim.x * kVec) {
    const int r = e >> log2n, c = e & (n - 1);
    *reinterpret_cast<uint4*>(smem + e) = *reinterpret_cast<const uint4*>(x + (row0 + r) * x_stride + c);
  }
  __syncthreads();
  // top (k mod 4) bits: butterflies at distances n/2, n/4, ...
  const int rem = log2n & 3;
  for (int b = 0; b < rem; ++b) {
    const int half = n >> (b + 1);
    for (int e = threadIdx.x; e < total / 2; e += blockDim.x) {
      const int r = e >> (log2n - 1), p = e & (n / 2 - 1);
      const int lo = r * n + (p / half) * 2 * half + (p % half), hi = lo + half;
      const float u = to_float(smem[lo]), v = to_float(smem[hi]);
      smem[lo] = from_float<T>(u + v);
      smem[hi] = from_float<T>(u - v);
    }
    __syncthreads();
  }
  // 16-point factors on bits [4t, 4t + 4): axis stride inner = 16^t
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int tiles_per_row = n >> 8;
  for (int t = 0, inner = 1; t < (log2n >> 2); ++t, inner *= 16) {
    for (int tile = warp; tile < nrows * tiles_per_row; tile += warps) {
      const int r = tile / tiles_per_row;
      h16_tile(smem + r * n, (tile % tiles_per_row) * 16, inner, lane);
    }
    __syncthreads();
  }
  for (int e = threadIdx.x * kVec; e < total; e += blockDim.x * kVec) {
    const int r = e >> log2n, c = e & (n - 1);
    T v[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = from_float<T>(to_float(smem[e + i]) * scale);
    *reinterpret_cast<uint4*>(out + (row0 + r) * out_stride + c) = *reinterpret_cast<uint4*>(v);
  }
}

}  // namespace monarchrt
