// The process-group backends behind <d9d/dist/process_group.hpp> (private to the dist layer).
// mpi_backend.cpp / nccl_backend.cpp implement them when MPI / NCCL are found; mpi_none.cpp /
// nccl_none.cpp say that they are missing otherwise. Only these sources include mpi.h or nccl.h.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>

#include <d9d/dist/process_group.hpp>

namespace d9d::dist::detail {

// Reaches the protected raw collectives of another group (the NCCL group does its host-side work
// through an MPI group of the same ranks).
struct RawAccess {
  static void all_gather_host_bytes(ProcessGroup& group, const std::byte* input, std::byte* output,
                                    std::span<const int64_t> bytes_per_rank);
  static void broadcast_host_bytes(ProcessGroup& group, std::byte* data, int64_t bytes, int root);
};

// A world or group of one process: every collective is a copy.
ProcessGroupPtr make_local_group(Device device = Device::cpu());

// ---- MPI ----------------------------------------------------------------------------------------

bool mpi_compiled();
// MPI_Init_thread (once; registers MPI_Finalize at exit) and MPI's world.
ProcessGroupPtr mpi_init_world();
// Initialized and not yet finalized.
bool mpi_running();
// Whether MPI may be called from any thread at once (MPI_THREAD_MULTIPLE).
bool mpi_thread_multiple();
// The rank among the processes sharing this node (MPI_Comm_split_type), or -1 without MPI running.
int mpi_local_rank();
// MPI_Abort on the world when MPI runs (never returns then); returns otherwise.
void mpi_abort(int exit_code);

// Messages larger than this go in pieces (MPI counts are int). $D9D_DIST_MAX_MESSAGE overrides
// it (bytes; tests use a small value to run the pieced paths on small tensors).
int64_t max_message_bytes();

// ---- NCCL ---------------------------------------------------------------------------------------

bool nccl_compiled();
// An NCCL communicator over the ranks of `host` (an MPI world, or a local world of one), on
// cuda:<local rank>. Throws DeviceError without a CUDA device.
ProcessGroupPtr nccl_init_world(ProcessGroupPtr host, int local_rank);

// ---- timeouts -----------------------------------------------------------------------------------

// Note [bounded failure]: while a collective runs, a watchdog thread holds its deadline; past it
// the job is aborted (abort_job) with a message naming the collective and the rank.
class CollectiveGuard {
 public:
  CollectiveGuard(const ProcessGroup& group, const char* op);
  CollectiveGuard(const CollectiveGuard&) = delete;
  CollectiveGuard& operator=(const CollectiveGuard&) = delete;
  ~CollectiveGuard();

 private:
  uint64_t token_ = 0;
};

// The default timeout: $D9D_DIST_TIMEOUT seconds (0: none), else 30 minutes.
std::chrono::milliseconds default_timeout();

}  // namespace d9d::dist::detail
