// The model-layout ops (permute_for_rope, interleave_qkv, interleave, stack_experts, tied
// embeddings) against index-by-index references written from the layouts' definitions (Note
// [model layouts] in d9d/mapper/layout_ops.cpp), their inverses, and their errors. numpy oracles
// of the same layouts, through spec files and the CLI: tests/cli/layouts_oracle.py.
#include <doctest/doctest.h>

#include <numeric>

#include "helpers.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::mapper::test;

namespace {

// 0, 1, 2, ... as I64 of `shape`: every element says where it came from.
Tensor iota(const Shape& shape) {
  std::vector<int64_t> v(static_cast<size_t>(numel_of(shape)));
  std::iota(v.begin(), v.end(), 0);
  return Tensor::from_vector<int64_t>(v, shape);
}

std::vector<int64_t> values(const Tensor& t) {
  return t.to_vector<int64_t>();
}

// Applies m to `in`, then its inverse (without specs) to the result: `in` comes back bit for bit.
StateDict round_trip(const MapperPtr& m, const StateDict& in) {
  StateDict out = apply_all(*m, in);
  CHECK(infer_all(*m, specs_of(in)) == specs_of(out));
  StateDict back = apply_all(*m->inverse(), out);
  REQUIRE(keys(back) == keys(in));
  for (const auto& [name, t] : in) CHECK(equal(back.at(name), t));
  return out;
}

}  // namespace

TEST_CASE(
    "permute_for_rope to_hf moves interleaved pairs half a head apart, as transformers' permute") {
  // 3 heads of head_dim 4 (half 2) over 5 columns. Interleaved row (h, i, r) -> rotate-half row
  // (h, r, i).
  const int64_t heads = 3, half = 2, cols = 5;
  const Tensor w = iota({heads * 2 * half, cols});
  const StateDict out = round_trip(permute_for_rope("q", heads, RopeDirection::kToHf), {{"q", w}});
  const std::vector<int64_t> got = values(out.at("q"));
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t r = 0; r < 2; ++r) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf_row = h * 2 * half + r * half + i;
        const int64_t meta_row = h * 2 * half + i * 2 + r;
        for (int64_t c = 0; c < cols; ++c) {
          CHECK(got[static_cast<size_t>(hf_row * cols + c)] == meta_row * cols + c);
        }
      }
    }
  }
  // from_hf is the inverse, for 1-D biases too.
  const Tensor b = iota({heads * 2 * half});
  const StateDict hf = apply_all(*permute_for_rope("b", heads, RopeDirection::kToHf), {{"b", b}});
  const StateDict meta =
      apply_all(*permute_for_rope("b", heads, RopeDirection::kFromHf), {{"b", hf.at("b")}});
  CHECK(equal(meta.at("b"), b));
  round_trip(permute_for_rope("b", heads, RopeDirection::kFromHf), {{"b", b}});
}

TEST_CASE("permute_for_rope checks the rows against the heads") {
  CHECK_THROWS_WITH_AS(
      permute_for_rope("k", 4, RopeDirection::kFromHf)->infer({{"k", {DType::BF16, {12, 8}}}}),
      doctest::Contains("12 rows are not 4 heads of an even head_dim"), ValueError);
  CHECK_THROWS_WITH_AS(PermuteForRopeMapper("k", "k", 2, RopeDirection::kToHf, 4)
                           .infer({{"k", {DType::BF16, {16, 8}}}}),
                       doctest::Contains("16 rows are not 2 heads of head_dim 4"), ValueError);
  CHECK_THROWS_AS(permute_for_rope("k", 0, RopeDirection::kToHf), ValueError);
  CHECK_THROWS_AS(
      permute_for_rope("k", 1, RopeDirection::kToHf)->infer({{"k", {DType::F4, {4, 2}}}}),
      TypeError);
}

