// Spec files: patterns and captures, every op, stages, unmatched policies, malformed specs (the
// error names the JSON path), and the example specs in examples/specs against realistic keys.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include <d9d/mapper/json.hpp>

#include "helpers.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::mapper::test;
using d9d::detail::str_cat;

namespace {

std::string read_example(const std::string& name) {
  const std::string path = std::string(D9D_SOURCE_ROOT) + "/examples/specs/" + name;
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open ", path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The SpecError of from_spec(json, keys), checked to carry `path` and `text` in its message;
// returns the message.
std::string check_spec_error(const std::string& json, const std::vector<std::string>& keys,
                             const std::string& path, const std::string& text) {
  try {
    from_spec(json, keys);
    FAIL("expected a SpecError at ", path);
  } catch (const SpecError& e) {
    INFO(std::string(e.what()));
    CHECK(e.path() == path);
    CHECK(std::string(e.what()).find(text) != std::string::npos);
    CHECK(std::string(e.what()).find(path) != std::string::npos);
    return e.what();
  }
  return {};
}

std::string repeat(const std::string& s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

std::string one_rule(const std::string& rule) {
  return R"({"d9d_mapper_spec": 1, "rules": [)" + rule + "]}";
}

// A Llama checkpoint's keys and specs: hidden h, q rows, kv rows, intermediate i.
SpecDict llama_specs(int layers, int64_t h, int64_t q, int64_t kv, int64_t inter, bool tied) {
  SpecDict s;
  const DType bf16 = DType::BF16;
  s["model.embed_tokens.weight"] = {bf16, {1000, h}};
  s["model.norm.weight"] = {bf16, {h}};
  if (!tied) s["lm_head.weight"] = {bf16, {1000, h}};
  for (int l = 0; l < layers; ++l) {
    const std::string p = str_cat("model.layers.", l, ".");
    s[p + "self_attn.q_proj.weight"] = {bf16, {q, h}};
    s[p + "self_attn.k_proj.weight"] = {bf16, {kv, h}};
    s[p + "self_attn.v_proj.weight"] = {bf16, {kv, h}};
    s[p + "self_attn.o_proj.weight"] = {bf16, {h, q}};
    s[p + "mlp.gate_proj.weight"] = {bf16, {inter, h}};
    s[p + "mlp.up_proj.weight"] = {bf16, {inter, h}};
    s[p + "mlp.down_proj.weight"] = {bf16, {h, inter}};
    s[p + "input_layernorm.weight"] = {bf16, {h}};
    s[p + "post_attention_layernorm.weight"] = {bf16, {h}};
  }
  return s;
}

std::vector<std::string> names_of(const SpecDict& specs) {
  std::vector<std::string> out;
  for (const auto& kv : specs) out.push_back(kv.first);
  return out;
}

StateDict data_for(const SpecDict& specs) {
  StateDict out;
  for (const auto& [k, s] : specs) out.emplace(k, random_values(s.shape, s.dtype));
  return out;
}

}  // namespace

// ---- patterns and ops ---------------------------------------------------------------------------

TEST_CASE("a spec rule with a capture expands against the actual keys") {
  SpecMapping m = from_spec(one_rule(R"({"op": "rename_tensor",
      "source": "model.layers.{L}.self_attn.q_proj.weight", "target": "layers.{L}.attn.q.weight"})"),
                            {"model.layers.0.self_attn.q_proj.weight",
                             "model.layers.11.self_attn.q_proj.weight", "model.norm.weight"});
  CHECK(m.mapper->state_dependency_groups() ==
        groups({group({"model.layers.0.self_attn.q_proj.weight"}, {"layers.0.attn.q.weight"}),
                group({"model.layers.11.self_attn.q_proj.weight"}, {"layers.11.attn.q.weight"}),
                group({"model.norm.weight"}, {"model.norm.weight"})}));
  CHECK(m.unmatched_keys == std::vector<std::string>{"model.norm.weight"});
  CHECK(m.unused_rules.empty());
}

TEST_CASE("captures: within a segment, over several segments, repeated names") {
  SpecMapping m = from_spec(one_rule(R"({"op": "rename_tensor", "source": "h.{L}.experts_{E}.w",
                                         "target": "layers.{L}.e.{E}.w"})"),
                            {"h.3.experts_12.w", "h.3.experts_.w", "h.3.xexperts_1.w"});
  CHECK(all_outputs(*m.mapper) ==
        std::set<std::string>{"layers.3.e.12.w", "h.3.experts_.w", "h.3.xexperts_1.w"});
  m = from_spec(
      one_rule(R"({"op": "rename_tensor", "source": "model.{rest...}", "target": "{rest}"})"),
      {"model.a", "model.b.c.d", "model", "other.x"});
  CHECK(all_outputs(*m.mapper) == std::set<std::string>{"a", "b.c.d", "model", "other.x"});
  m = from_spec(
      one_rule(R"({"op": "rename_tensor", "source": "{rest...}.bias", "target": "b.{rest}"})"),
      {"x.y.bias", "bias"});
  CHECK(all_outputs(*m.mapper) == std::set<std::string>{"b.x.y", "bias"});
  m = from_spec(one_rule(R"({"op": "rename_tensor", "source": "{A}.{A}.w", "target": "{A}.w"})"),
                {"a.a.w", "a.b.w"});
  CHECK(all_outputs(*m.mapper) == std::set<std::string>{"a.w", "a.b.w"});
}

