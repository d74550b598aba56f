// Compose mappers and adapters: the reference suite's compose tests (ported with the same
// expectations), then gap filling and merging edge cases, shards, inverses and adapters.
#include <doctest/doctest.h>

#include "helpers.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::mapper::test;

// ---- ported from test_mappers.py ----------------------------------------------------------------

TEST_CASE(
    "parallel routes each group to its mapper and rejects collisions "
    "(test_parallel_composition)") {
  MapperPtr m1 = rename_tensor("a", "x");
  MapperPtr m2 = rename_tensor("b", "y");
  MapperPtr par = parallel({m1, m2});
  CHECK(par->state_dependency_groups() == groups({group({"a"}, {"x"}), group({"b"}, {"y"})}));
  CHECK_THROWS_WITH_AS(par->apply({{"a", scalar(1)}, {"b", scalar(1)}}),
                       doctest::Contains("undefined group"), ValueError);
  StateDict res = par->apply({{"a", scalar(1)}});
  CHECK(keys(res) == std::set<std::string>{"x"});
  CHECK(res.at("x").item<int64_t>() == 1);
  res = par->apply({{"b", scalar(1)}});
  CHECK(keys(res) == std::set<std::string>{"y"});
  CHECK(res.at("y").item<int64_t>() == 1);
  MapperPtr m3 = rename_tensor("a", "z");  // 'a' is already consumed by m1
  CHECK_THROWS_WITH_AS(parallel({m1, m3}), doctest::Contains("colliding input"), ValueError);
}

TEST_CASE("sequential fills gaps and merges net groups (test_sequential_composition_gap_filling)") {
  MapperPtr seq = sequential({rename_tensor("a", "temp"), merge_add("temp", "b", "result")});
  CHECK(seq->state_dependency_groups() == groups({group({"a", "b"}, {"result"})}));
  StateDict out = seq->apply({{"a", scalar(10)}, {"b", scalar(5)}});
  CHECK(out.at("result").item<int64_t>() == 15);
}

TEST_CASE("sequential chains renames into one group (test_sequential_composition_chaining)") {
  MapperPtr seq = sequential({rename_tensor("a", "b"), rename_tensor("b", "c")});
  CHECK(seq->state_dependency_groups() == groups({group({"a"}, {"c"})}));
  CHECK(seq->apply({{"a", scalar(1)}}).at("c").item<int64_t>() == 1);
}

TEST_CASE("shard deals out groups by sorted inputs, index % total (test_shard_mapper)") {
  std::vector<MapperPtr> renames;
  for (int i = 0; i < 4; ++i) {
    renames.push_back(
        rename_tensor(d9d::detail::str_cat("in_", i), d9d::detail::str_cat("out_", i)));
  }
  MapperPtr par = parallel(renames);
  CHECK(shard(par, 2, 0)->state_dependency_groups() ==
        groups({group({"in_0"}, {"out_0"}), group({"in_2"}, {"out_2"})}));
  CHECK(shard(par, 2, 1)->state_dependency_groups() ==
        groups({group({"in_1"}, {"out_1"}), group({"in_3"}, {"out_3"})}));
}

TEST_CASE("prefix_scope with both prefixes (test_prefix_scope_mapper_both_prefixes)") {
  MapperPtr m = prefix_scope(merge_add("weight", "bias", "out"), "src.layers.0.", "tgt.layers.0.");
  CHECK(m->state_dependency_groups() ==
        groups({group({"src.layers.0.weight", "src.layers.0.bias"}, {"tgt.layers.0.out"})}));
  StateDict res = m->apply({{"src.layers.0.weight", scalar(10)}, {"src.layers.0.bias", scalar(5)}});
  CHECK(keys(res) == std::set<std::string>{"tgt.layers.0.out"});
  CHECK(res.at("tgt.layers.0.out").item<int64_t>() == 15);
}

