// DLPack interchange without copying, in both of DLPack's ABIs: DLManagedTensorVersioned (DLPack
// 1.x: a version and flags, so read-only memory says so) and the legacy DLManagedTensor. d9d builds
// against DLPack 1.x (subprojects/dlpack, or a system DLPack >= 1.0); dtype codes follow DLPack
// 1.1 and later, so BOOL, F8, F6 and F4 tensors travel too.
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

// As to_dlpack, as a DLManagedTensorVersioned (version {DLPACK_MAJOR_VERSION,
// DLPACK_MINOR_VERSION}); flags has DLPACK_FLAG_BITMASK_READ_ONLY when the storage is read-only (a
// view of a mapped file): consumers must not write through it.
DLManagedTensorVersioned* to_dlpack_versioned(const Tensor& tensor);

// As from_dlpack, from a DLManagedTensorVersioned, taking ownership. Throws ValueError (after
// calling the deleter) for a major version other than 1, and for what from_dlpack rejects; a
// read-only export becomes a tensor whose storage is not writable.
Tensor from_dlpack_versioned(DLManagedTensorVersioned* managed);

}  // namespace d9d
