// Quantized weights in a checkpoint: config.json's quantization_config, the pairs found by names
// and dtypes, and the check that a mapper keeps each pair together (quantized.hpp).
#include <algorithm>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include <d9d/mapper/compose.hpp>
#include <d9d/mapper/leaf.hpp>
#include <d9d/mapper/quantized.hpp>

#include "internal.hpp"

namespace d9d::mapper {

using d9d::detail::str_cat;

// ---- config.json --------------------------------------------------------------------------------

namespace {

std::optional<std::array<int64_t, 2>> block_of(const nlohmann::json& j) {
  if (!j.is_array() || j.size() != 2 || !j[0].is_number_integer() || !j[1].is_number_integer() ||
      j[0].get<int64_t>() < 1 || j[1].get<int64_t>() < 1) {
    return std::nullopt;
  }
  return std::array<int64_t, 2>{j[0].get<int64_t>(), j[1].get<int64_t>()};
}

}  // namespace

std::optional<QuantizationConfig> parse_quantization_config(std::string_view config_json,
                                                            std::string_view origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(config_json);
  } catch (const nlohmann::json::exception& e) {
    d9d::detail::throw_error<ValueError>(origin, ": not valid JSON (", e.what(), ")");
  }
  if (!j.is_object() || !j.contains("quantization_config")) return std::nullopt;
  const nlohmann::json& q = j["quantization_config"];
  D9D_CHECK(q.is_object(), origin, ": \"quantization_config\" is not an object");
  QuantizationConfig c;
  if (q.contains("quant_method") && q["quant_method"].is_string()) {
    c.quant_method = q["quant_method"].get<std::string>();
  }
  if (q.contains("weight_block_size")) c.block = block_of(q["weight_block_size"]);
  if (!c.block && q.contains("config_groups") && q["config_groups"].is_object()) {
    for (const auto& [name, group] : q["config_groups"].items()) {
      if (group.is_object() && group.contains("weights") && group["weights"].is_object() &&
          group["weights"].contains("block_structure")) {
        c.block = block_of(group["weights"]["block_structure"]);
        if (c.block) break;
      }
    }
  }
  return c;
}

// ---- recognizing pairs --------------------------------------------------------------------------

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() > suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

void fit(QuantizedPair& p, const SpecDict& specs) {
  Dequantization how;
  how.format = p.format;
  how.block_rows = p.block_rows;
  how.block_cols = p.block_cols;
  how.global_scale_mode = p.global_scale.empty() ? std::nullopt : p.global_scale_mode;
  const TensorSpec& w = specs.at(p.weight);
  const TensorSpec& s = specs.at(p.scale);
  std::optional<QuantizedInput> g;
  if (!p.global_scale.empty()) {
    const TensorSpec& gs = specs.at(p.global_scale);
    g = QuantizedInput{gs.dtype, gs.shape};
  }
  try {
    p.logical_shape = dequantized_shape(how, {w.dtype, w.shape}, {s.dtype, s.shape}, g);
  } catch (const Error& e) {
    p.misfit = e.what();
  }
}

}  // namespace

std::vector<QuantizedPair> find_quantized_pairs(const SpecDict& specs,
                                                const std::optional<QuantizationConfig>& config) {
  const std::array<int64_t, 2> block =
      config && config->block ? *config->block : std::array<int64_t, 2>{128, 128};
  auto has = [&](const std::string& key) { return specs.count(key) != 0; };
  std::vector<QuantizedPair> out;
  for (const auto& [key, spec] : specs) {
    QuantizedPair p;
    p.weight = key;
    p.block_rows = block[0];
    p.block_cols = block[1];
    if (spec.dtype == DType::F8_E4M3) {
      if (has(key + "_scale_inv")) {
        p.scale = key + "_scale_inv";
      } else if (has(key + "_scales_inv")) {
        p.scale = key + "_scales_inv";
      } else if (has(key + "_scale")) {
        p.scale = key + "_scale";
        const Shape& s = specs.at(p.scale).shape;
        const bool per_row = !spec.shape.empty() && s.size() == spec.shape.size() && s.back() == 1;
        if (per_row || (s.size() <= 1 && numel_of(s) == 1)) p.format = QuantFormat::kFp8Channel;
      } else {
        continue;
      }
    } else if (spec.dtype == DType::U8) {
      const std::string base_blocks =
          key.substr(0, key.size() - std::string_view("_blocks").size());
      const std::string base_packed =
          key.substr(0, key.size() - std::string_view(".weight_packed").size());
      if (ends_with(key, "_blocks") && has(base_blocks + "_scales")) {
        p.format = QuantFormat::kMxfp4;
        p.scale = base_blocks + "_scales";
      } else if (ends_with(key, ".weight_packed") && has(base_packed + ".weight_scale")) {
        p.scale = base_packed + ".weight_scale";
        if (specs.at(p.scale).dtype == DType::F8_E4M3) {
          p.format = QuantFormat::kNvfp4;
          if (has(base_packed + ".weight_global_scale")) {
            p.global_scale = base_packed + ".weight_global_scale";
            p.global_scale_mode = GlobalScaleMode::kDivide;
          }
        } else {
          p.format = QuantFormat::kMxfp4;
        }
      } else if (has(key + "_scale") && specs.at(key + "_scale").dtype == DType::F8_E4M3) {
        p.format = QuantFormat::kNvfp4;
        p.scale = key + "_scale";
        if (has(key + "_scale_2")) {
          p.global_scale = key + "_scale_2";
          p.global_scale_mode = GlobalScaleMode::kMultiply;
        }
      } else {
        continue;
      }
    } else {
      continue;
    }
    fit(p, specs);
    out.push_back(std::move(p));
  }
  return out;
}

