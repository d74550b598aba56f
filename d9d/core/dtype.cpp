#include <d9d/dtype.hpp>

#include <ostream>
#include <string>

#include <d9d/error.hpp>

namespace d9d {
namespace {

using K = DTypeKind;

// The one table of dtypes: safetensors name, bits, kind, DLPack 1.1 type code.
constexpr DTypeInfo kTable[kNumDTypes] = {
    {DType::BOOL, "BOOL", 8, K::kBool, 6},
    {DType::U8, "U8", 8, K::kUnsigned, 1},
    {DType::I8, "I8", 8, K::kSigned, 0},
    {DType::I16, "I16", 16, K::kSigned, 0},
    {DType::U16, "U16", 16, K::kUnsigned, 1},
    {DType::I32, "I32", 32, K::kSigned, 0},
    {DType::U32, "U32", 32, K::kUnsigned, 1},
    {DType::I64, "I64", 64, K::kSigned, 0},
    {DType::U64, "U64", 64, K::kUnsigned, 1},
    {DType::F16, "F16", 16, K::kFloat, 2},
    {DType::BF16, "BF16", 16, K::kFloat, 4},
    {DType::F32, "F32", 32, K::kFloat, 2},
    {DType::F64, "F64", 64, K::kFloat, 2},
    {DType::F8_E4M3, "F8_E4M3", 8, K::kFloat, 10},
    {DType::F8_E5M2, "F8_E5M2", 8, K::kFloat, 12},
    {DType::F8_E8M0, "F8_E8M0", 8, K::kFloat, 14},
    {DType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8, K::kFloat, 11},
    {DType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8, K::kFloat, 13},
    {DType::C64, "C64", 64, K::kComplex, 5},
    {DType::F4, "F4", 4, K::kFloat, 17},
    {DType::F6_E2M3, "F6_E2M3", 6, K::kFloat, 15},
    {DType::F6_E3M2, "F6_E3M2", 6, K::kFloat, 16},
};

constexpr bool table_in_enum_order() {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (static_cast<int>(kTable[i].dtype) != i) return false;
  }
  return true;
}
static_assert(table_in_enum_order());

}  // namespace

const DTypeInfo& dtype_info(DType dtype) {
  const auto i = static_cast<int>(dtype);
  D9D_CHECK_TYPE(i >= 0 && i < kNumDTypes, "dtype_info: invalid dtype value ", i);
  return kTable[i];
}

const DTypeInfo* all_dtypes() { return kTable; }

std::string_view dtype_name(DType dtype) { return dtype_info(dtype).name; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : kTable) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

DType parse_dtype(std::string_view name) {
  if (auto dtype = dtype_from_name(name)) return *dtype;
  std::string valid;
  for (const auto& info : kTable) {
    if (!valid.empty()) valid += ", ";
    valid += info.name;
  }
  detail::throw_error<ValueError>("unknown dtype \"", name, "\" (dtypes are case-sensitive: ",
                                  valid, ")");
}

int dtype_bits(DType dtype) { return dtype_info(dtype).bits; }

bool is_sub_byte(DType dtype) { return dtype_bits(dtype) < 8; }

int64_t element_size(DType dtype) {
  const int bits = dtype_bits(dtype);
  D9D_CHECK_TYPE(bits % 8 == 0, "dtype ", dtype, " is a packed ", bits,
                 "-bit type with no addressable elements");
  return bits / 8;
}

bool is_floating_point(DType dtype) { return dtype_info(dtype).kind == DTypeKind::kFloat; }
bool is_complex(DType dtype) { return dtype_info(dtype).kind == DTypeKind::kComplex; }
bool is_integral(DType dtype) {
  const auto kind = dtype_info(dtype).kind;
  return kind == DTypeKind::kSigned || kind == DTypeKind::kUnsigned;
}

std::ostream& operator<<(std::ostream& out, DType dtype) { return out << dtype_name(dtype); }

}  // namespace d9d
