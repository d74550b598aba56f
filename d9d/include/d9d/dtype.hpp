// Element types: the API over the dtype table. DType, DTypeInfo and the table itself (every
// dtype's name, bit size, kind, DLPack code and value traits) are the numerics layer's
// (<d9d/numerics/dtypes.hpp>, which also says how sub-byte dtypes are stored).
#pragma once

#include <complex>
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string_view>
#include <type_traits>

#include <d9d/numerics/dtypes.hpp>

namespace d9d {

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
