// The few CUDA runtime calls core needs, behind plain C++ declarations so that no core header
// includes CUDA. cuda_runtime.cpp implements them with the CUDA runtime; cuda_runtime_none.cpp,
// used when d9d is built without CUDA, throws DeviceError from each.
#pragma once

#include <cstddef>

namespace d9d::detail {

void* cuda_malloc(size_t nbytes, int device);
void cuda_free(void* p, int device) noexcept;
void* cuda_malloc_host(size_t nbytes);
void cuda_free_host(void* p) noexcept;
void cuda_memset_zero(void* dst, size_t nbytes, int device);

enum class CopyDirection { kHostToDevice, kDeviceToHost, kDeviceToDevice };
// Synchronous copy of nbytes; `device` is the device involved (the destination's for D2D).
void cuda_memcpy(void* dst, const void* src, size_t nbytes, CopyDirection direction, int device);

}  // namespace d9d::detail
