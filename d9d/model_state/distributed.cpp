// The distributed writers and the distributed conversion (Note [distributed checkpoint], Note
// [distributed conversion] in distributed.hpp).
#include <d9d/model_state/distributed.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include <d9d/dist/dtensor.hpp>
#include <d9d/error.hpp>
#include <d9d/io/file.hpp>
#include <d9d/io/safetensors.hpp>
#include <d9d/model_state/progress.hpp>

namespace d9d::model_state {
namespace fs = std::filesystem;
using d9d::detail::str_cat;

namespace {

std::string message_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what()[0] != '\0' ? e.what() : "unknown error";
  } catch (...) {
    return "unknown error";
  }
}

// Note [agreement], over groups whose union is the whole job: each step hands on the first
// failure of the group; after every group every rank holds the same message ("" when none).
std::string agree(const std::vector<dist::ProcessGroup*>& groups, int rank,
                  const std::string& error) {
  std::string message = error.empty() ? "" : str_cat("rank ", rank, ": ", error);
  for (dist::ProcessGroup* group : groups) {
    if (group->size() == 1) continue;
    for (std::string& m : group->all_gather_object(message)) {
      if (!m.empty()) {
        message = std::move(m);
        break;
      }
    }
  }
  return message;
}

std::string shards_json(const LocalShards& shards) {
  nlohmann::json j;
  j["files"] = shards.files;
  j["weight_map"] = shards.weight_map;
  j["total_size"] = shards.total_size;
  j["sha256"] = shards.sha256;
  return j.dump();
}

LocalShards shards_from_json(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text);
  LocalShards shards;
  shards.files = j.at("files").get<std::vector<std::string>>();
  shards.weight_map = j.at("weight_map").get<std::vector<std::pair<std::string, std::string>>>();
  shards.total_size = j.at("total_size").get<int64_t>();
  shards.sha256 = j.at("sha256").get<std::map<std::string, std::string>>();
  return shards;
}

void remove_files(const fs::path& dir, const std::vector<std::string>& files) {
  std::error_code ec;
  for (const std::string& f : files) fs::remove(dir / f, ec);
}

// Applies a mapper's groups as their inputs arrive and drops the outputs: a rank that takes part
// in a distributed write (its groups may gather DTensors) without writing.
class GroupApplier {
 public:
  explicit GroupApplier(MapperPtr mapper) : mapper_(std::move(mapper)) {
    for (const StateGroup& g : mapper_->state_dependency_groups()) {
      remaining_.push_back(g.inputs.size());
      for (const std::string& in : g.inputs) group_of_input_.emplace(in, groups_.size());
      groups_.push_back(&g);
    }
  }
  void add(const std::string& name, const Tensor& tensor) {
    auto it = group_of_input_.find(name);
    if (it == group_of_input_.end()) return;
    waiting_.emplace(name, tensor);
    if (--remaining_[it->second] > 0) return;
    StateDict inputs;
    for (const std::string& in : groups_[it->second]->inputs) inputs.insert(waiting_.extract(in));
    mapper_->apply(std::move(inputs));
  }
  void finish() const {
    size_t unsatisfied = 0;
    for (const size_t r : remaining_) unsatisfied += r > 0 ? 1 : 0;
    D9D_CHECK(unsatisfied == 0, "write_model_state: the source ended before every input of ",
              unsatisfied, " group(s) arrived");
  }

 private:
  MapperPtr mapper_;
  std::vector<const StateGroup*> groups_;
  std::vector<size_t> remaining_;
  std::unordered_map<std::string, size_t> group_of_input_;
  StateDict waiting_;
};

}  // namespace

// ---- the distributed writers --------------------------------------------------------------------

