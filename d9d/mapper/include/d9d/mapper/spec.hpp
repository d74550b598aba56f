// Spec files: a mapper described in JSON and expanded against a checkpoint's actual keys.
//
// The format (strict JSON as parse_json in <d9d/mapper/json.hpp> reads it: no key twice in an
// object, at most 64 levels of nesting; every object rejects fields it does not know; every error
// names its JSON path):
//
//   {
//     "d9d_mapper_spec": 1,          required, the format version
//     "description": "...",          optional free text
//     "unmatched": "keep",           checkpoint keys that no rule consumes: "keep" (default:
//                                    passed through unchanged), "drop" (left out, listed in the
//                                    report) or "error"
//     "quantization": {...},         optional: the checkpoint's quantized weights (below)
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
//   cast                  source, target?, dtype: "BF16" (a safetensors dtype name)
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

#include <string>
#include <string_view>
#include <vector>

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

struct SpecMapping {
  MapperPtr mapper;
  // Rules that matched no key, as "$.stages[0].rules[3] (rename_tensor model.{x}.bias)".
  std::vector<std::string> unused_rules;
  // Checkpoint keys that no rule consumed, sorted; kept or dropped as `unmatched` says.
  std::vector<std::string> unmatched_keys;
  UnmatchedPolicy unmatched = UnmatchedPolicy::kKeep;
  std::string description;
};

// Parses and checks the spec `json`, expands its rules against `checkpoint_keys` and builds the
// mapper. Throws SpecError for a malformed spec (naming the JSON path) and for rules that do not
// fit the keys, and ValueError for unmatched keys under "unmatched": "error".
SpecMapping from_spec(std::string_view json, const std::vector<std::string>& checkpoint_keys);

}  // namespace d9d::mapper
