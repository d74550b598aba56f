// Property tests of stack / cat / chunk / split / unbind / contiguous against an index-by-index
// reference, over random shapes, every dim (negative too) and every element size.
#include <doctest/doctest.h>

#include <d9d/core.hpp>

#include "common/helpers.hpp"

using namespace d9d;
using test::packed_bytes;
using test::randint;
using test::random_shape;
using test::random_tensor;
using test::reference_bytes;

namespace {

const DType kDTypes[] = {DType::U8, DType::BF16, DType::F32, DType::F64, DType::C64};

// A random view of a random tensor: transposed, narrowed, selected and unsqueezed at random.
Tensor random_view(DType dtype) {
  Tensor t = random_tensor(random_shape(5, 7), dtype);
  for (int step = 0; step < 4; ++step) {
    const int64_t nd = t.dim();
    switch (randint(0, 4)) {
      case 0:
        if (nd >= 2) t = t.transpose(randint(-nd, nd - 1), randint(-nd, nd - 1));
        break;
      case 1:
        if (nd >= 1) {
          const int64_t d = randint(0, nd - 1);
          const int64_t start = randint(0, t.size(d) - 1);
          t = t.narrow(d, start, randint(1, t.size(d) - start));
        }
        break;
      case 2:
        if (nd >= 2) t = t.select(randint(0, nd - 1), 0);
        break;
      case 3: t = t.unsqueeze(randint(-nd - 1, nd)); break;
      default: {
        Dims perm;
        for (int64_t i = 0; i < nd; ++i) perm.push_back(i);
        std::shuffle(perm.begin(), perm.end(), test::rng());
        t = t.permute(perm);
      }
    }
  }
  return t;
}

}  // namespace

TEST_CASE("contiguous() of every view equals the index-by-index reference") {
  for (DType dtype : kDTypes) {
    for (int trial = 0; trial < 300; ++trial) {
      Tensor v = random_view(dtype);
      CAPTURE(v.shape());
      CAPTURE(v.strides());
      Tensor c = v.contiguous();
      REQUIRE(c.is_contiguous());
      REQUIRE(c.shape() == v.shape());
      CHECK(packed_bytes(c) == reference_bytes(v));
    }
  }
}

TEST_CASE("large strided copies (split across threads) equal the reference") {
  for (DType dtype : {DType::U8, DType::BF16, DType::F32, DType::F64}) {
    Tensor big = random_tensor({37, 129, 67}, dtype);
    for (const Tensor& v : {big.transpose(0, 2), big.permute({1, 2, 0}), big.narrow(2, 3, 50),
                            big.transpose(1, 2).narrow(0, 1, 30)}) {
      CAPTURE(v.shape());
      CHECK(packed_bytes(v.contiguous()) == reference_bytes(v));
    }
  }
  Tensor square = random_tensor({1024, 1536}, DType::BF16);
  CHECK(packed_bytes(square.transpose(0, 1).contiguous()) ==
        reference_bytes(square.transpose(0, 1)));
}

TEST_CASE("transpose twice is the identity") {
  for (int trial = 0; trial < 200; ++trial) {
    Tensor t = random_tensor(random_shape(5, 6), kDTypes[randint(0, 4)]);
    const int64_t nd = t.dim();
    const int64_t a = randint(-nd, nd - 1), b = randint(-nd, nd - 1);
    Tensor back = t.transpose(a, b).contiguous().transpose(a, b);
    CHECK(back.shape() == t.shape());
    CHECK(equal(back, t));
  }
}

TEST_CASE("cat of chunk is the identity, for every dim and chunk count") {
  for (int trial = 0; trial < 300; ++trial) {
    Tensor t = random_view(kDTypes[randint(0, 4)]);
    if (t.dim() == 0) continue;
    const int64_t nd = t.dim();
    const int64_t dim = randint(-nd, nd - 1);
    const int64_t chunks = randint(1, t.size(dim) + 2);
    auto parts = chunk(t, chunks, dim);
    // torch.chunk: pieces of ceil(n / chunks), possibly fewer than asked.
    const int64_t n = t.size(dim), step = (n + chunks - 1) / chunks;
    CHECK(static_cast<int64_t>(parts.size()) == (n + step - 1) / step);
    CHECK(static_cast<int64_t>(parts.size()) <= chunks);
    CHECK(equal(cat(parts, dim), t));
  }
}

TEST_CASE("cat of split with random sizes is the identity") {
  for (int trial = 0; trial < 300; ++trial) {
    Tensor t = random_view(kDTypes[randint(0, 4)]);
    if (t.dim() == 0) continue;
    const int64_t nd = t.dim();
    const int64_t dim = randint(-nd, nd - 1);
    std::vector<int64_t> sizes;
    for (int64_t left = t.size(dim); left > 0;) {
      sizes.push_back(randint(0, left));
      left -= sizes.back();
    }
    auto parts = split(t, sizes, dim);
    CHECK(parts.size() == sizes.size());
    for (size_t i = 0; i < parts.size(); ++i) CHECK(parts[i].size(dim) == sizes[i]);
    CHECK(equal(cat(parts, dim), t));
  }
}

TEST_CASE("stack then unbind is the identity") {
  for (int trial = 0; trial < 300; ++trial) {
    const DType dtype = kDTypes[randint(0, 4)];
    Tensor first = random_view(dtype);
    std::vector<Tensor> inputs{first};
    for (int64_t k = randint(0, 4); k > 0; --k) {
      inputs.push_back(random_tensor(first.shape(), dtype).transpose(0, 0));
    }
    const int64_t nd = first.dim() + 1;
    const int64_t dim = randint(-nd, nd - 1);
    Tensor s = stack(inputs, dim);
    CHECK(s.size(dim) == static_cast<int64_t>(inputs.size()));
    auto back = unbind(s, dim);
    REQUIRE(back.size() == inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) CHECK(equal(back[i], inputs[i]));
  }
}

