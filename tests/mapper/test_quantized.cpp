// Quantized weights in mappers: dequantize, scales that follow their weights (every op, every
// format: infer == apply, the inverse gives the input back bit for bit, and the fused pair
// dequantizes to the fused dequantized parts), misaligned fusions and lone scales refused with the
// names, the spec's "dequantize" op and "quantization" block, and the pairs found in a checkpoint.
#include <doctest/doctest.h>

#include <d9d/mapper/quantized.hpp>

#include "helpers.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::mapper::test;

namespace {

// Random codes for a weight (every byte value likely), scales that are finite and positive.
Tensor codes(const Shape& shape, DType dtype) {
  return random_tensor(shape, dtype);
}
Tensor float_scales(const Shape& shape) {
  std::vector<float> v(static_cast<size_t>(numel_of(shape)));
  for (auto& x : v) x = static_cast<float>(randint(1, 1000)) / 256.0f;
  return Tensor::from_vector<float>(v, shape);
}
Tensor e8m0_scales(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::U8);
  auto* p = static_cast<uint8_t*>(t.mutable_data_ptr());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<uint8_t>(randint(110, 140));
  return t;
}

QuantScheme scheme(QuantFormat format, std::string weight, std::string scale,
                   std::string global = {}, int64_t br = 128, int64_t bc = 128) {
  QuantScheme q;
  q.format = format;
  q.block_rows = br;
  q.block_cols = bc;
  q.names = {std::move(weight), std::move(scale), std::move(global)};
  return q;
}

// One weight with its scales, per format: the weight's packed shape is `shape`.
void add_weight(StateDict& state, const QuantScheme& q, const std::string& name, const Shape& shape,
                const Shape& global_shape = {}) {
  const Shape& s = shape;
  const size_t n = s.size();
  auto ceil = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  Shape scale;
  for (size_t i = 0; i + 1 < n; ++i) scale.push_back(s[i]);
  switch (q.format) {
    case QuantFormat::kFp8Block:
      scale[n - 2] = ceil(s[n - 2], q.block_rows);
      scale.push_back(ceil(s[n - 1], q.block_cols));
      state[name] = codes(s, DType::F8_E4M3);
      state[q.names.scale_of(name)] = float_scales(scale);
      break;
    case QuantFormat::kFp8Channel:
      scale.push_back(1);
      state[name] = codes(s, DType::F8_E4M3);
      state[q.names.scale_of(name)] = float_scales(scale);
      break;
    case QuantFormat::kMxfp4:
      if (s.back() != 16) scale.push_back(ceil(2 * s[n - 1], 32));  // packed, else gpt-oss blocks
      state[name] = codes(s, DType::U8);
      state[q.names.scale_of(name)] = e8m0_scales(scale);
      break;
    case QuantFormat::kNvfp4:
      scale.push_back(ceil(2 * s[n - 1], 16));
      state[name] = codes(s, DType::U8);
      state[q.names.scale_of(name)] = codes(scale, DType::F8_E4M3);
      if (!q.names.global_scale_suffix.empty()) {
        state[q.names.global_scale_of(name)] = float_scales(global_shape);
      }
      break;
  }
}

// The floats weight `name` of `state` stands for.
Tensor floats(const StateDict& state, const QuantScheme& q, const std::string& name,
              GlobalScaleMode mode = GlobalScaleMode::kMultiply) {
  Dequantization how;
  how.format = q.format;
  how.dtype = DType::F32;
  how.block_rows = q.block_rows;
  how.block_cols = q.block_cols;
  Tensor global;
  if (!q.names.global_scale_suffix.empty()) {
    how.global_scale_mode = mode;
    global = state.at(q.names.global_scale_of(name));
  }
  return d9d::dequantize(state.at(name), state.at(q.names.scale_of(name)), how, global);
}

void check_same_state(const StateDict& got, const StateDict& want) {
  REQUIRE(keys(got) == keys(want));
  for (const auto& [k, t] : want) {
    INFO(k);
    CHECK(equal(got.at(k).contiguous(), t.contiguous()));
  }
}

