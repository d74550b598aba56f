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
#include <d9d/io/hashes.hpp>
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

int64_t ReadPlan::peak_bytes(int64_t memory_budget) const {
  int64_t largest = 0;
  int64_t total = 0;
  for (const GroupPlan& g : groups) {
    largest = std::max(largest, g.read_bytes + g.output_bytes);
    total += g.read_bytes + g.output_bytes;
  }
  return std::min(total, std::max(memory_budget, largest));
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
    d9d::detail::throw_error<ValueError>(missing.size(), " input",
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
      d9d::detail::throw_error<ValueError>("group ", mapper::to_string(g),
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
    o.plan.read_bytes = o.plan.input_bytes;
    plan.read_bytes += o.plan.read_bytes;
    plan.groups.push_back(std::move(o.plan));
  }
  for (GroupPlan& g : plan.groups) narrow_read(plan, g, checkpoint, mapper);
  for (size_t i = 0; i < files.size(); ++i) {
    if (file_used[i]) plan.files.push_back(files[i]);
  }
  return plan;
}

namespace {

// The byte ranges of `region` of checkpoint tensor `name`, relative to its first byte: what a
// narrowed group reads of it, and what the plan counts. Each run is widened to the blocks the
// disk gives (the file's O_DIRECT alignment, io::direct_io_alignment: 512 bytes on most disks),
// within the tensor's bytes, and runs that then meet are joined: the bytes read anyway are read
// with them, not again for the next run (a row-parallel slice of rows shorter than a block reads
// the whole tensor, and the plan says so).
std::vector<mapper::ByteRun> byte_runs(const io::Checkpoint& checkpoint, const std::string& name,
                                       const mapper::Region& region) {
  const io::CheckpointEntry entry = checkpoint.entry(name);
  const io::TensorInfo& info = *entry.info;
  const io::SafetensorsFile& file = checkpoint.file(*entry.file);
  const auto block = static_cast<int64_t>(io::direct_io_alignment(file.mapped_file()));
  const int64_t base = file.data_offset() + info.begin;
  std::vector<mapper::ByteRun> out;
  for (const mapper::ByteRun& run :
       mapper::region_byte_runs(info.shape, dtype_bits(info.dtype), region)) {
    const int64_t begin = std::max<int64_t>(0, (base + run.offset) / block * block - base);
    const int64_t end =
        std::min(info.nbytes(), (base + run.offset + run.size + block - 1) / block * block - base);
    if (!out.empty() && out.back().offset + out.back().size >= begin) {
      out.back().size = std::max(out.back().size, end - out.back().offset);
    } else {
      out.push_back({begin, end - begin});
    }
  }
  return out;
}

}  // namespace

void narrow_read(ReadPlan& plan, GroupPlan& g, const io::Checkpoint& checkpoint,
                 const mapper::ModelStateMapper& mapper, const mapper::RegionDict& wanted) {
  if (!g.inferred) return;  // outputs unknown: read whole
  mapper::RegionDict boxes;
  for (const auto& [name, spec] : g.outputs) {
    const auto it = wanted.find(name);
    boxes.emplace(name, it != wanted.end() ? it->second : mapper::Region::whole(spec.shape));
  }
  std::vector<std::string> whole;
  mapper::RegionDict regions = mapper.input_regions(g.inputs, boxes, &whole);
  int64_t read = 0;
  for (const auto& [name, region] : regions) {
    for (const mapper::ByteRun& run : byte_runs(checkpoint, name, region)) read += run.size;
  }
  plan.read_bytes -= g.read_bytes;
  g.not_narrowed = std::move(whole);
  if (read < g.input_bytes) {
    g.read_regions = std::move(regions);
    g.read_bytes = read;
  } else {
    g.read_regions.reset();
    g.read_bytes = g.input_bytes;
  }
  plan.read_bytes += g.read_bytes;
}

// ---- the stream ---------------------------------------------------------------------------------

namespace {

const int64_t kPageSize = sysconf(_SC_PAGESIZE);
// Tensors of at least this many bytes get MADV_WILLNEED on their range before they are read.
constexpr int64_t kReadAheadMin = int64_t{1} << 20;

// What releasing_view asks of the kernel for a tensor's bytes.
enum class Prefetch : uint8_t {
  kNone,       // nothing: a view that will only be read in part (Note [reading what a rank owns])
  kReadAhead,  // start reading it in (MADV_WILLNEED): a view d9d will read with pread
  kPopulate,   // read it in and fault in its page-table entries (MADV_POPULATE_READ, which fails
               // with an IoError naming the file where touching a page would raise SIGBUS), so
               // a consumer that reads it through the mapping finds it resident
};

// A view of a checkpoint tensor whose storage gives the tensor's whole pages back to the kernel
// when the last reference goes (Note [read-ahead budget]); pages shared with a neighbour stay.
Tensor releasing_view(const io::Checkpoint& checkpoint, const std::string& name,
                      Prefetch prefetch) {
  const io::CheckpointEntry entry = checkpoint.entry(name);
  const io::SafetensorsFile& file = checkpoint.file(*entry.file);
  std::shared_ptr<const io::MappedFile> mapping = file.shared_mapped_file();
  const int64_t begin = file.data_offset() + entry.info->begin;
  const int64_t end = file.data_offset() + entry.info->end;
  const int64_t nbytes = end - begin;
  mapping->check_size();  // Note [truncated files]: no view of bytes already gone
  if (prefetch != Prefetch::kNone && nbytes >= kReadAheadMin) {
    mapping->advise(io::Advice::kWillNeed, static_cast<size_t>(begin), static_cast<size_t>(nbytes));
  }
  if (prefetch == Prefetch::kPopulate) {
    mapping->populate(static_cast<size_t>(begin), static_cast<size_t>(nbytes));
  }
  const int64_t first_page = (begin + kPageSize - 1) / kPageSize * kPageSize;
  const int64_t last_page = end / kPageSize * kPageSize;
  Storage storage = Storage::wrap(
      const_cast<std::byte*>(mapping->data() + begin), static_cast<size_t>(nbytes), Device::cpu(),
      StorageKind::kMapped, false, [mapping, first_page, last_page](std::byte*) {
        if (last_page > first_page) {
          mapping->advise(io::Advice::kDontNeed, static_cast<size_t>(first_page),
                          static_cast<size_t>(last_page - first_page));
        }
      });
  return Tensor::from_storage(std::move(storage), entry.info->dtype, entry.info->shape);
}

// Where the bytes of `view` are when it is a view of a checkpoint file: the file and the byte of
// it where the view's first element is.
struct FileBytes {
  const io::MappedFile* file = nullptr;
  uint64_t offset = 0;
};
std::optional<FileBytes> file_bytes_of(const io::Checkpoint& checkpoint, const Tensor& view) {
  if (!view.defined() || view.storage().kind() != StorageKind::kMapped) return std::nullopt;
  const auto p = reinterpret_cast<uintptr_t>(view.data_ptr());
  for (const std::string& name : checkpoint.files()) {
    const io::MappedFile& file = checkpoint.file(name).mapped_file();
    const auto begin = reinterpret_cast<uintptr_t>(file.data());
    if (p >= begin && p - begin < file.size()) return FileBytes{&file, p - begin};
  }
  return std::nullopt;
}

// An owned copy of `view`, a view of a checkpoint file at `at`: the bytes its elements span read
// by the read engine (never through the mapping: Note [truncated files]; no read-ahead past them,
// so a cold file is read no further than the view: Note [reading what a rank owns]), and the same
// view made of them.
Tensor read_view(const Tensor& view, const FileBytes& at, const io::ReadRangesOptions& io) {
  int64_t span = view.nbytes();
  if (view.numel() > 0 && !view.is_contiguous()) {  // packed sub-byte tensors are contiguous
    int64_t last = 0;
    for (int64_t d = 0; d < view.dim(); ++d) last += (view.size(d) - 1) * view.stride(d);
    span = (last + 1) * view.element_size();
  }
  Storage storage = Storage::allocate(static_cast<size_t>(span));
  const io::ReadRange range{at.file, at.offset, storage.data(), static_cast<uint64_t>(span),
                            /*populate=*/true};
  io::read_ranges({&range, 1}, io);
  return Tensor(std::move(storage), view.dtype(), view.shape(), view.strides());
}

// Note [pread into the staging ring]: on cuda:N a group's inputs are not viewed through the
// mapping at all: each chunk of a tensor's bytes is read from the file by the read engine (pread
// from the page cache; O_DIRECT through io_uring from a cold disk) straight into a pinned staging
// buffer (Note [pinned staging ring]). Against memcpy from the mapping this skips
// faulting in page-table entries for every page and dropping them again, and the bytes never add
// to this process's resident set. Measured on the development machine with a stand-alone program
// (2 threads, a page-cached 2 GB file, 32 MiB chunks into warm buffers, whole process, median of
// 11): 0.67x the wall time and 0.68x the CPU time of memcpy from a fresh mapping, peak RSS
// 98 MiB against 1974 MiB. A file truncated under us is an IoError naming it, not SIGBUS (as in
// Note [pread for copies] of the io layer).
Tensor upload_from_file(StagingRing& staging, const io::Checkpoint& checkpoint,
                        const std::string& name, const io::ReadRangesOptions& io) {
  const io::CheckpointEntry entry = checkpoint.entry(name);
  const io::SafetensorsFile& file = checkpoint.file(*entry.file);
  const std::shared_ptr<const io::MappedFile> mapping = file.shared_mapped_file();
  const auto begin = static_cast<uint64_t>(file.data_offset() + entry.info->begin);
  const int64_t nbytes = entry.info->end - entry.info->begin;
  if (nbytes >= kReadAheadMin && io.io == io::IoBackend::kPread) {
    // A file not in the page cache: the kernel reads ahead now (the other backends read past the
    // page cache, or choose by it: no read-ahead into it).
    mapping->advise(io::Advice::kWillNeed, begin, static_cast<size_t>(nbytes));
  }
  // Each staging buffer is filled by the read engine, with the backend asked for (Note [read
  // backends] in io's read_engine.cpp): the same engine serves host and device targets. One
  // thread: the reader threads already fill buffers side by side.
  io::ReadRangesOptions one_thread = io;
  one_thread.threads = 1;
  return staging.upload(
      entry.info->shape, entry.info->dtype, [&](std::span<std::byte> dst, int64_t offset) {
        const io::ReadRange range{mapping.get(), begin + static_cast<uint64_t>(offset), dst.data(),
                                  dst.size()};
        io::read_ranges({&range, 1}, one_thread);
      });
}

// Note [views or copies]: on the host, a group whose mapper only makes views (moves_data() is
// false: identity, rename, reshape, ...) gets views of the files as inputs and hands its outputs
// on as views of them, zero-copy, their pages populated (releasing_view). Every other group gets
// its inputs read into memory with pread first (io's Checkpoint::load: Note [pread for copies]),
// so that the ops that move data (cat, stack, casts, transposes) never read a mapping: a file cut
// short meanwhile is an IoError naming it, not SIGBUS (Note [truncated files]). That is a copy
// more than reading through the mapping, except for the commonest such group: a cat or stack
// along dim 0 (concatenated_inputs(): fused QKV, gate_up, stacked experts) lays its inputs' bytes
// end to end, so they are read from the files straight into its output and the op is skipped:
// the read is the op's copy. A view handed on is written by pwrite, which fails cleanly too, and
// load_model_state reads the views it is handed into its targets with pread, so no byte d9d
// itself reads comes through a mapping. Both answers are promises a mapper makes about apply()
// (tests/mapper/test_properties.cpp holds every op to them); a leaf op that makes none gets the
// safe ones: it moves data, and its inputs are not its output's bytes end to end.
//
// Note [reading what a rank owns]: load_model_state into a DTensor target needs only this rank's
// slice. A group that only makes views then gets views with no read-ahead asked for; the mapper
// runs on them (touching no byte); distribute_tensor narrows the output to this rank's slice (a
// view again); and only then is the slice read, with pread, into memory of its own (read_view:
// exactly its pages asked of the kernel), so a rank reads about 1/N of the tensor, not the whole
// of it. A group that moves data (transpose, stack, ...) reads the boxes of its inputs that make
// the slice (Note [slice pushdown] in the mapper layer's region.cpp; read_narrowed).

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
  // Whether views handed on are populated (Prefetch::kPopulate); load_model_state, which reads
  // them into its targets with the read engine, has them read ahead only for the pread backend
  // (a cold file read with O_DIRECT would be read twice otherwise).
  bool populate_views = true;
  // Groups that only make views hand on views of the files (Note [views or copies]); not with a
  // backend other than auto or mmap, nor on a network file system (Note [read backends]).
  bool views = true;

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
      : checkpoint(std::move(c)), mapper(std::move(m)), options(std::move(o)) {
    views = options.zero_copy &&
            (options.io == io::IoBackend::kAuto || options.io == io::IoBackend::kMmap);
    // Never a mapping on a network file system (Note [read backends]).
    for (const std::string& name : checkpoint.files()) {
      if (io::remote_file_system(checkpoint.file(name).mapped_file())) views = false;
    }
  }

  io::ReadRangesOptions io_options() const { return {0, options.io, options.read_log}; }

  // Note [one read plan]: load_model_state's groups that only make views (the renames, reshapes
  // and identities that are most of a checkpoint) need no reader thread: the mapper runs on views
  // of the files, and each output's bytes are where its view points. All of them are read with
  // one call of the read engine, straight into their targets, before the other groups stream: the
  // engine then sees every range at once (file order, chunks balanced over threads, io_uring
  // queue kept full) instead of one tensor at a time. A group qualifies when its outputs are
  // inferred, contiguous views of the files, and their targets contiguous host tensors; the
  // others stay in the stream.
  void read_views_into(StateDict& target) {
    std::vector<io::ReadRange> ranges;
    std::vector<bool> read(plan.groups.size(), false);
    for (size_t i = 0; i < plan.groups.size(); ++i) {
      const GroupPlan& g = plan.groups[i];
      read[i] = g.inferred && !mapper->moves_data(g.group) && add_ranges(g, target, ranges);
    }
    if (ranges.empty()) return;
    std::sort(ranges.begin(), ranges.end(), [](const io::ReadRange& a, const io::ReadRange& b) {
      return a.file != b.file ? a.file < b.file : a.offset < b.offset;
    });
    io::read_ranges(ranges, io_options());
    std::vector<GroupPlan> rest;
    for (size_t i = 0; i < plan.groups.size(); ++i) {
      GroupPlan& g = plan.groups[i];
      if (read[i]) {
        plan.output_bytes -= g.output_bytes;
        plan.output_count -= static_cast<int64_t>(g.outputs.size());
      } else {
        rest.push_back(std::move(g));
      }
    }
    plan.groups = std::move(rest);
  }

  // The ranges that fill `g`'s outputs' targets, appended; false (and nothing appended) when an
  // output is not a contiguous view of a file or its target not a contiguous host tensor.
  bool add_ranges(const GroupPlan& g, StateDict& target, std::vector<io::ReadRange>& ranges) {
    StateDict inputs;
    for (const auto& [name, spec] : g.inputs) {
      inputs.emplace(name, releasing_view(checkpoint, name, Prefetch::kNone));
    }
    const StateDict outputs = mapper->apply(std::move(inputs));
    std::vector<io::ReadRange> mine;
    for (const auto& [name, spec] : g.outputs) {
      const auto out = outputs.find(name);
      const auto dst = target.find(name);
      if (out == outputs.end() || dst == target.end() || !out->second.is_contiguous() ||
          !dst->second.device().is_cpu() || !dst->second.is_contiguous() ||
          TensorSpec::of(out->second) != TensorSpec::of(dst->second)) {
        return false;
      }
      const auto at = file_bytes_of(checkpoint, out->second);
      if (!at) return false;
      mine.push_back({at->file, at->offset, static_cast<std::byte*>(dst->second.mutable_data_ptr()),
                      static_cast<uint64_t>(out->second.nbytes()), /*populate=*/true});
    }
    if (outputs.size() != g.outputs.size()) return false;
    ranges.insert(ranges.end(), mine.begin(), mine.end());
    return true;
  }

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
    const size_t threads =
        std::min<size_t>(options.reader_threads > 0 ? static_cast<size_t>(options.reader_threads)
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

  // The one output of a group whose mapper lays `parts` (its inputs) end to end, read from the
  // files straight into it (Note [views or copies]). On the host; a DTensor target's slice is
  // then taken from it like any output's.
  StateDict read_concatenated(const GroupPlan& g, const std::vector<std::string>& parts) {
    D9D_ASSERT(g.outputs.size() == 1 && parts.size() == g.inputs.size());
    const auto& [name, spec] = *g.outputs.begin();
    Tensor out = Tensor::empty(spec.shape, spec.dtype);
    std::vector<io::ReadRange> ranges;
    uint64_t at = 0;
    for (const std::string& part : parts) {
      const io::CheckpointEntry entry = checkpoint.entry(part);
      const io::SafetensorsFile& file = checkpoint.file(*entry.file);
      const auto nbytes = static_cast<uint64_t>(entry.info->nbytes());
      ranges.push_back({&file.mapped_file(),
                        static_cast<uint64_t>(file.data_offset() + entry.info->begin),
                        static_cast<std::byte*>(out.mutable_data_ptr()) + at, nbytes,
                        /*populate=*/true});
      at += nbytes;
    }
    D9D_ASSERT(at == static_cast<uint64_t>(out.nbytes()));
    io::read_ranges(ranges, io_options());
    StateDict outputs;
    outputs.emplace(name, std::move(out));
    return outputs;
  }

  // Note [slice pushdown]: the group's inputs in memory of their own with only the boxes of
  // g.read_regions read into them (one read_ranges call); the rest of each input is left as the
  // allocator gives it (fresh pages stay untouched, so they cost no resident memory), and the
  // mapper, which reads only inside the boxes to make the outputs, never looks at it.
  StateDict read_narrowed(const GroupPlan& g) {
    StateDict inputs;
    std::vector<io::ReadRange> ranges;
    for (const auto& [name, spec] : g.inputs) {
      Tensor t = Tensor::empty(spec.shape, spec.dtype);
      if (const auto r = g.read_regions->find(name); r != g.read_regions->end()) {
        const io::CheckpointEntry entry = checkpoint.entry(name);
        const io::SafetensorsFile& file = checkpoint.file(*entry.file);
        const auto begin = static_cast<uint64_t>(file.data_offset() + entry.info->begin);
        auto* data = static_cast<std::byte*>(t.mutable_data_ptr());
        for (const mapper::ByteRun& run : byte_runs(checkpoint, name, r->second)) {
          ranges.push_back({&file.mapped_file(), begin + static_cast<uint64_t>(run.offset),
                            data + run.offset, static_cast<uint64_t>(run.size),
                            /*populate=*/true});
        }
      }
      inputs.emplace(name, std::move(t));
    }
    io::read_ranges(ranges, io_options());
    return inputs;
  }

  // The group's outputs, its inputs read as Note [views or copies] says.
  StateDict apply_group(const GroupPlan& g, bool slices) {
    StateDict inputs;
    // A narrowed group reads its boxes with the read engine even where it only makes views: a
    // view's pages faulted in through the mapping bring the kernel's read-around with them (on a
    // cold file, the neighbours of every run: most of the file for row-parallel slices). Views
    // of a DTensor target's slice are read as Note [reading what a rank owns] says.
    // On cuda:N the group runs on the host and only its outputs (the rank's share) go up
    // (run_group), not the whole input buffers.
    const bool view_only = views && !mapper->moves_data(g.group);
    if (g.read_regions && !(slices && view_only)) return mapper->apply(read_narrowed(g));
    if (staging != nullptr && !slices) {
      for (const auto& [name, spec] : g.inputs) {
        inputs.emplace(name, upload_from_file(*staging, checkpoint, name, io_options()));
      }
      return mapper->apply(std::move(inputs));
    }
    if (view_only) {
      const Prefetch prefetch = slices                                ? Prefetch::kNone
                                : populate_views                      ? Prefetch::kPopulate
                                : options.io == io::IoBackend::kPread ? Prefetch::kReadAhead
                                                                      : Prefetch::kNone;
      for (const auto& [name, spec] : g.inputs) {
        inputs.emplace(name, releasing_view(checkpoint, name, prefetch));
        if (prefetch == Prefetch::kPopulate && options.read_log != nullptr) {
          const io::CheckpointEntry entry = checkpoint.entry(name);
          options.read_log->add(checkpoint.file(*entry.file).path(), io::IoBackend::kMmap,
                                static_cast<uint64_t>(entry.info->nbytes()));
        }
      }
      return mapper->apply(std::move(inputs));
    }
    if (const std::vector<std::string> parts = mapper->concatenated_inputs(g.group);
        !parts.empty() && g.inferred) {
      return read_concatenated(g, parts);
    }
    std::vector<std::string> names;
    names.reserve(g.inputs.size());
    for (const auto& [name, spec] : g.inputs) names.push_back(name);
    return mapper->apply(checkpoint.load(names, io_options()));
  }

  StateDict run_group(const GroupPlan& g, bool slices) {
    StateDict outputs = apply_group(g, slices);
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
      // A narrowed group's output that views a larger buffer of its own (a shard_tensor of a
      // stack: the stack is made whole, Note [slice pushdown]) is copied out, so that the buffer
      // goes now, not when the consumer lets go of the piece.
      if (g.read_regions && tensor.storage().kind() != StorageKind::kMapped &&
          tensor.storage().nbytes() > 2 * static_cast<size_t>(tensor.nbytes())) {
        tensor = tensor.clone();
      }
      if (slices) {  // Note [reading what a rank owns]
        const auto it = distribute_outputs.find(name);
        if (it != distribute_outputs.end()) {
          const dist::DTensor local =
              dist::distribute_tensor(tensor, it->second->mesh, it->second->placements);
          const auto at = file_bytes_of(checkpoint, local.local());
          tensor = at ? read_view(local.local(), *at, io_options()).with_attachment(local.spec())
                      : local.as_tensor();
        } else if (const auto at = file_bytes_of(checkpoint, tensor)) {
          tensor = read_view(tensor, *at, io_options());  // not populated: read it now
        }
        continue;
      }
      if (options.device.is_cuda()) {
        tensor = tensor.to(options.device);  // a no-op unless a mapper made a host tensor
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

const ReadPlan& ModelStateStream::plan() const {
  return impl_->plan;
}

const std::optional<std::vector<std::pair<std::string, TensorSpec>>>&
ModelStateStream::planned_specs() const {
  return impl_->planned_specs;
}

ModelStateStream::iterator ModelStateStream::begin() {
  D9D_CHECK(!impl_->started,
            "read_model_state: the stream is single-pass; begin() was called twice");
  impl_->started = true;
  impl_->start();
  return iterator(this);
}

ModelStateStream::value_type* ModelStateStream::next() {
  return impl_->next();
}

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
  if (options.verify) {
    io::verify_hashes(impl->checkpoint.dir(), impl->plan.files, 0, io::IoBackend::kPread);
  }
  impl->planned_specs = impl->plan.outputs();
  if (!options.pushdown) {  // every input whole, no view handed on: read whole, slice after
    for (GroupPlan& g : impl->plan.groups) {
      g.read_regions.reset();
      g.read_bytes = g.input_bytes;
    }
    impl->plan.read_bytes = impl->plan.input_bytes;
    impl->views = false;
  }
  // A plan that reads only parts of the files (Note [slice pushdown]) reads everything with the
  // read engine: a view's pages faulted in through the mapping (a norm's few KiB) bring the
  // kernel's read-around with them, which on a cold file fetches the neighbours the plan skips.
  if (impl->plan.read_bytes < impl->plan.input_bytes) impl->views = false;
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
  // Views never leave load_model_state: they only say where an output's bytes are, and the read
  // engine reads those with the backend asked for. So they are used whatever ReadOptions::io
  // and zero_copy say, and whatever the file system (not without pushdown: then every input is
  // read whole first).
  impl.views = options.pushdown;
  impl.populate_views = false;
  for (const auto& [name, tensor] : target) {
    if (auto d = dist::as_dtensor(tensor)) impl.distribute_outputs.emplace(name, d->spec());
  }
  if (!impl.distribute_outputs.empty()) {
    impl.slices_group.resize(impl.plan.groups.size());
    for (size_t i = 0; i < impl.plan.groups.size(); ++i) {
      GroupPlan& g = impl.plan.groups[i];
      mapper::RegionDict wanted;  // this rank's slices (Note [slice pushdown])
      for (const std::string& out : g.group.outputs) {
        const auto d = impl.distribute_outputs.find(out);
        if (d == impl.distribute_outputs.end()) continue;
        impl.slices_group[i] = true;
        const dist::LocalSlice local = dist::compute_local_shape_and_global_offset(
            d->second->shape, d->second->mesh, d->second->placements);
        mapper::Region box{local.offset, local.offset};
        for (size_t k = 0; k < box.end.size(); ++k) box.end[k] += local.shape[k];
        wanted.emplace(out, std::move(box));
      }
      if (impl.slices_group[i] && options.pushdown) {
        narrow_read(impl.plan, g, impl.checkpoint, *impl.mapper, wanted);
      }
    }
  } else if (!options.device.is_cuda()) {
    impl.read_views_into(target);
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
    } else if (const auto at = file_bytes_of(impl.checkpoint, tensor)) {
      // Note [views or copies]: a view of a file is read with pread, straight into a packed host
      // target.
      const Tensor& dst = it->second;
      if (dst.device().is_cpu() && dst.is_contiguous() && tensor.is_contiguous()) {
        const io::ReadRange range{at->file, at->offset,
                                  static_cast<std::byte*>(dst.mutable_data_ptr()),
                                  static_cast<uint64_t>(dst.nbytes())};
        io::read_ranges({&range, 1}, impl.io_options());
      } else {
        dst.copy_(read_view(tensor, *at, impl.io_options()));
      }
    } else {
      it->second.copy_(tensor);
    }
  }
}

}  // namespace d9d::model_state
