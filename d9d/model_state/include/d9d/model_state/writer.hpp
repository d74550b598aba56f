// Streamed writing: any stream of (name, Tensor), through a mapper, into a sharded checkpoint.
//
//   WriteOptions wo;
//   wo.shard_size = 5'000'000'000;  // huggingface_hub's "5GB"
//   write_model_state_local("out/", identity_mapper_from_mapper_outputs(m),
//                           read_model_state("ckpt/", m, ro), wo);
//   save_model_state("out/", identity_mapper_from_state(weights), weights, wo);
//
// Note [streamed shards]: groups are applied as soon as their inputs have arrived, and every
// output is written straight to its shard file at its final offset; no shard is ever held in
// memory. That needs each shard's header before its first tensor, so the writer plans the whole
// layout from specs first: a ModelStateStream says what it will yield (planned_specs()), and a
// container (a StateDict, a vector of pairs) is walked once for its specs. The plan also finds
// the errors a demanding user wants before the first byte: a tensor larger than a shard, more
// shards than names, a shard header past the format's limit, groups the source cannot satisfy
// (named with their inputs), specs a group cannot take. Only a single-pass range that cannot say
// what it holds falls back to the reference's way: the current shard's tensors are kept until it
// is full.
//
// Shards follow the reference: outputs in the order their groups complete (each group's outputs
// by name); a shard is closed when the next tensor would take it past shard_size bytes of tensor
// data; they are named model-0000i-of-0000N.safetensors; the index lists every tensor in that
// order with metadata.total_size = the bytes of all tensors. With single_file_if_one_shard, a
// checkpoint of one shard is what transformers' save_pretrained writes: model.safetensors and no
// index.
//
// Note [checkpoint commit]: one writer at a time per destination, and a process killed at any
// instant leaves the old checkpoint or the new one: never a mix, never neither.
//
// The lock. A Destination locks the directory (flock of OUT/.d9d-lock, io::LockFile) before it
// looks at anything in it, and holds the lock until its commit is over; the kernel drops it when
// the process dies. A second writer is refused at once, naming the holder's pid. In a distributed
// write the finalizing rank (rank 0) holds it for the whole job: the other ranks write only
// between its checks and its commit. (On NFS, flock is lockd's byte-range lock, across hosts.)
//
// The old checkpoint is, in the directory: model.safetensors.index.json and the .safetensors files
// it names, a model.safetensors, and the caller's companion files (WriteOptions::companion_files:
// the CLI's d9d-conversion.json). overwrite replaces those, and nothing else in the directory is
// ever removed or replaced: a new shard name that a file outside the old checkpoint holds is an
// error at the commit, before any file is touched.
//
// The commit. Not a staging directory swapped in: the directory may be the user's, holding other
// files (config.json, a tokenizer), and the checkpoint's files live in it directly (HF's layout).
// So the index is the commit point, and since the new shards' names (the reference's, pinned by
// its tests) can be the old ones', old files are set aside under other names first. The new shards
// are complete and fsynced under temporary names (.d9d-shard-*); then the finalizing process
// takes these steps, each durable (fsynced) before a later one depends on it:
//   1. Stage the new index and companions as .d9d-new-<name>.
//   2. Write the journal, .d9d-commit.json: every name the steps below touch.
//   3. Set aside each old file whose name a new shard takes, and a model.safetensors (which
//      transformers reads before any index): hard-link it to .d9d-old-<name> and write an interim
//      index that names the links (the old index kept as a link too): still the old checkpoint,
//      under other names; then remove the model.safetensors. Rename old companions to
//      .d9d-old-<name>.
//   4. Rename the new shards to model-0000i-of-0000N.safetensors; no index names them yet.
//   5. The commit point: rename the staged index over the index.
//   6. Rename the new companions into place; remove the old files and the .d9d-old- links, then
//      the journal.
// An error before step 5 undoes what was done; one after it is a warning (the new checkpoint is
// in place, the next writer finishes step 6). Recovery: the next Destination, under the lock,
// finds the journal and finishes step 6 when the staged index is gone (the commit point passed),
// or else undoes steps 4 to 1, removing the journal before the staged index (so an undo that is
// itself killed is undone again); then it removes the temporary files of dead processes.
//
// A new checkpoint of one file (single_file_if_one_shard) has no index to stage: its commit point
// is the rename of the shard's temporary file to model.safetensors, which replaces an old
// model.safetensors in one step, so step 3 sets nothing aside but old companions and step 4 is
// empty; the journal names the temporary file as the one whose presence means "not yet committed".
// An old index goes first in step 6 (transformers reads model.safetensors before any index; d9d's
// reader refuses the directory until the old index is gone), then the old shards. So every
// reader sees the old checkpoint until the commit point and the new one after it; the companions
// alone may be missing until the next write into the directory. (d9d's reader, which refuses an
// index beside a model.safetensors the index does not name, refuses the directory in the moment
// between writing the interim index and removing the model.safetensors, and in its mirror in an
// undo.) The cost is a few renames, links and directory fsyncs: no data is copied (except on a
// file system without hard links, where step 3 copies the files it sets aside).
//
// Test hook: with D9D_TEST_COMMIT_FAULT=kill:K (or error:K) in the environment, the K-th file
// operation of a Destination (its recovery, then its commit; counted from 1) is replaced by
// SIGKILL of the process (or an IoError): how the tests reach every step.

