// See Note [pinned staging ring] in <d9d/staging.hpp>. CUDA builds only.
#include <d9d/staging.hpp>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include <d9d/cuda_check.hpp>

#include "cuda_runtime.hpp"

namespace d9d {
namespace {

constexpr size_t kDownloadDepth = 4;  // chunks one download() keeps in flight

}  // namespace

struct StagingRing::Impl {
  struct Slot {
    std::byte* host = nullptr;  // pinned
    cudaStream_t stream = nullptr;
    cudaEvent_t done = nullptr;  // recorded after the slot's last copy
  };

  int device = 0;
  size_t buffer_bytes = 0;
  std::vector<cudaStream_t> streams;
  std::vector<Slot> slots;
  std::mutex mu;
  std::condition_variable freed;
  std::deque<size_t> free_slots;  // FIFO, so consecutive chunks alternate streams

  ~Impl() {
    const detail::CudaDeviceGuard device_guard(device, std::nothrow);
    for (cudaStream_t s : streams) cudaStreamSynchronize(s);
    for (Slot& slot : slots) {
      if (slot.done != nullptr) cudaEventDestroy(slot.done);
      if (slot.host != nullptr) detail::cuda_free_host(slot.host);
    }
    for (cudaStream_t s : streams) cudaStreamDestroy(s);
  }

  size_t acquire() {
    std::unique_lock lock(mu);
    freed.wait(lock, [&] { return !free_slots.empty(); });
    const size_t i = free_slots.front();
    free_slots.pop_front();
    return i;
  }

  // A free slot, or none without waiting.
  std::optional<size_t> try_acquire() {
    std::lock_guard lock(mu);
    if (free_slots.empty()) return std::nullopt;
    const size_t i = free_slots.front();
    free_slots.pop_front();
    return i;
  }

  void release(size_t i) {
    {
      std::lock_guard lock(mu);
      free_slots.push_back(i);
    }
    freed.notify_one();
  }
};

StagingRing::StagingRing(Device device, StagingOptions options) {
  D9D_CHECK_AS(DeviceError, device.is_cuda(), "StagingRing: ", device,
               " is not a CUDA device");
  D9D_CHECK(options.buffers > 0 && options.buffer_bytes > 0 && options.streams > 0,
            "StagingRing: buffers (", options.buffers, "), buffer_bytes (",
            options.buffer_bytes, ") and streams (", options.streams, ") must be positive");
  auto impl = std::make_unique<Impl>();
  impl->device = device.index();
  impl->buffer_bytes = static_cast<size_t>(options.buffer_bytes);
  const detail::CudaDeviceGuard device_guard(impl->device);
  for (int i = 0; i < options.streams; ++i) {
    cudaStream_t s = nullptr;
    D9D_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "device cuda:",
                   impl->device);
    impl->streams.push_back(s);
  }
  impl->slots.resize(static_cast<size_t>(options.buffers));
  for (size_t i = 0; i < impl->slots.size(); ++i) {
    Impl::Slot& slot = impl->slots[i];
    slot.host = static_cast<std::byte*>(detail::cuda_malloc_host(impl->buffer_bytes));
    slot.stream = impl->streams[i % impl->streams.size()];
    // Blocking sync: a thread waiting for a buffer sleeps instead of spinning on a core that the
    // other reader threads need for their preads.
    D9D_CUDA_CHECK(
        cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming | cudaEventBlockingSync),
        "device cuda:", impl->device);
    impl->free_slots.push_back(i);
  }
  impl_ = std::move(impl);
}

StagingRing::~StagingRing() = default;
StagingRing::StagingRing(StagingRing&&) noexcept = default;
StagingRing& StagingRing::operator=(StagingRing&&) noexcept = default;

Device StagingRing::device() const { return Device::cuda(impl_->device); }

Tensor StagingRing::upload(const Tensor& src) {
  D9D_CHECK(src.defined(), "upload: the tensor is undefined");
  D9D_CHECK_AS(DeviceError, src.device().is_cpu(), "upload: ", src.str(),
               " is not a host tensor");
  const Tensor packed = src.contiguous();
  const auto* from = static_cast<const std::byte*>(packed.data_ptr());
  return upload(src.shape(), src.dtype(), [&](std::span<std::byte> dst, int64_t offset) {
    std::memcpy(dst.data(), from + offset, dst.size());
  });
}

