#include <doctest/doctest.h>

#include <set>
#include <sstream>
#include <string>

#include <d9d/core.hpp>

using namespace d9d;

TEST_CASE("every safetensors dtype has a name, a bit size and parses back from its name") {
  const std::set<std::string> expected = {
      "BOOL", "U8",      "I8",      "I16",         "U16",         "I32", "U32", "I64",
      "U64",  "F16",     "BF16",    "F32",         "F64",         "F8_E4M3", "F8_E5M2",
      "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64", "F4", "F6_E2M3", "F6_E3M2"};
  std::set<std::string> seen;
  for (int i = 0; i < kNumDTypes; ++i) {
    const DTypeInfo& info = all_dtypes()[i];
    seen.insert(std::string(info.name));
    CHECK(dtype_from_name(info.name) == info.dtype);
    CHECK(parse_dtype(info.name) == info.dtype);
    std::ostringstream out;
    out << info.dtype;
    CHECK(out.str() == info.name);
  }
  CHECK(seen == expected);
}

TEST_CASE("dtype bit sizes match the safetensors format") {
  CHECK(dtype_bits(DType::BOOL) == 8);
  CHECK(dtype_bits(DType::BF16) == 16);
  CHECK(dtype_bits(DType::C64) == 64);
  CHECK(dtype_bits(DType::F8_E8M0) == 8);
  CHECK(dtype_bits(DType::F4) == 4);
  CHECK(dtype_bits(DType::F6_E2M3) == 6);
  CHECK(element_size(DType::F64) == 8);
  CHECK(element_size(DType::U16) == 2);
  CHECK(is_sub_byte(DType::F6_E3M2));
  CHECK_FALSE(is_sub_byte(DType::F8_E4M3));
  CHECK(is_floating_point(DType::F8_E5M2FNUZ));
  CHECK(is_integral(DType::U64));
  CHECK_FALSE(is_integral(DType::BOOL));
  CHECK(is_complex(DType::C64));
}

TEST_CASE("dtype names are case-sensitive and unknown names are rejected with the valid list") {
  CHECK_FALSE(dtype_from_name("bf16").has_value());
  CHECK_FALSE(dtype_from_name("F8_E4M3FN").has_value());
  CHECK_FALSE(dtype_from_name("").has_value());
  CHECK_THROWS_WITH_AS(parse_dtype("f32"), doctest::Contains("unknown dtype \"f32\""), ValueError);
  CHECK_THROWS_WITH_AS(parse_dtype("Q4"), doctest::Contains("BF16"), ValueError);
}

TEST_CASE("sub-byte dtypes have no element size") {
  CHECK_THROWS_WITH_AS(element_size(DType::F4),
                       doctest::Contains("F4 is a packed 4-bit type"), TypeError);
}

TEST_CASE("dtype_of maps C++ element types") {
  CHECK(dtype_of<float>() == DType::F32);
  CHECK(dtype_of<double>() == DType::F64);
  CHECK(dtype_of<bool>() == DType::BOOL);
  CHECK(dtype_of<int64_t>() == DType::I64);
  CHECK(dtype_of<long long>() == DType::I64);
  CHECK(dtype_of<uint16_t>() == DType::U16);
  CHECK(dtype_of<int8_t>() == DType::I8);
  CHECK(dtype_of<std::complex<float>>() == DType::C64);
  CHECK(dtype_of<const uint32_t>() == DType::U32);
  CHECK(element_size(dtype_of<std::complex<float>>()) == sizeof(std::complex<float>));
}

TEST_CASE("devices parse from and print as cpu and cuda:N") {
  CHECK(Device::parse("cpu") == Device::cpu());
  CHECK(Device::parse("cuda") == Device::cuda(0));
  CHECK(Device::parse("cuda:3") == Device::cuda(3));
  CHECK(Device::parse("cuda:3").index() == 3);
  CHECK(Device::parse("cuda:12").str() == "cuda:12");
  CHECK(Device::cpu().str() == "cpu");
  CHECK(Device::cuda(1).is_cuda());
  CHECK(Device::cpu().is_cpu());
  for (const char* bad : {"gpu", "CPU", "cuda:", "cuda:-1", "cuda:x", "cuda:1x", "cuda:+1", "cuda 1",
                          ""}) {
    CAPTURE(bad);
    CHECK_THROWS_WITH_AS(Device::parse(bad), doctest::Contains("invalid device"), ValueError);
  }
  CHECK_THROWS_AS(Device::cuda(-1), ValueError);
}

TEST_CASE("Dims stores small shapes inline and large ones on the heap") {
  Dims small{1, 2, 3};
  CHECK(small.size() == 3);
  Dims big;
  for (int64_t i = 0; i < 12; ++i) big.push_back(i);
  CHECK(big.size() == 12);
  CHECK(big[11] == 11);
  big.erase(0);
  CHECK(big[0] == 1);
  CHECK(big.size() == 11);
  big.insert(0, 42);
  CHECK(big[0] == 42);
  Dims copy = big;
  CHECK(copy == big);
  Dims moved = std::move(copy);
  CHECK(moved == big);
  big.resize(2);
  CHECK(big == Dims{42, 1});
  std::ostringstream out;
  out << Dims{2, 3};
  CHECK(out.str() == "[2, 3]");
}