TEST_CASE("every leaf op is available in a spec, with the spec's shapes") {
  const std::string json = R"({"d9d_mapper_spec": 1, "unmatched": "error", "rules": [
    {"op": "identity", "source": "id"},
    {"op": "rename_tensor", "source": "old", "target": "new"},
    {"op": "select_child_modules", "parent": "enc.{L}", "base_names": ["w", "b"]},
    {"op": "transpose", "source": "t", "target": "t2", "dims": [0, 1]},
    {"op": "permute", "source": "p", "dims": [2, 0, 1]},
    {"op": "squeeze", "source": "sq"},
    {"op": "squeeze", "source": "sq1", "dim": 0},
    {"op": "unsqueeze", "source": "us", "dim": -1},
    {"op": "reshape", "source": "r", "shape": [-1]},
    {"op": "cast", "source": "c", "dtype": "BF16"},
    {"op": "stack_tensors", "sources": ["s.a", "s.b"], "target": "s", "dim": 1},
    {"op": "concatenate_tensors", "sources": ["cat.a", "cat.b"], "target": "cat"},
    {"op": "unstack_tensors", "source": "u", "targets": ["u.0", "u.1"]},
    {"op": "chunk_tensors", "source": "ch", "targets": ["ch.0", "ch.1"], "dim": -1},
    {"op": "split_tensors", "source": "qkv", "targets": ["q", "k", "v"], "sizes": [4, 2, 2]}
  ]})";
  const DType f = DType::F32;
  const SpecDict in{{"id", {f, {2}}},       {"old", {f, {2}}},      {"enc.0.w", {f, {3}}},
                    {"t", {f, {2, 3}}},     {"p", {f, {2, 3, 4}}},  {"sq", {f, {1, 3, 1}}},
                    {"sq1", {f, {1, 3}}},   {"us", {f, {3}}},       {"r", {f, {2, 3}}},
                    {"c", {f, {2}}},        {"s.a", {f, {2}}},      {"s.b", {f, {2}}},
                    {"cat.a", {f, {1, 2}}}, {"cat.b", {f, {3, 2}}}, {"u", {f, {2, 5}}},
                    {"ch", {f, {3, 4}}},    {"qkv", {f, {8, 16}}},  {"enc.0.b", {f, {3}}}};
  SpecMapping m = from_spec(json, names_of(in));
  const SpecDict out = infer_all(*m.mapper, in);
  const SpecDict want{{"id", {f, {2}}},      {"new", {f, {2}}},         {"w", {f, {3}}},
                      {"b", {f, {3}}},       {"t2", {f, {3, 2}}},       {"p", {f, {4, 2, 3}}},
                      {"sq", {f, {3}}},      {"sq1", {f, {3}}},         {"us", {f, {3, 1}}},
                      {"r", {f, {6}}},       {"c", {DType::BF16, {2}}}, {"s", {f, {2, 2}}},
                      {"cat", {f, {4, 2}}},  {"u.0", {f, {5}}},         {"u.1", {f, {5}}},
                      {"ch.0", {f, {3, 2}}}, {"ch.1", {f, {3, 2}}},     {"q", {f, {4, 16}}},
                      {"k", {f, {2, 16}}},   {"v", {f, {2, 16}}}};
  CHECK(out == want);
  StateDict data = apply_all(*m.mapper, data_for(in));
  CHECK(specs_of(data) == want);
}

