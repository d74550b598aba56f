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
// ignore it. It is a companion file of the checkpoint (WriteOptions::companion_files), published
// by the same commit (Note [checkpoint commit] in <d9d/model_state/writer.hpp>): an interrupted
// conversion leaves none, and an old one goes with the checkpoint it described.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/io/checkpoint.hpp>
#include <d9d/mapper/builtin_specs.hpp>
#include <d9d/mapper/quantized.hpp>
#include <d9d/mapper/spec.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

namespace d9d::model_state {

inline constexpr std::string_view kSidecarFileName = "d9d-conversion.json";

struct Sidecar {
  std::string spec;
  std::string spec_origin;
  SpecDict source;
  std::vector<std::string> dropped;
  std::map<std::string, int64_t> params;
};

std::string sidecar_json(const Sidecar& sidecar);
// Parses and checks a sidecar; `name` is used in error messages (ValueError). Strict and bounded
// as a spec is (mapper::parse_json: no key twice, at most 64 levels deep), every value from it
// shown cut short (json_excerpt): the record travels with a checkpoint, so it is input like any
// other.
Sidecar parse_sidecar(std::string_view json, std::string_view name);

// The directory of a checkpoint path (a directory, an index file or a .safetensors file).
std::filesystem::path checkpoint_dir(const std::filesystem::path& path);

// Note [unlisted tensors]: tensors a checkpoint's shards hold that its index does not list are not
// part of the checkpoint (io::Checkpoint::unlisted_tensors; transformers leaves them out too).
// The d9d CLI says so on standard error, naming them, in every command that reads a checkpoint;
// a forward conversion whose spec says "unmatched": "error" refuses them.
//
// "N tensors in the shards of DIR are not in its index and left out: a (in FILE), ..." (the first
// 10); "" when there are none.
std::string unlisted_note(const io::Checkpoint& checkpoint);

// Note [config.json]: a checkpoint directory may hold config.json (transformers' model config).
// A spec's params may take their values from it (<d9d/mapper/spec.hpp>), and d9d reads its
// "quantization_config" to recognize quantized weights (inspect, plan, convert), and
// a conversion writes it into the output directory, a companion file of the new checkpoint (Note
// [checkpoint commit]), with that entry brought up to date: removed when no quantized weight is
// left, the dequantized modules added to the method's list of unquantized modules when some are
// ("modules_to_not_convert": transformers' fp8 and mxfp4; "ignore": compressed-tensors;
// "exclude_modules": ModelOpt). Byte for byte when nothing changes. A source without config.json
// leaves the destination's alone. Other files beside the shards (tokenizer, generation config)
// are not copied.
inline constexpr std::string_view kConfigFileName = "config.json";

// The text of dir/config.json; nullopt when there is none (a FIFO or a directory is an IoError).
std::optional<std::string> read_config_json(const std::filesystem::path& dir);
// The quantization_config of dir/config.json; nullopt when there is no such file or entry.
std::optional<mapper::QuantizationConfig> quantization_config(const std::filesystem::path& dir);
// The built-in spec (<d9d/mapper/builtin_specs.hpp>) that the config.json of the checkpoint
// `path` (a directory, a shard or an index) names (the CLI's --spec auto). Throws ValueError when there is
// no config.json or it names no built-in spec, listing the library.
const mapper::BuiltinSpec& builtin_spec_for(const std::filesystem::path& path);
// The dtype and shape of every tensor of `checkpoint`.
SpecDict checkpoint_specs(const io::Checkpoint& checkpoint);

// A mapper for a checkpoint, with what the spec expansion reported.
struct Conversion {
  MapperPtr mapper;
  mapper::SpecMapping mapping;  // of the forward spec (for a reverse: of the original keys)
  Sidecar sidecar;              // what a conversion records (forward) or what it read (reverse)
  bool reverse = false;
  std::string unlisted;  // forward: unlisted_note() of the source, for the caller to report
  // The source's config.json quantization_config and quantized weights (Note [scales follow
  // their weights] in <d9d/mapper/quantized.hpp>): checked against the mapper before any byte is
  // read.
  std::optional<mapper::QuantizationConfig> quantization;
  std::vector<mapper::QuantizedPair> quantized;
  // The destination's config.json (Note [config.json]); nullopt when the source has none. With
  // what was done to it, for the caller to report ("config.json copied with ...").
  std::optional<std::string> config;
  std::string config_note;
  // A reverse whose lossy casts were undone too (mapper::SpecParams::lossy_inverse): which tensors
  // come back holding rounded values, for the caller to report.
  std::string lossy_note;
};

// The forward conversion of the checkpoint `src` through the spec `spec_text`; `spec_origin`
// names the spec in errors and in the sidecar. The spec's params take `params` (the caller's
// values: --set), then the checkpoint directory's config.json, then the spec's defaults. Throws
// ValueError for a malformed spec (the SpecError's message after the origin), for a spec that
// does not fit the checkpoint's keys, for unlisted tensors under "unmatched": "error" (Note
// [unlisted tensors]), and for a spec that would separate a quantized weight from its scales
// (mapper::check_quantized_pairs).
Conversion forward_conversion(const io::Checkpoint& src, std::string spec_text,
                              std::string spec_origin,
                              const std::map<std::string, int64_t>& params = {});

// Sets c.config and c.config_note from `source_dir`'s config.json, for the outputs of c.mapper on
// `source_specs` (Note [config.json]). forward_conversion calls it; a reverse conversion built by
// its caller calls it too.
void add_config(Conversion& c, const std::filesystem::path& source_dir,
                const SpecDict& source_specs);

// Throws ValueError when `dest_dir` exists and is the directory of the checkpoint `src`: writing
// there would replace the checkpoint being read.
void check_destination_is_not_source(const std::filesystem::path& src,
                                     const std::filesystem::path& dest_dir);

// `options` with the conversion's sidecar and config.json as companion files of the checkpoint (a
// reverse conversion records no sidecar, and an earlier record in the destination goes with the
// checkpoint it described).
WriteOptions conversion_write_options(const Conversion& c, WriteOptions options);

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
// written by write_model_state_local with conversion_write_options (the sidecar published with
// the checkpoint); a `dest_dir` this call created is removed again if the conversion fails. Returns the plan of the whole conversion. (`mpirun` conversions:
// convert_model_state_distributed in <d9d/model_state/distributed.hpp>.)
ReadPlan convert_model_state_local(const std::filesystem::path& src,
                                   const std::filesystem::path& dest_dir, const Conversion& c,
                                   const ReadOptions& read_options = {},
                                   const WriteOptions& write_options = {});

}  // namespace d9d::model_state
