// d9d plan CKPT --spec S: a conversion's dry run, from metadata alone.
#include <algorithm>
#include <iostream>
#include <set>

#include <nlohmann/json.hpp>

#include <d9d/io/checkpoint.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

#include "cli.hpp"

namespace d9d::cli {

namespace {

const char* policy_name(mapper::UnmatchedPolicy p) {
  switch (p) {
    case mapper::UnmatchedPolicy::kKeep:
      return "keep";
    case mapper::UnmatchedPolicy::kDrop:
      return "drop";
    case mapper::UnmatchedPolicy::kError:
      return "error";
  }
  return "?";
}

struct PlannedShard {
  std::string file;
  int64_t tensors = 0;
  int64_t bytes = 0;
};

// The writer's layout (model_state::assign_shards), summed per shard; tensors larger than a shard
// are returned in `too_large` (the writer would refuse them).
std::vector<PlannedShard> layout_shards(
    const std::vector<std::pair<std::string, mapper::TensorSpec>>& outputs, int64_t shard_size,
    std::vector<size_t>& shard_of, std::vector<std::string>& too_large) {
  shard_of = model_state::assign_shards(outputs, shard_size);
  std::vector<PlannedShard> shards(shard_of.empty() ? 0 : shard_of.back() + 1);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const int64_t bytes = outputs[i].second.nbytes();
    if (bytes > shard_size) too_large.push_back(outputs[i].first);
    ++shards[shard_of[i]].tensors;
    shards[shard_of[i]].bytes += bytes;
  }
  for (size_t i = 0; i < shards.size(); ++i) {
    shards[i].file = io::shard_file_name(static_cast<int>(i), static_cast<int>(shards.size()));
  }
  return shards;
}

std::string join(const std::set<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

int run_plan(const PlanOptions& options) {
  const io::Checkpoint ck = io::Checkpoint::open(options.checkpoint);
  const Conversion c = make_conversion(options.checkpoint, options.spec, options.reverse);
  const mapper::ModelStateMapper& m = *c.mapper;

  // Coverage first: inputs the mapper needs that the checkpoint lacks.
  std::vector<std::string> missing;
  for (const std::string& in : mapper::all_inputs(m)) {
    if (!ck.contains(in)) missing.push_back(in);
  }
  std::set<std::string> consumed;
  for (const mapper::StateGroup& g : m.state_dependency_groups()) {
    consumed.insert(g.inputs.begin(), g.inputs.end());
  }
  std::vector<std::string> unconsumed;  // checkpoint keys the mapper does not read
  for (const std::string& key : ck.keys()) {
    if (!consumed.contains(key)) unconsumed.push_back(key);
  }

  std::optional<model_state::ReadPlan> plan;
  if (missing.empty()) plan = model_state::plan_read(ck, m);

  std::vector<std::pair<std::string, mapper::TensorSpec>> outputs;
  std::vector<PlannedShard> shards;
  std::vector<size_t> shard_of;
  std::vector<std::string> too_large;
  if (plan) {
    // A spec's mapper infers every output; outputs() is nullopt only for custom mappers.
    outputs = plan->outputs().value_or(decltype(outputs){});
    shards = layout_shards(outputs, options.shard_size, shard_of, too_large);
  }
  // The group of each output (its inputs, to show where it comes from).
  std::map<std::string, const mapper::StateGroup*> group_of;
  if (plan) {
    for (const model_state::GroupPlan& g : plan->groups) {
      for (const auto& [name, spec] : g.outputs) group_of[name] = &g.group;
    }
  }
  const bool ok = missing.empty() && too_large.empty();

  if (options.json) {
    nlohmann::ordered_json j;
    j["checkpoint"] = ck.dir().string();
    j["spec"] = c.sidecar.spec_origin;
    j["reverse"] = c.reverse;
    j["ok"] = ok;
    j["groups"] = m.state_dependency_groups().size();
    if (plan) {
      j["input_bytes"] = plan->input_bytes;
      j["output_bytes"] = plan->output_bytes;
      nlohmann::ordered_json outs = nlohmann::ordered_json::array();
      for (size_t i = 0; i < outputs.size(); ++i) {
        const auto& [name, spec] = outputs[i];
        const mapper::StateGroup& g = *group_of.at(name);
        outs.push_back({{"name", name},
                        {"dtype", dtype_name(spec.dtype)},
                        {"shape", spec.shape.vec()},
                        {"bytes", spec.nbytes()},
                        {"file", shards[shard_of[i]].file},
                        {"inputs", std::vector<std::string>(g.inputs.begin(), g.inputs.end())}});
      }
      j["outputs"] = std::move(outs);
      nlohmann::ordered_json sh = nlohmann::ordered_json::array();
      for (const PlannedShard& s : shards) {
        sh.push_back({{"file", s.file}, {"tensors", s.tensors}, {"bytes", s.bytes}});
      }
      j["shard_size"] = options.shard_size;
      j["shards"] = std::move(sh);
    }
    j["missing_inputs"] = missing;
    j["tensors_too_large"] = too_large;
    j["unmatched_keys"] = c.mapping.unmatched_keys;
    j["unmatched_policy"] = policy_name(c.mapping.unmatched);
    j["unconsumed_keys"] = unconsumed;
    j["unused_rules"] = c.mapping.unused_rules;
    std::cout << j.dump(1) << "\n";
    return ok ? 0 : 1;
  }

  std::cout << "plan: " << ck.dir().string()
            << (c.reverse ? " through the inverse of " : " through ")
            << (c.sidecar.spec_origin.empty() ? std::string("the recorded spec")
                                              : c.sidecar.spec_origin)
            << "\n";
  if (!c.mapping.description.empty()) std::cout << "  " << c.mapping.description << "\n";
  std::cout << "  checkpoint: " << ck.keys().size() << " tensors, "
            << format_bytes(ck.total_bytes()) << " in " << ck.files().size() << " file"
            << (ck.files().size() == 1 ? "" : "s") << "\n";
  std::cout << "  groups:     " << m.state_dependency_groups().size() << "\n";
  if (plan) {
    std::cout << "  reads:      " << plan->files.size() << " file"
              << (plan->files.size() == 1 ? "" : "s") << ", " << format_bytes(plan->input_bytes)
              << "\n";
    std::cout << "  writes:     " << outputs.size() << " tensors, "
              << format_bytes(plan->output_bytes) << " in " << shards.size() << " shard"
              << (shards.size() == 1 ? "" : "s") << " of at most "
              << format_bytes(options.shard_size) << "\n\n";

    size_t w_name = 4;
    size_t w_dtype = 5;
    size_t w_shape = 5;
    for (const auto& [name, spec] : outputs) {
      w_name = std::max(w_name, name.size());
      w_dtype = std::max(w_dtype, dtype_name(spec.dtype).size());
      w_shape = std::max(w_shape, format_shape(spec.shape).size());
    }
    auto pad = [](std::string s, size_t w) {
      if (s.size() < w) s.append(w - s.size(), ' ');
      return s;
    };
    std::cout << "outputs, in write order:\n"
              << "  " << pad("name", w_name) << "  " << pad("dtype", w_dtype) << "  "
              << pad("shape", w_shape) << "  shard  from\n";
    for (size_t i = 0; i < outputs.size(); ++i) {
      const auto& [name, spec] = outputs[i];
      const mapper::StateGroup& g = *group_of.at(name);
      const bool same = g.inputs.size() == 1 && g.outputs.size() == 1 && *g.inputs.begin() == name;
      std::cout << "  " << pad(name, w_name) << "  "
                << pad(std::string(dtype_name(spec.dtype)), w_dtype) << "  "
                << pad(format_shape(spec.shape), w_shape) << "  "
                << pad(std::to_string(shard_of[i] + 1), 5) << "  " << (same ? "=" : join(g.inputs))
                << "\n";
    }
    std::cout << "\nshards (--shard-size " << format_bytes(options.shard_size) << "):\n";
    for (const PlannedShard& s : shards) {
      std::cout << "  " << s.file << "  " << count_of(s.tensors, "tensor") << ", "
                << format_bytes(s.bytes) << "\n";
    }
  }

  std::cout << "\ncoverage:\n";
  auto list = [](const std::vector<std::string>& names, size_t limit = 20) {
    std::string out;
    for (size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", " : "") + names[i];
    if (names.size() > limit) out += ", ... (" + std::to_string(names.size() - limit) + " more)";
    return out;
  };
  std::cout << "  missing inputs: "
            << (missing.empty() ? "none" : std::to_string(missing.size()) + ": " + list(missing))
            << "\n";
  std::cout << "  unmatched keys (policy " << policy_name(c.mapping.unmatched) << "): "
            << (c.mapping.unmatched_keys.empty() ? "none"
                                                 : std::to_string(c.mapping.unmatched_keys.size()) +
                                                       ": " + list(c.mapping.unmatched_keys))
            << "\n";
  if (!unconsumed.empty()) {
    std::cout << "  checkpoint keys not read: " << unconsumed.size() << ": " << list(unconsumed)
              << "\n";
  }
  std::cout << "  rules that matched nothing: "
            << (c.mapping.unused_rules.empty() ? "none"
                                               : std::to_string(c.mapping.unused_rules.size()))
            << "\n";
  for (const std::string& rule : c.mapping.unused_rules) std::cout << "    " << rule << "\n";
  if (!too_large.empty()) {
    std::cout << "  tensors larger than a shard: " << too_large.size() << ": " << list(too_large)
              << "\n";
  }
  std::cout << (ok ? "plan: ok\n" : "plan: this conversion would fail\n");
  return ok ? 0 : 1;
}

}  // namespace d9d::cli
