// Quantized weights: a packed weight with its scales, made back into floats.
//
// The formats (fp8_block, fp8_channel, mxfp4, nvfp4), what their tensors hold and the arithmetic of
// one element are the numerics layer's (<d9d/numerics/quantization.hpp>). Here: the rules the
// tensors' dtypes and shapes must follow, and dequantize() on CPU and CUDA tensors.
//
// The rules (each broken rule is an error that names the input by its role and says the rule):
//   fp8_block    source F8_E4M3 [..., R, C]; scale F32, BF16 or F16 [..., ceil(R/br), ceil(C/bc)]
//   fp8_channel  source F8_E4M3 [..., R, C]; scale F32, BF16 or F16 [..., R, 1], or one element
//                of shape [] or [1] (per tensor; then the source may have any shape)
//   mxfp4        source U8 [..., G, 16] and scale U8 or F8_E8M0 [..., G] (gpt-oss): output
//                [..., G * 32]; or source U8 [..., K] and scale [..., ceil(2K / 32)]: output
//                [..., 2K]
//   nvfp4        source U8 [..., K], scale F8_E4M3 [..., ceil(2K / 16)]: output [..., 2K];
//                optionally a global scale F32, BF16 or F16, of shape [] or [1] (one for the
//                tensor) or of the source's leading dims [...] without its last two (one per
//                matrix), with its mode (multiply or divide), which is required
// The output dtype is BF16, F16 or F32. Only nvfp4 takes a global scale.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <d9d/dims.hpp>
#include <d9d/dtype.hpp>
#include <d9d/numerics/quantization.hpp>
#include <d9d/tensor.hpp>

namespace d9d {

std::string_view quant_format_name(QuantFormat format);
// "fp8_block", ...; nullopt if unknown.
std::optional<QuantFormat> quant_format_from_name(std::string_view name);
// "multiply" / "divide".
std::string_view global_scale_mode_name(GlobalScaleMode mode);
std::optional<GlobalScaleMode> global_scale_mode_from_name(std::string_view name);

// What dequantize() does.
struct Dequantization {
  QuantFormat format = QuantFormat::kFp8Block;
  DType dtype = DType::BF16;  // of the output: BF16, F16 or F32
  int64_t block_rows = 128;   // fp8_block's block (quantization_config.weight_block_size)
  int64_t block_cols = 128;
  // nvfp4 with a global scale: how it applies (required then; never guessed).
  std::optional<GlobalScaleMode> global_scale_mode;
};

// The dtype and shape of one input of a dequantization, before its bytes exist.
struct QuantizedInput {
  DType dtype = DType::U8;
  Shape shape;
};

// The shape of dequantize()'s output for inputs of these dtypes and shapes. Throws TypeError (a
// dtype) or ValueError (a shape, the block, a missing or unexpected global scale), naming the
// input by its role ("the scale") and the rule with the numbers.
Shape dequantized_shape(const Dequantization& how, const QuantizedInput& source,
                        const QuantizedInput& scale,
                        const std::optional<QuantizedInput>& global_scale = std::nullopt);

// The floats `source` and `scale` (and `global_scale`, an undefined Tensor when there is none)
// stand for, as a new contiguous tensor of how.dtype on their device (all inputs on one device;
// any strides). Bit-exact: each element as <d9d/numerics/quantization.hpp> computes it.
Tensor dequantize(const Tensor& source, const Tensor& scale, const Dequantization& how,
                  const Tensor& global_scale = Tensor());

}  // namespace d9d