// quantized(weights, q) on `state`: infer == apply, and the inverse gives `state` back bit for
// bit. Returns the result.
StateDict run_and_undo(const MapperPtr& weights, const QuantScheme& q, const StateDict& state) {
  const MapperPtr m = quantized(weights, q);
  const SpecDict in = specs_of(state);
  const SpecDict inferred = m->infer(in);
  StateDict out = m->apply(state);
  CHECK(specs_of(out) == inferred);
  const MapperPtr back = m->inverse(in);
  check_same_state(back->apply(out), state);
  return out;
}

// The ValueError message of m->infer(specs), checked to hold every needle.
void check_refused(const MapperPtr& m, const StateDict& state,
                   const std::vector<std::string>& needles) {
  try {
    m->infer(specs_of(state));
    FAIL("expected a ValueError");
  } catch (const ValueError& e) {
    const std::string what = e.what();
    INFO(what);
    for (const std::string& n : needles) CHECK(what.find(n) != std::string::npos);
  }
  CHECK_THROWS_AS(m->apply(state), ValueError);  // the same error before any byte moves
}

const QuantScheme kBlock = scheme(QuantFormat::kFp8Block, ".weight", ".weight_scale_inv");

}  // namespace

TEST_CASE(
    "dequantize is a group of a weight and its scales, inferred without data, with no inverse") {
  StateDict state;
  add_weight(state, kBlock, "w.weight", {300, 200});
  Dequantization how;
  const MapperPtr m = mapper::dequantize("w.weight", "w.weight_scale_inv", "w", how);
  CHECK(m->state_dependency_groups() == groups({group({"w.weight", "w.weight_scale_inv"}, {"w"})}));
  const SpecDict inferred = m->infer(specs_of(state));
  CHECK(inferred.at("w") == TensorSpec{DType::BF16, {300, 200}});
  const StateDict out = m->apply(state);
  CHECK(specs_of(out) == inferred);
  CHECK(equal(out.at("w"), floats(state, kBlock, "w.weight").to(DType::BF16)));
  CHECK_THROWS_AS(m->inverse(specs_of(state)), NotInvertibleError);
  // A scale that does not fit: both tensors named, before any byte is read.
  state["w.weight_scale_inv"] = float_scales({2, 2});
  check_refused(
      m, state,
      {"'w.weight' is F8_E4M3[300, 200]", "'w.weight_scale_inv' is F32[2, 2]", "expected [3, 2]"});
}

TEST_CASE("fp8_block: Q/K/V fused along rows take their scales along, and split back bit-exactly") {
  StateDict state;
  add_weight(state, kBlock, "q.weight", {256, 300});
  add_weight(state, kBlock, "k.weight", {128, 300});
  add_weight(state, kBlock, "v.weight", {100, 300});  // the last part may be ragged
  const StateDict out = run_and_undo(
      concatenate_tensors({"q.weight", "k.weight", "v.weight"}, "qkv.weight", 0), kBlock, state);
  CHECK(keys(out) == std::set<std::string>{"qkv.weight", "qkv.weight_scale_inv"});
  CHECK(out.at("qkv.weight_scale_inv").shape() == Shape{4, 3});
  CHECK(equal(floats(out, kBlock, "qkv.weight"),
              cat({floats(state, kBlock, "q.weight"), floats(state, kBlock, "k.weight"),
                   floats(state, kBlock, "v.weight")},
                  0)));
}