namespace detail {

Participation participation(dist::ProcessGroup& group) {
  Participation who;
  who.gather = &group;
  who.everyone = {&group};
  who.tag = std::to_string(group.rank());
  who.rank = group.rank();
  who.world_size = group.size();
  return who;
}

Participation participation(const dist::DeviceMesh& mesh, std::string_view pipeline_dim_name) {
  D9D_CHECK(!mesh.mesh_dim_names().empty(),
            "write_model_state_pipeline_parallel: cannot save state using a DeviceMesh with no "
            "dim names (",
            mesh.str(), ")");
  const int64_t pp = mesh.dim_index(pipeline_dim_name);
  Participation who;
  who.gather = mesh.get_group(pp).get();
  for (int64_t d = 0; d < mesh.ndim(); ++d) who.everyone.push_back(mesh.get_group(d).get());
  const std::vector<int64_t> coordinate = mesh.get_coordinate();
  for (int64_t d = 0; d < mesh.ndim(); ++d) {
    if (d != pp && coordinate[static_cast<size_t>(d)] != 0) who.writes = false;
  }
  who.tag = std::to_string(mesh.get_local_rank(pp));
  who.rank = mesh.get_rank();
  who.world_size = static_cast<int>(mesh.size());
  return who;
}

struct DistributedWriter::Impl {
  fs::path dest;
  WriteOptions options;
  Participation who;
  std::optional<Destination> destination;  // on the finalizing rank, locked to the end
  std::optional<ShardWriter> writer;
  std::optional<GroupApplier> applier;
  std::string error;
  LocalShards shards;  // once finished

  bool finalizes() const { return who.writes && who.gather->rank() == 0; }
};

DistributedWriter::DistributedWriter(fs::path dest_dir, MapperPtr mapper, WriteOptions options,
                                     Participation who)
    : impl_(std::make_unique<Impl>()) {
  Impl& w = *impl_;
  D9D_CHECK(who.gather != nullptr, "write_model_state_distributed: no process group");
  w.dest = std::move(dest_dir);
  w.who = std::move(who);
  w.options = std::move(options);
  // Only rank 0 draws, and its bar says whose it is (Note [distributed checkpoint]).
  w.options.label = progress_label(w.options.label, w.who.rank, w.who.world_size);
  w.options.show_progress = w.options.show_progress && w.finalizes();
  std::string error;
  try {
    if (w.finalizes()) w.destination.emplace(w.dest, w.options);
    if (w.who.writes) {
      w.writer.emplace(w.dest, std::move(mapper), w.options, w.who.tag);
    } else {
      D9D_CHECK(mapper != nullptr, "write_model_state: the mapper is null");
      w.applier.emplace(std::move(mapper));
    }
  } catch (...) {
    error = message_of(std::current_exception());
  }
  error = agree(w.who.everyone, w.who.rank, error);
  if (!error.empty()) throw dist::CollectiveError("write_model_state_distributed: " + error);
}

DistributedWriter::~DistributedWriter() = default;

void DistributedWriter::plan(std::span<const std::pair<std::string, TensorSpec>> source) {
  if (impl_->writer) impl_->writer->plan(source);
}

void DistributedWriter::add(const std::string& name, const Tensor& tensor) {
  if (impl_->writer) {
    impl_->writer->add(name, tensor);
  } else {
    impl_->applier->add(name, tensor);
  }
}

void DistributedWriter::fail(std::exception_ptr error) {
  if (impl_->error.empty()) impl_->error = message_of(error);
}

void DistributedWriter::finish() {
  Impl& w = *impl_;
  std::string error = w.error;
  if (error.empty()) {
    try {
      if (w.writer) {
        w.shards = w.writer->finish();
      } else {
        w.applier->finish();
      }
    } catch (...) {
      error = message_of(std::current_exception());
    }
  }
  w.writer.reset();  // an unfinished writer removes its temporary files
  error = agree(w.who.everyone, w.who.rank, error);
  if (!error.empty()) {
    remove_files(w.dest, w.shards.files);
    throw dist::CollectiveError("write_model_state_distributed: " + error);
  }
  const std::vector<std::string> all =
      w.who.gather->all_gather_object(w.who.writes ? shards_json(w.shards) : "");
  if (w.finalizes()) {
    std::vector<LocalShards> parts;
    for (const std::string& text : all) {
      if (!text.empty()) parts.push_back(shards_from_json(text));
    }
    try {
      w.destination->commit(parts);  // removes every rank's temporary files if it fails
    } catch (...) {
      error = message_of(std::current_exception());
    }
    w.destination.reset();
  }
  error = agree(w.who.everyone, w.who.rank, error);
  if (!error.empty()) throw dist::CollectiveError("write_model_state_distributed: " + error);
}

}  // namespace detail

