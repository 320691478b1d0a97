// Monarch matmul (SPEC 2): out = P2 B2 P1 B1 x per row, in two kernels on mma.sync m16n8k16 (fp32
// accumulate; sm_90a, sm_100a, sm_120a). Shapes: x [rows, k*p], w1 [k, q, p], w2 [L, S, R], k*q = L*R.
//
// The intermediate y1 = B1 x never exists in natural order. It is stored tile-transposed,
//     y1t[t][l*R + r][i] = y1[64 t + i, r*L + l]      (64-row tiles t, tile row i innermost),
// which makes every access to it contiguous:
// - kernel 1 (block_matmul_kernel) forms one 64 x bn output block of y1 per CTA (rows of x times
//   w1[g]^T), stores it transposed into shared memory with stmatrix.trans, and writes each of its
//   columns (64 rows = 128 contiguous bytes) to the reordered position l*R + r: the first reorder
//   (r l) -> (l r) costs nothing;
// - kernel 2 (reordered_matmul_kernel) takes for each l the R x 64 block y1t[t][l*R ..][:] (contiguous)
//   as the K-major A operand (ldmatrix.trans) against w2[l]. The products of BL consecutive l are
//   gathered in shared memory so that each (row, s) writes BL*2 contiguous bytes of out[row, s*L + l]:
//   the second reorder (l s) -> (s l) is a full-sector write.
// HBM traffic: x, out once each, y1 written and read once (4 passes of rows * n elements); the weights
// come from L2. Limits (the launcher checks): fp16/bf16, p, q, R, S multiples of 16, L a multiple of 8,
// 16-byte aligned contiguous tensors.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../warp_atoms.cuh"

