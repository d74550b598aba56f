// Property tests: infer() agrees with apply() for random shapes and parameters (valid or not),
// and sequential({m, m.inverse()}) is the identity on data for every invertible op.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <optional>

#include "helpers.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::mapper::test;

namespace {

const DType kDTypes[] = {DType::F32, DType::BF16, DType::I8, DType::U8, DType::I64, DType::F16};

DType random_dtype() {
  return kDTypes[randint(0, std::size(kDTypes) - 1)];
}

// A random op over random inputs; roughly half the cases are invalid (bad dims, mismatched
// shapes, wrong counts) to hold the error side of infer() against apply() too.
struct Case {
  MapperPtr mapper;
  StateDict inputs;
};

Case random_case(int op) {
  const DType dtype = randint(0, 9) == 0 ? DType::F4 : random_dtype();
  auto make = [&](Shape shape) {
    if (is_sub_byte(dtype) && numel_of(shape) % 2 != 0) shape.push_back(2);
    return random_values(shape, dtype);
  };
  Shape shape = random_shape(0, 4, 4);
  const auto n = static_cast<int64_t>(shape.size());
  auto dim_in = [](int64_t lo, int64_t hi) { return randint(lo - 1, hi + 1); };  // sometimes out
  switch (op) {
    case 0:
      return {transpose("w", dim_in(-n, n - 1), dim_in(-n, n - 1)), {{"w", make(shape)}}};
    case 1: {
      std::vector<int64_t> perm(static_cast<size_t>(randint(0, 4)));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng());
      for (auto& p : perm) {
        if (randint(0, 1)) p -= static_cast<int64_t>(perm.size());
      }
      return {permute("w", Dims(perm)), {{"w", make(shape)}}};
    }
    case 2:
      return {randint(0, 2)
                  ? squeeze("w", dim_in(-std::max<int64_t>(n, 1), std::max<int64_t>(n, 1) - 1))
                  : squeeze("w"),
              {{"w", make(shape)}}};
    case 3:
      return {unsqueeze("w", dim_in(-n - 1, n)), {{"w", make(shape)}}};
    case 4: {
      Shape target;
      if (randint(0, 1)) {
        target = {-1};
        if (numel_of(shape) > 0 && randint(0, 1)) target.insert(0, shape.empty() ? 1 : shape[0]);
      } else {
        target = random_shape(0, 3, 4);
      }
      return {reshape("w", target), {{"w", make(shape)}}};
    }
    case 5: {
      const DType to = randint(0, 9) == 0 ? DType::F4 : random_dtype();
      return {cast("w", to), {{"w", make(shape)}}};
    }
    case 6:
    case 7: {
      const int64_t count = randint(1, 3);
      std::vector<std::string> names;
      StateDict in;
      const bool is_cat = op == 7;
      const int64_t d = is_cat ? dim_in(-std::max<int64_t>(n, 1), std::max<int64_t>(n, 1) - 1)
                               : dim_in(-n - 1, n);
      for (int64_t i = 0; i < count; ++i) {
        names.push_back(d9d::detail::str_cat("t", i));
        Shape s = shape;
        if (randint(0, 3) == 0 && !s.empty()) {
          s[static_cast<size_t>(randint(0, n - 1))] += 1;  // a mismatch (or a legal cat size)
        }
        if (is_cat && randint(0, 7) == 0) s = {0};  // torch.cat's skipped legacy empty
        in.emplace(names.back(), make(s));
      }
      std::shuffle(names.begin(), names.end(), rng());
      return {is_cat ? concatenate_tensors(names, "out", d) : stack_tensors(names, "out", d), in};
    }
    case 8:
    case 9:
    case 10: {
      if (n > 0 && randint(0, 3) != 0 && shape[0] == 0) shape[0] = 3;
      const int64_t d = dim_in(-n, n - 1);
      const int64_t size = (d >= -n && d < n) ? shape[static_cast<size_t>(d < 0 ? d + n : d)] : 2;
      int64_t count = std::max<int64_t>(1, size + randint(-1, 1) * (randint(0, 2) == 0));
      if (op == 9) count = randint(1, 5);
      std::vector<std::string> targets;
      for (int64_t i = 0; i < count; ++i) targets.push_back(d9d::detail::str_cat("p", i));
      if (op == 8) return {unstack_tensors("w", targets, d), {{"w", make(shape)}}};
      if (op == 9) return {chunk_tensors("w", targets, d), {{"w", make(shape)}}};
      std::vector<int64_t> sizes(targets.size(), 0);
      int64_t left = size;
      for (size_t i = 0; i + 1 < sizes.size(); ++i) {
        sizes[i] = randint(0, left);
        left -= sizes[i];
      }
      sizes.back() = left + (randint(0, 4) == 0 ? 1 : 0);
      return {split_tensors("w", targets, sizes, d), {{"w", make(shape)}}};
    }
    // ---- model layouts: valid shapes most of the time, an off-by-one now and then ----
    case 11: {
      const int64_t heads = randint(1, 3);
      if (randint(0, 3) != 0) {
        if (shape.empty()) shape.push_back(1);
        shape[0] = heads * 2 * randint(0, 2) + (randint(0, 5) == 0 ? 1 : 0);
      }
      return {permute_for_rope("w", heads,
                               randint(0, 1) ? RopeDirection::kToHf : RopeDirection::kFromHf),
              {{"w", make(shape)}}};
    }
    case 12:
    case 13: {
      const int64_t kv = randint(1, 3), heads = kv * randint(1, 3), d = randint(1, 3);
      Shape rest = random_shape(0, 2, 3);
      auto rows = [&](int64_t n) {
        Shape s = rest;
        s.insert(0, n * d + (randint(0, 7) == 0 ? 1 : 0));
        return s;
      };
      if (op == 12) {
        return {interleave_qkv({"q", "k", "v"}, "qkv", heads, kv),
                {{"q", make(rows(heads))}, {"k", make(rows(kv))}, {"v", make(rows(kv))}}};
      }
      return {deinterleave_qkv("qkv", {"q", "k", "v"}, heads, kv),
              {{"qkv", make(rows(heads + 2 * kv))}}};
    }
    case 14:
    case 15: {
      const int64_t count = randint(1, 3);
      const int64_t d = dim_in(-std::max<int64_t>(n, 1), std::max<int64_t>(n, 1) - 1);
      std::vector<std::string> names;
      for (int64_t i = 0; i < count; ++i) names.push_back(d9d::detail::str_cat("t", i));
      if (op == 14) {
        StateDict in;
        for (const auto& name : names) {
          Shape s = shape;
          if (randint(0, 7) == 0 && !s.empty()) s[0] += 1;
          in.emplace(name, make(s));
        }
        return {interleave(names, "out", d), in};
      }
      if (n > 0 && d >= -n && d < n && randint(0, 3) != 0) {
        shape[static_cast<size_t>(d < 0 ? d + n : d)] = count * randint(0, 3);
      }
      return {deinterleave("w", names, d), {{"w", make(shape)}}};
    }
    case 16:
    case 17: {
      const int64_t experts = randint(1, 3), parts = randint(1, 2);
      std::vector<std::vector<std::string>> names(static_cast<size_t>(experts));
      for (int64_t e = 0; e < experts; ++e) {
        for (int64_t p = 0; p < parts; ++p) {
          names[static_cast<size_t>(e)].push_back(d9d::detail::str_cat("e", e, "p", p));
        }
      }
      const int64_t pd = dim_in(-std::max<int64_t>(n, 1), std::max<int64_t>(n, 1) - 1);
      if (op == 16) {
        const int64_t d = dim_in(-n - 1, n);
        StateDict in;
        for (const auto& expert : names) {
          for (const auto& name : expert) {
            Shape s = shape;
            if (randint(0, 15) == 0 && !s.empty()) s[0] += 1;
            in.emplace(name, make(s));
          }
        }
        return {stack_experts(names, "out", d, pd), in};
      }
      Shape s = shape;
      const int64_t d = randint(0, static_cast<int64_t>(s.size()));
      s.insert(static_cast<size_t>(d), experts + (randint(0, 7) == 0 ? 1 : 0));
      const auto m = static_cast<int64_t>(s.size()) - 1;  // an expert's dims
      if (m > 0 && pd >= -m && pd < m && randint(0, 3) != 0) {
        const int64_t w = pd < 0 ? pd + m : pd;
        s[static_cast<size_t>(w >= d ? w + 1 : w)] = parts * randint(0, 2);
      }
      return {unstack_experts("w", names, d, pd), {{"w", make(s)}}};
    }
    case 18:
      return {untie_embeddings("w", "lm_head"), {{"w", make(shape)}}};
    // ---- tensor-parallel layouts ----
    case 19: {
      const int64_t parts = randint(1, 5);
      return {shard_tensor("w", "w", dim_in(-n, n - 1), parts, randint(0, parts - 1)),
              {{"w", make(shape)}}};
    }
    case 20:
      return {pad("w", "w", dim_in(-n, n - 1), randint(1, 4)), {{"w", make(shape)}}};
    case 21: {
      const int64_t d = dim_in(-n, n - 1);
      const int64_t size = (d >= -n && d < n) ? shape[static_cast<size_t>(d < 0 ? d + n : d)] : 2;
      const int64_t start = randint(0, size);
      return {narrow("w", "w", d, start, randint(0, size - start + 1)), {{"w", make(shape)}}};
    }
  }
  return {identity("w"), {{"w", make(shape)}}};
}

