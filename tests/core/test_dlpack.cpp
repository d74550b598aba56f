#include <doctest/doctest.h>

#include <d9d/core.hpp>

#include "common/helpers.hpp"

using namespace d9d;

TEST_CASE("to_dlpack exports a view without copying and keeps the storage alive") {
  Tensor t = Tensor::arange(12, DType::F32).reshape({3, 4}).transpose(0, 1).narrow(0, 1, 2);
  DLManagedTensor* m = to_dlpack(t);
  const DLTensor& dl = m->dl_tensor;
  CHECK(dl.data == t.data_ptr());
  CHECK(dl.byte_offset == 0);
  CHECK(dl.ndim == 2);
  CHECK(dl.shape[0] == 2);
  CHECK(dl.shape[1] == 3);
  CHECK(dl.strides[0] == 1);
  CHECK(dl.strides[1] == 4);
  CHECK(dl.dtype.code == kDLFloat);
  CHECK(dl.dtype.bits == 32);
  CHECK(dl.dtype.lanes == 1);
  CHECK(dl.device.device_type == kDLCPU);
  const long uses = t.storage().use_count();
  t = Tensor();  // the export still holds the bytes
  CHECK(static_cast<const float*>(dl.data)[4] == 5.0f);
  Tensor back = from_dlpack(m);  // takes ownership
  CHECK(back.shape() == Shape{2, 3});
  CHECK(back.to_vector<float>() == std::vector<float>{1, 5, 9, 2, 6, 10});
  CHECK(uses > 1);
}

TEST_CASE("every dtype travels through DLPack with its DLPack 1.1 code") {
  for (int i = 0; i < kNumDTypes; ++i) {
    const DType dtype = all_dtypes()[i].dtype;
    CAPTURE(dtype);
    Tensor t = test::random_tensor({4, 6}, dtype);
    DLManagedTensor* m = to_dlpack(t);
    CHECK(m->dl_tensor.dtype.bits == dtype_bits(dtype));
    Tensor back = from_dlpack(m);
    CHECK(back.dtype() == dtype);
    CHECK(back.data_ptr() == t.data_ptr());
    CHECK(equal(back, t));
  }
  Tensor b = Tensor::zeros({2}, DType::BOOL);
  DLManagedTensor* m = to_dlpack(b);
  CHECK(m->dl_tensor.dtype.code == 6);  // kDLBool
  m->deleter(m);
}

namespace {

struct Foreign {
  std::vector<int16_t> data{10, 11, 12, 13, 14, 15};
  int64_t shape[2] = {2, 3};
  int64_t strides[2] = {1, 2};  // column-major
  int deleted = 0;
};

DLManagedTensor* make_foreign(Foreign& f, DLDataType dtype, int64_t* strides) {
  auto* m = new DLManagedTensor{};
  m->dl_tensor.data = f.data.data();
  m->dl_tensor.device = {kDLCPU, 0};
  m->dl_tensor.ndim = 2;
  m->dl_tensor.dtype = dtype;
  m->dl_tensor.shape = f.shape;
  m->dl_tensor.strides = strides;
  m->dl_tensor.byte_offset = 0;
  m->manager_ctx = &f;
  m->deleter = [](DLManagedTensor* self) {
    ++static_cast<Foreign*>(self->manager_ctx)->deleted;
    delete self;
  };
  return m;
}

}  // namespace

TEST_CASE("from_dlpack imports a foreign strided buffer and calls its deleter exactly once") {
  Foreign f;
  {
    Tensor t = from_dlpack(make_foreign(f, {kDLInt, 16, 1}, f.strides));
    CHECK(t.dtype() == DType::I16);
    CHECK(t.to_vector<int16_t>() == std::vector<int16_t>{10, 12, 14, 11, 13, 15});
    Tensor view = t.select(0, 1);
    t = Tensor();
    CHECK(f.deleted == 0);
    CHECK(view.to_vector<int16_t>() == std::vector<int16_t>{11, 13, 15});
  }
  CHECK(f.deleted == 1);
  {
    Tensor rowmajor = from_dlpack(make_foreign(f, {kDLUInt, 16, 1}, nullptr));
    CHECK(rowmajor.dtype() == DType::U16);
    CHECK(rowmajor.is_contiguous());
    CHECK(rowmajor.to_vector<int>() == std::vector<int>{10, 11, 12, 13, 14, 15});
  }
  CHECK(f.deleted == 2);
}

TEST_CASE("from_dlpack rejects what d9d cannot represent, and still releases the tensor") {
  Foreign f;
  CHECK_THROWS_WITH_AS(from_dlpack(make_foreign(f, {kDLFloat, 16, 4}, f.strides)),
                       doctest::Contains("lanes = 4"), ValueError);
  CHECK_THROWS_WITH_AS(from_dlpack(make_foreign(f, {kDLOpaqueHandle, 16, 1}, f.strides)),
                       doctest::Contains("no d9d dtype for DLPack type code 3"), ValueError);
  int64_t negative[2] = {-1, 2};
  CHECK_THROWS_WITH_AS(from_dlpack(make_foreign(f, {kDLInt, 16, 1}, negative)),
                       doctest::Contains("negative stride"), ValueError);
  DLManagedTensor* m = make_foreign(f, {kDLInt, 16, 1}, f.strides);
  m->dl_tensor.device.device_type = kDLVulkan;
  CHECK_THROWS_AS(from_dlpack(m), ValueError);
  CHECK(f.deleted == 4);
  CHECK_THROWS_AS(from_dlpack(nullptr), ValueError);
}
