// CUDA storage: device and pinned allocations and host <-> device copies. Exits 77 (skipped)
// when no CUDA device is visible (common/cuda_main.cpp), so the suite passes on machines without a
// GPU.
#include <doctest/doctest.h>

#include <cuda_runtime_api.h>

#include <d9d/core.hpp>

#include "common/cuda_main.hpp"
#include "common/helpers.hpp"

using namespace d9d;

TEST_CASE("tensors move to a CUDA device and back with their bytes intact") {
  for (DType dtype : {DType::U8, DType::BF16, DType::F32, DType::C64, DType::F4}) {
    Tensor host = test::random_tensor({37, 64}, dtype);
    Tensor dev = host.to(Device::cuda(0));
    CHECK(dev.device() == Device::cuda(0));
    CHECK(dev.storage().kind() == StorageKind::kCuda);
    Tensor back = dev.to(Device::cpu());
    CHECK(equal(back, host));
  }
}

TEST_CASE("d9d's calls leave the calling thread on its own current device" *
          doctest::test_suite(test::kTwoCudaDevices)) {
  REQUIRE(cudaSetDevice(1) == cudaSuccess);  // the embedding engine's device
  const Tensor host = test::random_tensor({300, 77}, DType::BF16);
  const Tensor dev = host.to(Device::cuda(0));
  const Tensor out = stack({dev.transpose(0, 1), dev.transpose(0, 1)}, 0).to(DType::F32);
  CHECK(equal(out.to(Device::cpu()),
              stack({host.transpose(0, 1), host.transpose(0, 1)}, 0).to(DType::F32)));
  int current = -1;
  REQUIRE(cudaGetDevice(&current) == cudaSuccess);
  CHECK(current == 1);
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
}

TEST_CASE("zeros on a CUDA device are zero") {
  Tensor z = Tensor::zeros({1000}, DType::F32, Device::cuda(0)).to(Device::cpu());
  CHECK(z.to_vector<float>() == std::vector<float>(1000, 0.0f));
}

TEST_CASE("pinned host storage is host memory the CPU can use") {
  Storage pinned = Storage::allocate_pinned(4096);
  CHECK(pinned.kind() == StorageKind::kPinnedHost);
  Tensor t = Tensor::from_storage(pinned, DType::F32, {1024});
  t.copy_(Tensor::full({1024}, 3.0f, DType::F32));
  CHECK(t.to(Device::cuda(0)).to(Device::cpu()).to_vector<float>() == std::vector<float>(1024, 3.0f));
}

TEST_CASE("a CUDA allocation that cannot succeed names the device and the size") {
  CHECK_THROWS_WITH_AS(Tensor::empty({int64_t{1} << 50}, DType::U8, Device::cuda(0)),
                       doctest::Contains("cuda:0"), DeviceError);
}
