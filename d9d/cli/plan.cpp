// d9d plan CKPT --spec S: a conversion's dry run, from metadata alone: a report for a person,
// --json for a program, --dot for Graphviz (every group's inputs -> ops -> outputs).
#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <d9d/io/checkpoint.hpp>
#include <d9d/mapper/compose.hpp>
#include <d9d/mapper/leaf.hpp>
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

struct PlannedOutput {
  std::string name;
  mapper::TensorSpec spec;
  size_t shard = 0;         // in PlanResult::shards
  mapper::StateGroup from;  // the group that makes it
  // from.inputs in the order this output's bytes take them (a stack's sources as it stacks
  // them: query, key, value), then any others by name.
  std::vector<std::string> inputs;
};

// ---- the ops of a group
// ---------------------------------------------------------------------------

// One op of a group: a leaf mapper's group, with its inputs in the op's order (a stack's sources
// as it stacks them) and its outputs' specs where they could be inferred.
struct PlannedOp {
  std::string op;        // "stack_tensors"
  std::string describe;  // the leaf mapper's describe()
  size_t stage = 0;      // of the composed mapper: ops of one stage run side by side
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  mapper::SpecDict output_specs;  // empty when not inferred
};

// The leaves of a composed mapper with the stage each runs in (a sequential's stages one after
// another, a parallel's mappers side by side); returns the stages `m` spans.
size_t collect_leaves(const mapper::MapperPtr& m, size_t stage,
                      std::vector<std::pair<const mapper::ModelStateMapper*, size_t>>& out) {
  if (const auto* p = dynamic_cast<const mapper::ParallelMapper*>(m.get())) {
    size_t span = 0;
    for (const auto& child : p->mappers()) span = std::max(span, collect_leaves(child, stage, out));
    return span;
  }
  if (const auto* q = dynamic_cast<const mapper::SequentialMapper*>(m.get())) {
    size_t span = 0;
    for (const auto& child : q->stages()) span += collect_leaves(child, stage + span, out);
    return span;
  }
  out.emplace_back(m.get(), stage);
  return 1;
}

// Finds the leaf ops that make up each (net) group of a composed mapper.
class OpIndex {
 public:
  explicit OpIndex(const mapper::MapperPtr& m) {
    std::vector<std::pair<const mapper::ModelStateMapper*, size_t>> leaves;
    by_input_.resize(collect_leaves(m, 0, leaves));
    for (const auto& [leaf, stage] : leaves) {
      for (const mapper::StateGroup& g : leaf->state_dependency_groups()) {
        for (const std::string& key : g.inputs) by_input_[stage][key] = {leaf, &g};
      }
    }
  }

  // The ops of `group`, stage by stage, following its keys from its inputs; `inputs` are their
  // specs (none: no output specs either).
  std::vector<PlannedOp> ops_of(const mapper::StateGroup& group,
                                const mapper::SpecDict& inputs) const {
    std::vector<PlannedOp> out;
    std::set<std::string> live(group.inputs.begin(), group.inputs.end());
    mapper::SpecDict specs = inputs;
    for (size_t stage = 0; stage < by_input_.size(); ++stage) {
      std::vector<Leaf> here;
      for (const std::string& key : live) {
        auto it = by_input_[stage].find(key);
        if (it != by_input_[stage].end() &&
            std::find(here.begin(), here.end(), it->second) == here.end()) {
          here.push_back(it->second);
        }
      }
      for (const Leaf& leaf : here) {
        out.push_back(planned(leaf, stage, specs));
        for (const std::string& k : leaf.group->inputs) live.erase(k);
        live.insert(leaf.group->outputs.begin(), leaf.group->outputs.end());
      }
    }
    return out;
  }

 private:
  struct Leaf {
    const mapper::ModelStateMapper* mapper = nullptr;
    const mapper::StateGroup* group = nullptr;
    bool operator==(const Leaf&) const = default;
  };

  static PlannedOp planned(const Leaf& leaf, size_t stage, mapper::SpecDict& specs) {
    PlannedOp op;
    op.describe = leaf.mapper->describe();
    op.op = op.describe.substr(0, op.describe.find('('));
    op.stage = stage;
    if (const auto* many = dynamic_cast<const mapper::ManyToOneMapper*>(leaf.mapper)) {
      op.inputs = many->sources();
    } else {
      op.inputs.assign(leaf.group->inputs.begin(), leaf.group->inputs.end());
    }
    if (const auto* many = dynamic_cast<const mapper::OneToManyMapper*>(leaf.mapper)) {
      op.outputs = many->targets();
    } else {
      op.outputs.assign(leaf.group->outputs.begin(), leaf.group->outputs.end());
    }
    mapper::SpecDict in;
    for (const std::string& k : leaf.group->inputs) {
      auto it = specs.find(k);
      if (it == specs.end()) return op;  // no specs to infer from
      in.emplace(k, it->second);
    }
    try {
      op.output_specs = leaf.mapper->infer(in);
    } catch (const Error&) {
      return op;  // plan_read reported what matters; this op's outputs stay unknown
    }
    for (const auto& [k, spec] : op.output_specs) specs[k] = spec;
    return op;
  }

