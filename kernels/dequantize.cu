// See dequantize.cuh; the thread's work is in dequantize_body.hpp. Compiled with --fmad=false
// (Note [one set of conversion rules]).
#include "dequantize.cuh"

#include <algorithm>

namespace d9d::kernels {
namespace {

template <QuantFormat kFormat, class D, GlobalScaleMode kMode>
__global__ void __launch_bounds__(kDequantThreads) dequantize_kernel(const DequantArgs args) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kDequantThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kDequantThreads + threadIdx.x; i < args.items;
       i += step) {
    dequantize_item<kFormat, D, kMode>(args, i);
  }
}

template <QuantFormat kFormat, class D, GlobalScaleMode kMode>
cudaError_t launch(const DequantArgs& args, cudaStream_t stream) {
  const int64_t blocks =
      std::min<int64_t>((args.items + kDequantThreads - 1) / kDequantThreads, kDequantMaxBlocks);
  (void)cudaGetLastError();  // what cudaGetLastError returns next is this launch's
  dequantize_kernel<kFormat, D, kMode>
      <<<static_cast<unsigned>(blocks), kDequantThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

template <class D>
cudaError_t launch_for(const DequantArgs& args, cudaStream_t stream) {
  switch (args.format) {
    case QuantFormat::kFp8Block:
    case QuantFormat::kFp8Channel:  // the layout tells them apart
      return launch<QuantFormat::kFp8Block, D, GlobalScaleMode::kMultiply>(args, stream);
    case QuantFormat::kMxfp4:
      return launch<QuantFormat::kMxfp4, D, GlobalScaleMode::kMultiply>(args, stream);
    case QuantFormat::kNvfp4:
      return args.mode == GlobalScaleMode::kDivide
                 ? launch<QuantFormat::kNvfp4, D, GlobalScaleMode::kDivide>(args, stream)
                 : launch<QuantFormat::kNvfp4, D, GlobalScaleMode::kMultiply>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_dequantize(const DequantArgs& args, cudaStream_t stream) {
  if (args.items <= 0) return cudaSuccess;
  const bool fp8 = args.format == QuantFormat::kFp8Block || args.format == QuantFormat::kFp8Channel;
  if ((fp8 && reinterpret_cast<uintptr_t>(args.scale) % 4 != 0) ||
      reinterpret_cast<uintptr_t>(args.global_scale) % 4 != 0) {
    return cudaErrorMisalignedAddress;
  }
  switch (args.out_dtype) {
    case DType::BF16:
      return launch_for<d9d::numerics::BF16T>(args, stream);
    case DType::F16:
      return launch_for<d9d::numerics::F16T>(args, stream);
    case DType::F32:
      return launch_for<float>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace d9d::kernels
