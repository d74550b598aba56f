#include <doctest/doctest.h>

#include <numeric>

#include <d9d/core.hpp>

#include "common/helpers.hpp"

using namespace d9d;

TEST_CASE("factories make tensors of the requested shape, dtype and values") {
  Tensor t = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(t.shape() == Shape{2, 3});
  CHECK(t.strides() == Strides{3, 1});
  CHECK(t.dtype() == DType::F32);
  CHECK(t.device() == Device::cpu());
  CHECK(t.numel() == 6);
  CHECK(t.nbytes() == 24);
  CHECK(t.is_contiguous());
  CHECK(t.to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5, 6});

  CHECK(Tensor::full({2, 4}, 1.5f, DType::F32).to_vector<float>() == std::vector<float>(8, 1.5f));
  CHECK(Tensor::full({3}, int64_t{1} << 60, DType::I64).to_vector<int64_t>() ==
        std::vector<int64_t>(3, int64_t{1} << 60));
  CHECK(Tensor::full({2}, true, DType::BOOL).to_vector<bool>() == std::vector<bool>{true, true});
  CHECK(Tensor::zeros({1024}, DType::U8).to_vector<int>() == std::vector<int>(1024, 0));
  CHECK(Tensor::arange(6, DType::BF16).reshape({2, 3}).to_vector<float>() ==
        std::vector<float>{0, 1, 2, 3, 4, 5});
  CHECK(Tensor::arange(0.5, 2.0, 0.5, DType::F64).to_vector<double>() ==
        std::vector<double>{0.5, 1.0, 1.5});
  CHECK(Tensor::arange(5, 0, -2, DType::I32).to_vector<int32_t>() == std::vector<int32_t>{5, 3, 1});
  CHECK(Tensor::empty({0, 3}, DType::F16).numel() == 0);
  CHECK(Tensor::from_vector<bool>({true, false, true}).to_vector<bool>() ==
        std::vector<bool>{true, false, true});
  CHECK(Tensor::from_vector<int>({7}).item<int>() == 7);
}

TEST_CASE("a scalar tensor has an empty shape and one element") {
  Tensor s = Tensor::from_vector<double>({2.5}, {});
  CHECK(s.dim() == 0);
  CHECK(s.numel() == 1);
  CHECK(s.item<double>() == 2.5);
  CHECK(s.unsqueeze(0).shape() == Shape{1});
  CHECK(s.squeeze(0).dim() == 0);
  CHECK(s.reshape({1, 1}).shape() == Shape{1, 1});
  CHECK(s.transpose(0, -1).item<double>() == 2.5);  // as torch: a scalar is its own transpose
  CHECK_THROWS_AS(s.transpose(0, 1), IndexError);
}

TEST_CASE("factory arguments are checked") {
  CHECK_THROWS_WITH_AS(Tensor::from_vector<float>({1, 2, 3}, {2, 2}),
                       doctest::Contains("3 values do not fill shape [2, 2]"), ValueError);
  CHECK_THROWS_WITH_AS(Tensor::empty({2, -1}, DType::F32),
                       doctest::Contains("negative size in shape [2, -1]"), ValueError);
  CHECK_THROWS_WITH_AS(Tensor::empty({3}, DType::F4),
                       doctest::Contains("not a whole number of bytes"), TypeError);
  CHECK_THROWS_AS(Tensor::empty({int64_t{1} << 40, int64_t{1} << 40}, DType::U8), ValueError);
  CHECK_THROWS_AS(Tensor::arange(0.0, 1.0, 0.0, DType::F32), ValueError);
  CHECK_THROWS_WITH_AS(Tensor::from_vector<float>({1, 2}).item<float>(),
                       doctest::Contains("item: expected a tensor with one element"), ValueError);
  CHECK_THROWS_AS(Tensor::full({2}, 1.0f, DType::F6_E2M3), TypeError);
}

