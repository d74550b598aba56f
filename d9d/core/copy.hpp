// The strided-copy engine: every byte that core moves on the CPU goes through run_copies.
//
// Note [strided copy]: a copy is a shape, an element size and byte strides for both sides. Each
// task is first normalized: size-1 dims dropped, dims ordered by destination stride, adjacent
// dims coalesced, and contiguous inner dims folded into a bigger "element". What is left picks
// one of four plans:
//   flat    one contiguous block: memcpy, split in chunks across threads;
//   runs    contiguous runs of at least kMinRunBytes: one memcpy per run;
//   tile    a transpose (the destination's inner dim is strided in the source and another dim
//           is contiguous there): copied in square tiles that stay in L1;
//   gather  anything else: an element loop along the inner dim.
// Tasks are split into units of known byte size and the units of all tasks are dealt out to the
// threads in equal byte shares, so one stack of a thousand small tensors is one parallel job.
// Elements are moved with memcpy of a fixed size: no alignment is assumed (mapped files).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include <d9d/dims.hpp>
#include <d9d/tensor.hpp>

namespace d9d::detail {

struct CopyTask {
  std::byte* dst = nullptr;
  const std::byte* src = nullptr;
  int64_t elem_size = 0;  // bytes
  Dims shape;
  Dims dst_strides;  // bytes
  Dims src_strides;  // bytes
};

// A task that copies the elements of `src` into those of `dst` (same shape and element size).
CopyTask copy_task(const Tensor& dst, const Tensor& src);

// Runs the tasks; their destinations must not overlap each other or their sources.
void run_copies(std::span<const CopyTask> tasks);

}  // namespace d9d::detail
