// The CUDA runtime calls and kernel launches core needs, behind plain C++ declarations so that no
// core header includes CUDA. cuda_runtime.cpp implements them with the CUDA runtime and the
// kernels/ launchers; cuda_runtime_none.cpp, used when d9d is built without CUDA, throws
// DeviceError from each.
//
// Note [synchronous device ops]: every function here that enqueues work does so on the calling
// thread's per-thread default stream and waits for it before returning, as the CPU ops do. So a
// device tensor's bytes are final whenever a core op has returned, a freed device block has no
// work pending on it, and blocks can be reused from the cache without any stream bookkeeping.
// (The asynchronous path is the engine's host-to-device staging, StagingRing, which waits for
// its own copies before it returns.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include <d9d/dtype.hpp>
#include <d9d/numerics/quantization.hpp>

#include "copy.hpp"

namespace d9d::detail {

// Device memory from the caching allocator (Note [device block cache] in cuda_runtime.cpp).
struct CudaBlock {
  void* data = nullptr;
  size_t capacity = 0;  // bytes actually reserved; pass back to cuda_free
  int device = 0;
};
CudaBlock cuda_malloc(size_t nbytes, int device);
void cuda_free(CudaBlock block) noexcept;

void* cuda_malloc_host(size_t nbytes);
void cuda_free_host(void* p) noexcept;
void cuda_memset_zero(void* dst, size_t nbytes, int device);

enum class CopyDirection { kHostToDevice, kDeviceToHost, kDeviceToDevice };
// Synchronous copy of nbytes; `device` is the device involved (the destination's for D2D).
void cuda_memcpy(void* dst, const void* src, size_t nbytes, CopyDirection direction, int device);
// Synchronous copy between the memory of two devices.
void cuda_memcpy_peer(void* dst, int dst_device, const void* src, int src_device, size_t nbytes);

// Runs the strided copies (byte strides, see CopyTask) on `device`, all in one kernel launch;
// every pointer is memory of that device. Destinations must not overlap each other or a source.
void cuda_run_copies(std::span<const CopyTask> tasks, int device);

// Converts `count` packed elements on `device` (src and dst aligned to their element sizes).
void cuda_cast(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype,
               int64_t count, int device);

// dequantize() on `device` (kernels/dequantize.cuh says what each pointer holds); every pointer is
// memory of that device, `global_scale` may be null.
void cuda_dequantize(QuantFormat format, const numerics::DequantLayout& layout,
                     const std::byte* source, const std::byte* scale, const float* global_scale,
                     GlobalScaleMode mode, std::byte* out, DType out_dtype, int device);

}  // namespace d9d::detail