TEST_CASE("interleave_qkv groups each KV head with its q heads, as Megatron's merge_qkv_weights") {
  const int64_t heads = 4, kv = 2, d = 3, cols = 2, group = heads / kv;
  for (const bool bias : {false, true}) {
    const Shape q_shape = bias ? Shape{heads * d} : Shape{heads * d, cols};
    const Shape kv_shape = bias ? Shape{kv * d} : Shape{kv * d, cols};
    const int64_t c = bias ? 1 : cols;
    const Tensor q = iota(q_shape);
    const Tensor k = Tensor::from_vector<int64_t>(
        [&] {
          std::vector<int64_t> v(static_cast<size_t>(kv * d * c));
          std::iota(v.begin(), v.end(), 1000);
          return v;
        }(),
        kv_shape);
    const Tensor v = Tensor::from_vector<int64_t>(
        [&] {
          std::vector<int64_t> x(static_cast<size_t>(kv * d * c));
          std::iota(x.begin(), x.end(), 2000);
          return x;
        }(),
        kv_shape);
    const StateDict out = round_trip(interleave_qkv({"q", "k", "v"}, "qkv", heads, kv),
                                     {{"q", q}, {"k", k}, {"v", v}});
    const std::vector<int64_t> got = values(out.at("qkv"));
    REQUIRE(got.size() == static_cast<size_t>((heads + 2 * kv) * d * c));
    // The reference: for each group, its q heads' rows, its k head's rows, its v head's rows.
    std::vector<int64_t> want;
    for (int64_t g = 0; g < kv; ++g) {
      for (int64_t row = g * group * d; row < (g + 1) * group * d; ++row) {
        for (int64_t x = 0; x < c; ++x) want.push_back(row * c + x);
      }
      for (int64_t row = g * d; row < (g + 1) * d; ++row) {
        for (int64_t x = 0; x < c; ++x) want.push_back(1000 + row * c + x);
      }
      for (int64_t row = g * d; row < (g + 1) * d; ++row) {
        for (int64_t x = 0; x < c; ++x) want.push_back(2000 + row * c + x);
      }
    }
    CHECK(got == want);
    // deinterleave_qkv is the inverse, and is inverted in turn.
    round_trip(deinterleave_qkv("qkv", {"q", "k", "v"}, heads, kv), out);
  }
}

TEST_CASE("interleave_qkv checks the head counts and the shapes of q, k and v") {
  CHECK_THROWS_WITH_AS(interleave_qkv({"q", "k", "v"}, "qkv", 6, 4), doctest::Contains("multiple"),
                       ValueError);
  CHECK_THROWS_AS(interleave_qkv({"q", "k"}, "qkv", 4, 2), ValueError);
  const MapperPtr m = interleave_qkv({"q", "k", "v"}, "qkv", 4, 2);
  CHECK_THROWS_WITH_AS(
      m->infer(
          {{"q", {DType::F32, {8, 4}}}, {"k", {DType::F32, {2, 4}}}, {"v", {DType::F32, {4, 4}}}}),
      doctest::Contains("'k' has shape [2, 4], expected [4, 4]"), ValueError);
  CHECK_THROWS_AS(
      m->infer(
          {{"q", {DType::F32, {8, 4}}}, {"k", {DType::BF16, {4, 4}}}, {"v", {DType::F32, {4, 4}}}}),
      TypeError);
  CHECK_THROWS_WITH_AS(
      deinterleave_qkv("qkv", {"q", "k", "v"}, 4, 2)->infer({{"qkv", {DType::F32, {10, 4}}}}),
      doctest::Contains("10 rows are not 4 q heads"), ValueError);
}

TEST_CASE("deinterleave takes every n-th element along a dim; interleave puts them back") {
  // gpt-oss: gate_up [E, H, 2I], gate = [..., ::2], up = [..., 1::2].
  const Tensor gate_up = iota({2, 3, 8});
  const MapperPtr m = deinterleave("gate_up", {"gate", "up"}, -1);
  const StateDict out = round_trip(m, {{"gate_up", gate_up}});
  CHECK(out.at("gate").shape() == Shape{2, 3, 4});
  const std::vector<int64_t> gate = values(out.at("gate"));
  const std::vector<int64_t> up = values(out.at("up"));
  for (size_t i = 0; i < gate.size(); ++i) {
    CHECK(gate[i] == static_cast<int64_t>(2 * i));
    CHECK(up[i] == static_cast<int64_t>(2 * i + 1));
  }
  CHECK(out.at("gate").is_contiguous());
  // Three ways along dim 0.
  const StateDict three =
      round_trip(interleave({"a", "b", "c"}, "abc", 0),
                 {{"a", iota({2, 2})}, {"b", iota({2, 2})}, {"c", iota({2, 2})}});
  CHECK(values(three.at("abc")) == std::vector<int64_t>{0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3});
  CHECK_THROWS_WITH_AS(m->infer({{"gate_up", {DType::F32, {2, 3, 7}}}}),
                       doctest::Contains("not a multiple of the 2 targets"), ValueError);
  CHECK_THROWS_WITH_AS(
      interleave({"a", "b"}, "ab", 0)->infer({{"a", {DType::F32, {2}}}, {"b", {DType::F32, {3}}}}),
      doctest::Contains("expected every tensor to have the shape"), ValueError);
}

