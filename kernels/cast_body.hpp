// What one thread of the cast kernel does, for the device and the host (tests/kernels runs it on
// the CPU over every work item of a launch).
//
// Note [vectorized cast]: when the source is 16-byte aligned and the destination aligned to its
// output word, a work item is kCastVector<S> elements: one 16-byte load, the conversions in
// registers, then stores of up to 16 bytes. The last item takes whatever is left, one element at a
// time. Otherwise (a misaligned view) a work item is one element.
#pragma once

#include <cstddef>
#include <cstdint>

#include <d9d/numerics/cast_rules.hpp>

#include "access.hpp"

namespace d9d::kernels {

using d9d::numerics::Raw;

// The launch: blocks of kCastThreads threads, at most kCastMaxBlocks of them; each thread strides
// over the work items by the grid's size.
inline constexpr int kCastThreads = 256;
inline constexpr int64_t kCastMaxBlocks = int64_t{1} << 16;

template <class S>
inline constexpr int kCastVector = static_cast<int>(16 / sizeof(Raw<S>));

// Bytes of one store of the vector path: the item's outputs, at most 16.
template <class D, class S>
inline constexpr int kCastOutWord = kCastVector<S> * sizeof(Raw<D>) < 16
                                        ? static_cast<int>(kCastVector<S> * sizeof(Raw<D>))
                                        : 16;

template <class D, class S>
D9D_HOST_DEVICE void cast_element(const std::byte* src, std::byte* dst, int64_t i) {
  const Raw<S> in = load_as<Raw<S>>(src + i * static_cast<int64_t>(sizeof(Raw<S>)));
  store_as<Raw<D>>(dst + i * static_cast<int64_t>(sizeof(Raw<D>)),
                   d9d::numerics::convert_value<D>(d9d::numerics::value_of<S>(in)));
}

// Whether the vector path applies to these addresses.
template <class D, class S>
bool cast_vectorizable(const std::byte* src, const std::byte* dst) {
  return reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(dst) % kCastOutWord<D, S> == 0;
}

template <class D, class S>
int64_t cast_items(int64_t count, bool vector) {
  return vector ? (count + kCastVector<S> - 1) / kCastVector<S> : count;
}

template <class D, class S>
D9D_HOST_DEVICE void cast_item(const std::byte* src, std::byte* dst, int64_t count, int64_t item,
                               bool vector) {
  if (!vector) {
    cast_element<D, S>(src, dst, item);
    return;
  }
  constexpr int V = kCastVector<S>;
  constexpr int W = kCastOutWord<D, S>;
  const int64_t first = item * V;
  if (first + V > count) {  // the last item
    for (int64_t i = first; i < count; ++i) cast_element<D, S>(src, dst, i);
    return;
  }
  alignas(16) Raw<S> in[V];
  alignas(16) Raw<D> out[V];
  move_word<16>(reinterpret_cast<std::byte*>(in),
                src + first * static_cast<int64_t>(sizeof(Raw<S>)));
  D9D_UNROLL
  for (int k = 0; k < V; ++k) {
    out[k] = d9d::numerics::convert_value<D>(d9d::numerics::value_of<S>(in[k]));
  }
  std::byte* to = dst + first * static_cast<int64_t>(sizeof(Raw<D>));
  D9D_UNROLL
  for (int j = 0; j < V * static_cast<int>(sizeof(Raw<D>)) / W; ++j) {
    move_word<W>(to + j * W, reinterpret_cast<const std::byte*>(out) + j * W);
  }
}

}  // namespace d9d::kernels
