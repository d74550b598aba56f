// The narrow float formats: what their codes mean (FloatLayout, from which the dtype table takes
// every value trait of a float dtype) and bit-exact conversions between F32 and them (MiniFloat,
// E8M0Format). Header-only; the CPU cast and the CUDA cast kernel instantiate the same code (Note
// [one set of conversion rules] in cast_rules.hpp), so the GPU rounds exactly as the CPU does.
//
// Note [rounding as PyTorch]: every narrow format is encoded from F32 with round-to-nearest-even,
// the way c10 (Half.h, BFloat16.h, Float8_*.h) does it, including its choices for the special
// values: the NaN code each format produces, overflow to infinity where the format has one and to
// NaN where it has none, no negative zero in the FNUZ formats, and the exponent-only rounding of
// E8M0. PyTorch converts F64 and integers to these formats through F32 (two roundings), and so do
// we. Decoding to F32 is exact for every format.
#pragma once

#include <cstdint>
#include <cstring>

#include <d9d/numerics/host_device.hpp>

namespace d9d::numerics {

D9D_HOST_DEVICE uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

D9D_HOST_DEVICE float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// 2^e, exactly, at compile time (std::ldexp is not constexpr in C++20). Every power of two from
// 2^-1074 to 2^1023 is a double.
constexpr double exp2i(int e) {
  double x = 1.0;
  for (; e > 0; --e) x *= 2.0;
  for (; e < 0; ++e) x *= 0.5;
  return x;
}

enum class FloatStyle {
  kIeee,          // all-ones exponent holds infinities and NaNs
  kFn,            // finite only: all-ones exponent is a normal binade, S.1111.111 is NaN
  kFnuz,          // finite only, no negative zero: 0x80 is NaN
  kFinite,        // every code is a finite number: no NaN either (F4, F6_*)
  kExponentOnly,  // unsigned 2^(code - bias): no sign, no zero, all-ones is NaN (E8M0)
};

// What the codes of a float format mean: a sign bit (unless kExponentOnly), `exponent_bits`,
// `mantissa_bits`, the exponent bias and the style. The dtype table's value traits of a float
// dtype are this layout's (dtypes.hpp), so a format's range is written down once, here.
struct FloatLayout {
  int exponent_bits;
  int mantissa_bits;
  int bias;
  FloatStyle style;

  constexpr bool has_sign() const { return style != FloatStyle::kExponentOnly; }
  constexpr bool has_zero() const { return style != FloatStyle::kExponentOnly; }
  constexpr bool has_neg_zero() const { return has_zero() && style != FloatStyle::kFnuz; }
  constexpr bool has_inf() const { return style == FloatStyle::kIeee; }
  constexpr bool has_nan() const { return style != FloatStyle::kFinite; }
  constexpr int precision() const { return mantissa_bits + 1; }  // significant bits