constexpr int kOps = 22;

enum class Outcome { kOk, kValue, kIndex, kType, kOther };

template <class F>
Outcome outcome_of(F&& f) {
  try {
    f();
    return Outcome::kOk;
  } catch (const IndexError&) {
    return Outcome::kIndex;
  } catch (const TypeError&) {
    return Outcome::kType;
  } catch (const ValueError&) {
    return Outcome::kValue;
  } catch (const Error&) {
    return Outcome::kOther;
  }
}

// Round trip: sequential({m, inverse}) applied to `in` gives `in` back, bit for bit.
void check_round_trip(const MapperPtr& m, const MapperPtr& inv, const StateDict& in) {
  MapperPtr seq = sequential({m, inv});
  StateDict out = apply_all(*seq, in);
  REQUIRE(keys(out) == keys(in));
  for (const auto& entry : in) {  // (INFO captures in a lambda: no structured bindings)
    const std::string& name = entry.first;
    const Tensor& t = entry.second;
    INFO(m->describe(), " then ", inv->describe(), " on ", name, " ", t.str());
    CHECK(equal(out.at(name), t));
  }
  CHECK(infer_all(*seq, specs_of(in)) == specs_of(in));
}

}  // namespace

TEST_CASE("infer agrees with apply on random shapes, dims and counts, valid or not") {
  int valid = 0, invalid = 0;
  for (int trial = 0; trial < 5000; ++trial) {
    Case c = random_case(trial % kOps);
    INFO("trial ", trial, ": ", c.mapper->describe());
    SpecDict inferred;
    const Outcome infer_outcome =
        outcome_of([&] { inferred = infer_all(*c.mapper, specs_of(c.inputs)); });
    StateDict applied;
    const Outcome apply_outcome = outcome_of([&] { applied = apply_all(*c.mapper, c.inputs); });
    CHECK(static_cast<int>(infer_outcome) == static_cast<int>(apply_outcome));
    if (infer_outcome == Outcome::kOk && apply_outcome == Outcome::kOk) {
      ++valid;
      CHECK(specs_of(applied) == inferred);
    } else {
      ++invalid;
    }
  }
  // The generator must exercise both sides.
  CHECK(valid > 1800);
  CHECK(invalid > 500);
}

