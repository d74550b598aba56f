// D9D_CUDA_CHECK and CudaDeviceGuard: the one check of CUDA runtime calls and the one
// current-device guard, for every layer that calls the runtime itself (core's device paths, dist's
// NCCL backend). Not part of <d9d/core.hpp>: only code that calls the CUDA runtime needs it.
//
// Core headers include no CUDA header, so a runtime error travels here as an int (the cudaError_t
// value; cudaSuccess is 0), and core, which links the runtime, turns it into the runtime's message.
#pragma once

#include <new>
#include <string>

#include <d9d/error.hpp>

namespace d9d::detail {

// Throws DeviceError "<call> failed: <the runtime's message for `code`> (<context>)". The error is
// cleared from the thread's last-error slot first (unless it is sticky), so a caller that catches
// it does not see it again as the "launch error" of its next kernel.
[[noreturn]] void throw_cuda_error(int code, const char* call, const std::string& context);

// Makes `device` the calling thread's current CUDA device for the guard's scope and puts the
// thread's previous device back after it: a d9d call never leaves an embedding engine's thread on
// another device. Throws DeviceError if the device cannot be made current; the std::nothrow form
// (for destructors and cleanup) does not, and set() is then cudaSetDevice's result (-1 in a build
// without CUDA).
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device);
  CudaDeviceGuard(int device, std::nothrow_t) noexcept;
  ~CudaDeviceGuard();
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

  int set() const noexcept { return set_; }  // 0: the device is current

 private:
  int set_ = 0;
  int previous_ = -1;  // restored at the end of the scope; -1: nothing to restore
};

}  // namespace d9d::detail

// Checks a CUDA runtime call; on failure throws DeviceError naming the call, the runtime's message
// and the context given as the remaining arguments (the device, the sizes).
#define D9D_CUDA_CHECK(call, ...)                                                                 \
  do {                                                                                            \
    const int d9d_cuda_err_ = static_cast<int>(call);                                             \
    if (d9d_cuda_err_ != 0) [[unlikely]] {                                                        \
      ::d9d::detail::throw_cuda_error(d9d_cuda_err_, #call, ::d9d::detail::str_cat(__VA_ARGS__)); \
    }                                                                                             \
  } while (0)
