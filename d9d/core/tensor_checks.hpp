// Argument checks and layout helpers shared by the tensor code (private to core).
#pragma once

#include <cstdint>

#include <d9d/tensor.hpp>

namespace d9d::detail {

// Maps a possibly negative dim into [0, ndim); throws IndexError naming the op otherwise.
inline int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  D9D_CHECK_INDEX(dim >= -ndim && dim < ndim, op, ": dim ", dim, " is out of range for a tensor of ",
                  ndim, " dims (expected ", -ndim, "..", ndim - 1, ")");
  return dim < 0 ? dim + ndim : dim;
}

inline void check_defined(const Tensor& t, const char* op) {
  D9D_CHECK(t.defined(), op, ": the tensor is undefined");
}

// Element-wise work needs addressable elements.
inline void check_elements(DType dtype, const char* op) {
  D9D_CHECK_TYPE(!is_sub_byte(dtype), op, ": ", dtype, " is a packed ", dtype_bits(dtype),
                 "-bit dtype without addressable elements; it can only be stored, reshaped, copied "
                 "whole and written");
}

// Number of elements of `shape`, with every size checked non-negative and the product for overflow.
inline int64_t checked_numel(const Shape& shape, const char* op) {
  int64_t n = 1;
  for (int64_t s : shape) {
    D9D_CHECK(s >= 0, op, ": negative size in shape ", shape);
    D9D_CHECK(!__builtin_mul_overflow(n, s, &n), op, ": shape ", shape, " has more than 2^63 elements");
  }
  return n;
}

// Bytes of `numel` packed elements of `dtype`; throws if that is not a whole number of bytes.
inline int64_t packed_bytes(int64_t numel, DType dtype, const char* op) {
  int64_t bits = 0;
  D9D_CHECK(!__builtin_mul_overflow(numel, int64_t{dtype_bits(dtype)}, &bits), op, ": ", numel,
            " elements of ", dtype, " overflow int64 bytes");
  D9D_CHECK_TYPE(bits % 8 == 0, op, ": ", numel, " elements of the ", dtype_bits(dtype), "-bit dtype ",
                 dtype, " are not a whole number of bytes");
  return bits / 8;
}

using d9d::contiguous_strides;  // public in <d9d/dims.hpp>

// Whether the byte ranges spanned by the two views intersect (a conservative test).
inline bool may_overlap(const Tensor& a, const Tensor& b) {
  if (a.storage().data() != b.storage().data() || a.numel() == 0 || b.numel() == 0) return false;
  auto span = [](const Tensor& t) {
    int64_t last = 0;
    for (int64_t i = 0; i < t.dim(); ++i) last += (t.size(i) - 1) * t.stride(i);
    const int64_t begin = t.storage_offset();
    return std::pair<int64_t, int64_t>{begin, begin + (last + 1) * dtype_bits(t.dtype()) / 8};
  };
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(b);
  return a0 < b1 && b0 < a1;
}

}  // namespace d9d::detail
