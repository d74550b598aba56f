// Builds a mapper graph described in JSON (stdin) and prints its net groups and shards (stdout),
// for reference_parity.py to compare with the reference Python d9d on the same graph.
//
//   in:  {"stages": [[OP, ...], ...], "shards": N}
//        OP = {"op": "rename", "from": a, "to": b} | {"op": "identity", "name": a}
//           | {"op": "stack" | "concat", "sources": [...], "target": t}
//           | {"op": "chunk" | "unstack", "source": s, "targets": [...]}
//   out: {"groups": [[inputs, outputs], ...]  (StateGroup order),
//         "shards": [[[inputs, outputs], ...] per shard]}   or   {"error": "ValueError"}
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include <d9d/mapper.hpp>

using namespace d9d::mapper;
using Json = nlohmann::json;

namespace {

MapperPtr build_op(const Json& op) {
  const std::string kind = op.at("op");
  if (kind == "rename") return rename_tensor(op.at("from"), op.at("to"));
  if (kind == "identity") return identity(op.at("name"));
  if (kind == "stack") return stack_tensors(op.at("sources"), op.at("target"), 0);
  if (kind == "concat") return concatenate_tensors(op.at("sources"), op.at("target"), 0);
  if (kind == "chunk") return chunk_tensors(op.at("source"), op.at("targets"), 0);
  if (kind == "unstack") return unstack_tensors(op.at("source"), op.at("targets"), 0);
  throw std::runtime_error("graph_tool: unknown op " + kind);
}

Json groups_json(const ModelStateMapper& m) {
  Json out = Json::array();
  for (const auto& g : m.state_dependency_groups()) {
    out.push_back(Json::array({Json(g.inputs), Json(g.outputs)}));
  }
  return out;
}

}  // namespace

int main() {
  const Json in = Json::parse(std::cin);
  Json out;
  try {
    std::vector<MapperPtr> stages;
    for (const auto& stage : in.at("stages")) {
      std::vector<MapperPtr> ops;
      for (const auto& op : stage) ops.push_back(build_op(op));
      stages.push_back(parallel(std::move(ops)));
    }
    MapperPtr m = stages.size() == 1 ? stages[0] : sequential(std::move(stages));
    out["groups"] = groups_json(*m);
    out["shards"] = Json::array();
    for (int s = 0; s < in.at("shards").get<int>(); ++s) {
      out["shards"].push_back(groups_json(*shard(m, in.at("shards"), s)));
    }
  } catch (const d9d::ValueError& e) {
    out = {{"error", "ValueError"}, {"message", e.what()}};
  }
  std::cout << out.dump() << "\n";
  return 0;
}
