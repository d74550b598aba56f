// The element conversion rules of Tensor::to(DType), as templates over source and destination
// element types (header-only).
//
// Note [one set of conversion rules]: the CPU cast (d9d/core/cast.cpp) and the CUDA cast kernel
// (kernels/cast.cu) instantiate these same templates, so a conversion gives the same bytes on
// either device. Everything here is D9D_HOST_DEVICE and avoids what differs between the two:
// bit casts use __float_as_uint on the device (no memcpy), NaN is tested as x != x, and F32 <-> F64
// conversions of a NaN are spelled out (the GPU's cvt replaces a NaN by the canonical 0x7FFFFFFF,
// the host's SSE keeps its sign and payload, and that sign shows in F16/F8 results). The kernel
// is compiled with --fmad=false so no multiply-add is fused differently from the host. The kernels
// see only the numerics layer (this header, float_formats.hpp, dtypes.hpp); they link nothing of
// core.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <d9d/numerics/dtypes.hpp>
#include <d9d/numerics/float_formats.hpp>

namespace d9d::numerics {

// Storage types of the dtypes that have no C++ arithmetic type; the format does the arithmetic.
template <class Format>
struct Narrow {
  using format = Format;
};
struct Bool8 {};
struct Complex64 {  // laid out as std::complex<float> and DLPack's complex64
  float re;
  float im;
};
using F16T = Narrow<F16Format>;
using BF16T = Narrow<BF16Format>;
using E4M3T = Narrow<E4M3Format>;
using E5M2T = Narrow<E5M2Format>;
using E8M0T = Narrow<E8M0Format>;
using E4M3FnuzT = Narrow<E4M3FnuzFormat>;
using E5M2FnuzT = Narrow<E5M2FnuzFormat>;

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

// F64 -> F32 and back, NaNs as x86 SSE converts them: sign kept, quiet bit set, the payload's
// high bits kept (see the Note).
D9D_HOST_DEVICE float f64_to_f32(double x) {
#if defined(__CUDA_ARCH__)
  if (x != x) {
    const auto b = static_cast<uint64_t>(__double_as_longlong(x));
    return __uint_as_float(static_cast<uint32_t>(b >> 32 & 0x80000000u) | 0x7FC00000u |
                           static_cast<uint32_t>(b >> 29 & 0x7FFFFFu));
  }
#endif
  return static_cast<float>(x);
}

D9D_HOST_DEVICE double f32_to_f64(float x) {
#if defined(__CUDA_ARCH__)
  if (x != x) {
    const uint32_t b = __float_as_uint(x);
    return __longlong_as_double(static_cast<long long>(
        (static_cast<uint64_t>(b & 0x80000000u) << 32) | 0x7FF8000000000000ull |
        (static_cast<uint64_t>(b & 0x7FFFFFu) << 29)));
  }
#endif
  return static_cast<double>(x);
}

template <class V>
D9D_HOST_DEVICE float to_f32(V v) {
  if constexpr (std::is_same_v<V, double>) return f64_to_f32(v);
  else return static_cast<float>(v);
}

template <class V>
D9D_HOST_DEVICE double to_f64(V v) {
  if constexpr (std::is_same_v<V, float>) return f32_to_f64(v);
  else return static_cast<double>(v);
}

D9D_HOST_DEVICE double trunc_f64(double x) {
#if defined(__CUDA_ARCH__)
  return ::trunc(x);
#else
  return std::trunc(x);
#endif
}

// What a source element is worth, in the widest type that holds it exactly.
template <class S>
D9D_HOST_DEVICE auto value_of(Raw<S> raw) {
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
constexpr bool is_complex_value = std::is_same_v<V, Complex64>;

// Float to integer: truncate toward zero, NaN to 0, saturate at the int64 range ([0, 2^64) for
// U64), then wrap to the target width as an integer cast does.
template <class D>
D9D_HOST_DEVICE D float_to_int(double x) {
  if (x != x) return D{0};
  const double t = trunc_f64(x);
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
D9D_HOST_DEVICE Raw<D> convert_value(V v) {
  if constexpr (std::is_same_v<D, Bool8>) {
    if constexpr (is_complex_value<V>) return (v.re != 0 || v.im != 0) ? 1 : 0;
    else return v != V{0} ? 1 : 0;
  } else if constexpr (is_complex_value<V>) {
    if constexpr (is_complex_value<D>) return v;
    else return convert_value<D>(v.re);  // the real part, as PyTorch
  } else if constexpr (std::is_integral_v<D>) {
    if constexpr (is_float_value<V>) return float_to_int<D>(to_f64(v));
    else return static_cast<D>(v);  // integer to integer wraps around
  } else if constexpr (std::is_same_v<D, double>) {
    return to_f64(v);
  } else if constexpr (std::is_same_v<D, float>) {
    return to_f32(v);
  } else if constexpr (is_complex_value<D>) {
    return Complex64{to_f32(v), 0.0f};
  } else {
    static_assert(is_narrow<D>::value);
    return static_cast<Raw<D>>(D::format::encode(to_f32(v)));  // via F32, as PyTorch
  }
}

// Calls f(T{}) with the element type of `dtype`; false for the sub-byte dtypes, which have none.
template <class F>
bool visit_element_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::BOOL: f(Bool8{}); return true;
    case DType::U8: f(uint8_t{}); return true;
    case DType::I8: f(int8_t{}); return true;
    case DType::I16: f(int16_t{}); return true;
    case DType::U16: f(uint16_t{}); return true;
    case DType::I32: f(int32_t{}); return true;
    case DType::U32: f(uint32_t{}); return true;
    case DType::I64: f(int64_t{}); return true;
    case DType::U64: f(uint64_t{}); return true;
    case DType::F16: f(F16T{}); return true;
    case DType::BF16: f(BF16T{}); return true;
    case DType::F32: f(float{}); return true;
    case DType::F64: f(double{}); return true;
    case DType::F8_E4M3: f(E4M3T{}); return true;
    case DType::F8_E5M2: f(E5M2T{}); return true;
    case DType::F8_E8M0: f(E8M0T{}); return true;
    case DType::F8_E4M3FNUZ: f(E4M3FnuzT{}); return true;
    case DType::F8_E5M2FNUZ: f(E5M2FnuzT{}); return true;
    case DType::C64: f(Complex64{}); return true;
    case DType::F4:
    case DType::F6_E2M3:
    case DType::F6_E3M2: return false;
  }
  return false;
}

}  // namespace d9d::numerics
