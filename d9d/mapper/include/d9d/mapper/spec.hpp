// Spec files: a mapper described in JSON and expanded against a checkpoint's actual keys.
//
// The format (strict JSON as parse_json in <d9d/mapper/json.hpp> reads it: no key twice in an
// object, at most 64 levels of nesting; every object rejects fields it does not know; every error
// names its JSON path):
//
//   {
//     "d9d_mapper_spec": 1,          required, the format version
//     "description": "...",          optional free text
//     "applies_to": {                optional: the checkpoints it is meant for, by config.json's
//       "model_type": ["llama"],     "model_type" and "architectures" (each an optional list of
//       "architectures": [...]},     names); `--spec auto` picks by them (<d9d/mapper/builtin_specs.hpp>)
//     "unmatched": "keep",           checkpoint keys that no rule consumes: "keep" (default:
//                                    passed through unchanged), "drop" (left out, listed in the
//                                    report) or "error"
//     "quantization": {...},         optional: the checkpoint's quantized weights (below)
//     "params": {PARAM, ...},        optional: named integers for the rules (below)
//     "stages": [                    run in sequence; stage k's rules match the keys that stage
//       {"rules": [RULE, ...]},      k-1 left (its outputs and the keys it passed through).
//       ...                          A spec with one stage may say "rules": [...] instead.
//     ]
//   }
//
// Patterns are dotted keys. A segment may hold one capture, `{name}`, which matches one or more
// characters of that segment (with literal text around it: "experts_{E}"); a whole segment
// `{name...}` matches one or more segments (at most one per pattern). A name used twice in a
// pattern must match the same text. Captures are strings; target patterns may use only the
// captures of their rule's sources. Example:
//   {"op": "rename_tensor", "source": "model.layers.{L}.self_attn.o_proj.weight",
//    "target": "layers.{L}.attn.out.weight"}
//
// Params: "params" maps a name (letters, digits, _) to where its value comes from:
//   "tp": 1                                   a default (an integer; true / false are 1 / 0)
//   "n_heads": "config.num_attention_heads"   the checkpoint's config.json at a dotted path
//   "tied": {"from": "config.tie_word_embeddings", "default": true}   config.json, else a default
// The caller's value (SpecParams::values; `--set name=value` on the command line) wins over
// config.json, which wins over the default. A config.json path missing at the top level (or null
// there) is looked up under "text_config" (the language model of a multimodal config), so one
// spec reads both; booleans are 1 / 0, any other non-integer is an error. A param with no value,
// and a caller's value for a name the spec does not declare, are errors naming the JSON path.
// Any integer field of a rule (dim, dims, shape, sizes, count, n_heads, ...) may be a string
// "{expression}" over the params: integers, names, + - * / % (integer division and remainder,
// truncating as C does), unary minus, parentheses, min(a, b), max(a, b) ("{n_heads / n_kv_heads}",
// "{-1}", "{tp_rank * min(tp, n_kv_heads) / tp}"); division
// by zero, overflow past 64 bits and an unknown name are errors naming the field's path.
//
// RULE = {"op": OP, ...} (OP is the name of the factory in leaf.hpp, or quantized.hpp's
// dequantize); "target" is optional where shown with "?" (default: the source name);
// "dim" defaults to 0 where shown as "dim?".
//   identity              source
//   rename_tensor         source, target
//   select_child_modules  parent (a pattern), base_names? (default: every key under parent)
//   transpose             source, target?, dims: [d0, d1]
//   permute               source, target?, dims: [...]
//   squeeze               source, target?, dim?  (without dim: every size-1 dim)
//   unsqueeze             source, target?, dim
//   reshape               source, target?, shape: [...]  (one entry may be -1)
//   cast                  source, target?, dtype: "BF16" (a safetensors dtype name), from?:
//                         ["F32", ...] (only these are cast; other dtypes pass through), lossy?:
//                         true. A source with captures refuses to cast integers to floats
//                         unless "from" names them or "lossy" is true (Note [casts a rule did
//                         not ask for] in spec_ops.cpp)
//   stack_tensors,        sources: [pattern, ...], target, dim?
//   concatenate_tensors   or source + over: "E" (one tensor per value of capture E, in order:
//                         numeric when every value is a number, and then they must be 0..n-1)
//   unstack_tensors,      source, targets: [pattern, ...], dim?
//   chunk_tensors         or target + over: "E" + count: n (targets for E = 0..n-1)
//   split_tensors         source, targets: [pattern, ...], sizes: [...], dim?
//   dequantize            format: "fp8_block" | "fp8_channel" | "mxfp4" | "nvfp4", source, scale
//                         (a pattern with the source's captures), global_scale? (nvfp4; then
//                         global_scale_mode: "multiply" (ModelOpt) | "divide" (compressed-
//                         tensors), required), block?: [br, bc] (fp8_block, default [128, 128]),
//                         dtype: "BF16" | "F16" | "F32", target?. One instance per key the source
//                         matches whose scale exists (rules: <d9d/quantization.hpp>)
// Tensor-parallel layouts (tp_ops.cpp; a rank reads only what it keeps: Note [slice pushdown]):
//   shard_tensor          source, target?, dim, parts, index: the index-th of parts pieces along
//                         dim by torch.chunk's rule (uneven last piece; an index past its last
//                         piece is empty), e.g. "parts": "{tp}", "index": "{tp_rank}"
//   pad                   source, target?, dim, multiple: zeros appended along dim up to a
//                         multiple (a vocabulary padded for tp ranks); the inverse drops them
// Model layouts (leaf.hpp's last section; Note [model layouts] in layout_ops.cpp):
//   permute_for_rope      source, target?, n_heads, direction: "to_hf" | "from_hf", head_dim?
//                         (a k projection takes n_heads = the KV head count)
//   interleave_qkv        sources: [q, k, v], target, n_heads, n_kv_heads
//   deinterleave_qkv      source, targets: [q, k, v], n_heads, n_kv_heads
//   interleave            as stack_tensors (sources, or source + over), target, dim?
//   deinterleave          as unstack_tensors (targets, or target + over + count), dim?
//   stack_experts         source or sources: [pattern, ...] (an expert's parts, gate before up),
//                         over: "E", count?: n, target, dim?, part_dim?. The experts are the
//                         values of E in numeric order; with count they must be exactly 0..n-1,
//                         and every part of every expert must exist (an error names the missing
//                         keys)
//   unstack_experts       source, target or targets: [pattern, ...], over: "E", count: n, dim?,
//                         part_dim? (targets listed expert by expert)
//   untie_embeddings      embedding, lm_head (patterns), tied? (default true): where tied and the
//   tie_embeddings        lm_head key is missing, it is made from the embedding (untie) / where
//                         tied and it is present, it is dropped (tie). An lm_head present though
//                         tied is kept, with a note (SpecMapping::notes); one missing though not
//                         tied is an error.
// Any rule may say "optional": true: it may match no key. A rule whose source matches no key of
// its stage and that does not say so is an error (the spec most likely does not fit the
// checkpoint; the message names a prefix that explains it, e.g. a "bert." the keys lack). Rules
// that made nothing are listed in SpecMapping::unused_rules.
// A multi-source rule applies where every source exists; where some exist and others do not, the
// missing keys are an error. Two rules of one stage that consume or produce the same key are an
// error, as is a rule output that would replace a key passing through the stage.
//
// "quantization" declares how the checkpoint's quantized weights are named, so that their scales
// follow them (Note [scales follow their weights] in <d9d/mapper/quantized.hpp>):
//   {"format": "fp8_block", "block"?: [128, 128], "weight_suffix": ".weight",
//    "scale_suffix": ".weight_scale_inv", "global_scale_suffix"?: ".weight_scale_2" (nvfp4)}
// A key ending in weight_suffix whose scale (the key with scale_suffix instead) the stage has is a
// quantized weight. Every instance of a rule that reads one moves its scales the same way, in the
// same group: its other sources must be quantized weights too, its targets must end in
// weight_suffix, and fusions must not split a block (a misaligned concatenation is an error when
// the specs are inferred, naming the tensors). A rule that reads a scale is an error unless it
// also moves the scale's weight (a rule over every key meets both: the scale follows its weight).
// dequantize rules read the scales themselves.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/dist/device_mesh.hpp>
#include <d9d/error.hpp>
#include <d9d/mapper/mapper.hpp>