  std::vector<std::unordered_map<std::string, Leaf>> by_input_;  // per stage: input key -> leaf
};

// A group of the plan with its ops.
struct PlannedGroup {
  mapper::StateGroup group;
  mapper::SpecDict inputs;  // empty when the plan failed (missing inputs)
  int64_t input_bytes = 0;
  int64_t output_bytes = 0;
  std::vector<PlannedOp> ops;
};

// What one tensor-parallel rank of a "tp" spec reads (Note [slice pushdown]).
struct RankPlan {
  int64_t tp_rank = 0;
  std::optional<int64_t> ep_rank;  // when the spec has ep_rank
  int64_t read_bytes = 0;
  int64_t output_bytes = 0;
  int64_t peak_bytes = 0;                 // ReadPlan::peak_bytes
  std::vector<std::string> not_narrowed;  // "op (group's first output)"
};

// What a conversion would do, from metadata alone.
struct PlanResult {
  PlanResult(io::Checkpoint ck, Conversion c)
      : checkpoint(std::move(ck)), conversion(std::move(c)) {}

  io::Checkpoint checkpoint;
  Conversion conversion;
  size_t groups = 0;
  std::vector<std::string> missing;           // inputs the mapper needs that the checkpoint lacks
  std::vector<std::string> unconsumed;        // checkpoint keys the mapper does not read
  std::optional<model_state::ReadPlan> read;  // when nothing is missing
  std::vector<PlannedOutput> outputs;         // in write order
  std::vector<PlannedShard> shards;
  std::vector<std::string> too_large;  // outputs larger than a shard (each gets a shard alone)
  int64_t shard_size = 0;
  std::vector<mapper::QuantizedPair> quantized_outputs;  // kept packed, with their scales
  std::vector<PlannedGroup> details;  // in stream order (mapper order when inputs are missing)
  // Every rank's reads, when the spec has params tp and tp_rank, tp > 1 and --set gave no
  // tp_rank: the plan of each rank (tp_rank = r; ep_rank = r / (tp / ep) where the spec has it).
  std::vector<RankPlan> ranks;

  bool ok() const { return missing.empty(); }
};

// The writer's layout (model_state::assign_shards) of the plan's outputs, summed per shard.
void lay_out_shards(PlanResult& r) {
  // A spec's mapper infers every output; outputs() is nullopt only for custom mappers.
  const auto specs =
      r.read->outputs().value_or(std::vector<std::pair<std::string, mapper::TensorSpec>>{});
  const std::vector<size_t> shard_of = model_state::assign_shards(specs, r.shard_size);
  std::map<std::string, const mapper::StateGroup*> group_of;
  for (const model_state::GroupPlan& g : r.read->groups) {
    for (const auto& [name, spec] : g.outputs) group_of[name] = &g.group;
  }
  r.shards.resize(shard_of.empty() ? 0 : shard_of.back() + 1);
  model_state::check_shard_count(r.shards.size(), r.shard_size);  // as convert would refuse
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& [name, spec] = specs[i];
    if (spec.nbytes() > r.shard_size) r.too_large.push_back(name);
    ++r.shards[shard_of[i]].tensors;
    r.shards[shard_of[i]].bytes += spec.nbytes();
    r.outputs.push_back({name, spec, shard_of[i], *group_of.at(name), {}});
  }
  for (size_t i = 0; i < r.shards.size(); ++i) {
    r.shards[i].file =
        model_state::shard_name(i, r.shards.size(), /*single_file_if_one_shard=*/true);
  }
}

