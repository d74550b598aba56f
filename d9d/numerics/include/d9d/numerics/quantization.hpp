// Quantized weights as numbers: the formats, the FP4 E2M1 element, what one element of each format
// dequantizes to, and where its scale sits. Header-only; the CPU (d9d/core/dequantize.cpp) and the
// CUDA kernel (kernels/dequantize.cu) both use these rules, so they give the same bytes.
//
// The formats, as their own code defines them (the sources are named in tests/core/quant_oracle.py,
// which checks every rule here against numpy + ml_dtypes):
//
//   fp8_block    DeepSeek-V3 / Qwen3-FP8 (transformers' finegrained_fp8): W F8_E4M3 [..., R, C],
//                scale ("weight_scale_inv", the dequantization multiplier despite its name) a float
//                [..., ceil(R/br), ceil(C/bc)]; W[i, j] * s[i / br, j / bc]. Edge blocks are
//                partial (DeepSeek's weight_dequant masks them).
//   fp8_channel  compressed-tensors: W F8_E4M3 [..., R, C], scale [..., R, 1] (one per output
//                channel) or one element ([] or [1]: per tensor); W[i, j] * s[i]. The scale is in
//                the model's dtype (BF16, F16 or F32).
//   mxfp4        OCP MX (gpt-oss, compressed-tensors mxfp4-pack-quantized): two E2M1 codes a byte,
//                element 2k in the low nibble; one E8M0 scale (2^(code - 127), 0xFF = NaN) per 32
//                elements. gpt-oss stores "_blocks" U8 [..., G, 16] and "_scales" U8 [..., G]
//                (output [..., G * 32]); compressed-tensors U8 [..., K] and [..., ceil(2K / 32)]
//                (output [..., 2K]).
//   nvfp4        NVIDIA ModelOpt and compressed-tensors: U8 [..., K] of E2M1 pairs (low nibble
//                first), an F8_E4M3 scale per 16 elements [..., ceil(2K / 16)], and an F32 global
//                scale that ModelOpt multiplies ("weight_scale_2") and compressed-tensors divides
//                by
//                ("weight_global_scale"). Both first combine the two scales, then multiply:
//                fp4 * (f32(s) * g) (ModelOpt NVFP4QTensor.dequantize) or fp4 * (f32(s) / g)
//                (compressed-tensors _dequantize: scale = scale / global_scale, then x_q * scale).
//
// Note [dequantization arithmetic]: every element is computed in F32, in the order the format's own
// code computes it, then rounded once to the output dtype (round to nearest even, cast_rules.hpp).
// A NaN result is the canonical quiet NaN 0x7FC00000 before rounding: x86 and CUDA make different
// NaN bits for the same operation (0 * inf is negative on x86, 0x7FFFFFFF on a GPU), and the
// output must be the same bytes on both.
#pragma once

#include <cstdint>
#include <string_view>

#include <d9d/numerics/float_formats.hpp>