TEST_CASE(
    "fp8_block: a fusion that would put two tensors under one scale is refused, naming them") {
  StateDict state;
  add_weight(state, kBlock, "q.weight", {200, 300});
  add_weight(state, kBlock, "k.weight", {128, 300});
  check_refused(quantized(concatenate_tensors({"q.weight", "k.weight"}, "qk.weight", 0), kBlock),
                state, {"'q.weight' has 200", "multiple of the block's 128", "'k.weight'"});
  // Along the columns, the same rule with the block's columns.
  StateDict cols;
  add_weight(cols, kBlock, "a.weight", {64, 100});
  add_weight(cols, kBlock, "b.weight", {64, 128});
  check_refused(quantized(concatenate_tensors({"a.weight", "b.weight"}, "ab.weight", 1), kBlock),
                cols, {"'a.weight' has 100", "'b.weight'"});
  // A split that would cut a block.
  StateDict fused;
  add_weight(fused, kBlock, "qk.weight", {356, 64});
  check_refused(
      quantized(split_tensors("qk.weight", {"q.weight", "k.weight"}, {100, 256}, 0), kBlock), fused,
      {"'q.weight' gets 100", "'qk.weight_scale_inv'"});
}

TEST_CASE("fp8_block: experts stack with their scales; chunk, split and transpose follow too") {
  StateDict experts;
  for (const char* e : {"e0.weight", "e1.weight", "e2.weight"})
    add_weight(experts, kBlock, e, {130, 70});
  const StateDict stacked = run_and_undo(
      stack_tensors({"e0.weight", "e1.weight", "e2.weight"}, "experts.weight", 0), kBlock, experts);
  CHECK(stacked.at("experts.weight_scale_inv").shape() == Shape{3, 2, 1});
  CHECK(equal(floats(stacked, kBlock, "experts.weight"),
              stack({floats(experts, kBlock, "e0.weight"), floats(experts, kBlock, "e1.weight"),
                     floats(experts, kBlock, "e2.weight")})));

  StateDict fused;
  add_weight(fused, kBlock, "gate_up.weight", {511, 200});  // chunks of 256 and 255
  const StateDict halves =
      run_and_undo(chunk_tensors("gate_up.weight", {"gate.weight", "up.weight"}, 0), kBlock, fused);
  const auto want = chunk(floats(fused, kBlock, "gate_up.weight"), 2, 0);
  CHECK(equal(floats(halves, kBlock, "gate.weight"), want[0].contiguous()));
  CHECK(equal(floats(halves, kBlock, "up.weight"), want[1].contiguous()));
  const StateDict parts = run_and_undo(
      split_tensors("gate_up.weight", {"a.weight", "b.weight"}, {384, 127}, 0), kBlock, fused);
  CHECK(parts.at("b.weight_scale_inv").shape() == Shape{1, 2});

  const StateDict t = run_and_undo(
      std::make_shared<TransposeMapper>("gate_up.weight", "t.weight", 0, 1), kBlock, fused);
  CHECK(equal(floats(t, kBlock, "t.weight"),
              floats(fused, kBlock, "gate_up.weight").transpose(0, 1).contiguous()));
  const QuantScheme tall =
      scheme(QuantFormat::kFp8Block, ".weight", ".weight_scale_inv", {}, 128, 64);
  StateDict one;
  add_weight(one, tall, "w.weight", {130, 70});
  check_refused(quantized(transpose("w.weight", 0, 1), tall), one, {"128 x 64 blocks 64 x 128"});
}

TEST_CASE("fp8_channel: rows fuse, columns split with the same scales, columns never fuse") {
  const QuantScheme q = scheme(QuantFormat::kFp8Channel, ".weight", ".weight_scale");
  StateDict state;
  add_weight(state, q, "gate.weight", {30, 64});
  add_weight(state, q, "up.weight", {30, 64});
  const StateDict fused = run_and_undo(
      concatenate_tensors({"gate.weight", "up.weight"}, "gate_up.weight", 0), q, state);
  CHECK(equal(floats(fused, q, "gate_up.weight"),
              cat({floats(state, q, "gate.weight"), floats(state, q, "up.weight")}, 0)));
  check_refused(quantized(concatenate_tensors({"gate.weight", "up.weight"}, "x.weight", 1), q),
                state, {"one scale for the parts", "'gate.weight_scale'"});
  const StateDict gate{{"gate.weight", state.at("gate.weight")},
                       {"gate.weight_scale", state.at("gate.weight_scale")}};
  const StateDict cols =
      run_and_undo(split_tensors("gate.weight", {"a.weight", "b.weight"}, {24, 40}, 1), q, gate);
  CHECK(equal(cols.at("a.weight_scale"), state.at("gate.weight_scale")));
  CHECK(equal(floats(cols, q, "b.weight"),
              floats(state, q, "gate.weight").narrow(1, 24, 40).contiguous()));
  // A per-tensor scale is copied to every piece, and never joined.
  StateDict tensor;
  tensor["w.weight"] = codes({8, 6}, DType::F8_E4M3);
  tensor["w.weight_scale"] = float_scales({1});
  const StateDict rows =
      run_and_undo(chunk_tensors("w.weight", {"a.weight", "b.weight"}, 0), q, tensor);
  CHECK(equal(rows.at("b.weight_scale"), tensor.at("w.weight_scale")));
  check_refused(quantized(stack_tensors({"a.weight", "b.weight"}, "w.weight", 0), q), rows,
                {"one for its whole tensor"});
}