// The inputs of `g` in the order the bytes of its output `name` take them: traced back through
// the ops that make it, each op's inputs in the op's order, every step to an earlier stage (a
// name a later stage makes again is the earlier one's there); inputs it does not read come last.
std::vector<std::string> inputs_in_op_order(const PlannedGroup& g, const std::string& name) {
  std::multimap<std::string, const PlannedOp*> makers;
  for (const PlannedOp& op : g.ops) {
    for (const std::string& o : op.outputs) makers.emplace(o, &op);
  }
  std::vector<std::string> order;
  std::set<std::string> seen;
  // (name, the stages it may come from are below this), the next to trace last.
  std::vector<std::pair<std::string, size_t>> todo{{name, SIZE_MAX}};
  while (!todo.empty()) {
    const auto [k, below] = std::move(todo.back());
    todo.pop_back();
    const PlannedOp* maker = nullptr;
    for (auto [it, end] = makers.equal_range(k); it != end; ++it) {
      if (it->second->stage < below && (maker == nullptr || it->second->stage > maker->stage)) {
        maker = it->second;
      }
    }
    if (maker == nullptr) {
      if (g.group.inputs.contains(k) && seen.insert(k).second) order.push_back(k);
      continue;
    }
    for (auto in = maker->inputs.rbegin(); in != maker->inputs.rend(); ++in) {
      todo.emplace_back(*in, maker->stage);
    }
  }
  for (const std::string& k : g.group.inputs) {
    if (seen.insert(k).second) order.push_back(k);
  }
  return order;
}

// Every group with its ops, in stream order.
void find_ops(PlanResult& r) {
  const OpIndex index(r.conversion.mapper);
  if (r.read) {
    for (const model_state::GroupPlan& g : r.read->groups) {
      r.details.push_back(
          {g.group, g.inputs, g.input_bytes, g.output_bytes, index.ops_of(g.group, g.inputs)});
    }
    return;
  }
  for (const mapper::StateGroup& g : r.conversion.mapper->state_dependency_groups()) {
    r.details.push_back({g, {}, 0, 0, index.ops_of(g, {})});
  }
}

// The ops that read whole inputs of which only part was wanted, as "op (output)".
std::vector<std::string> not_narrowed(const model_state::ReadPlan& read) {
  std::vector<std::string> out;
  for (const model_state::GroupPlan& g : read.groups) {
    for (const std::string& op : g.not_narrowed) {
      out.push_back(op + " (for " + *g.group.outputs.begin() + ")");
    }
  }
  return out;
}

RankPlan rank_plan(const io::Checkpoint& checkpoint, const mapper::ModelStateMapper& m,
                   int64_t tp_rank, std::optional<int64_t> ep_rank) {
  const model_state::ReadPlan read = model_state::plan_read(checkpoint, m);
  return {tp_rank,
          ep_rank,
          read.read_bytes,
          read.output_bytes,
          read.peak_bytes(model_state::ReadOptions{}.memory_budget),
          not_narrowed(read)};
}

// PlanResult::ranks.
void plan_ranks(PlanResult& r, const PlanOptions& options) {
  const auto& params = r.conversion.mapping.params;
  const auto tp = params.find("tp");
  if (r.conversion.reverse || !options.spec || tp == params.end() || tp->second.value <= 1) return;
  const std::string text = load_spec(*options.spec, options.checkpoint).text;
  Params given = options.params;
  given["tp"] = tp->second.value;
  const int size = static_cast<int>(tp->second.value);
  for (int rank = 0; rank < size; ++rank) {
    // Each rank's params as mpirun would give them (Note [a rank's share] in common.cpp).
    const std::optional<Params> p = per_rank_params(text, given, rank, size);
    if (!p) return;  // no tp_rank in the spec, or --set gave one
    const Conversion c =
        make_conversion(options.checkpoint, options.spec, false, *p, options.allow_lossy);
    const auto ep_rank = p->find("ep_rank");
    r.ranks.push_back(rank_plan(r.checkpoint, *c.mapper, rank,
                                ep_rank == p->end() ? std::nullopt
                                                    : std::optional<int64_t>(ep_rank->second)));
  }
}

