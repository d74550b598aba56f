// The tensor-parallel layout ops: shard_tensor, narrow, pad (leaf.hpp).
#include <d9d/mapper/leaf.hpp>

#include <algorithm>
#include <limits>

#include "internal.hpp"
#include "shape_rules.hpp"

namespace d9d::mapper {

using d9d::detail::str_cat;

MapperPtr shard_tensor(std::string source, std::string target, int64_t dim, int64_t parts,
                       int64_t index) {
  return std::make_shared<ShardTensorMapper>(std::move(source), std::move(target), dim, parts,
                                             index);
}
MapperPtr pad(std::string source, std::string target, int64_t dim, int64_t multiple) {
  return std::make_shared<PadMapper>(std::move(source), std::move(target), dim, multiple);
}
MapperPtr narrow(std::string source, std::string target, int64_t dim, int64_t start,
                 int64_t length) {
  return std::make_shared<NarrowMapper>(std::move(source), std::move(target), dim, start, length);
}

// ---- shard_tensor
// ---------------------------------------------------------------------------------

ShardTensorMapper::ShardTensorMapper(std::string source, std::string target, int64_t dim,
                                     int64_t parts, int64_t index)
    : SingleTensorMapper(std::move(source), std::move(target)),
      dim_(dim),
      parts_(parts),
      index_(index) {
  D9D_CHECK(parts_ >= 1, "shard_tensor(", this->source(), "): parts must be positive, got ",
            parts_);
  D9D_CHECK(index_ >= 0 && index_ < parts_, "shard_tensor(", this->source(), "): index ", index_,
            " is not in [0, ", parts_, ")");
}

std::pair<int64_t, int64_t> ShardTensorMapper::piece(int64_t size) const {
  const int64_t chunk = (size + parts_ - 1) / parts_;  // torch.chunk's piece size
  const int64_t start = std::min(index_ * chunk, size);
  return {start, std::min(chunk, size - start)};
}

TensorSpec ShardTensorMapper::infer_one(const TensorSpec& input) const {
  D9D_CHECK_INDEX(!input.shape.empty(), "shard_tensor: cannot shard a 0-dim tensor");
  const auto d = static_cast<size_t>(
      detail::wrap_dim(dim_, static_cast<int64_t>(input.shape.size()), "shard_tensor"));
  detail::check_elements(input.dtype, "shard_tensor");
  TensorSpec out = input;
  out.shape[d] = piece(input.shape[d]).second;
  return out;
}

Tensor ShardTensorMapper::apply_one(Tensor input) const {
  const int64_t d = detail::wrap_dim(dim_, input.dim(), "shard_tensor");
  const auto [start, length] = piece(input.size(d));
  return input.narrow(d, start, length).contiguous();
}

std::optional<Region> ShardTensorMapper::input_region(const TensorSpec& input,
                                                      const Region& wanted) const {
  const auto d = static_cast<size_t>(
      detail::wrap_dim(dim_, static_cast<int64_t>(input.shape.size()), "shard_tensor"));
  const int64_t start = piece(input.shape[d]).first;
  Region out = wanted;
  out.begin[d] += start;
  out.end[d] += start;
  return out;
}

MapperPtr ShardTensorMapper::do_inverse(const SpecDict&) const {
  throw NotInvertibleError(
      str_cat(describe(), ": keeps a part of its input, so it has no inverse"));
}

std::string ShardTensorMapper::describe() const {
  return describe_op("shard_tensor", str_cat("dim ", dim_, ", piece ", index_, " of ", parts_));
}

// ---- narrow -----------------------------------------------------------------------------------

NarrowMapper::NarrowMapper(std::string source, std::string target, int64_t dim, int64_t start,
                           int64_t length)
    : SingleTensorMapper(std::move(source), std::move(target)),
      dim_(dim),
      start_(start),
      length_(length) {
  D9D_CHECK(start_ >= 0 && length_ >= 0, "narrow(", this->source(), "): start ", start_,
            " and length ", length_, " must not be negative");
}

TensorSpec NarrowMapper::infer_one(const TensorSpec& input) const {
  D9D_CHECK_INDEX(!input.shape.empty(), "narrow: cannot narrow a 0-dim tensor");
  const auto d = static_cast<size_t>(
      detail::wrap_dim(dim_, static_cast<int64_t>(input.shape.size()), "narrow"));
  detail::check_elements(input.dtype, "narrow");
  D9D_CHECK_INDEX(start_ + length_ <= input.shape[d], "narrow: [", start_, ", ", start_ + length_,
                  ") is past the end of dim ", dim_, " of size ", input.shape[d]);
  TensorSpec out = input;
  out.shape[d] = length_;
  return out;
}

Tensor NarrowMapper::apply_one(Tensor input) const {
  return input.narrow(detail::wrap_dim(dim_, input.dim(), "narrow"), start_, length_).contiguous();
}

std::optional<Region> NarrowMapper::input_region(const TensorSpec& input,
                                                 const Region& wanted) const {
  const auto d = static_cast<size_t>(
      detail::wrap_dim(dim_, static_cast<int64_t>(input.shape.size()), "narrow"));
  Region out = wanted;
  out.begin[d] += start_;
  out.end[d] += start_;
  return out;
}

MapperPtr NarrowMapper::do_inverse(const SpecDict&) const {
  throw NotInvertibleError(
      str_cat(describe(), ": keeps a part of its input, so it has no inverse"));
}

std::string NarrowMapper::describe() const {
  return describe_op("narrow", str_cat("dim ", dim_, ", ", start_, ":", start_ + length_));
}

// ---- pad --------------------------------------------------------------------------------------

PadMapper::PadMapper(std::string source, std::string target, int64_t dim, int64_t multiple)
    : SingleTensorMapper(std::move(source), std::move(target)), dim_(dim), multiple_(multiple) {
  D9D_CHECK(multiple_ >= 1, "pad(", this->source(), "): multiple must be positive, got ",
            multiple_);
}

TensorSpec PadMapper::infer_one(const TensorSpec& input) const {
  D9D_CHECK_INDEX(!input.shape.empty(), "pad: cannot pad a 0-dim tensor");
  const auto d =
      static_cast<size_t>(detail::wrap_dim(dim_, static_cast<int64_t>(input.shape.size()), "pad"));
  detail::check_elements(input.dtype, "pad");
  TensorSpec out = input;
  const int64_t size = input.shape[d];
  D9D_CHECK(size <= std::numeric_limits<int64_t>::max() - multiple_, "pad: dim ", dim_, " of size ",
            size, " overflows");
  out.shape[d] = (size + multiple_ - 1) / multiple_ * multiple_;
  return out;
}

Tensor PadMapper::apply_one(Tensor input) const {
  const int64_t d = detail::wrap_dim(dim_, input.dim(), "pad");
  const TensorSpec spec = infer_one(TensorSpec::of(input));
  if (spec.shape == input.shape()) return input;
  Tensor out = Tensor::zeros(spec.shape, input.dtype(), input.device());
  out.narrow(d, 0, input.size(d)).copy_(input);
  return out;
}

// Rows of the padding read nothing.
std::optional<Region> PadMapper::input_region(const TensorSpec& input, const Region& wanted) const {
  const auto d =
      static_cast<size_t>(detail::wrap_dim(dim_, static_cast<int64_t>(input.shape.size()), "pad"));
  Region out = wanted;
  out.end[d] = std::min(out.end[d], input.shape[d]);
  out.begin[d] = std::min(out.begin[d], out.end[d]);
  return out;
}

MapperPtr PadMapper::do_inverse(const SpecDict& input_specs) const {
  const TensorSpec& in = input_spec(input_specs);
  const int64_t d = detail::wrap_dim(dim_, static_cast<int64_t>(in.shape.size()), "pad");
  return std::make_shared<NarrowMapper>(target(), source(), d, 0, in.shape[static_cast<size_t>(d)]);
}

std::string PadMapper::describe() const {
  return describe_op("pad", str_cat("dim ", dim_, ", to a multiple of ", multiple_));
}

}  // namespace d9d::mapper
