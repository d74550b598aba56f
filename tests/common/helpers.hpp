// Test helpers shared by the C++ tests (core only): random tensors and shapes, and an
// index-by-index reference for strided layouts. Included as "common/helpers.hpp" (tests/meson.build
// puts tests/ on the include path); files.hpp and model_state.hpp hold the helpers of upper layers.
#pragma once

#include <cstring>
#include <random>
#include <vector>

#include <d9d/core.hpp>

namespace d9d::test {

// One generator per test program, from a fixed seed: a failure reproduces.
inline std::mt19937_64& rng() {
  static std::mt19937_64 gen(20261128);
  return gen;
}

inline int64_t randint(int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng());
}

// A contiguous tensor of random bytes (never zeros: every byte is drawn).
inline Tensor random_tensor(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<unsigned char*>(t.mutable_data_ptr());
  for (int64_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(rng()());
  return t;
}

// Random bytes from their own seed: the same tensor for the same seed, whatever ran before (and on
// every rank of a distributed test).
inline Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937_64 gen(seed);
  auto* p = static_cast<unsigned char*>(t.mutable_data_ptr());
  for (int64_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(gen());
  return t;
}

// 1 to max_dims dims, each of 1 to max_size.
inline Shape random_shape(int64_t max_dims, int64_t max_size) {
  Shape s;
  const int64_t n = randint(1, max_dims);
  for (int64_t i = 0; i < n; ++i) s.push_back(randint(1, max_size));
  return s;
}

// The bytes of `t` in row-major order, gathered one element at a time from its strides: an
// oracle that shares no code with the copy engine.
inline std::vector<unsigned char> reference_bytes(const Tensor& t) {
  const int64_t esize = t.element_size();
  std::vector<unsigned char> out(static_cast<size_t>(t.numel() * esize));
  if (t.numel() == 0) return out;
  const auto* base = static_cast<const unsigned char*>(t.data_ptr());
  std::vector<int64_t> idx(static_cast<size_t>(t.dim()), 0);
  for (int64_t e = 0; e < t.numel(); ++e) {
    int64_t off = 0;
    for (int64_t d = 0; d < t.dim(); ++d) off += idx[static_cast<size_t>(d)] * t.stride(d);
    std::memcpy(out.data() + e * esize, base + off * esize, static_cast<size_t>(esize));
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      if (++idx[static_cast<size_t>(d)] < t.size(d)) break;
      idx[static_cast<size_t>(d)] = 0;
    }
  }
  return out;
}

inline std::vector<unsigned char> packed_bytes(const Tensor& t) {
  const Tensor c = t.contiguous();
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  return {p, p + c.nbytes()};
}

}  // namespace d9d::test