  constexpr uint64_t abs_mask() const {
    return (uint64_t{1} << (exponent_bits + mantissa_bits)) - 1;
  }
  constexpr uint64_t exp_mask() const {
    return ((uint64_t{1} << exponent_bits) - 1) << mantissa_bits;
  }
  // The code of the largest finite value.
  constexpr uint64_t max_finite_code() const {
    if (style == FloatStyle::kIeee) return exp_mask() - 1;  // below the infinities
    if (style == FloatStyle::kFn || style == FloatStyle::kExponentOnly) return abs_mask() - 1;
    return abs_mask();  // kFnuz, kFinite: every positive code is finite
  }
  // The value of a finite, non-negative code, exactly (a double holds every value of these
  // formats).
  constexpr double value(uint64_t code) const {
    const auto exponent = static_cast<int>(code >> mantissa_bits);
    const auto mantissa = static_cast<double>(code & ((uint64_t{1} << mantissa_bits) - 1));
    if (style == FloatStyle::kExponentOnly) return exp2i(exponent - bias);
    if (exponent == 0) return mantissa * exp2i(1 - bias - mantissa_bits);  // subnormal
    return (mantissa + exp2i(mantissa_bits)) * exp2i(exponent - bias - mantissa_bits);
  }
  constexpr double max_finite() const { return value(max_finite_code()); }
  // The smallest positive value: the smallest subnormal (kExponentOnly: code 0, 2^-bias).
  constexpr double min_positive() const {
    return value(style == FloatStyle::kExponentOnly ? 0 : 1);
  }
};

// The wide formats and the packed ones core stores but does not convert.
inline constexpr FloatLayout kF32Layout{8, 23, 127, FloatStyle::kIeee};
inline constexpr FloatLayout kF64Layout{11, 52, 1023, FloatStyle::kIeee};
inline constexpr FloatLayout kF4Layout{2, 1, 1, FloatStyle::kFinite};      // float4_e2m1fn
inline constexpr FloatLayout kF6E2M3Layout{2, 3, 1, FloatStyle::kFinite};  // float6_e2m3fn
inline constexpr FloatLayout kF6E3M2Layout{3, 2, 3, FloatStyle::kFinite};  // float6_e3m2fn

// A sign + E exponent bits + M mantissa bits format with the given bias and style. kNan is the
// code produced for a NaN input; kNanSigned says whether the input's sign is kept on it.
template <int E, int M, int Bias, FloatStyle Style, uint32_t kNan, bool kNanSigned>
struct MiniFloat {
  static_assert(E >= 2 && E <= 8 && M >= 1 && M <= 10 && Bias <= 127);
  static_assert(Style == FloatStyle::kIeee || Style == FloatStyle::kFn ||
                Style == FloatStyle::kFnuz);
  static constexpr FloatLayout kLayout{E, M, Bias, Style};
  static constexpr uint32_t kSignBit = 1u << (E + M);
  static constexpr uint32_t kAbsMask = kSignBit - 1;
  static constexpr uint32_t kExpMask = ((1u << E) - 1) << M;
  static constexpr uint32_t kInf = kExpMask;  // kIeee only
  static constexpr auto kMaxFinite = static_cast<uint32_t>(kLayout.max_finite_code());
  static constexpr int kMinNormalExp = 1 - Bias;  // unbiased exponent of the smallest normal

  static D9D_HOST_DEVICE uint32_t nan_code(uint32_t sign) { return kNanSigned ? (sign | kNan) : kNan; }
  static D9D_HOST_DEVICE uint32_t overflow_code(uint32_t sign) {
    if constexpr (Style == FloatStyle::kIeee) return sign | kInf;
    return nan_code(sign);
  }

  static D9D_HOST_DEVICE uint32_t encode(float value) {
    const uint32_t bits = f32_bits(value);
    if constexpr (E == 8 && Style == FloatStyle::kIeee) {
      // BF16: F32 with the low half rounded off. Branch-free so the loop vectorizes; a carry
      // out of the largest finite values lands exactly on infinity.
      const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
      return (bits & 0x7FFFFFFFu) > 0x7F800000u ? nan_code(bits >> 16 & kSignBit) : rounded;
    }
    const uint32_t sign = (bits >> 31) ? kSignBit : 0u;
    const uint32_t abs = bits & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) return nan_code(sign);
    if (abs == 0x7F800000u) return overflow_code(sign);
    uint32_t code;
    constexpr uint32_t kMinNormalBits = static_cast<uint32_t>(kMinNormalExp + 127) << 23;
    if (E == 8 || abs >= kMinNormalBits) {
      // Re-bias the exponent in place and round the dropped mantissa bits to nearest even; a
      // carry out of the mantissa correctly bumps the exponent. With E == 8 this also covers
      // subnormals, which share F32's layout.
      constexpr int kShift = 23 - M;
      const uint32_t rebiased = abs - (static_cast<uint32_t>(127 - Bias) << 23);
      const uint32_t odd = (rebiased >> kShift) & 1u;
      code = (rebiased + ((1u << (kShift - 1)) - 1u) + odd) >> kShift;
    } else {
      // Subnormal in the target: count units of 2^(kMinNormalExp - M). The scaling is exact,
      // and adding then subtracting 2^23 rounds to an integer, to nearest even.
      constexpr uint32_t kScaleBits = static_cast<uint32_t>(127 + M - kMinNormalExp) << 23;
      const float units = f32_from_bits(abs) * f32_from_bits(kScaleBits);
      const float rounded = (units + 8388608.0f) - 8388608.0f;
      code = static_cast<uint32_t>(rounded);
    }
    if (code > kMaxFinite) return overflow_code(sign);
    if (Style == FloatStyle::kFnuz && code == 0) return 0;
    return sign | code;
  }