// ---- the check ----------------------------------------------------------------------------------

namespace {

// Whether `mapper` leaves `key` as it is: reads it nowhere, or only passes it through identity
// mappers. Composites are looked into (a spec's mapper is parallel and sequential mappers of
// leaves); a mapper of another kind that reads the key counts as changing it.
class PassThrough {
 public:
  bool operator()(const ModelStateMapper& m, const std::string& key) {
    if (const auto* p = dynamic_cast<const ParallelMapper*>(&m)) {
      const ModelStateMapper* child = reader_in(*p, key);
      return child == nullptr || (*this)(*child, key);
    }
    if (const auto* s = dynamic_cast<const SequentialMapper*>(&m)) {
      return std::all_of(s->stages().begin(), s->stages().end(),
                         [&](const MapperPtr& stage) { return (*this)(*stage, key); });
    }
    if (dynamic_cast<const IdentityMapper*>(&m) != nullptr) return true;
    for (const StateGroup& g : m.state_dependency_groups()) {
      if (g.inputs.count(key) != 0) return false;
    }
    return true;
  }

 private:
  const ModelStateMapper* reader_in(const ParallelMapper& p, const std::string& key) {
    auto [it, fresh] = index_.try_emplace(&p);
    if (fresh) {
      for (const MapperPtr& child : p.mappers()) {
        for (const StateGroup& g : child->state_dependency_groups()) {
          for (const std::string& in : g.inputs) it->second.emplace(in, child.get());
        }
      }
    }
    auto found = it->second.find(key);
    return found == it->second.end() ? nullptr : found->second;
  }

  std::unordered_map<const ParallelMapper*,
                     std::unordered_map<std::string_view, const ModelStateMapper*>>
      index_;
};

}  // namespace

void check_quantized_pairs(const ModelStateMapper& mapper,
                           const std::vector<QuantizedPair>& pairs) {
  std::unordered_map<std::string_view, const StateGroup*> group_of;
  for (const StateGroup& g : mapper.state_dependency_groups()) {
    for (const std::string& in : g.inputs) group_of.emplace(in, &g);
  }
  auto reader = [&](const std::string& key) -> const StateGroup* {
    auto it = group_of.find(key);
    return it == group_of.end() ? nullptr : it->second;
  };
  PassThrough passes_through;
  for (const QuantizedPair& p : pairs) {
    std::vector<std::string> keys{p.scale};
    if (!p.global_scale.empty()) keys.push_back(p.global_scale);
    const std::string pair =
        str_cat("the ", quant_format_name(p.format), " weight '", p.weight, "' and its scale '",
                p.scale, "'", p.global_scale.empty() ? "" : str_cat(" and '", p.global_scale, "'"));
    const StateGroup* gw = reader(p.weight);
    bool any = gw != nullptr, all_same = true, all_read = gw != nullptr;
    for (const std::string& k : keys) {
      const StateGroup* g = reader(k);
      any = any || g != nullptr;
      all_read = all_read && g != nullptr;
      all_same = all_same && g == gw;
    }
    if (!any) continue;  // dropped or unread: nothing to keep together
    D9D_CHECK(p.misfit.empty(), "the conversion reads ", pair, ", which do not fit: ", p.misfit);
    if (all_same) continue;  // one group (dequantize, quantized, or a mapper taking both)
    if (!all_read) {
      const bool weight_read = gw != nullptr;
      throw ValueError(str_cat(
          pair, ": the conversion reads ",
          weight_read ? "the weight without its scale" : "a scale without its weight",
          " (the other is dropped); a quantized weight is worth nothing without its scales, and "
          "its scales nothing without it: dequantize it, or keep or drop them together"));
    }
    bool unchanged = passes_through(mapper, p.weight);
    for (const std::string& k : keys) unchanged = unchanged && passes_through(mapper, k);
    D9D_CHECK(unchanged, pair,
              " are moved in separate groups, so nothing keeps them together (a weight renamed, "
              "fused or transformed without its scale, or the other way round); declare the "
              "quantization in the spec (\"quantization\"), so that its scales follow each weight, "
              "or dequantize it");
  }
}

}  // namespace d9d::mapper
