// The NCCL backend: CUDA tensors over an NCCL communicator on cuda:<local rank>. Host-side work
// (objects, shapes, barriers) goes through the MPI group of the same ranks it was bootstrapped
// over (or a local group of one). Compiled only when CUDA and NCCL are found.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <numeric>

#include <d9d/cuda_check.hpp>

#include "backends.hpp"

namespace d9d::dist::detail {

using d9d::detail::str_cat;

namespace {

// Checks an NCCL call as D9D_CUDA_CHECK checks a CUDA call: the error names the call, NCCL's
// message and the context given (the device, the sizes).
#define D9D_NCCL_CHECK(call, ...)                                                         \
  do {                                                                                    \
    const ncclResult_t d9d_nccl_rc_ = (call);                                             \
    if (d9d_nccl_rc_ != ncclSuccess) [[unlikely]] {                                       \
      ::d9d::detail::throw_error<DeviceError>(#call, " failed: ",                         \
                                              ncclGetErrorString(d9d_nccl_rc_), " (",     \
                                              __VA_ARGS__, ")");                          \
    }                                                                                     \
  } while (0)

class NcclProcessGroup final : public ProcessGroup {
 public:
  NcclProcessGroup(ncclComm_t comm, int device, ProcessGroupPtr host)
      : ProcessGroup(host->rank(), host->size()),
        comm_(comm),
        device_(device),
        host_(std::move(host)) {
    const ::d9d::detail::CudaDeviceGuard device_guard(device_);
    D9D_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                   "NCCL group on cuda:", device_);
  }
  ~NcclProcessGroup() override {
    const ::d9d::detail::CudaDeviceGuard device_guard(device_, std::nothrow);
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }
  Backend backend() const override { return Backend::kNccl; }
  Device device() const override { return Device::cuda(device_); }

 protected:
  void all_gather_bytes(const std::byte* input, std::byte* output,
                        std::span<const int64_t> bytes) override {
    const ::d9d::detail::CudaDeviceGuard device_guard(device_);
    const bool even =
        std::all_of(bytes.begin(), bytes.end(), [&](int64_t b) { return b == bytes[0]; });
    if (even) {
      D9D_NCCL_CHECK(
          ncclAllGather(input, output, static_cast<size_t>(bytes[0]), ncclUint8, comm_, stream_),
          "cuda:", device_, ", rank ", rank(), " of ", size(), ", ", bytes[0], " bytes per rank");
    } else {  // NCCL has no all-gather of uneven sizes: one broadcast per rank, grouped
      D9D_NCCL_CHECK(ncclGroupStart(), "cuda:", device_);
      try {
        int64_t offset = 0;
        for (int r = 0; r < size(); ++r) {
          const auto n = static_cast<size_t>(bytes[static_cast<size_t>(r)]);
          const void* send = r == rank() ? static_cast<const void*>(input) : output + offset;
          D9D_NCCL_CHECK(ncclBroadcast(send, output + offset, n, ncclUint8, r, comm_, stream_),
                         "cuda:", device_, ", root ", r, " of ", size(), ", ", n, " bytes");
          offset += static_cast<int64_t>(n);
        }
      } catch (...) {
        // The group depth is per thread: left open, every later NCCL call of this thread would
        // be queued into it and silently never run.
        (void)ncclGroupEnd();
        throw;
      }
      D9D_NCCL_CHECK(ncclGroupEnd(), "cuda:", device_, ", uneven all_gather of ", size(),
                     " ranks");
    }
    D9D_CUDA_CHECK(cudaStreamSynchronize(stream_), "all_gather on cuda:", device_);
  }
  void broadcast_bytes(std::byte* data, int64_t bytes, int root) override {
    const ::d9d::detail::CudaDeviceGuard device_guard(device_);
    D9D_NCCL_CHECK(
        ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclUint8, root, comm_, stream_),
        "cuda:", device_, ", root ", root, ", ", bytes, " bytes");
    D9D_CUDA_CHECK(cudaStreamSynchronize(stream_), "broadcast on cuda:", device_);
  }
  void all_gather_host_bytes(const std::byte* input, std::byte* output,
                             std::span<const int64_t> bytes) override {
    RawAccess::all_gather_host_bytes(*host_, input, output, bytes);
  }
  void broadcast_host_bytes(std::byte* data, int64_t bytes, int root) override {
    RawAccess::broadcast_host_bytes(*host_, data, bytes, root);
  }
  void barrier_impl() override {
    const ::d9d::detail::CudaDeviceGuard device_guard(device_);
    D9D_CUDA_CHECK(cudaStreamSynchronize(stream_), "barrier on cuda:", device_);
    host_->barrier();
  }
  ProcessGroupPtr split_impl(int color, int key) override {
    ProcessGroupPtr host = host_->split(color, key);
    ncclComm_t comm = nullptr;
    const ::d9d::detail::CudaDeviceGuard device_guard(device_);
    D9D_NCCL_CHECK(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &comm, nullptr),
                   "cuda:", device_, ", color ", color, ", key ", key);
    if (host == nullptr) return nullptr;
    return std::make_shared<NcclProcessGroup>(comm, device_, std::move(host));
  }

 private:
  ncclComm_t comm_;
  int device_;
  ProcessGroupPtr host_;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

bool nccl_compiled() {
  return true;
}

ProcessGroupPtr nccl_init_world(ProcessGroupPtr host, int local_rank) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    (void)cudaGetLastError();
    devices = 0;
  }
  D9D_CHECK_AS(DeviceError, devices > 0, "dist::init: the NCCL backend needs a CUDA device, and ",
               "none is visible");
  // One GPU per rank: cuda:<local rank>, or cuda:0 where the launcher made a single device
  // visible to each rank (CUDA_VISIBLE_DEVICES per task, as srun --gpus-per-task=1 does); ranks
  // that really share a device are refused by NCCL.
  const int device = devices == 1 ? 0 : local_rank;
  D9D_CHECK_AS(DeviceError, device < devices, "dist::init: local rank ", local_rank,
               " needs cuda:", local_rank, " but only ", devices,
               " CUDA device(s) are visible (one rank per GPU)");
  // The rank's device becomes the process's current one (as set_device does in PyTorch), on purpose.
  D9D_CUDA_CHECK(cudaSetDevice(device), "cuda:", device);
  ncclUniqueId id;
  if (host->rank() == 0) D9D_NCCL_CHECK(ncclGetUniqueId(&id), "rank 0 on cuda:", device);
  RawAccess::broadcast_host_bytes(*host, reinterpret_cast<std::byte*>(&id), sizeof id, 0);
  ncclComm_t comm = nullptr;
  D9D_NCCL_CHECK(ncclCommInitRank(&comm, host->size(), id, host->rank()), "cuda:", device,
                 ", rank ", host->rank(), " of ", host->size());
  return std::make_shared<NcclProcessGroup>(comm, device, std::move(host));
}

}  // namespace d9d::dist::detail
