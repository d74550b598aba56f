// Spec files (format in spec.hpp): parse the document, expand each stage's rules against the keys
// it sees, and build the mapper. The JSON accessors are in spec_json, the key patterns in
// key_pattern, the ops and the rule parser in spec_ops.
#include <d9d/mapper/spec.hpp>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <d9d/mapper/compose.hpp>
#include <d9d/mapper/leaf.hpp>
#include <d9d/mapper/quantized.hpp>

#include "internal.hpp"
#include "key_pattern.hpp"
#include "spec_json.hpp"
#include "spec_ops.hpp"
#include "spec_params.hpp"

namespace d9d::mapper {

using d9d::detail::str_cat;
using detail::Bindings;
using detail::Family;
using detail::Instance;
using detail::Node;
using detail::Pattern;
using detail::Rule;

SpecError::SpecError(std::string path, const std::string& message)
    : ValueError("spec " + path + ": " + message), path_(std::move(path)) {}

namespace {

// ---- the document -------------------------------------------------------------------------------

struct Spec {
  std::string description;
  UnmatchedPolicy unmatched = UnmatchedPolicy::kKeep;
  std::optional<QuantScheme> quantization;  // Note [scales follow their weights]
  std::map<std::string, ParamValue> params;
  std::vector<std::vector<Rule>> stages;
};

QuantScheme parse_quantization(const Node& node) {
  node.only({"format", "block", "weight_suffix", "scale_suffix", "global_scale_suffix", "comment"},
            "\"quantization\"");
  QuantScheme q;
  const Node format = node.at("format");
  const std::optional<QuantFormat> f = quant_format_from_name(format.str());
  if (!f) format.fail(str_cat("unknown format ", json_string_excerpt(format.str())));
  q.format = *f;
  if (auto block = node.find("block")) {
    const std::vector<int64_t> b = block->integers();
    if (q.format != QuantFormat::kFp8Block) block->fail("only fp8_block has a block");
    if (b.size() != 2 || b[0] < 1 || b[1] < 1)
      block->fail("expected two positive sizes [rows, cols]");
    q.block_rows = b[0];
    q.block_cols = b[1];
  }
  auto suffix = [](const Node& n) {
    std::string text = n.str();
    if (text.empty()) n.fail("expected a non-empty suffix");
    return text;
  };
  q.names.weight_suffix = suffix(node.at("weight_suffix"));
  q.names.scale_suffix = suffix(node.at("scale_suffix"));
  if (auto g = node.find("global_scale_suffix")) {
    if (q.format != QuantFormat::kNvfp4) g->fail("only nvfp4 has a global scale");
    q.names.global_scale_suffix = suffix(*g);
  }
  std::set<std::string> distinct{q.names.weight_suffix, q.names.scale_suffix};
  if (!q.names.global_scale_suffix.empty()) distinct.insert(q.names.global_scale_suffix);
  if (distinct.size() != (q.names.global_scale_suffix.empty() ? 2u : 3u)) {
    node.fail("the suffixes must differ");
  }
  return q;
}

// "applies_to": {"model_type": [...], "architectures": [...]}, each a list of distinct names.
void parse_applies_to(const Node& node, SpecSummary& summary) {
  node.only({"model_type", "architectures", "comment"}, "\"applies_to\"");
  auto names = [&node](const char* field, std::vector<std::string>& out) {
    const std::optional<Node> list = node.find(field);
    if (!list) return;
    for (const Node& n : list->array()) {
      std::string name = n.str();
      if (name.empty()) n.fail("expected a non-empty name");
      if (std::find(out.begin(), out.end(), name) != out.end()) n.fail("name listed twice");
      out.push_back(std::move(name));
    }
  };
  names("model_type", summary.model_types);
  names("architectures", summary.architectures);
}

Spec parse_spec(std::string_view text, const SpecParams& given) {
  const nlohmann::json json = detail::parse_spec_json(text);
  const Node top{json, "$"};
  top.only({"d9d_mapper_spec", "description", "applies_to", "unmatched", "quantization", "params",
            "stages", "rules"},
           "a spec");
  if (auto a = top.find("applies_to")) {
    SpecSummary unused;
    parse_applies_to(*a, unused);
  }
  Spec spec;
  const Node version = top.at("d9d_mapper_spec");
  if (version.integer() != 1)
    version.fail(str_cat("unsupported version ", version.integer(), " (this d9d reads version 1)"));
  // The params first: every rule's integer fields may use them.
  spec.params = detail::resolve_params(top.find("params"), given);
  detail::ParamValues values;
  for (const auto& [name, p] : spec.params) values.emplace(name, p.value);
  const Node root{json, "$", &values};
  if (auto d = root.find("description")) spec.description = d->str();
  if (auto u = root.find("unmatched")) {
    const std::string policy = u->str();
    if (policy == "keep") {
      spec.unmatched = UnmatchedPolicy::kKeep;
    } else if (policy == "drop") {
      spec.unmatched = UnmatchedPolicy::kDrop;
    } else if (policy == "error") {
      spec.unmatched = UnmatchedPolicy::kError;
    } else {
      u->fail(
          str_cat("expected \"keep\", \"drop\" or \"error\", got ", json_string_excerpt(policy)));
    }
  }
  if (auto q = root.find("quantization")) spec.quantization = parse_quantization(*q);
  if (root.has("stages") == root.has("rules")) {
    root.fail("expected either \"stages\" (a list of {\"rules\": [...]}) or \"rules\"");
  }
  auto parse_rules = [&given](const Node& rules) {
    std::vector<Rule> out;
    for (const auto& r : rules.array()) out.push_back(detail::parse_rule(r, given.lossy_inverse));
    return out;
  };
  if (auto rules = root.find("rules")) {
    spec.stages.push_back(parse_rules(*rules));
  } else {
    for (const auto& stage : root.at("stages").array()) {
      stage.only({"rules", "comment"}, "a stage");
      spec.stages.push_back(parse_rules(stage.at("rules")));
    }
  }
  return spec;
}

// ---- expansion ----------------------------------------------------------------------------------

// The keys one stage sees, each split into segments once for all rules.
struct KeySet {
  std::vector<std::string> keys;  // sorted
  std::vector<std::vector<std::string_view>> parts;
  std::unordered_set<std::string_view> lookup;

