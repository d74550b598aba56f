// The built-in spec library: one spec per architecture (llama, qwen3_moe, deepseek_v3, gpt2, ...),
// each from the transformers (HF) layout to the one engine layout specs/README.md writes down, and
// back through its inverse. The spec files are specs/NAME.json in the source tree; libd9d carries
// them (no data directory needed) and `meson install` puts them in share/d9d/specs/ too.
//
//   const BuiltinSpec& s = detect_builtin_spec(config_json_text, "ckpt/config.json");
//   SpecMapping m = from_spec(s.text, keys, params);
//
// Note [built-in specs] in builtin_specs.cpp says how a checkpoint's spec is picked.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace d9d::mapper {

struct BuiltinSpec {
  std::string name;  // the file stem: "qwen3_moe"
  std::string_view text;
  std::string description;
  std::vector<std::string> model_types;    // config.json "model_type" values it is for
  std::vector<std::string> architectures;  // config.json "architectures" entries it is for
};

// Every built-in spec, sorted by name.
const std::vector<BuiltinSpec>& builtin_specs();
// The built-in spec called `name`, or nullptr.
const BuiltinSpec* find_builtin_spec(std::string_view name);
// The built-in spec for the checkpoint whose config.json reads `config_json` (`config_origin`
// names that file in messages): the one whose model_types hold its "model_type", else the one
// whose architectures hold one of its "architectures". Throws ValueError, naming config_origin,
// what it says and listing every built-in spec with what it applies to, when none fits or
// config.json names neither.
const BuiltinSpec& detect_builtin_spec(std::string_view config_json, std::string_view config_origin);
// "llama (llama; LlamaForCausalLM), mistral (...), ...": the list messages show.
std::string builtin_specs_list();

}  // namespace d9d::mapper
