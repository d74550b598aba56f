// Known values of to(DType), and exact round trips. The oracle comparison against numpy and
// ml_dtypes on random and edge-case inputs is tests/core/cast_oracle.py.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <d9d/core.hpp>

using namespace d9d;

namespace {

// The code a single F32 value gets in a narrow dtype.
template <class Code>
Code code_of(float value, DType dtype) {
  Tensor t = Tensor::from_vector<float>({value}).to(dtype);
  Code code;
  std::memcpy(&code, t.data_ptr(), sizeof code);
  return code;
}

// The F32 value of a code of a narrow dtype.
template <class Code>
float value_of(Code code, DType dtype) {
  Tensor t = Tensor::empty({1}, dtype);
  std::memcpy(t.mutable_data_ptr(), &code, sizeof code);
  return t.item<float>();
}

float f32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

}  // namespace

TEST_CASE("F32 to BF16 rounds to nearest, ties to even, as PyTorch") {
  CHECK(code_of<uint16_t>(1.0f, DType::BF16) == 0x3F80);
  CHECK(code_of<uint16_t>(1.0f + 0x1p-8f, DType::BF16) == 0x3F80);      // tie -> even
  CHECK(code_of<uint16_t>(1.0f + 3 * 0x1p-8f, DType::BF16) == 0x3F82);  // tie -> even
  CHECK(code_of<uint16_t>(1.0f + 0x1p-8f + 0x1p-20f, DType::BF16) == 0x3F81);
  CHECK(code_of<uint16_t>(-2.0f, DType::BF16) == 0xC000);
  CHECK(code_of<uint16_t>(kInf, DType::BF16) == 0x7F80);
  CHECK(code_of<uint16_t>(f32(0x7F7FFFFF), DType::BF16) == 0x7F80);  // rounds past the max
  CHECK(code_of<uint16_t>(kNaN, DType::BF16) == 0x7FC0);
  CHECK(code_of<uint16_t>(f32(0x00010000), DType::BF16) == 0x0001);  // subnormal stays exact
}

TEST_CASE("F32 to F16 handles overflow, subnormals and ties as IEEE round-to-nearest-even") {
  CHECK(code_of<uint16_t>(65504.0f, DType::F16) == 0x7BFF);
  CHECK(code_of<uint16_t>(65519.0f, DType::F16) == 0x7BFF);
  CHECK(code_of<uint16_t>(65520.0f, DType::F16) == 0x7C00);  // tie rounds to even: infinity
  CHECK(code_of<uint16_t>(-kInf, DType::F16) == 0xFC00);
  CHECK(code_of<uint16_t>(0x1p-24f, DType::F16) == 0x0001);
  CHECK(code_of<uint16_t>(0x1p-25f, DType::F16) == 0x0000);  // tie to even: zero
  CHECK(code_of<uint16_t>(3 * 0x1p-26f, DType::F16) == 0x0001);
  CHECK(code_of<uint16_t>(-0x1p-26f, DType::F16) == 0x8000);  // keeps the sign of zero
  CHECK(code_of<uint16_t>(0x1p-14f, DType::F16) == 0x0400);   // smallest normal
  CHECK(code_of<uint16_t>(kNaN, DType::F16) == 0x7E00);
  CHECK(value_of<uint16_t>(0x0001, DType::F16) == 0x1p-24f);
  CHECK(value_of<uint16_t>(0x3C00, DType::F16) == 1.0f);
}

