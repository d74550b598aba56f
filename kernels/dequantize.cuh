// Dequantization on a CUDA device: d9d::dequantize for CUDA tensors.
//
// Each element is the numerics layer's rule (<d9d/numerics/quantization.hpp>), compiled for the
// device from the same header the CPU uses, so results are byte-identical to the CPU's.
#pragma once

#include <cuda_runtime_api.h>

#include "dequantize_body.hpp"

namespace d9d::kernels {

// Runs the dequantization `args` describes (dequant_args: device memory, not overlapping), enqueued
// on `stream`. cudaErrorMisalignedAddress if the F32 scales or globals are not 4-byte aligned.
cudaError_t launch_dequantize(const DequantArgs& args, cudaStream_t stream);

}  // namespace d9d::kernels
