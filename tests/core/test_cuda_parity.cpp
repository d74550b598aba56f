// CPU-vs-CUDA parity of every kernel and every core op on CUDA tensors: the device result must be
// byte-identical to the CPU's. Inputs are fresh random bytes (never zeros); device outputs are
// poisoned first (explicit destinations are filled with a poison pattern; outputs that ops allocate
// come from the device block cache, which is primed with poisoned blocks of the same size), so a
// byte the kernel forgets shows up. Exits 77 (skipped) when no CUDA device is visible
// (common/cuda_main.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <d9d/core.hpp>

#include "common/helpers.hpp"

using namespace d9d;

namespace {

const Device kGpu = Device::cuda(0);

// Every dtype with addressable elements.
std::vector<DType> element_dtypes() {
  std::vector<DType> out;
  for (int i = 0; i < kNumDTypes; ++i) {
    const DType d = all_dtypes()[i].dtype;
    if (!is_sub_byte(d)) out.push_back(d);
  }
  return out;
}

// A device tensor of `shape` whose bytes are all 0xA5.
Tensor poisoned(const Shape& shape, DType dtype) {
  Tensor host = Tensor::empty(shape, dtype);
  std::memset(host.mutable_data_ptr(), 0xA5, static_cast<size_t>(host.nbytes()));
  return host.to(kGpu);
}

// Empties the device block cache, then leaves poisoned blocks of `nbytes` in it, so the next
// allocations of that size start out poisoned.
void prime_poisoned_cache(int64_t nbytes, int blocks = 2) {
  set_cuda_cache_limit(0);
  set_cuda_cache_limit(size_t{4} << 30);
  std::vector<Tensor> held;
  for (int i = 0; i < blocks; ++i) held.push_back(poisoned({std::max<int64_t>(nbytes, 1)}, DType::U8));
  held.clear();
}

void check_same(const Tensor& device_result, const Tensor& cpu_result) {
  REQUIRE(device_result.device() == kGpu);
  REQUIRE(cpu_result.device().is_cpu());
  REQUIRE(device_result.dtype() == cpu_result.dtype());
  REQUIRE(device_result.shape() == cpu_result.shape());
  const Tensor back = device_result.to(Device::cpu());
  CHECK(test::reference_bytes(back) == test::reference_bytes(cpu_result));
}

// The same random view of a host tensor and of its device copy: a permutation, then a narrow of
// every dim (odd offsets included, so 16-byte alignment is often lost).
struct ViewPair {
  Tensor host;
  Tensor device;
};

ViewPair random_view(const Shape& shape, DType dtype) {
  Tensor host = test::random_tensor(shape, dtype);
  Tensor device = host.to(kGpu);
  Dims perm(shape.size(), 0);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), test::rng());
  host = host.permute(perm);
  device = device.permute(perm);
  for (int64_t d = 0; d < host.dim(); ++d) {
    const int64_t size = host.size(d);
    const int64_t start = test::randint(0, size / 3);
    const int64_t length = test::randint(std::min<int64_t>(1, size - start), size - start);
    host = host.narrow(d, start, length);
    device = device.narrow(d, start, length);
  }
  return {host, device};
}

}  // namespace

TEST_CASE("contiguous() of random strided views is byte-identical on the device") {
  for (DType dtype : element_dtypes()) {
    for (int round = 0; round < 12; ++round) {
      const Shape shape = test::random_shape(5, 24);
      const ViewPair v = random_view(shape, dtype);
      prime_poisoned_cache(v.host.nbytes());
      check_same(v.device.contiguous(), v.host.contiguous());
    }
  }
}

TEST_CASE("copy_ into poisoned strided device destinations matches the CPU") {
  for (DType dtype : element_dtypes()) {
    for (int round = 0; round < 6; ++round) {
      const Shape shape = test::random_shape(4, 33);
      const ViewPair src = random_view(shape, dtype);
      // The destination: a transposed view of a poisoned device buffer (and its CPU twin).
      Shape outer = src.host.shape();
      std::reverse(outer.begin(), outer.end());
      Tensor dst_dev = poisoned(outer, dtype);
      Tensor dst_host = dst_dev.to(Device::cpu());
      Dims rev(outer.size(), 0);
      for (size_t i = 0; i < outer.size(); ++i) rev[i] = static_cast<int64_t>(outer.size() - 1 - i);
      dst_dev.permute(rev).copy_(src.device);
      dst_host.permute(rev).copy_(src.host);
      check_same(dst_dev, dst_host);
      // And host -> strided device, device -> strided host.
      Tensor dst2 = poisoned(outer, dtype);
      dst2.permute(rev).copy_(src.host);
      check_same(dst2, dst_host);
      Tensor host_dst = Tensor::zeros(outer, dtype);
      host_dst.permute(rev).copy_(src.device);
      CHECK(test::reference_bytes(host_dst) == test::reference_bytes(dst_host));
    }
  }
}