TEST_CASE(
    "mxfp4 (gpt-oss blocks and packed): experts stack, groups fuse, packed bytes never split") {
  const QuantScheme q = scheme(QuantFormat::kMxfp4, "_blocks", "_scales");
  StateDict state;
  add_weight(state, q, "e0.down_blocks", {64, 3, 16});
  add_weight(state, q, "e1.down_blocks", {64, 3, 16});
  const StateDict stacked = run_and_undo(
      stack_tensors({"e0.down_blocks", "e1.down_blocks"}, "experts.down_blocks", 0), q, state);
  CHECK(stacked.at("experts.down_scales").shape() == Shape{2, 64, 3});
  CHECK(equal(floats(stacked, q, "experts.down_blocks"),
              stack({floats(state, q, "e0.down_blocks"), floats(state, q, "e1.down_blocks")})));
  const StateDict wide = run_and_undo(
      concatenate_tensors({"e0.down_blocks", "e1.down_blocks"}, "w_blocks", 1), q, state);
  CHECK(equal(floats(wide, q, "w_blocks"),
              cat({floats(state, q, "e0.down_blocks"), floats(state, q, "e1.down_blocks")}, 1)));
  check_refused(
      quantized(concatenate_tensors({"e0.down_blocks", "e1.down_blocks"}, "x_blocks", 2), q), state,
      {"'e0.down_scales'"});
  // compressed-tensors' packed layout: columns fuse a whole 32-element block at a time.
  const QuantScheme ct = scheme(QuantFormat::kMxfp4, ".weight_packed", ".weight_scale");
  StateDict packed;
  add_weight(packed, ct, "a.weight_packed", {5, 32});
  add_weight(packed, ct, "b.weight_packed", {5, 20});
  const StateDict ab = run_and_undo(
      concatenate_tensors({"a.weight_packed", "b.weight_packed"}, "ab.weight_packed", 1), ct,
      packed);
  CHECK(equal(
      floats(ab, ct, "ab.weight_packed"),
      cat({floats(packed, ct, "a.weight_packed"), floats(packed, ct, "b.weight_packed")}, 1)));
  check_refused(
      quantized(concatenate_tensors({"b.weight_packed", "a.weight_packed"}, "ba.weight_packed", 1),
                ct),
      packed, {"'b.weight_packed' has 20", "multiple of the block's 16"});
}

