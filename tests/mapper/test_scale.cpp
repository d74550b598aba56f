// Scale: a 126-layer MoE-like conversion of about 100,000 tensors builds, groups and shards
// correctly. (How long it takes is measured by bench/mapper, not asserted here.)
#include <doctest/doctest.h>

#include "helpers.hpp"
#include "moe_graph.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::mapper::test;

TEST_CASE("a 100k-tensor MoE conversion groups, shards and applies correctly") {
  const moe::Size size{126, 261};
  const std::vector<std::string> keys = moe::keys(size);
  REQUIRE(keys.size() == size.tensors());
  CHECK(keys.size() > 99'000);
  moe::Stages st = moe::stages(size, keys);
  MapperPtr m = sequential({parallel(st.renames), parallel(st.fusions)});
  const auto& groups = m->state_dependency_groups();
  CHECK(groups.size() == moe::expected_groups(size));
  CHECK(all_inputs(*m).size() == keys.size());

  // The expert stack of layer 77 consumes exactly its 261 experts' up projections.
  std::set<std::string> up;
  for (int e = 0; e < size.experts; ++e) {
    up.insert(d9d::detail::str_cat("model.layers.77.mlp.experts.", e, ".up_proj.weight"));
  }
  CHECK(groups.count(StateGroup{up, {"layers.77.moe.up"}}) == 1);
  CHECK(groups.count(StateGroup{
            {"model.layers.5.self_attn.q_proj.weight", "model.layers.5.self_attn.k_proj.weight",
             "model.layers.5.self_attn.v_proj.weight"},
            {"layers.5.attn.qkv"}}) == 1);
  CHECK(groups.count(StateGroup{{"model.layers.125.mlp.gate.weight"}, {"layers.125.gate"}}) == 1);

  // Shards partition the groups, in the reference's order.
  std::set<StateGroup> seen;
  size_t total = 0;
  for (int r = 0; r < 8; ++r) {
    MapperPtr s = shard(m, 8, r);
    total += s->state_dependency_groups().size();
    seen.insert(s->state_dependency_groups().begin(), s->state_dependency_groups().end());
  }
  CHECK(total == groups.size());
  CHECK(seen == groups);
  size_t i = 0;
  for (const auto& g : groups) {
    if (i++ % 8 == 3) CHECK(shard(m, 8, 3)->state_dependency_groups().count(g) == 1);
    if (i > 200) break;
  }

  // Apply one expert stack with tiny tensors.
  StateDict in;
  for (const auto& k : up) in.emplace(k, Tensor::full<float>({2}, 1.0f, DType::F32));
  StateDict out = m->apply(std::move(in));
  REQUIRE(out.size() == 1);
  CHECK(out.at("layers.77.moe.up").shape() == Shape{261, 2});
  SpecDict specs;
  for (const auto& k : up) specs.emplace(k, TensorSpec{DType::BF16, {4, 8}});
  CHECK(m->infer(specs).at("layers.77.moe.up") == TensorSpec{DType::BF16, {261, 4, 8}});

  // The same conversion from a spec file.
  SpecMapping from = from_spec(moe::kSpec, keys);
  CHECK(from.unused_rules.empty());
  CHECK(from.mapper->state_dependency_groups() == groups);
}