TEST_CASE("stack_experts gives transformers v5's [E, 2I, H] gate_up_proj, gate rows first") {
  const int64_t experts = 3, inter = 2, hidden = 4;
  std::vector<std::vector<std::string>> names;
  StateDict in;
  for (int64_t e = 0; e < experts; ++e) {
    const std::string p = "experts." + std::to_string(e) + ".";
    names.push_back({p + "gate_proj", p + "up_proj"});
    in[p + "gate_proj"] = random_values({inter, hidden}, DType::BF16);
    in[p + "up_proj"] = random_values({inter, hidden}, DType::BF16);
  }
  const StateDict out = round_trip(stack_experts(names, "gate_up_proj"), in);
  const Tensor& fused = out.at("gate_up_proj");
  CHECK(fused.shape() == Shape{experts, 2 * inter, hidden});
  // MergeModulelist(dim=0) then Concatenate(dim=1), in core's ops.
  std::vector<Tensor> gates, ups;
  for (int64_t e = 0; e < experts; ++e) {
    gates.push_back(in.at(names[static_cast<size_t>(e)][0]));
    ups.push_back(in.at(names[static_cast<size_t>(e)][1]));
  }
  CHECK(equal(fused, cat({stack(gates, 0), stack(ups, 0)}, 1)));
  // Other dims: the experts last, the parts joined along the part's dim 1.
  const StateDict other = round_trip(stack_experts(names, "t", -1, 1), in);
  CHECK(equal(other.at("t"), cat({stack(gates, 2), stack(ups, 2)}, 1)));
  // One part: a plain stack (down_proj [H, I] -> [E, H, I]).
  const StateDict down = round_trip(
      stack_experts({{"experts.0.gate_proj"}, {"experts.1.gate_proj"}, {"experts.2.gate_proj"}},
                    "d"),
      {{"experts.0.gate_proj", gates[0]},
       {"experts.1.gate_proj", gates[1]},
       {"experts.2.gate_proj", gates[2]}});
  CHECK(equal(down.at("d"), stack(gates, 0)));
  // unstack_experts checks the expert count and the parts.
  const MapperPtr back = unstack_experts("gate_up_proj", names);
  CHECK_THROWS_WITH_AS(back->infer({{"gate_up_proj", {DType::BF16, {4, 4, 4}}}}),
                       doctest::Contains("there are 3 experts"), ValueError);
  CHECK_THROWS_WITH_AS(back->infer({{"gate_up_proj", {DType::BF16, {3, 5, 4}}}}),
                       doctest::Contains("is not 2 equal parts"), ValueError);
  CHECK_THROWS_WITH_AS(stack_experts({{"a", "b"}, {"c"}}, "t"),
                       doctest::Contains("expert 1 has 1 parts"), ValueError);
}

TEST_CASE("untie_embeddings gives the embedding as lm_head too; tie_embeddings drops it if equal") {
  const Tensor emb = random_values({8, 4}, DType::BF16);
  const MapperPtr untie = untie_embeddings("embed", "lm_head");
  CHECK(untie->state_dependency_groups() == groups({group({"embed"}, {"embed", "lm_head"})}));
  const StateDict out = round_trip(untie, {{"embed", emb}});
  CHECK(out.at("lm_head").data_ptr() == emb.data_ptr());  // no copy
  const MapperPtr tie = tie_embeddings("embed", "lm_head");
  round_trip(tie, {{"embed", emb}, {"lm_head", emb.clone()}});
  CHECK_THROWS_WITH_AS(
      tie->apply({{"embed", emb}, {"lm_head", random_values({8, 4}, DType::BF16)}}),
      doctest::Contains("'lm_head' differs from 'embed'"), ValueError);
  CHECK_THROWS_WITH_AS(
      tie->infer({{"embed", {DType::BF16, {8, 4}}}, {"lm_head", {DType::BF16, {9, 4}}}}),
      doctest::Contains("cannot be tied"), ValueError);
}