TEST_CASE("F8 formats follow c10's saturation, NaN and zero rules") {
  // E4M3 (fn): max 448, no infinity; overflow and infinities become NaN (0x7F with the sign).
  CHECK(code_of<uint8_t>(448.0f, DType::F8_E4M3) == 0x7E);
  CHECK(code_of<uint8_t>(464.0f, DType::F8_E4M3) == 0x7E);  // tie -> even
  CHECK(code_of<uint8_t>(465.0f, DType::F8_E4M3) == 0x7F);
  CHECK(code_of<uint8_t>(-kInf, DType::F8_E4M3) == 0xFF);
  CHECK(code_of<uint8_t>(0x1p-9f, DType::F8_E4M3) == 0x01);
  CHECK(code_of<uint8_t>(-1.0f, DType::F8_E4M3) == 0xB8);
  CHECK(value_of<uint8_t>(0x7E, DType::F8_E4M3) == 448.0f);
  CHECK(std::isnan(value_of<uint8_t>(0x7F, DType::F8_E4M3)));
  // E5M2: IEEE-like with infinities.
  CHECK(code_of<uint8_t>(57344.0f, DType::F8_E5M2) == 0x7B);
  CHECK(code_of<uint8_t>(61440.0f, DType::F8_E5M2) == 0x7C);
  CHECK(code_of<uint8_t>(-kInf, DType::F8_E5M2) == 0xFC);
  CHECK(code_of<uint8_t>(kNaN, DType::F8_E5M2) == 0x7F);
  CHECK(value_of<uint8_t>(0x7C, DType::F8_E5M2) == kInf);
  // FNUZ: no negative zero, NaN is 0x80, overflow is NaN.
  CHECK(code_of<uint8_t>(-0.0f, DType::F8_E4M3FNUZ) == 0x00);
  CHECK(code_of<uint8_t>(-0x1p-20f, DType::F8_E4M3FNUZ) == 0x00);
  CHECK(code_of<uint8_t>(240.0f, DType::F8_E4M3FNUZ) == 0x7F);
  CHECK(code_of<uint8_t>(256.0f, DType::F8_E4M3FNUZ) == 0x80);
  CHECK(code_of<uint8_t>(-kInf, DType::F8_E5M2FNUZ) == 0x80);
  CHECK(code_of<uint8_t>(57344.0f, DType::F8_E5M2FNUZ) == 0x7F);
  CHECK(std::isnan(value_of<uint8_t>(0x80, DType::F8_E5M2FNUZ)));
  CHECK(value_of<uint8_t>(0x01, DType::F8_E5M2FNUZ) == 0x1p-17f);
  // E8M0: unsigned powers of two; the exponent rounds on the mantissa.
  CHECK(code_of<uint8_t>(1.0f, DType::F8_E8M0) == 127);
  CHECK(code_of<uint8_t>(0.75f, DType::F8_E8M0) == 127);
  CHECK(code_of<uint8_t>(3.0f, DType::F8_E8M0) == 129);
  CHECK(code_of<uint8_t>(-2.0f, DType::F8_E8M0) == 128);
  CHECK(code_of<uint8_t>(kNaN, DType::F8_E8M0) == 0xFF);
  CHECK(value_of<uint8_t>(0, DType::F8_E8M0) == 0x1p-127f);
  CHECK(value_of<uint8_t>(130, DType::F8_E8M0) == 8.0f);
}

TEST_CASE("integer conversions wrap, float to integer truncates toward zero") {
  CHECK(Tensor::from_vector<int64_t>({300, -129, 255}).to(DType::I8).to_vector<int>() ==
        std::vector<int>{44, 127, -1});
  CHECK(Tensor::from_vector<int32_t>({-1}).to(DType::U64).item<uint64_t>() == UINT64_MAX);
  CHECK(Tensor::from_vector<float>({2.7f, -2.7f, -0.5f}).to(DType::I32).to_vector<int32_t>() ==
        std::vector<int32_t>{2, -2, 0});
  CHECK(Tensor::from_vector<float>({-1.0f, 300.0f}).to(DType::U8).to_vector<int>() ==
        std::vector<int>{255, 44});
  CHECK(Tensor::from_vector<float>({kNaN}).to(DType::I64).item<int64_t>() == 0);
  CHECK(Tensor::from_vector<float>({1e30f, -1e30f}).to(DType::I64).to_vector<int64_t>() ==
        std::vector<int64_t>{INT64_MAX, INT64_MIN});
  CHECK(Tensor::from_vector<double>({1.8446744073709552e19 - 4096.0}).to(DType::U64).item<uint64_t>() ==
        18446744073709547520ull);
}

TEST_CASE("conversions to and from BOOL and C64 follow PyTorch") {
  CHECK(Tensor::from_vector<float>({0.0f, -0.0f, 0.5f, kNaN}).to(DType::BOOL).to_vector<bool>() ==
        std::vector<bool>{false, false, true, true});
  CHECK(Tensor::from_vector<bool>({true, false}).to(DType::BF16).to_vector<float>() ==
        std::vector<float>{1.0f, 0.0f});
  Tensor c = Tensor::from_vector<float>({2.5f, -1.0f}).to(DType::C64);
  CHECK(c.to_vector<std::complex<float>>() ==
        std::vector<std::complex<float>>{{2.5f, 0.0f}, {-1.0f, 0.0f}});
  Tensor z = Tensor::from_vector<std::complex<float>>({{0.0f, 1.0f}, {3.0f, 4.0f}});
  CHECK(z.to_vector<float>() == std::vector<float>{0.0f, 3.0f});  // the real part
  CHECK(z.to(DType::BOOL).to_vector<bool>() == std::vector<bool>{true, true});
}