// moves_data() false is a promise the streamed reader builds on (Note [views or copies] in
// reader.cpp): for contiguous inputs every output is a contiguous view of an input's bytes.
bool outputs_are_views(const ModelStateMapper& m, const StateGroup& g, const StateDict& in) {
  StateDict group;
  for (const auto& k : g.inputs) group.emplace(k, in.at(k));
  for (const auto& [name, out] : m.apply(group)) {
    const bool of_an_input = std::any_of(in.begin(), in.end(), [&](const auto& entry) {
      return out.storage().data() == entry.second.storage().data();
    });
    if (!out.is_contiguous() || !of_an_input) return false;
  }
  return true;
}

TEST_CASE("moves_data() false only where apply() makes contiguous views of its inputs") {
  int views = 0, moving = 0;
  for (int trial = 0; trial < 2400; ++trial) {
    Case c = random_case(trial % kOps);
    if (outcome_of([&] { apply_all(*c.mapper, c.inputs); }) != Outcome::kOk) continue;
    // Alone, and as a stage after a rename (a sequential's net group) inside a prefix scope.
    StateDict renamed;
    for (const auto& [k, v] : c.inputs) renamed.emplace("in." + k, v);
    std::vector<MapperPtr> before;
    for (const auto& [k, v] : c.inputs) before.push_back(rename_tensor("in." + k, k));
    const MapperPtr chained = prefix_scope(sequential({parallel(before), c.mapper}), "m.", "o.");
    StateDict scoped;
    for (const auto& [k, v] : renamed) scoped.emplace("m." + k, v);
    for (const auto& [m, in] : {std::pair{c.mapper, c.inputs}, std::pair{chained, scoped}}) {
      for (const StateGroup& g : m->state_dependency_groups()) {
        INFO("trial ", trial, ": ", m->describe());
        if (m->moves_data(g)) {
          ++moving;
        } else {
          ++views;
          CHECK(outputs_are_views(*m, g, in));
        }
      }
    }
  }
  CHECK(views > 500);  // identity-like ops, chunks along dim 0, casts to the same dtype
  CHECK(moving > 500);
}

