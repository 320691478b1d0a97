// The limits of the CUDA kernels, stated once: the launchers check them (through the *_reason functions
// of launch.h) and bindings.cpp exports them to Python (monarchrt_ops._C.limits(), read by
// monarchrt_ops/backends/cuda.py), so automatic selection never picks a kernel that would then raise.
// Not named limits.h: csrc/ is on the include path, and that would shadow the C header.
// Plain constants: no CUDA headers, so the bindings need none.
#pragma once

#include <cstdint>

namespace monarchrt::limits {

// Grid dimensions of a launch (CUDA): x up to 2^31 - 1, y and z up to 65535.
constexpr int64_t kMaxGridX = 0x7fffffff;
constexpr int64_t kMaxGridYZ = 65535;
constexpr int kAlignBytes = 16;  // base alignment of every tensor a kernel reads or writes (16-byte copies)

// Fused Monarch attention forward (csrc/attention).
constexpr int kAttnHeadDim = 128;
constexpr int kAttnMaxB1 = 32;  // rows per tile
constexpr int kAttnMaxB2 = 64;  // columns per tile
constexpr int kAttnCluster = 8;  // CTAs per query tile: grid x = query tiles * 8, bounded like y and z
constexpr int kAttnStrideMultiple = 8;  // element strides of q, k, v (16-byte rows)
// Padded columns (l >= b2) carry a raw logit of -1e30: times sm_scale * log2(e) it must stay finite and
// far below every real logit, which holds for these scales.
constexpr float kAttnMinScale = 1e-20f;
constexpr float kAttnMaxScale = 1e8f;
constexpr int kAttnMaxIters = 1;  // one pass (MonarchRT); num_iters > 1 runs elsewhere

// Monarch attention stage R on warpgroup MMA (csrc/attention/stage_r.cuh), sm_90a only.
constexpr int kStageRHeadDims[] = {64, 128};
constexpr int kStageRMaxB2 = 96;  // columns per tile: the products' N and K are b2 rounded up to 16
constexpr int64_t kStageRMaxQueryRows = int64_t(1) << 24;  // query tiles * b2: split in fp32 exactly below this
// Its backward (csrc/attention/stage_r_bwd.cuh): at kL = 96 the dK launch's K, V, block rows and R/dS
// buffer take 113 KB + alignment, over two CTAs per SM. Otherwise the forward's limits.
constexpr int kStageRBwdMaxB2 = 80;
// Stage L's backward on warpgroup MMA (csrc/attention/stage_l_bwd.cuh), the last pass: a column's rows i
// are N of its products (b1 padded to 16), dS^T one 128-byte row a key. Head dims as stage R's.
constexpr int kStageLBwdMaxB1 = 64;
// Stage L's forward on warpgroup MMA (csrc/attention/stage_l.cuh): a column's rows i are M of one wgmma.
constexpr int kStageLMaxB1 = 64;

// Hadamard transform (csrc/hadamard): n = m * 2^k.
constexpr int kHadamardOrders[] = {1, 12, 20, 28};  // m (n = 40 * 2^k is 20 * 2^(k+1))
constexpr int64_t kHadamardMaxPow2 = 65536;  // 2^k

// Monarch matmul (csrc/monarch_matmul): w1 (k, q, p), w2 (l, s, r).
constexpr int kMatmulMultiple = 16;  // of p, q, r and s
constexpr int kMatmulLMultiple = 8;  // of l
constexpr int64_t kMatmulMaxBlocks = int64_t(1) << 31;  // k * q

}  // namespace monarchrt::limits
