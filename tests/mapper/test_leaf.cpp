// Leaf mappers: the reference suite's leaf tests (ported with the same expectations), then the
// ops beyond the reference and the errors every op raises.
#include <doctest/doctest.h>

#include <d9d/dist/dtensor.hpp>

#include "helpers.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::mapper::test;

// ---- ported from test_mappers.py ----------------------------------------------------------------

TEST_CASE("identity passes the very same tensor through (test_leaf_identity)") {
  MapperPtr m = identity("foo");
  CHECK(m->state_dependency_groups() == groups({group({"foo"}, {"foo"})}));
  StateDict data{{"foo", Tensor::full<float>({}, 1.0f, DType::F32)}};
  StateDict res = m->apply(data);
  CHECK(keys(res) == keys(data));
  CHECK(res.at("foo").data_ptr() == data.at("foo").data_ptr());  // `is` in the reference
  CHECK(res.at("foo").storage().data() == data.at("foo").storage().data());
}

TEST_CASE("rename_tensor moves a tensor to a new name (test_leaf_rename)") {
  MapperPtr m = rename_tensor("old", "new");
  CHECK(m->state_dependency_groups() == groups({group({"old"}, {"new"})}));
  StateDict res = m->apply({{"old", scalar(123)}});
  CHECK(keys(res) == std::set<std::string>{"new"});
  CHECK(res.at("new").item<int64_t>() == 123);
}

TEST_CASE(
    "select_child_modules strips the parent prefix, one group per name "
    "(test_leaf_select_child)") {
  MapperPtr m = select_child_modules({"w", "b"}, "layer1");
  CHECK(m->state_dependency_groups() ==
        groups({group({"layer1.w"}, {"w"}), group({"layer1.b"}, {"b"})}));
  StateDict res = m->apply({{"layer1.w", scalar(5)}});
  CHECK(keys(res) == std::set<std::string>{"w"});
  CHECK(res.at("w").item<int64_t>() == 5);
  // Beyond the reference (which returns {} for a foreign key): a key it does not select is an
  // undefined group.
  CHECK_THROWS_WITH_AS(m->apply({{"layer2.w", scalar(5)}}), doctest::Contains("undefined group"),
                       ValueError);
  CHECK_THROWS_AS(m->apply({{"layer1.w", scalar(1)}, {"layer1.b", scalar(2)}}), ValueError);
  CHECK(m->infer({{"layer1.b", {DType::F32, {3}}}}) == SpecDict{{"b", {DType::F32, {3}}}});
}

TEST_CASE("transpose swaps dims and returns a contiguous tensor (test_transpose_mapper)") {
  MapperPtr m = transpose("foo", -1, -2);
  CHECK(m->state_dependency_groups() == groups({group({"foo"}, {"foo"})}));
  StateDict res = m->apply({{"foo", ints({1, 2, 3, 4, 5, 6}, {2, 3})}});
  CHECK(keys(res) == std::set<std::string>{"foo"});
  CHECK(res.at("foo").shape() == Shape{3, 2});
  CHECK(equal(res.at("foo"), ints({1, 4, 2, 5, 3, 6}, {3, 2})));
  CHECK(res.at("foo").is_contiguous());
}

TEST_CASE("chunk_tensors splits into one contiguous piece per target (test_chunk_tensors_mapper)") {
  MapperPtr m = chunk_tensors("source", {"a", "b"}, 0);
  CHECK(m->state_dependency_groups() == groups({group({"source"}, {"a", "b"})}));
  StateDict res = m->apply({{"source", ints({1, 2, 3, 4, 5, 6, 7, 8}, {4, 2})}});
  CHECK(keys(res) == std::set<std::string>{"a", "b"});
  CHECK(equal(res.at("a"), ints({1, 2, 3, 4}, {2, 2})));
  CHECK(equal(res.at("b"), ints({5, 6, 7, 8}, {2, 2})));
  CHECK(res.at("a").is_contiguous());
  CHECK(res.at("b").is_contiguous());
}