TEST_CASE("nvfp4: stacked weights get one global scale per matrix, in both conventions' shapes") {
  for (const Shape& global : {Shape{}, Shape{1}}) {  // ModelOpt's [], compressed-tensors' [1]
    const QuantScheme q =
        scheme(QuantFormat::kNvfp4, ".weight", ".weight_scale", ".weight_scale_2");
    StateDict state;
    add_weight(state, q, "e0.weight", {6, 9}, global);
    add_weight(state, q, "e1.weight", {6, 9}, global);
    const StateDict stacked =
        run_and_undo(stack_tensors({"e0.weight", "e1.weight"}, "experts.weight", 0), q, state);
    CHECK(stacked.at("experts.weight_scale_2").shape() == Shape{2});
    for (GlobalScaleMode mode : {GlobalScaleMode::kMultiply, GlobalScaleMode::kDivide}) {
      CHECK(
          equal(floats(stacked, q, "experts.weight", mode),
                stack({floats(state, q, "e0.weight", mode), floats(state, q, "e1.weight", mode)})));
    }
    // Stacks of experts join along the experts, their global scales with them.
    StateDict experts;
    add_weight(experts, q, "a.weight", {2, 6, 9}, {2});
    add_weight(experts, q, "b.weight", {3, 6, 9}, {3});
    const StateDict joined =
        run_and_undo(concatenate_tensors({"a.weight", "b.weight"}, "ab.weight", 0), q, experts);
    CHECK(joined.at("ab.weight_scale_2").shape() == Shape{5});
    CHECK(equal(floats(joined, q, "ab.weight"),
                cat({floats(experts, q, "a.weight"), floats(experts, q, "b.weight")}, 0)));
    // Fusing rows would need one global scale for both: refused, naming them.
    check_refused(quantized(concatenate_tensors({"e0.weight", "e1.weight"}, "x.weight", 0), q),
                  state, {"one global scale", "'e0.weight_scale_2'"});
  }
  const QuantScheme q = scheme(QuantFormat::kNvfp4, ".weight", ".weight_scale");
  StateDict state;
  add_weight(state, q, "a.weight", {4, 8});
  add_weight(state, q, "b.weight", {4, 5});
  const StateDict ab =
      run_and_undo(concatenate_tensors({"a.weight", "b.weight"}, "ab.weight", 1), q, state);
  CHECK(equal(floats(ab, q, "ab.weight"),
              cat({floats(state, q, "a.weight"), floats(state, q, "b.weight")}, 1)));
  check_refused(quantized(concatenate_tensors({"b.weight", "a.weight"}, "ba.weight", 1), q), state,
                {"'b.weight' has 5", "multiple of the block's 8"});
}

TEST_CASE("ops the scales cannot follow, and weights without the weight suffix, are refused") {
  CHECK_THROWS_WITH_AS(quantized(cast("w.weight", DType::BF16), kBlock),
                       doctest::Contains("'w.weight_scale_inv' of the quantized weight 'w.weight'"),
                       ValueError);
  CHECK_THROWS_WITH_AS(quantized(rename_tensor("w.weight", "w.kernel"), kBlock),
                       doctest::Contains("'w.kernel' does not end in the weight suffix"),
                       ValueError);
}

// ---- spec files ---------------------------------------------------------------------------------

namespace {

std::vector<std::string> keys_of(const StateDict& state) {
  std::vector<std::string> out;
  for (const auto& kv : state) out.push_back(kv.first);
  return out;
}

StateDict deepseek_like() {
  StateDict s;
  for (const char* p : {"q", "k", "v"}) {
    add_weight(s, kBlock, std::string("model.layers.0.attn.") + p + "_proj.weight",
               {std::string(p) == "q" ? int64_t{256} : int64_t{128}, 200});
  }
  s["model.norm.weight"] = random_values({200}, DType::BF16);
  return s;
}

const char* kQuantization =
    R"("quantization": {"format": "fp8_block", "weight_suffix": ".weight",
                        "scale_suffix": ".weight_scale_inv"})";

std::string spec_with(const std::string& rules, bool quantization = true) {
  return std::string(R"({"d9d_mapper_spec": 1, "unmatched": "error", )") +
         (quantization ? std::string(kQuantization) + ", " : "") + R"("rules": [)" + rules + "]}";
}

std::string spec_error(const std::string& json, const std::vector<std::string>& keys) {
  try {
    from_spec(json, keys);
  } catch (const SpecError& e) {
    return e.what();
  }
  FAIL("expected a SpecError");
  return {};
}

}  // namespace

