#include <d9d/model_state/reader.hpp>

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <thread>

#include <d9d/dist/dtensor.hpp>
#include <d9d/error.hpp>
#include <d9d/io/mapped_file.hpp>
#include <d9d/model_state/progress.hpp>
#include <d9d/staging.hpp>

namespace d9d::model_state {

std::optional<std::vector<std::pair<std::string, TensorSpec>>> ReadPlan::outputs() const {
  std::vector<std::pair<std::string, TensorSpec>> out;
  out.reserve(static_cast<size_t>(output_count));
  for (const GroupPlan& g : groups) {
    if (!g.inferred) return std::nullopt;
    for (const auto& [name, spec] : g.outputs) out.emplace_back(name, spec);
  }
  return out;
}

ReadPlan plan_read(const io::Checkpoint& checkpoint, const mapper::ModelStateMapper& mapper) {
  const auto& groups = mapper.state_dependency_groups();
  // Every missing input, named at once.
  std::vector<std::string> missing;
  for (const StateGroup& g : groups) {
    for (const std::string& name : g.inputs) {
      if (!checkpoint.contains(name)) missing.push_back(name);
    }
  }
  if (!missing.empty()) {
    std::sort(missing.begin(), missing.end());
    std::ostringstream list;
    for (size_t i = 0; i < missing.size() && i < 50; ++i) list << (i ? ", " : "") << missing[i];
    if (missing.size() > 50) list << ", ... (" << missing.size() - 50 << " more)";
    d9d::detail::throw_error<ValueError>("read_model_state: ", missing.size(), " input",
                                    missing.size() == 1 ? " is" : "s are", " missing from ",
                                    checkpoint.dir().string(), ": ", list.str());
  }

  // The position of a tensor: its file's index in the sorted file list, then its offset.
  const std::vector<std::string>& files = checkpoint.files();
  std::map<std::string_view, size_t> file_rank;
  for (size_t i = 0; i < files.size(); ++i) file_rank[files[i]] = i;

  struct Ordered {
    std::pair<size_t, int64_t> position;
    GroupPlan plan;
  };
  std::vector<Ordered> ordered;
  ordered.reserve(groups.size());
  std::vector<bool> file_used(files.size(), false);
  for (const StateGroup& g : groups) {
    Ordered o;
    o.position = {SIZE_MAX, 0};
    o.plan.group = g;
    for (const std::string& name : g.inputs) {
      const io::CheckpointEntry entry = checkpoint.entry(name);
      const size_t rank = file_rank.at(*entry.file);
      file_used[rank] = true;
      o.position = std::min(o.position, std::pair<size_t, int64_t>{rank, entry.info->begin});
      o.plan.inputs[name] = TensorSpec{entry.info->dtype, entry.info->shape};
      o.plan.input_bytes += entry.info->nbytes();
    }
    try {
      o.plan.outputs = mapper.infer(o.plan.inputs);
    } catch (const mapper::NotInferableError&) {
      o.plan.inferred = false;
      o.plan.output_bytes = o.plan.input_bytes;
    } catch (const Error& e) {
      d9d::detail::throw_error<ValueError>("read_model_state: group ", mapper::to_string(g),
                                      " cannot apply to the checkpoint's tensors: ", e.what());
    }
    for (const auto& [name, spec] : o.plan.outputs) o.plan.output_bytes += spec.nbytes();
    ordered.push_back(std::move(o));
  }
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const Ordered& a, const Ordered& b) { return a.position < b.position; });

  ReadPlan plan;
  plan.groups.reserve(ordered.size());
  for (Ordered& o : ordered) {
    plan.input_bytes += o.plan.input_bytes;
    plan.output_bytes += o.plan.output_bytes;
    plan.output_count += static_cast<int64_t>(o.plan.group.outputs.size());
    plan.groups.push_back(std::move(o.plan));
  }
  for (size_t i = 0; i < files.size(); ++i) {
    if (file_used[i]) plan.files.push_back(files[i]);
  }
  return plan;
}

// ---- the stream ---------------------------------------------------------------------------------

