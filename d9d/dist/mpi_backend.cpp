// The MPI backend: CPU tensors over an MPI communicator (Open MPI from Debian in CI).
#define OMPI_SKIP_MPICXX 1  // the C API only; Open MPI's deprecated C++ bindings warn
#include <mpi.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <thread>

#include "backends.hpp"

namespace d9d::dist::detail {

using d9d::detail::str_cat;

namespace {

std::atomic<int> g_thread_level{MPI_THREAD_SINGLE};
std::atomic<int> g_local_rank{-1};
std::thread::id g_init_thread;

bool running() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized != 0 && finalized == 0;
}

// MPI calls from several threads at once need MPI_THREAD_MULTIPLE; below it, d9d serializes its
// own calls (Note [collectives]).
std::unique_lock<std::mutex> serialize() {
  static std::mutex mu;
  if (g_thread_level.load() >= MPI_THREAD_MULTIPLE) return {};
  return std::unique_lock<std::mutex>(mu);
}

void check(int rc, const char* op) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  d9d::detail::throw_error<Error>("MPI: ", op,
                                  " failed: ", std::string(text, static_cast<size_t>(length)));
}

void finalize_at_exit() {
  if (running()) MPI_Finalize();
}

class MpiProcessGroup final : public ProcessGroup {
 public:
  MpiProcessGroup(MPI_Comm comm, int rank, int size, bool owned)
      : ProcessGroup(rank, size), comm_(comm), owned_(owned) {}
  ~MpiProcessGroup() override {
    if (owned_ && running()) {
      auto lock = serialize();
      MPI_Comm_free(&comm_);
    }
  }
  Backend backend() const override { return Backend::kMpi; }
  Device device() const override { return Device::cpu(); }

 protected:
  void all_gather_bytes(const std::byte* input, std::byte* output,
                        std::span<const int64_t> bytes) override {
    gather(input, output, bytes);
  }
  void broadcast_bytes(std::byte* data, int64_t bytes, int root) override {
    bcast(data, bytes, root);
  }
  void all_gather_host_bytes(const std::byte* input, std::byte* output,
                             std::span<const int64_t> bytes) override {
    gather(input, output, bytes);
  }
  void broadcast_host_bytes(std::byte* data, int64_t bytes, int root) override {
    bcast(data, bytes, root);
  }
  void barrier_impl() override {
    auto lock = serialize();
    check(MPI_Barrier(comm_), "MPI_Barrier");
  }
  ProcessGroupPtr split_impl(int color, int key) override {
    MPI_Comm comm = MPI_COMM_NULL;
    {
      auto lock = serialize();
      check(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &comm), "MPI_Comm_split");
    }
    if (comm == MPI_COMM_NULL) return nullptr;
    int rank = 0, size = 0;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    return std::make_shared<MpiProcessGroup>(comm, rank, size, true);
  }

 private:
  // Every rank's bytes back to back. One MPI_Allgather(v) when the counts fit MPI's int; else one
  // broadcast per rank in pieces of max_message_bytes().
  void gather(const std::byte* input, std::byte* output, std::span<const int64_t> bytes) {
    const int64_t limit = max_message_bytes();
    const int64_t total = std::accumulate(bytes.begin(), bytes.end(), int64_t{0});
    const int64_t mine = bytes[static_cast<size_t>(rank())];
    if (total <= limit) {
      auto lock = serialize();
      const bool even =
          std::all_of(bytes.begin(), bytes.end(), [&](int64_t b) { return b == bytes[0]; });
      if (even) {
        check(MPI_Allgather(input, static_cast<int>(mine), MPI_BYTE, output, static_cast<int>(mine),
                            MPI_BYTE, comm_),
              "MPI_Allgather");
        return;
      }
      std::vector<int> counts, displs;
      int64_t offset = 0;
      for (const int64_t b : bytes) {
        counts.push_back(static_cast<int>(b));
        displs.push_back(static_cast<int>(offset));
        offset += b;
      }
      check(MPI_Allgatherv(input, static_cast<int>(mine), MPI_BYTE, output, counts.data(),
                           displs.data(), MPI_BYTE, comm_),
            "MPI_Allgatherv");
      return;
    }
    int64_t offset = 0;
    for (int r = 0; r < size(); ++r) {
      const int64_t n = bytes[static_cast<size_t>(r)];
      if (r == rank() && n > 0 && input != output + offset) {
        std::memmove(output + offset, input, static_cast<size_t>(n));
      }
      bcast(output + offset, n, r);
      offset += n;
    }
  }

  void bcast(std::byte* data, int64_t bytes, int root) {
    const int64_t limit = max_message_bytes();
    auto lock = serialize();
    for (int64_t done = 0; done < bytes; done += limit) {
      const auto n = static_cast<int>(std::min(limit, bytes - done));
      check(MPI_Bcast(data + done, n, MPI_BYTE, root, comm_), "MPI_Bcast");
    }
  }

  MPI_Comm comm_;
  bool owned_;
};

}  // namespace

bool mpi_compiled() {
  return true;
}

bool mpi_running() {
  return running();
}

bool mpi_thread_multiple() {
  return g_thread_level.load() >= MPI_THREAD_MULTIPLE;
}

ProcessGroupPtr mpi_init_world() {
  if (!running()) {
    int provided = MPI_THREAD_SINGLE;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
    g_thread_level = provided;
    g_init_thread = std::this_thread::get_id();
    std::atexit(finalize_at_exit);
    // The rank among the processes of this node (the GPU an NCCL rank takes): collective, so
    // here, where every rank is.
    MPI_Comm node = MPI_COMM_NULL;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
          "MPI_Comm_split_type");
    int local = 0;
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    g_local_rank = local;
  }
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return std::make_shared<MpiProcessGroup>(MPI_COMM_WORLD, rank, size, false);
}

int mpi_local_rank() {
  return running() ? g_local_rank.load() : -1;
}

void mpi_abort(int exit_code) {
  if (!running()) return;
  // Below MPI_THREAD_MULTIPLE only the thread that initialized MPI may call it (the watchdog
  // aborts from its own thread: it then exits, and the launcher ends the job).
  if (!mpi_thread_multiple() && std::this_thread::get_id() != g_init_thread) return;
  MPI_Abort(MPI_COMM_WORLD, exit_code);
}

int64_t max_message_bytes() {
  static const int64_t limit = [] {
    const char* env = std::getenv("D9D_DIST_MAX_MESSAGE");
    const int64_t value = env != nullptr ? std::atoll(env) : 0;
    return value > 0 && value <= INT_MAX ? value : int64_t{1} << 30;
  }();
  return limit;
}

}  // namespace d9d::dist::detail