TEST_CASE("prefix_scope with a source prefix only (test_prefix_scope_mapper_source_only)") {
  MapperPtr m = prefix_scope(merge_add("weight", "bias", "out"), "model.layers.", "");
  CHECK(m->state_dependency_groups() ==
        groups({group({"model.layers.weight", "model.layers.bias"}, {"out"})}));
  StateDict res = m->apply({{"model.layers.weight", scalar(10)}, {"model.layers.bias", scalar(5)}});
  CHECK(keys(res) == std::set<std::string>{"out"});
  CHECK(res.at("out").item<int64_t>() == 15);
}

TEST_CASE("prefix_scope with a target prefix only (test_prefix_scope_mapper_target_only)") {
  MapperPtr m = prefix_scope(merge_add("weight", "bias", "out"), "", "target_model.");
  CHECK(m->state_dependency_groups() == groups({group({"weight", "bias"}, {"target_model.out"})}));
  StateDict res = m->apply({{"weight", scalar(10)}, {"bias", scalar(5)}});
  CHECK(keys(res) == std::set<std::string>{"target_model.out"});
  CHECK(res.at("target_model.out").item<int64_t>() == 15);
}

// ---- parallel -----------------------------------------------------------------------------------

TEST_CASE("parallel names colliding output keys and both mappers") {
  CHECK_THROWS_WITH_AS(parallel({rename_tensor("a", "x"), rename_tensor("b", "x")}),
                       doctest::Contains("colliding output keys [x]"), ValueError);
  try {
    parallel({rename_tensor("a", "x"), rename_tensor("a", "y")});
    FAIL("expected a collision");
  } catch (const ValueError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("[a]") != std::string::npos);
    CHECK(msg.find("rename_tensor(a -> x)") != std::string::npos);
    CHECK(msg.find("rename_tensor(a -> y)") != std::string::npos);
  }
}

TEST_CASE("parallel drops empty mappers and flattens nested groups") {
  MapperPtr empty = parallel({});
  CHECK(empty->state_dependency_groups().empty());
  CHECK(filter_empty_mappers({empty, identity("a")}).size() == 1);
  MapperPtr nested = parallel({parallel({identity("a"), identity("b")}), empty, identity("c")});
  CHECK(nested->state_dependency_groups().size() == 3);
  CHECK(nested->apply({{"b", scalar(2)}}).at("b").item<int64_t>() == 2);
  CHECK_THROWS_AS(parallel({nullptr}), ValueError);
}

TEST_CASE("parallel checks what a user-defined sub-mapper returns") {
  struct Liar final : ModelStateMapper {
    Liar() { groups_.insert(StateGroup{{"a"}, {"b"}}); }
    StateDict apply(StateDict group) const override { return {{"c", group.at("a")}}; }
  };
  MapperPtr par = parallel({std::make_shared<Liar>()});
  CHECK_THROWS_WITH_AS(par->apply({{"a", scalar(1)}}), doctest::Contains("returned the keys [c]"),
                       ValueError);
}

// ---- sequential ---------------------------------------------------------------------------------

TEST_CASE("sequential: an empty list is an error") {
  CHECK_THROWS_WITH_AS(sequential({}), doctest::Contains("cannot be empty"), ValueError);
  CHECK_THROWS_AS(sequential({parallel({})}), ValueError);
}

TEST_CASE("sequential passes untouched keys through later stages and earlier ones") {
  // Stage 0 renames a; stage 1 transposes c, which stage 0 never saw; b passes both stages.
  MapperPtr seq =
      sequential({parallel({rename_tensor("a", "a2"), identity("b")}), transpose("c", 0, 1)});
  CHECK(seq->state_dependency_groups() ==
        groups({group({"a"}, {"a2"}), group({"b"}, {"b"}), group({"c"}, {"c"})}));
  StateDict out = seq->apply({{"c", ints({1, 2, 3, 4, 5, 6}, {2, 3})}});
  CHECK(equal(out.at("c"), ints({1, 4, 2, 5, 3, 6}, {3, 2})));
  CHECK(keys(seq->apply({{"a", scalar(1)}})) == std::set<std::string>{"a2"});
}