TEST_CASE("copies that cannot be coalesced below 8 dims are split and still exact") {
  // 11 dims of size 2, every other dim reversed in the destination order: nothing coalesces.
  Shape shape(11, 2);
  Tensor host = test::random_tensor(shape, DType::BF16);
  Dims perm = {10, 8, 6, 4, 2, 0, 1, 3, 5, 7, 9};
  prime_poisoned_cache(host.nbytes());
  check_same(host.to(kGpu).permute(perm).contiguous(), host.permute(perm).contiguous());
}

TEST_CASE("large copies use every word width and stay exact") {
  // A transpose of a matrix larger than a few blocks, in 1-, 2-, 4-, 8- and 16-byte elements.
  for (DType dtype : {DType::U8, DType::BF16, DType::F32, DType::F64, DType::C64}) {
    Tensor host = test::random_tensor({1031, 517}, dtype);
    Tensor dev = host.to(kGpu);
    prime_poisoned_cache(host.nbytes());
    check_same(dev.transpose(0, 1).contiguous(), host.transpose(0, 1).contiguous());
    // Rows of 3 elements narrowed from 4: a packed run with an odd element count.
    check_same(dev.narrow(1, 1, 3).contiguous(), host.narrow(1, 1, 3).contiguous());
    check_same(dev.clone(), host);
  }
}

TEST_CASE("transposes (tiled copies) match the CPU: partial tiles, batch dims, narrowed views") {
  for (DType dtype : {DType::U8, DType::BF16, DType::F32, DType::F64}) {
    const Tensor full = test::random_tensor({3, 40, 5, 37}, dtype);
    const Tensor host = full.narrow(1, 3, 33);
    const Tensor dev = full.to(kGpu).narrow(1, 3, 33);
    for (const Dims& perm :
         {Dims{0, 3, 2, 1}, Dims{3, 0, 1, 2}, Dims{2, 3, 0, 1}, Dims{1, 0, 3, 2}}) {
      prime_poisoned_cache(host.nbytes());
      check_same(dev.permute(perm).contiguous(), host.permute(perm).contiguous());
    }
  }
  // BF16 pairs moved together (4-byte tile elements).
  const Tensor pairs = test::random_tensor({50, 40, 2}, DType::BF16);
  check_same(pairs.to(kGpu).permute({1, 0, 2}).contiguous(), pairs.permute({1, 0, 2}).contiguous());
}

TEST_CASE("stack and cat of non-contiguous device tensors match the CPU in one launch") {
  for (DType dtype : element_dtypes()) {
    for (int round = 0; round < 4; ++round) {
      const Shape shape = test::random_shape(4, 12);
      const auto count = static_cast<size_t>(test::randint(1, 7));
      std::vector<Tensor> host_parts, dev_parts;
      for (size_t i = 0; i < count; ++i) {
        Tensor h = test::random_tensor(shape, dtype);
        Tensor d = h.to(kGpu);
        if (h.dim() >= 2 && i % 2 == 1) {  // some inputs transposed (same shape after the swap back)
          h = h.transpose(0, 1).contiguous().transpose(0, 1);
          d = d.transpose(0, 1).contiguous().transpose(0, 1);
        }
        host_parts.push_back(h);
        dev_parts.push_back(d);
      }
      const int64_t dim = test::randint(0, static_cast<int64_t>(shape.size()));
      const Tensor expect = stack(host_parts, dim);
      prime_poisoned_cache(expect.nbytes());
      check_same(stack(dev_parts, dim), expect);
      const int64_t cat_dim = test::randint(0, static_cast<int64_t>(shape.size()) - 1);
      // cat along cat_dim with parts of different sizes there.
      std::vector<Tensor> hc, dc;
      for (size_t i = 0; i < count; ++i) {
        const int64_t len = test::randint(0, host_parts[i].size(cat_dim));
        hc.push_back(host_parts[i].narrow(cat_dim, 0, len));
        dc.push_back(dev_parts[i].narrow(cat_dim, 0, len));
      }
      const Tensor cat_expect = cat(hc, cat_dim);
      prime_poisoned_cache(cat_expect.nbytes());
      check_same(cat(dc, cat_dim), cat_expect);
    }
  }
}