// concatenated_inputs() lets the reader skip apply() and read the inputs straight into the output:
// what it names must be exactly apply()'s bytes.
TEST_CASE("concatenated_inputs() names inputs whose bytes end to end are apply()'s one output") {
  int concatenations = 0;
  for (int trial = 0; trial < 6000; ++trial) {
    // Every op: those that say nothing are skipped, and any other that speaks must be right (an
    // interleave_qkv that claimed its sources would fill its output with q, k, v end to end).
    Case c = random_case(trial % kOps);
    if (outcome_of([&] { apply_all(*c.mapper, c.inputs); }) != Outcome::kOk) continue;
    const MapperPtr scoped = prefix_scope(parallel({c.mapper, rename_tensor("x", "y")}), "m.", "o.");
    StateDict in;
    for (const auto& [k, v] : c.inputs) in.emplace("m." + k, v);
    for (const auto& [m, inputs] : {std::pair{c.mapper, c.inputs}, std::pair{scoped, in}}) {
      const StateGroup& g = *m->state_dependency_groups().begin();
      const std::vector<std::string> parts = m->concatenated_inputs(g);
      if (parts.empty()) continue;
      INFO("trial ", trial, ": ", m->describe());
      ++concatenations;
      REQUIRE(std::set<std::string>(parts.begin(), parts.end()) == g.inputs);
      StateDict group;
      for (const auto& k : g.inputs) group.emplace(k, inputs.at(k));
      const StateDict out = m->apply(group);
      REQUIRE(out.size() == 1);
      std::string bytes;
      for (const auto& part : parts) {
        const Tensor& t = inputs.at(part);
        bytes.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.nbytes()));
      }
      const Tensor& result = out.begin()->second;
      CHECK(std::string(static_cast<const char*>(result.data_ptr()),
                        static_cast<size_t>(result.nbytes())) == bytes);
    }
  }
  CHECK(concatenations > 150);
  CHECK(concatenate_tensors({"a", "b"}, "w", 1)->concatenated_inputs(group({"a", "b"}, {"w"})).empty());
  CHECK(sequential({rename_tensor("a", "b"), stack_tensors({"b", "c"}, "w", 0)})
            ->concatenated_inputs(group({"a", "c"}, {"w"}))
            .empty());  // a chain: not said (the safe answer)
  CHECK(identity("w")->concatenated_inputs(group({"w"}, {"w"})).empty());
}

TEST_CASE("moves_data() of each op and of compositions") {
  const StateGroup one{{"w"}, {"w"}};
  for (const MapperPtr& m : {identity("w"), rename_tensor("w", "w"), squeeze("w"),
                             unsqueeze("w", 0), reshape("w", {-1})}) {
    CHECK_FALSE(m->moves_data(*m->state_dependency_groups().begin()));
  }
  for (const MapperPtr& m : {transpose("w", 0, 1), permute("w", {1, 0}), cast("w", DType::F32),
                             stack_tensors({"a", "b"}, "w", 0), concatenate_tensors({"a"}, "w", 0),
                             chunk_tensors("w", {"a"}, 1)}) {
    INFO(m->describe());
    CHECK(m->moves_data(*m->state_dependency_groups().begin()));
  }
  CHECK_FALSE(chunk_tensors("w", {"a", "b"}, 0)->moves_data(group({"w"}, {"a", "b"})));
  CHECK_FALSE(select_child_modules({"w"}, "p")->moves_data(group({"p.w"}, {"w"})));
  // A cast to the dtype it is known to come from returns the tensor itself.
  CHECK_FALSE(cast("w", DType::F32)->inverse({{"w", {DType::F32, {2}}}})->moves_data(one));
  // Compositions: the group moves data when one of its parts does.
  const MapperPtr p = parallel({rename_tensor("a", "x"), concatenate_tensors({"b", "c"}, "y", 0)});
  CHECK_FALSE(p->moves_data(group({"a"}, {"x"})));
  CHECK(p->moves_data(group({"b", "c"}, {"y"})));
  CHECK(p->moves_data(group({"zz"}, {"x"})));  // not a group of it: the safe answer
  const MapperPtr s1 = sequential({rename_tensor("w", "v"), reshape("v", {-1})});
  CHECK_FALSE(s1->moves_data(group({"w"}, {"v"})));
  const MapperPtr s2 = sequential({transpose("w", 0, 1), reshape("w", {-1})});
  CHECK(s2->moves_data(group({"w"}, {"w"})));
  CHECK_FALSE(shard(p, 2, 0)->moves_data(group({"a"}, {"x"})));
  CHECK_FALSE(prefix_scope(p, "m.", "o.")->moves_data(group({"m.a"}, {"o.x"})));
  CHECK(prefix_scope(p, "m.", "o.")->moves_data(group({"m.b", "m.c"}, {"o.y"})));
}