TEST_CASE("sequential merges groups that meet in a later stage, and only those") {
  // {q}, {k}, {v} renamed, then stacked: one group. {o} stays apart.
  MapperPtr seq = sequential({parallel({rename_tensor("hf.q", "q"), rename_tensor("hf.k", "k"),
                                        rename_tensor("hf.v", "v"), rename_tensor("hf.o", "o")}),
                              stack_tensors({"q", "k", "v"}, "qkv", 0)});
  CHECK(seq->state_dependency_groups() ==
        groups({group({"hf.q", "hf.k", "hf.v"}, {"qkv"}), group({"hf.o"}, {"o"})}));
  StateDict out = seq->apply(
      {{"hf.q", ints({1, 2}, {2})}, {"hf.k", ints({3, 4}, {2})}, {"hf.v", ints({5, 6}, {2})}});
  CHECK(equal(out.at("qkv"), ints({1, 2, 3, 4, 5, 6}, {3, 2})));
  CHECK(seq->infer({{"hf.q", {DType::F32, {2}}},
                    {"hf.k", {DType::F32, {2}}},
                    {"hf.v", {DType::F32, {2}}}}) == SpecDict{{"qkv", {DType::F32, {3, 2}}}});
  CHECK_THROWS_WITH_AS(seq->apply({{"hf.q", scalar(1)}}), doctest::Contains("undefined group"),
                       ValueError);
}

TEST_CASE("sequential merges through a split then a join across three stages") {
  // a -> (a0, a1), b -> (b0, b1); then (a1, b0) joined; the net groups must tie a and b.
  MapperPtr seq =
      sequential({parallel({chunk_tensors("a", {"a0", "a1"}, 0),
                            chunk_tensors("b", {"b0", "b1"}, 0), identity("c")}),
                  concatenate_tensors({"a1", "b0"}, "ab", 0), rename_tensor("c", "c2")});
  CHECK(seq->state_dependency_groups() ==
        groups({group({"a", "b"}, {"a0", "ab", "b1"}), group({"c"}, {"c2"})}));
  StateDict out = seq->apply({{"a", ints({1, 2, 3, 4}, {4})}, {"b", ints({5, 6, 7, 8}, {4})}});
  CHECK(equal(out.at("ab"), ints({3, 4, 5, 6}, {4})));
  CHECK(equal(out.at("a0"), ints({1, 2}, {2})));
  CHECK(equal(out.at("b1"), ints({7, 8}, {2})));
}

TEST_CASE("sequential: a key a stage consumes cannot also pass it to a later stage") {
  CHECK_THROWS_WITH_AS(sequential({rename_tensor("a", "b"), identity("a")}),
                       doctest::Contains("colliding input keys [a]"), ValueError);
  // A stage that produces a key passing through it from the stage before.
  CHECK_THROWS_WITH_AS(sequential({rename_tensor("a", "x"), rename_tensor("b", "x")}),
                       doctest::Contains("colliding output keys [x]"), ValueError);
}

TEST_CASE("sequential of one stage reports that stage's groups") {
  MapperPtr inner = parallel({rename_tensor("a", "b"), stack_tensors({"c", "d"}, "e", 0)});
  CHECK(sequential({inner})->state_dependency_groups() == inner->state_dependency_groups());
}