PlanResult plan(const PlanOptions& options) {
  // (Braces: the checkpoint is opened first, as its errors come first.)
  PlanResult r{io::Checkpoint::open(options.checkpoint),
               make_conversion(options.checkpoint, options.spec, options.reverse, options.params,
                               options.allow_lossy)};
  r.shard_size = options.shard_size;
  const mapper::ModelStateMapper& m = *r.conversion.mapper;
  r.groups = m.state_dependency_groups().size();
  // Coverage first: inputs the mapper needs that the checkpoint lacks.
  for (const std::string& in : mapper::all_inputs(m)) {
    if (!r.checkpoint.contains(in)) r.missing.push_back(in);
  }
  std::set<std::string> consumed;
  for (const mapper::StateGroup& g : m.state_dependency_groups()) {
    consumed.insert(g.inputs.begin(), g.inputs.end());
  }
  for (const std::string& key : r.checkpoint.keys()) {
    if (!consumed.contains(key)) r.unconsumed.push_back(key);
  }
  if (r.missing.empty()) {
    r.read = model_state::plan_read(r.checkpoint, m);
    lay_out_shards(r);
    mapper::SpecDict out;
    for (const PlannedOutput& o : r.outputs) out.emplace(o.name, o.spec);
    r.quantized_outputs = mapper::find_quantized_pairs(out, r.conversion.quantization);
  }
  find_ops(r);
  if (r.read) plan_ranks(r, options);
  if (r.read) {
    std::map<std::string, const PlannedGroup*> detail_of;  // by output
    for (const PlannedGroup& g : r.details) {
      for (const std::string& o : g.group.outputs) detail_of.emplace(o, &g);
    }
    for (PlannedOutput& o : r.outputs) {
      auto it = detail_of.find(o.name);
      o.inputs = it == detail_of.end()
                     ? std::vector<std::string>(o.from.inputs.begin(), o.from.inputs.end())
                     : inputs_in_op_order(*it->second, o.name);
    }
  }
  return r;
}

// Bytes read per byte of output (1 when nothing is made).
double amplification(int64_t read, int64_t output) {
  return output > 0 ? static_cast<double>(read) / static_cast<double>(output) : 1.0;
}

nlohmann::ordered_json pair_json(const mapper::QuantizedPair& p) {
  nlohmann::ordered_json q = {
      {"weight", p.weight}, {"format", quant_format_name(p.format)}, {"scale", p.scale}};
  if (!p.global_scale.empty()) q["global_scale"] = p.global_scale;
  if (p.misfit.empty()) {
    q["logical_shape"] = p.logical_shape.vec();
  } else {
    q["misfit"] = p.misfit;
  }
  return q;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

nlohmann::ordered_json spec_json(const std::string& name, const mapper::TensorSpec& spec) {
  return {{"name", name},
          {"dtype", dtype_name(spec.dtype)},
          {"shape", spec.shape.vec()},
          {"bytes", spec.nbytes()}};
}

// Per checkpoint file: the tensors and bytes the conversion reads from it.
nlohmann::ordered_json reads_json(const PlanResult& r) {
  std::map<std::string, std::pair<int64_t, int64_t>> per_file;  // tensors, bytes
  for (const std::string& key : r.checkpoint.keys()) {
    if (std::binary_search(r.unconsumed.begin(), r.unconsumed.end(), key)) continue;
    const io::CheckpointEntry e = r.checkpoint.entry(key);
    auto& [tensors, bytes] = per_file[*e.file];
    ++tensors;
    bytes += e.info->nbytes();
  }
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& [file, tb] : per_file) {
    out.push_back({{"file", file}, {"tensors", tb.first}, {"bytes", tb.second}});
  }
  return out;
}

// Every group in stream order: its inputs (with their files), its ops in the order they run,
// each with its inputs in the op's order and its inferred outputs, and its outputs.
nlohmann::ordered_json groups_json(const PlanResult& r) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const PlannedGroup& g : r.details) {
    nlohmann::ordered_json inputs = nlohmann::ordered_json::array();
    for (const std::string& name : g.group.inputs) {
      nlohmann::ordered_json in = {{"name", name}};
      if (auto it = g.inputs.find(name); it != g.inputs.end()) in = spec_json(name, it->second);
      if (r.checkpoint.contains(name)) in["file"] = *r.checkpoint.entry(name).file;
      inputs.push_back(std::move(in));
    }
    nlohmann::ordered_json ops = nlohmann::ordered_json::array();
    for (const PlannedOp& op : g.ops) {
      nlohmann::ordered_json outs = nlohmann::ordered_json::array();
      for (const std::string& name : op.outputs) {
        auto it = op.output_specs.find(name);
        outs.push_back(it == op.output_specs.end() ? nlohmann::ordered_json{{"name", name}}
                                                   : spec_json(name, it->second));
      }
      ops.push_back({{"op", op.op},
                     {"stage", op.stage},
                     {"inputs", op.inputs},
                     {"outputs", std::move(outs)},
                     {"describe", op.describe}});
    }
    out.push_back(
        {{"inputs", std::move(inputs)},
         {"ops", std::move(ops)},
         {"outputs", std::vector<std::string>(g.group.outputs.begin(), g.group.outputs.end())},
         {"input_bytes", g.input_bytes},
         {"output_bytes", g.output_bytes}});
  }
  return out;
}

