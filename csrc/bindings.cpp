// pybind11 module monarchrt_ops._C: the launchers, and the architectures this build holds.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "launch.h"
#include "kernel_limits.h"

#ifndef MONARCHRT_CUDA_ARCHS
#define MONARCHRT_CUDA_ARCHS ""
#endif

namespace py = pybind11;

static std::vector<std::string> compiled_archs() {
  std::vector<std::string> out;
  std::string s = MONARCHRT_CUDA_ARCHS, cur;
  for (char c : s) {
    if (c == ';' || c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

// kernel_limits.h as a dict of dicts, per kernel: what monarchrt_ops/backends/cuda.py and `info` read.
static py::dict limits_dict() {
  using namespace monarchrt::limits;
  py::dict attention, stage_r, hadamard, matmul, grid, out;
  grid["max_x"] = kMaxGridX;
  grid["max_y_z"] = kMaxGridYZ;
  grid["align_bytes"] = kAlignBytes;
  attention["head_dim"] = kAttnHeadDim;
  attention["max_b1"] = kAttnMaxB1;
  attention["max_b2"] = kAttnMaxB2;
  attention["cluster"] = kAttnCluster;
  attention["max_q_tiles"] = kMaxGridYZ / kAttnCluster;
  attention["max_heads"] = kMaxGridYZ;
  attention["max_batch"] = kMaxGridYZ;
  attention["stride_multiple"] = kAttnStrideMultiple;
  attention["sm_scale_min"] = double(kAttnMinScale);
  attention["sm_scale_max"] = double(kAttnMaxScale);
  attention["max_num_iters"] = kAttnMaxIters;
  attention["smem_bytes"] = monarchrt::monarch_attention_fwd_smem_bytes();
  attention["dtypes"] = py::make_tuple("float16", "bfloat16");
  py::list orders;
  for (int o : kHadamardOrders) orders.append(o);
  hadamard["orders"] = py::tuple(orders);
  hadamard["max_pow2"] = kHadamardMaxPow2;
  hadamard["dtypes"] = py::make_tuple("float16", "bfloat16");
  matmul["multiple"] = kMatmulMultiple;
  matmul["l_multiple"] = kMatmulLMultiple;
  matmul["max_blocks"] = kMatmulMaxBlocks;
  matmul["dtypes"] = py::make_tuple("float16", "bfloat16");
  out["grid"] = grid;
  out["attention"] = attention;
  py::list stage_r_head_dims;
  for (int d : kStageRHeadDims) stage_r_head_dims.append(d);
  stage_r["head_dims"] = py::tuple(stage_r_head_dims);
  stage_r["max_b2"] = kStageRMaxB2;
  stage_r["max_query_rows"] = kStageRMaxQueryRows;
  stage_r["stride_multiple"] = kAttnStrideMultiple;
  stage_r["dtypes"] = py::make_tuple("float16", "bfloat16");
  out["attention_stage_r"] = stage_r;
  py::dict stage_r_bwd;
  stage_r_bwd["max_b2"] = kStageRBwdMaxB2;
  out["attention_stage_r_bwd"] = stage_r_bwd;  // otherwise attention_stage_r's limits
  py::dict stage_l_bwd;
  stage_l_bwd["max_b1"] = kStageLBwdMaxB1;
  out["attention_stage_l_bwd"] = stage_l_bwd;  // otherwise attention_stage_r's head dims, strides and dtypes
  py::dict stage_l;
  stage_l["max_b1"] = kStageLMaxB1;
  out["attention_stage_l"] = stage_l;  // as attention_stage_l_bwd
  out["hadamard"] = hadamard;
  out["monarch_matmul"] = matmul;
  return out;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "monarchrt_ops CUDA kernels (pointer-level launchers; the torch ops live in Python)";
  m.def("hadamard", &monarchrt::hadamard, py::arg("x"), py::arg("out"), py::arg("rows"), py::arg("n"), py::arg("m"),
        py::arg("hm"), py::arg("hm_size"), py::arg("scale"), py::arg("dtype"), py::arg("stream"),
        "out = x @ H_n^T * scale over contiguous rows of n = m * 2^k halves; out may be x");
  m.def("hadamard_smem_bytes", &monarchrt::hadamard_smem_bytes, py::arg("n"), py::arg("m"),
        "shared memory per block the Hadamard kernel needs for rows of n = m * 2^k");
  m.def("monarch_attention_fwd", &monarchrt::monarch_attention_fwd, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("z"), py::arg("lse"), py::arg("q_strides"), py::arg("k_strides"), py::arg("v_strides"),
        py::arg("batch"), py::arg("nh"), py::arg("n_q_tiles"), py::arg("n_kv_tiles"), py::arg("b1"), py::arg("b2"),
        py::arg("head_dim"), py::arg("causal_block_tiles"), py::arg("sm_scale"), py::arg("dtype"), py::arg("stream"),
        py::arg("mma_sync_only") = false,
        "Fused Monarch attention forward (num_iters = 1): one 8-CTA cluster per (batch, head, query tile); "
        "mma_sync_only runs the portable stage-R path (sm_100a / sm_120a's) on sm_90a too");
  m.def("monarch_stage_r", &monarchrt::monarch_stage_r, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("a_r"),
        py::arg("c_r"), py::arg("a_l"), py::arg("y"), py::arg("c_l"), py::arg("lse_r"), py::arg("q_strides"),
        py::arg("k_strides"), py::arg("v_strides"), py::arg("batch"), py::arg("nh"), py::arg("n_q_tiles"),
        py::arg("n_kv_tiles"), py::arg("b1"), py::arg("b2"), py::arg("head_dim"), py::arg("causal_block_tiles"),
        py::arg("sm_scale"), py::arg("dtype"), py::arg("stream"),
        "Stage R of Monarch attention on warpgroup MMA (sm_90a): aL, Y, cL (and lse_R) of every key row into the "
        "scratch; a_r = 0 on the first pass");
  m.def("monarch_stage_r_smem_bytes", &monarchrt::monarch_stage_r_smem_bytes, py::arg("b2"), py::arg("head_dim"),
        "shared memory per CTA of monarch_stage_r at this tile width and head_dim");
  m.def("monarch_stage_r_reason", &monarchrt::monarch_stage_r_reason, py::arg("batch"), py::arg("nh"),
        py::arg("n_q_tiles"), py::arg("n_kv_tiles"), py::arg("b1"), py::arg("b2"), py::arg("head_dim"),
        py::arg("causal_block_tiles"), py::arg("dtype"),
        "why monarch_stage_r() cannot run this problem ('' when it can), pointers, strides and the device aside");
  m.def("monarch_stage_r_bwd_kv", &monarchrt::monarch_stage_r_bwd_kv, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("a_r"), py::arg("c_r"), py::arg("lse_r"), py::arg("da_l"), py::arg("dy"), py::arg("dc_l"),
        py::arg("delta_r"), py::arg("dk"), py::arg("dk_out"), py::arg("dv"), py::arg("q_strides"), py::arg("k_strides"),
        py::arg("v_strides"), py::arg("batch"), py::arg("nh"), py::arg("n_q_tiles"), py::arg("n_kv_tiles"),
        py::arg("b1"), py::arg("b2"), py::arg("head_dim"), py::arg("causal_block_tiles"), py::arg("sm_scale"),
        py::arg("accumulate"), py::arg("dtype"), py::arg("stream"),
        "Stage R's key-row backward on warpgroup MMA (sm_90a): dK (added to the fp32 partial dk when accumulate; "
        "into dk_out in the dtype where given, else dk) and dV (in the dtype) of every key row; dy = dv = 0 on a "
        "pass with no Y");
  m.def("monarch_stage_r_bwd_q", &monarchrt::monarch_stage_r_bwd_q, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("lse_r"), py::arg("da_l"), py::arg("dy"), py::arg("dc_l"), py::arg("delta_r"), py::arg("dq"),
        py::arg("dq_out"), py::arg("q_strides"), py::arg("k_strides"), py::arg("v_strides"), py::arg("batch"),
        py::arg("nh"), py::arg("n_q_tiles"), py::arg("n_kv_tiles"), py::arg("b1"), py::arg("b2"), py::arg("head_dim"),
        py::arg("causal_block_tiles"), py::arg("sm_scale"), py::arg("dtype"), py::arg("stream"),
        "Stage R's query-row backward on warpgroup MMA (sm_90a), first pass: dq_out = dq + s sum dS_R K in the dtype; "
        "dy = 0 on a pass with no Y");
  m.def("monarch_stage_r_bwd_smem_bytes", &monarchrt::monarch_stage_r_bwd_smem_bytes, py::arg("b2"),
        py::arg("head_dim"), "shared memory per CTA of the larger of monarch_stage_r_bwd_kv and _q (0 over their b2 limit)");
  m.def("monarch_stage_r_bwd_reason", &monarchrt::monarch_stage_r_bwd_reason, py::arg("batch"),
        py::arg("nh"), py::arg("n_q_tiles"), py::arg("n_kv_tiles"), py::arg("b1"), py::arg("b2"),
        py::arg("head_dim"), py::arg("causal_block_tiles"), py::arg("dtype"),
        "why monarch_stage_r_bwd_kv() and _q() cannot run this problem ('' when they can)");
  m.def("monarch_stage_l", &monarchrt::monarch_stage_l, py::arg("q"), py::arg("a_l"), py::arg("y"), py::arg("c_l"),
        py::arg("z"), py::arg("lse"), py::arg("q_strides"), py::arg("batch"), py::arg("nh"), py::arg("n_q_tiles"),
        py::arg("n_kv_tiles"), py::arg("b1"), py::arg("b2"), py::arg("head_dim"), py::arg("causal_block_tiles"),
        py::arg("sm_scale"), py::arg("dtype"), py::arg("stream"),
        "Stage L's forward on warpgroup MMA (sm_90a): lse (fp32) and, where z is given, Z in the dtype from the "
        "scratch aL, Y, cL");
  m.def("monarch_stage_l_smem_bytes", &monarchrt::monarch_stage_l_smem_bytes, py::arg("b1"), py::arg("head_dim"),
        "shared memory per CTA of monarch_stage_l (0 over its b1 limit)");
  m.def("monarch_stage_l_reason", &monarchrt::monarch_stage_l_reason, py::arg("batch"), py::arg("nh"),
        py::arg("n_q_tiles"), py::arg("n_kv_tiles"), py::arg("b1"), py::arg("b2"), py::arg("head_dim"),
        py::arg("causal_block_tiles"), py::arg("dtype"),
        "why monarch_stage_l() cannot run this problem ('' when it can), pointers, strides and the device aside");
  m.def("monarch_stage_l_bwd", &monarchrt::monarch_stage_l_bwd, py::arg("q"), py::arg("dz"), py::arg("z"),
        py::arg("lse"), py::arg("dlse"), py::arg("a_l"), py::arg("y"), py::arg("c_l"), py::arg("da_l"), py::arg("dy"),
        py::arg("dc_l"), py::arg("delta_r"), py::arg("dq"), py::arg("q_strides"), py::arg("dz_strides"),
        py::arg("z_strides"), py::arg("batch"), py::arg("nh"), py::arg("n_q_tiles"), py::arg("n_kv_tiles"),
        py::arg("b1"), py::arg("b2"), py::arg("head_dim"), py::arg("causal_block_tiles"), py::arg("sm_scale"),
        py::arg("dtype"), py::arg("stream"),
        "Stage L's backward on warpgroup MMA (sm_90a), the last pass: daL, dY (in the dtype), dcL and D_R of every "
        "key row into the scratch, and dQ's stage-L part written to the fp32 dq");
  m.def("monarch_stage_l_bwd_smem_bytes", &monarchrt::monarch_stage_l_bwd_smem_bytes, py::arg("b1"),
        py::arg("head_dim"), "shared memory per CTA of monarch_stage_l_bwd (0 over its b1 limit)");
  m.def("monarch_stage_l_bwd_reason", &monarchrt::monarch_stage_l_bwd_reason, py::arg("batch"), py::arg("nh"),
        py::arg("n_q_tiles"), py::arg("n_kv_tiles"), py::arg("b1"), py::arg("b2"), py::arg("head_dim"),
        py::arg("causal_block_tiles"), py::arg("dtype"),
        "why monarch_stage_l_bwd() cannot run this problem ('' when it can), pointers, strides and the device aside");
  m.def("monarch_matmul", &monarchrt::monarch_matmul, py::arg("x"), py::arg("w1"), py::arg("w2"),
        py::arg("workspace"), py::arg("out"), py::arg("rows"), py::arg("k"), py::arg("q"), py::arg("p"), py::arg("l"),
        py::arg("s"), py::arg("r"), py::arg("dtype"), py::arg("stream"),
        "Monarch matmul out = P2 B2 P1 B1 x (docs/math.md) in two kernels; workspace holds y1 tile-transposed");
  m.def("monarch_matmul_workspace_elems", &monarchrt::monarch_matmul_workspace_elems, py::arg("rows"),
        py::arg("k"), py::arg("q"), "elements of the workspace monarch_matmul needs");
  m.def("limits", &limits_dict, "the kernels' limits (csrc/kernel_limits.h), per kernel");
  m.def("hadamard_reason", &monarchrt::hadamard_reason, py::arg("rows"), py::arg("n"), py::arg("m"), py::arg("dtype"),
        "why hadamard() cannot take these rows ('' when it can), pointers and shared memory aside");
  m.def("monarch_attention_fwd_reason", &monarchrt::monarch_attention_fwd_reason, py::arg("batch"), py::arg("nh"),
        py::arg("n_q_tiles"), py::arg("n_kv_tiles"), py::arg("b1"), py::arg("b2"), py::arg("head_dim"),
        py::arg("causal_block_tiles"), py::arg("sm_scale"), py::arg("dtype"),
        "why monarch_attention_fwd() cannot run this problem ('' when it can), pointers and strides aside");
  m.def("monarch_matmul_reason", &monarchrt::monarch_matmul_reason, py::arg("rows"), py::arg("k"), py::arg("q"),
        py::arg("p"), py::arg("l"), py::arg("s"), py::arg("r"), py::arg("dtype"),
        "why monarch_matmul() cannot run these shapes ('' when it can), pointers aside");
  m.def("compiled_archs", &compiled_archs, "CUDA architectures this build holds machine code for, e.g. ['90a']");
}