TEST_CASE("concatenate_tensors joins along a dim (test_unchunk_tensors_mapper)") {
  MapperPtr m = concatenate_tensors({"a", "b"}, "target", 0);
  CHECK(m->state_dependency_groups() == groups({group({"a", "b"}, {"target"})}));
  StateDict res = m->apply({{"a", ints({1, 2, 3, 4}, {2, 2})}, {"b", ints({5, 6, 7, 8}, {2, 2})}});
  CHECK(keys(res) == std::set<std::string>{"target"});
  CHECK(res.at("target").shape() == Shape{4, 2});
  CHECK(equal(res.at("target"), ints({1, 2, 3, 4, 5, 6, 7, 8}, {4, 2})));
  CHECK(res.at("target").is_contiguous());
}

TEST_CASE("stack_tensors stacks in the order of the sources (test_stack_tensors_mapper)") {
  MapperPtr m = stack_tensors({"a", "b", "c"}, "stacked", 0);
  CHECK(m->state_dependency_groups() == groups({group({"a", "b", "c"}, {"stacked"})}));
  const Tensor t1 = ints({1, 2}, {2}), t2 = ints({2, 3}, {2}), t3 = ints({3, 4}, {2});
  // The map orders keys a, b, c; make the order of the sources differ from it too.
  StateDict res = m->apply({{"a", t1}, {"b", t2}, {"c", t3}});
  CHECK(keys(res) == std::set<std::string>{"stacked"});
  CHECK(res.at("stacked").shape() == Shape{3, 2});
  CHECK(equal(res.at("stacked").select(0, 0), t1));
  CHECK(equal(res.at("stacked").select(0, 1), t2));
  CHECK(equal(res.at("stacked").select(0, 2), t3));
  StateDict rev = stack_tensors({"c", "a", "b"}, "s", 0)->apply({{"a", t1}, {"b", t2}, {"c", t3}});
  CHECK(equal(rev.at("s"), ints({3, 4, 1, 2, 2, 3}, {3, 2})));
}

TEST_CASE("unstack_tensors unbinds into the targets (test_unstack_tensors_mapper)") {
  MapperPtr m = unstack_tensors("stacked", {"a", "b", "c"}, 0);
  CHECK(m->state_dependency_groups() == groups({group({"stacked"}, {"a", "b", "c"})}));
  StateDict res = m->apply({{"stacked", ints({1, 2, 2, 3, 3, 4}, {3, 2})}});
  CHECK(keys(res) == std::set<std::string>{"a", "b", "c"});
  CHECK(equal(res.at("a"), ints({1, 2}, {2})));
  CHECK(equal(res.at("b"), ints({2, 3}, {2})));
  CHECK(equal(res.at("c"), ints({3, 4}, {2})));
  // Contiguous as the reference's .contiguous(): unbinding along dim 1 gives strided views.
  StateDict cols = unstack_tensors("s", {"x", "y"}, 1)->apply({{"s", ints({1, 2, 3, 4}, {2, 2})}});
  CHECK(cols.at("x").is_contiguous());
  CHECK(equal(cols.at("y"), ints({2, 4}, {2})));
}

TEST_CASE("squeeze without a dim drops every size-1 dim (test_squeeze_mapper_all)") {
  MapperPtr m = squeeze("foo");
  CHECK(m->state_dependency_groups() == groups({group({"foo"}, {"foo"})}));
  StateDict res = m->apply({{"foo", ints({1, 2, 3, 4}, {1, 1, 2, 2})}});
  CHECK(keys(res) == std::set<std::string>{"foo"});
  CHECK(res.at("foo").shape() == Shape{2, 2});
  CHECK(equal(res.at("foo"), ints({1, 2, 3, 4}, {2, 2})));
}

TEST_CASE("squeeze with a dim drops that dim (test_squeeze_mapper_single_dim)") {
  MapperPtr m = squeeze("bar", 1);
  CHECK(m->state_dependency_groups() == groups({group({"bar"}, {"bar"})}));
  StateDict res = m->apply({{"bar", ints({1, 2, 3, 4}, {2, 1, 2})}});
  CHECK(keys(res) == std::set<std::string>{"bar"});
  CHECK(res.at("bar").shape() == Shape{2, 2});
  CHECK(equal(res.at("bar"), ints({1, 2, 3, 4}, {2, 2})));
  // As torch.squeeze(dim): a dim that is not of size 1 stays.
  CHECK(squeeze("bar", 0)->apply({{"bar", ints({1, 2, 3, 4}, {2, 1, 2})}}).at("bar").shape() ==
        Shape{2, 1, 2});
}

