// Element conversion on a CUDA device: Tensor::to(DType) for CUDA tensors.
//
// The conversion of every dtype pair is the CPU's own template (<d9d/numerics/cast_rules.hpp>, Note
// [one set of conversion rules]) instantiated for the device, so results are byte-identical to the
// CPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include <d9d/numerics/dtypes.hpp>

namespace d9d::kernels {

// Converts `count` packed elements of `src_dtype` at `src` into packed `dst_dtype` at `dst` (device
// memory, not overlapping), enqueued on `stream`. cudaErrorInvalidValue for a sub-byte dtype.
cudaError_t launch_cast(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype,
                        int64_t count, cudaStream_t stream);

}  // namespace d9d::kernels