TEST_CASE("stack and cat of many tensors match a reference built element by element") {
  std::vector<Tensor> parts;
  std::vector<unsigned char> expected;
  for (int i = 0; i < 300; ++i) {
    parts.push_back(random_tensor({2, 5, 3}, DType::F32).transpose(1, 2));
  }
  Tensor s = stack(parts, 0);
  for (const Tensor& p : parts) {
    auto b = reference_bytes(p);
    expected.insert(expected.end(), b.begin(), b.end());
  }
  CHECK(packed_bytes(s) == expected);
  // cat along dim 1 interleaves rows: compare against selects of the stacked tensor.
  Tensor c = cat(parts, 1);
  CHECK(c.shape() == Shape{2, 900, 5});
  for (int i = 0; i < 300; i += 37) CHECK(equal(c.narrow(1, 3 * i, 3), parts[static_cast<size_t>(i)]));
}

TEST_CASE("stack, cat and chunk follow PyTorch's semantics on small cases") {
  Tensor a = Tensor::from_vector<int32_t>({1, 2, 3, 4}, {2, 2});
  Tensor b = Tensor::from_vector<int32_t>({5, 6, 7, 8}, {2, 2});
  CHECK(stack({a, b}, 0).to_vector<int32_t>() == std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8});
  CHECK(stack({a, b}, -1).shape() == Shape{2, 2, 2});
  CHECK(stack({a, b}, -1).to_vector<int32_t>() == std::vector<int32_t>{1, 5, 2, 6, 3, 7, 4, 8});
  CHECK(cat({a, b}, 1).to_vector<int32_t>() == std::vector<int32_t>{1, 2, 5, 6, 3, 4, 7, 8});
  CHECK(cat({a, Tensor::empty({0}, DType::I32), b}, 0).shape() == Shape{4, 2});

  Tensor five = Tensor::arange(5, DType::I64);
  auto c = chunk(five, 4);  // torch.chunk(arange(5), 4) -> sizes 2, 2, 1
  REQUIRE(c.size() == 3);
  CHECK(c[0].to_vector<int64_t>() == std::vector<int64_t>{0, 1});
  CHECK(c[2].to_vector<int64_t>() == std::vector<int64_t>{4});
  CHECK(chunk(Tensor::arange(6, DType::I64), 4).size() == 3);  // 2, 2, 2
  CHECK(chunk(Tensor::empty({0, 3}, DType::F32), 3).size() == 3);
  CHECK(chunk(five, 9).size() == 5);
  CHECK(unbind(a, 1)[1].to_vector<int32_t>() == std::vector<int32_t>{2, 4});
}

TEST_CASE("joining bad inputs is a clear error naming the tensors and shapes") {
  Tensor a = Tensor::zeros({2, 3}, DType::F32);
  Tensor b = Tensor::zeros({2, 4}, DType::F32);
  CHECK_THROWS_WITH_AS(stack({a, b}),
                       doctest::Contains("stack: expected every tensor to have shape [2, 3] (as "
                                         "tensor 0), but tensor 1 has shape [2, 4]"),
                       ValueError);
  CHECK_THROWS_WITH_AS(stack({a, a.to(DType::BF16)}),
                       doctest::Contains("stack: tensor 1 is BF16 but tensor 0 is F32"), TypeError);
  CHECK_THROWS_WITH_AS(stack({}), doctest::Contains("non-empty"), ValueError);
  CHECK_THROWS_AS(stack({a, a}, 3), IndexError);
  CHECK_NOTHROW(stack({a, a}, -3));
  CHECK_THROWS_WITH_AS(cat({a, b}, 0),
                       doctest::Contains("cat: sizes must match except in dim 0, but tensor 1 has "
                                         "shape [2, 4] and tensor 0 has shape [2, 3]"),
                       ValueError);
  CHECK(cat({a, b}, 1).shape() == Shape{2, 7});
  CHECK_THROWS_AS(cat({a, a.unsqueeze(0)}, 0), ValueError);
  CHECK_THROWS_AS(cat({Tensor::from_vector<float>({1}, {})}), IndexError);
  CHECK_THROWS_WITH_AS(chunk(a, 0), doctest::Contains("chunk: the number of chunks must be positive"),
                       ValueError);
  CHECK_THROWS_WITH_AS(split(a, {1, 1}, 1),
                       doctest::Contains("split: sizes [1, 1] add up to 2 but dim 1 of shape [2, 3] "
                                         "has size 3"),
                       ValueError);
  CHECK_THROWS_AS(split(a, {4, -1}, 1), ValueError);
  CHECK_THROWS_AS(unbind(Tensor::from_vector<float>({1}, {})), IndexError);
  CHECK_THROWS_AS(stack({a, Tensor()}), ValueError);
}

TEST_CASE("equal compares dtype, shape and bytes") {
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2});
  CHECK(equal(a, a.clone()));
  CHECK(equal(a.transpose(0, 1), a.transpose(0, 1).contiguous()));
  CHECK_FALSE(equal(a, a.transpose(0, 1)));
  CHECK_FALSE(equal(a, a.reshape({4})));
  CHECK_FALSE(equal(a, a.to(DType::F64)));
  Tensor nan = Tensor::full({1}, std::nanf(""), DType::F32);
  CHECK(equal(nan, nan.clone()));  // bitwise: a NaN equals its own bits
}
