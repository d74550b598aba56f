// Without NCCL (or CUDA): CUDA tensors cannot be moved between ranks.
#include "backends.hpp"

namespace d9d::dist::detail {

bool nccl_compiled() {
  return false;
}
ProcessGroupPtr nccl_init_world(ProcessGroupPtr, int) {
  throw DeviceError("dist: this build of d9d has no NCCL backend (it needs CUDA and NCCL)");
}

}  // namespace d9d::dist::detail