TEST_CASE("data-moving ops give contiguous outputs equal to core's ops") {
  for (int trial = 0; trial < 300; ++trial) {
    Shape shape = random_shape(2, 4, 5);
    const Tensor t = random_tensor(shape, DType::F32);
    const auto n = static_cast<int64_t>(shape.size());
    const int64_t d0 = randint(-n, n - 1), d1 = randint(-n, n - 1);
    const Tensor out = transpose("w", d0, d1)->apply({{"w", t}}).at("w");
    CHECK(out.is_contiguous());
    CHECK(equal(out, t.transpose(d0, d1).contiguous()));
    const int64_t d = randint(-n, n - 1);
    const int64_t size = t.size(d);
    if (size == 0) continue;
    std::vector<std::string> names;
    for (int64_t i = 0; i < size; ++i) names.push_back(d9d::detail::str_cat("u", i));
    StateDict pieces = unstack_tensors("w", names, d)->apply({{"w", t}});
    for (int64_t i = 0; i < size; ++i) {
      const Tensor& p = pieces.at(names[static_cast<size_t>(i)]);
      CHECK(p.is_contiguous());
      CHECK(equal(p, t.select(d, i).contiguous()));
    }
  }
}

TEST_CASE("sequential({m, m.inverse()}) is the identity on data for every invertible op") {
  int checked = 0;
  for (int trial = 0; trial < 3500; ++trial) {
    Case c = random_case(trial % kOps);
    SpecDict specs = specs_of(c.inputs);
    if (outcome_of([&] { apply_all(*c.mapper, c.inputs); }) != Outcome::kOk) continue;
    INFO("trial ", trial, ": ", c.mapper->describe(), " on ", specs.begin()->second);
    MapperPtr inv;
    try {
      inv = c.mapper->inverse(specs);
    } catch (const NotInvertibleError& e) {
      // Only a lossy cast, a cat whose legacy empty part takes no part in the result, and a
      // selection (shard_tensor, narrow) have no inverse once the specs are known.
      const std::string msg = e.what();
      CHECK((msg.find("loses values") != std::string::npos ||
             msg.find("takes no part") != std::string::npos ||
             msg.find("keeps a part") != std::string::npos));
      continue;
    }
    check_round_trip(c.mapper, inv, c.inputs);
    // The inverse's own inverse needs no specs and undoes the inverse.
    MapperPtr back;
    if (outcome_of([&] { back = inv->inverse(); }) == Outcome::kOk) {
      check_round_trip(inv, back, apply_all(*c.mapper, c.inputs));
    }
    ++checked;
  }
  CHECK(checked > 1400);
}

TEST_CASE("ops invertible without specs invert without them") {
  const Tensor t = random_values({4, 1, 6}, DType::BF16);
  const StateDict in{{"w", t}};
  const std::vector<MapperPtr> ms = {
      identity("w"),
      rename_tensor("w", "v"),
      transpose("w", 0, -1),
      permute("w", {1, 2, 0}),
      unsqueeze("w", -1),
      stack_tensors({"w"}, "s", 1),
      unstack_tensors("w", {"a", "b", "c", "d"}, 0),
      chunk_tensors("w", {"a", "b", "c"}, 2),
      split_tensors("w", {"a", "b"}, {1, 5}, -1),
      permute_for_rope("w", 2, RopeDirection::kToHf),
      deinterleave("w", {"a", "b", "c"}, -1),
      deinterleave_qkv("w", {"q", "k", "v"}, 2, 1),
      unstack_experts("w", {{"a", "b"}, {"c", "d"}, {"e", "f"}, {"g", "h"}}, 0, -1),
      untie_embeddings("w", "lm_head")};
  for (const auto& m : ms) {
    INFO(m->describe());
    check_round_trip(m, m->inverse(), in);
    check_round_trip(m->inverse(), m->inverse()->inverse(), apply_all(*m, in));
  }
  for (const auto& m : {squeeze("w"), squeeze("w", 1), reshape("w", {-1}), cast("w", DType::F32),
                        concatenate_tensors({"w"}, "c", 0)}) {
    INFO(m->describe());
    CHECK_THROWS_WITH_AS(m->inverse(), doctest::Contains("inverse(input_specs)"),
                         NotInvertibleError);
    check_round_trip(m, m->inverse(specs_of(in)), in);
  }
  CHECK_THROWS_AS(select_child_modules({"w"}, "p")->inverse(), NotInvertibleError);
  CHECK_THROWS_WITH_AS(cast("w", DType::F8_E4M3)->inverse({{"w", {DType::BF16, {2}}}}),
                       doctest::Contains("BF16 to F8_E4M3 loses values"), NotInvertibleError);
}

