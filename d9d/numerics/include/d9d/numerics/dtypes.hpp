// Element types: every dtype a safetensors file can name, and the one table of what each is.
//
// The enumerators are spelled as the safetensors header spells them ("F32", "BF16", "F8_E4M3"),
// so a dtype prints and parses as the file format writes it. kDTypes holds each dtype's name, bit
// size, kind, DLPack code and value traits; core's <d9d/dtype.hpp> is the API over it.
//
// Sub-byte dtypes (F4, F6_E2M3, F6_E3M2) are packed: a tensor of them occupies numel * bits / 8
// bytes, which must be a whole number. They can be stored, renamed, reshaped, copied whole and
// written; operations that address single elements reject them with a TypeError.
//
// Note [dtype value traits]: the values a dtype holds, as a lossless-cast check needs them
// (mapper's is_lossless_cast). A float dtype's traits are its FloatLayout's (float_formats.hpp),
// an integer's follow from its bits and sign, so no range is written here as a number. C64 has
// the traits of each of its parts (F32). tests/core checks every row against the formats' own
// decoding (test_cast.cpp) and against numpy's and ml_dtypes' finfo / iinfo (cast_oracle.py).
#pragma once

#include <cstdint>
#include <string_view>

#include <d9d/numerics/float_formats.hpp>

namespace d9d {

enum class DType : uint8_t {
  BOOL,
  U8,
  I8,
  I16,
  U16,
  I32,
  U32,
  I64,
  U64,
  F16,
  BF16,
  F32,
  F64,
  F8_E4M3,      // float8_e4m3fn: no infinities, NaN = S.1111.111, max 448
  F8_E5M2,      // IEEE-like: infinities and NaNs, max 57344
  F8_E8M0,      // float8_e8m0fnu: unsigned power of two 2^(e-127), 0xFF = NaN
  F8_E4M3FNUZ,  // bias 8, no infinities, no negative zero, NaN = 0x80
  F8_E5M2FNUZ,  // bias 16, no infinities, no negative zero, NaN = 0x80
  C64,          // complex64: two F32 (real, imaginary)
  F4,           // float4_e2m1fn, two per byte
  F6_E2M3,      // float6_e2m3fn, packed
  F6_E3M2,      // float6_e3m2fn, packed
};

inline constexpr int kNumDTypes = 22;

enum class DTypeKind : uint8_t { kBool, kSigned, kUnsigned, kFloat, kComplex };

struct DTypeInfo {
  DType dtype;
  std::string_view name;  // as in a safetensors header
  int bits;               // bits per element
  DTypeKind kind;
  uint8_t dlpack_code;  // DLDataTypeCode (DLPack 1.1 numbering)
  // Value traits (Note [dtype value traits]).
  bool is_signed;       // holds negative values
  int precision;        // significant bits: mantissa + 1, value bits of an integer, 1 for BOOL
  double max_finite;    // largest finite value; I64's and U64's rounded to double: 2^63, 2^64
  double min_positive;  // smallest positive value: the smallest subnormal (E8M0: 2^-127), or 1
  bool has_zero;        // false for F8_E8M0 only
  bool has_neg_zero;
  bool has_inf;
  bool has_nan;
};

namespace numerics {

constexpr DTypeInfo integer_row(DType dtype, std::string_view name, int bits, bool is_signed) {
  const int precision = bits - (is_signed ? 1 : 0);
  return {dtype,
          name,
          bits,
          is_signed ? DTypeKind::kSigned : DTypeKind::kUnsigned,
          static_cast<uint8_t>(is_signed ? 0 : 1),  // kDLInt, kDLUInt
          is_signed,
          precision,
          exp2i(precision) - 1.0,
          1.0,
          true,
          false,
          false,
          false};
}

constexpr DTypeInfo float_row(DType dtype, std::string_view name, int bits, DTypeKind kind,
                              uint8_t dlpack_code, FloatLayout layout) {
  return {dtype,
          name,
          bits,
          kind,
          dlpack_code,
          layout.has_sign(),
          layout.precision(),
          layout.max_finite(),
          layout.min_positive(),
          layout.has_zero(),
          layout.has_neg_zero(),
          layout.has_inf(),
          layout.has_nan()};
}

// The one table of dtypes, in enum order.
inline constexpr DTypeInfo kDTypes[kNumDTypes] = {
    {DType::BOOL, "BOOL", 8, DTypeKind::kBool, 6, false, 1, 1.0, 1.0, true, false, false, false},
    integer_row(DType::U8, "U8", 8, false),
    integer_row(DType::I8, "I8", 8, true),
    integer_row(DType::I16, "I16", 16, true),
    integer_row(DType::U16, "U16", 16, false),
    integer_row(DType::I32, "I32", 32, true),
    integer_row(DType::U32, "U32", 32, false),
    integer_row(DType::I64, "I64", 64, true),
    integer_row(DType::U64, "U64", 64, false),
    float_row(DType::F16, "F16", 16, DTypeKind::kFloat, 2, F16Format::kLayout),
    float_row(DType::BF16, "BF16", 16, DTypeKind::kFloat, 4, BF16Format::kLayout),
    float_row(DType::F32, "F32", 32, DTypeKind::kFloat, 2, kF32Layout),
    float_row(DType::F64, "F64", 64, DTypeKind::kFloat, 2, kF64Layout),
    float_row(DType::F8_E4M3, "F8_E4M3", 8, DTypeKind::kFloat, 10, E4M3Format::kLayout),
    float_row(DType::F8_E5M2, "F8_E5M2", 8, DTypeKind::kFloat, 12, E5M2Format::kLayout),
    float_row(DType::F8_E8M0, "F8_E8M0", 8, DTypeKind::kFloat, 14, E8M0Format::kLayout),
    float_row(DType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8, DTypeKind::kFloat, 11, E4M3FnuzFormat::kLayout),
    float_row(DType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8, DTypeKind::kFloat, 13, E5M2FnuzFormat::kLayout),
    float_row(DType::C64, "C64", 64, DTypeKind::kComplex, 5, kF32Layout),  // each part an F32
    float_row(DType::F4, "F4", 4, DTypeKind::kFloat, 17, kF4Layout),
    float_row(DType::F6_E2M3, "F6_E2M3", 6, DTypeKind::kFloat, 15, kF6E2M3Layout),
    float_row(DType::F6_E3M2, "F6_E3M2", 6, DTypeKind::kFloat, 16, kF6E3M2Layout),
};

constexpr bool table_in_enum_order() {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (static_cast<int>(kDTypes[i].dtype) != i) return false;
  }
  return true;
}
static_assert(table_in_enum_order());

}  // namespace numerics
}  // namespace d9d
