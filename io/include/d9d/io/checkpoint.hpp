// Checkpoint directories: model.safetensors, or model.safetensors.index.json plus its shards.
//
// THE INDEX (as transformers and huggingface_hub write it):
//
//   {"metadata": {"total_size": 28967421952, ...}, "weight_map": {"lm_head.weight":
//    "model-00002-of-00002.safetensors", ...}}
//
// RULES, checked by SafetensorsIndex::parse (a violation throws FormatError naming the file, the
// key and the rule, as for safetensors headers):
//   1. The file is valid UTF-8 and exactly one RFC 8259 JSON object; no object anywhere in it has
//      a key twice.
//   2. "weight_map" is present and is an object whose values are strings.
//   3. Every file name in it is a plain name in the checkpoint directory: not empty, not "." or
//      "..", no '/' or '\\' or NUL. File names are untrusted: this keeps an index from pointing
//      outside its directory.
//   4. "metadata", if present, is an object; its "total_size", if present, is a non-negative
//      integer. Other metadata keys (transformers writes "total_parameters") are kept verbatim.
// Other top-level keys are ignored, as transformers ignores them.
//
// Checkpoint::open then maps and validates every shard the index names (every rule of
// safetensors.hpp) and checks that each indexed tensor is in the shard the index names, and that
// no tensor is in two shards (which copy is meant cannot be told; FormatError naming both).
// Tensors a shard holds but the index does not list are not part of the checkpoint (transformers
// leaves them out too); unlisted_tensors() names them, for the caller to report (the d9d CLI
// warns, and refuses them under a spec's "unmatched": "error"). total_size is not compared with
// the shards: writers disagree on it (huggingface_hub counts a storage shared by several tensors
// once), so it is reported, not enforced.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/io/safetensors.hpp>

namespace d9d::io {

inline constexpr std::string_view kSingleFileName = "model.safetensors";
inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";

// The most shards a checkpoint of d9d's naming can have: five digits.
inline constexpr int kMaxShardCount = 99999;

// "model-00001-of-00003.safetensors" for index 0 of 3 (1-based in the name, five digits as
// transformers writes them); count is at most kMaxShardCount.
std::string shard_file_name(int index, int count);

// True when `name` is a plain file name (rule 3 above).
bool is_plain_file_name(std::string_view name);

struct SafetensorsIndex {
  std::optional<int64_t> total_size;                  // metadata.total_size
  std::map<std::string, std::string> extra_metadata;  // other metadata keys -> raw JSON values
  std::map<std::string, std::string> weight_map;      // tensor name -> shard file name

  // Adds every tensor of a shard to weight_map and its bytes to total_size (which becomes the sum
  // of tensor bytes, as transformers computes it). For writers: pass each shard's
  // SafetensorsWriter::layout().header. Throws ValueError if `file` is not a plain file name or a
  // tensor is already mapped to a shard (and then changes nothing).
  void add_shard(const std::string& file, const SafetensorsHeader& header);

  // Parses and checks index JSON; `name` is the file name used in error messages.
  static SafetensorsIndex parse(std::string_view json, std::string_view name);
  // Reads and parses the file at `path`. Throws IoError or FormatError.
  static SafetensorsIndex read(const std::filesystem::path& path);
  // The JSON text: keys sorted, two-space indent, trailing newline (as transformers writes it).
  std::string to_json() const;
  // Writes to_json() to `path` atomically (temporary file, fsync, rename, directory fsync).
  void write(const std::filesystem::path& path, bool fsync = true) const;
  // The distinct shard file names, sorted.
  std::vector<std::string> files() const;
};

// Where a checkpoint's tensor lives.
struct CheckpointEntry {
  const std::string* file = nullptr;  // shard file name (in Checkpoint::files())
  const TensorInfo* info = nullptr;   // its header entry in that shard
};

// Where the checkpoint at `path` (as Checkpoint::open takes it) is: its directory, its index when
// it has one, and its shard file names, from the index alone (no shard is opened). Throws IoError
// when a directory holds neither an index nor a model.safetensors, FormatError for a malformed
// index or a directory whose model.safetensors its index does not name (ambiguous).
struct CheckpointFiles {
  std::filesystem::path dir;
  std::filesystem::path index_path;  // empty without an index
  std::optional<SafetensorsIndex> index;
  std::vector<std::string> files;
};
CheckpointFiles locate_checkpoint(const std::filesystem::path& path);

// An open checkpoint: every file mapped and validated, every tensor located; no tensor byte read.
// Move-only; tensors taken from it keep their file's mapping alive on their own.
class Checkpoint {
 public:
  // `path` is a checkpoint directory (with model.safetensors.index.json, or model.safetensors), an
  // index file, or a single .safetensors file. A directory with both an index and a
  // model.safetensors the index does not name is ambiguous and an error.
  static Checkpoint open(const std::filesystem::path& path);

  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

  const std::filesystem::path& dir() const;
  // The index, if the checkpoint has one.
  const std::optional<SafetensorsIndex>& index() const;
  // Tensor names, sorted.
  const std::vector<std::string>& keys() const;
  bool contains(std::string_view name) const;
  // Throws ValueError naming the checkpoint if there is no such tensor.
  CheckpointEntry entry(std::string_view name) const;
  const TensorInfo& info(std::string_view name) const { return *entry(name).info; }
  // Shard file names, sorted.
  const std::vector<std::string>& files() const;
  const SafetensorsFile& file(std::string_view file_name) const;
  // Sum of every tensor's bytes.
  int64_t total_bytes() const;
  // Tensors the shards hold that the index does not list (so not in keys()), each with its
  // shard's file name; empty without an index.
  const std::map<std::string, std::string>& unlisted_tensors() const;

  Tensor tensor(std::string_view name) const;  // zero-copy view (SafetensorsFile::tensor)
  Tensor load(std::string_view name) const;    // owned copy (SafetensorsFile::load)
  void read_into(std::string_view name, const Tensor& dst) const;
  // Reads every tensor named in `targets` into its tensor there (writable, CPU, the file's dtype
  // and shape; any strides), with one parallel read plan across all files for the contiguous ones.
  // Fills buffers a caller already owns (an inference engine's weights) at the pread limit, with
  // no page faults for new memory.
  void read_into(const std::map<std::string, Tensor>& targets,
                 const ReadRangesOptions& options = {}) const;
  // The named tensors, owned, read with one parallel plan across all their files.
  std::map<std::string, Tensor> load(const std::vector<std::string>& names,
                                     const ReadRangesOptions& options = {}) const;
  std::map<std::string, Tensor> load_all() const { return load(keys()); }

 private:
  struct Impl;
  explicit Checkpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace d9d::io