// ---- --dot --------------------------------------------------------------------------------------

// `lines` as one DOT string: quoted, with '"' and '\\' escaped, the lines joined by DOT's "\n".
std::string dot_quoted(std::initializer_list<std::string> lines) {
  std::string out = "\"";
  for (const std::string& line : lines) {
    if (out.size() > 1) out += "\\n";
    for (char c : line) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
  }
  return out + "\"";
}

// The mapping graph: one cluster per group; tensors are ellipses (name, dtype, shape), ops boxes;
// an op's input edges are numbered in the op's order when it has several.
void print_dot(const PlanResult& r) {
  std::cout << "digraph d9d_plan {\n"
            << "  rankdir=LR;\n"
            << "  node [fontname=\"Helvetica\", fontsize=10];\n"
            << "  edge [fontname=\"Helvetica\", fontsize=8];\n";
  for (size_t gi = 0; gi < r.details.size(); ++gi) {
    const PlannedGroup& g = r.details[gi];
    std::cout << "  subgraph cluster_" << gi << " {\n"
              << "    label=" << dot_quoted({d9d::detail::str_cat("group ", gi + 1)}) << ";\n"
              << "    style=dashed; color=gray;\n";
    // The node of a tensor: a key gets a new node each time an op produces it (`made`); the
    // group's outputs are filled.
    std::map<std::string, std::string> node_of;
    size_t next = 0;
    auto tensor = [&](const std::string& name, const mapper::TensorSpec* spec, bool fresh,
                      bool made) {
      auto it = node_of.find(name);
      if (it != node_of.end() && !fresh) return it->second;
      const std::string id = d9d::detail::str_cat("g", gi, "t", next++);
      node_of[name] = id;
      const bool out = made && g.group.outputs.count(name) != 0;
      std::cout << "    " << id << " [shape=ellipse"
                << (out ? ", style=filled, fillcolor=\"#e8f0fe\"" : "") << ", label="
                << (spec ? dot_quoted({name, d9d::detail::str_cat(*spec)}) : dot_quoted({name}))
                << "];\n";
      return id;
    };
    for (const std::string& name : g.group.inputs) {
      auto it = g.inputs.find(name);
      tensor(name, it == g.inputs.end() ? nullptr : &it->second, true, false);
    }
    for (size_t oi = 0; oi < g.ops.size(); ++oi) {
      const PlannedOp& op = g.ops[oi];
      const std::string id = d9d::detail::str_cat("g", gi, "op", oi);
      std::cout << "    " << id << " [shape=box, style=rounded, label=" << dot_quoted({op.op})
                << ", tooltip=" << dot_quoted({op.describe}) << "];\n";
      for (size_t i = 0; i < op.inputs.size(); ++i) {
        const std::string from = tensor(op.inputs[i], nullptr, false, false);
        std::cout << "    " << from << " -> " << id;
        if (op.inputs.size() > 1) std::cout << " [label=\"" << i << "\"]";
        std::cout << ";\n";
      }
      for (const std::string& name : op.outputs) {
        auto it = op.output_specs.find(name);
        const std::string to =
            tensor(name, it == op.output_specs.end() ? nullptr : &it->second, true, true);
        std::cout << "    " << id << " -> " << to << ";\n";
      }
    }
    std::cout << "  }\n";
  }
  std::cout << "}\n";
}

