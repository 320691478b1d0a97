// Monarch matmul (docs/math.md): out = P2 B2 P1 B1 x per row, in two kernels on mma.sync m16n8k16 (fp32
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
//   the second reorder (l s) -> (s l) writes whole 32-byte sectors (BL = 16; L = 8 * odd takes BL = 8).
// HBM traffic: x, out once each, y1 written and read once (4 passes of rows * n elements; the CTAs of
// other column tiles re-read y1 while it is in L2); the weights come from L2. Limits (the launcher checks): fp16/bf16, p, q, R, S multiples of 16, L a multiple of 8,
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

// Copies into a swizzled buffer are split the same way everywhere: thread t always moves 16-byte piece
// t % 8 of rows t / 8 + 16 j, so its destination is fixed (swz(t / 8, t % 8) + 2048 j) and its source
// offset is computed once; a chunk narrower than 64 elements or with fewer rows masks threads off.
__device__ __forceinline__ int copy_row() { return threadIdx.x >> 3; }
__device__ __forceinline__ int copy_piece() { return threadIdx.x & 7; }
// cp.async rows copy_row() + 16 j < rows (j < kMaxRows / 16) of piece copy_piece() from `src` (this
// thread's row-0 source) with `src_step` elements between rows 16 apart, if the piece is inside `width`.
template <int kMaxRows, typename T>
__device__ __forceinline__ void load_rows(unsigned char* dst, const T* src, int64_t src_step, int rows, int width) {
  if (copy_piece() * 8 >= width) return;
  dst += swz(copy_row(), copy_piece());
#pragma unroll
  for (int j = 0; j < kMaxRows / 16; ++j)
    if (copy_row() + 16 * j < rows) cp16(dst + 2048 * j, src + j * src_step);
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

// grid (row tiles * k * q / bn), column tiles fastest: y1 block g = x[:, g*p ..] w1[g]^T, columns
// c0 .. c0 + bn of it. The CTAs that read one block of x run together, so x leaves DRAM once.
template <typename T>
__global__ void __launch_bounds__(kThreads) block_matmul_kernel(const Stage1Params prm) {
  constexpr int kStage = 2 * kTileRows * 128;  // A rows, then up to 64 B rows
  __shared__ __align__(128) unsigned char smem[2 * kStage];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int c_tiles = prm.q / prm.bn;
  const int64_t tile_g = blockIdx.x / c_tiles, tile = tile_g / prm.k;
  const int g = int(tile_g - tile * prm.k), c0 = int(blockIdx.x - tile_g * c_tiles) * prm.bn;
  const int n = prm.k * prm.p, n16 = prm.bn >> 4;
  // rows past the end read the last row (finite values in y1t's padding, never stored to out)
  const int valid = rows_in_tile(prm.rows, tile);
  const T* x = static_cast<const T*>(prm.x) + (tile * kTileRows) * n + int64_t(g) * prm.p + copy_piece() * 8;
  const T* x_rows[kTileRows / 16];  // this thread's rows of x, clamped to the last valid one
#pragma unroll
  for (int j = 0; j < kTileRows / 16; ++j) x_rows[j] = x + int64_t(min(copy_row() + 16 * j, valid - 1)) * n;
  const T* w = static_cast<const T*>(prm.w1) + (int64_t(g) * prm.q + c0 + copy_row()) * prm.p + copy_piece() * 8;

  auto issue = [&](int kc, unsigned char* buf) {
    const int width = min(kChunk, prm.p - kc * kChunk);
    if (copy_piece() * 8 < width) {
#pragma unroll
      for (int j = 0; j < kTileRows / 16; ++j)
        cp16(buf + swz(copy_row(), copy_piece()) + 2048 * j, x_rows[j] + kc * kChunk);
    }
    load_rows<64>(buf + kTileRows * 128, w + kc * kChunk, 16 * prm.p, prm.bn, width);
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
  T* y1t = static_cast<T*>(prm.y1t) + tile * (int64_t(prm.L) * prm.R * kTileRows) + copy_piece() * 8;
  const int col = g * prm.q + c0 + copy_row(), step_r = 16 / prm.L, step_l = 16 % prm.L;
  int r = col / prm.L, l = col - r * prm.L;  // column col + 16 j = r*L + l, advanced without dividing
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (16 * j < prm.bn)
      *reinterpret_cast<uint4*>(y1t + (int64_t(l) * prm.R + r) * kTileRows) =
          *reinterpret_cast<const uint4*>(smem + swz(copy_row(), copy_piece()) + 2048 * j);
    r += step_r;
    l += step_l;
    if (l >= prm.L) {
      l -= prm.L;
      ++r;
    }
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

// grid (row tiles * s_tiles * L / BL), l groups fastest: out[:, s*L + l] for BL consecutive l and 8*NT
// consecutive s. The CTAs that write one 128-byte line of out (the same rows and s, all l) run together,
// so its sectors meet in L2 before the line goes to DRAM.
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
  const int l_groups = prm.L / BL;
  const int64_t tile_s = blockIdx.x / l_groups, tile = tile_s / prm.s_tiles;
  const int l0 = int(blockIdx.x - tile_s * l_groups) * BL, s0 = int(tile_s - tile * prm.s_tiles) * NT * 8;
  // this thread's copy sources (load_rows): A rows r of y1t[tile][l*R + 64 rc + r][0 .. 64], w2[l][s0 + s][64 rc ..]
  const T* a_src = static_cast<const T*>(prm.y1t) + tile * (int64_t(prm.L) * prm.R * kTileRows) +
                   int64_t(l0) * prm.R * kTileRows + copy_row() * kTileRows + copy_piece() * 8;
  const T* w_src = static_cast<const T*>(prm.w2) + (int64_t(l0) * prm.S + s0 + copy_row()) * prm.R + copy_piece() * 8;
  const int nrc = (prm.R + kChunk - 1) / kChunk, total = BL * nrc;

  // steps run over (l, r chunk) in order; the issue side is kStages - 1 steps ahead
  int issue_rc = 0, issue_stage = 0;
  auto issue = [&](int step) {
    if (step < total) {
      const int width = min(kChunk, prm.R - issue_rc * kChunk);
      unsigned char* buf = smem + issue_stage * (Smem::kA + Smem::kW);
      load_rows<kChunk>(buf, a_src, 16 * kTileRows, width, kChunk);
      load_rows<NT * 8>(buf + Smem::kA, w_src, 16 * prm.R, NT * 8, width);
      issue_stage = issue_stage == Smem::kStages - 1 ? 0 : issue_stage + 1;
      if (++issue_rc == nrc) {  // next l
        issue_rc = 0;
        a_src += int64_t(prm.R) * kTileRows - (nrc - 1) * kChunk * kTileRows;
        w_src += int64_t(prm.S) * prm.R - (nrc - 1) * kChunk;
      } else {
        a_src += kChunk * kTileRows;
        w_src += kChunk;
      }
    }
    cp_async_commit();  // possibly empty: keeps the group count per step fixed
  };

  // Shared-memory offsets of this thread's accumulator stores into O at l = 0 (piece and word move with l)
  const int quad = lane & 3, group = lane >> 2;
  uint32_t o_off[NT][2][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int row = warp * 16 + group + 8 * h, u = (nt * 8 + 2 * quad + e) * kPiecesPerS;
        o_off[nt][h][e] = row * Smem::kOutRow + (((u & ~7) | ((u ^ row) & 7)) << 4);
      }

  float acc[NT][4] = {};
  uint32_t held[NT][2];  // even l's results, rounded, waiting for the odd l to pair with
  const int mat = lane >> 3, mrow = lane & 7;
#pragma unroll
  for (int step = 0; step < Smem::kStages - 1; ++step) issue(step);
  int li = 0, rc = 0, stage = 0;
  for (int step = 0; step < total; ++step) {
    issue(step + Smem::kStages - 1);
    cp_async_wait<Smem::kStages - 1>();
    __syncthreads();
    const unsigned char* buf = smem + stage * (Smem::kA + Smem::kW);
    const int ksteps = min(kChunk, prm.R - rc * kChunk) >> 4;
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
    if (++rc == nrc) {
      // l = l0 + li is complete: pair it with the previous one (consecutive l share a 4-byte word of O)
      const uint32_t piece = (li >> 3) << 4, word = (((li >> 1) & 3) ^ quad) << 2;  // (s >> 1) & 3 == quad
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint32_t lo_rows = pack2<T>(acc[nt][0], acc[nt][1]), hi_rows = pack2<T>(acc[nt][2], acc[nt][3]);
        if (li & 1) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t prev = held[nt][h], cur = h ? hi_rows : lo_rows;
            // column s = nt*8 + 2*quad + e: the low halves (e = 0) pair up, then the high ones
            *reinterpret_cast<uint32_t*>(s_out + ((o_off[nt][h][0] ^ piece) + word)) = __byte_perm(prev, cur, 0x5410);
            *reinterpret_cast<uint32_t*>(s_out + ((o_off[nt][h][1] ^ piece) + word)) = __byte_perm(prev, cur, 0x7632);
          }
        } else {
          held[nt][0] = lo_rows;
          held[nt][1] = hi_rows;
        }
        acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
      }
      rc = 0;
      ++li;
    }
    stage = stage == Smem::kStages - 1 ? 0 : stage + 1;
    __syncthreads();
  }

  // O -> out: thread t always moves piece t % kPiecesPerRow of rows t / kPiecesPerRow + kRowsPerPass j
  constexpr int kPiecesPerRow = NT * 8 * kPiecesPerS, kRowsPerPass = kThreads / kPiecesPerRow;
  const int64_t out_cols = int64_t(prm.S) * prm.L;
  const int valid = rows_in_tile(prm.rows, tile);
  const int u = threadIdx.x % kPiecesPerRow, s = u / kPiecesPerS, half = u % kPiecesPerS;
  const int flip = (s >> 1) & 3;  // undo the word swizzle: word i <- word i ^ flip
  T* out = static_cast<T*>(prm.out) + tile * kTileRows * out_cols + int64_t(s0 + s) * prm.L + l0 + half * 8;
  for (int row = threadIdx.x / kPiecesPerRow; row < valid; row += kRowsPerPass) {
    const uint4 v = *reinterpret_cast<const uint4*>(s_out + row * Smem::kOutRow + (((u & ~7) | ((u ^ row) & 7)) << 4));
    uint32_t w0 = v.x, w1 = v.y, w2 = v.z, w3 = v.w;
    if (flip & 1) {
      swap(w0, w1);
      swap(w2, w3);
    }
    if (flip & 2) {
      swap(w0, w2);
      swap(w1, w3);
    }
    *reinterpret_cast<uint4*>(out + row * out_cols) = uint4{w0, w1, w2, w3};
  }
}

}  // namespace monarchrt::blockmm