TEST_CASE("stack over a capture orders experts numerically and checks none is missing") {
  std::vector<std::string> keys;
  for (int l = 0; l < 2; ++l) {
    for (int e = 0; e < 12; ++e) keys.push_back(str_cat("layers.", l, ".experts.", e, ".w1"));
  }
  const std::string rule =
      R"({"op": "stack_tensors", "source": "layers.{L}.experts.{E}.w1", "over": "E",
                               "target": "layers.{L}.moe.w1", "dim": 0})";
  SpecMapping m = from_spec(one_rule(rule), keys);
  CHECK(m.mapper->state_dependency_groups().size() == 2);
  auto stack = std::dynamic_pointer_cast<const ParallelMapper>(m.mapper);
  REQUIRE(stack);
  auto first = std::dynamic_pointer_cast<const StackTensorsMapper>(stack->mappers()[0]);
  REQUIRE(first);
  CHECK(first->sources()[2] == "layers.0.experts.2.w1");  // 2 before 10
  CHECK(first->sources()[11] == "layers.0.experts.11.w1");
  keys.erase(keys.begin() + 5);  // layer 0 loses expert 5
  check_spec_error(one_rule(rule), keys, "$.rules[0]", "expected 0..10 with none missing");
  // Unstack back with a count.
  SpecMapping back = from_spec(one_rule(R"({"op": "unstack_tensors", "source": "layers.{L}.moe.w1",
      "target": "layers.{L}.experts.{E}.w1", "over": "E", "count": 12})"),
                               {"layers.0.moe.w1"});
  CHECK(all_outputs(*back.mapper).size() == 12);
  CHECK(all_outputs(*back.mapper).count("layers.0.experts.11.w1") == 1);
}

TEST_CASE("stages run in sequence and see what the stage before left") {
  const std::string json = R"({"d9d_mapper_spec": 1, "stages": [
      {"rules": [{"op": "rename_tensor", "source": "hf.{L}.q", "target": "{L}.q"},
                 {"op": "rename_tensor", "source": "hf.{L}.k", "target": "{L}.k"}]},
      {"rules": [{"op": "stack_tensors", "sources": ["{L}.q", "{L}.k"], "target": "{L}.qk", "dim": 0}]}]})";
  SpecMapping m = from_spec(json, {"hf.0.q", "hf.0.k", "hf.1.q", "hf.1.k", "extra"});
  CHECK(m.mapper->state_dependency_groups() ==
        groups({group({"hf.0.q", "hf.0.k"}, {"0.qk"}), group({"hf.1.q", "hf.1.k"}, {"1.qk"}),
                group({"extra"}, {"extra"})}));
  StateDict out = m.mapper->apply({{"hf.1.q", ints({1, 2}, {2})}, {"hf.1.k", ints({3, 4}, {2})}});
  CHECK(equal(out.at("1.qk"), ints({1, 2, 3, 4}, {2, 2})));
}

TEST_CASE("unmatched keys are kept, dropped or an error; optional rules that match nothing are reported") {
  const std::string rules = R"("rules": [{"op": "rename_tensor", "source": "a", "target": "b"},
                                          {"op": "transpose", "source": "nothing.{x}", "dims": [0, 1],
                                           "optional": true}]})";
  const std::vector<std::string> keys{"a", "c", "d"};
  SpecMapping keep = from_spec(R"({"d9d_mapper_spec": 1, )" + rules, keys);
  CHECK(all_outputs(*keep.mapper) == std::set<std::string>{"b", "c", "d"});
  CHECK(keep.unmatched_keys == std::vector<std::string>{"c", "d"});
  CHECK(keep.unused_rules ==
        std::vector<std::string>{"$.rules[1] (transpose nothing.{x}) (optional)"});
  SpecMapping drop = from_spec(R"({"d9d_mapper_spec": 1, "unmatched": "drop", )" + rules, keys);
  CHECK(all_inputs(*drop.mapper) == std::set<std::string>{"a"});
  CHECK(drop.unmatched_keys == std::vector<std::string>{"c", "d"});
  CHECK_THROWS_WITH_AS(from_spec(R"({"d9d_mapper_spec": 1, "unmatched": "error", )" + rules, keys),
                       doctest::Contains("2 checkpoint key(s) match no rule"), ValueError);
}

// ---- malformed specs ----------------------------------------------------------------------------

