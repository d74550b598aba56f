// An emulated NCCL for the emulated CUDA device (Note [emulated CUDA device] in cudart.cpp): a
// world of one rank, which is what one GPU holds. Collectives are stream-ordered copies through
// the emulated runtime (so their pointers are checked like any copy); a communicator of more than
// one rank is refused (ncclInvalidUsage), since ranks in other processes cannot be reached.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdio>
#include <cstring>

namespace {

struct Comm {
  int device;
};

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 0;
  }
}

thread_local int group_depth = 0;

ncclResult_t copy(void* dst, const void* src, size_t count, ncclDataType_t type, ncclComm_t comm,
                  cudaStream_t stream) {
  if (comm == nullptr || type_size(type) == 0) return ncclInvalidArgument;
  const size_t n = count * type_size(type);
  if (dst == src || n == 0) return ncclSuccess;
  int saved = 0;
  cudaGetDevice(&saved);
  cudaSetDevice(reinterpret_cast<Comm*>(comm)->device);
  const cudaError_t e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream);
  cudaSetDevice(saved);
  return e == cudaSuccess ? ncclSuccess : ncclUnhandledCudaError;
}

}  // namespace

extern "C" {

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (emulated NCCL)";
    case ncclInvalidArgument: return "invalid argument (emulated NCCL)";
    case ncclInvalidUsage: return "invalid usage (emulated NCCL: a world of one rank only)";
    default: return "emulated NCCL error";
  }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id, 0, sizeof *id);
  std::snprintf(id->internal, sizeof id->internal, "d9d emulated NCCL");
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId /*id*/, int rank) {
  if (nranks != 1 || rank != 0) {
    std::fprintf(stderr, "emulated NCCL: ncclCommInitRank: %d ranks; only a world of one\n",
                 nranks);
    return ncclInvalidUsage;
  }
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return ncclUnhandledCudaError;
  *comm = reinterpret_cast<ncclComm_t>(new Comm{device});
  return ncclSuccess;
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int /*key*/, ncclComm_t* newcomm,
                           ncclConfig_t* /*config*/) {
  if (comm == nullptr) return ncclInvalidArgument;
  *newcomm = color == NCCL_SPLIT_NOCOLOR
                 ? nullptr
                 : reinterpret_cast<ncclComm_t>(new Comm{reinterpret_cast<Comm*>(comm)->device});
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete reinterpret_cast<Comm*>(comm);
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (group_depth == 0) return ncclInvalidUsage;
  --group_depth;
  return ncclSuccess;
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
  return copy(recv, send, count, type, comm, stream);
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  if (root != 0) return ncclInvalidArgument;
  return copy(recv, send, count, type, comm, stream);
}

}  // extern "C"