void save_model_state_pipeline_parallel(const fs::path& dest_dir, MapperPtr mapper,
                                        const dist::DeviceMesh& mesh,
                                        std::string_view pipeline_dim_name,
                                        const std::vector<StateDict>& models,
                                        const WriteOptions& options) {
  StateDict all;
  std::vector<std::pair<std::string, Tensor>> source;
  for (const StateDict& model : models) {
    for (const auto& [name, tensor] : model) {
      all.emplace(name, tensor);
      source.emplace_back(name, tensor);
    }
  }
  write_model_state_pipeline_parallel(dest_dir,
                                      detail::gather_dtensor_inputs(all, std::move(mapper)), source,
                                      mesh, pipeline_dim_name, options);
}

// ---- the distributed conversion -----------------------------------------------------------------

std::vector<size_t> balanced_runs(std::span<const int64_t> costs, int parts) {
  D9D_CHECK(parts > 0, "balanced_runs: needs at least one part");
  // The smallest bound on a run's sum that `parts` greedy runs can keep (binary search), then the
  // greedy runs under it.
  auto runs_under = [&](int64_t bound) {
    std::vector<size_t> starts{0};
    int64_t sum = 0;
    for (size_t i = 0; i < costs.size(); ++i) {
      if (sum > 0 && sum + costs[i] > bound) {
        starts.push_back(i);
        sum = 0;
      }
      sum += costs[i];
    }
    return starts;
  };
  int64_t lo = costs.empty() ? 0 : *std::max_element(costs.begin(), costs.end());
  int64_t hi = std::accumulate(costs.begin(), costs.end(), int64_t{0});
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (runs_under(mid).size() <= static_cast<size_t>(parts)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  std::vector<size_t> starts = runs_under(lo);
  while (starts.size() < static_cast<size_t>(parts)) starts.push_back(costs.size());
  starts.push_back(costs.size());
  return starts;
}

namespace {

// The groups of `parent` in `groups`: a rank's part of the conversion, streamed by
// read_model_state in the whole plan's order.
class GroupSubsetMapper final : public mapper::ModelStateMapper {
 public:
  GroupSubsetMapper(MapperPtr parent, std::set<StateGroup> groups) : parent_(std::move(parent)) {
    groups_ = std::move(groups);
  }
  StateDict apply(StateDict group) const override { return parent_->apply(std::move(group)); }
  SpecDict infer(const SpecDict& group) const override { return parent_->infer(group); }
  bool moves_data(const StateGroup& group) const override { return parent_->moves_data(group); }
  std::vector<std::string> concatenated_inputs(const StateGroup& group) const override {
    return parent_->concatenated_inputs(group);
  }
  std::string describe() const override { return parent_->describe(); }

 private:
  MapperPtr parent_;
};

// Note [global progress]: the ranks of a conversion share a small file in the destination, one
// (tensors, bytes) pair per rank, each rank rewriting its own at most ten times a second; rank 0
// sums them into the one bar it draws, from a thread of its own, so the bar moves while rank 0
// waits for the others. No message passes between ranks for it. Its name is a temporary of rank
// 0's process (a Destination removes it if that process dies).
class SharedProgress {
 public:
  SharedProgress(const fs::path& path, int rank, int size)
      : fd_(io::FileDescriptor::open(path, O_RDWR)), rank_(rank), size_(size) {}

  // The file, zeroed, for `size` ranks.
  static void create(const fs::path& path, int size) {
    const io::FileDescriptor fd = io::FileDescriptor::open(path, O_RDWR | O_CREAT | O_EXCL);
    if (::ftruncate(fd.get(), int64_t{16} * size) != 0) io::throw_errno("resize", path, errno);
  }

  // Adds this rank's work; writes it out when 100 ms have passed since the last time, or `now`.
  // Best effort: a bar is not worth failing a conversion for.
  void report(int64_t items, int64_t bytes, bool now) {
    mine_[0] += items;
    mine_[1] += bytes;
    const auto t = std::chrono::steady_clock::now();
    if (!now && t - last_ < std::chrono::milliseconds(100)) return;
    last_ = t;
    (void)!::pwrite(fd_.get(), mine_, sizeof mine_, static_cast<off_t>(16 * rank_));
  }

  // Every rank's work so far ({0, 0} if the file cannot be read).
  std::pair<int64_t, int64_t> total() const {
    std::vector<int64_t> all(2 * static_cast<size_t>(size_), 0);
    const auto want = static_cast<ssize_t>(all.size() * sizeof(int64_t));
    if (::pread(fd_.get(), all.data(), static_cast<size_t>(want), 0) != want) return {0, 0};
    std::pair<int64_t, int64_t> sum{0, 0};
    for (size_t r = 0; r < all.size(); r += 2) {
      sum.first += all[r];
      sum.second += all[r + 1];
    }
    return sum;
  }

 private:
  io::FileDescriptor fd_;
  int rank_;
  int size_;
  int64_t mine_[2] = {0, 0};
  std::chrono::steady_clock::time_point last_{};
};

// Rank 0's bar over every rank's work (Note [global progress]), redrawn until stop().
class GlobalBar {
 public:
  GlobalBar(const SharedProgress& progress, const std::string& label, const ReadPlan& plan)
      : progress_(progress), bar_(label, plan.output_count, plan.output_bytes, true) {
    if (bar_.drawing()) thread_ = std::thread([this] { run(); });
  }
  GlobalBar(const GlobalBar&) = delete;
  GlobalBar& operator=(const GlobalBar&) = delete;
  ~GlobalBar() { stop(); }
  void stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
    poll();
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stopping_; })) poll();
  }
  void poll() {
    const auto [items, bytes] = progress_.total();
    bar_.advance(items - shown_.first, bytes - shown_.second);
    shown_ = {items, bytes};
  }
  const SharedProgress& progress_;
  ProgressBar bar_;
  std::pair<int64_t, int64_t> shown_{0, 0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

// What every rank plans alike.
struct ConversionLayout {
  ReadPlan plan;
  std::vector<std::pair<std::string, TensorSpec>> outputs;  // stream order
  std::vector<size_t> shard_of;                             // per output
  std::vector<std::vector<io::TensorDecl>> decls;           // per shard
  std::string fingerprint;
};

ConversionLayout plan_conversion(const fs::path& src, const mapper::ModelStateMapper& mapper,
                                 const WriteOptions& options) {
  ConversionLayout layout;
  layout.plan = plan_read(io::Checkpoint::open(src), mapper);
  std::optional<std::vector<std::pair<std::string, TensorSpec>>> outputs = layout.plan.outputs();
  D9D_CHECK(outputs.has_value(),
            "convert: a distributed conversion lays out every shard before reading, and a group "
            "of this mapper cannot infer its outputs' specs");
  layout.outputs = std::move(*outputs);
  for (const auto& [name, spec] : layout.outputs) check_fits_shard(name, spec.nbytes(), options);
  layout.shard_of = assign_shards(layout.outputs, options.shard_size);
  check_shard_count(layout.shard_of.empty() ? 0 : layout.shard_of.back() + 1, options.shard_size);
  std::string& fp = layout.fingerprint;
  for (size_t i = 0; i < layout.outputs.size(); ++i) {
    const auto& [name, spec] = layout.outputs[i];
    if (layout.shard_of[i] == layout.decls.size()) layout.decls.emplace_back();
    layout.decls[layout.shard_of[i]].push_back({name, spec.dtype, spec.shape});
    fp += str_cat(name, '\0', spec.str(), '\0', layout.shard_of[i], '\n');
  }
  fp = str_cat(std::hash<std::string>{}(fp), "/", layout.outputs.size(), "/",
               layout.plan.groups.size());
  for (size_t k = 0; k < layout.decls.size(); ++k) {
    check_shard_header(k, layout.decls.size(), layout.decls[k], options);
  }
  return layout;
}

// `fn`'s error message; "" when it returns.
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
    return "";
  } catch (...) {
    return message_of(std::current_exception());
  }
}