TEST_CASE("malformed specs name the JSON path of the problem") {
  const std::vector<std::string> keys{"a", "b"};
  check_spec_error("{\"d9d_mapper_spec\": 1, \"rules\": [", keys, "$", "invalid JSON at byte");
  check_spec_error("[1]", keys, "$", "expected an object");
  check_spec_error(R"({"rules": []})", keys, "$", "missing required field \"d9d_mapper_spec\"");
  check_spec_error(R"({"d9d_mapper_spec": 2, "rules": []})", keys, "$.d9d_mapper_spec",
                   "unsupported version 2");
  check_spec_error(R"({"d9d_mapper_spec": "1", "rules": []})", keys, "$.d9d_mapper_spec",
                   "expected an integer");
  check_spec_error(R"({"d9d_mapper_spec": 1, "rules": [], "stages": []})", keys, "$",
                   "either \"stages\"");
  check_spec_error(R"({"d9d_mapper_spec": 1, "rulez": []})", keys, "$.rulez", "unknown field");
  check_spec_error(R"({"d9d_mapper_spec": 1, "unmatched": "ignore", "rules": []})", keys,
                   "$.unmatched", "\"keep\", \"drop\" or \"error\"");
  check_spec_error(one_rule(R"({"op": "rename", "source": "a", "target": "b"})"), keys,
                   "$.rules[0].op", "unknown op \"rename\"");
  check_spec_error(
      one_rule(R"({"op": "rename_tensor", "source": "a", "target": "b", "source": "c"})"), keys,
      "$.rules[0].source", "duplicate key \"source\"");
  check_spec_error(
      one_rule(R"({"op": "identity", "source": "a"}, {"op": "stack_tensors", "sources": ["a"],
                                "target": "s", "dims": 0})"),
      keys, "$.rules[1].dims", "unknown field \"dims\"");
  check_spec_error(one_rule(R"({"op": "unsqueeze", "source": "a", "dim": "0"})"), keys,
                   "$.rules[0].dim", "expected an integer");
  check_spec_error(one_rule(R"({"op": "unsqueeze", "source": "a"})"), keys, "$.rules[0]",
                   "missing required field \"dim\"");
  check_spec_error(one_rule(R"({"op": "cast", "source": "a", "dtype": "float32"})"), keys,
                   "$.rules[0].dtype", "unknown dtype \"float32\"");
  check_spec_error(one_rule(R"({"op": "transpose", "source": "a", "dims": [0, 1, 2]})"), keys,
                   "$.rules[0].dims", "expected two dims");
  check_spec_error(one_rule(R"({"op": "permute", "source": "a", "dims": [0, 1.5]})"), keys,
                   "$.rules[0].dims[1]", "expected an integer");
  check_spec_error(one_rule(R"({"op": "rename_tensor", "source": "a.{L", "target": "b"})"), keys,
                   "$.rules[0].source", "unmatched '{'");
  check_spec_error(one_rule(R"({"op": "rename_tensor", "source": "a..b", "target": "b"})"), keys,
                   "$.rules[0].source", "empty segment");
  check_spec_error(one_rule(R"({"op": "rename_tensor", "source": "a.{L}{M}", "target": "b"})"),
                   keys, "$.rules[0].source", "at most one capture");
  check_spec_error(one_rule(R"({"op": "rename_tensor", "source": "{a...}.{b...}", "target": "b"})"),
                   keys, "$.rules[0].source", "at most one {name...}");
  check_spec_error(one_rule(R"({"op": "rename_tensor", "source": "a.{L}", "target": "b.{M}"})"),
                   keys, "$.rules[0].target", "{M} is not bound");
  check_spec_error(
      one_rule(R"({"op": "split_tensors", "source": "a", "targets": ["x", "y"], "sizes": [1]})"),
      keys, "$.rules[0].sizes", "1 sizes for 2 targets");
  check_spec_error(one_rule(R"({"op": "stack_tensors", "sources": ["a.{L}", "b"], "target": "s"})"),
                   keys, "$.rules[0].sources", "same captures");
  check_spec_error(
      one_rule(R"({"op": "stack_tensors", "source": "a.{L}", "over": "E", "target": "s"})"), keys,
      "$.rules[0].over", "no capture {E}");
  check_spec_error(R"({"d9d_mapper_spec": 1, "stages": [{"rules": []}, {"rules": [
                       {"op": "squeeze", "source": "a", "dim": true}]}]})",
                   keys, "$.stages[1].rules[0].dim", "expected an integer");
  check_spec_error(R"({"d9d_mapper_spec": 1, "stages": [{"rules": [], "extra": 1}]})", keys,
                   "$.stages[0].extra", "unknown field");
}

TEST_CASE("specs that do not fit the keys name the rule") {
  const std::vector<std::string> keys{"l.0.q", "l.0.k", "l.1.q", "a", "b"};
  check_spec_error(
      one_rule(
          R"({"op": "stack_tensors", "sources": ["l.{L}.q", "l.{L}.k"], "target": "l.{L}.qk"})"),
      keys, "$.rules[0]", "for {L=1} the checkpoint has some sources but not [l.1.k]");
  check_spec_error(one_rule(R"({"op": "rename_tensor", "source": "a", "target": "x"},
                               {"op": "identity", "source": "a"})"),
                   keys, "$.rules[1]", "'a' is consumed both by $.rules[0]");
  check_spec_error(one_rule(R"({"op": "rename_tensor", "source": "a", "target": "x"},
                               {"op": "rename_tensor", "source": "b", "target": "x"})"),
                   keys, "$.rules[1]", "'x' is produced both by $.rules[0]");
  check_spec_error(one_rule(R"({"op": "rename_tensor", "source": "a", "target": "b"})"), keys,
                   "$.rules[0]", "would replace the key 'b'");
  check_spec_error(
      one_rule(R"({"op": "select_child_modules", "parent": "l.{L}", "base_names": ["q", "k"]})"),
      keys, "$.rules[0]", "but not [l.1.k]");
  check_spec_error(one_rule(R"({"op": "stack_tensors", "sources": ["a", "a"], "target": "s"})"),
                   keys, "$.rules[0]", "listed twice");
  CHECK_THROWS_AS(from_spec(one_rule(R"({"op": "identity", "source": "a"})"), {"a", "a"}),
                  ValueError);
}