namespace monarchrt::blockmm {

constexpr int kTileRows = 64;  // rows of x per CTA; y1t's tile height
constexpr int kThreads = 128;  // 4 warps x 16 rows
constexpr int kChunk = 64;     // K elements per shared-memory row: 128 bytes, 8 swizzled 16-byte pieces

// Byte offset of 16-byte piece `piece` of row `row` in a buffer of 128-byte rows, XOR-swizzled so that
// ldmatrix / stmatrix on 8 consecutive rows and any one piece touch all 32 banks once.
__device__ __forceinline__ uint32_t swz(int row, int piece) { return row * 128 + ((piece ^ (row & 7)) << 4); }

// cp.async `rows` rows of `width` elements (a multiple of 8, <= kChunk) from `src` (row stride `ld`
// elements) into a swizzled buffer.
template <typename T>
__device__ __forceinline__ void load_rows(unsigned char* dst, const T* src, int64_t ld, int rows, int width) {
  const int pieces = width >> 3;
  for (int i = threadIdx.x; i < rows * pieces; i += kThreads) {
    const int row = i / pieces, piece = i - row * pieces;
    cp16(dst + swz(row, piece), src + row * ld + piece * 8);
  }
}
__device__ __forceinline__ void swap(uint32_t& a, uint32_t& b) {
  const uint32_t t = a;
  a = b;
  b = t;
}
// Rows of x that tile `tile` holds (the last tile may be partial).
__device__ __forceinline__ int rows_in_tile(int64_t rows, int64_t tile) {
  const int64_t left = rows - tile * kTileRows;
  return left < kTileRows ? int(left) : kTileRows;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

struct Stage1Params {
  const void* x;  // [rows, k*p]
  const void* w1; // [k, q, p]
  void* y1t;      // [ceil(rows / 64), L*R, 64]
  int64_t rows;
  int k, q, p, L, R;
  int bn;         // output columns per CTA: 16, 32, 48 or 64, dividing q
};

// grid (row tiles, k, q / bn). y1 block g = x[:, g*p ..] w1[g]^T, columns c0 .. c0 + bn of it.
template <typename T>
__global__ void __launch_bounds__(kThreads) block_matmul_kernel(const Stage1Params prm) {
  constexpr int kStage = 2 * kTileRows * 128;  // A rows, then up to 64 B rows
  __shared__ __align__(128) unsigned char smem[2 * kStage];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t tile = blockIdx.x;
  const int g = blockIdx.y, c0 = blockIdx.z * prm.bn;
  const int n = prm.k * prm.p, n16 = prm.bn >> 4;
  // rows past the end read the last row (finite values in y1t's padding, never stored to out)
  const int valid = rows_in_tile(prm.rows, tile);
  const T* x = static_cast<const T*>(prm.x) + (tile * kTileRows) * n + int64_t(g) * prm.p;
  const T* w = static_cast<const T*>(prm.w1) + (int64_t(g) * prm.q + c0) * prm.p;

  auto issue = [&](int kc, unsigned char* buf) {
    const int width = min(kChunk, prm.p - kc * kChunk);
    const int pieces = width >> 3;
    for (int i = threadIdx.x; i < kTileRows * pieces; i += kThreads) {
      const int row = i / pieces, piece = i - row * pieces;
      cp16(buf + swz(row, piece), x + int64_t(min(row, valid - 1)) * n + kc * kChunk + piece * 8);
    }
    load_rows(buf + kTileRows * 128, w + kc * kChunk, prm.p, prm.bn, width);
    cp_async_commit();
  };

  float acc[8][4] = {};
  const int nk = (prm.p + kChunk - 1) / kChunk;
  issue(0, smem);
  for (int kc = 0; kc < nk; ++kc) {
    unsigned char* buf = smem + (kc & 1) * kStage;
    if (kc + 1 < nk) {
      issue(kc + 1, smem + ((kc + 1) & 1) * kStage);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int ksteps = min(kChunk, prm.p - kc * kChunk) >> 4;
    for (int kk = 0; kk < ksteps; ++kk) {
      uint32_t a[4];
      ldsm_x4(a, buf + swz(warp * 16 + a_row(lane), 2 * kk + (a_col(lane) >> 3)));
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (j < n16) {
          uint32_t b[4];
          ldsm_x4(b, buf + kTileRows * 128 + swz(j * 16 + bn_row(lane), 2 * kk + (bn_col(lane) >> 3)));
          mma16<T>(acc[2 * j], a, b[0], b[1]);
          mma16<T>(acc[2 * j + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }

  // Epilogue: the block transposed into shared memory (row c holds the 64 tile rows of column c0 + c),
  // then each row to y1t row l*R + r of column j = g*q + c0 + c = r*L + l.
  const int mat = lane >> 3, mrow = lane & 7;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (j < n16) {
      const int c = j * 16 + (mat >> 1) * 8 + mrow;
      stsm_x4_t(smem + swz(c, 2 * warp + (mat & 1)), pack2<T>(acc[2 * j][0], acc[2 * j][1]),
                pack2<T>(acc[2 * j][2], acc[2 * j][3]), pack2<T>(acc[2 * j + 1][0], acc[2 * j + 1][1]),
                pack2<T>(acc[2 * j + 1][2], acc[2 * j + 1][3]));
    }
  }
  __syncthreads();
  T* y1t = static_cast<T*>(prm.y1t) + tile * (int64_t(prm.L) * prm.R * kTileRows);
  for (int i = threadIdx.x; i < prm.bn * 8; i += kThreads) {
    const int c = i >> 3, piece = i & 7;
    const int col = g * prm.q + c0 + c, r = col / prm.L, l = col - r * prm.L;
    *reinterpret_cast<uint4*>(y1t + (int64_t(l) * prm.R + r) * kTileRows + piece * 8) =
        *reinterpret_cast<const uint4*>(smem + swz(c, piece));
  }
}

struct Stage2Params {
  const void* y1t;  // [ceil(rows / 64), L*R, 64]
  const void* w2;   // [L, S, R]
  void* out;        // [rows, S*L]
  int64_t rows;
  int L, S, R;
  int s_tiles;      // S / (8 * NT)
};

template <int BL, int NT> struct Stage2Smem {
  static constexpr int kA = kChunk * 128;                // one l's A chunk: 64 r rows x 64 tile rows
  static constexpr int kW = NT * 8 * 128;                // w2[l] rows s0 .. s0 + 8 NT, one 64-wide r chunk
  static constexpr int kStages = 3;
  static constexpr int kOutRow = NT * 8 * BL * 2;        // bytes of one tile row of the gathered output
  static constexpr int kBytes = kStages * (kA + kW) + kTileRows * kOutRow;
};

// grid (row tiles * s_tiles, L / BL): out[:, s*L + l] for BL consecutive l and 8*NT consecutive s.
// The gathered output O[i][s][l] (tile row i, BL l per (i, s): 16 or 32 contiguous bytes) is swizzled at
// two levels so the accumulator stores of a warp (8 rows x 4 column pairs, one l each) hit 32 banks:
// 16-byte piece u of row i at u ^ (i & 7), and 4-byte word w of a piece at w ^ ((s >> 1) & 3).
template <typename T, int BL, int NT>
__global__ void __launch_bounds__(kThreads) reordered_matmul_kernel(const Stage2Params prm) {
  using Smem = Stage2Smem<BL, NT>;
  constexpr int kPiecesPerS = BL / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* const s_out = smem + Smem::kStages * (Smem::kA + Smem::kW);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t tile = blockIdx.x / prm.s_tiles;
  const int s0 = (blockIdx.x - tile * prm.s_tiles) * NT * 8, l0 = blockIdx.y * BL;
  const T* y1t = static_cast<const T*>(prm.y1t) + tile * (int64_t(prm.L) * prm.R * kTileRows);
  const T* w2 = static_cast<const T*>(prm.w2);
  const int nrc = (prm.R + kChunk - 1) / kChunk, total = BL * nrc;

  auto issue = [&](int step) {
    if (step < total) {
      const int li = step / nrc, rc = step - li * nrc, l = l0 + li;
      const int width = min(kChunk, prm.R - rc * kChunk);
      unsigned char* buf = smem + (step % Smem::kStages) * (Smem::kA + Smem::kW);
      // A: rows r of y1t[tile][l*R + 64 rc + r][0 .. 64]
      const T* a = y1t + (int64_t(l) * prm.R + rc * kChunk) * kTileRows;
      for (int i = threadIdx.x; i < width * 8; i += kThreads) cp16(buf + swz(i >> 3, i & 7), a + i * 8);
      load_rows(buf + Smem::kA, w2 + (int64_t(l) * prm.S + s0) * prm.R + rc * kChunk, prm.R, NT * 8, width);
    }
    cp_async_commit();  // possibly empty: keeps the group count per step fixed
  };

  float acc[NT][4] = {};
  uint32_t held[NT][2];  // even l's results, rounded, waiting for the odd l to pair with
  const int quad = lane & 3, group = lane >> 2;
  issue(0);
  issue(1);
  for (int step = 0; step < total; ++step) {
    issue(step + 2);
    cp_async_wait<2>();
    __syncthreads();
    const unsigned char* buf = smem + (step % Smem::kStages) * (Smem::kA + Smem::kW);
    const int li = step / nrc, rc = step - li * nrc;
    const int ksteps = min(kChunk, prm.R - rc * kChunk) >> 4;
    const int mat = lane >> 3, mrow = lane & 7;
    for (int kk = 0; kk < ksteps; ++kk) {
      uint32_t a[4];  // K-major A: stored rows are r, each holding 8 consecutive tile rows
      ldsm_x4_t(a, buf + swz(kk * 16 + (mat >> 1) * 8 + mrow, 2 * warp + (mat & 1)));
#pragma unroll
      for (int j = 0; j < NT / 2; ++j) {
        uint32_t b[4];
        ldsm_x4(b, buf + Smem::kA + swz(j * 16 + bn_row(lane), 2 * kk + (bn_col(lane) >> 3)));
        mma16<T>(acc[2 * j], a, b[0], b[1]);
        mma16<T>(acc[2 * j + 1], a, b[2], b[3]);
      }
    }
    if (rc == nrc - 1) {
      // this l is complete: pair it with the previous one (consecutive l share a 4-byte word of O)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint32_t lo_rows = pack2<T>(acc[nt][0], acc[nt][1]), hi_rows = pack2<T>(acc[nt][2], acc[nt][3]);
        if (li & 1) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t prev = held[nt][h], cur = h ? hi_rows : lo_rows;
            const int row = warp * 16 + group + 8 * h;
#pragma unroll
            for (int e = 0; e < 2; ++e) {  // column s = nt*8 + 2*quad + e
              const int s = nt * 8 + 2 * quad + e;
              const int u = s * kPiecesPerS + (li >> 3), word = ((li >> 1) & 3) ^ ((s >> 1) & 3);
              const uint32_t v = e ? __byte_perm(prev, cur, 0x7632) : __byte_perm(prev, cur, 0x5410);
              *reinterpret_cast<uint32_t*>(s_out + row * Smem::kOutRow + (((u & ~7) | ((u ^ row) & 7)) << 4) +
                                           word * 4) = v;
            }
          }
        } else {
          held[nt][0] = lo_rows;
          held[nt][1] = hi_rows;
        }
        acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
      }
    }
    __syncthreads();
  }

  // O -> out: one 16-byte piece per thread and pass, rows past the end skipped
  const int64_t out_cols = int64_t(prm.S) * prm.L;
  const int valid = rows_in_tile(prm.rows, tile);
  constexpr int kPiecesPerRow = NT * 8 * kPiecesPerS;
  T* out = static_cast<T*>(prm.out) + tile * kTileRows * out_cols;
  for (int i = threadIdx.x; i < valid * kPiecesPerRow; i += kThreads) {
    const int row = i / kPiecesPerRow, u = i - row * kPiecesPerRow;
    const int s = u / kPiecesPerS, half = u - s * kPiecesPerS;
    const uint4 v = *reinterpret_cast<const uint4*>(s_out + row * Smem::kOutRow + (((u & ~7) | ((u ^ row) & 7)) << 4));
    uint32_t w0 = v.x, w1 = v.y, w2 = v.z, w3 = v.w;  // undo the word swizzle: word i <- word i ^ flip
    const int flip = (s >> 1) & 3;
    if (flip & 1) {
      swap(w0, w1);
      swap(w2, w3);
    }
    if (flip & 2) {
      swap(w0, w2);
      swap(w1, w3);
    }
    *reinterpret_cast<uint4*>(out + row * out_cols + int64_t(s0 + s) * prm.L + l0 + half * 8) = uint4{w0, w1, w2, w3};
  }
}

}  // namespace monarchrt::blockmm
