// Hadamard transform of rows of n = m * 2^k halves on tensor cores, the HadaCore way (docs/math.md).
//
// A CTA copies a chunk of whole rows (about 32 KB, one row when rows are longer) into shared memory
// (cp.async), transforms it there and writes it back with one bulk copy (TMA): one read and one write of
// global memory. The chunk is seen as a
// flat array; H_{2^k} is a product of 16x16 factors, each acting on one 4-bit field of the flat index:
//   field [0, 4) then [4, 8)   both in registers: ldmatrix, mma, and the accumulators reused as the next
//                              mma's B operand (their layouts match), then stmatrix;
//   field [8, 12), [12, 16)    ldmatrix.trans, mma, stmatrix (one pass each);
//   the top k mod 4 bits       the field [k-4, k) with H_{2^r} on its top r bits and the identity on the
//                              bits an earlier factor already transformed.
// For n < 256 the fields reach past a row into the next rows; their factors are the identity on those bits
// (I (x) H_{2^r}), so rows never mix. Each factor is a 16x16 matrix A (entries 0, +1, -1): y = A x along the
// field, fp32 accumulation, rounded to the input type after each factor (as HadaCore); the last factor
// multiplies by the scale before its rounding.
// For n = m * 2^k (m in {12, 20, 28}) the H_m factor on the index i of x[i * 2^k + j] follows: H_m from a
// table the caller passes (padded with zeros to 16 or 32; the caller passes H_m^T for the transpose),
// on tensor cores when 2^k >= 8 (one 16- or 32-row B operand per 8-column block), else one thread per
// column on CUDA cores.
// Shared memory is swizzled per 16-byte chunk (chunk c is stored at c ^ fold(c >> 3), fold = XOR of the
// 3-bit groups): the eight rows of an ldmatrix / stmatrix 8x8 matrix, 2^s chunks apart for any s, land in
// eight different bank groups.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include <cute/arch/copy_sm90_tma.hpp>

#include "../warp_atoms.cuh"

namespace monarchrt::hadacore {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSpecial = 32;  // m of H_m, padded to 16 or 32

struct Params {
  const void* x;
  void* out;
  const void* hm;   // [mp][mp] H_m (or H_m^T), zero-padded; null when m == 1
  int64_t elems;    // rows * n
  int n, m, mp, log2n2;
  int chunk;        // elements per CTA: whole rows, a multiple of 256
  float scale;
};

__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// Element offset in the chunk -> offset in the swizzled shared buffer.
__device__ __forceinline__ int swz(int e) {
  const int c = e >> 3, g = c >> 3;
  return ((c ^ ((g ^ (g >> 3) ^ (g >> 6) ^ (g >> 9) ^ (g >> 12)) & 7)) << 3) | (e & 7);
}

// The mma A fragment of the 16x16 factor that applies Sylvester H on the field bits in `mask` and the
// identity on the others: A[i][j] = 0 unless i and j agree outside mask, else (-1)^popcount(i & j & mask).
// Built from the bits of +-1 in T with integer operations (a conversion per entry costs more).
template <typename T> __device__ __forceinline__ uint32_t factor_bits(int i, int j, int mask) {
  constexpr uint32_t kOne = std::is_same_v<T, __half> ? 0x3C00u : 0x3F80u;  // 1.0 in fp16 or bf16
  return ((i ^ j) & ~mask & 15) ? 0u : kOne | ((__popc(i & j & mask) & 1u) << 15);
}
template <typename T> __device__ __forceinline__ void factor_fragment(uint32_t (&a)[4], int mask, int lane) {
  const int g = lane >> 2, c = 2 * (lane & 3);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int i = g + 8 * (q & 1), j = c + 8 * (q >> 1);
    a[q] = factor_bits<T>(i, j, mask) | (factor_bits<T>(i, j + 1, mask) << 16);
  }
}

// The last factor multiplies its fp32 products by the transform's scale (1 for the others): one rounding.
__device__ __forceinline__ void scale_by(float (&c)[4], float scale) {
#pragma unroll
  for (int i = 0; i < 4; ++i) c[i] *= scale;
}

// Field [0, 4) (factor mask0), then field [4, 8) (mask1, 0: none), on 256 contiguous elements per warp step:
// the 16 groups of 16 are the B operand's columns.
template <typename T>
__device__ void contiguous_fields(T* buf, int elems, int mask0, int mask1, float scale, int warp, int lane) {
  uint32_t a0[4], a1[4];
  factor_fragment<T>(a0, mask0, lane);
  factor_fragment<T>(a1, mask1, lane);
  const int offset = bn_row(lane) * 16 + bn_col(lane);  // matrices (groups 0-7 | 8-15) x (field 0-7 | 8-15)
#pragma unroll 1
  for (int u = warp; u < elems / 256; u += kWarps) {
    T* p = buf + swz(u * 256 + offset);
    uint32_t b[4];
    ldsm_x4(b, p);
    float c0[4] = {}, c1[4] = {};  // rows: field value, columns: groups 0-7 / 8-15
    mma16<T>(c0, a0, b[0], b[1]);
    mma16<T>(c1, a0, b[2], b[3]);
    if (mask1) {
      float d0[4] = {}, d1[4] = {};  // rows: group, columns: field values 0-7 / 8-15
      mma16<T>(d0, a1, pack2<T>(c0[0], c0[1]), pack2<T>(c1[0], c1[1]));
      mma16<T>(d1, a1, pack2<T>(c0[2], c0[3]), pack2<T>(c1[2], c1[3]));
      scale_by(d0, scale);
      scale_by(d1, scale);
      stsm_x4(p, pack2<T>(d0[0], d0[1]), pack2<T>(d1[0], d1[1]), pack2<T>(d0[2], d0[3]), pack2<T>(d1[2], d1[3]));
    } else {
      scale_by(c0, scale);
      scale_by(c1, scale);
      stsm_x4_t(p, pack2<T>(c0[0], c0[1]), pack2<T>(c0[2], c0[3]), pack2<T>(c1[0], c1[1]), pack2<T>(c1[2], c1[3]));
    }
  }
}

