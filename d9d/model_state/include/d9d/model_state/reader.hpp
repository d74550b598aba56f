// Streamed reading: a checkpoint, through a mapper, into a stream of (name, Tensor).
//
//   ReadOptions ro;
//   ro.memory_budget = int64_t{8} << 30;  // a roomy machine: read further ahead
//   for (auto&& [name, tensor] : read_model_state("ckpt/", mapper, ro)) { ... }
//
// Note [read plan]: before a byte is read, plan_read() works from metadata alone: the headers of
// the checkpoint, the mapper's state_dependency_groups() and its infer(). Every group's inputs
// must be in the checkpoint (one error lists every missing name), and every output spec is
// inferred, so a bad mapper or a checkpoint of the wrong shapes fails here, not halfway through.
// Groups run in the order of their first input's position in the files, so reads walk each file
// front to back; that order, and each group's outputs sorted by name, is the order of the stream.
//
// Note [read-ahead budget]: reader threads run groups ahead of the consumer (read the inputs,
// apply the group, fault in outputs that are views of the file) while the bytes of the groups
// started but not yet handed to the consumer stay within ReadOptions::memory_budget. A group
// larger than the whole budget runs alone. Outputs that are views of the file give their pages
// back (MADV_DONTNEED) when the last reference to them goes, so resident memory follows what the
// consumer holds, not how much of the file has been seen. The default is small on purpose: a
// consumer that writes (a conversion) takes one tensor at a time, and read-ahead beyond a few
// groups only holds memory (on a 2 GB Llama checkpoint, `d9d convert` ran as fast with 256 MiB as
// with 2 GiB, at 0.35 GB and 1.3 GB peak RSS).
#pragma once

#include <cstdint>
#include <filesystem>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <d9d/io/checkpoint.hpp>
#include <d9d/io/read.hpp>
#include <d9d/mapper/mapper.hpp>
#include <d9d/tensor.hpp>

namespace d9d::model_state {

using mapper::MapperPtr;
using mapper::SpecDict;
using mapper::StateDict;
using mapper::StateGroup;
using mapper::TensorSpec;

struct ReadOptions {
  // Where the outputs go. On cuda:N each group's input bytes are copied from the mapped files to
  // the device through a ring of pinned staging buffers (Note [pinned staging ring] in
  // <d9d/staging.hpp>, filled by the reader threads) and the group is applied on the device.
  Device device = Device::cpu();
  // Groups read and applied at once, each by a thread of its own; 0: d9d::num_threads() (the
  // worker threads that every copy and cast, theirs included, is split across).
  int reader_threads = 0;
  // Bytes of groups being read or waiting for the consumer (see Note [read-ahead budget]). The
  // d9d CLI's --memory-budget defaults to this.
  int64_t memory_budget = int64_t{512} << 20;
  // Groups whose mapper only makes views (identity, rename, reshape, ...: moves_data() false)
  // hand their outputs out as zero-copy views of the files (Note [views or copies] in
  // reader.cpp); code that reads such a view through its pointer meets SIGBUS if the file is cut
  // short meanwhile, as with any mmap. False reads every group's inputs into memory with pread
  // first (a copy of those bytes more; a file cut short is then an IoError naming it), for a
  // consumer that reads every byte itself (d9d verify).
  bool zero_copy = true;
  // How the files' bytes are read (Note [read backends] in io's read_engine.cpp): kAuto picks per
  // file (pread from the page cache or a network file system, O_DIRECT through io_uring from a
  // cold local disk). Anything but kAuto and kMmap also turns zero_copy off: every input is read
  // by that backend.
  io::IoBackend io = io::IoBackend::kAuto;
  // Read only the parts of the inputs the outputs need (Note [slice pushdown] in the mapper
  // layer's region.cpp): a group whose ops keep part of their inputs (shard_tensor), and a
  // DTensor target's slice, read those bytes alone. False reads every input whole and slices
  // after, as the loaders that do not push the slice down do (the benchmarks' baseline).
  bool pushdown = true;
  // Where the reads are accounted (bytes per file and backend, fallback notes); may be null.
  io::ReadLog* read_log = nullptr;
  // Check every file the plan reads against its SHA-256 (d9d-hashes.json or a hub snapshot's
  // blob names: Note [hash lists] in io's hashes.cpp) before any tensor is read; an
  // io::IntegrityError names a file that differs or has no hash. The files are hashed through the
  // page cache, so the load that follows reads them from memory: the disk is read once.
  bool verify = false;
  // A progress bar on standard error (a ProgressBar: drawn only on a terminal).
  bool show_progress = true;
  std::string label = "Loading Model States";
};

// One group of the plan, with the specs of its inputs (from the checkpoint) and outputs
// (inferred).
struct GroupPlan {
  StateGroup group;
  SpecDict inputs;
  SpecDict outputs;  // empty when !inferred
  // False for a user-defined mapper without infer(): its outputs are known only once applied
  // (output_bytes is then estimated as input_bytes).
  bool inferred = true;
  int64_t input_bytes = 0;
  int64_t output_bytes = 0;
  // Note [slice pushdown] (in the mapper layer's region.cpp): the box of each input the group
  // reads, when that is less than its whole inputs (an input absent is not read at all); nullopt
  // when every input is read whole.
  std::optional<mapper::RegionDict> read_regions;
  // The bytes of the files read for the inputs: input_bytes, or less with read_regions.
  int64_t read_bytes = 0;
  // The ops that read their whole inputs though only part of their outputs was wanted (describe()
  // of each); `d9d plan` lists them.
  std::vector<std::string> not_narrowed;
};

struct ReadPlan {
  std::vector<GroupPlan> groups;   // in execution (= stream) order
  std::vector<std::string> files;  // the checkpoint files that hold needed inputs, sorted
  int64_t input_bytes = 0;
  int64_t output_bytes = 0;
  int64_t output_count = 0;
  int64_t read_bytes = 0;  // the groups' read_bytes: what a run of the plan reads of the files