TEST_CASE("unsqueeze inserts a dim of size 1 (test_unsqueeze_mapper)") {
  MapperPtr m = unsqueeze("foo", 1);
  CHECK(m->state_dependency_groups() == groups({group({"foo"}, {"foo"})}));
  StateDict res = m->apply({{"foo", ints({1, 2, 3, 4}, {2, 2})}});
  CHECK(keys(res) == std::set<std::string>{"foo"});
  CHECK(res.at("foo").shape() == Shape{2, 1, 2});
  CHECK(equal(res.at("foo"), ints({1, 2, 3, 4}, {2, 1, 2})));
}

TEST_CASE(
    "distribute and gather_full_tensor over a world of one (local part of "
    "test_dtensor_mapper_logic; the 2-rank run is in tests/dist)") {
  const dist::DeviceMesh mesh(dist::init(dist::Backend::kLocal), {1}, {"dp"});
  MapperPtr d = distribute("w", mesh, {dist::Shard{0}});
  CHECK(d->state_dependency_groups() == groups({group({"w"}, {"w"})}));
  CHECK(d->infer({{"w", {DType::F32, {4, 2}}}}) == SpecDict{{"w", {DType::F32, {4, 2}}}});
  CHECK(d->describe() == "distribute(w, (Shard(dim=0),))");
  CHECK_THROWS_AS(d->infer({{"w", {DType::F32, {}}}}), IndexError);  // Shard(0) of a scalar
  const Tensor full = Tensor::arange(8, DType::F32).reshape({4, 2});
  const Tensor w = d->apply({{"w", full}}).at("w");
  REQUIRE(dist::is_dtensor(w));
  CHECK(dist::as_dtensor(w)->local().shape() == Shape{4, 2});
  CHECK(TensorSpec::of(w) == TensorSpec{DType::F32, {4, 2}});
  CHECK(dist::as_dtensor(w)->placements() == std::vector<dist::Placement>{dist::Shard{0}});
  CHECK(dist::as_dtensor(w)->device_mesh() == mesh);

  MapperPtr g = gather_full_tensor("w");
  CHECK(g->state_dependency_groups() == groups({group({"w"}, {"w"})}));
  CHECK(g->infer({{"w", {DType::F32, {4, 2}}}}) == SpecDict{{"w", {DType::F32, {4, 2}}}});
  const Tensor back = g->apply({{"w", w}}).at("w");
  CHECK(!dist::is_dtensor(back));
  CHECK(equal(back, full));
  // As the reference: "Cannot gather anything but DTensor".
  CHECK_THROWS_WITH_AS(g->apply({{"w", Tensor::zeros({4, 2}, DType::F32)}}),
                       doctest::Contains("anything but a DTensor"), ValueError);
  CHECK(d->inverse()->describe() == "gather_full_tensor(w)");
  // Ops that move data refuse a DTensor; renaming passes it on.
  CHECK_THROWS_WITH_AS(transpose("w", 0, 1)->apply({{"w", w}}),
                       doctest::Contains("gather_full_tensor it first"), ValueError);
  CHECK_THROWS_AS(stack_tensors({"w"}, "s", 0)->apply({{"w", w}}), ValueError);
  CHECK_THROWS_AS(chunk_tensors("w", {"a", "b"}, 0)->apply({{"w", w}}), ValueError);
  CHECK(dist::is_dtensor(rename_tensor("w", "v")->apply({{"w", w}}).at("v")));
}

// ---- beyond the reference -----------------------------------------------------------------------

TEST_CASE("cast converts elements and keeps the shape") {
  MapperPtr m = cast("w", DType::BF16);
  StateDict res = m->apply({{"w", Tensor::from_vector<float>({1.0f, 2.5f, -3.0f}, {3})}});
  CHECK(res.at("w").dtype() == DType::BF16);
  CHECK(res.at("w").to_vector<float>() == std::vector<float>{1.0f, 2.5f, -3.0f});
  CHECK(m->infer({{"w", {DType::F32, {3}}}}) == SpecDict{{"w", {DType::BF16, {3}}}});
  CHECK_THROWS_AS(m->infer({{"w", {DType::F4, {4}}}}), TypeError);
}