TEST_CASE("sequential does not tie groups through an output no later stage uses") {
  // A stage-1 sink consumes a1 and b1 and produces nothing: the reference's trace never reaches
  // it, so {a} and {b} stay separate groups.
  struct Sink final : ModelStateMapper {
    Sink() { groups_.insert(StateGroup{{"a1", "b1"}, {}}); }
    StateDict apply(StateDict) const override { return {}; }
  };
  MapperPtr seq = sequential(
      {parallel({chunk_tensors("a", {"a0", "a1"}, 0), chunk_tensors("b", {"b0", "b1"}, 0)}),
       parallel({std::make_shared<Sink>(), identity("a0"), identity("b0")}),
       parallel({rename_tensor("a0", "x"), rename_tensor("b0", "y")})});
  CHECK(seq->state_dependency_groups() == groups({group({"a"}, {"x"}), group({"b"}, {"y"})}));
  CHECK(equal(seq->apply({{"a", ints({1, 2}, {2})}}).at("x"), ints({1}, {1})));
}

TEST_CASE("sequential applies many groups independently and in any order") {
  std::vector<MapperPtr> first, second;
  for (int i = 0; i < 50; ++i) {
    const std::string n = std::to_string(i);
    first.push_back(rename_tensor(d9d::detail::str_cat("in.", n), d9d::detail::str_cat("mid.", n)));
    second.push_back(unsqueeze(d9d::detail::str_cat("mid.", n), 0));
  }
  MapperPtr seq = sequential({parallel(first), parallel(second)});
  CHECK(seq->state_dependency_groups().size() == 50);
  for (int i = 49; i >= 0; i -= 7) {
    const std::string n = std::to_string(i);
    StateDict out = seq->apply({{d9d::detail::str_cat("in.", n), ints({i, i}, {2})}});
    CHECK(out.at(d9d::detail::str_cat("mid.", n)).shape() == Shape{1, 2});
    CHECK(out.at(d9d::detail::str_cat("mid.", n)).to_vector<int64_t>() ==
          std::vector<int64_t>{i, i});
  }
}

// ---- shard --------------------------------------------------------------------------------------

TEST_CASE("shard: the shards partition the groups and apply only their own") {
  std::vector<MapperPtr> ms;
  for (int i = 0; i < 10; ++i) ms.push_back(identity(d9d::detail::str_cat("k", i)));
  MapperPtr par = parallel(ms);
  std::set<StateGroup> all;
  for (int s = 0; s < 3; ++s) {
    MapperPtr sh = shard(par, 3, s);
    for (const auto& g : sh->state_dependency_groups()) CHECK(all.insert(g).second);
  }
  CHECK(all == par->state_dependency_groups());
  // Sorted inputs: k0 k1 k2 ... k9 are dealt 0, 1, 2, 0, ...
  CHECK(shard(par, 3, 1)->state_dependency_groups() ==
        groups({group({"k1"}, {"k1"}), group({"k4"}, {"k4"}), group({"k7"}, {"k7"})}));
  CHECK(shard(par, 3, 1)->apply({{"k4", scalar(4)}}).at("k4").item<int64_t>() == 4);
  CHECK_THROWS_WITH_AS(shard(par, 3, 1)->apply({{"k0", scalar(0)}}),
                       doctest::Contains("undefined group"), ValueError);
  CHECK_THROWS_AS(shard(par, 0, 0), ValueError);
  CHECK_THROWS_AS(shard(par, 2, 2), ValueError);
  CHECK_THROWS_AS(shard(par, 2, -1), ValueError);
}

TEST_CASE("shard orders groups by their sorted inputs as the reference's sorted()") {
  // Python: sorted([["b"], ["a", "z"], ["a"]]) == [["a"], ["a", "z"], ["b"]].
  MapperPtr par = parallel({identity("b"), stack_tensors({"z", "a"}, "s", 0), identity("a2")});
  MapperPtr s0 = shard(par, 3, 0), s1 = shard(par, 3, 1), s2 = shard(par, 3, 2);
  CHECK(s0->state_dependency_groups() == groups({group({"a", "z"}, {"s"})}));
  CHECK(s1->state_dependency_groups() == groups({group({"a2"}, {"a2"})}));
  CHECK(s2->state_dependency_groups() == groups({group({"b"}, {"b"})}));
}