// What the ranks agreed on (Note [agreement]), thrown on every rank when it is an error.
void throw_if_failed(const std::string& agreed_error) {
  if (!agreed_error.empty()) throw dist::CollectiveError("convert: " + agreed_error);
}

// One call of convert_model_state_distributed, as its phases see it.
struct Job {
  const fs::path& src;
  const fs::path& dest_dir;
  const MapperPtr& mapper;
  dist::ProcessGroup& group;
  const ReadOptions& read_options;
  const WriteOptions& write_options;

  int rank() const { return group.rank(); }
  // Note [agreement] over the job's group.
  std::string agreed(const std::string& error) const { return agree({&group}, rank(), error); }
  io::SaveOptions save_options() const {
    return {.alignment = write_options.alignment, .fsync = write_options.fsync};
  }
};

// Phase 1: every rank plans the same layout; the plans must agree.
ConversionLayout plan_on_every_rank(const Job& job) {
  ConversionLayout layout;
  throw_if_failed(job.agreed(
      error_of([&] { layout = plan_conversion(job.src, *job.mapper, job.write_options); })));
  const std::vector<std::string> fingerprints = job.group.all_gather_object(layout.fingerprint);
  for (size_t r = 0; r < fingerprints.size(); ++r) {
    throw_if_failed(fingerprints[r] == layout.fingerprint
                        ? ""
                        : str_cat("rank ", r, " planned another conversion than rank ", job.rank(),
                                  " (do the ranks see the same checkpoint and spec?)"));
  }
  return layout;
}

