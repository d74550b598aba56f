// Spec params (values from the caller, config.json with its text_config, the spec's defaults;
// "{expression}" fields) and the model-layout ops in spec files: expansion, the errors that name
// the JSON path, and tied embeddings' notes.
#include <doctest/doctest.h>

#include "helpers.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::mapper::test;
using d9d::detail::str_cat;

namespace {

// The SpecError of from_spec, checked to carry `path` and every text in `texts`.
void check_error(const std::string& json, const std::vector<std::string>& keys,
                 const SpecParams& params, const std::string& path,
                 std::initializer_list<const char*> texts) {
  try {
    from_spec(json, keys, params);
    FAIL("expected a SpecError at ", path);
  } catch (const SpecError& e) {
    const std::string what = e.what();
    INFO(what);
    CHECK(e.path() == path);
    for (const char* t : texts) CHECK(what.find(t) != std::string::npos);
  }
}

SpecParams with_config(std::string config, std::map<std::string, int64_t> values = {}) {
  SpecParams p;
  p.config_json = std::move(config);
  p.values = std::move(values);
  return p;
}

// A spec of one unsqueeze rule whose dim is `dim`, with `params`.
std::string unsqueeze_with(const std::string& params, const std::string& dim) {
  return str_cat(R"({"d9d_mapper_spec": 1, "params": )", params,
                 R"(, "rules": [{"op": "unsqueeze", "source": "w", "dim": )", dim, "}]}");
}

int64_t unsqueezed_at(const SpecMapping& m) {
  const Shape s = infer_all(*m.mapper, {{"w", {DType::F32, {3, 3}}}}).at("w").shape;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == 1) return static_cast<int64_t>(i);
  }
  return -1;
}

}  // namespace

TEST_CASE("params come from the caller, then config.json (or its text_config), then the default") {
  const std::string spec = unsqueeze_with(
      R"({"a": "config.n", "b": {"from": "config.deep.m", "default": 2}, "c": 1, "t": {"from": "config.tied", "default": true}})",
      R"("{a}")");
  SpecMapping m =
      from_spec(spec, {"w"}, with_config(R"({"n": 0, "deep": {"m": 1}, "tied": false})"));
  CHECK(m.params.at("a").value == 0);
  CHECK(m.params.at("a").origin == "config.json: n");
  CHECK(m.params.at("b").value == 1);
  CHECK(m.params.at("b").origin == "config.json: deep.m");
  CHECK(m.params.at("c").value == 1);
  CHECK(m.params.at("c").origin == "the spec's default");
  CHECK(m.params.at("t").value == 0);
  CHECK(unsqueezed_at(m) == 0);
  // A multimodal config: what the top level lacks (or holds as null) comes from text_config.
  m = from_spec(spec, {"w"}, with_config(R"({"n": null, "text_config": {"n": 2}})"));
  CHECK(m.params.at("a").value == 2);
  CHECK(m.params.at("a").origin == "config.json: text_config.n");
  CHECK(m.params.at("b").value == 2);  // neither has deep.m: the default
  CHECK(m.params.at("t").value == 1);
  CHECK(unsqueezed_at(m) == 2);
  // The caller wins over both.
  m = from_spec(spec, {"w"}, with_config(R"({"n": 2})", {{"a", 1}, {"c", 5}}));
  CHECK(m.params.at("a").value == 1);
  CHECK(m.params.at("a").origin == "the caller");
  CHECK(m.params.at("c").value == 5);
  CHECK(unsqueezed_at(m) == 1);
  // Without config.json, a default or the caller must give the value.
  m = from_spec(unsqueeze_with(R"({"d": 1})", R"("{d}")"), {"w"});
  CHECK(unsqueezed_at(m) == 1);
}