TEST_CASE("stack of many small tensors (one launch, many copies) matches the CPU") {
  std::vector<Tensor> host_parts, dev_parts;
  for (int i = 0; i < 1000; ++i) {
    Tensor h = test::random_tensor({test::randint(1, 3), 5}, DType::F16).narrow(0, 0, 1);
    host_parts.push_back(h.squeeze(0).narrow(0, i % 2, 4));
    dev_parts.push_back(h.to(kGpu).squeeze(0).narrow(0, i % 2, 4));
  }
  const Tensor expect = stack(host_parts, 1);
  prime_poisoned_cache(expect.nbytes());
  check_same(stack(dev_parts, 1), expect);
  check_same(cat(dev_parts, 0), cat(host_parts, 0));
}

TEST_CASE("chunk, split and unbind views of device tensors round-trip, uneven chunks included") {
  for (DType dtype : {DType::U8, DType::BF16, DType::F32, DType::C64}) {
    Tensor host = test::random_tensor({13, 7, 5}, dtype);
    Tensor dev = host.to(kGpu);
    for (int64_t dim = 0; dim < 3; ++dim) {
      for (int64_t chunks : {1, 2, 3, 4, 6}) {
        auto hp = chunk(host, chunks, dim);
        auto dp = chunk(dev, chunks, dim);
        REQUIRE(hp.size() == dp.size());
        for (size_t i = 0; i < hp.size(); ++i) check_same(dp[i].contiguous(), hp[i].contiguous());
        CHECK(equal(cat(dp, dim), dev));
      }
      auto hs = split(host, {1, host.size(dim) - 1}, dim);
      auto ds = split(dev, {1, dev.size(dim) - 1}, dim);
      check_same(ds[1].contiguous(), hs[1].contiguous());
      CHECK(equal(stack(unbind(dev, dim), dim), dev));
    }
  }
}

TEST_CASE("every dtype conversion on the device is byte-identical to the CPU's") {
  const auto dtypes = element_dtypes();
  // Random bits (NaN payloads, subnormals, huge values), then special F32 values cast to each
  // source dtype on the CPU: halfway cases, overflow, signed zeros and NaNs.
  std::vector<float> specials = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 1.5f, 2.5f, 65504.0f, 65520.0f,
                                 448.0f, 464.0f, 57344.0f, 61440.0f, 1e-8f, -1e-8f, 5.96e-8f,
                                 2.98e-8f, 3.0e38f, -3.0e38f, 1e-45f, 1.17549435e-38f,
                                 1.00048828125f, 1.0009765625f, 3.99e9f, -2.2e9f, 1.9e19f};
  specials.push_back(std::numeric_limits<float>::infinity());
  specials.push_back(-std::numeric_limits<float>::infinity());
  specials.push_back(std::numeric_limits<float>::quiet_NaN());
  specials.push_back(-std::numeric_limits<float>::quiet_NaN());
  const Tensor special_f32 = Tensor::from_vector(specials);
  for (DType src : dtypes) {
    const Tensor random = test::random_tensor({4099}, src);
    const Tensor special = special_f32.to(src);
    for (DType dst : dtypes) {
      for (const Tensor& host : {random, special}) {
        const Tensor expect = host.to(dst);
        prime_poisoned_cache(expect.nbytes());
        const Tensor got = host.to(kGpu).to(dst);
        INFO(src, " -> ", dst);
        check_same(got, expect);
      }
      // A source one element in: off 16-byte alignment, the kernel's one-element-per-thread path
      // (Note [vectorized cast]); the aligned whole tensor above took the vector path.
      check_same(random.to(kGpu).narrow(0, 1, 4098).to(dst), random.narrow(0, 1, 4098).to(dst));
      // A strided source: converted after the device packs it.
      const Tensor matrix = test::random_tensor({67, 31}, src);
      check_same(matrix.to(kGpu).transpose(0, 1).to(dst), matrix.transpose(0, 1).to(dst));
      // copy_ across dtypes from the device into the host, and from the host into the device.
      Tensor into_host = Tensor::zeros({67, 31}, dst);
      into_host.copy_(matrix.to(kGpu));
      CHECK(equal(into_host, matrix.to(dst)));
      Tensor into_dev = poisoned({67, 31}, dst);
      into_dev.copy_(matrix);
      check_same(into_dev, matrix.to(dst));
    }
  }
}

