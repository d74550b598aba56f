// Loads and stores of device memory, written once for the device and the host: the kernel bodies
// (copy_body.hpp, cast_body.hpp) run on the GPU and, in tests/kernels, on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include <d9d/numerics/host_device.hpp>

// `#pragma unroll` for the device pass only (the host compiler does not know it).
#if defined(__CUDA_ARCH__)
#define D9D_UNROLL _Pragma("unroll")
#else
#define D9D_UNROLL
#endif

namespace d9d::kernels {

// A T at `p` (aligned to T): one load instruction on the device; memcpy on the host, where the
// bytes were not written as a T.
template <class T>
D9D_HOST_DEVICE T load_as(const std::byte* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const T*>(p);
#else
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
#endif
}

template <class T>
D9D_HOST_DEVICE void store_as(std::byte* p, T v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<T*>(p) = v;
#else
  std::memcpy(p, &v, sizeof(T));
#endif
}

// The type one load or store of W bytes moves.
template <int W>
struct WordOf;
#if defined(__CUDACC__)
template <>
struct WordOf<16> {
  using type = uint4;
};
#else
template <>
struct WordOf<16> {
  struct alignas(16) type {
    uint64_t lo, hi;
  };
};
#endif
template <>
struct WordOf<8> {
  using type = uint64_t;
};
template <>
struct WordOf<4> {
  using type = uint32_t;
};
template <>
struct WordOf<2> {
  using type = uint16_t;
};
template <>
struct WordOf<1> {
  using type = uint8_t;
};

template <int W>
using Word = typename WordOf<W>::type;

// Moves W bytes (both addresses aligned to W) with one load and one store.
template <int W>
D9D_HOST_DEVICE void move_word(std::byte* dst, const std::byte* src) {
  store_as<Word<W>>(dst, load_as<Word<W>>(src));
}

}  // namespace d9d::kernels