TEST_CASE("param expressions: integer arithmetic with precedence, parentheses and unary minus") {
  const std::string params = R"({"h": 32, "kv": 8, "z": 0})";
  auto eval = [&](const std::string& expr) {
    // The expression as a reshape's single dim of a [N] tensor: the result is the shape.
    const std::string spec =
        str_cat(R"({"d9d_mapper_spec": 1, "params": )", params,
                R"(, "rules": [{"op": "reshape", "source": "w", "shape": [")", expr, R"("]}]})");
    SpecMapping m = from_spec(spec, {"w"});
    return m;
  };
  auto value = [&](const std::string& expr, int64_t numel) {
    return infer_all(*eval(expr).mapper, {{"w", {DType::F32, {numel}}}}).at("w").shape[0];
  };
  CHECK(value("{h / kv}", 4) == 4);
  CHECK(value("{h - kv * 2 - 4}", 12) == 12);
  CHECK(value("{(h - kv) * 2 % 7}", 6) == 6);  // 48 % 7
  CHECK(value("{ - -h / (kv/2) }", 8) == 8);
  CHECK(value("{-1}", 10) == 10);           // -1: reshape's inferred dim
  CHECK(value("{7 / 2 + 7 % 2}", 4) == 4);  // truncating division
  CHECK(value("{min(h, kv)}", 8) == 8);
  CHECK(value("{max(h, kv * 8) / min(kv, 2 * h)}", 8) == 8);  // 64 / 8
  const std::vector<std::string> w{"w"};
  const std::string base =
      R"({"d9d_mapper_spec": 1, "params": {"h": 32, "z": 0}, "rules": [{"op": "unsqueeze", "source": "w", "dim": ")";
  check_error(base + R"({h / z}"}]})", w, {}, "$.rules[0].dim", {"divides by zero"});
  check_error(base + R"({h % z}"}]})", w, {}, "$.rules[0].dim", {"divides by zero"});
  check_error(base + R"({h * 9223372036854775807}"}]})", w, {}, "$.rules[0].dim",
              {"overflows a 64-bit integer"});
  check_error(base + R"({99999999999999999999}"}]})", w, {}, "$.rules[0].dim", {"overflows"});
  check_error(base + R"({n_heads}"}]})", w, {}, "$.rules[0].dim",
              {"unknown param \"n_heads\"", "the spec's params: h, z"});
  check_error(base + R"({h +}"}]})", w, {}, "$.rules[0].dim", {"expected a number"});
  check_error(base + R"({(h}"}]})", w, {}, "$.rules[0].dim", {"expected ')'"});
  check_error(base + R"({h h}"}]})", w, {}, "$.rules[0].dim", {"unexpected text"});
  check_error(base + R"(h"}]})", w, {}, "$.rules[0].dim", {"expected an integer"});
  check_error(base + R"({min(h)}"}]})", w, {}, "$.rules[0].dim", {"expected ','"});
  check_error(base + R"({max(h, z}"}]})", w, {}, "$.rules[0].dim", {"expected ')'"});
  // A spec without params has none to use.
  check_error(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "unsqueeze", "source": "w", "dim": "{d}"}]})", w,
      {}, "$.rules[0].dim", {"unknown param \"d\"", "params: none"});
}

TEST_CASE("a param without a value, or of a bad form, is an error naming its JSON path") {
  const std::vector<std::string> w{"w"};
  const std::string spec = unsqueeze_with(R"({"n_heads": "config.num_attention_heads"})", "0");
  check_error(spec, w, {}, "$.params.n_heads", {"there is no config.json", "no default"});
  check_error(spec, w, with_config(R"({"hidden_size": 8})"), "$.params.n_heads",
              {"has no \"num_attention_heads\"", "text_config.num_attention_heads"});
  check_error(spec, w, with_config(R"({"num_attention_heads": 2.5})"), "$.params.n_heads",
              {"\"num_attention_heads\" is 2.5", "not an integer"});
  check_error(spec, w, with_config(R"({"num_attention_heads": 1, "num_attention_heads": 2})"),
              "$.params.n_heads", {"config.json is not valid", "duplicate key"});
  check_error(spec, w, with_config("{"), "$.params.n_heads", {"config.json is not valid"});
  check_error(unsqueeze_with(R"({"n": "num_heads"})", "0"), w, {}, "$.params.n",
              {"expected \"config.<dotted path"});
  check_error(unsqueeze_with(R"({"n": 1.5})", "0"), w, {}, "$.params.n", {"an integer default"});
  check_error(unsqueeze_with(R"({"n": {"from": "config.x", "dflt": 1}})", "0"), w, {},
              "$.params.n.dflt", {"unknown field"});
  check_error(unsqueeze_with(R"({"2n": 1})", "0"), w, {}, "$.params.2n", {"invalid param name"});
  check_error(unsqueeze_with(R"({"a-b": 1})", "0"), w, {}, "$.params[\"a-b\"]",
              {"invalid param name"});
  check_error(unsqueeze_with("[1]", "0"), w, {}, "$.params", {"an object of params"});
  // The caller's value for a name the spec does not declare.
  SpecParams p;
  p.values["tp"] = 4;
  check_error(unsqueeze_with(R"({"n": 1})", "0"), w, p, "$.params",
              {"the caller sets \"tp\"", "its params: n"});
  check_error(R"({"d9d_mapper_spec": 1, "rules": []})", w, p, "$.params", {"params: none"});
  // config.json is read only when a param needs it.
  CHECK_NOTHROW(from_spec(unsqueeze_with(R"({"n": 1})", "0"), w, with_config("not json")));
}

