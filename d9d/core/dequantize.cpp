// dequantize(): the rules of <d9d/quantization.hpp> and the CPU loops; CUDA tensors go to
// kernels/dequantize.cu through cuda_runtime.
//
// Note [dequantization tables]: on the CPU an output element is a table lookup. Its value depends
// only on its code and its scale (Note [dequantization arithmetic]), so for one scale the 256 FP8
// codes (or, for FP4, the 16 nibbles under each of the 256 scale codes) are computed once with the
// numerics layer's element rule and the loop over the weight just looks them up: one load and one
// store per element, whatever the format's arithmetic, and bit-exact because each table entry is
// the rule itself. An fp8 table serves a whole block (128 x 128 elements: 256 entries), a row
// (fp8_channel) or the tensor; the FP4 tables (4,096 entries) serve the tensor, or one matrix when
// an nvfp4 global scale is per matrix. One loop per element kind (FP8 byte, FP4 nibble pair), so
// nothing in it branches on the format.
#include <d9d/quantization.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <sstream>
#include <vector>

#include <d9d/error.hpp>
#include <d9d/numerics/cast_rules.hpp>

#include "cuda_runtime.hpp"
#include "parallel.hpp"

namespace d9d {

namespace {

using detail::str_cat;
using numerics::DequantLayout;
using numerics::Raw;

int64_t ceil_div(int64_t a, int64_t b) {
  return a == 0 ? 0 : (a - 1) / b + 1;
}

bool is_wide_float(DType d) {
  return d == DType::F32 || d == DType::BF16 || d == DType::F16;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << shape;
  return out.str();
}

// "F8_E4M3[300, 500]".
std::string input_str(const QuantizedInput& in) {
  return str_cat(in.dtype, shape_str(in.shape));
}

Shape leading(const Shape& shape, size_t drop) {
  Shape out;
  for (size_t i = 0; i + drop < shape.size(); ++i) out.push_back(shape[i]);
  return out;
}

struct Plan {
  Shape shape;  // of the output
  DequantLayout layout;
};

// One rule of the header, checked; `what` prefixes every message.
class Rules {
 public:
  Rules(const Dequantization& how, const QuantizedInput& source, const QuantizedInput& scale)
      : how_(how),
        source_(source),
        scale_(scale),
        what_(str_cat("dequantize ", quant_format_name(how.format), ": ")) {}

  void source_dtype(DType want) const {
    D9D_CHECK_TYPE(source_.dtype == want, what_, "the source is ", input_str(source_),
                   ": expected ", want);
  }
  void source_ndim(size_t at_least) const {
    D9D_CHECK(source_.shape.size() >= at_least, what_, "the source is ", input_str(source_),
              ": expected at least ", at_least, " dims");
  }
  void scale_dtype(bool ok, const char* want) const {
    D9D_CHECK_TYPE(ok, what_, "the scale is ", input_str(scale_), ": expected ", want);
  }
  // The scale's shape must be `want` (computed from the source by `rule`).
  void scale_shape(const Shape& want, const std::string& rule) const {
    D9D_CHECK(scale_.shape == want, what_, "the scale ", input_str(scale_),
              " does not fit the source ", input_str(source_), ": expected ", shape_str(want), " (",
              rule, ")");
  }
  const std::string& what() const { return what_; }