TEST_CASE("a view must fit in its storage") {
  Storage storage = Storage::allocate(24);
  CHECK_NOTHROW(Tensor::from_storage(storage, DType::F32, {2, 3}));
  CHECK_THROWS_WITH_AS(Tensor::from_storage(storage, DType::F32, {2, 3}, 4),
                       doctest::Contains("needs 24 bytes but the storage has only 20"), ValueError);
  CHECK_THROWS_AS(Tensor(storage, DType::F32, {2, 3}, {1, 3}, 4), ValueError);
  CHECK_NOTHROW(Tensor(storage, DType::F32, {3, 2}, {1, 3}, 0));
  CHECK_THROWS_WITH_AS(Tensor(storage, DType::F32, {2}, {-1}), doctest::Contains("negative stride"),
                       ValueError);
  CHECK_THROWS_AS(Tensor(storage, DType::F32, {2, 3}, {3}), ValueError);
  CHECK_THROWS_AS(Tensor(storage, DType::F32, {int64_t{1} << 62}, {int64_t{1} << 3}), ValueError);
  CHECK_THROWS_AS(Tensor::from_storage(Storage(), DType::F32, {1}), ValueError);
}

TEST_CASE("views share storage and follow PyTorch's shapes and strides") {
  Tensor t = Tensor::arange(24, DType::I32).reshape({2, 3, 4});
  CHECK(t.strides() == Strides{12, 4, 1});

  Tensor tr = t.transpose(0, 2);
  CHECK(tr.shape() == Shape{4, 3, 2});
  CHECK(tr.strides() == Strides{1, 4, 12});
  CHECK(tr.storage().data() == t.storage().data());
  CHECK_FALSE(tr.is_contiguous());
  CHECK(t.transpose(-1, -3).shape() == Shape{4, 3, 2});

  Tensor p = t.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.strides() == Strides{1, 12, 4});
  CHECK(t.permute({-1, 0, 1}).shape() == Shape{4, 2, 3});

  Tensor sel = t.select(1, -1);  // t[:, 2, :]
  CHECK(sel.shape() == Shape{2, 4});
  CHECK(sel.to_vector<int32_t>() == std::vector<int32_t>{8, 9, 10, 11, 20, 21, 22, 23});

  Tensor nar = t.narrow(2, 1, 2);  // t[:, :, 1:3]
  CHECK(nar.shape() == Shape{2, 3, 2});
  CHECK(nar.storage_offset() == 4);
  CHECK(nar.select(0, 0).select(0, 0).to_vector<int32_t>() == std::vector<int32_t>{1, 2});
  CHECK(t.narrow(-1, -2, 2).to_vector<int32_t>() == t.narrow(2, 2, 2).to_vector<int32_t>());

  Tensor u = t.unsqueeze(1);
  CHECK(u.shape() == Shape{2, 1, 3, 4});
  CHECK(u.strides() == Strides{12, 12, 4, 1});
  CHECK(t.unsqueeze(-1).shape() == Shape{2, 3, 4, 1});
  CHECK(t.unsqueeze(-1).strides() == Strides{12, 4, 1, 1});
  CHECK(u.squeeze().shape() == Shape{2, 3, 4});
  CHECK(u.squeeze(1).shape() == Shape{2, 3, 4});
  CHECK(u.squeeze(0).shape() == Shape{2, 1, 3, 4});  // not size 1: unchanged

  CHECK(t.view({6, 4}).strides() == Strides{4, 1});
  CHECK(t.view({-1}).shape() == Shape{24});
  CHECK(t.view({2, -1, 2}).shape() == Shape{2, 6, 2});
  // A transposed tensor can be viewed where the dims it merges stay together.
  CHECK(tr.view({2, 2, 3, 2}).strides() == Strides{2, 1, 4, 12});
  CHECK(tr.view({4, 3, 2, 1}).strides() == Strides{1, 4, 12, 12});  // as torch's computeStride
  CHECK_THROWS_AS(tr.view({4, 6}), ValueError);
  CHECK_THROWS_WITH_AS(tr.view({24}), doctest::Contains("use reshape, which copies"), ValueError);
  Tensor r = tr.reshape({24});
  CHECK(r.is_contiguous());
  CHECK(r.storage().data() != t.storage().data());
}

