// CUDA builds only (see cuda_runtime.hpp).
#include "cuda_runtime.hpp"

#include <cuda_runtime_api.h>

#include <cstdio>

#include <d9d/error.hpp>
#include <d9d/storage.hpp>

// Checks a CUDA runtime call; the error names the call, the runtime's message and the context
// (device, sizes) given as the remaining arguments.
#define D9D_CUDA_CHECK(call, ...)                                                      \
  do {                                                                                 \
    const cudaError_t d9d_err_ = (call);                                               \
    if (d9d_err_ != cudaSuccess) {                                                     \
      ::d9d::detail::throw_error<::d9d::DeviceError>(#call, " failed: ",               \
                                                     cudaGetErrorString(d9d_err_),     \
                                                     " (", __VA_ARGS__, ")");          \
    }                                                                                  \
  } while (0)

namespace d9d {
namespace detail {

void* cuda_malloc(size_t nbytes, int device) {
  D9D_CUDA_CHECK(cudaSetDevice(device), "device cuda:", device);
  void* p = nullptr;
  D9D_CUDA_CHECK(cudaMalloc(&p, nbytes), "device cuda:", device, ", ", nbytes, " bytes");
  return p;
}

void cuda_free(void* p, int device) noexcept {
  if (cudaSetDevice(device) != cudaSuccess || cudaFree(p) != cudaSuccess) {
    std::fprintf(stderr, "d9d: cudaFree failed on cuda:%d\n", device);
  }
}

void* cuda_malloc_host(size_t nbytes) {
  void* p = nullptr;
  D9D_CUDA_CHECK(cudaMallocHost(&p, nbytes), nbytes, " bytes of pinned host memory");
  return p;
}

void cuda_free_host(void* p) noexcept {
  if (cudaFreeHost(p) != cudaSuccess) std::fprintf(stderr, "d9d: cudaFreeHost failed\n");
}

void cuda_memcpy(void* dst, const void* src, size_t nbytes, CopyDirection direction, int device) {
  const cudaMemcpyKind kind = direction == CopyDirection::kHostToDevice   ? cudaMemcpyHostToDevice
                              : direction == CopyDirection::kDeviceToHost ? cudaMemcpyDeviceToHost
                                                                          : cudaMemcpyDeviceToDevice;
  D9D_CUDA_CHECK(cudaSetDevice(device), "device cuda:", device);
  D9D_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, kind), "device cuda:", device, ", ", nbytes,
                 " bytes");
}

void cuda_memset_zero(void* dst, size_t nbytes, int device) {
  D9D_CUDA_CHECK(cudaSetDevice(device), "device cuda:", device);
  D9D_CUDA_CHECK(cudaMemset(dst, 0, nbytes), "device cuda:", device, ", ", nbytes, " bytes");
}

}  // namespace detail

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

}  // namespace d9d
