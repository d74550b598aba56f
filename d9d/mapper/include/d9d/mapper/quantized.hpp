// Quantized weights in mappers: dequantize, scales that follow their weights, and the checks that
// keep a weight and its scale together.
//
// The formats and their tensors are core's (<d9d/quantization.hpp>,
// <d9d/numerics/quantization.hpp>).
//
// Note [scales follow their weights]: a quantized weight is a pair (or, for nvfp4 with a global
// scale, a triple) of tensors, and every conversion must keep them together: a scale left behind
// makes the weight ~200x too large, an FP8 weight read without its scale is silently wrong, and a
// fused weight whose scale was not fused the same way is wrong where the parts meet. So a weight
// and its scales never move in separate groups. One declaration says they travel together, a
// QuantScheme (in a spec, its "quantization" block, spec.hpp): its naming (a weight key ending in
// `weight_suffix` has its scale at the same key with `scale_suffix` instead) and its format. Every
// rule that moves a quantized weight then moves its scales the derived way, in the same group
// (quantized(weight mapper, scheme)):
//   identity, rename_tensor   the same on the scales
//   stack_tensors             the scales stacked the same way; nvfp4 per-tensor global scales of
//                             2-D weights stacked at dim 0 become one per matrix [E]
//   concatenate_tensors       the scales concatenated along the matching dim; along a blocked dim
//                             (fp8_block rows or columns, FP4 packed columns) every part but the
//                             last must be a whole number of blocks, or a fused block would mix
//                             two tensors under one scale
//   unstack_, chunk_, split_tensors   the same on the scales where the pieces are whole blocks;
//                             a per-tensor scale (and an fp8_channel scale, split along the
//                             columns) is copied to every piece
//   transpose                 of leading dims: the same on the scales; of fp8_block's last two
//                             dims: the scales transposed too, with a square block
// Anything else (a cast, reshape, permute, a join of per-tensor scales, which could differ) is an
// error before any byte is read, naming the weight and its scale: dequantize first. The inverse is
// the weight mapper's inverse with the scales following it again, so a fused packed layout goes
// back bit-exactly. dequantize() consumes a weight and its scales in one group and has no inverse
// (d9d does not quantize).
//
// For mappers built otherwise, find_quantized_pairs() recognizes a checkpoint's pairs by names and
// dtypes (and config.json's quantization_config), and check_quantized_pairs() refuses a mapper
// that reads a weight without its scale, keeps a scale without its weight, or renames or
// transforms the two apart.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/mapper/mapper.hpp>
#include <d9d/quantization.hpp>

namespace d9d::mapper {

// How the tensors of one quantized weight are named: the weight's key ends in `weight_suffix`
// (".weight", "_blocks", ".weight_packed"); its scale is the key with `scale_suffix` in its place
// (".weight_scale_inv", "_scales", ".weight_scale"), its global scale (nvfp4; empty: none) with
// `global_scale_suffix`.
struct QuantNames {
  std::string weight_suffix;
  std::string scale_suffix;
  std::string global_scale_suffix;

  bool is_weight(std::string_view key) const;
  // The scale / global scale of the weight `key` (is_weight(key)).
  std::string scale_of(std::string_view key) const;
  std::string global_scale_of(std::string_view key) const;
};

// A quantization as a whole checkpoint uses it: the format (with fp8_block's block) and the names.
struct QuantScheme {
  QuantFormat format = QuantFormat::kFp8Block;
  int64_t block_rows = 128;
  int64_t block_cols = 128;
  QuantNames names;
};

// ---- factories ----------------------------------------------------------------------------------

// {source, scale[, global_scale]} -> {target}: the floats the quantized weight stands for
// (d9d::dequantize). global_scale empty: none. No inverse.
MapperPtr dequantize(std::string source, std::string scale, std::string target, Dequantization how,
                     std::string global_scale = {});
// `weights` (identity, rename_tensor, transpose, stack_tensors, concatenate_tensors,
// unstack_tensors, chunk_tensors, split_tensors, or stack_experts / unstack_experts of whole
// experts (one part each), of weights named as scheme.names says) with
// their scales following them in the same group (Note [scales follow their weights]).
MapperPtr quantized(MapperPtr weights, QuantScheme scheme);

// ---- classes ------------------------------------------------------------------------------------

class DequantizeMapper final : public ModelStateMapper {
 public:
  DequantizeMapper(std::string source, std::string scale, std::string global_scale,
                   std::string target, Dequantization how);
  StateDict apply(StateDict group) const override;
  SpecDict infer(const SpecDict& group) const override;
  // Rows (the first dim) carried to the weight's and the scale's rows: whole scale blocks for
  // fp8_block, the global scale whole; the other dims read whole (Note [slice pushdown]).
  RegionDict input_regions(const SpecDict& inputs, const RegionDict& wanted,
                           std::vector<std::string>* whole) const override;
  std::string describe() const override;

