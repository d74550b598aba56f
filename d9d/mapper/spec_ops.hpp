// The ops of spec files: one table entry per op carries its name, its fields, its family and the
// builder of its leaf mapper; parse_rule and the expansion in spec.cpp consult the table and
// switch only on the family. Adding an op is one entry in spec_ops.cpp (and a line in spec.hpp's
// format). Private to the mapper layer.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/mapper/mapper.hpp>

#include "key_pattern.hpp"
#include "spec_json.hpp"

namespace d9d::mapper::detail {

// How a rule's patterns become instances, which decides the fields it reads and how it expands.
enum class Family : uint8_t {
  // "source" (and "target", default: the source): one instance per matching key.
  kSingle,
  // "sources": [...], or "source" + "over"; then "target": one instance per binding, the
  // sources in the order listed (or of the over capture's values).
  kManyToOne,
  // "source", then "targets": [...], or "target" + "over" + "count": one instance per matching
  // key.
  kOneToMany,
  // "parent" (a pattern) and "base_names": one instance per parent key found.
  kSelect,
  // "source", its companions "scale" and "global_scale" (patterns with the source's captures),
  // and "target" (default: the source): one instance per key the source matches whose scale
  // exists. sources holds the source, the scale and the global scale. Such an op reads a
  // quantized weight's scales itself, so a spec's "quantization" does not wrap it.
  kPaired,
  // "embedding" and "lm_head" (patterns) and "tied": one instance per embedding key where
  // "tied" is true and the lm_head key is missing (kUntie: it is made) or present (kTie: it is
  // dropped). Instance: sources {embedding}, targets {lm_head}.
  kUntie,
  kTie,
};

// The keys of one instance of a rule. kSelect: sources holds the parent key and targets the
// base names found under it.
struct Instance {
  std::vector<std::string> sources;
  std::vector<std::string> targets;
};

// Builds the leaf mapper of one instance, with the op's own arguments (dims, dtype, sizes, ...)
// already read from the rule.
using Builder = std::function<MapperPtr(Instance)>;

struct OpDef;

// One rule of a spec, checked.
struct Rule {
  std::string path;  // "$.stages[0].rules[2]"
  const OpDef* op = nullptr;
  std::vector<Pattern> sources;  // one, except kManyToOne with "sources"
  std::vector<Pattern> targets;  // one, except kOneToMany with "targets"; none for kSelect
  std::string over;              // kManyToOne / kOneToMany over a capture
  // kOneToMany "over": how many targets; kManyToOne "over" (when given, else 0): the values the
  // capture must take, 0..count-1.
  int64_t count = 0;
  bool tied = true;              // kUntie / kTie
  // "optional": true: the rule may match no key (Note [rules that match nothing] in spec.cpp).
  bool optional = false;
  bool lossy_inverse = false;  // SpecParams::lossy_inverse (cast rules read it)
  std::optional<std::set<std::string>> base_names;  // kSelect
  Builder build;
  // "$.rules[3] (rename_tensor model.{x}.bias)", for reports and messages.
  std::string summary() const;
};

struct OpDef {
  std::string_view name;  // as in a spec's "op", and the factory's name in leaf.hpp
  Family family;
  // The fields a rule of this op may hold besides "op" and "comment", in the order an error
  // lists them.
  std::vector<std::string_view> fields;
  // Reads the op's own arguments from `node` (its family's fields are in `rule` already) and
  // returns the builder of its instances.
  Builder (*parse)(const Node& node, const Rule& rule);
  // "sources" (kManyToOne) / "targets" (kOneToMany) may go with "over": several tensors per
  // value of the capture, listed value by value (an expert's parts: stack_experts).
  bool parts_over = false;
};

// Parses and checks one rule object (its integer fields may use the params `node` carries).
// `lossy_inverse`: SpecParams::lossy_inverse, for the casts it builds.
Rule parse_rule(const Node& node, bool lossy_inverse = false);

}  // namespace d9d::mapper::detail
