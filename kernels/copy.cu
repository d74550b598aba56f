// See Note [device strided copy] in copy_plan.hpp; the thread's work is in copy_body.hpp.
#include "copy.cuh"

#include <climits>

#include "copy_body.hpp"

namespace d9d::kernels {
namespace {

static_assert(sizeof(InlineCopies) + sizeof(int) <= 4096,
              "over the classic kernel-parameter limit");

__device__ __forceinline__ void copy_block(const DeviceCopy* copies, int count) {
  __shared__ DeviceCopy c;
  __shared__ alignas(16) std::byte tile[kTileBytes];
  if (threadIdx.x == 0) c = copies[find_copy(copies, count, blockIdx.x)];
  __syncthreads();
  const int64_t block = static_cast<int64_t>(blockIdx.x) - c.block_begin;
  const int thread = static_cast<int>(threadIdx.x);
  if (c.tiled) {  // the whole block takes this branch, so the barrier in it is safe
    const TilePosition p = tile_position(c, block);
    tile_load_any(c, p, thread, tile);
    __syncthreads();
    tile_store_any(c, p, thread, tile);
    return;
  }
  copy_words_any(c, block, thread);
}

__global__ void __launch_bounds__(kCopyThreads)
    strided_copy_kernel(const DeviceCopy* copies, int count) {
  copy_block(copies, count);
}

__global__ void __launch_bounds__(kCopyThreads)
    strided_copy_kernel_inline(const __grid_constant__ InlineCopies copies, int count) {
  copy_block(copies.copies, count);
}

}  // namespace

cudaError_t launch_strided_copies(const StridedCopyAnyRank* copies, size_t count,
                                  cudaStream_t stream) {
  const CopyPlan plan = plan_copies(copies, count);
  if (plan.copies.empty()) return cudaSuccess;
  if (plan.copies.size() > static_cast<size_t>(INT_MAX)) return cudaErrorInvalidValue;
  if (plan.blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  const auto blocks = static_cast<unsigned>(plan.blocks);
  const int n = static_cast<int>(plan.copies.size());
  if (plan.copies.size() <= static_cast<size_t>(kInlineCopies)) {
    InlineCopies inline_copies{};
    for (int i = 0; i < n; ++i) inline_copies.copies[i] = plan.copies[static_cast<size_t>(i)];
    (void)cudaGetLastError();  // what cudaGetLastError returns next is this launch's
    strided_copy_kernel_inline<<<blocks, kCopyThreads, 0, stream>>>(inline_copies, n);
    return cudaGetLastError();
  }
  const size_t bytes = plan.copies.size() * sizeof(DeviceCopy);
  DeviceCopy* device_plan = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&device_plan), bytes, stream);
  if (err != cudaSuccess) return err;
  // From pageable memory: returns once `plan` has been staged, so it may go out of scope.
  err = cudaMemcpyAsync(device_plan, plan.copies.data(), bytes, cudaMemcpyHostToDevice, stream);
  if (err == cudaSuccess) {
    (void)cudaGetLastError();
    strided_copy_kernel<<<blocks, kCopyThreads, 0, stream>>>(device_plan, n);
    err = cudaGetLastError();
  }
  const cudaError_t free_err = cudaFreeAsync(device_plan, stream);
  return err != cudaSuccess ? err : free_err;
}

}  // namespace d9d::kernels
