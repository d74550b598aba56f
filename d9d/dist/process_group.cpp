// The backend-independent half of ProcessGroup (checks, shapes, staging, objects), the world of
// one, agreement, the job's entry points and the collective watchdog.
#include <d9d/dist/process_group.hpp>

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>

#include "backends.hpp"

namespace d9d::dist {

using d9d::detail::str_cat;

std::string_view backend_name(Backend backend) {
  switch (backend) {
    case Backend::kLocal:
      return "local";
    case Backend::kMpi:
      return "mpi";
    case Backend::kNccl:
      return "nccl";
  }
  return "?";
}

// ---- ProcessGroup -------------------------------------------------------------------------------

ProcessGroup::ProcessGroup(int rank, int size)
    : rank_(rank), size_(size), timeout_(detail::default_timeout()) {
  D9D_ASSERT(size > 0 && rank >= 0 && rank < size);
}

ProcessGroup::~ProcessGroup() = default;

void ProcessGroup::set_timeout(std::chrono::milliseconds timeout) {
  D9D_CHECK(timeout.count() >= 0, "ProcessGroup::set_timeout: the timeout must not be negative");
  timeout_ = timeout;
}

void ProcessGroup::check_tensor(const Tensor& tensor, const char* op) const {
  D9D_CHECK(tensor.defined(), "ProcessGroup::", op, ": the tensor is undefined");
  D9D_CHECK_AS(DeviceError, tensor.device() == device(), "ProcessGroup::", op, ": ", tensor.str(),
               " is not on ", device(), ", where the ", backend_name(backend()),
               " backend moves tensors");
}

void ProcessGroup::barrier() {
  detail::CollectiveGuard guard(*this, "barrier");
  barrier_impl();
}

std::vector<int64_t> ProcessGroup::gather_sizes(int64_t value) {
  std::vector<int64_t> all(static_cast<size_t>(size_));
  const std::vector<int64_t> each(static_cast<size_t>(size_), int64_t{sizeof(int64_t)});
  all_gather_host_bytes(reinterpret_cast<const std::byte*>(&value),
                        reinterpret_cast<std::byte*>(all.data()), each);
  return all;
}

std::vector<Tensor> ProcessGroup::all_gather(const Tensor& tensor) {
  check_tensor(tensor, "all_gather");
  detail::CollectiveGuard guard(*this, "all_gather");
  // The shapes first: dtype and rank of every tensor, then the dims.
  const int64_t head = static_cast<int64_t>(tensor.dtype()) * 1024 + tensor.dim();
  const std::vector<int64_t> heads = gather_sizes(head);
  for (int r = 0; r < size_; ++r) {
    D9D_CHECK(heads[static_cast<size_t>(r)] == head, "ProcessGroup::all_gather: rank ", r,
              " sends a tensor of another dtype or number of dims than rank ", rank_, "'s ",
              tensor.str());
  }
  const auto ndim = static_cast<size_t>(tensor.dim());
  std::vector<int64_t> dims(ndim * static_cast<size_t>(size_));
  if (ndim > 0) {
    const std::vector<int64_t> each(static_cast<size_t>(size_),
                                    static_cast<int64_t>(ndim * sizeof(int64_t)));
    all_gather_host_bytes(reinterpret_cast<const std::byte*>(tensor.shape().data()),
                          reinterpret_cast<std::byte*>(dims.data()), each);
  }
  std::vector<Tensor> outputs;
  int64_t total = 0;
  std::vector<Shape> shapes;
  for (int r = 0; r < size_; ++r) {
    Shape shape(std::span<const int64_t>(dims.data() + static_cast<size_t>(r) * ndim, ndim));
    total += numel_of(shape) * dtype_bits(tensor.dtype()) / 8;
    shapes.push_back(std::move(shape));
  }
  const Storage storage = Storage::allocate(static_cast<size_t>(total), device());
  int64_t offset = 0;
  for (int r = 0; r < size_; ++r) {
    outputs.push_back(
        Tensor::from_storage(storage, tensor.dtype(), shapes[static_cast<size_t>(r)], offset));
    offset += outputs.back().nbytes();
  }
  all_gather(outputs, tensor);
  return outputs;
}

void ProcessGroup::all_gather(std::span<const Tensor> outputs, const Tensor& input) {
  check_tensor(input, "all_gather");
  D9D_CHECK(static_cast<int>(outputs.size()) == size_, "ProcessGroup::all_gather: ", outputs.size(),
            " outputs for a group of ", size_, " ranks");
  for (size_t r = 0; r < outputs.size(); ++r) {
    check_tensor(outputs[r], "all_gather");
    D9D_CHECK_TYPE(outputs[r].dtype() == input.dtype(), "ProcessGroup::all_gather: output ", r,
                   " is ", outputs[r].str(), " but the input is ", input.str());
  }
  D9D_CHECK(outputs[static_cast<size_t>(rank_)].shape() == input.shape(),
            "ProcessGroup::all_gather: this rank's output (", rank_, ") has shape ",
            outputs[static_cast<size_t>(rank_)].shape(), " but the input has ", input.shape());
  detail::CollectiveGuard guard(*this, "all_gather");
  std::vector<int64_t> bytes;
  bool direct = true;  // packed and back to back in one storage
  for (size_t r = 0; r < outputs.size(); ++r) {
    bytes.push_back(outputs[r].nbytes());
    const Tensor& o = outputs[r];
    direct = direct && o.is_contiguous() && o.storage().writable() &&
             (r == 0 || (o.storage().data() == outputs[0].storage().data() &&
                         o.storage_offset() == outputs[r - 1].storage_offset() + bytes[r - 1]));
  }
  const Tensor packed = input.contiguous();
  const auto* in = static_cast<const std::byte*>(packed.data_ptr());
  if (direct) {
    all_gather_bytes(in, static_cast<std::byte*>(outputs[0].mutable_data_ptr()), bytes);
    return;
  }
  const int64_t total = std::accumulate(bytes.begin(), bytes.end(), int64_t{0});
  const Storage staging = Storage::allocate(static_cast<size_t>(total), device());
  all_gather_bytes(in, staging.data(), bytes);
  int64_t offset = 0;
  for (size_t r = 0; r < outputs.size(); ++r) {
    outputs[r].copy_(Tensor::from_storage(staging, input.dtype(), outputs[r].shape(), offset));
    offset += bytes[r];
  }
}

void ProcessGroup::all_gather_into_tensor(const Tensor& output, const Tensor& input,
                                          std::span<const int64_t> sizes) {
  check_tensor(output, "all_gather_into_tensor");
  check_tensor(input, "all_gather_into_tensor");
  D9D_CHECK(output.is_contiguous(), "ProcessGroup::all_gather_into_tensor: the output ",
            output.str(), " is not packed");
  D9D_CHECK_TYPE(output.dtype() == input.dtype(), "ProcessGroup::all_gather_into_tensor: output ",
                 output.str(), " and input ", input.str(), " differ in dtype");
  D9D_CHECK(input.dim() > 0 && output.dim() == input.dim(),
            "ProcessGroup::all_gather_into_tensor: input ", input.str(), " and output ",
            output.str(), " need the same number of dims, at least one");
  for (int64_t d = 1; d < input.dim(); ++d) {
    D9D_CHECK(output.size(d) == input.size(d), "ProcessGroup::all_gather_into_tensor: input ",
              input.str(), " and output ", output.str(), " differ beyond dim 0");
  }
  std::vector<int64_t> rows(static_cast<size_t>(size_), input.size(0));
  if (!sizes.empty()) {
    D9D_CHECK(static_cast<int>(sizes.size()) == size_,
              "ProcessGroup::all_gather_into_tensor: ", sizes.size(), " sizes for a group of ",
              size_, " ranks");
    D9D_CHECK(sizes[static_cast<size_t>(rank_)] == input.size(0),
              "ProcessGroup::all_gather_into_tensor: sizes[", rank_, "] is ",
              sizes[static_cast<size_t>(rank_)], " but this rank's input ", input.str(), " has ",
              input.size(0));
    rows.assign(sizes.begin(), sizes.end());
  }
  const int64_t total_rows = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  D9D_CHECK(output.size(0) == total_rows, "ProcessGroup::all_gather_into_tensor: the output ",
            output.str(), " has ", output.size(0), " rows, the ranks send ", total_rows);
  const int64_t row_bytes = input.numel() == 0 || input.size(0) == 0
                                ? (output.size(0) > 0 ? output.nbytes() / output.size(0) : 0)
                                : input.nbytes() / input.size(0);
  std::vector<int64_t> bytes;
  for (const int64_t r : rows) bytes.push_back(r * row_bytes);
  detail::CollectiveGuard guard(*this, "all_gather_into_tensor");
  const Tensor packed = input.contiguous();
  all_gather_bytes(static_cast<const std::byte*>(packed.data_ptr()),
                   static_cast<std::byte*>(output.mutable_data_ptr()), bytes);
}

void ProcessGroup::broadcast(const Tensor& tensor, int root) {
  check_tensor(tensor, "broadcast");
  D9D_CHECK(root >= 0 && root < size_, "ProcessGroup::broadcast: root ", root,
            " is not a rank of a group of ", size_);
  D9D_CHECK(tensor.is_contiguous(), "ProcessGroup::broadcast: ", tensor.str(),
            " is not packed (it is received in place)");
  detail::CollectiveGuard guard(*this, "broadcast");
  // The root only reads: a read-only tensor (a mapped file) may be broadcast from it.
  auto* data = rank_ == root
                   ? const_cast<std::byte*>(static_cast<const std::byte*>(tensor.data_ptr()))
                   : static_cast<std::byte*>(tensor.mutable_data_ptr());
  broadcast_bytes(data, tensor.nbytes(), root);
}

std::vector<std::string> ProcessGroup::all_gather_object(const std::string& object) {
  detail::CollectiveGuard guard(*this, "all_gather_object");
  const std::vector<int64_t> sizes = gather_sizes(static_cast<int64_t>(object.size()));
  std::string all(static_cast<size_t>(std::accumulate(sizes.begin(), sizes.end(), int64_t{0})),
                  '\0');
  all_gather_host_bytes(reinterpret_cast<const std::byte*>(object.data()),
                        reinterpret_cast<std::byte*>(all.data()), sizes);
  std::vector<std::string> out;
  size_t offset = 0;
  for (const int64_t n : sizes) {
    out.push_back(all.substr(offset, static_cast<size_t>(n)));
    offset += static_cast<size_t>(n);
  }
  return out;
}

std::string ProcessGroup::broadcast_object(const std::string& object, int root) {
  D9D_CHECK(root >= 0 && root < size_, "ProcessGroup::broadcast_object: root ", root,
            " is not a rank of a group of ", size_);
  detail::CollectiveGuard guard(*this, "broadcast_object");
  int64_t n = static_cast<int64_t>(object.size());
  broadcast_host_bytes(reinterpret_cast<std::byte*>(&n), sizeof n, root);
  std::string out = rank_ == root ? object : std::string(static_cast<size_t>(n), '\0');
  broadcast_host_bytes(reinterpret_cast<std::byte*>(out.data()), n, root);
  return out;
}

ProcessGroupPtr ProcessGroup::split(int color, int key) {
  detail::CollectiveGuard guard(*this, "split");
  ProcessGroupPtr group = split_impl(color, key);
  if (group) group->timeout_ = timeout_;
  return group;
}

std::string agree_on_error(ProcessGroup& group, const std::string& error) {
  const std::vector<std::string> all = group.all_gather_object(error);
  std::string first;
  int failed = 0;
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    if (failed++ == 0) first = str_cat("rank ", r, ": ", all[r]);
  }
  if (failed > 1)
    first += str_cat(" (and ", failed - 1, " other rank", failed > 2 ? "s" : "", " failed)");
  return first;
}