#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <d9d/io/checkpoint.hpp>
#include <d9d/io/safetensors.hpp>
#include <d9d/mapper/mapper.hpp>
#include <d9d/tensor.hpp>

namespace d9d::model_state {

using mapper::MapperPtr;
using mapper::SpecDict;
using mapper::StateDict;
using mapper::StateGroup;
using mapper::TensorSpec;

struct WriteOptions {
  // Most bytes of tensor data in one shard (the reference's shard_size_gb * 2^30). The d9d CLI's
  // --shard-size defaults to this.
  int64_t shard_size = int64_t{4} << 30;
  // A tensor larger than shard_size: an error before anything is written (false, the reference's
  // rule), or a shard of its own (true, the rule of transformers' and huggingface_hub's splitter;
  // the d9d CLI sets it and says which tensors got one).
  bool oversized_tensor_alone = false;
  // A checkpoint that fits one shard: model-00001-of-00001.safetensors and an index (false, the
  // reference's naming), or model.safetensors and no index (true, transformers' save_pretrained;
  // the d9d CLI sets it).
  bool single_file_if_one_shard = false;
  // A progress bar on standard error (a ProgressBar: drawn only on a terminal).
  bool show_progress = true;
  std::string label = "Saving Model States";
  // Each shard's data section starts at a multiple of this (see io::SaveOptions).
  int64_t alignment = 4096;
  // fsync every shard and the index (turn off only for scratch output).
  bool fsync = true;
  // Replace a checkpoint already in the destination (Note [checkpoint commit]: its index, the
  // files the index names, a model.safetensors and the companion files; nothing else); without
  // it, a destination holding model.safetensors.index.json or *.safetensors is an error.
  bool overwrite = false;
  io::Metadata metadata = io::default_metadata();
  // Publish d9d-hashes.json with the checkpoint (a companion file: Note [hash lists] in io's
  // hashes.cpp): the SHA-256 of every shard, hashed on this process once all are written, and of
  // the index. An old checkpoint's hash list goes with it either way.
  bool write_hashes = false;
  // Small files that belong to the checkpoint beside its index (the CLI's d9d-conversion.json),
  // name -> text, published by the same commit. A file of such a name already in the destination
  // is part of the old checkpoint and goes with it; a name mapped to nullopt is only removed.
  std::map<std::string, std::optional<std::string>> companion_files;
};

// What one process wrote: its shards under temporary names, and which tensor is in which.
struct LocalShards {
  std::vector<std::string> files;                               // temporary file names, in order
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> file, in write order
  int64_t total_size = 0;                                       // bytes of tensor data
  // Temporary file name -> the SHA-256 of its bytes, computed as it was written
  // (WriteOptions::write_hashes); a file missing here is hashed at the commit.
  std::map<std::string, std::string> sha256;
};

// The engine behind write_model_state_local (public so the template front end and the
// distributed writers can drive it). Not thread-safe: one caller feeds it.
class ShardWriter {
 public:
  // `temp_tag` distinguishes the temporary names of writers sharing a directory (a rank).
  ShardWriter(std::filesystem::path dest_dir, MapperPtr mapper, WriteOptions options,
              std::string temp_tag = "0");
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  ~ShardWriter();  // removes every temporary file unless finish() succeeded

  // Lays out every shard from the specs the source will yield, in order (Note [streamed
  // shards]); call before the first add(). Throws for a tensor larger than a shard, more shards
  // than shard names (io::kMaxShardCount), a shard header the format cannot hold, unsatisfied
  // groups, or specs a group cannot take.
  void plan(std::span<const std::pair<std::string, TensorSpec>> source);
  // One tensor from the source. Applies its group when it was the last input missing.
  void add(const std::string& name, const Tensor& tensor);
  // Closes the last shard and checks that every group was satisfied (warning on standard error
  // about source tensors no group consumed). The shards stay under their temporary names.
  LocalShards finish();

  int64_t planned_output_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A destination that already holds a checkpoint (its index or a *.safetensors, `file`) while
// WriteOptions::overwrite is off; thrown before anything is written there.
class CheckpointExistsError : public io::IoError {
 public:
  CheckpointExistsError(std::filesystem::path dir, std::string file);
  const std::filesystem::path& dir() const { return dir_; }
  const std::string& file() const { return file_; }

