// Conversions: a checkpoint through a spec into a new checkpoint, with the record that lets the
// conversion be undone. What `d9d convert` and the C ABI's d9d_convert share.
//
//   const Conversion c = forward_conversion(io::Checkpoint::open("ckpt/"), spec_text, "spec.json");
//   convert_model_state_local("ckpt/", "out/", c, ro, wo);   // out/: shards, index, sidecar
//
// Note [conversion sidecar]: a conversion leaves d9d-conversion.json next to the checkpoint it
// writes. Undoing a conversion needs more than the spec: the inverse of a concatenation must know
// the sizes of the parts (the q / k / v rows of a GQA model), a squeeze the shape it came from. So
// the sidecar records the spec's text and the name, dtype and shape of every tensor of the source
// checkpoint:
//
//   {"d9d_conversion": 1,
//    "spec": "<the spec file's text, verbatim>",
//    "spec_origin": "examples/specs/llama_hf_to_fused.json",
//    "source": {"model.embed_tokens.weight": ["BF16", [32000, 1024]], ...},
//    "dropped": ["..."],                   (source keys the spec dropped, which cannot come back)
//    "params": {"n_heads": 32, ...}}       (the spec's params as resolved; only when it has any)
//
// `d9d convert OUT BACK --reverse` rebuilds the forward mapper with from_spec(spec, source keys,
// the recorded params) and writes mapper->inverse(source specs). The sidecar is not a .safetensors
// file and not in the index, so checkpoint readers (io::Checkpoint, transformers, the reference)
// ignore it. It is written last, atomically, after the index: an interrupted conversion leaves
// none.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/io/checkpoint.hpp>
#include <d9d/mapper/spec.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

namespace d9d::model_state {

inline constexpr std::string_view kSidecarFileName = "d9d-conversion.json";
// The model's configuration, as transformers saves it beside the weights; a spec's params may
// take their values from it (<d9d/mapper/spec.hpp>).
inline constexpr std::string_view kConfigFileName = "config.json";

struct Sidecar {
  std::string spec;
  std::string spec_origin;
  SpecDict source;
  std::vector<std::string> dropped;
  std::map<std::string, int64_t> params;
};

std::string sidecar_json(const Sidecar& sidecar);
// Parses and checks a sidecar; `name` is used in error messages (ValueError).
Sidecar parse_sidecar(std::string_view json, std::string_view name);
// Writes dir/d9d-conversion.json through a temporary file and a rename.
void write_sidecar(const std::filesystem::path& dir, const Sidecar& sidecar, bool fsync);

// The directory of a checkpoint path (a directory, an index file or a .safetensors file).
std::filesystem::path checkpoint_dir(const std::filesystem::path& path);

// A mapper for a checkpoint, with what the spec expansion reported.
struct Conversion {
  MapperPtr mapper;
  mapper::SpecMapping mapping;  // of the forward spec (for a reverse: of the original keys)
  Sidecar sidecar;              // what a conversion records (forward) or what it read (reverse)
  bool reverse = false;
};

// The text of `dir`/config.json, or nullopt when there is none. Throws io::IoError when it
// exists but cannot be read.
std::optional<std::string> read_config_json(const std::filesystem::path& dir);

// The forward conversion of the checkpoint `src` through the spec `spec_text`; `spec_origin`
// names the spec in errors and in the sidecar. The spec's params take `params` (the caller's
// values: --set), then the checkpoint directory's config.json, then the spec's defaults. Throws
// ValueError for a malformed spec (the SpecError's message after the origin) and for a spec that
// does not fit the checkpoint's keys.
Conversion forward_conversion(const io::Checkpoint& src, std::string spec_text,
                              std::string spec_origin,
                              const std::map<std::string, int64_t>& params = {});

// Throws ValueError when `dest_dir` exists and is the directory of the checkpoint `src`: writing
// there would replace the checkpoint being read.
void check_destination_is_not_source(const std::filesystem::path& src,
                                     const std::filesystem::path& dest_dir);

// Removes `dir` on failure if this run created it and left it empty (nothing partial).
class CreatedDirGuard {
 public:
  explicit CreatedDirGuard(std::filesystem::path dir);
  CreatedDirGuard(const CreatedDirGuard&) = delete;
  CreatedDirGuard& operator=(const CreatedDirGuard&) = delete;
  ~CreatedDirGuard();
  void done() { done_ = true; }

 private:
  std::filesystem::path dir_;
  bool created_ = false;
  bool done_ = false;
};

// One process converts `src` into `dest_dir`: read_model_state through `c.mapper`, every output
// written as write_model_state_local writes it, then (forward conversions only) the sidecar. The
// record of an earlier conversion in `dest_dir` is removed just before the new checkpoint replaces
// the old one (Note [conversion sidecar]); a `dest_dir` this call created is removed again if the
// conversion fails. Returns the plan of the whole conversion. (`mpirun` conversions:
// convert_model_state_distributed in <d9d/model_state/distributed.hpp>.)
ReadPlan convert_model_state_local(const std::filesystem::path& src,
                                   const std::filesystem::path& dest_dir, const Conversion& c,
                                   const ReadOptions& read_options = {},
                                   const WriteOptions& write_options = {});

}  // namespace d9d::model_state
