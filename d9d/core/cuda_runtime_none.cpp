// Builds without CUDA (see cuda_runtime.hpp).
#include "cuda_runtime.hpp"

#include <d9d/cuda_check.hpp>
#include <d9d/error.hpp>
#include <d9d/storage.hpp>

namespace d9d {
namespace detail {
namespace {

[[noreturn]] void no_cuda(const char* what) {
  throw_error<DeviceError>(what, ": d9d was built without CUDA (nvcc was not found when it was "
                           "configured, or -Dcuda=disabled)");
}

}  // namespace

CudaBlock cuda_malloc(size_t, int) { no_cuda("allocating CUDA memory"); }
void cuda_free(CudaBlock) noexcept {}
void* cuda_malloc_host(size_t) { no_cuda("allocating pinned host memory"); }
void cuda_free_host(void*) noexcept {}
void cuda_memcpy(void*, const void*, size_t, CopyDirection, int) { no_cuda("copying to or from a CUDA device"); }
void cuda_memcpy_peer(void*, int, const void*, int, size_t) { no_cuda("copying between CUDA devices"); }
void cuda_memset_zero(void*, size_t, int) { no_cuda("clearing CUDA memory"); }
void cuda_run_copies(std::span<const CopyTask>, int) { no_cuda("copying on a CUDA device"); }
void cuda_cast(const std::byte*, DType, std::byte*, DType, int64_t, int) { no_cuda("converting on a CUDA device"); }
void cuda_dequantize(QuantFormat, const numerics::DequantLayout&, const std::byte*,
                     const std::byte*, const float*, GlobalScaleMode, std::byte*, DType, int) {
  no_cuda("dequantizing on a CUDA device");
}

void throw_cuda_error(int code, const char* call, const std::string& context) {
  throw_error<DeviceError>(call, " failed: CUDA error ", code, " (", context, ")");
}
CudaDeviceGuard::CudaDeviceGuard(int device) : set_(-1) {
  no_cuda(str_cat("making cuda:", device, " current").c_str());
}
CudaDeviceGuard::CudaDeviceGuard(int, std::nothrow_t) noexcept : set_(-1) {}
CudaDeviceGuard::~CudaDeviceGuard() = default;

}  // namespace detail

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
void set_cuda_cache_limit(size_t) {}
size_t cuda_cache_bytes() { return 0; }

}  // namespace d9d
