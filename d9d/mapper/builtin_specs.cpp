// The built-in spec library (<d9d/mapper/builtin_specs.hpp>).
#include <d9d/mapper/builtin_specs.hpp>

#include <algorithm>

#include <d9d/error.hpp>
#include <d9d/mapper/json.hpp>
#include <d9d/mapper/spec.hpp>

#include "builtin_spec_texts.hpp"  // detail::kBuiltinSpecTexts, generated from specs/*.json

namespace d9d::mapper {

// Note [built-in specs]
// ~~~~~~~~~~~~~~~~~~~~~
// Each spec says what it is for in "applies_to": config.json's "model_type" values and
// "architectures" class names. A checkpoint's spec is picked by its model_type first (the field
// transformers itself dispatches on, and the one a fine-tune keeps), then by its architectures
// (older configs without a model_type); no name may be claimed by two specs, which the test of
// the library checks, so the pick never depends on order. A config.json naming neither, or names
// no spec claims, is an error that lists the library: guessing from tensor names would pick a
// spec whose rules half-match, which is the silent failure the strict specs exist to prevent.
// Multimodal configs keep their language model's type in text_config.model_type; that is looked
// at when the top level's names fit nothing, so a text-only spec serves the language model.

const std::vector<BuiltinSpec>& builtin_specs() {
  static const std::vector<BuiltinSpec> specs = [] {
    std::vector<BuiltinSpec> out;
    for (const auto& [name, text] : detail::kBuiltinSpecTexts) {
      SpecSummary summary;
      try {
        summary = summarize_spec(text);
      } catch (const SpecError& e) {
        // The build embeds specs the tests expand; a malformed one is a d9d bug.
        d9d::detail::throw_error<ValueError>("built-in spec ", name, ": ", e.what());
      }
      out.push_back(BuiltinSpec{std::string(name), text, std::move(summary.description),
                                std::move(summary.model_types), std::move(summary.architectures)});
    }
    return out;
  }();
  return specs;
}

const BuiltinSpec* find_builtin_spec(std::string_view name) {
  for (const BuiltinSpec& s : builtin_specs()) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

std::string builtin_specs_list() {
  std::string out;
  for (const BuiltinSpec& s : builtin_specs()) {
    if (!out.empty()) out += ", ";
    out += s.name + " (";
    std::vector<std::string> names = s.model_types;
    names.insert(names.end(), s.architectures.begin(), s.architectures.end());
    for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
    if (names.empty()) out += "by name only";  // a variant --spec auto does not pick (*_tp)
    out += ")";
  }
  return out;
}

namespace {

const BuiltinSpec* by_model_type(const std::string& type) {
  for (const BuiltinSpec& s : builtin_specs()) {
    if (std::count(s.model_types.begin(), s.model_types.end(), type)) return &s;
  }
  return nullptr;
}

const BuiltinSpec* by_architecture(const std::string& arch) {
  for (const BuiltinSpec& s : builtin_specs()) {
    if (std::count(s.architectures.begin(), s.architectures.end(), arch)) return &s;
  }
  return nullptr;
}

// What a config object names: its "model_type" (a string) and "architectures" (strings).
struct Names {
  std::string model_type;
  std::vector<std::string> architectures;
};

Names names_in(const nlohmann::json& config) {
  Names n;
  if (!config.is_object()) return n;
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) {
    n.model_type = it->get<std::string>();
  }
  if (auto it = config.find("architectures"); it != config.end() && it->is_array()) {
    for (const auto& a : *it) {
      if (a.is_string()) n.architectures.push_back(a.get<std::string>());
    }
  }
  return n;
}

const BuiltinSpec* pick(const Names& n) {
  if (!n.model_type.empty()) {
    if (const BuiltinSpec* s = by_model_type(n.model_type)) return s;
  }
  for (const std::string& a : n.architectures) {
    if (const BuiltinSpec* s = by_architecture(a)) return s;
  }
  return nullptr;
}

std::string describe(const Names& n) {
  std::string out = n.model_type.empty() ? "no \"model_type\""
                                         : "\"model_type\": \"" + n.model_type + "\"";
  out += n.architectures.empty() ? ", no \"architectures\"" : ", \"architectures\": [";
  for (size_t i = 0; i < n.architectures.size(); ++i) {
    out += (i ? ", \"" : "\"") + n.architectures[i] + "\"";
  }
  if (!n.architectures.empty()) out += "]";
  return out;
}

}  // namespace

const BuiltinSpec& detect_builtin_spec(std::string_view config_json,
                                       std::string_view config_origin) {
  nlohmann::json config;
  try {
    config = parse_json(config_json);
  } catch (const JsonError& e) {
    d9d::detail::throw_error<ValueError>(config_origin, " is not valid JSON (", e.what(), ")");
  }
  const Names top = names_in(config);
  if (const BuiltinSpec* s = pick(top)) return *s;
  Names text;
  if (config.is_object() && config.contains("text_config")) {
    text = names_in(config["text_config"]);
    if (const BuiltinSpec* s = pick(text)) return *s;
  }
  d9d::detail::throw_error<ValueError>(
      "no built-in spec for ", config_origin, " (", describe(top),
      text.model_type.empty() ? "" : ", text_config " + describe(text),
      "). The built-in specs: ", builtin_specs_list(),
      ". Another architecture needs a spec file (specs/ and examples/specs/ hold some to start "
      "from)");
}

}  // namespace d9d::mapper
