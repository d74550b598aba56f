// The host half of the device strided copy: turning copies into the descriptors one kernel launch
// works through. Plain C++ (no CUDA header), so that tests/kernels can run the plan and the kernel
// body (copy_body.hpp) on the CPU.
//
// Note [device strided copy]: a copy is a shape, an element size and byte strides for both sides
// (dims outer to inner). The planner normalizes each copy as the CPU engine does (size-1 dims
// dropped, dims ordered by destination stride, adjacent dims coalesced, a contiguous inner dim
// folded into the element) and gives it a run of blocks; all copies of one call go in one launch
// and a block finds its copy by a binary search over the runs. A copy is then done one of two ways:
//   - element-wise: the widest word (16, 8, 4, 2 or 1 bytes) dividing the element, both base
//     addresses and every stride; each thread loads kWordsPerThread words a block-width apart
//     before it stores any, so accesses are coalesced along the destination's inner dim and several
//     loads are in flight at once;
//   - tiled, for a transpose: when the destination's inner dim is contiguous, the source is
//     contiguous along another dim and both are at least kTileMinDim long, a block moves a
//     kTile x kTile tile through shared memory, reading rows along the source's contiguous dim and
//     writing them along the destination's, so both sides are coalesced (element-wise, one of the
//     two would touch a new 32-byte sector per element).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace d9d::kernels {

inline constexpr int kMaxCopyDims = 8;
inline constexpr int kCopyThreads = 256;
inline constexpr int kWordsPerThread = 4;
inline constexpr int64_t kWordsPerBlock = int64_t{kCopyThreads} * kWordsPerThread;
inline constexpr int kTile = 32;                               // tile side, in elements
inline constexpr int kTileRowsPerPass = kCopyThreads / kTile;  // 8: each thread moves 4 elements
inline constexpr int kTileMinDim = 16;
inline constexpr int kTileMaxElem = 8;  // bytes; wider elements are coalesced enough element-wise
inline constexpr int kTileBytes =
    kTile * (kTile + 1) * kTileMaxElem;  // +1 column: no bank conflicts

// A copy with any number of dims, as core hands it over (byte strides).
struct StridedCopyAnyRank {
  std::byte* dst = nullptr;
  const std::byte* src = nullptr;
  int64_t elem_size = 0;
  int ndim = 0;
  const int64_t* shape = nullptr;
  const int64_t* dst_strides = nullptr;
  const int64_t* src_strides = nullptr;
};

// One normalized copy as the kernel sees it (plain data: it is copied into shared memory).
struct DeviceCopy {
  std::byte* dst;
  const std::byte* src;
  int64_t block_begin;  // first block of the launch that works on this copy
  int64_t blocks;
  int word;  // bytes per load/store: 16, 8, 4, 2 or 1 (tiled: the element size)
  int ndim;
  int64_t shape[kMaxCopyDims];
  int64_t dst_strides[kMaxCopyDims];
  int64_t src_strides[kMaxCopyDims];
  // Element-wise copies only.
  int64_t words_per_elem;  // element bytes / word bytes
  int64_t total_words;
  // Tiled copies only: dim `tile_dst_dim` is contiguous in the destination (it is the last dim),
  // dim `tile_src_dim` in the source; the other dims are batch dims.
  bool tiled;
  int tile_src_dim;
  int64_t tiles_dst;  // tiles along the destination's contiguous dim
  int64_t tiles_src;  // tiles along the source's contiguous dim
};

// A launch of at most kInlineCopies copies carries their descriptors in the kernel's parameters:
// no device allocation and no upload for the common case of one tensor.
inline constexpr int kInlineCopies = 8;
struct InlineCopies {
  DeviceCopy copies[kInlineCopies];
};

struct CopyPlan {
  std::vector<DeviceCopy> copies;
  int64_t blocks = 0;  // in all
};

// Normalizes `count` copies (Note [device strided copy]); a copy with more than kMaxCopyDims dims
// left after coalescing is split along its outer dims. `allow_tiled` false keeps every copy
// element-wise (to test the two ways against each other).
CopyPlan plan_copies(const StridedCopyAnyRank* copies, size_t count, bool allow_tiled = true);

}  // namespace d9d::kernels