// ---- the model-layout ops in spec files
// ----------------------------------------------------------

TEST_CASE(
    "a Llama spec permutes q and k for RoPE and fuses Megatron's QKV with params from config") {
  const std::string spec = R"({"d9d_mapper_spec": 1,
    "params": {"heads": "config.num_attention_heads", "kv": "config.num_key_value_heads"},
    "stages": [
      {"rules": [
        {"op": "permute_for_rope", "source": "layers.{L}.q", "n_heads": "{heads}", "direction": "from_hf"},
        {"op": "permute_for_rope", "source": "layers.{L}.k", "n_heads": "{kv}", "direction": "from_hf"}]},
      {"rules": [
        {"op": "interleave_qkv", "sources": ["layers.{L}.q", "layers.{L}.k", "layers.{L}.v"],
         "target": "layers.{L}.qkv", "n_heads": "{heads}", "n_kv_heads": "{kv}"}]}]})";
  SpecDict in;
  for (int l = 0; l < 2; ++l) {
    in[str_cat("layers.", l, ".q")] = {DType::BF16, {8 * 4, 6}};
    in[str_cat("layers.", l, ".k")] = {DType::BF16, {2 * 4, 6}};
    in[str_cat("layers.", l, ".v")] = {DType::BF16, {2 * 4, 6}};
  }
  std::vector<std::string> names;
  for (const auto& [k, s] : in) names.push_back(k);
  const SpecMapping m = from_spec(
      spec, names, with_config(R"({"num_attention_heads": 8, "num_key_value_heads": 2})"));
  CHECK(m.unused_rules.empty());
  CHECK(infer_all(*m.mapper, in).at("layers.1.qkv") == TensorSpec{DType::BF16, {48, 6}});
  // The same mapper by hand.
  StateDict data;
  for (const auto& [k, s] : in) data.emplace(k, random_values(s.shape, s.dtype));
  const StateDict out = apply_all(*m.mapper, data);
  const StateDict want = apply_all(
      *sequential(
          {parallel({permute_for_rope("layers.0.q", 8, RopeDirection::kFromHf),
                     permute_for_rope("layers.0.k", 2, RopeDirection::kFromHf)}),
           interleave_qkv({"layers.0.q", "layers.0.k", "layers.0.v"}, "layers.0.qkv", 8, 2)}),
      {{"layers.0.q", data.at("layers.0.q")},
       {"layers.0.k", data.at("layers.0.k")},
       {"layers.0.v", data.at("layers.0.v")}});
  CHECK(equal(out.at("layers.0.qkv"), want.at("layers.0.qkv")));
  // And back.
  const StateDict back = apply_all(*m.mapper->inverse(in), out);
  REQUIRE(keys(back) == keys(data));
  for (const auto& [k, t] : data) CHECK(equal(back.at(k), t));
  // Rule errors name the field.
  check_error(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "permute_for_rope", "source": "q", "n_heads": 2, "direction": "meta"}]})",
      {"q"}, {}, "$.rules[0].direction", {"\"to_hf\"", "\"meta\""});
  check_error(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "permute_for_rope", "source": "q", "n_heads": 0, "direction": "to_hf"}]})",
      {"q"}, {}, "$.rules[0].n_heads", {"positive"});
  check_error(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "interleave_qkv", "sources": ["q", "k"], "target": "qkv", "n_heads": 2, "n_kv_heads": 1}]})",
      {"q", "k"}, {}, "$.rules[0].sources", {"[q, k, v]"});
  check_error(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "interleave_qkv", "sources": ["q", "k", "v"], "target": "qkv", "n_heads": 6, "n_kv_heads": 4}]})",
      {"q", "k", "v"}, {}, "$.rules[0].n_kv_heads", {"not a multiple"});
}