  static D9D_HOST_DEVICE float decode(uint32_t code) {
    const uint32_t sign = (code & kSignBit) ? 0x80000000u : 0u;
    const uint32_t abs = code & kAbsMask;
    if constexpr (Style == FloatStyle::kFnuz) {
      if (code == kSignBit) return f32_from_bits(0x7FC00000u);
    } else if constexpr (Style == FloatStyle::kFn) {
      if (abs == kAbsMask) return f32_from_bits(sign | 0x7FC00000u);
    } else {
      if ((abs & kExpMask) == kExpMask) {
        return f32_from_bits(sign | 0x7F800000u | ((abs & ~kExpMask) << (23 - M)));
      }
    }
    if constexpr (E == 8) return f32_from_bits(sign | (abs << (23 - M)));
    const uint32_t exponent = abs >> M;
    const uint32_t mantissa = abs & ((1u << M) - 1u);
    if (exponent == 0) {
      constexpr uint32_t kUnitBits = static_cast<uint32_t>(127 + kMinNormalExp - M) << 23;
      const float magnitude = static_cast<float>(mantissa) * f32_from_bits(kUnitBits);
      return sign ? -magnitude : magnitude;
    }
    return f32_from_bits(sign | ((exponent - Bias + 127) << 23) | (mantissa << (23 - M)));
  }
};

using F16Format = MiniFloat<5, 10, 15, FloatStyle::kIeee, 0x7E00u, true>;
using BF16Format = MiniFloat<8, 7, 127, FloatStyle::kIeee, 0x7FC0u, false>;
using E4M3Format = MiniFloat<4, 3, 7, FloatStyle::kFn, 0x7Fu, true>;
using E5M2Format = MiniFloat<5, 2, 15, FloatStyle::kIeee, 0x7Fu, true>;
using E4M3FnuzFormat = MiniFloat<4, 3, 8, FloatStyle::kFnuz, 0x80u, false>;
using E5M2FnuzFormat = MiniFloat<5, 2, 16, FloatStyle::kFnuz, 0x80u, false>;

// E8M0 (OCP MX scale): unsigned, exponent only, value 2^(code - 127); 0xFF is NaN. The sign of
// the input is ignored and the mantissa rounds the exponent to nearest (ties to even on the
// implied bit), as c10's Float8_e8m0fnu does.
struct E8M0Format {
  static constexpr FloatLayout kLayout{8, 0, 127, FloatStyle::kExponentOnly};
  static D9D_HOST_DEVICE uint32_t encode(float value) {
    const uint32_t bits = f32_bits(value);
    uint32_t exponent = (bits >> 23) & 0xFFu;
    if (exponent == 0xFFu) return 0xFFu;
    const bool guard = (bits & 0x400000u) != 0;
    const bool round_or_sticky = (bits & 0x3FFFFFu) != 0;
    const bool lsb = exponent > 0;
    if (guard && (round_or_sticky || lsb)) ++exponent;
    return exponent;
  }
  static D9D_HOST_DEVICE float decode(uint32_t code) {
    if (code == 0) return f32_from_bits(0x00400000u);  // 2^-127, an F32 subnormal
    if (code == 0xFFu) return f32_from_bits(0x7FC00000u);
    return f32_from_bits(code << 23);
  }
};

}  // namespace d9d::numerics