TEST_CASE("dequantize on the device is byte-identical to the CPU's, every format") {
  struct Case {
    QuantFormat format;
    Shape source, scale;
    DType source_dtype, scale_dtype;
    std::optional<Shape> global;
    std::optional<GlobalScaleMode> mode;
  };
  const std::vector<Case> cases = {
      {QuantFormat::kFp8Block, {3, 300, 517}, {3, 3, 5}, DType::F8_E4M3, DType::F32, {}, {}},
      {QuantFormat::kFp8Block, {256, 256}, {2, 2}, DType::F8_E4M3, DType::BF16, {}, {}},
      {QuantFormat::kFp8Channel, {300, 64}, {300, 1}, DType::F8_E4M3, DType::BF16, {}, {}},
      {QuantFormat::kFp8Channel, {70, 9}, {1}, DType::F8_E4M3, DType::F16, {}, {}},
      {QuantFormat::kMxfp4, {4, 90, 3, 16}, {4, 90, 3}, DType::U8, DType::U8, {}, {}},
      {QuantFormat::kMxfp4, {300, 33}, {300, 3}, DType::U8, DType::F8_E8M0, {}, {}},
      {QuantFormat::kNvfp4,
       {4, 30, 40},
       {4, 30, 5},
       DType::U8,
       DType::F8_E4M3,
       Shape{4},
       GlobalScaleMode::kDivide},
      {QuantFormat::kNvfp4,
       {300, 9},
       {300, 2},
       DType::U8,
       DType::F8_E4M3,
       Shape{},
       GlobalScaleMode::kMultiply},
      {QuantFormat::kNvfp4, {300, 8}, {300, 1}, DType::U8, DType::F8_E4M3, {}, {}},
  };
  for (const Case& c : cases) {
    const Tensor source = test::random_tensor(c.source, c.source_dtype);
    const Tensor scale = test::random_tensor(c.scale, c.scale_dtype);
    const Tensor global = c.global ? test::random_tensor(*c.global, DType::F32) : Tensor();
    for (DType out : {DType::BF16, DType::F16, DType::F32}) {
      Dequantization how;
      how.format = c.format;
      how.dtype = out;
      how.global_scale_mode = c.mode;
      INFO(quant_format_name(c.format), " ", c.source, " -> ", out);
      const Tensor expect = dequantize(source, scale, how, global);
      prime_poisoned_cache(expect.nbytes());
      check_same(dequantize(source.to(kGpu), scale.to(kGpu), how,
                            global.defined() ? global.to(kGpu) : Tensor()),
                 expect);
    }
  }
  // A strided device source is packed first; inputs on two devices are refused.
  const Tensor w = test::random_tensor({64, 300}, DType::F8_E4M3);
  const Tensor s = test::random_tensor({3, 1}, DType::F32);
  Dequantization how;
  check_same(dequantize(w.to(kGpu).transpose(0, 1), s.to(kGpu), how),
             dequantize(w.transpose(0, 1), s, how));
  CHECK_THROWS_AS(dequantize(w.to(kGpu).transpose(0, 1), s, how), DeviceError);
}

TEST_CASE("equal, to_vector and item work on device tensors") {
  Tensor host = test::random_tensor({9, 4}, DType::F32);
  Tensor dev = host.to(kGpu);
  CHECK(equal(dev, host.to(kGpu)));
  CHECK(equal(dev.transpose(0, 1), host.transpose(0, 1).contiguous().to(kGpu)));
  CHECK_FALSE(equal(dev, dev.transpose(0, 1).contiguous().view({9, 4})));
  CHECK(dev.to_vector<float>() == host.to_vector<float>());
  CHECK(dev.select(0, 2).select(0, 3).item<float>() == host.select(0, 2).select(0, 3).item<float>());
  CHECK_THROWS_AS(equal(dev, host), DeviceError);
}

TEST_CASE("stack rejects tensors on different devices") {
  Tensor host = test::random_tensor({3}, DType::F32);
  CHECK_THROWS_AS(stack({host, host.to(kGpu)}), DeviceError);
}

TEST_CASE("freed device blocks are reused from a bounded cache") {
  set_cuda_cache_limit(0);
  set_cuda_cache_limit(size_t{64} << 20);
  const void* first = nullptr;
  {
    Tensor a = Tensor::empty({8 << 20}, DType::U8, kGpu);
    first = a.data_ptr();
  }
  CHECK(cuda_cache_bytes() >= (size_t{8} << 20));
  Tensor b = Tensor::empty({8 << 20}, DType::U8, kGpu);
  CHECK(b.data_ptr() == first);
  {
    Tensor big = Tensor::empty({int64_t{100} << 20}, DType::U8, kGpu);
  }
  CHECK(cuda_cache_bytes() <= (size_t{64} << 20));  // larger than the limit: not kept
  set_cuda_cache_limit(size_t{4} << 30);
}

