// CUDA builds only (see cuda_runtime.hpp).
#include "cuda_runtime.hpp"

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <list>
#include <map>
#include <mutex>
#include <vector>

#include <d9d/cuda_check.hpp>
#include <d9d/error.hpp>
#include <d9d/quantization.hpp>
#include <d9d/storage.hpp>

#include "cast.cuh"
#include "copy.cuh"
#include "dequantize.cuh"

namespace d9d {
namespace detail {
namespace {

// Note [device block cache]: a streamed conversion allocates and frees device tensors of similar
// sizes over and over; cudaMalloc and cudaFree cost tens of microseconds to milliseconds each and
// cudaFree synchronizes the whole device. Freed blocks therefore go to a bounded cache (default
// 4 GiB per process, $D9D_CUDA_CACHE_BYTES, set_cuda_cache_limit) and an allocation of a similar
// size (the cached block at most twice as large) takes one back. Reuse needs no stream
// bookkeeping because every core op waits for its work (Note [synchronous device ops]). When
// cudaMalloc fails, the cache of that device is emptied and the allocation tried once more.
constexpr size_t kSmallGranule = 512;
constexpr size_t kLargeMin = size_t{1} << 20;
constexpr size_t kLargeGranule = size_t{1} << 20;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

size_t default_limit() {
  if (const char* env = std::getenv("D9D_CUDA_CACHE_BYTES")) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (end != env && *end == '\0') return static_cast<size_t>(v);
  }
  return size_t{4} << 30;
}

void release(const CudaBlock& block) noexcept {
  const CudaDeviceGuard device_guard(block.device, std::nothrow);
  if (device_guard.set() != cudaSuccess || cudaFree(block.data) != cudaSuccess) {
    // At process exit the runtime may already be unloaded; the memory goes with the process.
    std::fprintf(stderr, "d9d: cudaFree of %zu bytes failed on cuda:%d\n", block.capacity,
                 block.device);
  }
}

class DeviceBlockCache {
 public:
  CudaBlock take(size_t capacity, int device) {
    std::lock_guard lock(mu_);
    auto it = by_size_.lower_bound({device, capacity});
    if (it == by_size_.end() || it->first.first != device || it->first.second > 2 * capacity) {
      return {};
    }
    const CudaBlock block = *it->second;
    order_.erase(it->second);
    by_size_.erase(it);
    cached_ -= block.capacity;
    return block;
  }

  void give(const CudaBlock& block) {
    std::vector<CudaBlock> evicted;
    {
      std::lock_guard lock(mu_);
      if (block.capacity > limit_) {
        evicted.push_back(block);
      } else {
        order_.push_back(block);
        by_size_.emplace(std::pair{block.device, block.capacity}, std::prev(order_.end()));
        cached_ += block.capacity;
        trim_locked(limit_, -1, evicted);
      }
    }
    for (const CudaBlock& b : evicted) release(b);
  }

  // Frees every cached block of `device` (-1: of every device) beyond `keep` bytes in all.
  void trim(size_t keep, int device) {
    std::vector<CudaBlock> evicted;
    {
      std::lock_guard lock(mu_);
      trim_locked(keep, device, evicted);
    }
    for (const CudaBlock& b : evicted) release(b);
  }

  void set_limit(size_t limit) {
    {
      std::lock_guard lock(mu_);
      limit_ = limit;
    }
    trim(limit, -1);
  }

  size_t cached() {
    std::lock_guard lock(mu_);
    return cached_;
  }

 private:
  void trim_locked(size_t keep, int device, std::vector<CudaBlock>& evicted) {
    for (auto it = order_.begin(); it != order_.end() && cached_ > keep;) {
      if (device >= 0 && it->device != device) {
        ++it;
        continue;
      }
      auto range = by_size_.equal_range({it->device, it->capacity});
      for (auto m = range.first; m != range.second; ++m) {
        if (m->second == it) {
          by_size_.erase(m);
          break;
        }
      }
      cached_ -= it->capacity;
      evicted.push_back(*it);
      it = order_.erase(it);
    }
  }

  std::mutex mu_;
  std::list<CudaBlock> order_;  // oldest first
  std::multimap<std::pair<int, size_t>, std::list<CudaBlock>::iterator> by_size_;
  size_t cached_ = 0;
  size_t limit_ = default_limit();
};

DeviceBlockCache& cache() {
  static DeviceBlockCache* c = new DeviceBlockCache();  // never destroyed: blocks may be freed at exit
  return *c;
}

void sync_stream(int device, const char* what, size_t count, size_t bytes) {
  D9D_CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread), what, " on cuda:", device, ", ",
                 count, " item(s), ", bytes, " bytes");
}

// A launcher that failed after its kernel went out (its plan's cudaFreeAsync, say) leaves work
// on the stream: let it finish before the caller's buffers go back to the cache with the throw.
void wait_after_failed_launch() noexcept { (void)cudaStreamSynchronize(cudaStreamPerThread); }

}  // namespace

void throw_cuda_error(int code, const char* call, const std::string& context) {
  (void)cudaGetLastError();
  throw_error<DeviceError>(call, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(code)),
                           " (", context, ")");
}

CudaDeviceGuard::CudaDeviceGuard(int device) : CudaDeviceGuard(device, std::nothrow) {
  if (set_ != cudaSuccess) [[unlikely]] {
    throw_cuda_error(set_, str_cat("cudaSetDevice(", device, ")").c_str(),
                     str_cat("device cuda:", device));
  }
}