TEST_CASE("a spec nested 100,000 deep is a SpecError naming where, not a crash") {
  const std::vector<std::string> keys{"a"};
  auto with_description = [](const std::string& value) {
    return R"({"d9d_mapper_spec": 1, "rules": [], "description": )" + value + "}";
  };
  // The document is one level, so the description may hold 63 more; the 64th is refused.
  const std::string message = check_spec_error(
      with_description(repeat("[", 100000) + repeat("]", 100000)), keys,
      "$.description" + repeat("[0]", 63), "nested deeper than 64 arrays and objects");
  CHECK(message.size() < 400);
  check_spec_error(with_description(repeat("{\"a\": ", 100000) + "1" + repeat("}", 100000)), keys,
                   "$.description" + repeat(".a", 63), "nested deeper than 64");
  // 63 levels parse, and the wrong value is printed cut short.
  const std::string shallow = check_spec_error(
      with_description(repeat("[", 63) + repeat("]", 63)), keys, "$.description",
      "expected a string, got an array " + repeat("[", 63) + repeat("]", 37) + "...");
  CHECK(shallow.size() < 200);
}

TEST_CASE("shard_tensor and pad: bad fields are SpecErrors naming them") {
  const std::vector<std::string> keys{"w"};
  check_spec_error(
      one_rule(R"({"op": "shard_tensor", "source": "w", "dim": 0, "parts": 4, "index": 4})"), keys,
      "$.rules[0].index", "index 4 is not in [0, 4)");
  check_spec_error(
      one_rule(R"({"op": "shard_tensor", "source": "w", "dim": 0, "parts": 0, "index": 0})"), keys,
      "$.rules[0].parts", "expected a positive integer");
  check_spec_error(one_rule(R"({"op": "shard_tensor", "source": "w", "parts": 2, "index": 0})"),
                   keys, "$.rules[0]", "dim");
  check_spec_error(one_rule(R"({"op": "pad", "source": "w", "dim": 0, "multiple": -64})"), keys,
                   "$.rules[0].multiple", "expected a positive integer");
  // A dim the tensor lacks: an IndexError from infer(), before any byte is read.
  const MapperPtr m = from_spec(one_rule(R"({"op": "shard_tensor", "source": "w", "dim": 2,
                                            "parts": 2, "index": 1})"),
                                keys)
                          .mapper;
  CHECK_THROWS_AS(infer_all(*m, {{"w", {DType::F32, {4, 4}}}}), IndexError);
}

TEST_CASE("a huge value in a spec gives a message of bounded length") {
  const std::vector<std::string> keys{"a"};
  auto unsqueeze_dim = [](const std::string& dim) {
    return one_rule(R"({"op": "unsqueeze", "source": "a", "dim": )" + dim + "}");
  };
  const std::string huge_array = str_cat("[", repeat("12345,", 200000), "0]");
  const std::string huge_string = str_cat("\"", repeat("x", 1000000), "\"");
  std::vector<std::string> messages{
      check_spec_error(unsqueeze_dim(huge_array), keys, "$.rules[0].dim",
                       "expected an integer, got an array [12345,12345,"),
      check_spec_error(unsqueeze_dim(huge_string), keys, "$.rules[0].dim",
                       "expected an integer, got a string \"xxx"),
      check_spec_error(unsqueeze_dim(R"({"k": )" + huge_string + "}"), keys, "$.rules[0].dim",
                       R"(expected an integer, got an object {"k":"xxx)"),
      check_spec_error(one_rule(R"({"op": )" + huge_string + "}"), keys, "$.rules[0].op",
                       "unknown op \"xxx"),
      check_spec_error(one_rule(R"({"op": "cast", "source": "a", "dtype": )" + huge_string + "}"),
                       keys, "$.rules[0].dtype", "unknown dtype \"xxx"),
      check_spec_error(
          one_rule(R"({"op": "identity", "source": ")" + repeat("x", 1000000) + R"(.."})"), keys,
          "$.rules[0].source", "pattern \"xxx"),
      check_spec_error(R"({"d9d_mapper_spec": 1, "rules": [], "unmatched": )" + huge_string + "}",
                       keys, "$.unmatched", "got \"xxx"),
      // A number beyond a double, an unterminated string: nlohmann's messages quote them.
      check_spec_error(unsqueeze_dim(repeat("1", 100000)), keys, "$", "number overflow"),
      check_spec_error(R"({"d9d_mapper_spec": 1, "description": )" + huge_string.substr(1), keys,
                       "$", "invalid JSON at byte"),
  };
  for (const auto& m : messages) {
    INFO(m.substr(0, 600));
    CHECK(m.size() < 600);  // an excerpt of the value, and the list of ops an unknown op gets
  }
}