TEST_CASE("reshape resolves -1 and views without copying") {
  MapperPtr m = reshape("w", {-1, 4});
  const Tensor t = Tensor::arange(12, DType::I32);
  StateDict res = m->apply({{"w", t}});
  CHECK(res.at("w").shape() == Shape{3, 4});
  CHECK(res.at("w").data_ptr() == t.data_ptr());
  CHECK(m->infer({{"w", {DType::I32, {2, 6}}}}) == SpecDict{{"w", {DType::I32, {3, 4}}}});
  CHECK_THROWS_WITH_AS(m->infer({{"w", {DType::I32, {5}}}}), doctest::Contains("reshape(w"),
                       ValueError);
  CHECK_THROWS_AS(reshape("w", {-1, -1}), ValueError);
  CHECK_THROWS_AS(reshape("w", {-2}), ValueError);
}

TEST_CASE("permute reorders dims into a contiguous tensor") {
  MapperPtr m = permute("w", {2, 0, 1});
  const Tensor t = Tensor::arange(24, DType::I64).reshape({2, 3, 4});
  StateDict res = m->apply({{"w", t}});
  CHECK(res.at("w").shape() == Shape{4, 2, 3});
  CHECK(res.at("w").is_contiguous());
  CHECK(equal(res.at("w"), t.permute({2, 0, 1}).contiguous()));
  CHECK_THROWS_AS(permute("w", {0, 0}), ValueError);
  CHECK_THROWS_AS(permute("w", {0, 2}), ValueError);
  CHECK_THROWS_AS(m->infer({{"w", {DType::F32, {2, 3}}}}), IndexError);
}

TEST_CASE("split_tensors splits unevenly, as a GQA-fused QKV") {
  MapperPtr m = split_tensors("qkv", {"q", "k", "v"}, {4, 2, 2}, 0);
  CHECK(m->state_dependency_groups() == groups({group({"qkv"}, {"q", "k", "v"})}));
  const Tensor t = Tensor::arange(16, DType::I64).reshape({8, 2});
  StateDict res = m->apply({{"qkv", t}});
  CHECK(equal(res.at("q"), t.narrow(0, 0, 4)));
  CHECK(equal(res.at("k"), t.narrow(0, 4, 2)));
  CHECK(equal(res.at("v"), t.narrow(0, 6, 2)));
  CHECK(res.at("v").is_contiguous());
  CHECK_THROWS_WITH_AS(m->infer({{"qkv", {DType::F32, {9, 2}}}}), doctest::Contains("add up to 8"),
                       ValueError);
  CHECK_THROWS_AS(split_tensors("qkv", {"q", "k"}, {4, 2, 2}, 0), ValueError);
  CHECK_THROWS_AS(split_tensors("qkv", {"q", "k"}, {4, -2}, 0), ValueError);
}

TEST_CASE("chunk_tensors rejects more targets than torch.chunk gives pieces, before any data") {
  MapperPtr m = chunk_tensors("w", {"a", "b", "c", "d"}, 0);
  // torch.chunk of size 5 into 4 gives 3 pieces (2, 2, 1).
  CHECK_THROWS_WITH_AS(m->infer({{"w", {DType::F32, {5, 3}}}}), doctest::Contains("into 3 pieces"),
                       ValueError);
  CHECK_THROWS_WITH_AS(m->apply({{"w", Tensor::zeros({5, 3}, DType::F32)}}),
                       doctest::Contains("into 3 pieces"), ValueError);
  // Uneven but complete: 7 into 4 is 2, 2, 2, 1.
  SpecDict out = m->infer({{"w", {DType::F32, {7, 3}}}});
  CHECK(out.at("d").shape == Shape{1, 3});
  // Size 0 gives every target an empty piece, as torch.chunk.
  CHECK(m->infer({{"w", {DType::F32, {0, 3}}}}).at("c").shape == Shape{0, 3});
}