CudaDeviceGuard::CudaDeviceGuard(int device, std::nothrow_t) noexcept {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current == device) return;
  set_ = cudaSetDevice(device);
  if (set_ == cudaSuccess && current >= 0) previous_ = current;
}

CudaDeviceGuard::~CudaDeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

CudaBlock cuda_malloc(size_t nbytes, int device) {
  const size_t capacity =
      nbytes < kLargeMin ? round_up(std::max<size_t>(nbytes, 1), kSmallGranule)
                         : round_up(nbytes, kLargeGranule);
  if (CudaBlock reused = cache().take(capacity, device); reused.data != nullptr) return reused;
  const CudaDeviceGuard device_guard(device);
  void* p = nullptr;
  if (cudaMalloc(&p, capacity) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free allocation error before retrying
    cache().trim(0, device);
    D9D_CUDA_CHECK(cudaMalloc(&p, capacity), "device cuda:", device, ", ", nbytes,
                   " bytes requested");
  }
  return {p, capacity, device};
}

void cuda_free(CudaBlock block) noexcept {
  if (block.data == nullptr) return;
  try {
    cache().give(block);
  } catch (...) {  // bad_alloc from the bookkeeping: give the block back to CUDA instead
    release(block);
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
  const CudaDeviceGuard device_guard(device);
  D9D_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, kind, cudaStreamPerThread), "device cuda:",
                 device, ", ", nbytes, " bytes");
  sync_stream(device, "cudaMemcpyAsync", 1, nbytes);
}

void cuda_memcpy_peer(void* dst, int dst_device, const void* src, int src_device, size_t nbytes) {
  const CudaDeviceGuard device_guard(dst_device);
  D9D_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, nbytes, cudaStreamPerThread),
                 "cuda:", src_device, " to cuda:", dst_device, ", ", nbytes, " bytes");
  sync_stream(dst_device, "cudaMemcpyPeerAsync", 1, nbytes);
}

void cuda_memset_zero(void* dst, size_t nbytes, int device) {
  const CudaDeviceGuard device_guard(device);
  D9D_CUDA_CHECK(cudaMemsetAsync(dst, 0, nbytes, cudaStreamPerThread), "device cuda:", device,
                 ", ", nbytes, " bytes");
  sync_stream(device, "cudaMemsetAsync", 1, nbytes);
}

void cuda_run_copies(std::span<const CopyTask> tasks, int device) {
  if (tasks.empty()) return;
  std::vector<kernels::StridedCopyAnyRank> copies;
  copies.reserve(tasks.size());
  size_t bytes = 0;
  for (const CopyTask& t : tasks) {
    kernels::StridedCopyAnyRank c;
    c.dst = t.dst;
    c.src = t.src;
    c.elem_size = t.elem_size;
    c.ndim = static_cast<int>(t.shape.size());
    c.shape = t.shape.data();
    c.dst_strides = t.dst_strides.data();
    c.src_strides = t.src_strides.data();
    copies.push_back(c);
    bytes += static_cast<size_t>(numel_of(t.shape) * t.elem_size);
  }
  const CudaDeviceGuard device_guard(device);
  const cudaError_t launch =
      kernels::launch_strided_copies(copies.data(), copies.size(), cudaStreamPerThread);
  if (launch != cudaSuccess) wait_after_failed_launch();
  D9D_CUDA_CHECK(launch, "strided copy on cuda:", device, ", ", copies.size(), " tensor(s), ",
                 bytes, " bytes");
  sync_stream(device, "strided copy", copies.size(), bytes);
}

void cuda_cast(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype,
               int64_t count, int device) {
  const CudaDeviceGuard device_guard(device);
  const cudaError_t launch =
      kernels::launch_cast(src, src_dtype, dst, dst_dtype, count, cudaStreamPerThread);
  if (launch != cudaSuccess) wait_after_failed_launch();
  D9D_CUDA_CHECK(launch, "cast ", src_dtype, " to ", dst_dtype, " on cuda:", device, ", ", count,
                 " elements");
  sync_stream(device, "cast", 1, static_cast<size_t>(count * element_size(dst_dtype)));
}

void cuda_dequantize(QuantFormat format, const numerics::DequantLayout& layout,
                     const std::byte* source, const std::byte* scale, const float* global_scale,
                     GlobalScaleMode mode, std::byte* out, DType out_dtype, int device) {
  const CudaDeviceGuard device_guard(device);
  const kernels::DequantArgs args =
      kernels::dequant_args(format, layout, source, scale, global_scale, mode, out, out_dtype);
  const cudaError_t launch = kernels::launch_dequantize(args, cudaStreamPerThread);
  if (launch != cudaSuccess) wait_after_failed_launch();
  const auto bytes = static_cast<size_t>(layout.rows * layout.cols * element_size(out_dtype));
  D9D_CUDA_CHECK(launch, "dequantize ", quant_format_name(format), " to ", out_dtype,
                 " on cuda:", device, ", ", layout.rows, " x ", layout.cols, " elements");
  sync_stream(device, "dequantize", 1, bytes);
}

}  // namespace detail

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

void set_cuda_cache_limit(size_t bytes) { detail::cache().set_limit(bytes); }
size_t cuda_cache_bytes() { return detail::cache().cached(); }

}  // namespace d9d
