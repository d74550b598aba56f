#include <d9d/storage.hpp>


#include <d9d/error.hpp>

#include "cuda_runtime.hpp"
#include "host_allocator.hpp"

namespace d9d {
Storage Storage::allocate(size_t nbytes, Device device) {
  Storage storage;
  storage.impl_ = std::make_shared<Impl>();
  Impl& impl = *storage.impl_;
  impl.nbytes = nbytes;
  impl.device = device;
  if (device.is_cuda()) {
    impl.kind = StorageKind::kCuda;
    if (nbytes > 0) {
      const detail::CudaBlock block = detail::cuda_malloc(nbytes, device.index());
      impl.data = static_cast<std::byte*>(block.data);
      impl.deleter = [block](std::byte*) { detail::cuda_free(block); };
    }
    return storage;
  }
  impl.kind = StorageKind::kHost;
  if (nbytes > 0) {
    const detail::HostBlock block = detail::host_alloc(nbytes);
    impl.data = static_cast<std::byte*>(block.data);
    impl.deleter = [block](std::byte*) { detail::host_free(block); };
  }
  return storage;
}

Storage Storage::allocate_pinned(size_t nbytes) {
  Storage storage;
  storage.impl_ = std::make_shared<Impl>();
  Impl& impl = *storage.impl_;
  impl.nbytes = nbytes;
  impl.kind = StorageKind::kPinnedHost;
  if (nbytes > 0) {
    impl.data = static_cast<std::byte*>(detail::cuda_malloc_host(nbytes));
    impl.deleter = [](std::byte* p) { detail::cuda_free_host(p); };
  }
  return storage;
}

Storage Storage::wrap(std::byte* data, size_t nbytes, Device device, StorageKind kind,
                      bool writable, Deleter deleter) {
  Storage storage;
  storage.impl_ = std::make_shared<Impl>();
  Impl& impl = *storage.impl_;
  impl.data = data;
  impl.nbytes = nbytes;
  impl.device = device;
  impl.kind = kind;
  impl.writable = writable;
  impl.deleter = std::move(deleter);
  return storage;
}

}  // namespace d9d
