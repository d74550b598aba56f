#include <d9d/dlpack.hpp>

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

}  // namespace

DLManagedTensor* to_dlpack(const Tensor& tensor) {
  detail::check_defined(tensor, "to_dlpack");
  auto ctx = std::make_unique<ExportContext>();
  ctx->tensor = tensor;
  ctx->shape = tensor.shape().vec();
  ctx->strides = tensor.strides().vec();
  auto managed = std::make_unique<DLManagedTensor>();
  DLTensor& dl = managed->dl_tensor;
  dl.data = const_cast<void*>(tensor.data_ptr());
  dl.device.device_type = tensor.device().is_cuda() ? kDLCUDA : kDLCPU;
  dl.device.device_id = tensor.device().index();
  if (tensor.storage().kind() == StorageKind::kPinnedHost) dl.device.device_type = kDLCUDAHost;
  dl.ndim = static_cast<int32_t>(tensor.dim());
  const DTypeInfo& info = dtype_info(tensor.dtype());
  dl.dtype.code = info.dlpack_code;
  dl.dtype.bits = static_cast<uint8_t>(info.bits);
  dl.dtype.lanes = 1;
  dl.shape = ctx->shape.data();
  dl.strides = ctx->strides.data();
  dl.byte_offset = 0;
  managed->manager_ctx = ctx.release();
  managed->deleter = [](DLManagedTensor* self) {
    delete static_cast<ExportContext*>(self->manager_ctx);
    delete self;
  };
  return managed.release();
}

Tensor from_dlpack(DLManagedTensor* managed) {
  D9D_CHECK(managed != nullptr, "from_dlpack: null DLManagedTensor");
  // Until a Storage owns it, the deleter must run on every error path.
  auto release = [](DLManagedTensor* m) {
    if (m->deleter) m->deleter(m);
  };
  std::unique_ptr<DLManagedTensor, decltype(release)> guard(managed, release);
  const DLTensor& dl = managed->dl_tensor;
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
  DLManagedTensor* owned = guard.release();
  Storage storage = Storage::wrap(data, nbytes, device, StorageKind::kExternal, true,
                                  [owned](std::byte*) {
                                    if (owned->deleter) owned->deleter(owned);
                                  });
  return Tensor(std::move(storage), dtype, std::move(shape), std::move(strides), offset);
}

}  // namespace d9d