 private:
  const Dequantization& how_;
  const QuantizedInput& source_;
  const QuantizedInput& scale_;
  std::string what_;
};

Plan plan_dequantize(const Dequantization& how, const QuantizedInput& source,
                     const QuantizedInput& scale, const std::optional<QuantizedInput>& global) {
  const Rules rules(how, source, scale);
  const std::string& what = rules.what();
  D9D_CHECK_TYPE(how.dtype == DType::BF16 || how.dtype == DType::F16 || how.dtype == DType::F32,
                 what, "the output dtype ", how.dtype, ": expected BF16, F16 or F32");
  const bool nvfp4 = how.format == QuantFormat::kNvfp4;
  D9D_CHECK(nvfp4 || !global, what, "only nvfp4 takes a global scale (got ", input_str(*global),
            ")");
  D9D_CHECK(nvfp4 || !how.global_scale_mode, what, "a global scale mode without nvfp4");
  D9D_CHECK(!global || how.global_scale_mode, what,
            "the global scale needs its mode, \"multiply\" (ModelOpt's weight_scale_2) or "
            "\"divide\" (compressed-tensors' weight_global_scale): the two conventions are "
            "never guessed");
  D9D_CHECK(global || !how.global_scale_mode, what, "a global scale mode but no global scale");
  const Shape& s = source.shape;
  const size_t n = s.size();
  Plan p;
  DequantLayout& l = p.layout;
  switch (how.format) {
    case QuantFormat::kFp8Block: {
      rules.source_dtype(DType::F8_E4M3);
      rules.source_ndim(2);
      rules.scale_dtype(is_wide_float(scale.dtype), "F32, BF16 or F16");
      D9D_CHECK(how.block_rows >= 1 && how.block_cols >= 1, what, "invalid block [", how.block_rows,
                ", ", how.block_cols, "]");
      const int64_t r = s[n - 2], c = s[n - 1];
      Shape want = leading(s, 2);
      want.push_back(ceil_div(r, how.block_rows));
      want.push_back(ceil_div(c, how.block_cols));
      rules.scale_shape(want, str_cat("ceil of the source's last two dims by the block [",
                                      how.block_rows, ", ", how.block_cols, "]"));
      p.shape = s;
      l.cols = c;
      l.matrix_rows = std::max<int64_t>(r, 1);
      l.block_rows = how.block_rows;
      l.block_cols = how.block_cols;
      l.scale_rows = want[n - 2];
      l.scale_cols = want[n - 1];
      break;
    }
    case QuantFormat::kFp8Channel: {
      rules.source_dtype(DType::F8_E4M3);
      rules.scale_dtype(is_wide_float(scale.dtype), "F32, BF16 or F16");
      p.shape = s;
      l.cols = n == 0 ? 1 : s[n - 1];
      if (scale.shape.size() <= 1 && numel_of(scale.shape) == 1) {  // per tensor
        const int64_t rows = l.cols == 0 ? 0 : numel_of(s) / l.cols;
        l.matrix_rows = l.block_rows = std::max<int64_t>(rows, 1);
        l.block_cols = std::max<int64_t>(l.cols, 1);
        break;
      }
      rules.source_ndim(2);
      Shape want = leading(s, 1);
      want.push_back(1);
      rules.scale_shape(want,
                        "the source's shape with its last dim 1 (per channel), or [] or [1] "
                        "(per tensor)");
      l.block_cols = std::max<int64_t>(l.cols, 1);
      break;
    }
    case QuantFormat::kMxfp4: {
      rules.source_dtype(DType::U8);
      rules.source_ndim(1);
      rules.scale_dtype(scale.dtype == DType::U8 || scale.dtype == DType::F8_E8M0,
                        "U8 or F8_E8M0 (E8M0 exponents)");
      l.block_cols = 32;
      if (n >= 2 && s[n - 1] == 16 && scale.shape.size() == n - 1) {  // gpt-oss [..., G, 16]
        rules.scale_shape(leading(s, 1), "the source's shape without its last dim of 16 bytes");
        p.shape = leading(s, 2);
        p.shape.push_back(s[n - 2] * 32);
        l.cols = s[n - 2] * 32;
        l.scale_cols = s[n - 2];
        break;
      }
      Shape want = leading(s, 1);
      want.push_back(ceil_div(2 * s[n - 1], 32));
      rules.scale_shape(want,
                        "one scale per 32 elements of the source's last dim of 2 FP4 "
                        "codes a byte; gpt-oss's blocks are [..., G, 16] with scales "
                        "[..., G]");
      p.shape = leading(s, 1);
      p.shape.push_back(2 * s[n - 1]);
      l.cols = 2 * s[n - 1];
      l.scale_cols = want[n - 1];
      break;
    }
    case QuantFormat::kNvfp4: {
      rules.source_dtype(DType::U8);
      rules.source_ndim(1);
      rules.scale_dtype(scale.dtype == DType::F8_E4M3, "F8_E4M3");
      Shape want = leading(s, 1);
      want.push_back(ceil_div(2 * s[n - 1], 16));
      rules.scale_shape(want,
                        "one scale per 16 elements of the source's last dim of 2 FP4 "
                        "codes a byte");
      p.shape = leading(s, 1);
      p.shape.push_back(2 * s[n - 1]);
      l.cols = 2 * s[n - 1];
      l.block_cols = 16;
      l.scale_cols = want[n - 1];
      if (global) {
        D9D_CHECK_TYPE(is_wide_float(global->dtype), what, "the global scale is ",
                       input_str(*global), ": expected F32, BF16 or F16");
        const bool per_tensor = global->shape.size() <= 1 && numel_of(global->shape) == 1;
        const bool per_matrix = n >= 3 && global->shape == leading(s, 2);
        D9D_CHECK(per_tensor || per_matrix, what, "the global scale ", input_str(*global),
                  " does not fit the source ", input_str(source),
                  ": expected [] or [1] (one for the tensor)",
                  n >= 3 ? str_cat(" or ", shape_str(leading(s, 2)), " (one per matrix)") : "");
        const int64_t rows = l.cols == 0 ? 0 : numel_of(p.shape) / l.cols;
        l.global_rows = std::max<int64_t>(per_matrix ? s[n - 2] : rows, 1);
      }
      break;
    }
  }
  l.rows = l.cols == 0 ? 0 : numel_of(p.shape) / l.cols;
  return p;
}

// ---- the CPU loops (Note [dequantization tables]) -----------------------------------------------

// The inputs of one dequantization on the CPU, contiguous: FP8 scales as F32, FP4 scales as their
// codes, the global scales as F32 (none: one global of 1 with kMultiply).
struct HostInputs {
  const uint8_t* source = nullptr;
  const float* fp8_scales = nullptr;
  const uint8_t* scale_codes = nullptr;
  std::vector<float> globals{1.0f};
};

constexpr int64_t kChunkElements = int64_t{1} << 18;  // outputs per parallel unit

// Calls run(row_begin, row_end) over every row, in parallel chunks of whole row blocks.
template <class Run>
void for_row_chunks(const DequantLayout& l, int64_t out_bytes, const Run& run) {
  if (out_bytes < detail::kParallelMinBytes) {
    run(0, l.rows);
    return;
  }
  int64_t step = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(l.cols, 1));
  // Whole row blocks, so that each chunk builds its tables once.
  if (l.block_rows > 1 && l.block_rows < l.rows) {
    step = ceil_div(step, l.block_rows) * l.block_rows;
  }
  detail::parallel_for(ceil_div(l.rows, step),
                       [&](int64_t i) { run(i * step, std::min(l.rows, (i + 1) * step)); });
}

// Every E4M3 code decoded.
const std::array<float, 256> kE4M3Values = [] {
  std::array<float, 256> v{};
  for (uint32_t code = 0; code < 256; ++code) v[code] = numerics::E4M3Format::decode(code);
  return v;
}();

// fp8_block and fp8_channel: one 256-entry table per scale of the current row block.
template <class D>
void fp8_rows(const DequantLayout& l, const HostInputs& in, Raw<D>* out, int64_t begin,
              int64_t end) {
  std::vector<Raw<D>> tables(static_cast<size_t>(l.scale_cols) * 256);
  int64_t current = -1;  // scale_index of the first scale of the tables' row block
  for (int64_t r = begin; r < end; ++r) {
    const int64_t first = numerics::scale_index(l, r, 0);
    if (first != current) {
      current = first;
      for (int64_t j = 0; j < l.scale_cols; ++j) {
        const float scale = in.fp8_scales[first + j];
        Raw<D>* t = tables.data() + j * 256;
        // dequantize_fp8(code, scale), with the codes decoded once (a loop that vectorizes).
        for (uint32_t code = 0; code < 256; ++code) {
          t[code] = numerics::convert_value<D>(numerics::scaled(kE4M3Values[code], scale));
        }
      }
    }
    const uint8_t* codes = in.source + r * l.cols;
    Raw<D>* o = out + r * l.cols;
    for (int64_t j = 0; j < l.scale_cols; ++j) {
      const Raw<D>* t = tables.data() + j * 256;
      const int64_t c_end = std::min(l.cols, (j + 1) * l.block_cols);
#pragma GCC unroll 8
      for (int64_t c = j * l.block_cols; c < c_end; ++c) o[c] = t[codes[c]];
    }
  }
}

// mxfp4 and nvfp4: per global scale, a table of the 16 nibbles under each of the 256 scale codes.
template <class D>
void fp4_rows(const DequantLayout& l, const HostInputs& in, const Raw<D>* tables, Raw<D>* out,
              int64_t begin, int64_t end) {
  const int64_t half_block = l.block_cols / 2;
  for (int64_t r = begin; r < end; ++r) {
    const Raw<D>* t = tables + (l.global_rows > 0 ? numerics::global_index(l, r) : 0) * 4096;
    const uint8_t* bytes = in.source + r * (l.cols / 2);
    const uint8_t* scales = in.scale_codes + numerics::scale_index(l, r, 0);
    Raw<D>* o = out + r * l.cols;
    for (int64_t j = 0; j < l.scale_cols; ++j) {
      const Raw<D>* ts = t + scales[j] * 16;
      const int64_t k_end = std::min(l.cols / 2, (j + 1) * half_block);
#pragma GCC unroll 8
      for (int64_t k = j * half_block; k < k_end; ++k) {
        const uint8_t b = bytes[k];
        o[2 * k] = ts[b & 15];
        o[2 * k + 1] = ts[b >> 4];
      }
    }
  }
}

template <class D>
std::vector<Raw<D>> fp4_tables(QuantFormat format, std::optional<GlobalScaleMode> mode,
                               const std::vector<float>& globals) {
  std::vector<Raw<D>> tables(globals.size() * 4096);
  for (size_t g = 0; g < globals.size(); ++g) {
    Raw<D>* t = tables.data() + g * 4096;
    for (uint32_t code = 0; code < 256; ++code) {
      float scale = 0;
      if (format == QuantFormat::kNvfp4) {
        scale = mode == GlobalScaleMode::kDivide
                    ? numerics::nvfp4_scale<GlobalScaleMode::kDivide>(code, globals[g])
                    : numerics::nvfp4_scale<GlobalScaleMode::kMultiply>(code, globals[g]);
      }
      for (uint32_t nibble = 0; nibble < 16; ++nibble) {
        const float v = format == QuantFormat::kMxfp4 ? numerics::dequantize_mxfp4(nibble, code)
                                                      : numerics::dequantize_nvfp4(nibble, scale);
        t[code * 16 + nibble] = numerics::convert_value<D>(v);
      }
    }
  }
  return tables;
}

template <class D>
void dequantize_on_host(QuantFormat format, std::optional<GlobalScaleMode> mode,
                        const DequantLayout& l, const HostInputs& in, Raw<D>* out) {
  const int64_t out_bytes = l.rows * l.cols * static_cast<int64_t>(sizeof(Raw<D>));
  if (format == QuantFormat::kFp8Block || format == QuantFormat::kFp8Channel) {
    for_row_chunks(l, out_bytes,
                   [&](int64_t begin, int64_t end) { fp8_rows<D>(l, in, out, begin, end); });
    return;
  }
  const std::vector<Raw<D>> tables = fp4_tables<D>(format, mode, in.globals);
  for_row_chunks(l, out_bytes, [&](int64_t begin, int64_t end) {
    fp4_rows<D>(l, in, tables.data(), out, begin, end);
  });
}

// Calls f(T{}) with the numerics element type of an output dtype (BF16, F16, F32).
template <class F>
void visit_output_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::BF16:
      f(numerics::BF16T{});
      return;
    case DType::F16:
      f(numerics::F16T{});
      return;
    case DType::F32:
      f(float{});
      return;
    default:
      D9D_ASSERT(false);
  }
}

