// Element types: every dtype a safetensors file can name.
//
// The enumerators are spelled as the safetensors header spells them ("F32", "BF16", "F8_E4M3"),
// so a dtype prints and parses as the file format writes it. One table (dtype.cpp) holds each
// dtype's name, bit size, kind and DLPack code.
//
// Sub-byte dtypes (F4, F6_E2M3, F6_E3M2) are packed: a tensor of them occupies numel * bits / 8
// bytes, which must be a whole number. They can be stored, renamed, reshaped, copied whole and
// written; operations that address single elements reject them with a TypeError.
#pragma once

#include <complex>
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string_view>
#include <type_traits>

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
  uint8_t dlpack_code;    // DLDataTypeCode (DLPack 1.1 numbering)
};

// The table entry of a dtype.
const DTypeInfo& dtype_info(DType dtype);
// Every dtype, in enum order.
const DTypeInfo* all_dtypes();

std::string_view dtype_name(DType dtype);
// Exact, case-sensitive match of a safetensors dtype string ("BF16"); nullopt if unknown.
std::optional<DType> dtype_from_name(std::string_view name);
// As dtype_from_name, but throws ValueError naming the string and listing the valid names.
DType parse_dtype(std::string_view name);

int dtype_bits(DType dtype);
bool is_sub_byte(DType dtype);
// Bytes per element; throws TypeError for sub-byte dtypes, which have no addressable element.
int64_t element_size(DType dtype);
bool is_floating_point(DType dtype);  // F16, BF16, F32, F64, F8_*, F4, F6_*
bool is_complex(DType dtype);
bool is_integral(DType dtype);        // U8..U64, I8..I64 (not BOOL)

std::ostream& operator<<(std::ostream& out, DType dtype);

// The dtype of a C++ element type: bool, the fixed-width integers, float, double,
// std::complex<float>.
template <class T>
constexpr DType dtype_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, bool>) {
    return DType::BOOL;
  } else if constexpr (std::is_same_v<U, float>) {
    return DType::F32;
  } else if constexpr (std::is_same_v<U, double>) {
    return DType::F64;
  } else if constexpr (std::is_same_v<U, std::complex<float>>) {
    return DType::C64;
  } else if constexpr (std::is_integral_v<U> && !std::is_same_v<U, char>) {
    constexpr bool s = std::is_signed_v<U>;
    if constexpr (sizeof(U) == 1) return s ? DType::I8 : DType::U8;
    if constexpr (sizeof(U) == 2) return s ? DType::I16 : DType::U16;
    if constexpr (sizeof(U) == 4) return s ? DType::I32 : DType::U32;
    if constexpr (sizeof(U) == 8) return s ? DType::I64 : DType::U64;
  } else {
    static_assert(sizeof(U) == 0, "dtype_of: no d9d dtype for this C++ type");
  }
}

}  // namespace d9d
