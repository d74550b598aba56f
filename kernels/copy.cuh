// Strided copies on a CUDA device: the device half of core's strided-copy engine.
//
// Note [device strided copy]: a copy is a shape, an element size and byte strides for both sides
// (dims outer to inner). The launcher normalizes each copy as the CPU engine does (size-1 dims
// dropped, dims ordered by destination stride, adjacent dims coalesced, a contiguous inner dim
// folded into the element), picks the widest word (16, 8, 4, 2 or 1 bytes) that divides the
// element, both base addresses and every stride, and gives each copy a run of blocks. All copies
// of one call go in one launch: a block finds its copy by a binary search over the block offsets.
// Each thread loads kWordsPerThread words, a warp-stride apart, before it stores any, so loads
// are coalesced on the destination-ordered inner dim and several are in flight at once.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace d9d::kernels {

inline constexpr int kMaxCopyDims = 8;

struct StridedCopy {
  std::byte* dst = nullptr;
  const std::byte* src = nullptr;
  int64_t elem_size = 0;  // bytes
  int ndim = 0;
  int64_t shape[kMaxCopyDims] = {};
  int64_t dst_strides[kMaxCopyDims] = {};  // bytes
  int64_t src_strides[kMaxCopyDims] = {};  // bytes
};

// A copy with more dims than a StridedCopy holds: the launcher splits it along its outer dims.
struct StridedCopyAnyRank {
  std::byte* dst = nullptr;
  const std::byte* src = nullptr;
  int64_t elem_size = 0;
  int ndim = 0;
  const int64_t* shape = nullptr;
  const int64_t* dst_strides = nullptr;
  const int64_t* src_strides = nullptr;
};

// Enqueues all copies on `stream` as one kernel launch (plus a small upload of their descriptors).
// Destinations must not overlap each other or any source. Pointers are device memory of the
// current device. Returns the first CUDA error (launch errors included).
cudaError_t launch_strided_copies(const StridedCopyAnyRank* copies, size_t count,
                                  cudaStream_t stream);

}  // namespace d9d::kernels