QuantizedInput input_of(const Tensor& t) {
  return {t.dtype(), t.shape()};
}

}  // namespace

std::string_view quant_format_name(QuantFormat format) {
  return numerics::quant_format_name(format);
}

std::optional<QuantFormat> quant_format_from_name(std::string_view name) {
  for (int i = 0; i < kNumQuantFormats; ++i) {
    const auto f = static_cast<QuantFormat>(i);
    if (name == quant_format_name(f)) return f;
  }
  return std::nullopt;
}

std::string_view global_scale_mode_name(GlobalScaleMode mode) {
  return mode == GlobalScaleMode::kMultiply ? "multiply" : "divide";
}

std::optional<GlobalScaleMode> global_scale_mode_from_name(std::string_view name) {
  if (name == "multiply") return GlobalScaleMode::kMultiply;
  if (name == "divide") return GlobalScaleMode::kDivide;
  return std::nullopt;
}

Shape dequantized_shape(const Dequantization& how, const QuantizedInput& source,
                        const QuantizedInput& scale,
                        const std::optional<QuantizedInput>& global_scale) {
  return plan_dequantize(how, source, scale, global_scale).shape;
}

Tensor dequantize(const Tensor& source, const Tensor& scale, const Dequantization& how,
                  const Tensor& global_scale) {
  D9D_CHECK(source.defined() && scale.defined(), "dequantize: undefined source or scale");
  std::optional<QuantizedInput> global;
  if (global_scale.defined()) global = input_of(global_scale);
  const Plan p = plan_dequantize(how, input_of(source), input_of(scale), global);
  const Device device = source.device();
  D9D_CHECK_AS(DeviceError,
               scale.device() == device && (!global || global_scale.device() == device),
               "dequantize: the inputs are on different devices (source ", device.str(), ", scale ",
               scale.device().str(),
               global ? str_cat(", global scale ", global_scale.device().str()) : "", ")");
  Tensor out = Tensor::empty(p.shape, how.dtype, device);
  if (out.numel() == 0) return out;
  const bool fp8 = how.format == QuantFormat::kFp8Block || how.format == QuantFormat::kFp8Channel;
  // Contiguous inputs; FP8 and global scales as F32 (exact from BF16 and F16).
  const Tensor src = source.contiguous();
  const Tensor scales = fp8 ? scale.to(DType::F32).contiguous() : scale.contiguous();
  const Tensor globals = global ? global_scale.to(DType::F32).contiguous() : Tensor();
  if (device.is_cuda()) {
    detail::cuda_dequantize(how.format, p.layout, static_cast<const std::byte*>(src.data_ptr()),
                            static_cast<const std::byte*>(scales.data_ptr()),
                            global ? static_cast<const float*>(globals.data_ptr()) : nullptr,
                            how.global_scale_mode.value_or(GlobalScaleMode::kMultiply),
                            static_cast<std::byte*>(out.mutable_data_ptr()), how.dtype,
                            device.index());
    return out;
  }
  HostInputs in;
  in.source = static_cast<const uint8_t*>(src.data_ptr());
  if (fp8) {
    in.fp8_scales = static_cast<const float*>(scales.data_ptr());
  } else {
    in.scale_codes = static_cast<const uint8_t*>(scales.data_ptr());
  }
  if (global) {
    const auto* g = static_cast<const float*>(globals.data_ptr());
    in.globals.assign(g, g + globals.numel());
  }
  visit_output_type(how.dtype, [&](auto d) {
    using D = decltype(d);
    dequantize_on_host<D>(how.format, how.global_scale_mode, p.layout, in,
                          static_cast<Raw<D>*>(out.mutable_data_ptr()));
  });
  return out;
}

}  // namespace d9d
