// See cast.cuh; the thread's work is in cast_body.hpp (Note [vectorized cast]). Compiled with
// --fmad=false (Note [one set of conversion rules]).
#include "cast.cuh"

#include <algorithm>

#include "cast_body.hpp"

namespace d9d::kernels {
namespace {

template <class D, class S>
__global__ void __launch_bounds__(kCastThreads)
    cast_kernel(const std::byte* __restrict__ src, std::byte* __restrict__ dst, int64_t count,
                int64_t items, bool vector) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kCastThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kCastThreads + threadIdx.x; i < items;
       i += step) {
    cast_item<D, S>(src, dst, count, i, vector);
  }
}

}  // namespace

cudaError_t launch_cast(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype,
                        int64_t count, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  cudaError_t err = cudaErrorInvalidValue;  // stays so for a sub-byte dtype
  d9d::numerics::visit_element_type(src_dtype, [&](auto s) {
    d9d::numerics::visit_element_type(dst_dtype, [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      if (reinterpret_cast<uintptr_t>(src) % alignof(Raw<S>) != 0 ||
          reinterpret_cast<uintptr_t>(dst) % alignof(Raw<D>) != 0) {
        err = cudaErrorMisalignedAddress;
        return;
      }
      const bool vector = cast_vectorizable<D, S>(src, dst);
      const int64_t items = cast_items<D, S>(count, vector);
      const int64_t blocks =
          std::min<int64_t>((items + kCastThreads - 1) / kCastThreads, kCastMaxBlocks);
      (void)cudaGetLastError();  // what cudaGetLastError returns next is this launch's
      cast_kernel<D, S>
          <<<static_cast<unsigned>(blocks), kCastThreads, 0, stream>>>(src, dst, count, items,
                                                                        vector);
      err = cudaGetLastError();
    });
  });
  return err;
}

}  // namespace d9d::kernels
