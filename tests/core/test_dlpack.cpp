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

TEST_CASE("DLManagedTensorVersioned: version 1.x, read-only flag both ways, deleter once") {
  Tensor t = Tensor::arange(6, DType::I32).reshape({2, 3}).transpose(0, 1);
  DLManagedTensorVersioned* m = to_dlpack_versioned(t);
  CHECK(m->version.major == 1);
  CHECK(m->version.minor == DLPACK_MINOR_VERSION);
  CHECK(m->flags == 0);
  CHECK(m->dl_tensor.data == t.data_ptr());
  CHECK(m->dl_tensor.strides[0] == 1);
  CHECK(m->dl_tensor.strides[1] == 3);
  Tensor back = from_dlpack_versioned(m);
  CHECK(back.storage().writable());
  CHECK(back.to_vector<int32_t>() == std::vector<int32_t>{0, 3, 1, 4, 2, 5});

  // Read-only bytes (a view of a mapped file is such a storage) export with the flag, and a
  // read-only import is not writable.
  static const int32_t kConst[4] = {7, 8, 9, 10};
  int released = 0;
  Storage ro = Storage::wrap(reinterpret_cast<std::byte*>(const_cast<int32_t*>(kConst)),
                             sizeof kConst, Device::cpu(), StorageKind::kExternal, false,
                             [&released](std::byte*) { ++released; });
  Tensor rt(std::move(ro), DType::I32, {4}, {1}, 0);
  DLManagedTensorVersioned* rm = to_dlpack_versioned(rt);
  CHECK((rm->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0);
  rt = Tensor();
  CHECK(released == 0);  // the export holds the bytes
  Tensor rback = from_dlpack_versioned(rm);
  CHECK_FALSE(rback.storage().writable());
  CHECK(rback.to_vector<int32_t>() == std::vector<int32_t>{7, 8, 9, 10});
  rback = Tensor();
  CHECK(released == 1);
}

TEST_CASE("from_dlpack_versioned rejects another major version and still releases the tensor") {
  Tensor t = Tensor::arange(4, DType::F32);
  DLManagedTensorVersioned* m = to_dlpack_versioned(t);
  m->version.major = 2;
  const long before = t.storage().use_count();
  CHECK_THROWS_WITH_AS(from_dlpack_versioned(m), doctest::Contains("major version 2"), ValueError);
  CHECK(t.storage().use_count() == before - 1);  // the deleter ran: the export's reference is gone
  CHECK_THROWS_AS(from_dlpack_versioned(nullptr), ValueError);
}