 private:
  std::filesystem::path dir_;
  std::string file_;
};

// Throws CheckpointExistsError when `dir` holds a checkpoint (an index or a *.safetensors file
// whose name does not start with a dot): what a Destination refuses without
// WriteOptions::overwrite. Nothing when `dir` does not exist.
void refuse_existing_checkpoint(const std::filesystem::path& dir);

// The reference's shard rule: given outputs in write order, the (0-based) shard of each; a shard
// closes when the next tensor would take it past shard_size bytes. (A tensor larger than a shard
// gets a shard of its own here; the writer rejects it unless oversized_tensor_alone.)
std::vector<size_t> assign_shards(std::span<const std::pair<std::string, TensorSpec>> outputs,
                                  int64_t shard_size);

// The file name of shard `index` (0-based) of `count`: model-0000i-of-0000N.safetensors, or
// model.safetensors for the one shard of a checkpoint written with single_file_if_one_shard.
std::string shard_name(size_t index, size_t count, bool single_file_if_one_shard);

// The limits a layout must keep, checked before the first byte is written (ValueError): at most
// io::kMaxShardCount shards; each shard's header as plan_safetensors accepts it (its size, names).
void check_shard_count(size_t count, int64_t shard_size);
// A tensor of `bytes` fits the shards options.shard_size makes (or oversized_tensor_alone).
void check_fits_shard(const std::string& name, int64_t bytes, const WriteOptions& options);
void check_shard_header(size_t index, size_t count, std::span<const io::TensorDecl> decls,
                        const WriteOptions& options);

// A destination directory, locked for one writer from construction to destruction (Note
// [checkpoint commit]). Move-only.
class Destination {
 public:
  // Creates `dir` if needed and locks it (IoError "<dir> is being written by another d9d process
  // (pid N)" when another holds it); finishes or undoes a commit that a killed writer left; removes
  // the temporary files of dead processes; refuses a checkpoint already there unless
  // options.overwrite.
  Destination(std::filesystem::path dir, const WriteOptions& options);
  Destination(Destination&&) noexcept;
  Destination& operator=(Destination&&) noexcept;
  ~Destination();  // unlocks

  const std::filesystem::path& dir() const;
  // Publishes the shards of every process (renamed to model-0000i-of-0000N.safetensors in the
  // order given, or one to model.safetensors: WriteOptions::single_file_if_one_shard), the index
  // and options.companion_files as the checkpoint, replacing the old one.
  // Takes the shards' temporary files: if it throws, they are gone and the old checkpoint is as it
  // was. At most once.
  void commit(std::span<const LocalShards> parts);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

namespace detail {

// The temporary name of a writer's shard `index` (0-based) in the destination:
// .d9d-shard-<pid>-<tag>-<index + 1>.safetensors; a Destination removes those of dead processes.
std::string temp_shard_name(const std::string& tag, size_t index);

// `mapper` preceded by gather_full_tensor of every input that is a DTensor in `state` (the
// reference's extraction mapper); `mapper` itself when none is.
MapperPtr gather_dtensor_inputs(const StateDict& state, MapperPtr mapper);

template <class R>
concept PlannedSource = requires(const R& r) {
  {
    r.planned_specs()
    } -> std::convertible_to<std::optional<std::vector<std::pair<std::string, TensorSpec>>>>;
};

template <class R>
std::vector<std::pair<std::string, TensorSpec>> specs_in_order(R& source) {
  std::vector<std::pair<std::string, TensorSpec>> specs;
  for (auto&& [name, tensor] : source) specs.emplace_back(name, TensorSpec::of(tensor));
  return specs;
}

}  // namespace detail

// Writes the mapper's outputs for the tensors of `source` (any range of (name, Tensor) pairs) as
// a checkpoint in `dest_dir`. See Note [streamed shards] and Note [checkpoint commit].
template <class Source>
void write_model_state_local(const std::filesystem::path& dest_dir, MapperPtr mapper,
                             Source&& source, const WriteOptions& options = {}) {
  Destination destination(dest_dir, options);
  ShardWriter writer(dest_dir, std::move(mapper), options);
  if constexpr (detail::PlannedSource<std::remove_cvref_t<Source>>) {
    const std::optional<std::vector<std::pair<std::string, TensorSpec>>> specs =
        source.planned_specs();
    if (specs) writer.plan(*specs);
  } else if constexpr (std::ranges::forward_range<Source>) {
    const auto specs = detail::specs_in_order(source);
    writer.plan(specs);
  }
  for (auto&& [name, tensor] : source) writer.add(name, tensor);
  const LocalShards shards = writer.finish();
  destination.commit({&shards, 1});
}

// Writes the mapper's outputs for an in-memory state (a module's state_dict()). DTensor states
// are gathered into whole tensors first, as in the reference (collective: in a distributed job
// every rank of their meshes calls it).
void save_model_state(const std::filesystem::path& dest_dir, MapperPtr mapper,
                      const StateDict& state, const WriteOptions& options = {});

}  // namespace d9d::model_state
