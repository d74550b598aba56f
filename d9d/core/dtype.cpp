#include <d9d/dtype.hpp>

#include <ostream>
#include <string>

#include <d9d/error.hpp>

namespace d9d {

using numerics::kDTypes;

const DTypeInfo& dtype_info(DType dtype) {
  const auto i = static_cast<int>(dtype);
  D9D_CHECK_TYPE(i >= 0 && i < kNumDTypes, "dtype_info: invalid dtype value ", i);
  return kDTypes[i];
}

const DTypeInfo* all_dtypes() { return kDTypes; }

std::string_view dtype_name(DType dtype) { return dtype_info(dtype).name; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

DType parse_dtype(std::string_view name) {
  if (auto dtype = dtype_from_name(name)) return *dtype;
  std::string valid;
  for (const auto& info : kDTypes) {
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
