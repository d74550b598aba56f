// sequential: stages run one after another, reported as their net dependency groups.
//
// Note [near-linear sequential]
// The reference fills gaps stage by stage (fine), then traces every group of the last stage back
// through every group of every earlier stage and merges the traces pairwise until nothing changes:
// quadratic in the number of groups, hours for 100,000 tensors. Here each stage gets hash maps
// key -> consuming node and key -> producing node (a node is one group of the stage's mapper or
// one gap-filling pass-through), and one union-find pass over "node consumes what node produced"
// yields the net groups as connected components. Only nodes that lead to the last stage take part
// (the reference's trace starts from the last stage too), so a group whose outputs no later stage
// uses does not tie groups together. The same pass records, per net group, the nodes to run in
// each stage, so apply() touches only its own group's nodes instead of scanning every stage.
// Where the reference is undefined (groups without inputs in a later stage crash its trace; two
// last-stage groups without outputs overwrite each other) this keeps every group, and puts all
// groups without inputs into one net group, since apply() could not tell them apart.
#include <d9d/mapper/compose.hpp>

#include <algorithm>
#include <numeric>
#include <unordered_set>

#include "internal.hpp"

namespace d9d::mapper {

using d9d::detail::str_cat;

struct SequentialMapper::Plan {
  struct Stage {
    const ModelStateMapper* mapper;
    std::vector<const StateGroup*> groups;      // nodes 0 .. groups.size()-1
    std::vector<std::string_view> passthrough;  // nodes groups.size() .. (keys passed unchanged)
    size_t first_node = 0;                      // global id of node 0
    size_t size() const { return groups.size() + passthrough.size(); }
  };
  struct Node {
    uint32_t stage;
    uint32_t index;
  };
  std::vector<Stage> stages;
  std::vector<const StateGroup*> net_groups;  // by net index
  std::vector<size_t> node_offsets;           // net index -> its nodes, in stage order
  std::vector<Node> nodes;
  std::unordered_map<std::string_view, uint32_t> routes;  // an input key -> net index
  std::optional<uint32_t> no_input_net;
};

namespace {

using KeyMap = std::unordered_map<std::string_view, uint32_t>;  // key -> node index in a stage

struct UnionFind {
  std::vector<size_t> parent;
  explicit UnionFind(size_t n) : parent(n) { std::iota(parent.begin(), parent.end(), size_t{0}); }
  size_t find(size_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  }
  void unite(size_t a, size_t b) {
    a = find(a);
    b = find(b);
    if (a != b) parent[std::max(a, b)] = std::min(a, b);
  }
};

[[noreturn]] void throw_stage_collision(size_t stage, const ModelStateMapper& mapper,
                                        std::vector<std::string_view> keys, bool inputs,
                                        const char* why) {
  std::sort(keys.begin(), keys.end());
  throw ValueError(str_cat("sequential: stage ", stage, " (", mapper.describe(),
                           "): found colliding ", inputs ? "input" : "output", " keys ",
                           detail::keys_str(keys), ": ", why));
}

}  // namespace

SequentialMapper::~SequentialMapper() = default;

SequentialMapper::SequentialMapper(std::vector<MapperPtr> mappers) {
  for (size_t i = 0; i < mappers.size(); ++i) {
    D9D_CHECK(mappers[i] != nullptr, "sequential: mapper ", i, " is null");
  }
  stages_ = filter_empty_mappers(mappers);
  D9D_CHECK(!stages_.empty(),
            "sequential: the mappers list cannot be empty; pass at least one "
            "mapper with inputs or outputs");
  auto plan = std::make_unique<Plan>();
  const size_t n_stages = stages_.size();
  std::vector<KeyMap> consumer(n_stages), producer(n_stages);

  // Index every stage; a stage's own groups must not share keys (parallel() guarantees this, a
  // user-defined mapper might not).
  for (size_t s = 0; s < n_stages; ++s) {
    Plan::Stage stage{stages_[s].get(), {}, {}, 0};
    const auto& groups = stages_[s]->state_dependency_groups();
    stage.groups.reserve(groups.size());
    consumer[s].reserve(groups.size());
    producer[s].reserve(groups.size());
    for (const auto& group : groups) {
      const auto node = static_cast<uint32_t>(stage.groups.size());
      stage.groups.push_back(&group);
      std::vector<std::string_view> clash;
      for (const auto& k : group.inputs) {
        if (!consumer[s].emplace(k, node).second) clash.push_back(k);
      }
      if (!clash.empty()) {
        throw_stage_collision(s, *stages_[s], clash, true, "two of its groups consume them");
      }
      for (const auto& k : group.outputs) {
        if (!producer[s].emplace(k, node).second) clash.push_back(k);
      }
      if (!clash.empty()) {
        throw_stage_collision(s, *stages_[s], clash, false, "two of its groups produce them");
      }
    }
    plan->stages.push_back(std::move(stage));
  }
  auto add_passthrough = [&](size_t s, std::string_view key) {
    Plan::Stage& stage = plan->stages[s];
    const auto node = static_cast<uint32_t>(stage.size());
    stage.passthrough.push_back(key);
    consumer[s].emplace(key, node);
    producer[s].emplace(key, node);
  };

  // Gap filling, bottom to top: what stage s needs and stage s-1 does not produce passes
  // through stage s-1 (unless stage s-1 consumes it: a key goes to one consumer per stage).
  for (size_t s = n_stages - 1; s >= 1; --s) {
    std::vector<std::string_view> needed, clash;
    for (const auto& [key, node] : consumer[s]) {
      if (producer[s - 1].count(key)) continue;
      (consumer[s - 1].count(key) ? clash : needed).push_back(key);
    }
    if (!clash.empty()) {
      throw_stage_collision(s - 1, *stages_[s - 1], clash, true,
                            "this stage consumes them but a later stage needs them too");
    }
    std::sort(needed.begin(), needed.end());
    for (auto key : needed) add_passthrough(s - 1, key);
  }
  // Top to bottom: what stage s produces and stage s+1 does not consume passes through s+1.
  for (size_t s = 0; s + 1 < n_stages; ++s) {
    std::vector<std::string_view> needed, clash;
    for (const auto& [key, node] : producer[s]) {
      if (consumer[s + 1].count(key)) continue;
      (producer[s + 1].count(key) ? clash : needed).push_back(key);
    }
    if (!clash.empty()) {
      throw_stage_collision(s + 1, *stages_[s + 1], clash, false,
                            "this stage produces them while the same keys from the stage before "
                            "would pass through it");
    }
    std::sort(needed.begin(), needed.end());
    for (auto key : needed) add_passthrough(s + 1, key);
  }

  size_t n_nodes = 0;
  for (auto& stage : plan->stages) {
    stage.first_node = n_nodes;
    n_nodes += stage.size();
  }
  auto for_each_key = [&](const Plan::Stage& stage, uint32_t node, bool inputs, auto&& fn) {
    if (node < stage.groups.size()) {
      const StateGroup& g = *stage.groups[node];
      for (const auto& k : inputs ? g.inputs : g.outputs) fn(std::string_view(k));
    } else {
      fn(stage.passthrough[node - stage.groups.size()]);
    }
  };

  // Liveness: a node takes part when something of it reaches the last stage.
  std::vector<char> live(n_nodes, 0);
  {
    const Plan::Stage& last = plan->stages.back();
    std::fill(live.begin() + static_cast<std::ptrdiff_t>(last.first_node), live.end(), 1);
  }
  for (size_t s = n_stages - 1; s >= 1; --s) {
    const Plan::Stage& stage = plan->stages[s - 1];
    const Plan::Stage& next = plan->stages[s];
    for (uint32_t node = 0; node < stage.size(); ++node) {
      bool reaches = false;
      for_each_key(stage, node, false, [&](std::string_view key) {
        auto it = consumer[s].find(key);
        reaches = reaches || (it != consumer[s].end() && live[next.first_node + it->second]);
      });
      live[stage.first_node + node] = reaches;
    }
  }

  // Net groups: connected components of live nodes under "consumes what that node produced".
  UnionFind uf(n_nodes);
  for (size_t s = 1; s < n_stages; ++s) {
    const Plan::Stage& stage = plan->stages[s];
    const Plan::Stage& prev = plan->stages[s - 1];
    for (uint32_t node = 0; node < stage.size(); ++node) {
      if (!live[stage.first_node + node]) continue;
      for_each_key(stage, node, true, [&](std::string_view key) {
        auto it = producer[s - 1].find(key);
        D9D_ASSERT(it != producer[s - 1].end());  // gap filling made every input produced
        uf.unite(stage.first_node + node, prev.first_node + it->second);
      });
    }
  }
  // Components without inputs cannot be routed apart: merge them into one.
  std::vector<char> has_inputs(n_nodes, 0);
  for (uint32_t node = 0; node < plan->stages[0].size(); ++node) {
    if (!live[node]) continue;
    bool any = false;
    for_each_key(plan->stages[0], node, true, [&](std::string_view) { any = true; });
    if (any) has_inputs[uf.find(node)] = 1;
  }
  std::optional<size_t> no_input_root;
  for (size_t id = 0; id < n_nodes; ++id) {
    if (!live[id] || uf.find(id) != id || has_inputs[id]) continue;
    if (no_input_root) {
      uf.unite(*no_input_root, id);
      no_input_root = uf.find(id);
    } else {
      no_input_root = id;
    }
  }

  // Number the components, collect their keys and their nodes (stage order, via counting sort).
  std::vector<uint32_t> net_of(n_nodes, UINT32_MAX);
  std::vector<uint32_t> root_net(n_nodes, UINT32_MAX);
  uint32_t n_nets = 0;
  for (size_t id = 0; id < n_nodes; ++id) {
    if (!live[id]) continue;
    const size_t root = uf.find(id);
    if (root_net[root] == UINT32_MAX) root_net[root] = n_nets++;
    net_of[id] = root_net[root];
  }
  std::vector<std::vector<std::string_view>> net_inputs(n_nets), net_outputs(n_nets);
  std::vector<size_t> counts(n_nets + 1, 0);
  for (size_t s = 0; s < n_stages; ++s) {
    const Plan::Stage& stage = plan->stages[s];
    for (uint32_t node = 0; node < stage.size(); ++node) {
      const uint32_t net = net_of[stage.first_node + node];
      if (net == UINT32_MAX) continue;
      ++counts[net + 1];
      if (s == 0) {
        for_each_key(stage, node, true, [&](std::string_view k) { net_inputs[net].push_back(k); });
      }
      if (s + 1 == n_stages) {
        for_each_key(stage, node, false,
                     [&](std::string_view k) { net_outputs[net].push_back(k); });
      }
    }
  }
  std::partial_sum(counts.begin(), counts.end(), counts.begin());
  plan->node_offsets = counts;
  plan->nodes.resize(counts.back());
  for (size_t s = 0; s < n_stages; ++s) {
    const Plan::Stage& stage = plan->stages[s];
    for (uint32_t node = 0; node < stage.size(); ++node) {
      const uint32_t net = net_of[stage.first_node + node];
      if (net != UINT32_MAX) {
        plan->nodes[counts[net]++] = Plan::Node{static_cast<uint32_t>(s), node};
      }
    }
  }

  plan->net_groups.resize(n_nets, nullptr);
  for (uint32_t net = 0; net < n_nets; ++net) {
    StateGroup group{{net_inputs[net].begin(), net_inputs[net].end()},
                     {net_outputs[net].begin(), net_outputs[net].end()}};
    if (group.inputs.empty() && group.outputs.empty()) continue;  // does nothing
    const StateGroup& stored = *groups_.insert(std::move(group)).first;
    plan->net_groups[net] = &stored;
    if (stored.inputs.empty()) plan->no_input_net = net;
    for (const auto& k : stored.inputs) plan->routes.emplace(k, net);
  }
  plan_ = std::move(plan);
}

template <class Dict, class Call>
Dict SequentialMapper::run(Dict group, Call call) const {
  const Plan& plan = *plan_;
  const std::optional<uint32_t> net = find_net(detail::first_key(group));
  if (!net || !detail::same_keys(group, plan.net_groups[*net]->inputs)) {
    detail::throw_undefined_group(*this, group);
  }
  Dict current = std::move(group);
  const size_t end = plan.node_offsets[*net + 1];
  size_t i = plan.node_offsets[*net];
  while (i < end) {
    const uint32_t s = plan.nodes[i].stage;
    const Plan::Stage& stage = plan.stages[s];
    Dict next;
    for (; i < end && plan.nodes[i].stage == s; ++i) {
      const uint32_t node = plan.nodes[i].index;
      if (node >= stage.groups.size()) {
        auto handle = current.extract(std::string(stage.passthrough[node - stage.groups.size()]));
        D9D_ASSERT(!handle.empty());
        next.insert(std::move(handle));
        continue;
      }
      const StateGroup& g = *stage.groups[node];
      Dict sub;
      for (const auto& k : g.inputs) {
        auto handle = current.extract(k);
        D9D_ASSERT(!handle.empty());
        sub.insert(sub.end(), std::move(handle));
      }
      Dict out = call(*stage.mapper, std::move(sub));
      detail::check_group_outputs(*stage.mapper, g, out, "apply");
      next.merge(out);
    }
    current = std::move(next);  // keys no node of this group consumed were bound for dead ends
  }
  return current;
}

// Note [slice pushdown] (region.cpp) through the stages: a forward pass of infer() gives each
// node the specs of its inputs, then the boxes go backwards a stage at a time, each node turning
// the boxes its outputs are wanted in into boxes of its inputs; a key passed through keeps its box.
RegionDict SequentialMapper::input_regions(const SpecDict& inputs, const RegionDict& wanted,
                                           std::vector<std::string>* whole) const {
  const Plan& plan = *plan_;
  const std::optional<uint32_t> net = find_net(detail::first_key(inputs));
  if (!net || !detail::same_keys(inputs, plan.net_groups[*net]->inputs)) {
    detail::throw_undefined_group(*this, inputs);
  }
  const size_t first = plan.node_offsets[*net];
  const size_t last = plan.node_offsets[*net + 1];
  std::vector<SpecDict> node_inputs(last - first);
  SpecDict current = inputs;
  for (size_t i = first; i < last;) {
    const uint32_t s = plan.nodes[i].stage;
    const Plan::Stage& stage = plan.stages[s];
    SpecDict next;
    for (; i < last && plan.nodes[i].stage == s; ++i) {
      const uint32_t node = plan.nodes[i].index;
      if (node >= stage.groups.size()) {
        next.insert(current.extract(std::string(stage.passthrough[node - stage.groups.size()])));
        continue;
      }
      SpecDict& sub = node_inputs[i - first];
      for (const auto& k : stage.groups[node]->inputs) sub.insert(current.extract(k));
      next.merge(stage.mapper->infer(sub));
    }
    current = std::move(next);
  }
  RegionDict after = wanted;
  for (size_t j = last; j > first;) {
    const uint32_t s = plan.nodes[j - 1].stage;
    const Plan::Stage& stage = plan.stages[s];
    RegionDict before;
    for (; j > first && plan.nodes[j - 1].stage == s; --j) {
      const uint32_t node = plan.nodes[j - 1].index;
      if (node >= stage.groups.size()) {
        const std::string key(stage.passthrough[node - stage.groups.size()]);
        if (const auto it = after.find(key); it != after.end())
          before.insert_or_assign(key, it->second);
        continue;
      }
      RegionDict sub;
      for (const auto& k : stage.groups[node]->outputs) {
        if (const auto it = after.find(k); it != after.end()) sub.emplace(k, it->second);
      }
      for (auto& [k, r] : stage.mapper->input_regions(node_inputs[j - 1 - first], sub, whole)) {
        before.insert_or_assign(k, std::move(r));
      }
    }
    after = std::move(before);
  }
  return after;
}

std::optional<uint32_t> SequentialMapper::find_net(std::optional<std::string_view> key) const {
  if (!key) return plan_->no_input_net;
  const auto it = plan_->routes.find(*key);
  return it == plan_->routes.end() ? std::nullopt : std::optional<uint32_t>(it->second);
}

// A chain of views is a view: the net group moves data when one of its nodes does.
bool SequentialMapper::moves_data(const StateGroup& group) const {
  const Plan& plan = *plan_;
  const std::optional<uint32_t> net = find_net(detail::first_key(group.inputs));
  if (!net || plan.net_groups[*net]->inputs != group.inputs) return true;  // not a group
  for (size_t i = plan.node_offsets[*net]; i < plan.node_offsets[*net + 1]; ++i) {
    const Plan::Stage& stage = plan.stages[plan.nodes[i].stage];
    const uint32_t node = plan.nodes[i].index;
    if (node < stage.groups.size() && stage.mapper->moves_data(*stage.groups[node])) return true;
  }
  return false;
}

StateDict SequentialMapper::apply(StateDict group) const {
  return run(std::move(group),
             [](const ModelStateMapper& m, StateDict g) { return m.apply(std::move(g)); });
}

SpecDict SequentialMapper::infer(const SpecDict& group) const {
  return run(SpecDict(group),
             [](const ModelStateMapper& m, const SpecDict& g) { return m.infer(g); });
}

MapperPtr SequentialMapper::do_inverse(const SpecDict& input_specs) const {
  // Stage s's inverse gets the specs that reach stage s: the input specs carried forward through
  // the earlier stages by infer() (keys a stage does not consume pass through it).
  std::vector<MapperPtr> inverses(stages_.size());
  SpecDict specs = input_specs;
  for (size_t s = 0; s < stages_.size(); ++s) {
    inverses[stages_.size() - 1 - s] = stages_[s]->inverse(specs);
    if (input_specs.empty() || s + 1 == stages_.size()) continue;
    SpecDict next;
    for (const auto& g : stages_[s]->state_dependency_groups()) {
      if (!std::all_of(g.inputs.begin(), g.inputs.end(),
                       [&](const std::string& k) { return specs.count(k) != 0; })) {
        continue;  // a stage further on that needs these specs says so
      }
      SpecDict sub;
      for (const auto& k : g.inputs) sub.insert(specs.extract(k));
      SpecDict out = stages_[s]->infer(sub);
      next.merge(out);
    }
    next.merge(specs);  // what the stage did not consume passes through it
    specs = std::move(next);
  }
  return std::make_shared<SequentialMapper>(std::move(inverses));
}

std::string SequentialMapper::describe() const {
  return str_cat("sequential(", stages_.size(), " stages, ", groups_.size(), " groups)");
}

MapperPtr sequential(std::vector<MapperPtr> mappers) {
  return std::make_shared<SequentialMapper>(std::move(mappers));
}

}  // namespace d9d::mapper
