// D9D_CUDA_CHECK: the one check for CUDA runtime calls in core (CUDA builds only; private).
#pragma once

#include <cuda_runtime_api.h>

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