TEST_CASE("F64 and integers reach narrow floats through F32, as PyTorch") {
  // 1 + 2^-8 + 2^-30 in F64: F32 keeps it as 1 + 2^-8 + 2^-30 - no, F32 rounds it to 1 + 2^-8
  // (the 2^-30 is below F32's precision), which then ties to even in BF16: 1.0. A direct
  // F64 -> BF16 rounding would give 1 + 2^-7.
  const double v = 1.0 + 0x1p-8 + 0x1p-30;
  CHECK(Tensor::from_vector<double>({v}).to(DType::BF16).item<float>() == 1.0f);
  // 2^24 + 1 is not an F32; it rounds to 2^24 first.
  CHECK(Tensor::from_vector<int64_t>({16777217}).to(DType::F32).item<float>() == 16777216.0f);
}

TEST_CASE("decoding then encoding every code of every 8- and 16-bit float format is exact") {
  for (DType dtype : {DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2, DType::F8_E8M0,
                      DType::F8_E4M3FNUZ, DType::F8_E5M2FNUZ}) {
    CAPTURE(dtype);
    const int64_t count = dtype_bits(dtype) == 16 ? 65536 : 256;
    Tensor codes = Tensor::arange(count, DType::I64).to(dtype_bits(dtype) == 16 ? DType::U16 : DType::U8);
    Tensor raw = Tensor::from_storage(codes.storage(), dtype, codes.shape());
    Tensor values = raw.to(DType::F32);
    Tensor back = values.to(dtype);
    auto vs = values.to_vector<float>();
    const auto* a = static_cast<const unsigned char*>(raw.data_ptr());
    const auto* b = static_cast<const unsigned char*>(back.data_ptr());
    const int64_t esize = raw.element_size();
    int mismatches = 0;
    for (int64_t i = 0; i < count; ++i) {
      if (std::isnan(vs[static_cast<size_t>(i)])) continue;  // NaN payloads become canonical
      if (std::memcmp(a + i * esize, b + i * esize, static_cast<size_t>(esize)) != 0) ++mismatches;
    }
    // FNUZ formats have no negative zero, F16/BF16/E5M2 infinities round-trip exactly.
    CHECK(mismatches == 0);
    // Through F64 as well.
    CHECK(equal(raw.to(DType::F64).to(dtype).to(DType::F32).to(DType::BOOL),
                values.to(DType::BOOL)));
  }
}

TEST_CASE("integers round-trip through every wider type exactly") {
  Tensor bytes = Tensor::arange(256, DType::I64).to(DType::U8);
  for (DType dtype : {DType::I16, DType::U16, DType::I32, DType::U32, DType::I64, DType::U64,
                      DType::F16, DType::BF16, DType::F32, DType::F64, DType::C64}) {
    CAPTURE(dtype);
    CHECK(equal(bytes.to(dtype).to(DType::U8), bytes));
  }
  Tensor big = Tensor::from_vector<int64_t>({INT64_MIN, -1, 0, INT64_MAX});
  CHECK(equal(big.to(DType::U64).to(DType::I64), big));
  Tensor ints = Tensor::arange(-100000, 100000, 7, DType::I32);
  CHECK(equal(ints.to(DType::F64).to(DType::I32), ints));
  CHECK(equal(ints.to(DType::F32).to(DType::I32), ints));
}

TEST_CASE("large casts split across threads give the same values as small ones") {
  const int64_t n = (1 << 20) + 12345;
  Tensor src = Tensor::arange(-1000.0, 1000.0, 2000.0 / static_cast<double>(n), DType::F32);
  Tensor big = src.to(DType::BF16);
  for (int64_t start : {int64_t{0}, int64_t{65536 * 7 + 3}, n - 100}) {
    CHECK(equal(big.narrow(0, start, 100), src.narrow(0, start, 100).contiguous().to(DType::BF16)));
  }
  CHECK(equal(src.transpose(0, 0).to(DType::F64).to(DType::F32), src));
}

