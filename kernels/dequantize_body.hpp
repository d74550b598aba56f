// What one thread of the dequantize kernel does, for the device and the host (tests/kernels runs it
// on the CPU over every work item of a launch, and so does the emulated CUDA device).
//
// A work item is kDequantItem consecutive outputs of one row (the last of a row may be shorter).
// Each element is the numerics layer's rule for its format (<d9d/numerics/quantization.hpp>),
// computed directly: no tables here, so the CPU's table lookups (Note [dequantization tables] in
// d9d/core/dequantize.cpp) and this code are two ways to the same bytes, which
// tests/core/test_cuda_parity holds against each other. When every row is a whole number of items
// and the buffers are aligned (`vector`), an item's codes come in one load and its outputs go out
// in 16-byte stores.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <d9d/numerics/cast_rules.hpp>
#include <d9d/numerics/quantization.hpp>

#include "access.hpp"

namespace d9d::kernels {

using d9d::numerics::Raw;

inline constexpr int kDequantThreads = 256;
inline constexpr int64_t kDequantMaxBlocks = int64_t{1} << 16;
inline constexpr int kDequantItem = 8;  // outputs per work item

// Everything a launch needs, passed by value as the kernel's one argument.
struct DequantArgs {
  QuantFormat format = QuantFormat::kFp8Block;
  DType out_dtype = DType::BF16;
  GlobalScaleMode mode = GlobalScaleMode::kMultiply;
  numerics::DequantLayout layout;
  const std::byte* source = nullptr;    // FP8 codes, or bytes of two FP4 codes (low nibble first)
  const std::byte* scale = nullptr;     // F32 (fp8 formats), E8M0 codes (mxfp4), E4M3 (nvfp4)
  const float* global_scale = nullptr;  // nvfp4: one per layout.global_rows rows; null: 1
  std::byte* out = nullptr;
  int64_t items_per_row = 0;
  int64_t items = 0;
  bool vector = false;
};

inline DequantArgs dequant_args(QuantFormat format, const numerics::DequantLayout& layout,
                                const std::byte* source, const std::byte* scale,
                                const float* global_scale, GlobalScaleMode mode, std::byte* out,
                                DType out_dtype) {
  DequantArgs a;
  a.format = format;
  a.out_dtype = out_dtype;
  a.mode = mode;
  a.layout = layout;
  a.source = source;
  a.scale = scale;
  a.global_scale = global_scale;
  a.out = out;
  a.items_per_row = (layout.cols + kDequantItem - 1) / kDequantItem;
  a.items = layout.rows * a.items_per_row;
  const bool fp4 = format == QuantFormat::kMxfp4 || format == QuantFormat::kNvfp4;
  a.vector = layout.cols % kDequantItem == 0 &&
             reinterpret_cast<uintptr_t>(source) % (fp4 ? 4 : 8) == 0 &&
             reinterpret_cast<uintptr_t>(out) % 16 == 0;
  return a;
}

template <QuantFormat kFormat, class D, GlobalScaleMode kMode>
D9D_HOST_DEVICE void dequantize_item(const DequantArgs& a, int64_t item) {
  constexpr bool kFp4 = kFormat == QuantFormat::kMxfp4 || kFormat == QuantFormat::kNvfp4;
  const numerics::DequantLayout& l = a.layout;
  const int64_t r = item / a.items_per_row;
  const int64_t c0 = (item - r * a.items_per_row) * kDequantItem;
  const int64_t e0 = r * l.cols + c0;  // flat index of the first output
  const bool whole = a.vector;         // then every item has kDequantItem outputs
  const int n = whole ? kDequantItem
                      : static_cast<int>(l.cols - c0 < kDequantItem ? l.cols - c0 : kDequantItem);
  // The item's codes: FP8 bytes, or FP4 nibbles.
  uint32_t codes[kDequantItem];
  if constexpr (kFp4) {
    if (whole) {
      const uint32_t word = load_as<uint32_t>(a.source + e0 / 2);
      D9D_UNROLL
      for (int k = 0; k < kDequantItem; ++k) codes[k] = (word >> (4 * k)) & 0xFu;
    } else {
      for (int k = 0; k < n; ++k) {
        const int64_t e = e0 + k;
        codes[k] = (load_as<uint8_t>(a.source + e / 2) >> (4 * (e & 1))) & 0xFu;
      }
    }
  } else {
    if (whole) {
      const uint64_t word = load_as<uint64_t>(a.source + e0);
      D9D_UNROLL
      for (int k = 0; k < kDequantItem; ++k)
        codes[k] = static_cast<uint32_t>(word >> (8 * k)) & 0xFFu;
    } else {
      for (int k = 0; k < n; ++k) codes[k] = load_as<uint8_t>(a.source + e0 + k);
    }
  }
  float global = 1.0f;
  if constexpr (kFormat == QuantFormat::kNvfp4) {
    if (a.global_scale != nullptr) global = a.global_scale[numerics::global_index(l, r)];
  }
  alignas(16) Raw<D> out[kDequantItem];
  for (int k = 0; k < n; ++k) {
    const int64_t s = numerics::scale_index(l, r, c0 + k);
    float v;
    if constexpr (kFormat == QuantFormat::kMxfp4) {
      v = numerics::dequantize_mxfp4(codes[k], load_as<uint8_t>(a.scale + s));
    } else if constexpr (kFormat == QuantFormat::kNvfp4) {
      v = numerics::dequantize_nvfp4(
          codes[k], numerics::nvfp4_scale<kMode>(load_as<uint8_t>(a.scale + s), global));
    } else {
      v = numerics::dequantize_fp8(codes[k], load_as<float>(a.scale + s * 4));
    }
    out[k] = numerics::convert_value<D>(v);
  }
  std::byte* to = a.out + e0 * static_cast<int64_t>(sizeof(Raw<D>));
  if (whole) {
    D9D_UNROLL
    for (int j = 0; j < kDequantItem * static_cast<int>(sizeof(Raw<D>)) / 16; ++j) {
      move_word<16>(to + j * 16, reinterpret_cast<const std::byte*>(out) + j * 16);
    }
  } else {
    for (int k = 0; k < n; ++k)
      store_as<Raw<D>>(to + k * static_cast<int64_t>(sizeof(Raw<D>)), out[k]);
  }
}

// dequantize_item with the types the arguments name, for callers that hold only the arguments
// (the CPU test and the emulated device). fp8_channel runs fp8_block's code: the layout alone
// tells them apart.
inline void dequantize_item_any(const DequantArgs& a, int64_t item) {
  auto with_mode = [&](auto format, auto d) {
    if (a.mode == GlobalScaleMode::kDivide) {
      dequantize_item<decltype(format)::value, decltype(d), GlobalScaleMode::kDivide>(a, item);
    } else {
      dequantize_item<decltype(format)::value, decltype(d), GlobalScaleMode::kMultiply>(a, item);
    }
  };
  auto with_format = [&](auto d) {
    switch (a.format) {
      case QuantFormat::kFp8Block:
      case QuantFormat::kFp8Channel:
        with_mode(std::integral_constant<QuantFormat, QuantFormat::kFp8Block>{}, d);
        return;
      case QuantFormat::kMxfp4:
        with_mode(std::integral_constant<QuantFormat, QuantFormat::kMxfp4>{}, d);
        return;
      case QuantFormat::kNvfp4:
        with_mode(std::integral_constant<QuantFormat, QuantFormat::kNvfp4>{}, d);
        return;
    }
  };
  switch (a.out_dtype) {
    case DType::F16:
      with_format(numerics::F16T{});
      return;
    case DType::F32:
      with_format(float{});
      return;
    default:
      with_format(numerics::BF16T{});
      return;
  }
}

}  // namespace d9d::kernels
