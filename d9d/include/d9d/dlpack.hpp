// DLPack interchange without copying (DLPack's legacy DLManagedTensor, the ABI of the
// libdlpack-dev headers; dtype codes follow DLPack 1.1, so BOOL, F8, F6 and F4 tensors travel too).
#pragma once

#include <dlpack/dlpack.h>

#include <d9d/tensor.hpp>

namespace d9d {

// A DLManagedTensor viewing `tensor`'s bytes; it keeps the storage alive until the consumer calls
// its deleter. data points at the first element (byte_offset 0), as PyTorch exports. Read-only
// storage (a mapped file) is exported too: legacy DLPack cannot mark it read-only, so consumers
// must not write into it.
DLManagedTensor* to_dlpack(const Tensor& tensor);

// A Tensor viewing the bytes of `managed`, taking ownership: `managed->deleter` runs once the last
// tensor viewing those bytes is gone. NULL strides mean row-major. Throws ValueError (after
// calling the deleter) for a dtype, device or layout d9d cannot represent: vector lanes, negative
// strides, CUDA managed memory, unknown type codes.
Tensor from_dlpack(DLManagedTensor* managed);

}  // namespace d9d