  // Every output in stream order; nullopt when some group's outputs could not be inferred.
  std::optional<std::vector<std::pair<std::string, TensorSpec>>> outputs() const;
  // An estimate of the host memory a run of the plan holds at its peak: the bytes read and made
  // by the groups in flight, which the read-ahead budget bounds (Note [read-ahead budget]), at
  // least the largest group's, at most every group's. Input bytes a narrowed group does not read
  // (Note [slice pushdown]) are never touched, so they are not counted.
  int64_t peak_bytes(int64_t memory_budget) const;
};

// Plans reading `checkpoint` through `mapper` (Note [read plan]). Throws ValueError listing every
// input missing from the checkpoint, or the error infer() raises for a group (naming it). A group
// whose mapper cannot infer (NotInferableError) is planned without output specs.
ReadPlan plan_read(const io::Checkpoint& checkpoint, const mapper::ModelStateMapper& mapper);

// Narrows what group `g` of `plan` reads to the parts of its inputs that make `wanted` of its
// outputs (outputs absent from `wanted` are wanted whole), as the mapper says (Note [slice
// pushdown]); plan_read calls it with every output wanted whole, which narrows the groups whose
// ops keep only part of their inputs (shard_tensor). Updates the group's and the plan's
// read_bytes.
void narrow_read(ReadPlan& plan, GroupPlan& g, const io::Checkpoint& checkpoint,
                 const mapper::ModelStateMapper& mapper, const mapper::RegionDict& wanted = {});

// The stream read_model_state() returns: an input range of (name, Tensor) pairs. Single pass;
// move-only. Destroying it stops the reader threads.
class ModelStateStream {
 public:
  using value_type = std::pair<std::string, Tensor>;

  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = ModelStateStream::value_type;
    using difference_type = std::ptrdiff_t;
    using reference = value_type&;
    using pointer = value_type*;

    iterator() = default;
    reference operator*() const { return *current_; }
    pointer operator->() const { return current_; }
    iterator& operator++();
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) {
      return it.current_ == nullptr;
    }

   private:
    friend class ModelStateStream;
    explicit iterator(ModelStateStream* stream);
    ModelStateStream* stream_ = nullptr;
    value_type* current_ = nullptr;
  };

  ModelStateStream(ModelStateStream&&) noexcept;
  ModelStateStream& operator=(ModelStateStream&&) noexcept;
  ~ModelStateStream();

  // Starts the reader threads; call once.
  iterator begin();
  std::default_sentinel_t end() const { return {}; }

  const ReadPlan& plan() const;
  // Every (name, spec) the stream will yield, in order: what a writer needs to lay out its shards
  // before the first tensor arrives (nullopt if a group's outputs cannot be inferred).
  const std::optional<std::vector<std::pair<std::string, TensorSpec>>>& planned_specs() const;

  struct Impl;

 private:
  friend ModelStateStream read_model_state(const std::filesystem::path&, MapperPtr,
                                           const ReadOptions&);
  friend void load_model_state(const std::filesystem::path&, MapperPtr, Device, StateDict&,
                               ReadOptions);
  explicit ModelStateStream(std::unique_ptr<Impl> impl);
  value_type* next();
  std::unique_ptr<Impl> impl_;
};

// Opens the checkpoint at `src` (a directory with model.safetensors.index.json or
// model.safetensors, an index file or a .safetensors file), plans, and returns the stream.
ModelStateStream read_model_state(const std::filesystem::path& src, MapperPtr mapper,
                                  const ReadOptions& options = {});

// Streams the mapper's outputs into the caller's existing tensors: every output must have a
// target of the same shape and dtype (the error names the key); targets may be on a CUDA device
// (then the groups run on the device too, their inputs uploaded through the staging ring).
// Targets the mapper does not produce are left as they are. A DTensor target (Note [DTensor in a
// StateDict] in <d9d/dist/dtensor.hpp>) gets this rank's slice of its output, and the reader
// reads about that slice only (Note [reading what a rank owns] in reader.cpp).
void load_model_state(const std::filesystem::path& src, MapperPtr mapper, Device device,
                      StateDict& target, ReadOptions options = {});

}  // namespace d9d::model_state
