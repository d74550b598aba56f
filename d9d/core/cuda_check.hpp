// D9D_CUDA_CHECK: the one check for CUDA runtime calls in core (CUDA builds only; private).
#pragma once

#include <cuda_runtime_api.h>

#include <new>

#include <d9d/error.hpp>

// Checks a CUDA runtime call; on failure throws DeviceError naming the call, the runtime's
// message and the context given as the remaining arguments (the device, the sizes). The error is
// cleared from the thread's last-error slot first (unless it is sticky), so a caller that catches
// it does not see it again as the "launch error" of its next kernel.
#define D9D_CUDA_CHECK(call, ...)                                                          \
  do {                                                                                     \
    const cudaError_t d9d_cuda_err_ = (call);                                              \
    if (d9d_cuda_err_ != cudaSuccess) [[unlikely]] {                                       \
      (void)cudaGetLastError();                                                            \
      ::d9d::detail::throw_error<::d9d::DeviceError>(#call, " failed: ",                   \
                                                     cudaGetErrorString(d9d_cuda_err_),    \
                                                     " (", __VA_ARGS__, ")");              \
    }                                                                                      \
  } while (0)

namespace d9d::detail {

// Makes `device` the calling thread's current CUDA device for the guard's scope and puts the
// thread's previous device back after it: a d9d call never leaves an embedding engine's thread on
// another device. Throws DeviceError if the device cannot be made current; the std::nothrow form
// (for destructors and cleanup) does not, and set() is then cudaSetDevice's result.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) : CudaDeviceGuard(device, std::nothrow) {
    if (set_ != cudaSuccess) [[unlikely]] {
      (void)cudaGetLastError();
      ::d9d::detail::throw_error<::d9d::DeviceError>("cudaSetDevice(", device, ") failed: ",
                                                     cudaGetErrorString(set_), " (device cuda:",
                                                     device, ")");
    }
  }
  CudaDeviceGuard(int device, std::nothrow_t) noexcept {
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current == device) return;
    set_ = cudaSetDevice(device);
    if (set_ == cudaSuccess && current >= 0) previous_ = current;
  }
  ~CudaDeviceGuard() {
    if (previous_ >= 0) (void)cudaSetDevice(previous_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

  cudaError_t set() const noexcept { return set_; }

 private:
  cudaError_t set_ = cudaSuccess;
  int previous_ = -1;  // restored at the end of the scope; -1: nothing to restore
};

}  // namespace d9d::detail