TEST_CASE("json_excerpt prints what dump() prints, cut after a bounded prefix") {
  using nlohmann::json;
  for (const json& j :
       {json(nullptr), json(true), json(-3), json(2.5), json("a\"b\n\u00e9"), json::array(),
        json::object(), json::parse(R"([1, {"a": [true, null]}, "s"])")}) {
    CHECK(json_excerpt(j) == j.dump());
  }
  CHECK(json_excerpt(json(repeat("x", 1000)), 10) == "\"xxxxxxxxx...");
  CHECK(json_excerpt(json::parse(str_cat("[", repeat("1,", 999), "1]")), 10) == "[1,1,1,1,1...");
  // A cut never splits a UTF-8 sequence: "\u00e9" is two bytes.
  CHECK(json_excerpt(json(repeat("\u00e9", 100)), 10) == str_cat("\"", repeat("\u00e9", 4), "..."));
  CHECK(json_string_excerpt("a.b") == "\"a.b\"");
  // However deep the value, the printer stops at the bound (and so does its recursion).
  json deep = json::array();
  for (int i = 0; i < 10000; ++i) deep = json::array({std::move(deep)});
  CHECK(json_excerpt(deep, 100) == repeat("[", 100) + "...");
}

TEST_CASE("parse_json rejects duplicate keys and deep nesting with the JSON path") {
  CHECK(parse_json(R"({"a": [1, {"b": 2}]})") == nlohmann::json::parse(R"({"a": [1, {"b": 2}]})"));
  auto path_of = [](const std::string& text, size_t depth) {
    try {
      parse_json(text, depth);
    } catch (const JsonError& e) {
      return e.path();
    }
    return std::string("(no error)");
  };
  CHECK(path_of(R"({"a": [1, {"b": 2, "b": 3}]})", 64) == "$.a[1].b");
  CHECK(path_of(R"({"a b": {"c": 1, "c": 1}})", 64) == "$[\"a b\"].c");
  CHECK(path_of("[[1], [[2]]]", 3) == "(no error)");
  CHECK(path_of("[[1], [[2]]]", 2) == "$[1][0]");
  CHECK(path_of("[1, 2", 64) == "$");
  CHECK(path_of("[1e999]", 64) == "$");
  CHECK_THROWS_WITH_AS(parse_json("[1, 2"), doctest::Contains("invalid JSON at byte"), JsonError);
}

// ---- example specs ------------------------------------------------------------------------------

TEST_CASE("example: Llama HF -> fused QKV and gate_up, on Llama-3.2-1B's keys and shapes") {
  const SpecDict hf = llama_specs(16, 2048, 2048, 512, 8192, /*tied=*/true);
  SpecMapping fwd = from_spec(read_example("llama_hf_to_fused.json"), names_of(hf));
  CHECK(fwd.unmatched_keys.empty());
  CHECK(fwd.unused_rules ==
        std::vector<std::string>{"$.rules[8] (identity lm_head.weight) (optional)"});
  // 16 layers x (qkv, gate_up, out, down, 2 norms) + embed + norm.
  CHECK(fwd.mapper->state_dependency_groups().size() == 16 * 6 + 2);
  const SpecDict fused = infer_all(*fwd.mapper, hf);
  CHECK(fused.at("layers.7.attn.qkv.weight") == TensorSpec{DType::BF16, {3072, 2048}});
  CHECK(fused.at("layers.7.mlp.gate_up.weight") == TensorSpec{DType::BF16, {16384, 2048}});
  CHECK(fused.at("layers.15.attn.out.weight") == TensorSpec{DType::BF16, {2048, 2048}});
  CHECK(fused.at("embed.weight") == hf.at("model.embed_tokens.weight"));
  CHECK(fused.size() == 16 * 6 + 2);

  // Its inverse spec restores the HF keys and shapes; so does the mapper's own inverse.
  SpecMapping inv = from_spec(read_example("fused_to_llama_hf.json"), names_of(fused));
  CHECK(infer_all(*inv.mapper, fused) == hf);
  CHECK(infer_all(*fwd.mapper->inverse(hf), fused) == hf);
}