namespace d9d::mapper {

// A malformed spec, or one that does not fit the checkpoint's keys; path() is the JSON path of
// the offending value ("$.stages[0].rules[2].dim").
class SpecError : public ValueError {
 public:
  SpecError(std::string path, const std::string& message);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

enum class UnmatchedPolicy : uint8_t { kKeep, kDrop, kError };

// A param's value and where it came from ("the caller", "config.json: text_config.num_heads",
// "the spec's default"), for reports.
struct ParamValue {
  int64_t value = 0;
  std::string origin;
};

// What a spec's params may take their values from. The mapper layer reads no file: the caller
// hands over config.json's text.
struct SpecParams {
  // The caller's values (`--set name=value`), which win over config.json and the defaults.
  std::map<std::string, int64_t> values;
  // The text of the checkpoint's config.json; nullopt when there is none. Parsed (strictly, as
  // parse_json in <d9d/mapper/json.hpp>) only if a param needs it.
  std::optional<std::string> config_json;
  std::string config_origin = "config.json";  // names it in messages
  // Casts that lose values still have an inverse, which casts back to the input dtype
  // (CastSelection::inverse_even_if_lossy): undoing such a conversion gives the original dtypes
  // holding the rounded values (d9d convert --reverse --allow-lossy).
  bool lossy_inverse = false;
};

struct SpecMapping {
  MapperPtr mapper;
  // Rules that made nothing, as "$.stages[0].rules[3] (rename_tensor model.{x}.bias)", with
  // " (optional)" after those that say they may.
  std::vector<std::string> unused_rules;
  // Checkpoint keys that no rule consumed, sorted; kept or dropped as `unmatched` says.
  std::vector<std::string> unmatched_keys;
  UnmatchedPolicy unmatched = UnmatchedPolicy::kKeep;
  std::string description;
  // The spec's params, resolved (empty when it declares none).
  std::map<std::string, ParamValue> params;
  // What the expansion noticed and let pass, one line each ("$.rules[4]: lm_head.weight is
  // present although the embeddings are tied: kept as it is").
  std::vector<std::string> notes;
};

// What a spec says of itself, read without expanding it (its rules are not checked): the
// description and "applies_to". Throws SpecError for malformed JSON or a malformed "applies_to".
struct SpecSummary {
  std::string description;
  std::vector<std::string> model_types;
  std::vector<std::string> architectures;
  std::vector<std::string> params;  // the names "params" declares, sorted
};
SpecSummary summarize_spec(std::string_view json);

// Parses and checks the spec `json`, expands its rules against `checkpoint_keys` and builds the
// mapper. Throws SpecError for a malformed spec (naming the JSON path) and for rules that do not
// fit the keys, and ValueError for unmatched keys under "unmatched": "error".
SpecMapping from_spec(std::string_view json, const std::vector<std::string>& checkpoint_keys);
// The same, with values for the spec's params (the overload above gives none: a spec whose params
// all have defaults still expands).
SpecMapping from_spec(std::string_view json, const std::vector<std::string>& checkpoint_keys,
                      const SpecParams& params);

// This rank's tensor- and expert-parallel params from a DeviceMesh whose dims are named "tp" and
// "ep" (either may be missing): {"tp": its size, "tp_rank": this rank's coordinate along it, "ep",
// "ep_rank"}, for SpecParams::values of the *_tp specs, so that each rank's load_model_state reads
// only its share (Note [slice pushdown] in region.cpp).
std::map<std::string, int64_t> parallel_params(const dist::DeviceMesh& mesh);

}  // namespace d9d::mapper
