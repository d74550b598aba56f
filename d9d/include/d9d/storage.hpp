// Storage: reference-counted bytes on a device, released by the deleter of whoever made them.
//
// Kinds: aligned host memory (allocated by d9d), pinned host memory and CUDA device memory (CUDA
// builds only), a window of a memory-mapped file (kept alive while any view of it is), and
// external memory handed in by someone else (DLPack import). Storage is a cheap handle: copies
// share the bytes.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

#include <d9d/device.hpp>

namespace d9d {

enum class StorageKind : uint8_t { kHost, kPinnedHost, kCuda, kMapped, kExternal };

class Storage {
 public:
  // Called once, with the data pointer, when the last handle goes away.
  using Deleter = std::function<void(std::byte*)>;

  Storage() = default;

  // Uninitialized bytes on `device`: 64-byte aligned host memory (page-aligned from 1 MiB), or
  // CUDA memory (256-byte aligned, from a bounded cache of freed blocks). Zero bytes is valid and
  // allocates nothing.
  static Storage allocate(size_t nbytes, Device device = Device::cpu());
  // Page-locked host memory for fast host<->device copies; throws DeviceError without CUDA.
  static Storage allocate_pinned(size_t nbytes);
  // Bytes someone else owns; `deleter` (may be empty) runs when the last handle goes away.
  static Storage wrap(std::byte* data, size_t nbytes, Device device, StorageKind kind,
                      bool writable, Deleter deleter);

  bool defined() const { return impl_ != nullptr; }
  std::byte* data() const { return impl_ ? impl_->data : nullptr; }
  size_t nbytes() const { return impl_ ? impl_->nbytes : 0; }
  Device device() const { return impl_ ? impl_->device : Device::cpu(); }
  StorageKind kind() const { return impl_ ? impl_->kind : StorageKind::kHost; }
  // False for read-only memory (a file mapped read-only): writing into it is an error.
  bool writable() const { return impl_ && impl_->writable; }
  long use_count() const { return impl_.use_count(); }

 private:
  struct Impl {
    std::byte* data = nullptr;
    size_t nbytes = 0;
    Device device;
    StorageKind kind = StorageKind::kHost;
    bool writable = true;
    Deleter deleter;
    Impl() = default;
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;
    ~Impl() {
      if (deleter) deleter(data);
    }
  };
  std::shared_ptr<Impl> impl_;
};

// Freed host blocks of 1 MiB and more are kept for reuse, up to this many bytes (default 1 GiB, or
// $D9D_HOST_CACHE_BYTES), so that streaming many similar tensors does not pay a page fault per
// 4 KiB each time. 0 disables the cache and returns everything cached to the system.
void set_host_cache_limit(size_t bytes);
// Bytes held in that cache now (not counting live tensors).
size_t host_cache_bytes();

// Freed CUDA blocks are kept for reuse up to this many bytes over all devices (default 4 GiB, or
// $D9D_CUDA_CACHE_BYTES); 0 returns everything cached to CUDA. No-ops without CUDA.
void set_cuda_cache_limit(size_t bytes);
// Bytes of device memory held in that cache now (not counting live tensors).
size_t cuda_cache_bytes();

// True when d9d was built with CUDA support (the device may still be absent at run time).
bool cuda_compiled();
// Number of visible CUDA devices; 0 when there are none or d9d was built without CUDA.
int cuda_device_count();

}  // namespace d9d