TEST_CASE("an inverse built for one layout rejects another") {
  // chunk's inverse concatenates chunk-shaped parts only; unsqueeze's inverse squeezes size 1 only.
  MapperPtr cat_back = chunk_tensors("w", {"a", "b"}, 0)->inverse();
  CHECK_THROWS_WITH_AS(cat_back->infer({{"a", {DType::F32, {1, 2}}}, {"b", {DType::F32, {3, 2}}}}),
                       doctest::Contains("undoes a chunk"), ValueError);
  MapperPtr sq = unsqueeze("w", 0)->inverse();
  CHECK_THROWS_WITH_AS(sq->infer({{"w", {DType::F32, {2, 2}}}}), doctest::Contains("size 1"),
                       ValueError);
}

TEST_CASE("compose mappers invert in reverse order, carrying specs through the stages") {
  // HF-style q/k/v -> renamed -> cast to F32 -> concatenated (uneven, GQA) -> transposed.
  const StateDict in{{"hf.q", random_values({8, 4}, DType::BF16)},
                     {"hf.k", random_values({2, 4}, DType::BF16)},
                     {"hf.v", random_values({2, 4}, DType::BF16)},
                     {"hf.o", random_values({4, 8}, DType::BF16)}};
  MapperPtr m =
      sequential({parallel({rename_tensor("hf.q", "q"), rename_tensor("hf.k", "k"),
                            rename_tensor("hf.v", "v"), rename_tensor("hf.o", "o")}),
                  parallel({cast("q", DType::F32), cast("k", DType::F32), cast("v", DType::F32)}),
                  concatenate_tensors({"q", "k", "v"}, "qkv", 0), transpose("qkv", 0, 1)});
  CHECK(m->state_dependency_groups() ==
        groups({group({"hf.q", "hf.k", "hf.v"}, {"qkv"}), group({"hf.o"}, {"o"})}));
  CHECK_THROWS_AS(m->inverse(), NotInvertibleError);
  MapperPtr inv = m->inverse(specs_of(in));
  CHECK(inv->state_dependency_groups() ==
        groups({group({"qkv"}, {"hf.q", "hf.k", "hf.v"}), group({"o"}, {"hf.o"})}));
  check_round_trip(m, inv, in);
  check_round_trip(prefix_scope(m, "model.", "out."),
                   prefix_scope(m, "model.", "out.")->inverse([&] {
                     SpecDict s;
                     for (const auto& [k, v] : specs_of(in)) s.emplace("model." + k, v);
                     return s;
                   }()),
                   [&] {
                     StateDict s;
                     for (const auto& [k, v] : in) s.emplace("model." + k, v);
                     return s;
                   }());
}

TEST_CASE("is_lossless_cast is exact: lossless casts round-trip every value, lossy ones lose one") {
  std::vector<DType> dtypes;
  for (int i = 0; i < kNumDTypes; ++i) {
    const DType d = all_dtypes()[i].dtype;
    if (!is_sub_byte(d)) dtypes.push_back(d);
  }
  for (DType from : dtypes) {
    if (from == DType::C64) continue;
    Tensor values;
    const int bits = dtype_bits(from);
    if (from == DType::BOOL) {
      values = Tensor::from_vector<bool>({false, true});
    } else if (bits <= 16) {  // every bit pattern
      values = Tensor::empty({int64_t{1} << bits}, from);
      auto* p = static_cast<unsigned char*>(values.mutable_data_ptr());
      for (int64_t i = 0; i < (int64_t{1} << bits); ++i) {
        if (bits == 8) {
          p[i] = static_cast<unsigned char>(i);
        } else {
          p[2 * i] = static_cast<unsigned char>(i);
          p[2 * i + 1] = static_cast<unsigned char>(i >> 8);
        }
      }
    } else {  // the values that tell wider types apart
      const std::vector<double> edge = {0.0,
                                        1.0,
                                        -1.0,
                                        0.5,
                                        16777217.0,
                                        2147483647.0,
                                        -2147483648.0,
                                        4294967295.0,
                                        9007199254740993.0,
                                        1.0 + std::ldexp(1.0, -30),
                                        1e-300,
                                        1e300,
                                        3.0e38,
                                        std::ldexp(1.0, -140),
                                        65505.0,
                                        1e-8};
      values = Tensor::from_vector<double>(edge).to(from);
    }
    // NaN payloads need not survive a round trip; leave NaNs out.
    const std::vector<double> as_double = values.to_vector<double>();
    std::vector<int64_t> keep;
    for (size_t i = 0; i < as_double.size(); ++i) {
      if (!std::isnan(as_double[i])) keep.push_back(static_cast<int64_t>(i));
    }
    std::vector<Tensor> kept;
    for (int64_t i : keep) kept.push_back(values.select(0, i));
    const Tensor clean = stack(kept, 0);
    for (DType to : dtypes) {
      if (to == from) continue;
      // Lossless: the values survive the cast (as doubles, which hold every value tested) and
      // the bits survive the way back. Wrap-around between integers round-trips the bits but
      // changes the values, so it is not lossless.
      const Tensor there = clean.to(to);
      const bool exact =
          equal(there.to(from), clean) && there.to_vector<double>() == clean.to_vector<double>();
      INFO(from, " -> ", to);
      if (is_lossless_cast(from, to)) CHECK(exact);
      if (bits <= 16 && !is_lossless_cast(from, to)) CHECK_FALSE(exact);
    }
  }
}