// The files rank 0 creates in the destination for every rank to write into, and what every
// rank learns of them (broadcast as JSON).
struct SharedFiles {
  std::vector<std::string> shards;  // temporary names, in shard order
  std::string progress;             // Note [global progress]; "" without a bar
  std::string error;                // why rank 0 could not create them; "" when it could

  std::vector<std::string> all() const {
    std::vector<std::string> names = shards;
    if (!progress.empty()) names.push_back(progress);
    return names;
  }
  std::string to_json() const {
    return nlohmann::json{{"shards", shards}, {"progress", progress}, {"error", error}}.dump();
  }
  static SharedFiles from_json(const std::string& text) {
    const nlohmann::json j = nlohmann::json::parse(text);
    return {j.at("shards").get<std::vector<std::string>>(), j.at("progress").get<std::string>(),
            j.at("error").get<std::string>()};
  }
};

// Phase 2, on rank 0: locks and prepares the destination (held in `destination` to the end) and
// creates every shard, header and size (io's Note [shared file]), and the progress file. On
// failure, removes what it made, unlocks and says why.
SharedFiles create_shared_files(const Job& job, const ConversionLayout& layout,
                                std::optional<Destination>& destination) {
  SharedFiles files;
  files.error = error_of([&] {
    destination.emplace(job.dest_dir, job.write_options);
    if (job.read_options.show_progress) {
      files.progress = ".d9d-shard-" + std::to_string(::getpid()) + "-progress";
      SharedProgress::create(job.dest_dir / files.progress, job.group.size());
    }
    for (size_t k = 0; k < layout.decls.size(); ++k) {
      files.shards.push_back(detail::temp_shard_name("dist", k));
      io::SafetensorsWriter::create_shared(job.dest_dir / files.shards.back(), layout.decls[k],
                                           job.write_options.metadata, job.save_options())
          .commit();
    }
  });
  if (!files.error.empty()) {
    remove_files(job.dest_dir, files.all());
    files.shards.clear();
    files.progress.clear();
    destination.reset();
  }
  return files;
}

// Phase 2, on every rank: rank 0 creates the files, the others learn their names.
SharedFiles share_files(const Job& job, const ConversionLayout& layout,
                        std::optional<Destination>& destination) {
  const std::string text =
      job.rank() == 0 ? create_shared_files(job, layout, destination).to_json() : "";
  SharedFiles files = SharedFiles::from_json(job.group.broadcast_object(text, 0));
  throw_if_failed(files.error.empty() ? "" : "rank 0: " + files.error);
  return files;
}

// Phase 3: this rank's run of the plan's groups (Note [distributed conversion]: contiguous,
// balanced by bytes read plus written).
std::span<const GroupPlan> run_of_rank(const Job& job, const ConversionLayout& layout) {
  std::vector<int64_t> costs;
  for (const GroupPlan& g : layout.plan.groups) costs.push_back(g.input_bytes + g.output_bytes);
  const std::vector<size_t> runs = balanced_runs(costs, job.group.size());
  const auto rank = static_cast<size_t>(job.rank());
  return std::span<const GroupPlan>(layout.plan.groups)
      .subspan(runs[rank], runs[rank + 1] - runs[rank]);
}