TEST_CASE("stack rejects mismatched shapes and dtypes naming the tensors") {
  MapperPtr m = stack_tensors({"q", "k"}, "qk", 0);
  CHECK_THROWS_WITH_AS(m->infer({{"q", {DType::F32, {4, 4}}}, {"k", {DType::F32, {2, 4}}}}),
                       doctest::Contains("'k' has [2, 4]"), ValueError);
  CHECK_THROWS_AS(m->infer({{"q", {DType::F32, {4}}}, {"k", {DType::BF16, {4}}}}), TypeError);
  CHECK_THROWS_AS(
      m->apply({{"q", Tensor::zeros({4}, DType::F32)}, {"k", Tensor::zeros({5}, DType::F32)}}),
      ValueError);
}

TEST_CASE("a bad dim is an IndexError that names the mapper and the tensor") {
  CHECK_THROWS_WITH_AS(transpose("w", 0, 2)->infer({{"w", {DType::F32, {3, 4}}}}),
                       doctest::Contains("transpose(w, 0, 2): 'w' is F32[3, 4]"), IndexError);
  CHECK_THROWS_AS(unsqueeze("w", 3)->infer({{"w", {DType::F32, {3, 4}}}}), IndexError);
  CHECK_THROWS_AS(unstack_tensors("w", {"a"}, 0)->infer({{"w", {DType::F32, {}}}}), IndexError);
  CHECK_THROWS_AS(concatenate_tensors({"a", "b"}, "c", 2)
                      ->infer({{"a", {DType::F32, {1, 2}}}, {"b", {DType::F32, {1, 2}}}}),
                  IndexError);
}

TEST_CASE("unstack needs as many targets as the dim has entries") {
  MapperPtr m = unstack_tensors("w", {"a", "b"}, 1);
  CHECK_THROWS_WITH_AS(m->infer({{"w", {DType::F32, {2, 3}}}}),
                       doctest::Contains("3, but there are 2"), ValueError);
  CHECK(m->infer({{"w", {DType::F32, {5, 2, 3}}}}).at("b").shape == Shape{5, 3});
}

TEST_CASE("leaf mappers reject groups that are not theirs") {
  CHECK_THROWS_WITH_AS(rename_tensor("a", "b")->apply({{"x", scalar(1)}}),
                       doctest::Contains("undefined group"), ValueError);
  CHECK_THROWS_AS(stack_tensors({"a", "b"}, "c", 0)->apply({{"a", scalar(1)}}), ValueError);
  CHECK_THROWS_AS(identity("a")->apply({{"a", scalar(1)}, {"b", scalar(1)}}), ValueError);
  CHECK_THROWS_AS(stack_tensors({"a", "a"}, "c", 0), ValueError);
  CHECK_THROWS_AS(chunk_tensors("a", {}, 0), ValueError);
  CHECK_THROWS_AS(unstack_tensors("a", {"x", "x"}, 0), ValueError);
}

TEST_CASE("packed sub-byte tensors pass through renames and reshapes but not transposes") {
  const Tensor f4 = Tensor::zeros({4, 4}, DType::F4);
  CHECK(rename_tensor("a", "b")->apply({{"a", f4}}).at("b").shape() == Shape{4, 4});
  CHECK(reshape("a", {16})->apply({{"a", f4}}).at("a").shape() == Shape{16});
  CHECK_THROWS_AS(transpose("a", 0, 1)->infer({{"a", {DType::F4, {4, 4}}}}), TypeError);
  CHECK_THROWS_AS(transpose("a", 0, 1)->apply({{"a", f4}}), TypeError);
}

TEST_CASE("user-defined mappers without infer() say so") {
  struct NoInfer final : ModelStateMapper {
    NoInfer() { groups_.insert(StateGroup{{"a"}, {"b"}}); }
    StateDict apply(StateDict group) const override { return {{"b", group.at("a")}}; }
  } m;
  CHECK_THROWS_AS(m.infer({{"a", {DType::F32, {1}}}}), NotInferableError);
  CHECK_THROWS_AS(m.inverse(), NotInvertibleError);
}
