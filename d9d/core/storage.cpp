#include <d9d/storage.hpp>

#include <cstdlib>
#include <new>

#include <d9d/error.hpp>

#include "cuda_runtime.hpp"

namespace d9d {
namespace {

size_t host_alignment(size_t nbytes) { return nbytes >= (size_t{1} << 20) ? 4096 : 64; }

}  // namespace

Storage Storage::allocate(size_t nbytes, Device device) {
  Storage storage;
  storage.impl_ = std::make_shared<Impl>();
  Impl& impl = *storage.impl_;
  impl.nbytes = nbytes;
  impl.device = device;
  if (device.is_cuda()) {
    impl.kind = StorageKind::kCuda;
    if (nbytes > 0) {
      impl.data = static_cast<std::byte*>(detail::cuda_malloc(nbytes, device.index()));
      const int index = device.index();
      impl.deleter = [index](std::byte* p) { detail::cuda_free(p, index); };
    }
    return storage;
  }
  impl.kind = StorageKind::kHost;
  if (nbytes > 0) {
    const size_t align = host_alignment(nbytes);
    const size_t rounded = (nbytes + align - 1) / align * align;
    void* p = std::aligned_alloc(align, rounded);
    if (p == nullptr) {
      detail::throw_error<Error>("Storage::allocate: out of host memory allocating ", nbytes,
                                 " bytes");
    }
    impl.data = static_cast<std::byte*>(p);
    impl.deleter = [](std::byte* q) { std::free(q); };
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