TEST_CASE("the pinned staging ring uploads exactly, from several threads at once") {
  // Tiny buffers so that every tensor takes many chunks and the ring wraps many times.
  StagingRing ring(kGpu, StagingOptions{3, 4096, 2});
  std::vector<Tensor> sources;
  for (int i = 0; i < 16; ++i) {
    sources.push_back(test::random_tensor({test::randint(0, 50000)}, DType::U8));
  }
  sources.push_back(test::random_tensor({300, 301}, DType::BF16).transpose(0, 1));  // strided
  std::vector<Tensor> results(sources.size());
  std::vector<std::string> errors(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (size_t i = t; i < sources.size(); i += 4) results[i] = ring.upload(sources[i]);
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const std::string& e : errors) CHECK(e == "");
  for (size_t i = 0; i < sources.size(); ++i) check_same(results[i], sources[i].contiguous());
}

TEST_CASE("the staging ring downloads in order, uploads and downloads sharing it from several threads") {
  // 5 tiny buffers for 4 threads that each want up to 4 in flight: a thread must hand over its
  // chunks before waiting for a buffer, or they would wait on each other for ever.
  StagingRing ring(kGpu, StagingOptions{5, 4096, 2});
  std::vector<Tensor> host;
  for (int i = 0; i < 24; ++i) host.push_back(test::random_tensor({test::randint(0, 60000)}, DType::U8));
  host.push_back(test::random_tensor({300, 301}, DType::BF16));
  std::vector<Tensor> device;
  for (const Tensor& t : host) device.push_back(t.to(kGpu));
  device.back() = device.back().transpose(0, 1);  // a strided device tensor: packed on the device
  host.back() = host.back().transpose(0, 1).contiguous();
  std::vector<std::vector<unsigned char>> got(host.size());
  std::vector<std::string> errors(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (size_t i = t; i < host.size(); i += 4) {
          int64_t expected_offset = 0;
          ring.download(device[i], [&](std::span<const std::byte> bytes, int64_t offset) {
            if (offset != expected_offset) throw std::runtime_error("chunk out of order");
            const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
            got[i].insert(got[i].end(), p, p + bytes.size());
            expected_offset += static_cast<int64_t>(bytes.size());
          });
          (void)ring.upload(host[i]);  // uploads share the ring meanwhile
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const std::string& e : errors) CHECK(e == "");
  for (size_t i = 0; i < host.size(); ++i) CHECK(got[i] == test::packed_bytes(host[i]));
  // A sink that throws: the error comes out and the ring is whole afterwards.
  CHECK_THROWS_WITH(ring.download(device.back(),
                                  [](std::span<const std::byte>, int64_t) {
                                    throw std::runtime_error("disk full");
                                  }),
                    "disk full");
  std::vector<unsigned char> again;
  ring.download(device.back(), [&](std::span<const std::byte> bytes, int64_t) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    again.insert(again.end(), p, p + bytes.size());
  });
  CHECK(again == test::packed_bytes(host.back()));
  CHECK_THROWS_AS(ring.download(host[0], [](std::span<const std::byte>, int64_t) {}), DeviceError);
}

TEST_CASE("the staging ring uploads from a source, in order, and passes on a source's error") {
  StagingRing ring(kGpu, StagingOptions{3, 4096, 2});
  const Tensor host = test::random_tensor({70, 301}, DType::F16);  // 42140 bytes: 11 chunks
  const std::vector<unsigned char> bytes = test::packed_bytes(host);
  int64_t expected_offset = 0;
  const Tensor up = ring.upload(host.shape(), host.dtype(), [&](std::span<std::byte> dst, int64_t offset) {
    CHECK(offset == expected_offset);
    CHECK(dst.size() <= 4096);
    std::memcpy(dst.data(), bytes.data() + offset, dst.size());
    expected_offset += static_cast<int64_t>(dst.size());
  });
  CHECK(expected_offset == host.nbytes());
  CHECK(up.device() == kGpu);
  check_same(up, host);
  // A source failing half-way: the error comes out, and the ring keeps working.
  CHECK_THROWS_WITH(ring.upload(host.shape(), host.dtype(),
                                [&](std::span<std::byte> dst, int64_t offset) {
                                  if (offset >= 20000) throw std::runtime_error("short read");
                                  std::memset(dst.data(), 0, dst.size());
                                }),
                    "short read");
  check_same(ring.upload(host), host);
  // Nothing to read: the source is not called.
  const Tensor empty = ring.upload({0, 5}, DType::F32, [](std::span<std::byte>, int64_t) {
    throw std::runtime_error("called for an empty tensor");
  });
  CHECK(empty.shape() == Shape{0, 5});
}
