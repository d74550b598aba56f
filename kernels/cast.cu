// See cast.cuh. Compiled with --fmad=false (Note [one set of conversion rules]).
#include "cast.cuh"

#include <algorithm>

#include "cast_rules.hpp"

namespace d9d::kernels {
namespace {

using d9d::detail::Raw;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 16;  // the grid strides over larger tensors

template <class D, class S>
__global__ void __launch_bounds__(kThreads)
    cast_kernel(const Raw<S>* __restrict__ src, Raw<D>* __restrict__ dst, int64_t count) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += step) {
    dst[i] = d9d::detail::convert_value<D>(d9d::detail::value_of<S>(src[i]));
  }
}

}  // namespace

cudaError_t launch_cast(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype,
                        int64_t count, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  cudaError_t err = cudaErrorInvalidValue;  // stays so for a sub-byte dtype
  d9d::detail::visit_element_type(src_dtype, [&](auto s) {
    d9d::detail::visit_element_type(dst_dtype, [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      if (reinterpret_cast<uintptr_t>(src) % alignof(Raw<S>) != 0 ||
          reinterpret_cast<uintptr_t>(dst) % alignof(Raw<D>) != 0) {
        err = cudaErrorMisalignedAddress;
        return;
      }
      const int64_t blocks = std::min<int64_t>((count + kThreads - 1) / kThreads, kMaxBlocks);
      cast_kernel<D, S><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          reinterpret_cast<const Raw<S>*>(src), reinterpret_cast<Raw<D>*>(dst), count);
      err = cudaGetLastError();
    });
  });
  return err;
}

}  // namespace d9d::kernels