TEST_CASE("stack_experts stacks every expert 0..count-1 and names a missing one") {
  std::vector<std::string> keys;
  for (int l = 0; l < 2; ++l) {
    for (int e = 0; e < 12; ++e) {
      for (const char* w : {"gate_proj", "up_proj", "down_proj"}) {
        keys.push_back(str_cat("model.layers.", l, ".mlp.experts.", e, ".", w, ".weight"));
      }
    }
  }
  const std::string spec = R"({"d9d_mapper_spec": 1, "unmatched": "error",
    "params": {"experts": "config.num_experts"},
    "rules": [
      {"op": "stack_experts", "over": "E", "count": "{experts}", "target": "layers.{L}.experts.gate_up_proj",
       "sources": ["model.layers.{L}.mlp.experts.{E}.gate_proj.weight", "model.layers.{L}.mlp.experts.{E}.up_proj.weight"]},
      {"op": "stack_experts", "over": "E", "count": "{experts}", "target": "layers.{L}.experts.down_proj",
       "source": "model.layers.{L}.mlp.experts.{E}.down_proj.weight"}]})";
  const SpecParams twelve = with_config(R"({"num_experts": 12})");
  const SpecMapping m = from_spec(spec, keys, twelve);
  CHECK(m.mapper->state_dependency_groups().size() == 4);
  auto all = std::dynamic_pointer_cast<const ParallelMapper>(m.mapper);
  REQUIRE(all);
  auto first = std::dynamic_pointer_cast<const StackExpertsMapper>(all->mappers()[0]);
  REQUIRE(first);
  CHECK(first->experts() == 12);
  CHECK(first->parts() == 2);
  CHECK(first->sources()[4] == "model.layers.0.mlp.experts.2.gate_proj.weight");  // 2 before 10
  CHECK(first->sources()[5] == "model.layers.0.mlp.experts.2.up_proj.weight");
  // An expert missing: the error names its keys, with or without a count.
  std::vector<std::string> gap = keys;
  gap.erase(std::find(gap.begin(), gap.end(), "model.layers.1.mlp.experts.11.up_proj.weight"));
  check_error(spec, gap, twelve, "$.rules[0]",
              {"{L=1}", "the checkpoint lacks [model.layers.1.mlp.experts.11.up_proj.weight]",
               "every {E} needs all of its sources"});
  std::vector<std::string> last = keys;
  std::erase_if(last,
                [](const std::string& k) { return k.find(".experts.11.") != std::string::npos; });
  check_error(spec, last, twelve, "$.rules[0]",
              {"must take every value 0..11", "model.layers.0.mlp.experts.11.gate_proj.weight"});
  check_error(spec, keys, with_config(R"({"num_experts": 10})"), "$.rules[0]",
              {"takes the values [10, 11] beyond 0..9"});
  std::vector<std::string> middle = keys;
  std::erase_if(middle, [](const std::string& k) {
    return k.find(".experts.5.") != std::string::npos && k.find("down") != std::string::npos;
  });
  check_error(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "stack_experts", "over": "E", "target": "d.{L}",
                  "source": "model.layers.{L}.mlp.experts.{E}.down_proj.weight"}]})",
      middle, {}, "$.rules[0]",
      {"expected 0..10 with none missing",
       "lacks [model.layers.0.mlp.experts.5.down_proj.weight]"});
  check_error(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "stack_experts", "target": "d", "source": "x"}]})",
      {"x"}, {}, "$.rules[0]", {"missing required field \"over\""});
  // Unstacked back by a count, expert by expert.
  const SpecMapping back = from_spec(R"({"d9d_mapper_spec": 1, "rules": [{"op": "unstack_experts",
      "source": "layers.{L}.experts.gate_up_proj", "over": "E", "count": 3,
      "targets": ["layers.{L}.experts.{E}.gate", "layers.{L}.experts.{E}.up"]}]})",
                                     {"layers.0.experts.gate_up_proj"});
  auto only = std::dynamic_pointer_cast<const ParallelMapper>(back.mapper);
  REQUIRE(only);
  auto unstack = std::dynamic_pointer_cast<const UnstackExpertsMapper>(only->mappers()[0]);
  REQUIRE(unstack);
  CHECK(unstack->targets() ==
        std::vector<std::string>{"layers.0.experts.0.gate", "layers.0.experts.0.up",
                                 "layers.0.experts.1.gate", "layers.0.experts.1.up",
                                 "layers.0.experts.2.gate", "layers.0.experts.2.up"});
  check_error(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "unstack_experts", "source": "s", "over": "E",
      "count": 3, "targets": ["e.{E}.gate", "e.up"]}]})",
      {"s"}, {}, "$.rules[0].over", {"the target \"e.up\" has no capture {E}"});
}

