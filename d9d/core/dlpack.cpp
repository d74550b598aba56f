#include <d9d/dlpack.hpp>

#include <functional>
#include <memory>
#include <vector>

#include "tensor_checks.hpp"

namespace d9d {
namespace {

struct ExportContext {
  Tensor tensor;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
};

DType dtype_from_dlpack(DLDataType t) {
  D9D_CHECK(t.lanes == 1, "from_dlpack: vector types (lanes = ", t.lanes, ") are not supported");
  for (int i = 0; i < kNumDTypes; ++i) {
    const DTypeInfo& info = all_dtypes()[i];
    if (info.dlpack_code == t.code && info.bits == t.bits) return info.dtype;
  }
  detail::throw_error<ValueError>("from_dlpack: no d9d dtype for DLPack type code ",
                                  int{t.code}, " with ", int{t.bits}, " bits");
}

// Fills `dl` to view `tensor`, whose shape and strides `ctx` keeps alive.
void describe(const Tensor& tensor, ExportContext& ctx, DLTensor& dl) {
  ctx.tensor = tensor;
  ctx.shape = tensor.shape().vec();
  ctx.strides = tensor.strides().vec();
  dl.data = const_cast<void*>(tensor.data_ptr());
  dl.device.device_type = tensor.device().is_cuda() ? kDLCUDA : kDLCPU;
  dl.device.device_id = tensor.device().index();
  if (tensor.storage().kind() == StorageKind::kPinnedHost) dl.device.device_type = kDLCUDAHost;
  dl.ndim = static_cast<int32_t>(tensor.dim());
  const DTypeInfo& info = dtype_info(tensor.dtype());
  dl.dtype.code = info.dlpack_code;
  dl.dtype.bits = static_cast<uint8_t>(info.bits);
  dl.dtype.lanes = 1;
  dl.shape = ctx.shape.data();
  dl.strides = ctx.strides.data();
  dl.byte_offset = 0;
}

// A Tensor over `dl`'s bytes whose storage calls `release` once the last view is gone; `release`
// is the caller's to call if this throws.
Tensor import(const DLTensor& dl, bool writable, std::function<void()> release) {
  Device device;
  switch (dl.device.device_type) {
    case kDLCPU:
    case kDLCUDAHost: device = Device::cpu(); break;
    case kDLCUDA: device = Device::cuda(dl.device.device_id); break;
    default:
      detail::throw_error<ValueError>("from_dlpack: unsupported DLPack device type ",
                                      static_cast<int>(dl.device.device_type));
  }
  const DType dtype = dtype_from_dlpack(dl.dtype);
  D9D_CHECK(dl.ndim >= 0, "from_dlpack: negative ndim ", dl.ndim);
  Shape shape;
  Strides strides;
  for (int32_t i = 0; i < dl.ndim; ++i) shape.push_back(dl.shape[i]);
  if (dl.strides != nullptr) {
    for (int32_t i = 0; i < dl.ndim; ++i) strides.push_back(dl.strides[i]);
  } else {
    strides = detail::contiguous_strides(shape);
  }
  const int64_t numel = detail::checked_numel(shape, "from_dlpack");
  int64_t extent = 0;
  if (is_sub_byte(dtype)) {
    extent = detail::packed_bytes(numel, dtype, "from_dlpack");
  } else if (numel > 0) {
    int64_t last = 0;
    for (size_t i = 0; i < shape.size(); ++i) {
      D9D_CHECK(strides[i] >= 0, "from_dlpack: negative stride in ", strides);
      last += (shape[i] - 1) * strides[i];
    }
    extent = (last + 1) * element_size(dtype);
  }
  const auto offset = static_cast<int64_t>(dl.byte_offset);
  const auto nbytes = static_cast<size_t>(offset + extent);
  auto* data = static_cast<std::byte*>(dl.data);
  Storage storage = Storage::wrap(data, nbytes, device, StorageKind::kExternal, writable,
                                  [release = std::move(release)](std::byte*) { release(); });
  return Tensor(std::move(storage), dtype, std::move(shape), std::move(strides), offset);
}

}  // namespace

DLManagedTensor* to_dlpack(const Tensor& tensor) {
  detail::check_defined(tensor, "to_dlpack");
  auto ctx = std::make_unique<ExportContext>();
  auto managed = std::make_unique<DLManagedTensor>();
  describe(tensor, *ctx, managed->dl_tensor);
  managed->manager_ctx = ctx.release();
  managed->deleter = [](DLManagedTensor* self) {
    delete static_cast<ExportContext*>(self->manager_ctx);
    delete self;
  };
  return managed.release();
}

DLManagedTensorVersioned* to_dlpack_versioned(const Tensor& tensor) {
  detail::check_defined(tensor, "to_dlpack_versioned");
  auto ctx = std::make_unique<ExportContext>();
  auto managed = std::make_unique<DLManagedTensorVersioned>();
  describe(tensor, *ctx, managed->dl_tensor);
  managed->version.major = DLPACK_MAJOR_VERSION;
  managed->version.minor = DLPACK_MINOR_VERSION;
  managed->flags = tensor.storage().writable() ? 0 : DLPACK_FLAG_BITMASK_READ_ONLY;
  managed->manager_ctx = ctx.release();
  managed->deleter = [](DLManagedTensorVersioned* self) {
    delete static_cast<ExportContext*>(self->manager_ctx);
    delete self;
  };
  return managed.release();
}

Tensor from_dlpack(DLManagedTensor* managed) {
  D9D_CHECK(managed != nullptr, "from_dlpack: null DLManagedTensor");
  auto release = [managed] {
    if (managed->deleter) managed->deleter(managed);
  };
  try {
    return import(managed->dl_tensor, true, release);
  } catch (...) {
    release();  // until a Storage owns it, the deleter runs on every error path
    throw;
  }
}

Tensor from_dlpack_versioned(DLManagedTensorVersioned* managed) {
  D9D_CHECK(managed != nullptr, "from_dlpack_versioned: null DLManagedTensorVersioned");
  auto release = [managed] {
    if (managed->deleter) managed->deleter(managed);
  };
  try {
    D9D_CHECK(managed->version.major == 1, "from_dlpack: DLPack major version ",
              managed->version.major, " (d9d reads version 1)");
    const bool writable = (managed->flags & DLPACK_FLAG_BITMASK_READ_ONLY) == 0;
    return import(managed->dl_tensor, writable, release);
  } catch (...) {
    release();
    throw;
  }
}

}  // namespace d9d