TEST_CASE("a spec's \"quantization\" makes every rule that moves a weight move its scale too") {
  const StateDict state = deepseek_like();
  const std::string json = spec_with(R"(
    {"op": "concatenate_tensors", "dim": 0, "target": "layers.{L}.qkv.weight",
     "sources": ["model.layers.{L}.attn.q_proj.weight", "model.layers.{L}.attn.k_proj.weight",
                 "model.layers.{L}.attn.v_proj.weight"]},
    {"op": "rename_tensor", "source": "model.norm.weight", "target": "norm.weight"})");
  const SpecMapping m = from_spec(json, keys_of(state));
  const StateDict out = apply_all(*m.mapper, state);
  CHECK(keys(out) == std::set<std::string>{"layers.0.qkv.weight", "layers.0.qkv.weight_scale_inv",
                                           "norm.weight"});
  CHECK(specs_of(out) == infer_all(*m.mapper, specs_of(state)));
  check_same_state(apply_all(*m.mapper->inverse(specs_of(state)), out), state);
  // A rule over every key meets the scales too: they follow their weights, not the rule.
  const SpecMapping all = from_spec(
      spec_with(R"({"op": "rename_tensor", "source": "model.{x...}", "target": "{x...}"})"),
      keys_of(state));
  CHECK(all.mapper->state_dependency_groups().size() == 4);  // q, k, v with scales; norm
  CHECK(keys(apply_all(*all.mapper, state)).count("layers.0.attn.k_proj.weight_scale_inv") == 1);
}

TEST_CASE("a spec cannot move a scale on its own, nor fuse a quantized weight with a plain one") {
  StateDict state = deepseek_like();
  state["model.layers.0.attn.q_proj.bias"] = random_values({256}, DType::BF16);
  const std::string alone =
      spec_error(spec_with(R"({"op": "rename_tensor", "source": "{x...}.q_proj.weight_scale_inv",
                    "target": "{x...}.q.weight_scale_inv"})"),
                 keys_of(state));
  CHECK(alone.find("'model.layers.0.attn.q_proj.weight_scale_inv' belongs to the quantized weight "
                   "'model.layers.0.attn.q_proj.weight'") != std::string::npos);
  const std::string mixed =
      spec_error(spec_with(R"({"op": "concatenate_tensors", "target": "x.weight", "sources":
                    ["model.layers.0.attn.q_proj.weight", "model.layers.0.attn.q_proj.bias"]})"),
                 keys_of(state));
  CHECK(mixed.find("'model.layers.0.attn.q_proj.bias', read with it, is not one") !=
        std::string::npos);
  const std::string misaligned = [&] {
    StateDict s;
    add_weight(s, kBlock, "a.weight", {100, 64});
    add_weight(s, kBlock, "b.weight", {128, 64});
    const SpecMapping m =
        from_spec(spec_with(R"({"op": "concatenate_tensors", "target": "ab.weight",
                      "sources": ["a.weight", "b.weight"]})"),
                  keys_of(s));
    try {
      infer_all(*m.mapper, specs_of(s));
    } catch (const ValueError& e) {
      return std::string(e.what());
    }
    return std::string();
  }();
  CHECK(misaligned.find("'a.weight' has 100") != std::string::npos);
}

