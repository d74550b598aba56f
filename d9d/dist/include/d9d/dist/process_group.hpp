// ProcessGroup: processes that run collectives together, as a torch.distributed process group.
//
//   ProcessGroupPtr world = dist::init();   // under mpirun: MPI's world; otherwise a world of 1
//   std::vector<Tensor> pieces = world->all_gather(local);
//   std::vector<std::string> names = world->all_gather_object(name);
//
// Backends (Note [backends]): MPI moves CPU tensors, and also launches and bootstraps (mpirun);
// NCCL moves CUDA tensors (device = the rank's local rank), its unique id broadcast over MPI;
// a world of size 1 needs neither and is always there. None of MPI's or NCCL's headers is
// included by d9d's public headers: the backends live in private sources.
//
// Note [collectives]: as with MPI and torch.distributed, every rank of a group calls the same
// collectives in the same order; a collective returns when this rank's part is done. Tensors
// passed to the tensor collectives live on device() (CPU for MPI, CUDA for NCCL). Calls from
// several threads are allowed (serialized where the MPI library asks for it), but the order of
// collectives must still be the same on every rank.
//
// Note [bounded failure]: a rank that dies takes the job down (mpirun ends every process of a job
// when one exits without MPI_Finalize or is killed). A rank that stops coming to collectives
// without dying (an error caught and ignored, a hang) would leave the others waiting forever, so
// every collective has a timeout (timeout(), by default 30 minutes or $D9D_DIST_TIMEOUT seconds):
// past it the process names the collective on standard error and aborts the whole job. Errors
// that every rank should see are agreed on first (agree_on_error), so that every rank throws the
// same CollectiveError instead of some ranks waiting for the others.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/device.hpp>
#include <d9d/error.hpp>
#include <d9d/tensor.hpp>

namespace d9d::dist {

// kLocal: the world of size 1 (and groups of size 1 split from anything).
enum class Backend : uint8_t { kLocal, kMpi, kNccl };
std::string_view backend_name(Backend backend);  // "local", "mpi", "nccl"

class ProcessGroup;
using ProcessGroupPtr = std::shared_ptr<ProcessGroup>;
namespace detail {
struct RawAccess;
}  // namespace detail

// An error every rank of a group raised together, after agreeing on it (agree_on_error): no rank
// is left waiting in a collective for a rank that failed.
class CollectiveError : public Error {
 public:
  using Error::Error;
};

class ProcessGroup {
 public:
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;
  virtual ~ProcessGroup();

  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual Backend backend() const = 0;
  // Where the tensors of the tensor collectives live: cpu (local, MPI) or cuda:N (NCCL).
  virtual Device device() const = 0;

  void barrier();

  // Every rank's `tensor`, in rank order (torch.distributed.all_gather). The dtype and the number
  // of dims must agree on every rank; the shapes may differ (uneven shards), at the cost of one
  // small exchange of the shapes first. The results are views of one new buffer.
  std::vector<Tensor> all_gather(const Tensor& tensor);
  // As above into preallocated `outputs`, one per rank (their shapes say what each rank sends, so
  // there is no exchange of shapes). Outputs that are packed and back to back in one storage, in
  // rank order, are received into directly; others through one staging buffer.
  void all_gather(std::span<const Tensor> outputs, const Tensor& input);
  // torch.distributed.all_gather_into_tensor: every rank's `input` concatenated along dim 0, in
  // rank order, into the packed `output`. `sizes`, when given, are the sizes of every rank's
  // input along dim 0 (uneven shards); otherwise every rank's input has this rank's shape.
  void all_gather_into_tensor(const Tensor& output, const Tensor& input,
                              std::span<const int64_t> sizes = {});
  // Root's `tensor` into every rank's `tensor` (packed; same dtype and shape everywhere).
  void broadcast(const Tensor& tensor, int root);

  // Every rank's bytes, in rank order (torch's all_gather_object, for strings: serialize first).
  std::vector<std::string> all_gather_object(const std::string& object);
  // Root's `object` on every rank.
  std::string broadcast_object(const std::string& object, int root);

  // MPI_Comm_split: the ranks passing one `color` form a new group, ordered by `key` (then by
  // rank here). color < 0: this rank joins no group (returns null). Collective over this group.
  ProcessGroupPtr split(int color, int key);

  // See Note [bounded failure]. Groups split from this one inherit it.
  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout);

 protected:
  ProcessGroup(int rank, int size);

  // The backend's collectives, on raw bytes. Device memory (device()) for the first two; host
  // memory for the *_host_* pair (objects, shapes). `bytes_per_rank[r]` is what rank r sends;
  // `output` receives them back to back in rank order.
  virtual void all_gather_bytes(const std::byte* input, std::byte* output,
                                std::span<const int64_t> bytes_per_rank) = 0;
  virtual void broadcast_bytes(std::byte* data, int64_t bytes, int root) = 0;
  virtual void all_gather_host_bytes(const std::byte* input, std::byte* output,
                                     std::span<const int64_t> bytes_per_rank) = 0;
  virtual void broadcast_host_bytes(std::byte* data, int64_t bytes, int root) = 0;
  virtual void barrier_impl() = 0;
  virtual ProcessGroupPtr split_impl(int color, int key) = 0;

 private:
  friend struct detail::RawAccess;
  void check_tensor(const Tensor& tensor, const char* op) const;
  std::vector<int64_t> gather_sizes(int64_t bytes);
  int rank_;
  int size_;
  std::chrono::milliseconds timeout_;
};

// Note [agreement]: every rank passes its own error message (empty when it succeeded); every rank
// gets the same answer: "" when all succeeded, else the first failed rank's message, prefixed
// "rank R: " (and how many others failed). One all_gather_object.
std::string agree_on_error(ProcessGroup& group, const std::string& error);

// ---- the job ------------------------------------------------------------------------------------

// Note [launcher]: init() reads the launcher's environment. Under mpirun (Open MPI's
// OMPI_COMM_WORLD_SIZE, PMIx's PMIX_RANK, Hydra's and Slurm's PMI_SIZE) it initializes MPI
// (MPI_THREAD_MULTIPLE when the library offers it), registers MPI_Finalize for the normal exit and
// returns MPI's world; otherwise it returns a world of size 1 and starts nothing. Backend::kNccl
// builds an NCCL communicator over the same processes (device = local rank; a world of one GPU
// without a launcher). Calling init() again returns the same world; kLocal is always a world of 1.
ProcessGroupPtr init(Backend backend = Backend::kMpi);
// The world init() made; throws Error before init().
ProcessGroupPtr world();
bool is_initialized();
// Whether the environment names a launcher that init() would join.
bool launched();
// This process's rank among the processes of its node (0 without a launcher).
int local_rank();
// Whether this build of d9d has the MPI / NCCL backend.
bool mpi_compiled();
bool nccl_compiled();

// Ends every process of the job now with `exit_code` (MPI_Abort when MPI runs, else _exit), after
// printing `message` (if not empty) on standard error. For errors that other ranks cannot learn
// about any more (Note [bounded failure]).
[[noreturn]] void abort_job(int exit_code, std::string_view message);

}  // namespace d9d::dist