// ---- the world of one ---------------------------------------------------------------------------

namespace {

class LocalProcessGroup final : public ProcessGroup {
 public:
  explicit LocalProcessGroup(Device device) : ProcessGroup(0, 1), device_(device) {}
  Backend backend() const override { return Backend::kLocal; }
  Device device() const override { return device_; }

 protected:
  void all_gather_bytes(const std::byte* input, std::byte* output,
                        std::span<const int64_t> bytes) override {
    if (device_.is_cpu()) {
      if (bytes[0] > 0 && input != output)
        std::memmove(output, input, static_cast<size_t>(bytes[0]));
    } else {  // a CUDA group of one: a device-to-device copy through core
      const Storage in = Storage::wrap(const_cast<std::byte*>(input), static_cast<size_t>(bytes[0]),
                                       device_, StorageKind::kExternal, false, {});
      const Storage out = Storage::wrap(output, static_cast<size_t>(bytes[0]), device_,
                                        StorageKind::kExternal, true, {});
      Tensor::from_storage(out, DType::U8, {bytes[0]})
          .copy_(Tensor::from_storage(in, DType::U8, {bytes[0]}));
    }
  }
  void broadcast_bytes(std::byte*, int64_t, int) override {}
  void all_gather_host_bytes(const std::byte* input, std::byte* output,
                             std::span<const int64_t> bytes) override {
    if (bytes[0] > 0 && input != output) std::memmove(output, input, static_cast<size_t>(bytes[0]));
  }
  void broadcast_host_bytes(std::byte*, int64_t, int) override {}
  void barrier_impl() override {}
  ProcessGroupPtr split_impl(int color, int) override {
    if (color < 0) return nullptr;
    return std::make_shared<LocalProcessGroup>(device_);
  }