TEST_CASE("the spec op dequantize reads a weight with its scales; its fields are checked") {
  const StateDict state = deepseek_like();
  const SpecMapping m = from_spec(std::string(R"({"d9d_mapper_spec": 1, "rules": [
        {"op": "dequantize", "format": "fp8_block", "source": "{m...}.weight",
         "scale": "{m...}.weight_scale_inv", "dtype": "BF16"}]})"),
                                  keys_of(state));
  const StateDict out = apply_all(*m.mapper, state);
  // The norm has no scale: not a quantized weight, kept as it is ("unmatched": "keep").
  CHECK(keys(out) == std::set<std::string>{
                         "model.layers.0.attn.k_proj.weight", "model.layers.0.attn.q_proj.weight",
                         "model.layers.0.attn.v_proj.weight", "model.norm.weight"});
  CHECK(out.at("model.layers.0.attn.q_proj.weight").dtype() == DType::BF16);
  CHECK(specs_of(out) == infer_all(*m.mapper, specs_of(state)));
  const std::vector<std::string> keys = keys_of(state);
  auto rule = [](const std::string& fields) {
    return std::string(R"({"d9d_mapper_spec": 1, "rules": [{"op": "dequantize", )") + fields +
           "}]}";
  };
  const std::string base = R"("source": "{m...}.weight", "scale": "{m...}.weight_scale_inv")";
  CHECK(spec_error(rule(R"("format": "fp7", "dtype": "BF16", )" + base), keys)
            .find("unknown format") != std::string::npos);
  CHECK(spec_error(rule(R"("format": "fp8_block", "dtype": "F8_E4M3", )" + base), keys)
            .find("expected \"BF16\"") != std::string::npos);
  CHECK(spec_error(rule(R"("format": "mxfp4", "block": [32, 32], "dtype": "BF16", )" + base), keys)
            .find("only fp8_block has a block") != std::string::npos);
  CHECK(
      spec_error(rule(R"("format": "nvfp4", "global_scale": "{m...}.g", "dtype": "BF16", )" + base),
                 keys)
          .find("never guessed") != std::string::npos);
  CHECK(
      spec_error(
          rule(
              R"("format": "fp8_block", "dtype": "BF16", "source": "{m...}.weight",
                  "scale": "{n}.s")"),
          keys)
          .find("{n} is not bound") != std::string::npos);
  // A global scale the checkpoint lacks, named with its weight.
  StateDict nv;
  const QuantScheme q = scheme(QuantFormat::kNvfp4, ".weight", ".weight_scale");
  add_weight(nv, q, "w.weight", {4, 8});
  const std::string missing =
      spec_error(rule(R"("format": "nvfp4", "source": "{m}.weight", "scale": "{m}.weight_scale",
              "global_scale": "{m}.weight_scale_2", "global_scale_mode": "multiply",
              "dtype": "BF16")"),
                 keys_of(nv));
  CHECK(missing.find("has 'w.weight' and its scale 'w.weight_scale' but not its global scale "
                     "'w.weight_scale_2'") != std::string::npos);
}

// ---- pairs in a checkpoint ----------------------------------------------------------------------

TEST_CASE("quantized pairs are found by names and dtypes in every convention") {
  SpecDict s;
  s["ds.weight"] = {DType::F8_E4M3, {300, 200}};
  s["ds.weight_scale_inv"] = {DType::F32, {3, 2}};
  s["ct.weight"] = {DType::F8_E4M3, {300, 200}};
  s["ct.weight_scale"] = {DType::BF16, {300, 1}};
  s["oss.down_blocks"] = {DType::U8, {32, 64, 3, 16}};
  s["oss.down_scales"] = {DType::U8, {32, 64, 3}};
  s["mo.weight"] = {DType::U8, {64, 100}};
  s["mo.weight_scale"] = {DType::F8_E4M3, {64, 13}};
  s["mo.weight_scale_2"] = {DType::F32, {}};
  s["ctnv.weight_packed"] = {DType::U8, {64, 100}};
  s["ctnv.weight_scale"] = {DType::F8_E4M3, {64, 13}};
  s["ctnv.weight_global_scale"] = {DType::F32, {1}};
  s["bad.weight"] = {DType::F8_E4M3, {300, 200}};
  s["bad.weight_scale_inv"] = {DType::F32, {2, 2}};
  s["norm.weight"] = {DType::BF16, {200}};
  const std::vector<QuantizedPair> pairs = find_quantized_pairs(s, std::nullopt);
  REQUIRE(pairs.size() == 6);
  std::map<std::string, const QuantizedPair*> by;
  for (const QuantizedPair& p : pairs) by[p.weight] = &p;
  CHECK(by.at("ds.weight")->format == QuantFormat::kFp8Block);
  CHECK(by.at("ds.weight")->logical_shape == Shape{300, 200});
  CHECK(by.at("ct.weight")->format == QuantFormat::kFp8Channel);
  CHECK(by.at("oss.down_blocks")->format == QuantFormat::kMxfp4);
  CHECK(by.at("oss.down_blocks")->logical_shape == Shape{32, 64, 96});
  CHECK(by.at("mo.weight")->format == QuantFormat::kNvfp4);
  CHECK(by.at("mo.weight")->global_scale == "mo.weight_scale_2");
  CHECK(by.at("mo.weight")->global_scale_mode == GlobalScaleMode::kMultiply);
  CHECK(by.at("ctnv.weight_packed")->global_scale_mode == GlobalScaleMode::kDivide);
  CHECK(by.at("ctnv.weight_packed")->logical_shape == Shape{64, 200});
  CHECK(by.at("bad.weight")->misfit.find("expected [3, 2]") != std::string::npos);
  // The config's block decides the fit.
  QuantizationConfig config;
  config.block = std::array<int64_t, 2>{150, 100};
  CHECK(find_quantized_pairs(s, config)[1].misfit.empty());  // bad.weight: ceil(300/150), 200/100
}