namespace {

// A dtype's value traits as its own decoding shows them: every code of an 8- or 16-bit float
// format converted to F32 (exact) by Tensor::to, the formats' own code.
DTypeInfo decoded_traits(DType dtype) {
  const int64_t count = int64_t{1} << dtype_bits(dtype);
  Tensor codes =
      Tensor::arange(count, DType::I64).to(dtype_bits(dtype) == 16 ? DType::U16 : DType::U8);
  const std::vector<float> values =
      Tensor::from_storage(codes.storage(), dtype, codes.shape()).to(DType::F32).to_vector<float>();
  DTypeInfo t{};
  t.max_finite = 0;
  t.min_positive = kInf;
  int in_one_binade = 0;  // values in [1, 2): 2^(precision - 1) of them
  for (float v : values) {
    t.has_nan |= std::isnan(v);
    t.has_inf |= std::isinf(v);
    t.has_zero |= v == 0;
    t.has_neg_zero |= v == 0 && std::signbit(v);
    t.is_signed |= v < 0;
    if (!std::isfinite(v)) continue;
    t.max_finite = std::max(t.max_finite, static_cast<double>(v));
    if (v > 0) t.min_positive = std::min(t.min_positive, static_cast<double>(v));
    in_one_binade += v >= 1 && v < 2;
  }
  t.precision = static_cast<int>(std::log2(in_one_binade)) + 1;
  return t;
}

// The same from std::numeric_limits, for the dtypes that are C++ arithmetic types.
template <class T>
DTypeInfo limits_traits() {
  using L = std::numeric_limits<T>;
  DTypeInfo t{};
  t.is_signed = L::is_signed;
  t.precision = L::digits;
  t.max_finite = static_cast<double>(L::max());
  t.min_positive = L::is_integer ? 1.0 : static_cast<double>(L::denorm_min());
  t.has_zero = true;
  t.has_neg_zero = L::is_iec559;
  t.has_inf = L::has_infinity;
  t.has_nan = L::has_quiet_NaN;
  return t;
}

void check_traits(const DTypeInfo& row, const DTypeInfo& want) {
  CAPTURE(row.dtype);
  CHECK(row.is_signed == want.is_signed);
  CHECK(row.precision == want.precision);
  CHECK(row.max_finite == want.max_finite);
  CHECK(row.min_positive == want.min_positive);
  CHECK(row.has_zero == want.has_zero);
  CHECK(row.has_neg_zero == want.has_neg_zero);
  CHECK(row.has_inf == want.has_inf);
  CHECK(row.has_nan == want.has_nan);
}

}  // namespace

TEST_CASE("the dtype table's value traits are what each dtype's codes decode to") {
  int checked = 0;
  for (int i = 0; i < kNumDTypes; ++i) {
    const DTypeInfo& row = all_dtypes()[i];
    switch (row.dtype) {
      case DType::BOOL: check_traits(row, limits_traits<bool>()); break;
      case DType::U8: check_traits(row, limits_traits<uint8_t>()); break;
      case DType::I8: check_traits(row, limits_traits<int8_t>()); break;
      case DType::I16: check_traits(row, limits_traits<int16_t>()); break;
      case DType::U16: check_traits(row, limits_traits<uint16_t>()); break;
      case DType::I32: check_traits(row, limits_traits<int32_t>()); break;
      case DType::U32: check_traits(row, limits_traits<uint32_t>()); break;
      case DType::I64: check_traits(row, limits_traits<int64_t>()); break;
      case DType::U64: check_traits(row, limits_traits<uint64_t>()); break;
      case DType::F32: check_traits(row, limits_traits<float>()); break;
      case DType::F64: check_traits(row, limits_traits<double>()); break;
      case DType::C64: check_traits(row, limits_traits<float>()); break;  // each part
      case DType::F4:
      case DType::F6_E2M3:
      case DType::F6_E3M2: continue;  // no element conversion: cast_oracle.py checks them
      default: check_traits(row, decoded_traits(row.dtype)); break;  // the 8- and 16-bit floats
    }
    ++checked;
  }
  CHECK(checked == kNumDTypes - 3);
}