TEST_CASE("shard's inverse handles the groups that read its outputs") {
  MapperPtr par = parallel({stack_tensors({"q", "k"}, "qk", 0), rename_tensor("a", "b"),
                            chunk_tensors("w", {"w0", "w1"}, 0)});
  for (int s = 0; s < 2; ++s) {
    MapperPtr sh = shard(par, 2, s);
    MapperPtr inv = sh->inverse();
    std::set<std::string> produced = all_outputs(*sh), read = all_inputs(*inv);
    CHECK(produced == read);
  }
}

// ---- prefix_scope -------------------------------------------------------------------------------

TEST_CASE("prefix_scope rejects keys outside its source prefix and inverts scoped") {
  MapperPtr m = prefix_scope(rename_tensor("w", "weight"), "layers.0.", "blocks.0.");
  CHECK_THROWS_WITH_AS(m->apply({{"w", scalar(1)}}), doctest::Contains("undefined group"),
                       ValueError);
  MapperPtr inv = m->inverse();
  CHECK(inv->state_dependency_groups() == groups({group({"blocks.0.weight"}, {"layers.0.w"})}));
  MapperPtr c = prefix_scope(cast("w", DType::F32), "m.", "m.");
  CHECK_THROWS_AS(c->inverse(), NotInvertibleError);
  MapperPtr ci = c->inverse({{"m.w", {DType::BF16, {2}}}, {"other", {DType::F32, {1}}}});
  CHECK(ci->infer({{"m.w", {DType::F32, {2}}}}) == SpecDict{{"m.w", {DType::BF16, {2}}}});
}

// ---- adapters and whole-state helpers -----------------------------------------------------------

TEST_CASE("identity adapters cover every output, state key and name") {
  MapperPtr m = parallel({stack_tensors({"a", "b"}, "ab", 0), rename_tensor("c", "d")});
  MapperPtr ids = identity_mapper_from_mapper_outputs(m);
  CHECK(ids->state_dependency_groups() == groups({group({"ab"}, {"ab"}), group({"d"}, {"d"})}));
  StateDict state{{"x", scalar(1)}, {"y", scalar(2)}};
  CHECK(identity_mapper_from_state(state)->state_dependency_groups() ==
        groups({group({"x"}, {"x"}), group({"y"}, {"y"})}));
  CHECK(identity_mapper_from_names({"p", "q"})->state_dependency_groups().size() == 2);
  CHECK_THROWS_WITH_AS(identity_mapper_from_names({"p", "p"}), doctest::Contains("colliding input"),
                       ValueError);
}

TEST_CASE("apply_all runs every group of a mapper on an in-memory state") {
  MapperPtr m =
      sequential({parallel({rename_tensor("a", "t"), identity("b")}), merge_add("t", "b", "r")});
  StateDict out = apply_all(*m, {{"a", scalar(2)}, {"b", scalar(3)}, {"unused", scalar(0)}});
  CHECK(keys(out) == std::set<std::string>{"r"});
  CHECK(out.at("r").item<int64_t>() == 5);
  CHECK_THROWS_WITH_AS(apply_all(*m, {{"a", scalar(2)}}), doctest::Contains("missing"), ValueError);
  CHECK(infer_all(*m, {{"a", {DType::I64, {}}}, {"b", {DType::I64, {}}}}) ==
        SpecDict{{"r", {DType::I64, {}}}});
}

TEST_CASE("StateGroup orders, compares and hashes by value") {
  const StateGroup a = group({"a"}, {"x"}), b = group({"a", "b"}, {"x"}), c = group({"b"}, {});
  CHECK(a < b);
  CHECK(b < c);
  CHECK(a == group({"a"}, {"x"}));
  CHECK(std::hash<StateGroup>{}(a) == std::hash<StateGroup>{}(group({"a"}, {"x"})));
  CHECK(std::hash<StateGroup>{}(group({"a"}, {})) != std::hash<StateGroup>{}(group({}, {"a"})));
  CHECK(to_string(b) == "{a, b} -> {x}");
}