// ---- Note [slice pushdown] ----------------------------------------------------------------------

namespace {

Region random_box(const Shape& shape) {
  Region r = Region::whole(shape);
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 0 || randint(0, 2) == 0) continue;
    const int64_t b = randint(0, shape[d] - 1);
    r.begin[d] = b;
    r.end[d] = randint(b + 1, shape[d]);
  }
  return r;
}

// The bytes of contiguous `t` inside `box`, in order.
std::vector<uint8_t> bytes_in(const Tensor& t, const Region& box) {
  const Tensor c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  std::vector<uint8_t> out;
  for (const ByteRun& run : region_byte_runs(c.shape(), dtype_bits(c.dtype()), box)) {
    out.insert(out.end(), p + run.offset, p + run.offset + run.size);
  }
  return out;
}

// `t` with every byte outside `box` (nothing, without one) garbage: what the reader leaves there.
Tensor only_inside(const Tensor& t, const std::optional<Region>& box) {
  Tensor g = Tensor::empty(t.shape(), t.dtype());
  if (g.nbytes() == 0) return g;  // (no data pointer to hand memset)
  auto* dst = static_cast<uint8_t*>(g.mutable_data_ptr());
  std::memset(dst, 0xA7, static_cast<size_t>(g.nbytes()));
  if (!box) return g;
  const Tensor c = t.contiguous();
  const auto* src = static_cast<const uint8_t*>(c.data_ptr());
  for (const ByteRun& run : region_byte_runs(c.shape(), dtype_bits(c.dtype()), *box)) {
    std::memcpy(dst + run.offset, src + run.offset, static_cast<size_t>(run.size));
  }
  return g;
}

}  // namespace

TEST_CASE("input_regions(): outputs inside the wanted boxes need only the input boxes it names") {
  int narrowed = 0, checked = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    Case c = random_case(trial % kOps);
    if (is_sub_byte(c.inputs.begin()->second.dtype())) continue;
    StateDict expected;
    if (outcome_of([&] { expected = apply_all(*c.mapper, c.inputs); }) != Outcome::kOk) continue;
    // Alone, and with a stage after it that keeps a piece of its first output (a sequential's
    // net group, the boxes carried back through both).
    std::vector<MapperPtr> mappers{c.mapper};
    const std::string& first = expected.begin()->first;
    const Tensor& first_out = expected.begin()->second;
    if (first_out.dim() > 0) {
      const int64_t parts = randint(1, 4);
      mappers.push_back(sequential(
          {c.mapper, shard_tensor(first, first, randint(0, first_out.dim() - 1), parts,
                                  randint(0, parts - 1))}));
    }
    for (const MapperPtr& m : mappers) {
      const StateDict want_all = apply_all(*m, c.inputs);
      for (const StateGroup& g : m->state_dependency_groups()) {
        INFO("trial ", trial, ": ", m->describe());
        RegionDict wanted;
        for (const auto& name : g.outputs) {
          const Tensor& out = want_all.at(name);
          if (is_sub_byte(out.dtype()) || randint(0, 4) == 0) continue;
          wanted.emplace(name, random_box(out.shape()));
        }
        SpecDict inputs;
        for (const auto& name : g.inputs) inputs.emplace(name, TensorSpec::of(c.inputs.at(name)));
        std::vector<std::string> whole;
        const RegionDict read = m->input_regions(inputs, wanted, &whole);
        StateDict garbled;
        int64_t read_numel = 0, all_numel = 0;
        for (const auto& name : g.inputs) {
          const auto r = read.find(name);
          const std::optional<Region> box =
              r == read.end() ? std::nullopt : std::optional<Region>(r->second);
          garbled.emplace(name, only_inside(c.inputs.at(name), box));
          read_numel += box ? box->numel() : 0;
          all_numel += c.inputs.at(name).numel();
        }
        const StateDict got = m->apply(std::move(garbled));
        for (const auto& [name, box] : wanted) {
          INFO(name, " in ", box.str());
          CHECK(bytes_in(got.at(name), box) == bytes_in(want_all.at(name), box));
        }
        narrowed += read_numel < all_numel;
        ++checked;
      }
    }
  }
  CHECK(checked > 2500);
  CHECK(narrowed > 800);
}

