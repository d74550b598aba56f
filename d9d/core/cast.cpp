#include "cast.hpp"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstring>
#include <type_traits>

#include <d9d/error.hpp>

#include "float_formats.hpp"
#include "parallel.hpp"

namespace d9d::detail {
namespace {

// Storage types of the dtypes that have no C++ arithmetic type; the format does the arithmetic.
template <class Format>
struct Narrow {
  using format = Format;
};
struct Bool8 {};
using F16T = Narrow<F16Format>;
using BF16T = Narrow<BF16Format>;
using E4M3T = Narrow<E4M3Format>;
using E5M2T = Narrow<E5M2Format>;
using E8M0T = Narrow<E8M0Format>;
using E4M3FnuzT = Narrow<E4M3FnuzFormat>;
using E5M2FnuzT = Narrow<E5M2FnuzFormat>;
using C64T = std::complex<float>;

template <class T>
struct is_narrow : std::false_type {};
template <class F>
struct is_narrow<Narrow<F>> : std::true_type {};

// The bytes one element occupies.
template <class T>
using Raw = std::conditional_t<
    std::is_same_v<T, Bool8>, uint8_t,
    std::conditional_t<is_narrow<T>::value,
                       std::conditional_t<std::is_same_v<T, F16T> || std::is_same_v<T, BF16T>,
                                          uint16_t, uint8_t>,
                       T>>;

// What a source element is worth, in the widest type that holds it exactly.
template <class S>
auto value_of(Raw<S> raw) {
  if constexpr (std::is_same_v<S, Bool8>) {
    return static_cast<uint64_t>(raw != 0);
  } else if constexpr (is_narrow<S>::value) {
    return S::format::decode(raw);
  } else {
    return raw;
  }
}

template <class V>
constexpr bool is_float_value = std::is_floating_point_v<V>;
template <class V>
constexpr bool is_complex_value = std::is_same_v<V, C64T>;

// Float to integer: truncate toward zero, NaN to 0, saturate at the int64 range ([0, 2^64) for
// U64), then wrap to the target width as an integer cast does.
template <class D>
D float_to_int(double x) {
  if (std::isnan(x)) return D{0};
  const double t = std::trunc(x);
  if constexpr (std::is_same_v<D, uint64_t>) {
    if (t >= 18446744073709551616.0) return UINT64_MAX;
    if (t >= 9223372036854775808.0) return static_cast<uint64_t>(t);
  }
  int64_t i;
  if (t >= 9223372036854775808.0) {
    i = INT64_MAX;
  } else if (t < -9223372036854775808.0) {
    i = INT64_MIN;
  } else {
    i = static_cast<int64_t>(t);
  }
  return static_cast<D>(i);
}

template <class D, class V>
Raw<D> convert_value(V v) {
  if constexpr (std::is_same_v<D, Bool8>) {
    if constexpr (is_complex_value<V>) return (v.real() != 0 || v.imag() != 0) ? 1 : 0;
    else return v != V{0} ? 1 : 0;
  } else if constexpr (is_complex_value<V>) {
    if constexpr (is_complex_value<D>) return v;
    else return convert_value<D>(v.real());  // the real part, as PyTorch
  } else if constexpr (std::is_integral_v<D>) {
    if constexpr (is_float_value<V>) return float_to_int<D>(static_cast<double>(v));
    else return static_cast<D>(v);  // integer to integer wraps around
  } else if constexpr (std::is_same_v<D, double>) {
    return static_cast<double>(v);
  } else if constexpr (std::is_same_v<D, float>) {
    return static_cast<float>(v);
  } else if constexpr (is_complex_value<D>) {
    return C64T(static_cast<float>(v), 0.0f);
  } else {
    static_assert(is_narrow<D>::value);
    return static_cast<Raw<D>>(D::format::encode(static_cast<float>(v)));  // via F32, as PyTorch
  }
}

template <class D, class S>
void cast_run(const std::byte* src, std::byte* dst, int64_t begin, int64_t end) {
  constexpr size_t kSrc = sizeof(Raw<S>), kDst = sizeof(Raw<D>);
  for (int64_t i = begin; i < end; ++i) {
    Raw<S> raw;
    std::memcpy(&raw, src + i * static_cast<int64_t>(kSrc), kSrc);
    const Raw<D> out = convert_value<D>(value_of<S>(raw));
    std::memcpy(dst + i * static_cast<int64_t>(kDst), &out, kDst);
  }
}

using CastFn = void (*)(const std::byte*, std::byte*, int64_t, int64_t);

template <class F>
void visit(DType dtype, F&& f) {
  switch (dtype) {
    case DType::BOOL: return f(Bool8{});
    case DType::U8: return f(uint8_t{});
    case DType::I8: return f(int8_t{});
    case DType::I16: return f(int16_t{});
    case DType::U16: return f(uint16_t{});
    case DType::I32: return f(int32_t{});
    case DType::U32: return f(uint32_t{});
    case DType::I64: return f(int64_t{});
    case DType::U64: return f(uint64_t{});
    case DType::F16: return f(F16T{});
    case DType::BF16: return f(BF16T{});
    case DType::F32: return f(float{});
    case DType::F64: return f(double{});
    case DType::F8_E4M3: return f(E4M3T{});
    case DType::F8_E5M2: return f(E5M2T{});
    case DType::F8_E8M0: return f(E8M0T{});
    case DType::F8_E4M3FNUZ: return f(E4M3FnuzT{});
    case DType::F8_E5M2FNUZ: return f(E5M2FnuzT{});
    case DType::C64: return f(C64T{});
    case DType::F4:
    case DType::F6_E2M3:
    case DType::F6_E3M2: break;
  }
  D9D_ASSERT(false);
}

CastFn cast_fn(DType src, DType dst) {
  CastFn fn = nullptr;
  visit(src, [&](auto s) {
    visit(dst, [&](auto d) { fn = &cast_run<decltype(d), decltype(s)>; });
  });
  return fn;
}

constexpr int64_t kCastChunk = 1 << 16;  // elements per parallel unit

}  // namespace

void cast_contiguous(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype,
                     int64_t count) {
  D9D_CHECK_TYPE(!is_sub_byte(src_dtype) && !is_sub_byte(dst_dtype), "to: cannot convert ",
                 src_dtype, " to ", dst_dtype,
                 ": packed sub-byte dtypes have no element conversion");
  const CastFn fn = cast_fn(src_dtype, dst_dtype);
  const int64_t bytes = count * std::max(element_size(src_dtype), element_size(dst_dtype));
  if (bytes < kParallelMinBytes) {
    fn(src, dst, 0, count);
    return;
  }
  const int64_t chunks = (count + kCastChunk - 1) / kCastChunk;
  parallel_for(chunks, [&](int64_t c) {
    fn(src, dst, c * kCastChunk, std::min(count, (c + 1) * kCastChunk));
  });
}

}  // namespace d9d::detail
