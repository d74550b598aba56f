// The NCCL backend: CUDA tensors over an NCCL communicator on cuda:<local rank>. Host-side work
// (objects, shapes, barriers) goes through the MPI group of the same ranks it was bootstrapped
// over (or a local group of one). Compiled only when CUDA and NCCL are found.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <numeric>

#include "backends.hpp"

namespace d9d::dist::detail {

using d9d::detail::str_cat;

namespace {

void check_nccl(ncclResult_t rc, const char* op) {
  if (rc == ncclSuccess) return;
  d9d::detail::throw_error<DeviceError>("NCCL: ", op, " failed: ", ncclGetErrorString(rc));
}

void check_cuda(cudaError_t rc, const char* op) {
  if (rc == cudaSuccess) return;
  d9d::detail::throw_error<DeviceError>("CUDA: ", op, " failed: ", cudaGetErrorString(rc));
}

class NcclProcessGroup final : public ProcessGroup {
 public:
  NcclProcessGroup(ncclComm_t comm, int device, ProcessGroupPtr host)
      : ProcessGroup(host->rank(), host->size()),
        comm_(comm),
        device_(device),
        host_(std::move(host)) {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~NcclProcessGroup() override {
    cudaSetDevice(device_);
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }
  Backend backend() const override { return Backend::kNccl; }
  Device device() const override { return Device::cuda(device_); }

 protected:
  void all_gather_bytes(const std::byte* input, std::byte* output,
                        std::span<const int64_t> bytes) override {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    const bool even =
        std::all_of(bytes.begin(), bytes.end(), [&](int64_t b) { return b == bytes[0]; });
    if (even) {
      check_nccl(
          ncclAllGather(input, output, static_cast<size_t>(bytes[0]), ncclUint8, comm_, stream_),
          "ncclAllGather");
    } else {  // NCCL has no all-gather of uneven sizes: one broadcast per rank, grouped
      check_nccl(ncclGroupStart(), "ncclGroupStart");
      int64_t offset = 0;
      for (int r = 0; r < size(); ++r) {
        const auto n = static_cast<size_t>(bytes[static_cast<size_t>(r)]);
        const void* send = r == rank() ? static_cast<const void*>(input) : output + offset;
        check_nccl(ncclBroadcast(send, output + offset, n, ncclUint8, r, comm_, stream_),
                   "ncclBroadcast");
        offset += static_cast<int64_t>(n);
      }
      check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    }
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void broadcast_bytes(std::byte* data, int64_t bytes, int root) override {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(
        ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclUint8, root, comm_, stream_),
        "ncclBroadcast");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void all_gather_host_bytes(const std::byte* input, std::byte* output,
                             std::span<const int64_t> bytes) override {
    RawAccess::all_gather_host_bytes(*host_, input, output, bytes);
  }
  void broadcast_host_bytes(std::byte* data, int64_t bytes, int root) override {
    RawAccess::broadcast_host_bytes(*host_, data, bytes, root);
  }
  void barrier_impl() override {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    host_->barrier();
  }
  ProcessGroupPtr split_impl(int color, int key) override {
    ProcessGroupPtr host = host_->split(color, key);
    ncclComm_t comm = nullptr;
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &comm, nullptr),
               "ncclCommSplit");
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
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  D9D_CHECK_AS(DeviceError, devices > 0, "dist::init: the NCCL backend needs a CUDA device, and ",
               "none is visible");
  D9D_CHECK_AS(DeviceError, local_rank < devices, "dist::init: local rank ", local_rank,
               " needs cuda:", local_rank, " but only ", devices,
               " CUDA device(s) are visible (one rank per GPU)");
  check_cuda(cudaSetDevice(local_rank), "cudaSetDevice");
  ncclUniqueId id;
  if (host->rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  RawAccess::broadcast_host_bytes(*host, reinterpret_cast<std::byte*>(&id), sizeof id, 0);
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, host->size(), id, host->rank()), "ncclCommInitRank");
  return std::make_shared<NcclProcessGroup>(comm, local_rank, std::move(host));
}

}  // namespace d9d::dist::detail
