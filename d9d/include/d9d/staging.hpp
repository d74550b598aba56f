// StagingRing: copies between host memory and a CUDA device through a ring of pinned buffers.
//
// Note [pinned staging ring]: a copy from pageable memory (such as a memory-mapped checkpoint) is
// staged by the CUDA driver through a small pinned buffer, one chunk at a time, with the calling
// thread blocked. StagingRing owns a ring of larger pinned buffers instead, each with a copy
// stream (buffer i uses stream i % streams, so consecutive chunks go out on different streams)
// and an event recorded after its last copy. To upload a tensor, the calling thread takes a free
// buffer, waits for that buffer's event (its previous copy has left it), fills it (memcpy from a
// host tensor, or the caller's source: the engine preads the checkpoint's bytes straight into
// the buffer, see Note [pread into the staging ring] in reader.cpp), enqueues cudaMemcpyAsync and
// records the event, and moves on to the next chunk while the DMA runs. Several threads upload at once, each
// filling its own buffers. upload() returns when its own copies have finished, so the tensor it
// returns is ready for any stream, as core's ops expect (Note [synchronous device ops]).
//
// download() is the same ring the other way, for saving device tensors: the caller's thread
// enqueues device-to-host copies of consecutive chunks into free buffers (up to four in
// flight) and hands each finished chunk, in order, to a sink (a file write) while the later
// chunks are still crossing the bus. A thread that finds no free buffer first hands over the
// chunks it holds, so threads sharing a ring never wait on each other's buffers in a cycle.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include <d9d/device.hpp>
#include <d9d/tensor.hpp>

namespace d9d {

struct StagingOptions {
  int buffers = 8;                            // pinned buffers in the ring
  int64_t buffer_bytes = int64_t{32} << 20;   // bytes per buffer
  int streams = 2;                            // copy streams
};

class StagingRing {
 public:
  // Allocates the ring on the host and the streams on `device`; throws DeviceError without CUDA,
  // for a device that is not CUDA, or when the options are not positive.
  explicit StagingRing(Device device, StagingOptions options = {});
  ~StagingRing();
  StagingRing(StagingRing&&) noexcept;
  StagingRing& operator=(StagingRing&&) noexcept;
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  // A new packed tensor on the device with the elements of `src` (a CPU tensor of any layout);
  // safe to call from several threads at once. Returns when the bytes are on the device.
  Tensor upload(const Tensor& src);

  // The same for bytes that are not in memory yet: a new packed tensor of `shape` and `dtype` on
  // the device, whose bytes source(dst, offset) writes, chunk by chunk in order of offset,
  // straight into the pinned buffers (the engine preads a checkpoint's bytes into them). An
  // exception from the source is passed on after this upload's copies in flight have landed.
  using Source = std::function<void(std::span<std::byte> dst, int64_t offset)>;
  Tensor upload(const Shape& shape, DType dtype, const Source& source);

  // Calls sink(bytes, offset) for consecutive chunks of the packed bytes of `src` (a tensor on
  // this ring's device), in order of offset; each span is valid only during its call. Safe to
  // call from several threads at once. An exception from the sink is passed on after the chunks
  // in flight have landed.
  using Sink = std::function<void(std::span<const std::byte> bytes, int64_t offset)>;
  void download(const Tensor& src, const Sink& sink);

  // The process's ring for `device`, made on first use and kept until the process exits (so its
  // pinned memory is allocated once, not per call): the default options, with at least
  // d9d::num_threads() + 2 buffers so that every reader thread can fill one while two cross the
  // bus (32 MiB each: 576 MiB of pinned memory with 16 threads).
  static StagingRing& shared(Device device);

  Device device() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace d9d