TEST_CASE("views reject dims out of range, naming the op and the range") {
  Tensor t = Tensor::zeros({2, 3}, DType::F32);
  CHECK_THROWS_WITH_AS(t.transpose(0, 2),
                       doctest::Contains("transpose: dim 2 is out of range for a tensor of 2 dims "
                                         "(expected -2..1)"),
                       IndexError);
  CHECK_THROWS_AS(t.transpose(-3, 0), IndexError);
  CHECK_THROWS_AS(t.unsqueeze(3), IndexError);
  CHECK_NOTHROW(t.unsqueeze(-3));
  CHECK_THROWS_AS(t.select(0, 2), IndexError);
  CHECK_THROWS_WITH_AS(t.select(1, -4), doctest::Contains("select: index -4 is out of range"),
                       IndexError);
  CHECK_THROWS_WITH_AS(t.narrow(1, 2, 2), doctest::Contains("narrow: start 2 + length 2 exceeds"),
                       ValueError);
  CHECK_THROWS_AS(t.narrow(1, 4, 0), IndexError);
  CHECK_THROWS_AS(t.permute({0, 0}), ValueError);
  CHECK_THROWS_AS(t.permute({0}), IndexError);
  CHECK_THROWS_AS(t.view({4, 2}), ValueError);
  CHECK_THROWS_WITH_AS(t.view({-1, -1}), doctest::Contains("only one dim can be -1"), ValueError);
  CHECK_THROWS_AS(t.reshape({5, -1}), ValueError);
  CHECK_THROWS_AS(t.size(2), IndexError);
  CHECK_THROWS_AS(Tensor().contiguous(), ValueError);
}

TEST_CASE("packed sub-byte tensors can be stored, reshaped and copied but not addressed") {
  Tensor f4 = Tensor::empty({4, 8}, DType::F4);  // 16 bytes
  CHECK(f4.nbytes() == 16);
  auto* p = static_cast<unsigned char*>(f4.mutable_data_ptr());
  for (int i = 0; i < 16; ++i) p[i] = static_cast<unsigned char>(i * 17);
  CHECK(f4.reshape({32}).shape() == Shape{32});
  CHECK(f4.view({2, 16}).nbytes() == 16);
  CHECK(f4.unsqueeze(0).squeeze().shape() == Shape{4, 8});
  Tensor copy = f4.clone();
  CHECK(equal(copy, f4));
  CHECK(copy.storage().data() != f4.storage().data());
  CHECK_THROWS_WITH_AS(f4.transpose(0, 1), doctest::Contains("transpose: F4 is a packed 4-bit dtype"),
                       TypeError);
  CHECK_THROWS_AS(f4.select(0, 0), TypeError);
  CHECK_THROWS_AS(f4.narrow(0, 0, 1), TypeError);
  CHECK_THROWS_AS(f4.to(DType::F32), TypeError);
  CHECK_THROWS_AS(stack({f4, f4}), TypeError);
  CHECK_THROWS_AS(cat({f4, f4}), TypeError);
  CHECK_THROWS_AS(f4.element_size(), TypeError);
  Tensor f6 = Tensor::empty({4}, DType::F6_E2M3);  // 24 bits
  CHECK(f6.nbytes() == 3);
  CHECK_THROWS_AS(Tensor::empty({3}, DType::F6_E3M2), TypeError);
}

TEST_CASE("read-only storage cannot be written into") {
  std::vector<float> host{1, 2, 3};
  Storage ro = Storage::wrap(reinterpret_cast<std::byte*>(host.data()), 12, Device::cpu(),
                             StorageKind::kMapped, false, {});
  Tensor t = Tensor::from_storage(ro, DType::F32, {3});
  CHECK(t.to_vector<float>() == host);
  CHECK(t.clone().to_vector<float>() == host);
  CHECK_THROWS_WITH_AS(t.mutable_data_ptr(), doctest::Contains("read-only"), ValueError);
  CHECK_THROWS_AS(t.copy_(Tensor::zeros({3}, DType::F32)), ValueError);
}

TEST_CASE("the deleter of wrapped storage runs once, when the last view is gone") {
  int released = 0;
  {
    static std::byte bytes[8];
    Storage s = Storage::wrap(bytes, 8, Device::cpu(), StorageKind::kExternal, true,
                              [&](std::byte*) { ++released; });
    Tensor a = Tensor::from_storage(s, DType::U8, {8});
    Tensor b = a.narrow(0, 2, 2);
    s = Storage();
    a = Tensor();
    CHECK(released == 0);
    CHECK(b.storage().use_count() == 1);
  }
  CHECK(released == 1);
}