  explicit KeySet(std::vector<std::string> sorted_keys) : keys(std::move(sorted_keys)) {
    parts.reserve(keys.size());
    lookup.reserve(keys.size());
    for (const auto& k : keys) {
      parts.push_back(detail::split_key(k));
      lookup.insert(k);
    }
  }
  bool has(const std::string& key) const { return lookup.count(key) != 0; }
};

// The values of a rule's `over` capture in order: numeric when every value is a non-negative
// integer (then they must be 0..n-1; a gap is an error naming the keys it lacks), else
// lexicographic.
std::vector<std::string> ordered_values(const Rule& r, const Bindings& group,
                                        const std::set<std::string>& found) {
  std::vector<std::string> values(found.begin(), found.end());
  const bool numeric = std::all_of(values.begin(), values.end(), [](const std::string& v) {
    return !v.empty() && v.size() < 18 &&
           std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
  });
  if (!numeric) return values;
  std::sort(values.begin(), values.end(), [](const std::string& a, const std::string& b) {
    return std::stoll(a) < std::stoll(b);
  });
  bool gapless = true;
  for (size_t i = 0; i < values.size(); ++i) {
    gapless = gapless && std::stoll(values[i]) == static_cast<int64_t>(i) &&
              values[i] == std::to_string(i);
  }
  if (gapless) return values;
  std::vector<std::string> missing;
  for (int64_t k = 0; k < std::stoll(values.back()); ++k) {
    if (found.count(std::to_string(k))) continue;
    Bindings with = group;
    with[r.over] = std::to_string(k);
    for (const auto& p : r.sources) missing.push_back(p.instantiate(with));
  }
  throw SpecError(r.path, str_cat("for ", detail::bindings_str(group), ", {", r.over,
                                  "} takes the values ", detail::keys_str(values), ": expected 0..",
                                  values.size() - 1, " with none missing",
                                  missing.empty() ? std::string()
                                                  : str_cat(" (the checkpoint lacks ",
                                                            detail::keys_str(missing), ")")));
}

// The values 0..count-1 of a rule's `over` capture, checked against those the checkpoint has: a
// value missing is an error naming the keys it lacks, as is one past the count.
std::vector<std::string> counted_values(const Rule& r, const Bindings& group,
                                        const std::set<std::string>& found) {
  std::vector<std::string> out, missing;
  for (int64_t k = 0; k < r.count; ++k) {
    out.push_back(std::to_string(k));
    if (found.count(out.back())) continue;
    Bindings with = group;
    with[r.over] = out.back();
    for (const auto& p : r.sources) missing.push_back(p.instantiate(with));
  }
  if (!missing.empty()) {
    throw SpecError(r.path, str_cat("for ", detail::bindings_str(group), " {", r.over,
                                    "} must take every value 0..", r.count - 1,
                                    ", but the checkpoint lacks ", detail::keys_str(missing)));
  }
  if (found.size() != out.size()) {
    std::vector<std::string> extra;
    for (const auto& v : found) {
      if (std::find(out.begin(), out.end(), v) == out.end()) extra.push_back(v);
    }
    throw SpecError(r.path, str_cat("for ", detail::bindings_str(group), " {", r.over,
                                    "} takes the values ", detail::keys_str(extra), " beyond 0..",
                                    r.count - 1, " (\"count\" is ", r.count, ")"));
  }
  return out;
}

// Instances of a kSelect rule: one per parent key, holding the children found (or the base names
// asked for).
void expand_select(const Rule& r, const KeySet& keys, const std::function<void(Instance)>& build) {
  std::map<std::string, std::set<std::string>> children;  // parent key -> base names
  for (size_t i = 0; i < keys.keys.size(); ++i) {
    Bindings b;
    if (!r.sources[0].match(keys.parts[i], b)) continue;
    const std::string child = b.at("child");
    if (r.base_names && !r.base_names->count(child)) continue;
    const std::string& key = keys.keys[i];
    children[key.substr(0, key.size() - child.size() - 1)].insert(child);
  }
  for (const auto& [parent, found] : children) {
    if (r.base_names && found.size() != r.base_names->size()) {
      std::vector<std::string> missing;
      for (const auto& n : *r.base_names) {
        if (!found.count(n)) missing.push_back(parent + "." + n);
      }
      throw SpecError(r.path, str_cat("the checkpoint has some base names of '", parent,
                                      "' but not ", detail::keys_str(missing)));
    }
    build(Instance{{parent}, {found.begin(), found.end()}});
  }
}

// Instances of a kManyToOne rule.
void expand_many_to_one(const Rule& r, const KeySet& keys,
                        const std::function<void(Instance)>& build) {
  if (r.over.empty()) {
    // Bindings found by any source; each must find every source.
    std::set<Bindings> bindings;
    for (const auto& p : r.sources) {
      for (size_t i = 0; i < keys.keys.size(); ++i) {
        Bindings b;
        if (p.match(keys.parts[i], b)) bindings.insert(std::move(b));
      }
    }
    for (const auto& b : bindings) {
      std::vector<std::string> names, missing;
      for (const auto& p : r.sources) {
        names.push_back(p.instantiate(b));
        if (!keys.has(names.back())) missing.push_back(names.back());
      }
      if (!missing.empty()) {
        throw SpecError(r.path, str_cat("for ", detail::bindings_str(b),
                                        " the checkpoint has some sources but not ",
                                        detail::keys_str(missing)));
      }
      build(Instance{std::move(names), {r.targets[0].instantiate(b)}});
    }
    return;
  }
  // One tensor per source and value of the `over` capture, grouped by the other captures; every
  // source must exist for every value any of them takes.
  std::map<Bindings, std::set<std::string>> values;
  for (const auto& p : r.sources) {
    for (size_t i = 0; i < keys.keys.size(); ++i) {
      Bindings b;
      if (!p.match(keys.parts[i], b)) continue;
      std::string value = b.at(r.over);
      b.erase(r.over);
      values[b].insert(std::move(value));
    }
  }
  for (const auto& [b, found] : values) {
    const std::vector<std::string> ordered =
        r.count > 0 ? counted_values(r, b, found) : ordered_values(r, b, found);
    std::vector<std::string> names, missing;
    for (const auto& v : ordered) {
      Bindings with = b;
      with[r.over] = v;
      for (const auto& p : r.sources) {
        names.push_back(p.instantiate(with));
        if (!keys.has(names.back())) missing.push_back(names.back());
      }
    }
    if (!missing.empty()) {
      throw SpecError(r.path, str_cat("for ", detail::bindings_str(b), " the checkpoint lacks ",
                                      detail::keys_str(missing), " (every {", r.over,
                                      "} needs all of its sources)"));
    }
    build(Instance{std::move(names), {r.targets[0].instantiate(b)}});
  }
}

// Instances of a kSingle or kOneToMany rule: one per key the source matches.
void expand_per_key(const Rule& r, const KeySet& keys, const std::function<void(Instance)>& build) {
  for (size_t i = 0; i < keys.keys.size(); ++i) {
    Bindings b;
    if (!r.sources[0].match(keys.parts[i], b)) continue;
    std::vector<std::string> targets;
    if (r.over.empty()) {
      for (const auto& t : r.targets) targets.push_back(t.instantiate(b));
    } else {
      for (int64_t k = 0; k < r.count; ++k) {
        Bindings with = b;
        with[r.over] = std::to_string(k);
        for (const auto& t : r.targets) targets.push_back(t.instantiate(with));
      }
    }
    build(Instance{{keys.keys[i]}, std::move(targets)});
  }
}

// Instances of a kPaired rule: one per key the source matches whose scale exists (a key without
// one is not a quantized weight); a missing global scale is an error.
void expand_paired(const Rule& r, const KeySet& keys, const std::function<void(Instance)>& build) {
  for (size_t i = 0; i < keys.keys.size(); ++i) {
    Bindings b;
    if (!r.sources[0].match(keys.parts[i], b)) continue;
    Instance instance{{keys.keys[i]}, {r.targets[0].instantiate(b)}};
    for (size_t c = 1; c < r.sources.size(); ++c)
      instance.sources.push_back(r.sources[c].instantiate(b));
    if (!keys.has(instance.sources[1])) continue;
    if (instance.sources.size() > 2 && !keys.has(instance.sources[2])) {
      throw SpecError(r.path, str_cat("the checkpoint has '", instance.sources[0],
                                      "' and its scale '", instance.sources[1],
                                      "' but not its global scale '", instance.sources[2], "'"));
    }
    build(std::move(instance));
  }
}

// The quantized weights of one stage's keys under a spec's "quantization": every key that is a
// weight by its name and whose scale (and global scale) the stage has.
struct QuantizedKeys {
  const QuantScheme* scheme = nullptr;
  std::unordered_set<std::string> weights;
  std::unordered_map<std::string, std::string> weight_of;  // scale or global scale -> its weight