TEST_CASE("deinterleave in a spec splits gpt-oss's gate_up_proj into even and odd elements") {
  const SpecMapping m = from_spec(R"({"d9d_mapper_spec": 1, "rules": [{"op": "deinterleave",
      "source": "model.layers.{L}.mlp.experts.gate_up_proj", "dim": -1,
      "targets": ["layers.{L}.gate", "layers.{L}.up"]}]})",
                                  {"model.layers.0.mlp.experts.gate_up_proj"});
  const StateDict out =
      apply_all(*m.mapper, {{"model.layers.0.mlp.experts.gate_up_proj",
                             Tensor::from_vector<int64_t>({0, 1, 2, 3, 4, 5, 6, 7}, {1, 2, 4})}});
  CHECK(out.at("layers.0.gate").to_vector<int64_t>() == std::vector<int64_t>{0, 2, 4, 6});
  CHECK(out.at("layers.0.up").to_vector<int64_t>() == std::vector<int64_t>{1, 3, 5, 7});
}

TEST_CASE("tied embeddings: made from the embedding, dropped again, and disagreements reported") {
  const std::string untie = R"({"d9d_mapper_spec": 1,
    "params": {"tied": {"from": "config.tie_word_embeddings", "default": true}},
    "rules": [{"op": "untie_embeddings", "embedding": "model.embed_tokens.weight",
               "lm_head": "lm_head.weight", "tied": "{tied}"}]})";
  const std::vector<std::string> tied_keys{"model.embed_tokens.weight", "model.norm.weight"};
  const std::vector<std::string> both{"lm_head.weight", "model.embed_tokens.weight"};
  // Tied (config.json says so, or is silent: transformers' default): lm_head comes from the
  // embedding.
  for (const char* config : {R"({"tie_word_embeddings": true})", "{}"}) {
    const SpecMapping m = from_spec(untie, tied_keys, with_config(config));
    CHECK(all_outputs(*m.mapper) == std::set<std::string>{"lm_head.weight",
                                                          "model.embed_tokens.weight",
                                                          "model.norm.weight"});
    CHECK(m.notes.empty());
  }
  // Tied, but the checkpoint has an lm_head: kept, with a note.
  SpecMapping m = from_spec(untie, both, with_config("{}"));
  CHECK(m.unused_rules.size() == 1);
  REQUIRE(m.notes.size() == 1);
  CHECK(
      m.notes[0].find("$.rules[0]: 'lm_head.weight' is present although the embeddings are tied") !=
      std::string::npos);
  // Not tied: an lm_head of its own passes; none is an error.
  m = from_spec(untie, both, with_config(R"({"tie_word_embeddings": false})"));
  CHECK(m.notes.empty());
  CHECK(m.unused_rules.size() == 1);
  check_error(untie, tied_keys, with_config(R"({"tie_word_embeddings": false})"), "$.rules[0]",
              {"'lm_head.weight' is missing", "not tied"});
  // Saving: tie_embeddings drops the lm_head the embedding stands for.
  const std::string tie = R"({"d9d_mapper_spec": 1, "rules": [{"op": "tie_embeddings",
      "embedding": "embed", "lm_head": "head", "tied": true}]})";
  m = from_spec(tie, {"embed", "head"});
  CHECK(all_outputs(*m.mapper) == std::set<std::string>{"embed"});
  CHECK(from_spec(tie, {"embed"}).unused_rules.size() == 1);  // deduplicated already
  check_error(
      R"({"d9d_mapper_spec": 1, "rules": [{"op": "tie_embeddings", "embedding": "e", "lm_head": "{x}.h"}]})",
      {"e"}, {}, "$.rules[0].lm_head", {"the capture {x} is not bound"});
}