// Phase 4: streams this rank's run through the mapper and writes every output at its planned
// offset in the shared shards; a shard is committed (made durable) once this rank's last output
// in it is written.
void write_run(const Job& job, const ConversionLayout& layout, const SharedFiles& files,
               std::span<const GroupPlan> run, SharedProgress* progress) {
  if (run.empty()) return;
  std::unordered_map<std::string_view, size_t> shard_of;
  for (size_t i = 0; i < layout.outputs.size(); ++i) {
    shard_of.emplace(layout.outputs[i].first, layout.shard_of[i]);
  }
  std::map<size_t, size_t> left;  // this rank's outputs not yet written, per shard
  std::set<StateGroup> mine;
  for (const GroupPlan& g : run) {
    for (const std::string& out : g.group.outputs) ++left[shard_of.at(out)];
    mine.insert(g.group);
  }
  ReadOptions ro = job.read_options;
  ro.show_progress = false;  // the global bar shows it
  ModelStateStream stream = read_model_state(
      job.src, std::make_shared<GroupSubsetMapper>(job.mapper, std::move(mine)), ro);
  std::map<size_t, io::SafetensorsWriter> open;
  for (auto&& [name, tensor] : stream) {
    D9D_CHECK(!dist::is_dtensor(tensor), "convert: the mapper produced ", name,
              " as a distributed tensor; gather it first");
    const size_t k = shard_of.at(name);
    auto it = open.find(k);
    if (it == open.end()) {
      it = open.emplace(k, io::SafetensorsWriter::open_shared(
                               job.dest_dir / files.shards[k], layout.decls[k],
                               job.write_options.metadata, job.save_options()))
               .first;
    }
    it->second.write(name, tensor);
    if (--left.at(k) == 0) {
      it->second.commit();
      open.erase(it);
    }
    if (progress) progress->report(1, tensor.nbytes(), false);
  }
  if (progress) progress->report(0, 0, true);
  D9D_CHECK(open.empty(), "convert: the stream ended before this rank's outputs of ", open.size(),
            " shard(s) were written");
}

// Phase 5, on rank 0: the single-process run's commit.
void publish(const ConversionLayout& layout, const SharedFiles& files, Destination& destination,
             const std::function<void()>& before_finalize) {
  if (before_finalize) before_finalize();
  LocalShards shards;
  shards.files = files.shards;
  for (size_t i = 0; i < layout.outputs.size(); ++i) {
    shards.weight_map.emplace_back(layout.outputs[i].first, files.shards[layout.shard_of[i]]);
    shards.total_size += layout.outputs[i].second.nbytes();
  }
  destination.commit({&shards, 1});
}

}  // namespace

ReadPlan convert_model_state_distributed(const fs::path& src, const fs::path& dest_dir,
                                         MapperPtr mapper, dist::ProcessGroup& group,
                                         const ReadOptions& read_options,
                                         const WriteOptions& write_options,
                                         const std::function<void()>& before_finalize) {
  D9D_CHECK(mapper != nullptr, "convert: the mapper is null");
  const Job job{src, dest_dir, mapper, group, read_options, write_options};
  const int rank = group.rank();
  ConversionLayout layout = plan_on_every_rank(job);
  std::optional<Destination> destination;  // rank 0's
  const SharedFiles files = share_files(job, layout, destination);
  // Rank 0's temporaries go whatever happens next (the shards once renamed are not there).
  struct Cleanup {
    const fs::path& dir;
    std::vector<std::string> files;
    ~Cleanup() { remove_files(dir, files); }
  } cleanup{dest_dir, rank == 0 ? files.all() : std::vector<std::string>{}};

  std::optional<SharedProgress> progress;
  std::optional<GlobalBar> bar;
  std::string error = error_of([&] {
    if (!files.progress.empty()) {
      progress.emplace(dest_dir / files.progress, rank, group.size());
      if (rank == 0) {
        bar.emplace(*progress,
                    progress_label(read_options.label, rank, group.size()) + " (all ranks)",
                    layout.plan);
      }
    }
    write_run(job, layout, files, run_of_rank(job, layout), progress ? &*progress : nullptr);
  });
  error = job.agreed(error);
  if (bar) bar->stop();  // every rank is done: the bar's last line
  throw_if_failed(error);

  if (rank == 0) {
    error = error_of([&] { publish(layout, files, *destination, before_finalize); });
  }
  throw_if_failed(job.agreed(error));
  return std::move(layout.plan);
}

}  // namespace d9d::model_state