  QuantizedKeys(const std::optional<QuantScheme>& q, const KeySet& keys) {
    if (!q) return;
    scheme = &*q;
    for (const std::string& k : keys.keys) {
      if (!q->names.is_weight(k) || !keys.has(q->names.scale_of(k))) continue;
      weights.insert(k);
      weight_of.emplace(q->names.scale_of(k), k);
      if (!q->names.global_scale_suffix.empty()) weight_of.emplace(q->names.global_scale_of(k), k);
    }
  }
};

// Note [scales follow their weights], in a spec: each instance that reads quantized weights is
// wrapped so their scales follow; an instance that reads only scales whose weights this rule also
// moves is dropped (a rule over "{x...}" meets both); any other reading of a scale is an error.
std::vector<MapperPtr> with_scales(const Rule& r, std::vector<MapperPtr> instances,
                                   const QuantizedKeys& q) {
  if (q.scheme == nullptr || r.op->family == Family::kPaired) return instances;
  const QuantNames& names = q.scheme->names;
  std::unordered_set<std::string> moved;  // weights this rule moves
  for (const MapperPtr& m : instances) {
    for (const std::string& k : m->state_dependency_groups().begin()->inputs) {
      if (q.weights.count(k)) moved.insert(k);
    }
  }
  std::vector<MapperPtr> out;
  for (MapperPtr& m : instances) {
    const std::set<std::string>& inputs = m->state_dependency_groups().begin()->inputs;
    size_t weights = 0, companions = 0;
    std::string weight, plain, companion;
    for (const std::string& k : inputs) {
      if (q.weights.count(k)) {
        ++weights;
        weight = k;
      } else if (auto it = q.weight_of.find(k); it != q.weight_of.end()) {
        ++companions;
        companion = k;
        if (!moved.count(it->second)) {
          throw SpecError(r.path, str_cat("'", k, "' belongs to the quantized weight '", it->second,
                                          "' and moves with it (the spec's \"quantization\"); "
                                          "no rule moves it on its own"));
        }
      } else {
        plain = k;
      }
    }
    if (weights == 0 && companions == 0) {
      out.push_back(std::move(m));
      continue;
    }
    if (weights == 0) continue;  // scales of weights this rule moves: they follow them
    if (weights + companions != inputs.size() || companions != 0) {
      throw SpecError(r.path, str_cat("'", weight, "' is a quantized weight (its scale '",
                                      names.scale_of(weight), "' is in the checkpoint) but '",
                                      companions != 0 ? companion : plain,
                                      "', read with it, is not one; this rule would separate "
                                      "them from their scales"));
    }
    try {
      out.push_back(quantized(std::move(m), *q.scheme));
    } catch (const Error& e) {
      throw SpecError(r.path, e.what());
    }
  }
  return out;
}

// Instances of a kUntie / kTie rule: one per embedding key where "tied" holds and the lm_head key
// is missing (untie: made from the embedding) or present (tie: dropped). What disagrees with
// "tied" is a note (an lm_head present though tied: kept as it is) or an error (an lm_head
// missing though not tied).
void expand_tied(const Rule& r, const KeySet& keys, const std::function<void(Instance)>& build,
                 std::vector<std::string>& notes) {
  const bool untie = r.op->family == Family::kUntie;
  for (size_t i = 0; i < keys.keys.size(); ++i) {
    Bindings b;
    if (!r.sources[0].match(keys.parts[i], b)) continue;
    const std::string& embedding = keys.keys[i];
    std::string lm_head = r.targets[0].instantiate(b);
    const bool present = keys.has(lm_head);
    if (!r.tied && !present) {
      throw SpecError(r.path,
                      str_cat("'", lm_head, "' is missing, and the embeddings are not tied ",
                              "(\"tied\" is false), so '", embedding, "' does not stand for it"));
    }
    if (untie && r.tied && present) {
      notes.push_back(str_cat(r.path, ": '", lm_head,
                              "' is present although the embeddings are tied (\"tied\" is true): "
                              "kept as it is, not made from '",
                              embedding, "'"));
    }
    if (r.tied && present != untie) build(Instance{{embedding}, {std::move(lm_head)}});
  }
}

// The leaf mappers of every instance of `r` over `keys`; what the expansion noticed goes to
// `notes`.
std::vector<MapperPtr> expand(const Rule& r, const KeySet& keys, std::vector<std::string>& notes) {
  std::vector<MapperPtr> out;
  const std::function<void(Instance)> build = [&r, &out](Instance instance) {
    try {
      out.push_back(r.build(std::move(instance)));
    } catch (const SpecError&) {
      throw;
    } catch (const Error& e) {
      throw SpecError(r.path, e.what());
    }
  };
  switch (r.op->family) {
    case Family::kSelect:
      expand_select(r, keys, build);
      break;
    case Family::kManyToOne:
      expand_many_to_one(r, keys, build);
      break;
    case Family::kSingle:
    case Family::kOneToMany:
      expand_per_key(r, keys, build);
      break;
    case Family::kPaired:
      expand_paired(r, keys, build);
      break;
    case Family::kUntie:
    case Family::kTie:
      expand_tied(r, keys, build, notes);
      break;
  }
  return out;
}

}  // namespace

SpecMapping from_spec(std::string_view json, const std::vector<std::string>& checkpoint_keys) {
  return from_spec(json, checkpoint_keys, SpecParams{});
}

// Note [rules that match nothing]: a spec is written for a model, so a rule whose source matches
// no key of its stage is most likely a spec that does not fit the checkpoint (a "bert." prefix the
// keys lack): a SpecError, with the likely cause when a prefix explains it. A rule that may
// rightly find nothing (a tied lm_head, an optional bias) says "optional": true and is then only
// listed in SpecMapping::unused_rules. A rule whose source matched but that made no instance (an
// untie_embeddings whose lm_head is present, a dequantize over keys without scales) is listed
// there too, not an error: it was applied, and decided there was nothing to do.
namespace {

bool matches_any(const Pattern& pattern, const KeySet& keys) {
  for (const auto& parts : keys.parts) {
    Bindings b;
    if (pattern.match(parts, b)) return true;
  }
  return false;
}

// Why `r` may have matched nothing: a prefix its source has and the keys lack, or one the keys
// have and its source lacks ("" when no prefix explains it).
std::string prefix_hint(const Rule& r, const KeySet& keys) {
  const std::string& text = r.sources[0].text();
  auto first_match = [&keys](const std::string& pattern_text) -> std::string {
    try {
      const Pattern p(pattern_text);
      for (size_t i = 0; i < keys.keys.size(); ++i) {
        Bindings b;
        if (p.match(keys.parts[i], b)) return keys.keys[i];
      }
    } catch (const Error&) {
    }
    return "";
  };
  // The source without its leading literal segments, one at a time.
  for (size_t dot = text.find('.'); dot != std::string::npos; dot = text.find('.', dot + 1)) {
    const std::string prefix = text.substr(0, dot + 1);
    if (prefix.find('{') != std::string::npos) break;
    const std::string rest = text.substr(dot + 1);
    const std::vector<std::string_view> segments = detail::split_key(rest);
    const bool has_literal = std::any_of(  // a bare "{x}" matches anything: no evidence
        segments.begin(), segments.end(),
        [](std::string_view segment) { return segment.find('{') == std::string_view::npos; });
    if (!has_literal) break;
    if (const std::string key = first_match(rest); !key.empty()) {
      return str_cat("the checkpoint's keys lack the prefix '", prefix,
                     "' that the rule's source has (e.g. '", key, "')");
    }
  }
  // The keys' first segments before the source.
  std::set<std::string_view> firsts;
  for (const auto& parts : keys.parts) {
    if (parts.size() > 1 && firsts.insert(parts[0]).second && firsts.size() > 16) break;
  }
  for (std::string_view first : firsts) {
    if (const std::string key = first_match(str_cat(first, ".", text)); !key.empty()) {
      return str_cat("the checkpoint's keys start with '", first,
                     ".', which the rule's source lacks (e.g. '", key, "')");
    }
  }
  return "";
}

}  // namespace

SpecSummary summarize_spec(std::string_view text) {
  const nlohmann::json json = detail::parse_spec_json(text);
  const Node top{json, "$"};
  top.expect(json.is_object(), "a spec (a JSON object)");
  SpecSummary summary;
  if (auto d = top.find("description")) summary.description = d->str();
  if (auto a = top.find("applies_to")) parse_applies_to(*a, summary);
  if (auto p = top.find("params"); p && p->j.is_object()) {
    for (const auto& [name, value] : p->j.items()) summary.params.push_back(name);
  }
  return summary;
}

SpecMapping from_spec(std::string_view json, const std::vector<std::string>& checkpoint_keys,
                      const SpecParams& params) {
  const Spec spec = parse_spec(json, params);
  SpecMapping result;
  result.unmatched = spec.unmatched;
  result.description = spec.description;
  result.params = spec.params;

  std::vector<std::string> current(checkpoint_keys);
  std::sort(current.begin(), current.end());
  for (size_t i = 1; i < current.size(); ++i) {
    D9D_CHECK(current[i] != current[i - 1], "from_spec: the checkpoint key '", current[i],
              "' is listed twice");
  }
  std::unordered_set<std::string> untouched(current.begin(), current.end());
  std::vector<std::vector<MapperPtr>> stage_mappers;

  for (const auto& rules : spec.stages) {
    const bool first_stage = &rules == &spec.stages.front();
    const KeySet keys(std::move(current));
    const QuantizedKeys quantized_keys(spec.quantization, keys);
    std::unordered_map<std::string, size_t> consumed_by, produced_by;  // key -> rule index
    std::vector<MapperPtr> mappers;
    for (size_t ri = 0; ri < rules.size(); ++ri) {
      const Rule& r = rules[ri];
      std::vector<MapperPtr> instances =
          with_scales(r, expand(r, keys, result.notes), quantized_keys);
      if (instances.empty()) {
        // Note [rules that match nothing]
        if (!r.optional && !matches_any(r.sources[0], keys)) {
          const std::string hint = prefix_hint(r, keys);
          throw SpecError(r.path, str_cat("its source '", r.sources[0].text(), "' matches no key ",
                                          first_stage ? "of the checkpoint" : "this stage reads",
                                          hint.empty() ? "" : "; " + hint,
                                          ". A rule that may find nothing says \"optional\": "
                                          "true"));
        }
        result.unused_rules.push_back(r.summary() + (r.optional ? " (optional)" : ""));
      }
      for (auto& m : instances) {
        for (const auto& g : m->state_dependency_groups()) {
          for (const auto& k : g.inputs) {
            auto [it, fresh] = consumed_by.emplace(k, ri);
            if (!fresh) {
              throw SpecError(r.path, str_cat("'", k, "' is consumed both by ",
                                              rules[it->second].summary(), " and by this rule"));
            }
          }
          for (const auto& k : g.outputs) {
            auto [it, fresh] = produced_by.emplace(k, ri);
            if (!fresh) {
              throw SpecError(r.path, str_cat("'", k, "' is produced both by ",
                                              rules[it->second].summary(), " and by this rule"));
            }
          }
        }
        mappers.push_back(std::move(m));
      }
    }
    // The keys after this stage: what it produced, and what it did not consume.
    std::vector<std::string> next;
    for (const auto& k : keys.keys) {
      if (consumed_by.count(k)) {
        untouched.erase(k);
        continue;
      }
      if (auto it = produced_by.find(k); it != produced_by.end()) {
        throw SpecError(rules[it->second].path,
                        str_cat("its output '", k, "' would replace the key '", k,
                                "' that no rule of this stage consumes"));
      }
      next.push_back(k);
    }
    for (auto& [k, ri] : produced_by) next.push_back(k);
    std::sort(next.begin(), next.end());
    current = std::move(next);
    stage_mappers.push_back(std::move(mappers));
  }

  result.unmatched_keys.assign(untouched.begin(), untouched.end());
  std::sort(result.unmatched_keys.begin(), result.unmatched_keys.end());
  if (spec.unmatched == UnmatchedPolicy::kError && !result.unmatched_keys.empty()) {
    throw ValueError(str_cat(result.unmatched_keys.size(),
                             " checkpoint key(s) match no rule and the spec says \"unmatched\": "
                             "\"error\": ",
                             detail::keys_str(result.unmatched_keys)));
  }
  if (spec.unmatched == UnmatchedPolicy::kKeep) {
    if (stage_mappers.empty()) stage_mappers.emplace_back();
    for (const auto& k : result.unmatched_keys) stage_mappers[0].push_back(identity(k));
  }

  std::vector<MapperPtr> stages;
  for (auto& mappers : stage_mappers) stages.push_back(parallel(std::move(mappers)));
  stages = filter_empty_mappers(stages);
  if (stages.empty()) {
    result.mapper = parallel({});
  } else if (stages.size() == 1) {
    result.mapper = stages[0];
  } else {
    result.mapper = sequential(std::move(stages));
  }
  return result;
}

}  // namespace d9d::mapper