void print_json(const PlanResult& r) {
  const Conversion& c = r.conversion;
  nlohmann::ordered_json j;
  j["checkpoint"] = r.checkpoint.dir().string();
  j["spec"] = c.sidecar.spec_origin;
  j["reverse"] = c.reverse;
  if (!c.lossy_note.empty()) j["lossy_note"] = c.lossy_note;
  j["ok"] = r.ok();
  j["groups"] = r.groups;
  if (r.read) {
    j["input_bytes"] = r.read->input_bytes;
    j["output_bytes"] = r.read->output_bytes;
    // Note [slice pushdown]: what the run reads of the files, and the ops that read more than
    // their outputs need.
    j["read_bytes"] = r.read->read_bytes;
    j["read_amplification"] = amplification(r.read->read_bytes, r.read->output_bytes);
    j["peak_host_bytes"] = r.read->peak_bytes(model_state::ReadOptions{}.memory_budget);
    j["not_narrowed"] = not_narrowed(*r.read);
    nlohmann::ordered_json ranks = nlohmann::ordered_json::array();
    for (const RankPlan& rank : r.ranks) {
      nlohmann::ordered_json one = {{"tp_rank", rank.tp_rank}};
      if (rank.ep_rank) one["ep_rank"] = *rank.ep_rank;
      one["read_bytes"] = rank.read_bytes;
      one["output_bytes"] = rank.output_bytes;
      one["read_amplification"] = amplification(rank.read_bytes, rank.output_bytes);
      one["peak_host_bytes"] = rank.peak_bytes;
      one["not_narrowed"] = rank.not_narrowed;
      ranks.push_back(std::move(one));
    }
    j["ranks"] = std::move(ranks);
    nlohmann::ordered_json outs = nlohmann::ordered_json::array();
    for (const PlannedOutput& o : r.outputs) {
      outs.push_back({{"name", o.name},
                      {"dtype", dtype_name(o.spec.dtype)},
                      {"shape", o.spec.shape.vec()},
                      {"bytes", o.spec.nbytes()},
                      {"file", r.shards[o.shard].file},
                      {"inputs", o.inputs}});
    }
    j["outputs"] = std::move(outs);
    nlohmann::ordered_json sh = nlohmann::ordered_json::array();
    for (const PlannedShard& s : r.shards) {
      sh.push_back({{"file", s.file}, {"tensors", s.tensors}, {"bytes", s.bytes}});
    }
    j["shard_size"] = r.shard_size;
    j["shards"] = std::move(sh);
  }
  j["missing_inputs"] = r.missing;
  j["tensors_too_large"] = r.too_large;
  j["unmatched_keys"] = c.mapping.unmatched_keys;
  j["unmatched_policy"] = policy_name(c.mapping.unmatched);
  j["unconsumed_keys"] = r.unconsumed;
  j["unused_rules"] = c.mapping.unused_rules;
  j["unlisted_tensors"] = r.checkpoint.unlisted_tensors();  // Note [unlisted tensors]
  nlohmann::ordered_json in = nlohmann::ordered_json::array();
  for (const mapper::QuantizedPair& p : c.quantized) in.push_back(pair_json(p));
  j["quantized_inputs"] = std::move(in);
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const mapper::QuantizedPair& p : r.quantized_outputs) out.push_back(pair_json(p));
  j["quantized_outputs"] = std::move(out);
  j["notes"] = c.mapping.notes;
  nlohmann::ordered_json params = nlohmann::ordered_json::object();
  for (const auto& [name, p] : c.mapping.params) {
    params[name] = {{"value", p.value}, {"from", p.origin}};
  }
  j["params"] = std::move(params);
  j["coverage"] = {{"checkpoint_tensors", r.checkpoint.keys().size()},
                   {"read", r.checkpoint.keys().size() - r.unconsumed.size()},
                   {"not_read", r.unconsumed.size()},
                   {"missing_inputs", r.missing.size()},
                   {"unmatched_keys", c.mapping.unmatched_keys.size()},
                   {"unused_rules", c.mapping.unused_rules.size()}};
  j["reads"] = reads_json(r);
  j["group_details"] = groups_json(r);
  std::cout << j.dump(1) << "\n";
}

// The dtype and shape column of an output: a quantized weight kept packed shows its format and
// logical shape (its scales are folded into it and not listed); nullopt for a folded scale.
std::optional<std::pair<std::string, std::string>> output_columns(
    const PlanResult& r, const std::map<std::string, size_t>& folded, const PlannedOutput& o) {
  if (auto it = folded.find(o.name); it != folded.end()) {
    const mapper::QuantizedPair& p = r.quantized_outputs[it->second];
    if (p.weight != o.name) return std::nullopt;
    return std::pair{std::string(quant_format_name(p.format)), format_shape(p.logical_shape)};
  }
  return std::pair{std::string(dtype_name(o.spec.dtype)), format_shape(o.spec.shape)};
}