TEST_CASE("example: Llama fused round trip on data (Llama-3.2-1B rows, a narrow hidden dim)") {
  // The split sizes in the inverse spec are rows (dim 0); a hidden size of 4 keeps data small.
  const SpecDict hf = llama_specs(2, 4, 2048, 512, 8192, /*tied=*/false);
  const StateDict data = data_for(hf);
  SpecMapping fwd = from_spec(read_example("llama_hf_to_fused.json"), names_of(hf));
  CHECK(fwd.unused_rules.empty());
  const StateDict fused = apply_all(*fwd.mapper, data);
  CHECK(equal(fused.at("layers.1.attn.qkv.weight").narrow(0, 2048, 512),
              data.at("model.layers.1.self_attn.k_proj.weight")));
  CHECK(fused.at("layers.1.attn.qkv.weight").is_contiguous());
  SpecMapping inv = from_spec(read_example("fused_to_llama_hf.json"), names_of(specs_of(fused)));
  const StateDict back = apply_all(*inv.mapper, fused);
  REQUIRE(keys(back) == keys(data));
  for (const auto& entry : data) {  // (INFO captures in a lambda: no structured bindings)
    INFO(entry.first);
    CHECK(equal(back.at(entry.first), entry.second));
  }
}

TEST_CASE("example: BERT query/key/value -> stacked qkv, on bert-base's keys") {
  SpecDict bert;
  const DType f = DType::F32;
  bert["bert.embeddings.word_embeddings.weight"] = {f, {30522, 8}};
  bert["bert.embeddings.position_embeddings.weight"] = {f, {512, 8}};
  bert["bert.embeddings.token_type_embeddings.weight"] = {f, {2, 8}};
  bert["bert.embeddings.LayerNorm.weight"] = {f, {8}};
  bert["bert.embeddings.LayerNorm.bias"] = {f, {8}};
  bert["bert.pooler.dense.weight"] = {f, {8, 8}};
  bert["bert.pooler.dense.bias"] = {f, {8}};
  for (int l = 0; l < 12; ++l) {
    const std::string p = str_cat("bert.encoder.layer.", l, ".");
    for (const char* m : {"attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense"}) {
      bert[p + m + ".weight"] = {f, {8, 8}};
      bert[p + m + ".bias"] = {f, {8}};
    }
    bert[p + "attention.output.LayerNorm.weight"] = {f, {8}};
    bert[p + "attention.output.LayerNorm.bias"] = {f, {8}};
    bert[p + "intermediate.dense.weight"] = {f, {32, 8}};
    bert[p + "intermediate.dense.bias"] = {f, {32}};
    bert[p + "output.dense.weight"] = {f, {8, 32}};
    bert[p + "output.dense.bias"] = {f, {8}};
    bert[p + "output.LayerNorm.weight"] = {f, {8}};
    bert[p + "output.LayerNorm.bias"] = {f, {8}};
  }
  SpecMapping m = from_spec(read_example("bert_qkv_stacked.json"), names_of(bert));
  CHECK(m.unused_rules.empty());
  const SpecDict out = infer_all(*m.mapper, bert);
  CHECK(out.at("bert.encoder.layer.3.attention.self.qkv.weight") == TensorSpec{f, {3, 8, 8}});
  CHECK(out.at("bert.encoder.layer.11.attention.self.qkv.bias") == TensorSpec{f, {3, 8}});
  CHECK(out.at("embeddings.word.weight") == bert.at("bert.embeddings.word_embeddings.weight"));
  CHECK(out.at("bert.pooler.dense.weight") == bert.at("bert.pooler.dense.weight"));
  CHECK(out.count("bert.encoder.layer.0.attention.self.query.weight") == 0);
  CHECK(out.size() == bert.size() - 12 * 4);
  // Stacked in the order query, key, value.
  StateDict data = data_for(bert);
  StateDict res = apply_all(*m.mapper, data);
  CHECK(equal(res.at("bert.encoder.layer.5.attention.self.qkv.bias").select(0, 2),
              data.at("bert.encoder.layer.5.attention.self.value.bias")));
  // The mapper's inverse brings the original keys back.
  StateDict back = apply_all(*m.mapper->inverse(bert), res);
  REQUIRE(keys(back) == keys(data));
  for (const auto& [k, t] : data) CHECK(equal(back.at(k), t));
}

