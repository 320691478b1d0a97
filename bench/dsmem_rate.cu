// Bandwidth of distributed shared memory on sm_90a: every CTA of a cluster of C sends one chunk to
// each of the other C - 1 CTAs per round with cp.async.bulk (shared::cta -> shared::cluster, completion
// counted on the receiver's mbarrier). `depth` rounds go out back to back into separate receive slots
// (one mbarrier each) before the cluster synchronises, so up to `depth` rounds are in flight.
// The question it answers (docs/attention-kernels.md, decomposition (e)): can a cluster exchange a
// query tile's aL/Y (~30 B per clock per SM at 30x52) between its stage-R producers and its
// column-owning consumers, and with what chunk size.
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a bench/dsmem_rate.cu -o dsmem_rate
//   ./dsmem_rate   (one JSON line per cluster size and chunk: bytes received per second, in all and per SM)
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t map_to_rank(uint32_t addr, uint32_t rank) {  // our address in CTA `rank`
  uint32_t out;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(out) : "r"(addr), "r"(rank));
  return out;
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ void expect_bytes(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void wait_phase(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT;\n}" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bulk_to_peer(uint32_t dst, uint32_t src, uint32_t bytes, uint32_t peer_bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
      "r"(src), "r"(bytes), "r"(peer_bar)
      : "memory");
}

constexpr int kMaxDepth = 16;  // mbarriers in the first 128 bytes

// Shared memory: [mbarrier per slot, 8 B each | pad to 128][send: chunk][receive: depth x C x chunk].
template <int C>
__global__ void __cluster_dims__(C, 1, 1) __launch_bounds__(128) ring(int groups, int depth, uint32_t chunk) {
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t bar0 = smem_addr(smem), send = bar0 + 128, recv = send + chunk, me = cluster_rank();
  if (threadIdx.x == 0) {
    for (int s = 0; s < depth; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar0 + 8 * s));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  for (uint32_t i = threadIdx.x; i < chunk / 4; i += blockDim.x) reinterpret_cast<uint32_t*>(smem + 128)[i] = i;
  cluster_sync();
  for (int g = 0; g < groups; ++g) {
    if (threadIdx.x == 0)
      for (int s = 0; s < depth; ++s) expect_bytes(bar0 + 8 * s, (C - 1) * chunk);
    cluster_sync();  // every receiver armed for this group, and done with the last one
    for (int t = threadIdx.x; t < depth * (C - 1); t += blockDim.x) {  // one copy per thread
      const int s = t / (C - 1);
      const uint32_t peer = (me + 1 + t % (C - 1)) % C, slot = recv + (s * C + me) * chunk;
      bulk_to_peer(map_to_rank(slot, peer), send, chunk, map_to_rank(bar0 + 8 * s, peer));
    }
    for (int s = 0; s < depth; ++s) wait_phase(bar0 + 8 * s, g & 1);
  }
  cluster_sync();  // no CTA leaves while a peer may still write into it
}

template <int C>
void row(int sms, uint32_t chunk, int depth) {
  auto kernel = ring<C>;
  const int smem = 128 + (depth * C + 1) * chunk;
  if (smem > 227 * 1024) return;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaLaunchConfig_t cfg = {};
  cfg.blockDim = dim3(128);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = C;
  attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  cfg.gridDim = dim3(C);
  int clusters = 0;
  cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg);
  if (clusters == 0) {
    printf("{\"cluster\": %d, \"chunk\": %u, \"depth\": %d, \"error\": \"does not fit\"}\n", C, chunk, depth);
    return;
  }
  const int ctas = clusters * C, groups = 2000 / depth, rounds = groups * depth;
  cfg.gridDim = dim3(ctas);
  cudaLaunchKernelEx(&cfg, kernel, 10, depth, chunk);  // warm-up
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0);
  cudaLaunchKernelEx(&cfg, kernel, groups, depth, chunk);
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, e0, e1);
  const double received = double(rounds) * (C - 1) * chunk * ctas, per_s = received / (ms * 1e-3);
  printf("{\"cluster\": %d, \"chunk\": %u, \"depth\": %d, \"ctas\": %d, \"sms\": %d, \"tb_per_s_all\": %.2f, "
         "\"gb_per_s_per_sm\": %.1f, \"round_us\": %.3f}\n",
         C, chunk, depth, ctas, sms, per_s / 1e12, per_s / sms / 1e9, ms * 1e3 / rounds);
}

int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  for (int depth : {1, 2, 4, 8, kMaxDepth})
    for (uint32_t chunk : {1024u, 4096u, 16384u}) {
      row<2>(sms, chunk, depth);
      row<4>(sms, chunk, depth);
      row<8>(sms, chunk, depth);
    }
  cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    printf("{\"error\": \"%s\"}\n", cudaGetErrorString(err));
    return 1;
  }
  return 0;
}
