// DeviceUploader: host -> CUDA device copies through a ring of pinned staging buffers.
//
// Note [pinned staging ring]: a copy from pageable memory (such as a memory-mapped checkpoint) is
// staged by the CUDA driver through a small pinned buffer, one chunk at a time, with the calling
// thread blocked. DeviceUploader owns a ring of larger pinned buffers instead, each with a copy
// stream (buffer i uses stream i % streams, so consecutive chunks go out on different streams)
// and an event recorded after its last copy. To upload a tensor, the calling thread takes a free
// buffer, waits for that buffer's event (its previous copy has left it), fills it with memcpy from
// the source (which is where a mapped file is read), enqueues cudaMemcpyAsync and records the
// event, and moves on to the next chunk while the DMA runs. Several threads upload at once, each
// filling its own buffers. upload() returns when its own copies have finished, so the tensor it
// returns is ready for any stream, as core's ops expect (Note [synchronous device ops]).
#pragma once

#include <cstdint>
#include <memory>

#include <d9d/device.hpp>
#include <d9d/tensor.hpp>

namespace d9d {

struct UploadOptions {
  int buffers = 8;                            // pinned buffers in the ring
  int64_t buffer_bytes = int64_t{32} << 20;   // bytes per buffer
  int streams = 2;                            // copy streams
};

class DeviceUploader {
 public:
  // Allocates the ring on the host and the streams on `device`; throws DeviceError without CUDA,
  // for a device that is not CUDA, or when the options are not positive.
  explicit DeviceUploader(Device device, UploadOptions options = {});
  ~DeviceUploader();
  DeviceUploader(DeviceUploader&&) noexcept;
  DeviceUploader& operator=(DeviceUploader&&) noexcept;
  DeviceUploader(const DeviceUploader&) = delete;
  DeviceUploader& operator=(const DeviceUploader&) = delete;

  // A new packed tensor on the device with the elements of `src` (a CPU tensor of any layout);
  // safe to call from several threads at once. Returns when the bytes are on the device.
  Tensor upload(const Tensor& src);
  Device device() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace d9d