TEST_CASE("region_byte_runs: rows of the innermost narrowed dim, adjacent runs joined") {
  const Shape shape{4, 6, 8};
  // The whole tensor: one run.
  auto runs = region_byte_runs(shape, 16, Region::whole(shape));
  REQUIRE(runs.size() == 1);
  CHECK(runs[0].size == 4 * 6 * 8 * 2);
  // Rows 1..3 of dim 0: one run of two rows.
  runs = region_byte_runs(shape, 16, Region{{1, 0, 0}, {3, 6, 8}});
  REQUIRE(runs.size() == 1);
  CHECK(runs[0].offset == 6 * 8 * 2);
  CHECK(runs[0].size == 2 * 6 * 8 * 2);
  // Columns 2..4 of the last dim of two rows of dim 0: 2 * 6 runs of 2 elements.
  runs = region_byte_runs(shape, 16, Region{{0, 0, 2}, {2, 6, 4}});
  REQUIRE(runs.size() == 12);
  CHECK(runs[1].offset == (8 + 2) * 2);
  CHECK(runs[1].size == 4);
  // Packed 4-bit: whole rows of the last dims.
  runs = region_byte_runs({4, 6}, 4, Region{{1, 1}, {2, 3}});
  REQUIRE(runs.size() == 1);
  CHECK(runs[0].offset == 3);
  CHECK(runs[0].size == 3);
  // An empty box reads nothing.
  CHECK(region_byte_runs(shape, 16, Region{{1, 0, 0}, {1, 6, 8}}).empty());
}

namespace {

// Random bytes of any dtype (every bit pattern: FP8 and FP4 codes, E8M0 exponents, NaNs).
Tensor random_bytes(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<uint8_t*>(t.mutable_data_ptr());
  for (int64_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(randint(0, 255));
  return t;
}

}  // namespace

TEST_CASE("dequantize's input_regions(): rows of the weight and its scales, whole scale blocks") {
  int narrowed = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t rows = randint(1, 40), cols = 32 * randint(1, 3);
    Dequantization how;
    how.dtype = DType::F32;
    StateDict in;
    std::string global;
    switch (trial % 5) {
      case 0:  // fp8_block, a matrix: rows share a scale per block
      case 1: {  // fp8_block, stacked experts [E, R, C]
        how.format = QuantFormat::kFp8Block;
        how.block_rows = randint(1, 8);
        how.block_cols = randint(1, 16);
        Shape w{rows, cols};
        Shape s{(rows + how.block_rows - 1) / how.block_rows,
                (cols + how.block_cols - 1) / how.block_cols};
        if (trial % 5 == 1) {
          w.insert(0, randint(1, 5));
          s.insert(0, w[0]);
        }
        in = {{"w", random_bytes(w, DType::F8_E4M3)}, {"s", random_values(s, DType::F32)}};
        break;
      }
      case 2:  // fp8_channel
        how.format = QuantFormat::kFp8Channel;
        in = {{"w", random_bytes({rows, cols}, DType::F8_E4M3)},
              {"s", random_values({rows, 1}, DType::BF16)}};
        break;
      case 3:  // mxfp4, gpt-oss's [E, R, G, 16] blocks
        how.format = QuantFormat::kMxfp4;
        in = {{"w", random_bytes({rows, 3, cols / 32, 16}, DType::U8)},
              {"s", random_bytes({rows, 3, cols / 32}, DType::U8)}};
        break;
      case 4:  // nvfp4 with a global scale
        how.format = QuantFormat::kNvfp4;
        how.global_scale_mode = GlobalScaleMode::kMultiply;
        global = "g";
        in = {{"w", random_bytes({rows, cols / 2}, DType::U8)},
              {"s", random_bytes({rows, cols / 16}, DType::F8_E4M3)},
              {"g", random_values({}, DType::F32)}};
        break;
    }
    const MapperPtr m = dequantize("w", "s", "out", how, global);
    INFO("trial ", trial, ": ", m->describe());
    const Tensor expected = m->apply(in).at("out");
    const RegionDict wanted{{"out", random_box(expected.shape())}};
    const RegionDict read = m->input_regions(specs_of(in), wanted, nullptr);
    StateDict garbled;
    int64_t read_numel = 0, all_numel = 0;
    for (const auto& [name, t] : in) {
      const auto r = read.find(name);
      garbled.emplace(name, only_inside(t, r == read.end() ? std::nullopt
                                                           : std::optional<Region>(r->second)));
      read_numel += r == read.end() ? 0 : r->second.numel();
      all_numel += t.numel();
    }
    const Tensor got = m->apply(std::move(garbled)).at("out");
    CHECK(bytes_in(got, wanted.at("out")) == bytes_in(expected, wanted.at("out")));
    narrowed += read_numel < all_numel;
  }
  CHECK(narrowed > 150);
}