namespace {

const int64_t kPageSize = sysconf(_SC_PAGESIZE);
// Tensors of at least this many bytes get MADV_WILLNEED on their range before they are read.
constexpr int64_t kReadAheadMin = int64_t{1} << 20;

// A view of a checkpoint tensor whose storage gives the tensor's whole pages back to the kernel
// when the last reference goes (Note [read-ahead budget]); pages shared with a neighbour stay.
// `will_need`: ask the kernel to read the whole tensor ahead now (a view that will only be read in
// part, Note [reading what a rank owns], is not; its read-ahead advice is put back when it goes).
Tensor releasing_view(const io::Checkpoint& checkpoint, const std::string& name, bool will_need) {
  const io::CheckpointEntry entry = checkpoint.entry(name);
  const io::SafetensorsFile& file = checkpoint.file(*entry.file);
  std::shared_ptr<const io::MappedFile> mapping = file.shared_mapped_file();
  const int64_t begin = file.data_offset() + entry.info->begin;
  const int64_t end = file.data_offset() + entry.info->end;
  const int64_t nbytes = end - begin;
  if (will_need && nbytes >= kReadAheadMin) {
    mapping->advise(io::Advice::kWillNeed, static_cast<size_t>(begin), static_cast<size_t>(nbytes));
  }
  const int64_t first_page = (begin + kPageSize - 1) / kPageSize * kPageSize;
  const int64_t last_page = end / kPageSize * kPageSize;
  Storage storage = Storage::wrap(
      const_cast<std::byte*>(mapping->data() + begin), static_cast<size_t>(nbytes), Device::cpu(),
      StorageKind::kMapped, false,
      [mapping, begin, nbytes, first_page, last_page, will_need](std::byte*) {
        if (last_page > first_page) {
          mapping->advise(io::Advice::kDontNeed, static_cast<size_t>(first_page),
                          static_cast<size_t>(last_page - first_page));
        }
        if (!will_need && nbytes > 0) {
          mapping->advise(io::Advice::kNormal, static_cast<size_t>(begin),
                          static_cast<size_t>(nbytes));
        }
      });
  return Tensor::from_storage(std::move(storage), entry.info->dtype, entry.info->shape);
}

// Note [pread into the staging ring]: on cuda:N a group's inputs are not viewed through the
// mapping at all: each chunk of a tensor's bytes is read with pread from the file straight into a
// pinned staging buffer (Note [pinned staging ring]). Against memcpy from the mapping this skips
// faulting in page-table entries for every page and dropping them again, and the bytes never add
// to this process's resident set. Measured on the development machine with a stand-alone program
// (2 threads, a page-cached 2 GB file, 32 MiB chunks into warm buffers, whole process, median of
// 11): 0.67x the wall time and 0.68x the CPU time of memcpy from a fresh mapping, peak RSS
// 98 MiB against 1974 MiB. A file truncated under us is an IoError naming it, not SIGBUS (as in
// Note [pread for copies] of the io layer).
Tensor upload_from_file(StagingRing& staging, const io::Checkpoint& checkpoint,
                        const std::string& name) {
  const io::CheckpointEntry entry = checkpoint.entry(name);
  const io::SafetensorsFile& file = checkpoint.file(*entry.file);
  const std::shared_ptr<const io::MappedFile> mapping = file.shared_mapped_file();
  const auto begin = static_cast<uint64_t>(file.data_offset() + entry.info->begin);
  const int64_t nbytes = entry.info->end - entry.info->begin;
  if (nbytes >= kReadAheadMin) {  // a file not in the page cache: the kernel reads ahead now
    mapping->advise(io::Advice::kWillNeed, begin, static_cast<size_t>(nbytes));
  }
  return staging.upload(entry.info->shape, entry.info->dtype,
                        [&](std::span<std::byte> dst, int64_t offset) {
                          mapping->read(begin + static_cast<uint64_t>(offset), dst);
                        });
}

// Reads one byte of every page of the view's elements, so the consumer finds them resident.
void fault_in(const Tensor& view) {
  if (view.numel() == 0) return;
  if (view.is_contiguous()) {
    const auto* p = static_cast<const volatile unsigned char*>(view.data_ptr());
    const int64_t n = view.nbytes();
    unsigned char sink = 0;
    for (int64_t i = 0; i < n; i += kPageSize) sink ^= p[i];
    sink ^= p[n - 1];
    (void)sink;
    return;
  }
  if (view.dim() == 1) {  // a strided row: one touch per element, each page once
    const auto* p = static_cast<const volatile unsigned char*>(view.data_ptr());
    const int64_t step = view.stride(0) * view.element_size();
    unsigned char sink = 0;
    int64_t last_page = -1;
    for (int64_t i = 0; i < view.size(0); ++i) {
      const int64_t at = i * step;
      if (at / kPageSize != last_page) sink ^= p[at];
      last_page = at / kPageSize;
    }
    (void)sink;
    return;
  }
  for (int64_t i = 0; i < view.size(0); ++i) fault_in(view.select(0, i));
}

// Note [reading what a rank owns]: load_model_state into a DTensor target needs only this rank's
// slice. The group's inputs are then views with no read-ahead asked for; the mapper runs on them
// (a view op such as identity or rename touches no byte); distribute_tensor narrows the output to
// this rank's slice (a view again); and only then is the slice read in: a packed slice (Shard on
// dim 0) with read-around off (MADV_RANDOM) and the kernel asked for exactly its pages
// (MADV_WILLNEED), so a rank reads about 1/N of the tensor, not the whole of it. A mapper that
// moves data (transpose, stack, ...) reads its whole inputs, necessarily.
void read_slice(
    const Tensor& local,
    const std::vector<std::pair<const std::byte*, std::shared_ptr<const io::MappedFile>>>& inputs) {
  if (local.numel() > 0 && local.storage().kind() == StorageKind::kMapped &&
      local.is_contiguous()) {
    const auto* p = static_cast<const std::byte*>(local.data_ptr());
    for (const auto& [begin, mapping] : inputs) {
      if (p < mapping->data() || p + local.nbytes() > mapping->data() + mapping->size()) continue;
      const auto offset = static_cast<size_t>(p - mapping->data());
      mapping->advise(io::Advice::kRandom, offset, static_cast<size_t>(local.nbytes()));
      mapping->advise(io::Advice::kWillNeed, offset, static_cast<size_t>(local.nbytes()));
      break;
    }
  }
  if (local.storage().kind() == StorageKind::kMapped) fault_in(local);
}

}  // namespace