 private:
  Device device_;
};

}  // namespace

namespace detail {

ProcessGroupPtr make_local_group(Device device) {
  return std::make_shared<LocalProcessGroup>(device);
}

void RawAccess::all_gather_host_bytes(ProcessGroup& group, const std::byte* input,
                                      std::byte* output, std::span<const int64_t> bytes) {
  group.all_gather_host_bytes(input, output, bytes);
}
void RawAccess::broadcast_host_bytes(ProcessGroup& group, std::byte* data, int64_t bytes,
                                     int root) {
  group.broadcast_host_bytes(data, bytes, root);
}

std::chrono::milliseconds default_timeout() {
  static const std::chrono::milliseconds timeout = [] {
    const char* env = std::getenv("D9D_DIST_TIMEOUT");
    if (env == nullptr || *env == '\0') return std::chrono::milliseconds(30 * 60 * 1000);
    char* end = nullptr;
    const double seconds = std::strtod(env, &end);
    if (end == env || *end != '\0' || !(seconds >= 0)) {
      std::fprintf(stderr, "d9d: warning: ignoring D9D_DIST_TIMEOUT=%s (seconds expected)\n", env);
      return std::chrono::milliseconds(30 * 60 * 1000);
    }
    return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  }();
  return timeout;
}

// ---- the watchdog -------------------------------------------------------------------------------

namespace {

class Watchdog {
 public:
  struct Entry {
    std::chrono::steady_clock::time_point deadline;
    const char* op;
    int rank;
    int size;
    Backend backend;
    std::chrono::milliseconds timeout;
  };