void print_outputs(const PlanResult& r) {
  const std::map<std::string, size_t> folded = quantized_keys(r.quantized_outputs);
  size_t w_name = 4;
  size_t w_dtype = 5;
  size_t w_shape = 5;
  for (const PlannedOutput& o : r.outputs) {
    const auto columns = output_columns(r, folded, o);
    if (!columns) continue;
    w_name = std::max(w_name, o.name.size());
    w_dtype = std::max(w_dtype, columns->first.size());
    w_shape = std::max(w_shape, columns->second.size());
  }
  auto pad = [](std::string s, size_t w) {
    if (s.size() < w) s.append(w - s.size(), ' ');
    return s;
  };
  std::cout << "outputs, in write order:\n"
            << "  " << pad("name", w_name) << "  " << pad("dtype", w_dtype) << "  "
            << pad("shape", w_shape) << "  shard  from\n";
  for (const PlannedOutput& o : r.outputs) {
    const auto columns = output_columns(r, folded, o);
    if (!columns) continue;
    const mapper::StateGroup& g = o.from;
    const bool same = g.inputs.size() == 1 && g.outputs.size() == 1 && *g.inputs.begin() == o.name;
    std::cout << "  " << pad(o.name, w_name) << "  " << pad(columns->first, w_dtype) << "  "
              << pad(columns->second, w_shape) << "  " << pad(std::to_string(o.shard + 1), 5)
              << "  " << (same ? "=" : join(o.inputs)) << "\n";
  }
  if (!r.quantized_outputs.empty()) {
    std::cout << "  ("
              << count_of(static_cast<int64_t>(r.quantized_outputs.size()), "quantized weight")
              << " kept packed, each shown as its format and logical shape, its scales with it)\n";
  }
  std::cout << "\nshards (--shard-size " << format_bytes(r.shard_size) << "):\n";
  for (const PlannedShard& s : r.shards) {
    std::cout << "  " << s.file << "  " << count_of(s.tensors, "tensor") << ", "
              << format_bytes(s.bytes) << "\n";
  }
}

void print_coverage(const PlanResult& r) {
  const Conversion& c = r.conversion;
  std::cout << "\ncoverage:\n";
  auto list = [](const std::vector<std::string>& names, size_t limit = 20) {
    std::string out;
    for (size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", " : "") + names[i];
    if (names.size() > limit) out += ", ... (" + std::to_string(names.size() - limit) + " more)";
    return out;
  };
  std::cout << "  missing inputs: "
            << (r.missing.empty() ? "none"
                                  : std::to_string(r.missing.size()) + ": " + list(r.missing))
            << "\n";
  std::cout << "  unmatched keys (policy " << policy_name(c.mapping.unmatched) << "): "
            << (c.mapping.unmatched_keys.empty() ? "none"
                                                 : std::to_string(c.mapping.unmatched_keys.size()) +
                                                       ": " + list(c.mapping.unmatched_keys))
            << "\n";
  if (!r.unconsumed.empty()) {
    std::cout << "  checkpoint keys not read: " << r.unconsumed.size() << ": " << list(r.unconsumed)
              << "\n";
  }
  std::cout << "  rules that matched nothing: "
            << (c.mapping.unused_rules.empty() ? "none"
                                               : std::to_string(c.mapping.unused_rules.size()))
            << "\n";
  for (const std::string& rule : c.mapping.unused_rules) std::cout << "    " << rule << "\n";
  for (const std::string& note : c.mapping.notes) std::cout << "  note: " << note << "\n";
  if (!r.too_large.empty()) {
    std::cout << "  tensors larger than a shard (each gets a shard of its own): "
              << r.too_large.size() << ": " << list(r.too_large) << "\n";
  }
}

void print_not_narrowed(const std::vector<std::string>& ops) {
  if (ops.empty()) return;
  std::cout << "  not narrowed: " << ops.size()
            << " op(s) read their whole inputs for part of their outputs:\n";
  for (size_t i = 0; i < ops.size() && i < 10; ++i) std::cout << "    " << ops[i] << "\n";
  if (ops.size() > 10) std::cout << "    ... (" << ops.size() - 10 << " more)\n";
}

// Note [slice pushdown]: every rank's reads, beside the checkpoint's size.
void print_ranks(const PlanResult& r) {
  if (r.ranks.empty()) return;
  const int64_t sharded = r.read->input_bytes;
  std::cout << "  per rank (tp = " << r.ranks.size() << "; bytes read from the files, and per byte "
            << "of the rank's outputs):\n";
  std::cout << "    rank  reads       of the inputs  amplification  peak host memory  "
               "not narrowed\n";
  for (const RankPlan& rank : r.ranks) {
    char line[160];
    std::snprintf(
        line, sizeof line, "    %-4lld  %-10s  %12.3f   %12.3f   %-16s  %zu\n",
        static_cast<long long>(rank.tp_rank), format_bytes(rank.read_bytes).c_str(),
        sharded > 0 ? static_cast<double>(rank.read_bytes) / static_cast<double>(sharded) : 0.0,
        amplification(rank.read_bytes, rank.output_bytes), format_bytes(rank.peak_bytes).c_str(),
        rank.not_narrowed.size());
    std::cout << line;
  }
}