struct ModelStateStream::Impl {
  io::Checkpoint checkpoint;
  MapperPtr mapper;
  ReadOptions options;
  ReadPlan plan;
  std::optional<std::vector<std::pair<std::string, TensorSpec>>> planned_specs;  // plan.outputs()
  // load_model_state's DTensor targets: outputs made this rank's slice (Note [reading what a rank
  // owns]), and which groups have one.
  std::map<std::string, std::shared_ptr<const dist::DTensorSpec>> distribute_outputs;
  std::vector<bool> slices_group;

  std::mutex mu;
  std::condition_variable workers_cv;   // budget freed or a group to start
  std::condition_variable consumer_cv;  // a group finished
  size_t next_to_start = 0;
  size_t next_to_yield = 0;
  int64_t budget_in_use = 0;
  size_t in_flight = 0;  // started, not yet handed to the consumer
  std::vector<std::optional<StateDict>> results;
  std::vector<std::exception_ptr> errors;
  bool stop = false;
  bool started = false;
  std::vector<std::thread> workers;
  // Device cuda:N: the group's inputs go up through pinned staging buffers before the group runs
  // there (Note [pinned staging ring]); the reader threads are the ones filling the buffers.
  StagingRing* staging = nullptr;

  // The group being handed out, and the consumer's place in it.
  StateDict current;
  StateDict::iterator current_it;
  value_type current_value;
  std::optional<ProgressBar> progress;

  Impl(io::Checkpoint c, MapperPtr m, ReadOptions o)
      : checkpoint(std::move(c)), mapper(std::move(m)), options(std::move(o)) {}

  ~Impl() {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    workers_cv.notify_all();
    for (auto& w : workers) w.join();
  }

  void start() {
    results.resize(plan.groups.size());
    errors.resize(plan.groups.size());
    progress.emplace(options.label, plan.output_count, plan.output_bytes, options.show_progress);
    if (options.device.is_cuda()) staging = &StagingRing::shared(options.device);
    const size_t threads = std::min<size_t>(
        options.reader_threads > 0 ? static_cast<size_t>(options.reader_threads)
                            : static_cast<size_t>(d9d::num_threads()),
        std::max<size_t>(plan.groups.size(), 1));
    for (size_t i = 0; i < threads; ++i) workers.emplace_back([this] { work(); });
  }

  void work() {
    for (;;) {
      size_t index;
      int64_t cost;
      {
        std::unique_lock lock(mu);
        workers_cv.wait(lock, [&] {
          if (stop || next_to_start >= plan.groups.size()) return true;
          const GroupPlan& g = plan.groups[next_to_start];
          return in_flight == 0 ||
                 budget_in_use + g.input_bytes + g.output_bytes <= options.memory_budget;
        });
        if (stop || next_to_start >= plan.groups.size()) return;
        index = next_to_start++;
        const GroupPlan& g = plan.groups[index];
        cost = g.input_bytes + g.output_bytes;
        budget_in_use += cost;
        ++in_flight;
      }
      std::optional<StateDict> outputs;
      std::exception_ptr error;
      try {
        outputs = run_group(plan.groups[index], index < slices_group.size() && slices_group[index]);
      } catch (...) {
        error = std::current_exception();
      }
      {
        std::lock_guard lock(mu);
        // The inputs are gone now; only the outputs stay until the consumer takes them.
        budget_in_use -= plan.groups[index].input_bytes;
        results[index] = std::move(outputs);
        errors[index] = error;
        if (error) stop = true;  // nothing after a failed group will be handed out
      }
      consumer_cv.notify_all();
      workers_cv.notify_all();
    }
  }