TEST_CASE("copy_ writes into a view, converting the dtype, and handles overlap") {
  Tensor dst = Tensor::zeros({3, 4}, DType::F32);
  Tensor src = Tensor::arange(6, DType::I64).reshape({3, 2});
  dst.narrow(1, 1, 2).copy_(src);
  CHECK(dst.to_vector<float>() == std::vector<float>{0, 0, 1, 0, 0, 2, 3, 0, 0, 4, 5, 0});
  CHECK_THROWS_WITH_AS(dst.copy_(src), doctest::Contains("copy_: source shape [3, 2]"), ValueError);

  Tensor sq = Tensor::arange(9, DType::I32).reshape({3, 3});
  sq.copy_(sq.transpose(0, 1));  // overlapping source: copied through a temporary
  CHECK(sq.to_vector<int32_t>() == std::vector<int32_t>{0, 3, 6, 1, 4, 7, 2, 5, 8});

  Tensor base = Tensor::zeros({1}, DType::F32);
  Tensor broadcast(base.storage(), DType::F32, {4}, {0});
  CHECK(broadcast.to_vector<float>() == std::vector<float>(4, 0.0f));
  CHECK_THROWS_WITH_AS(broadcast.copy_(Tensor::zeros({4}, DType::F32)),
                       doctest::Contains("stride 0"), ValueError);
}

TEST_CASE("typed data access checks the element type") {
  Tensor t = Tensor::zeros({2}, DType::BF16);
  CHECK_THROWS_WITH_AS(t.data<float>(),
                       doctest::Contains("data: the tensor is BF16 but the element type asked for is F32"),
                       TypeError);
  Tensor f = Tensor::zeros({2}, DType::F32);
  f.mutable_data<float>()[1] = 3.0f;
  CHECK(f.data<float>()[1] == 3.0f);
}

TEST_CASE("a tensor describes itself") {
  CHECK(Tensor::zeros({2, 3}, DType::BF16).str() == "Tensor(BF16, [2, 3], cpu)");
  CHECK(Tensor().str() == "Tensor(undefined)");
}

TEST_CASE("CUDA tensors are refused by CPU data movement with a DeviceError") {
  if (cuda_device_count() > 0) return;  // covered by the CUDA tests
  CHECK_THROWS_AS(Tensor::empty({4}, DType::F32, Device::cuda(0)), DeviceError);
  CHECK_THROWS_AS(Storage::allocate_pinned(16), DeviceError);
}

TEST_CASE("an attachment goes with copies and this very tensor, never with another view") {
  struct Tag final : TensorAttachment {};
  const Tensor plain = Tensor::arange(6, DType::F32).reshape({2, 3});
  CHECK(plain.attachment() == nullptr);
  const auto tag = std::make_shared<const Tag>();
  const Tensor t = plain.with_attachment(tag);
  CHECK(t.attachment() == tag);
  CHECK(t.data_ptr() == plain.data_ptr());
  CHECK(plain.attachment() == nullptr);  // with_attachment makes a new handle
  const Tensor copy = t;                 // NOLINT(performance-unnecessary-copy-initialization)
  CHECK(copy.attachment() == tag);
  CHECK(t.contiguous().attachment() == tag);  // this very tensor
  CHECK(t.to(DType::F32).attachment() == tag);
  CHECK(t.squeeze(0).attachment() == tag);  // dim 0 is not of size 1: the same tensor
  for (const Tensor& view : {t.transpose(0, 1), t.permute({1, 0}), t.squeeze(), t.unsqueeze(0),
                             t.view({3, 2}), t.reshape({6}), t.narrow(1, 0, 3), t.select(0, 1),
                             t.clone(), t.to(DType::BF16), t.transpose(0, 1).contiguous()}) {
    CHECK(view.attachment() == nullptr);
  }
  CHECK(t.with_attachment(nullptr).attachment() == nullptr);
}