TEST_CASE("config.json's quantization_config gives the method and the block") {
  const auto ds = parse_quantization_config(
      R"({"architectures": ["X"], "quantization_config": {"activation_scheme": "dynamic",
          "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}})",
      "config.json");
  REQUIRE(ds);
  CHECK(ds->quant_method == "fp8");
  CHECK(ds->block == std::array<int64_t, 2>{128, 128});
  const auto ct = parse_quantization_config(
      R"({"quantization_config": {"quant_method": "compressed-tensors", "config_groups":
          {"group_0": {"weights": {"block_structure": [64, 32]}}}}})",
      "config.json");
  CHECK(ct->block == std::array<int64_t, 2>{64, 32});
  CHECK_FALSE(parse_quantization_config(R"({"hidden_size": 4})", "config.json"));
  CHECK_THROWS_WITH_AS(parse_quantization_config("{", "ckpt/config.json"),
                       doctest::Contains("ckpt/config.json: not valid JSON"), ValueError);
}

TEST_CASE("a mapper that separates a weight from its scale is refused, naming both") {
  SpecDict s;
  s["w.weight"] = {DType::F8_E4M3, {300, 200}};
  s["w.weight_scale_inv"] = {DType::F32, {3, 2}};
  const std::vector<QuantizedPair> pairs = find_quantized_pairs(s, std::nullopt);
  auto refused = [&](const MapperPtr& m, const std::string& needle) {
    try {
      check_quantized_pairs(*m, pairs);
      FAIL("expected a ValueError");
    } catch (const ValueError& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find("'w.weight' and its scale 'w.weight_scale_inv'") != std::string::npos);
      CHECK(what.find(needle) != std::string::npos);
    }
  };
  // Kept together, passed through, dropped together: fine.
  check_quantized_pairs(*mapper::dequantize("w.weight", "w.weight_scale_inv", "w", {}), pairs);
  check_quantized_pairs(*parallel({identity("w.weight"), identity("w.weight_scale_inv")}), pairs);
  check_quantized_pairs(*parallel({identity("other")}), pairs);
  check_quantized_pairs(*quantized(rename_tensor("w.weight", "v.weight"), kBlock), pairs);
  // Read alone, or moved apart.
  refused(cast("w.weight", DType::BF16), "the weight without its scale");
  refused(parallel({identity("w.weight_scale_inv")}), "a scale without its weight");
  refused(parallel({rename_tensor("w.weight", "v.weight"), identity("w.weight_scale_inv")}),
          "moved in separate groups");
  refused(sequential({parallel({identity("w.weight"), identity("w.weight_scale_inv")}),
                      parallel({transpose("w.weight", 0, 1), identity("w.weight_scale_inv")})}),
          "moved in separate groups");
  // Shapes that do not fit, read: refused too.
  SpecDict bad = s;
  bad["w.weight_scale_inv"] = {DType::F32, {2, 2}};
  CHECK_THROWS_WITH_AS(
      check_quantized_pairs(*parallel({identity("w.weight"), identity("w.weight_scale_inv")}),
                            find_quantized_pairs(bad, std::nullopt)),
      doctest::Contains("which do not fit"), ValueError);
}