  static Watchdog& instance() {
    static auto* dog = new Watchdog;  // never destroyed: its thread may outlive static destructors
    return *dog;
  }

  // Cheap on purpose (a lock and a map node, no wake-up): every collective pays it. The thread
  // looks at the deadlines at least once a second, which is the precision of the timeout.
  uint64_t arm(const Entry& entry) {
    std::lock_guard lock(mu_);
    if (!started_) {
      std::thread([this] { run(); }).detach();
      started_ = true;
    }
    const uint64_t token = ++next_;
    armed_.emplace(token, entry);
    return token;
  }

  void disarm(uint64_t token) {
    std::lock_guard lock(mu_);
    armed_.erase(token);
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      auto wake = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      for (const auto& [token, entry] : armed_) {
        if (std::chrono::steady_clock::now() < entry.deadline) {
          wake = std::min(wake, entry.deadline);
          continue;
        }
        const Entry e = entry;
        lock.unlock();
        abort_job(1, str_cat("d9d: error: rank ", e.rank, " of a ", backend_name(e.backend),
                             " group of ", e.size, ": ", e.op, " did not complete within ",
                             static_cast<double>(e.timeout.count()) / 1000.0,
                             " s (another rank failed or stopped calling collectives; "
                             "D9D_DIST_TIMEOUT sets the limit): aborting the job"));
      }
      cv_.wait_until(lock, wake);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Entry> armed_;
  uint64_t next_ = 0;
  bool started_ = false;
};

}  // namespace

CollectiveGuard::CollectiveGuard(const ProcessGroup& group, const char* op) {
  if (group.size() == 1 || group.timeout().count() == 0) return;
  token_ = Watchdog::instance().arm({std::chrono::steady_clock::now() + group.timeout(), op,
                                     group.rank(), group.size(), group.backend(), group.timeout()});
}

CollectiveGuard::~CollectiveGuard() {
  if (token_ != 0) Watchdog::instance().disarm(token_);
}

}  // namespace detail

// ---- the job ------------------------------------------------------------------------------------

namespace {

std::mutex& world_mutex() {
  static std::mutex mu;
  return mu;
}
ProcessGroupPtr& world_slot() {
  // Never destroyed: an NCCL world's communicator and stream must not be torn down after the CUDA
  // runtime has unloaded at exit (MPI is finalized by its own atexit handler).
  static auto* world = new ProcessGroupPtr();
  return *world;
}

}  // namespace

bool launched() {
  for (const char* name :
       {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE"}) {
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') return true;
  }
  return false;
}

bool mpi_compiled() {
  return detail::mpi_compiled();
}
bool nccl_compiled() {
  return detail::nccl_compiled();
}

ProcessGroupPtr init(Backend backend) {
  std::lock_guard lock(world_mutex());
  ProcessGroupPtr& world = world_slot();
  if (world) {
    const Backend have = world->backend();
    const bool same = have == backend || (backend == Backend::kMpi && have == Backend::kLocal);
    D9D_CHECK(same, "dist::init: the world was already started with the ", backend_name(have),
              " backend, not ", backend_name(backend));
    return world;
  }
  switch (backend) {
    case Backend::kLocal:
      world = detail::make_local_group();
      break;
    case Backend::kMpi:
      if (launched()) {
        D9D_CHECK(detail::mpi_compiled(),
                  "dist::init: this process was started by an MPI launcher, but this build of "
                  "d9d has no MPI backend (configure with -Dmpi=enabled and libopenmpi-dev)");
        world = detail::mpi_init_world();
      } else {
        world = detail::make_local_group();
      }
      break;
    case Backend::kNccl: {
      D9D_CHECK_AS(DeviceError, detail::nccl_compiled(),
                   "dist::init: this build of d9d has no NCCL backend (it needs CUDA and NCCL)");
      ProcessGroupPtr host = detail::make_local_group();
      if (launched()) {
        D9D_CHECK(detail::mpi_compiled(),
                  "dist::init: NCCL bootstraps over MPI, and this build of d9d has none");
        host = detail::mpi_init_world();
      }
      world = detail::nccl_init_world(host, local_rank());
      break;
    }
  }
  return world;
}

ProcessGroupPtr world() {
  std::lock_guard lock(world_mutex());
  D9D_CHECK_AS(Error, world_slot() != nullptr, "dist::world: call dist::init() first");
  return world_slot();
}

bool is_initialized() {
  std::lock_guard lock(world_mutex());
  return world_slot() != nullptr;
}

int local_rank() {
  if (const int r = detail::mpi_local_rank(); r >= 0) return r;
  for (const char* name :
       {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"}) {
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') return std::atoi(v);
  }
  return 0;
}

void abort_job(int exit_code, std::string_view message) {
  if (!message.empty()) {
    std::string line(message);
    if (line.back() != '\n') line += '\n';
    (void)!::write(STDERR_FILENO, line.data(), line.size());
  }
  detail::mpi_abort(exit_code);  // returns only when MPI is not running
  std::_Exit(exit_code);
}

}  // namespace d9d::dist