// The field [log2s, log2s + 4) (log2s >= 3): per warp step a 16 (field) x 16 (two 8-element column blocks)
// B operand through ldmatrix.trans, stored back in place by stmatrix.
template <typename T>
__device__ void strided_field(T* buf, int elems, int log2s, int mask, float scale, int warp, int lane) {
  uint32_t a[4];
  factor_fragment<T>(a, mask, lane);
  const int blocks_log2 = log2s - 3;  // 8-element column blocks per field period
  const int row_offset = a_row(lane) << log2s;
#pragma unroll 1
  for (int u = warp; u < elems / 256; u += kWarps) {
    const int cb = 2 * u + (lane >> 4);
    T* p = buf + swz(((cb >> blocks_log2) << (log2s + 4)) + row_offset + ((cb & ((1 << blocks_log2) - 1)) << 3));
    uint32_t b[4];
    ldsm_x4_t(b, p);
    float c0[4] = {}, c1[4] = {};
    mma16<T>(c0, a, b[0], b[1]);
    mma16<T>(c1, a, b[2], b[3]);
    scale_by(c0, scale);
    scale_by(c1, scale);
    stsm_x4(p, pack2<T>(c0[0], c0[1]), pack2<T>(c0[2], c0[3]), pack2<T>(c1[0], c1[1]), pack2<T>(c1[2], c1[3]));
  }
}

// H_m on i of x[i * n2 + j], n2 >= 8: per warp step two 8-column blocks, KT k-tiles of 16 rows (rows past m
// read row m - 1, which A's zero columns ignore), rows past m not stored.
template <typename T, int KT>
__device__ void special_factor(T* buf, int elems, const Params& p, int warp, int lane) {
  const T* hm = static_cast<const T*>(p.hm);
  uint32_t a[KT][KT][4];
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < KT; ++mt)
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int i = 16 * mt + g + 8 * (q & 1), j = 16 * kt + 2 * t + 8 * (q >> 1);
        a[mt][kt][q] = pack(hm[i * p.mp + j], hm[i * p.mp + j + 1]);
      }
  const int n2 = 1 << p.log2n2, blocks_log2 = p.log2n2 - 3;
  auto block_base = [&](int cb) { return (cb >> blocks_log2) * p.n + ((cb & ((1 << blocks_log2) - 1)) << 3); };
  const int units = ((elems / p.n) << blocks_log2) / 2;  // pairs of 8-column blocks
#pragma unroll 1
  for (int u = warp; u < units; u += kWarps) {
    const int base = block_base(2 * u + (lane >> 4));
    uint32_t b[KT][4];
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) ldsm_x4_t(b[kt], buf + swz(base + min(16 * kt + a_row(lane), p.m - 1) * n2));
    __syncwarp();  // every lane's rows are read before any lane stores
#pragma unroll
    for (int mt = 0; mt < KT; ++mt) {
      float c[2][4] = {};
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) {
        mma16<T>(c[0], a[mt][kt], b[kt][0], b[kt][1]);
        mma16<T>(c[1], a[mt][kt], b[kt][2], b[kt][3]);
      }
      scale_by(c[0], p.scale);
      scale_by(c[1], p.scale);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int col = block_base(2 * u + h) + 2 * t;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int i = 16 * mt + g + 8 * half;
          if (i < p.m)
            *reinterpret_cast<uint32_t*>(buf + swz(col + i * n2)) = pack2<T>(c[h][2 * half], c[h][2 * half + 1]);
        }
      }
    }
  }
}

// H_m on i of x[i * n2 + j], n2 < 8: one thread per column (row, j), fp32 products.
template <typename T> __device__ void special_factor_scalar(T* buf, int elems, const Params& p) {
  const T* hm = static_cast<const T*>(p.hm);
  const int n2 = 1 << p.log2n2, cols = elems / p.n * n2;
#pragma unroll 1
  for (int col = threadIdx.x; col < cols; col += kThreads) {
    const int base = (col >> p.log2n2) * p.n + (col & (n2 - 1));
    float x[kMaxSpecial];
#pragma unroll
    for (int i = 0; i < kMaxSpecial; ++i) x[i] = i < p.m ? to_float(buf[swz(base + i * n2)]) : 0.f;
#pragma unroll 1
    for (int o = 0; o < p.m; ++o) {
      float acc = 0.f;
#pragma unroll
      for (int i = 0; i < kMaxSpecial; ++i) acc += to_float(hm[o * p.mp + i]) * x[i];
      buf[swz(base + o * n2)] = T(acc * p.scale);
    }
  }
}