Tensor StagingRing::upload(const Shape& shape, DType dtype, const Source& source) {
  Impl& impl = *impl_;
  Tensor out = Tensor::empty(shape, dtype, Device::cuda(impl.device));
  const auto total = static_cast<size_t>(out.nbytes());
  if (total == 0) return out;
  auto* to = static_cast<std::byte*>(out.mutable_data_ptr());
  const detail::CudaDeviceGuard device_guard(impl.device);
  std::vector<size_t> used;  // slots that carried a chunk of this upload
  // A slot's event may have been recorded again by another upload since ours: that copy is later
  // on the same stream, so waiting for it also waits for ours.
  auto wait_for_used = [&] {
    for (size_t i : used) {
      D9D_CUDA_CHECK(cudaEventSynchronize(impl.slots[i].done), "uploading ", total,
                     " bytes to cuda:", impl.device);
    }
  };
  try {
    for (size_t offset = 0; offset < total; offset += impl.buffer_bytes) {
      const size_t n = std::min(impl.buffer_bytes, total - offset);
      const size_t i = impl.acquire();
      Impl::Slot& slot = impl.slots[i];
      try {
        D9D_CUDA_CHECK(cudaEventSynchronize(slot.done), "waiting for staging buffer ", i,
                       " on cuda:", impl.device);
        source({slot.host, n}, static_cast<int64_t>(offset));
        D9D_CUDA_CHECK(cudaMemcpyAsync(to + offset, slot.host, n, cudaMemcpyHostToDevice,
                                       slot.stream),
                       "uploading ", dtype, shape, " to cuda:", impl.device,
                       ", bytes ", offset, "..", offset + n, " of ", total);
        D9D_CUDA_CHECK(cudaEventRecord(slot.done, slot.stream), "device cuda:", impl.device);
      } catch (...) {
        impl.release(i);
        throw;
      }
      impl.release(i);
      if (std::find(used.begin(), used.end(), i) == used.end()) used.push_back(i);
    }
  } catch (...) {
    // `out` goes back to the device cache with the throw: our copies into it must have landed.
    try {
      wait_for_used();
    } catch (...) {
    }
    throw;
  }
  wait_for_used();
  return out;
}

void StagingRing::download(const Tensor& src, const Sink& sink) {
  D9D_CHECK(src.defined(), "download: the tensor is undefined");
  Impl& impl = *impl_;
  D9D_CHECK_AS(DeviceError, src.device() == Device::cuda(impl.device), "download: ", src.str(),
               " is not on this ring's device cuda:", impl.device);
  const Tensor packed = src.contiguous();
  const auto total = static_cast<size_t>(packed.nbytes());
  const auto* from = static_cast<const std::byte*>(packed.data_ptr());
  const detail::CudaDeviceGuard device_guard(impl.device);
  struct Chunk {
    size_t slot, offset, bytes;
  };
  std::deque<Chunk> in_flight;  // oldest first
  // Waits for the oldest chunk, hands it to the sink and frees its slot.
  auto retire = [&] {
    const Chunk c = in_flight.front();
    in_flight.pop_front();
    try {
      D9D_CUDA_CHECK(cudaEventSynchronize(impl.slots[c.slot].done), "downloading ", src.str(),
                     " from cuda:", impl.device, ", bytes ", c.offset, "..", c.offset + c.bytes,
                     " of ", total);
      sink({impl.slots[c.slot].host, c.bytes}, static_cast<int64_t>(c.offset));
    } catch (...) {
      impl.release(c.slot);
      throw;
    }
    impl.release(c.slot);
  };
  try {
    for (size_t offset = 0; offset < total; offset += impl.buffer_bytes) {
      const size_t n = std::min(impl.buffer_bytes, total - offset);
      if (in_flight.size() == kDownloadDepth) retire();
      std::optional<size_t> i = impl.try_acquire();
      while (!i && !in_flight.empty()) {  // hand over what we hold before waiting for others
        retire();
        i = impl.try_acquire();
      }
      const size_t slot = i ? *i : impl.acquire();
      in_flight.push_back({slot, offset, n});
      // Copies on a slot's stream run in order, so the slot's previous copy has left the buffer
      // before this one lands in it.
      D9D_CUDA_CHECK(cudaMemcpyAsync(impl.slots[slot].host, from + offset, n,
                                     cudaMemcpyDeviceToHost, impl.slots[slot].stream),
                     "downloading ", src.str(), " from cuda:", impl.device, ", bytes ", offset,
                     "..", offset + n, " of ", total);
      D9D_CUDA_CHECK(cudaEventRecord(impl.slots[slot].done, impl.slots[slot].stream),
                     "device cuda:", impl.device);
    }
    while (!in_flight.empty()) retire();
  } catch (...) {
    // Let the copies still in flight land before their buffers go back to the ring.
    for (const Chunk& c : in_flight) {
      (void)cudaEventSynchronize(impl.slots[c.slot].done);
      impl.release(c.slot);
    }
    throw;
  }
}

StagingRing& StagingRing::shared(Device device) {
  D9D_CHECK_AS(DeviceError, device.is_cuda(), "StagingRing::shared: ", device,
               " is not a CUDA device");
  static std::mutex mu;
  // Never destroyed: the CUDA runtime may already be unloaded when static destructors run.
  static auto* rings = new std::map<int, std::unique_ptr<StagingRing>>();
  std::lock_guard lock(mu);
  std::unique_ptr<StagingRing>& ring = (*rings)[device.index()];
  if (!ring) {
    // A buffer for every reader thread to fill plus two crossing the bus: with fewer, threads
    // wait for buffers and the fills (preads at a few GB/s each), not the bus, set the pace.
    StagingOptions options;
    options.buffers = std::max(options.buffers, num_threads() + 2);
    ring = std::make_unique<StagingRing>(device, options);
  }
  return *ring;
}

}  // namespace d9d
