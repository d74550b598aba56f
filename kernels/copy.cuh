// Strided copies on a CUDA device: the device half of core's strided-copy engine (Note [device
// strided copy] in copy_plan.hpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "copy_plan.hpp"

namespace d9d::kernels {

// Enqueues all copies on `stream` as one kernel launch (plus a small upload of their descriptors).
// Destinations must not overlap each other or any source. Pointers are device memory of the
// current device. Returns the first CUDA error (launch errors included).
cudaError_t launch_strided_copies(const StridedCopyAnyRank* copies, size_t count,
                                  cudaStream_t stream);

}  // namespace d9d::kernels