 protected:
  // Throws NotInvertibleError: dequantizing loses the packed codes and scales.
  MapperPtr do_inverse(const SpecDict& input_specs) const override;

 private:
  std::string source_, scale_, global_scale_, target_;
  Dequantization how_;
};

class QuantizedMapper final : public ModelStateMapper {
 public:
  // What an inverse knows of the op it undoes: the shape of a per-tensor global scale an unstack
  // makes ([] by default; compressed-tensors' are [1]), and whether the op copied the scales (or
  // the global scales) to every piece, so that joining the pieces takes one copy (checked equal
  // when the data comes) where a join would otherwise be refused.
  struct Undo {
    Shape global_piece_shape;
    bool scales_copied = false;
    bool global_scales_copied = false;
  };
  // Throws ValueError when `weights` is not an op the scales can follow, or one of its keys is not
  // a weight of scheme.names.
  QuantizedMapper(MapperPtr weights, QuantScheme scheme);
  QuantizedMapper(MapperPtr weights, QuantScheme scheme, Undo undo);
  StateDict apply(StateDict group) const override;
  SpecDict infer(const SpecDict& group) const override;
  std::string describe() const override;
  const MapperPtr& weights() const { return weights_; }
  const QuantScheme& scheme() const { return scheme_; }

 protected:
  // The weights' inverse, the scales following it; needs the input specs (as the weights'
  // inverse may).
  MapperPtr do_inverse(const SpecDict& input_specs) const override;

 private:
  struct Move;  // what the weight mapper does, as the scales see it (quantized.cpp)
  struct Plan;  // the scales' op and every output spec, for given input specs
  Plan plan(const SpecDict& inputs) const;

  MapperPtr weights_;
  QuantScheme scheme_;
  Undo undo_;
  std::shared_ptr<const Move> move_;
};

// ---- recognizing quantized weights in a checkpoint ----------------------------------------------

// What config.json's "quantization_config" says, as far as d9d needs it.
struct QuantizationConfig {
  std::string quant_method;  // "fp8", "compressed-tensors", "modelopt", "mxfp4", ...
  // fp8_block's block: "weight_block_size" (transformers, DeepSeek), or a compressed-tensors
  // group's "block_structure".
  std::optional<std::array<int64_t, 2>> block;
};

// The "quantization_config" of a config.json's text; nullopt when it has none. Throws ValueError
// (naming `origin`) for text that is not JSON or a quantization_config that is not an object.
std::optional<QuantizationConfig> parse_quantization_config(std::string_view config_json,
                                                            std::string_view origin);

// A quantized weight found in a checkpoint.
struct QuantizedPair {
  QuantFormat format = QuantFormat::kFp8Block;
  std::string weight;
  std::string scale;
  std::string global_scale;  // empty: none
  int64_t block_rows = 128;  // fp8_block
  int64_t block_cols = 128;
  std::optional<GlobalScaleMode> global_scale_mode;  // from the naming convention
  Shape logical_shape;  // of the dequantized weight (when the shapes fit)
  std::string misfit;   // why the shapes do not fit; empty when they do
};

// The quantized weights among `specs`, by names and dtypes, in key order:
//   F8_E4M3 "X" + "X_scale_inv" (DeepSeek, transformers' fp8; "X_scales_inv" for its experts)
//     fp8_block;
//   F8_E4M3 "X" + "X_scale" (compressed-tensors): fp8_channel when the scale is [..., R, 1] or one
//     element, else fp8_block;
//   U8 "X_blocks" + "X_scales" (gpt-oss): mxfp4;
//   U8 "X.weight_packed" + "X.weight_scale": nvfp4 with an F8_E4M3 scale (global scale
//     "X.weight_global_scale", divide), mxfp4 with a U8 or F8_E8M0 one (compressed-tensors);
//   U8 "X.weight" + F8_E4M3 "X.weight_scale" (+ "X.weight_scale_2", multiply): nvfp4 (ModelOpt).
// fp8_block's block is the config's, else 128 x 128. A pair whose shapes do not fit is returned
// with `misfit` saying why.
std::vector<QuantizedPair> find_quantized_pairs(const SpecDict& specs,
                                                const std::optional<QuantizationConfig>& config);

// Throws ValueError naming both tensors for the first pair `mapper` splits: it reads a weight
// without its scale (or global scale) in the same group, or a scale without its weight, or moves
// them in separate groups other than by passing both through unchanged; and for a pair whose
// shapes do not fit (`misfit`), unless the mapper leaves it unread. Pairs the mapper drops whole
// are fine.
void check_quantized_pairs(const ModelStateMapper& mapper, const std::vector<QuantizedPair>& pairs);

}  // namespace d9d::mapper