void print_text(const PlanResult& r) {
  const Conversion& c = r.conversion;
  const io::Checkpoint& ck = r.checkpoint;
  std::cout << "plan: " << ck.dir().string()
            << (c.reverse ? " through the inverse of " : " through ")
            << (c.sidecar.spec_origin.empty() ? std::string("the recorded spec")
                                              : c.sidecar.spec_origin)
            << "\n";
  if (!c.mapping.description.empty()) std::cout << "  " << c.mapping.description << "\n";
  if (!c.lossy_note.empty()) std::cout << "  note: " << c.lossy_note << "\n";
  std::cout << "  checkpoint: " << ck.keys().size() << " tensors, "
            << format_bytes(ck.total_bytes()) << " in " << ck.files().size() << " file"
            << (ck.files().size() == 1 ? "" : "s") << "\n";
  std::cout << "  groups:     " << r.groups << "\n";
  if (!c.quantized.empty()) {
    std::map<std::string, int64_t> per_format;
    for (const mapper::QuantizedPair& p : c.quantized) ++per_format[quantized_format_str(p)];
    std::cout << "  quantized:  " << count_of(static_cast<int64_t>(c.quantized.size()), "weight");
    for (const auto& [format, count] : per_format) std::cout << ", " << format << " " << count;
    if (c.quantization)
      std::cout << " (config.json: quant_method " << c.quantization->quant_method << ")";
    std::cout << "\n";
  }
  if (!c.mapping.params.empty()) {
    std::cout << "  params:     ";
    const char* sep = "";
    for (const auto& [name, p] : c.mapping.params) {
      std::cout << sep << name << " = " << p.value << " (" << p.origin << ")";
      sep = ", ";
    }
    std::cout << "\n";
  }
  if (r.read) {
    std::cout << "  reads:      " << r.read->files.size() << " file"
              << (r.read->files.size() == 1 ? "" : "s") << ", " << format_bytes(r.read->read_bytes);
    if (r.read->read_bytes != r.read->input_bytes) {
      std::cout << " of the inputs' " << format_bytes(r.read->input_bytes)
                << " (only the parts the outputs need)";
    }
    std::cout << "\n";
    std::cout << "  writes:     " << r.outputs.size() << " tensors, "
              << format_bytes(r.read->output_bytes) << " in " << r.shards.size() << " shard"
              << (r.shards.size() == 1 ? "" : "s") << " of at most " << format_bytes(r.shard_size)
              << "\n";
    print_not_narrowed(not_narrowed(*r.read));
    print_ranks(r);
    std::cout << "\n";
    print_outputs(r);
  }
  print_coverage(r);
  std::cout << (r.ok() ? "plan: ok\n" : "plan: this conversion would fail\n");
}

}  // namespace

int run_plan(const PlanOptions& options) {
  const PlanResult r = plan(options);
  warn_unlisted(r.checkpoint);
  if (options.dot) {
    print_dot(r);
  } else if (options.json) {
    print_json(r);
  } else {
    print_text(r);
  }
  return r.ok() ? kExitOk : kExitFailure;
}

Command add_plan(CLI::App& app) {
  auto options = std::make_shared<PlanOptions>();
  CLI::App* command = app.add_subcommand(
      "plan", "Dry run of a conversion from metadata alone: outputs, shards, coverage");
  command->add_option("checkpoint", options->checkpoint, "Source checkpoint")->required();
  command->add_option("--spec", options->spec,
                      std::string("The spec (original -> converted): ") + kSpecHelp);
  command->add_flag("--reverse", options->reverse,
                    "Plan undoing the conversion that wrote CHECKPOINT (uses its " +
                        std::string(kSidecarFileName) + ")");
  command->add_flag("--allow-lossy", options->allow_lossy,
                    "With --reverse: undo casts that lost values too (as convert --allow-lossy)");
  add_set_option(*command, options->params);
  add_size_option(*command, "--shard-size", options->shard_size,
                  "Most tensor bytes per output shard");
  command->add_flag("--json", options->json,
                    "Print JSON: groups with their ops, inferred outputs, shards, coverage, reads");
  command
      ->add_flag("--dot", options->dot,
                 "Print the mapping graph for Graphviz (inputs -> ops -> outputs, a cluster per "
                 "group)")
      ->excludes("--json");
  return {command, [options] {
            if (!options->spec && !options->reverse) {
              return usage_error("plan", "--spec is required (except with --reverse)");
            }
            if (options->allow_lossy && !options->reverse) {
              return usage_error("plan", "--allow-lossy goes with --reverse");
            }
            return run_plan(*options);
          }};
}

}  // namespace d9d::cli