__device__ __forceinline__ void cp16_zfill(void* smem, const void* gmem, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(bytes));
}

// kSpecial: how the H_m factor runs (kNone for m = 1, kScalar when 2^k < 8, else its k-tiles: 1 or 2).
constexpr int kNone = 0, kScalar = -1;

template <typename T> __device__ __forceinline__ void load_chunk(T* buf, const T* x, int valid, int chunk) {
  if (valid == chunk) {
#pragma unroll 1
    for (int e = threadIdx.x * 8; e < chunk; e += kThreads * 8) cp16(buf + swz(e), x + e);
  } else {  // the last chunk: zeros past the last row, so that no garbage meets a zero of A in a product
#pragma unroll 1
    for (int e = threadIdx.x * 8; e < chunk; e += kThreads * 8) {
      const int bytes = max(0, min(16, (valid - e) * 2));
      cp16_zfill(buf + swz(e), bytes ? x + e : x, bytes);
    }
  }
  asm volatile("cp.async.wait_all;\n" ::);
}

// The factors of H_n in place; the last one applies the scale (none when n = 1: the store does).
template <typename T, int kSpecial> __device__ __forceinline__ void transform_chunk(T* buf, const Params& p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, k = p.log2n2;
  const float last = kSpecial == kNone ? p.scale : 1.f;  // the scale of the last power-of-two factor
  if (k >= 1) {
    const int mask0 = k >= 4 ? 15 : (1 << k) - 1;
    const int mask1 = k <= 4 ? 0 : k >= 8 ? 15 : (1 << (k - 4)) - 1;
    contiguous_fields(buf, p.chunk, mask0, mask1, k <= 8 ? last : 1.f, warp, lane);
    __syncthreads();
    int done = 8;
    for (; done + 4 <= k; done += 4) {
      strided_field(buf, p.chunk, done, 15, done + 4 == k ? last : 1.f, warp, lane);
      __syncthreads();
    }
    if (k > 8 && done < k) {
      const int r = k - done;
      strided_field(buf, p.chunk, k - 4, ((1 << r) - 1) << (4 - r), last, warp, lane);
      __syncthreads();
    }
  }
  if constexpr (kSpecial == kScalar) {
    special_factor_scalar(buf, p.chunk, p);
    __syncthreads();
  } else if constexpr (kSpecial != kNone) {
    special_factor<T, kSpecial>(buf, p.chunk, p, warp, lane);
    __syncthreads();
  }
}

// The chunk back to global memory by one bulk copy (TMA). Its sectors arrive whole: 16-byte stores from every
// thread measured 86 % of the copy rate with twice the L2 write requests (bench/NOTES.md).
template <typename T> __device__ __forceinline__ void store_chunk(T* buf, T* out, int valid, float scale) {
  // the swizzle permutes 16-byte pieces inside 128-byte lines: a warp unswizzles its own lines in place (all its
  // lanes take part in each step, up to the 256-element step past the last valid element, for __syncwarp)
  const int warp_steps_end = (valid + 255) / 256 * 256;
#pragma unroll 1
  for (int e = threadIdx.x * 8; e < warp_steps_end; e += kThreads * 8) {
    uint4 v = *reinterpret_cast<const uint4*>(buf + swz(e));
    if (scale != 1.f) {  // n = 1 only: no factor applied the scale
      T* y = reinterpret_cast<T*>(&v);
#pragma unroll
      for (int i = 0; i < 8; ++i) y[i] = T(to_float(y[i]) * scale);
    }
    __syncwarp();
    *reinterpret_cast<uint4*>(buf + e) = v;
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  const int bulk = valid / 8 * 8;
  if (threadIdx.x == 0 && bulk) {
    cute::SM90_BULK_COPY_S2G::copy(buf, out, bulk * int(sizeof(T)));
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
  }
  for (int e = bulk + int(threadIdx.x); e < valid; e += kThreads) out[e] = buf[e];
  if (threadIdx.x == 0 && bulk) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

template <typename T, int kSpecial> __global__ void __launch_bounds__(kThreads) hadamard_kernel(const Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* buf = reinterpret_cast<T*>(smem_raw);
  const int64_t e0 = int64_t(blockIdx.x) * p.chunk;
  const int valid = int(min(int64_t(p.chunk), p.elems - e0));
  load_chunk(buf, static_cast<const T*>(p.x) + e0, valid, p.chunk);
  __syncthreads();
  transform_chunk<T, kSpecial>(buf, p);
  store_chunk(buf, static_cast<T*>(p.out) + e0, valid, kSpecial == kNone && p.log2n2 == 0 ? p.scale : 1.f);
}

}  // namespace monarchrt::hadacore