TEST_CASE("a rule that matches no key is an error naming it, with the prefix that explains it") {
  auto error_of = [](const std::string& rule, const std::vector<std::string>& keys) {
    try {
      from_spec(R"({"d9d_mapper_spec": 1, "rules": [)" + rule + "]}", keys);
    } catch (const SpecError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  const std::vector<std::string> bare{"encoder.layer.0.attention.self.query.weight",
                                      "encoder.layer.0.attention.self.key.weight"};
  const std::string bert =
      R"({"op": "rename_tensor", "source": "bert.encoder.layer.{L}.attention.self.query.weight",
          "target": "layers.{L}.q.weight"})";
  const std::string e = error_of(bert, bare);
  CHECK(e.find("$.rules[0]") != std::string::npos);
  CHECK(e.find("matches no key of the checkpoint") != std::string::npos);
  CHECK(e.find("lack the prefix 'bert.'") != std::string::npos);
  CHECK(e.find("e.g. 'encoder.layer.0.attention.self.query.weight'") != std::string::npos);
  CHECK(e.find("\"optional\": true") != std::string::npos);
  // The other way round: the keys have a prefix the rule lacks.
  const std::string prefixed = error_of(
      R"({"op": "rename_tensor", "source": "layer.{L}.attention.self.query.weight", "target": "q{L}"})",
      {"model.layer.0.attention.self.query.weight"});
  CHECK(prefixed.find("start with 'model.', which the rule's source lacks") != std::string::npos);
  // No prefix explains it: the error without a guess. A bare capture is no evidence.
  const std::string plain =
      error_of(R"({"op": "transpose", "source": "nothing.{x}", "dims": [0, 1]})", {"a"});
  CHECK(plain.find("matches no key") != std::string::npos);
  CHECK(plain.find("prefix") == std::string::npos);
  // "optional": true: listed, not an error; a later stage's rule is judged on that stage's keys.
  CHECK(error_of(R"({"op": "transpose", "source": "nothing.{x}", "dims": [0, 1], "optional": true})",
                 {"a"}) ==
        "(no error)");
  CHECK_THROWS_WITH_AS(
      from_spec(R"({"d9d_mapper_spec": 1, "stages": [
                    {"rules": [{"op": "rename_tensor", "source": "a", "target": "b"}]},
                    {"rules": [{"op": "rename_tensor", "source": "a", "target": "c"}]}]})",
                {"a"}),
      doctest::Contains("$.stages[1].rules[0]: its source 'a' matches no key this stage reads"),
      SpecError);
}

TEST_CASE("a catch-all cast refuses integers unless asked; \"from\" selects the dtypes it casts") {
  const SpecDict specs{{"embed.weight", TensorSpec{DType::F32, {4, 2}}},
                       {"position_ids", TensorSpec{DType::I64, {1, 300}}}};
  const std::vector<std::string> keys{"embed.weight", "position_ids"};
  auto spec = [](const std::string& extra) {
    return R"({"d9d_mapper_spec": 1, "rules": [{"op": "cast", "source": "{x...}", "dtype": "BF16")" +
           extra + "}]}";
  };
  // A catch-all: the integer tensor is an error naming it, when the specs are inferred.
  const SpecMapping all = from_spec(spec(""), keys);
  CHECK_THROWS_WITH_AS(infer_all(*all.mapper, specs),
                       doctest::Contains("'position_ids' holds integers (I64)"), TypeError);
  CHECK_THROWS_WITH_AS(infer_all(*all.mapper, specs), doctest::Contains("\"from\""), TypeError);
  // "from": only F32 is cast; the positions pass through, and apply() agrees with infer().
  const SpecMapping floats = from_spec(spec(R"(, "from": ["F32", "F16"])"), keys);
  const SpecDict out = infer_all(*floats.mapper, specs);
  CHECK(out.at("embed.weight") == TensorSpec{DType::BF16, {4, 2}});
  CHECK(out.at("position_ids") == TensorSpec{DType::I64, {1, 300}});
  StateDict in{{"embed.weight", Tensor::full({4, 2}, 1.5f, DType::F32)},
               {"position_ids", Tensor::full({1, 300}, 259.0f, DType::F32).to(DType::I64)}};
  const StateDict applied = apply_all(*floats.mapper, in);
  CHECK(applied.at("embed.weight").dtype() == DType::BF16);
  CHECK(equal(applied.at("position_ids"), in.at("position_ids")));
  // "lossy": true casts everything; so does a rule that names the tensor.
  CHECK(infer_all(*from_spec(spec(R"(, "lossy": true)"), keys).mapper, specs).at("position_ids") ==
        TensorSpec{DType::BF16, {1, 300}});
  const SpecMapping named = from_spec(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "cast", "source": "position_ids", "dtype": "F32"}]})",
      keys);
  CHECK(infer_all(*named.mapper, specs).at("position_ids").dtype == DType::F32);
  CHECK_THROWS_WITH_AS(from_spec(spec(R"(, "from": [])"), keys),
                       doctest::Contains("non-empty array of dtypes"), SpecError);
  // The inverse of a selective lossless cast: what was cast goes back, the rest stays.
  const SpecDict bf16{{"embed.weight", TensorSpec{DType::BF16, {4, 2}}},
                      {"position_ids", TensorSpec{DType::I64, {1, 300}}}};
  const SpecMapping up =
      from_spec(R"({"d9d_mapper_spec": 1, "rules": [{"op": "cast", "source": "{x...}",
                    "dtype": "F32", "from": ["BF16"]}]})",
                keys);
  const MapperPtr back = up.mapper->inverse(bf16);
  CHECK(infer_all(*back, infer_all(*up.mapper, bf16)) == bf16);
}