  StateDict run_group(const GroupPlan& g, bool slices) {
    StateDict inputs;
    std::vector<std::pair<const std::byte*, std::shared_ptr<const io::MappedFile>>> mappings;
    for (const auto& [name, spec] : g.inputs) {
      if (staging != nullptr && !slices) {
        inputs.emplace(name, upload_from_file(*staging, checkpoint, name));
        continue;
      }
      Tensor view = releasing_view(checkpoint, name, /*will_need=*/!slices);
      if (slices) {
        mappings.emplace_back(static_cast<const std::byte*>(view.data_ptr()),
                              checkpoint.file(*checkpoint.entry(name).file).shared_mapped_file());
      }
      inputs.emplace(name, std::move(view));
    }
    StateDict outputs = mapper->apply(std::move(inputs));
    for (const std::string& name : g.group.outputs) {
      D9D_CHECK(outputs.contains(name), "read_model_state: group ", mapper::to_string(g.group),
                " did not produce ", name);
    }
    D9D_CHECK(outputs.size() == g.group.outputs.size(), "read_model_state: group ",
              mapper::to_string(g.group), " produced ", outputs.size(), " tensors, expected ",
              g.group.outputs.size());
    for (const auto& [name, spec] : g.outputs) {
      auto it = outputs.find(name);
      D9D_CHECK(TensorSpec::of(it->second) == spec, "read_model_state: group ",
                mapper::to_string(g.group), " produced ", name, " as ",
                TensorSpec::of(it->second).str(), " but its infer() promised ", spec.str());
    }
    for (auto& [name, tensor] : outputs) {
      if (slices) {
        if (auto it = distribute_outputs.find(name); it != distribute_outputs.end()) {
          const dist::DTensor local =
              dist::distribute_tensor(tensor, it->second->mesh, it->second->placements);
          read_slice(local.local(), mappings);
          tensor = local.as_tensor();
          continue;
        }
      }
      if (options.device.is_cuda()) {
        tensor = tensor.to(options.device);  // a no-op unless a mapper made a host tensor
      } else if (tensor.storage().kind() == StorageKind::kMapped) {
        fault_in(tensor);
      }
    }
    return outputs;
  }

  // The next group's outputs, in order; false at the end.
  bool take_next_group() {
    std::unique_lock lock(mu);
    if (next_to_yield >= plan.groups.size()) return false;
    const size_t index = next_to_yield;
    consumer_cv.wait(lock, [&] { return results[index].has_value() || errors[index]; });
    if (errors[index]) std::rethrow_exception(errors[index]);
    current = std::move(*results[index]);
    results[index].reset();
    budget_in_use -= plan.groups[index].output_bytes;
    --in_flight;
    ++next_to_yield;
    lock.unlock();
    workers_cv.notify_all();
    progress->advance(static_cast<int64_t>(current.size()), plan.groups[index].output_bytes);
    current_it = current.begin();
    return true;
  }

  value_type* next() {
    while (current_it == current.end()) {
      current.clear();
      current_it = current.end();
      if (!take_next_group()) {
        progress.reset();  // finishes the bar
        return nullptr;
      }
    }
    // Hand out the pair itself; the group's map keeps no second reference to the tensor.
    current_value = value_type(current_it->first, std::move(current_it->second));
    ++current_it;
    return &current_value;
  }
};

ModelStateStream::ModelStateStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelStateStream::ModelStateStream(ModelStateStream&&) noexcept = default;
ModelStateStream& ModelStateStream::operator=(ModelStateStream&&) noexcept = default;
ModelStateStream::~ModelStateStream() = default;

const ReadPlan& ModelStateStream::plan() const { return impl_->plan; }

const std::optional<std::vector<std::pair<std::string, TensorSpec>>>&
ModelStateStream::planned_specs() const {
  return impl_->planned_specs;
}

ModelStateStream::iterator ModelStateStream::begin() {
  D9D_CHECK(!impl_->started, "read_model_state: the stream is single-pass; begin() was called twice");
  impl_->started = true;
  impl_->start();
  return iterator(this);
}

ModelStateStream::value_type* ModelStateStream::next() { return impl_->next(); }