namespace d9d {

enum class QuantFormat : uint8_t { kFp8Block, kFp8Channel, kMxfp4, kNvfp4 };
inline constexpr int kNumQuantFormats = 4;

// How an nvfp4 global scale combines with the block scale.
enum class GlobalScaleMode : uint8_t {
  kMultiply,  // ModelOpt "weight_scale_2"
  kDivide,    // compressed-tensors "weight_global_scale"
};

namespace numerics {

// As a spec's "format" spells it.
constexpr std::string_view quant_format_name(QuantFormat format) {
  switch (format) {
    case QuantFormat::kFp8Block:
      return "fp8_block";
    case QuantFormat::kFp8Channel:
      return "fp8_channel";
    case QuantFormat::kMxfp4:
      return "mxfp4";
    case QuantFormat::kNvfp4:
      return "nvfp4";
  }
  return "?";
}

// FP4 E2M1 (float4_e2m1fn, the layout kF4Layout): sign, 2 exponent bits (bias 1), 1 mantissa bit;
// every code finite: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (-0 included). Twice the
// magnitude is a whole number 0..12: the eight of them sit in the nibbles of one constant.
struct E2M1Format {
  static constexpr FloatLayout kLayout = kF4Layout;
  static D9D_HOST_DEVICE float decode(uint32_t code) {
    constexpr uint32_t kTwiceMagnitudes = 0xC8643210u;  // 12 8 6 4 3 2 1 0, code 7 first
    const float magnitude =
        static_cast<float>((kTwiceMagnitudes >> ((code & 7u) * 4u)) & 0xFu) * 0.5f;
    return f32_from_bits(f32_bits(magnitude) | ((code & 8u) << 28));
  }
};

// The canonical NaN for any NaN (Note [dequantization arithmetic]).
D9D_HOST_DEVICE float canonical_nan(float x) {
  return x != x ? f32_from_bits(0x7FC00000u) : x;
}

// A decoded element times its scale: the last step of every format.
D9D_HOST_DEVICE float scaled(float value, float scale) {
  return canonical_nan(value * scale);
}

// One element of each format, in F32 (Note [dequantization arithmetic]). `scale` is the F32 value
// of a float scale; E8M0 and E4M3 scales come as their codes.
D9D_HOST_DEVICE float dequantize_fp8(uint32_t code, float scale) {
  return scaled(E4M3Format::decode(code), scale);
}
D9D_HOST_DEVICE float dequantize_mxfp4(uint32_t nibble, uint32_t scale_code) {
  return scaled(E2M1Format::decode(nibble), E8M0Format::decode(scale_code));
}
// The nvfp4 block scale combined with the global one (1 when there is none, with kMultiply).
template <GlobalScaleMode kMode>
D9D_HOST_DEVICE float nvfp4_scale(uint32_t scale_code, float global_scale) {
  const float s = E4M3Format::decode(scale_code);
  if constexpr (kMode == GlobalScaleMode::kMultiply)
    return s * global_scale;
  else
    return s / global_scale;
}
D9D_HOST_DEVICE float dequantize_nvfp4(uint32_t nibble, float combined_scale) {
  return scaled(E2M1Format::decode(nibble), combined_scale);
}

// Where the scales of a dequantization sit, for the output seen as [rows, cols] (cols: its last
// dim). The rows come in matrices of matrix_rows; each matrix has scale_rows x scale_cols scales,
// each covering block_rows x block_cols outputs (the last ones partial). Per format:
//   fp8_block    matrix_rows R, blocks br x bc
//   fp8_channel  matrix_rows 1, one block of 1 x cols (per tensor: one block of rows x cols)
//   mxfp4/nvfp4  matrix_rows 1, blocks of 1 x 32 / 1 x 16
// global_rows: the rows one global scale covers (nvfp4: every row, or one matrix of W's last two
// dims); 0 when there is none.
struct DequantLayout {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t matrix_rows = 1;
  int64_t block_rows = 1;
  int64_t block_cols = 1;
  int64_t scale_rows = 1;  // per matrix: ceil(matrix_rows / block_rows)
  int64_t scale_cols = 1;  // ceil(cols / block_cols)
  int64_t global_rows = 0;
};

// The scale of output (r, c), as an index into the packed scale tensor.
D9D_HOST_DEVICE int64_t scale_index(const DequantLayout& l, int64_t r, int64_t c) {
  const int64_t matrix = r / l.matrix_rows;
  const int64_t row_block = (r - matrix * l.matrix_rows) / l.block_rows;
  return (matrix * l.scale_rows + row_block) * l.scale_cols + c / l.block_cols;
}

// The global scale of row r (layout.global_rows > 0).
D9D_HOST_DEVICE int64_t global_index(const DequantLayout& l, int64_t r) {
  return r / l.global_rows;
}

}  // namespace numerics
}  // namespace d9d