ModelStateStream::iterator::iterator(ModelStateStream* stream)
    : stream_(stream), current_(stream->next()) {}

ModelStateStream::iterator& ModelStateStream::iterator::operator++() {
  current_ = stream_->next();
  return *this;
}

ModelStateStream read_model_state(const std::filesystem::path& src, MapperPtr mapper,
                                  const ReadOptions& options) {
  D9D_CHECK(mapper != nullptr, "read_model_state: the mapper is null");
  D9D_CHECK(options.memory_budget > 0, "read_model_state: memory_budget must be positive, got ",
            options.memory_budget);
  auto impl = std::make_unique<ModelStateStream::Impl>(io::Checkpoint::open(src), std::move(mapper),
                                                       options);
  impl->current_it = impl->current.end();
  impl->plan = plan_read(impl->checkpoint, *impl->mapper);
  impl->planned_specs = impl->plan.outputs();
  return ModelStateStream(std::move(impl));
}

void load_model_state(const std::filesystem::path& src, MapperPtr mapper, Device device,
                      StateDict& target, ReadOptions options) {
  // Targets on a CUDA device: the groups run there, their inputs going up through the staging
  // ring (Note [pread into the staging ring]), and each output is a device-to-device copy into
  // its target. Otherwise, and with DTensor targets (whose slices are read on the host), outputs
  // are made on the host and copied straight into the targets.
  const bool any_dtensor = std::any_of(target.begin(), target.end(), [](const auto& entry) {
    return dist::as_dtensor(entry.second).has_value();
  });
  options.device = device.is_cuda() && !any_dtensor ? device : Device::cpu();
  ModelStateStream stream = read_model_state(src, std::move(mapper), options);
  // Check every output against its target before reading anything (outputs a custom mapper
  // cannot infer are checked as they arrive, by copy_). Specs are global: a DTensor target is
  // checked by its global shape.
  static const std::vector<std::pair<std::string, TensorSpec>> kNone;
  for (const auto& [name, spec] : stream.planned_specs() ? *stream.planned_specs() : kNone) {
    auto it = target.find(name);
    D9D_CHECK(it != target.end(), "load_model_state: the mapper produces ", name,
              " but the target has no tensor of that name");
    D9D_CHECK(it->second.defined(), "load_model_state: the target tensor ", name, " is undefined");
    D9D_CHECK(TensorSpec::of(it->second) == spec, "load_model_state: ", name, " is ", spec.str(),
              " in the checkpoint but the target is ", TensorSpec::of(it->second).str());
    D9D_CHECK_AS(DeviceError, it->second.device() == device, "load_model_state: the target ", name,
                 " is on ", it->second.device(), ", not on ", device);
  }
  // DTensor targets take this rank's slice only (Note [reading what a rank owns]).
  ModelStateStream::Impl& impl = *stream.impl_;
  for (const auto& [name, tensor] : target) {
    if (auto d = dist::as_dtensor(tensor)) impl.distribute_outputs.emplace(name, d->spec());
  }
  if (!impl.distribute_outputs.empty()) {
    impl.slices_group.resize(impl.plan.groups.size());
    for (size_t i = 0; i < impl.plan.groups.size(); ++i) {
      for (const std::string& out : impl.plan.groups[i].group.outputs) {
        if (impl.distribute_outputs.contains(out)) impl.slices_group[i] = true;
      }
    }
  }
  for (auto&& [name, tensor] : stream) {
    auto it = target.find(name);
    D9D_CHECK(it != target.end(), "load_model_state: the mapper produced ", name,
              " but the target has no tensor of that name");
    D9D_CHECK(TensorSpec::of(it->second) == TensorSpec::of(tensor), "load_model_state: ", name,
              " is ", TensorSpec::of(tensor).str(), " but the target is ",
              TensorSpec::of(it->second).str());
    const std::optional<dist::DTensor> source = dist::as_dtensor(tensor);
    const std::optional<dist::DTensor> dest = dist::as_dtensor(it->second);
    D9D_CHECK(source.has_value() == dest.has_value(), "load_model_state: the mapper produced ",
              name, " as ", source ? source->str() : tensor.str(), " but the target is ",
              dest ? dest->str() : it->second.str());
    if (dest) {
      D9D_CHECK(source->device_mesh() == dest->device_mesh() &&
                    source->placements() == dest->placements(),
                "load_model_state: the mapper produced ", name, " as ", source->str(),
                " but the target is ", dest->str());
      dest->local().copy_(source->local());
    } else {
      it->second.copy_(tensor);
    }
  }
}

}  // namespace d9d::model_state
