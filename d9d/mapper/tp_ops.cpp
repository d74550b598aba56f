// The tensor-parallel layout ops: shard_tensor and narrow (NarrowMapper), pad (leaf.hpp).
#include <d9d/mapper/leaf.hpp>

#include <algorithm>
#include <limits>

#include "internal.hpp"
#include "shape_rules.hpp"

namespace d9d::mapper {

using d9d::detail::str_cat;

MapperPtr shard_tensor(std::string source, std::string target, int64_t dim, int64_t parts,
                       int64_t index) {
  return std::make_shared<NarrowMapper>(std::move(source), std::move(target), dim,
                                        NarrowMapper::Piece{parts, index});
}
MapperPtr pad(std::string source, std::string target, int64_t dim, int64_t multiple) {
  return std::make_shared<PadMapper>(std::move(source), std::move(target), dim, multiple);
}
MapperPtr narrow(std::string source, std::string target, int64_t dim, int64_t start,
                 int64_t length) {
  return std::make_shared<NarrowMapper>(std::move(source), std::move(target), dim, start, length);
}

// ---- narrow, shard_tensor -------------------------------------------------------------------

NarrowMapper::NarrowMapper(std::string source, std::string target, int64_t dim, int64_t start,
                           int64_t length)
    : SingleTensorMapper(std::move(source), std::move(target)),
      dim_(dim),
      start_(start),
      length_(length) {
  D9D_CHECK(start_ >= 0 && length_ >= 0, "narrow(", this->source(), "): start ", start_,
            " and length ", length_, " must not be negative");
}

NarrowMapper::NarrowMapper(std::string source, std::string target, int64_t dim, Piece piece)
    : SingleTensorMapper(std::move(source), std::move(target)), dim_(dim), piece_(piece) {
  D9D_CHECK(piece.parts >= 1, "shard_tensor(", this->source(), "): parts must be positive, got ",
            piece.parts);
  D9D_CHECK(piece.index >= 0 && piece.index < piece.parts, "shard_tensor(", this->source(),
            "): index ", piece.index, " is not in [0, ", piece.parts, ")");
}

std::pair<int64_t, int64_t> NarrowMapper::range(int64_t size) const {
  if (piece_) {
    const int64_t chunk = (size + piece_->parts - 1) / piece_->parts;  // torch.chunk's size
    const int64_t start = std::min(piece_->index * chunk, size);
    return {start, std::min(chunk, size - start)};
  }
  D9D_CHECK_INDEX(start_ + length_ <= size, "narrow: [", start_, ", ", start_ + length_,
                  ") is past the end of dim ", dim_, " of size ", size);
  return {start_, length_};
}

TensorSpec NarrowMapper::infer_one(const TensorSpec& input) const {
  const char* op = piece_ ? "shard_tensor" : "narrow";
  D9D_CHECK_INDEX(!input.shape.empty(), op, ": cannot take a part of a 0-dim tensor");
  const auto d =
      static_cast<size_t>(detail::wrap_dim(dim_, static_cast<int64_t>(input.shape.size()), op));
  detail::check_elements(input.dtype, op);
  TensorSpec out = input;
  out.shape[d] = range(input.shape[d]).second;
  return out;
}

Tensor NarrowMapper::apply_one(Tensor input) const {
  const int64_t d = detail::wrap_dim(dim_, input.dim(), piece_ ? "shard_tensor" : "narrow");
  const auto [start, length] = range(input.size(d));
  return input.narrow(d, start, length).contiguous();
}

// The box, shifted to where the part starts.
std::optional<Region> NarrowMapper::input_region(const TensorSpec& input,
                                                 const Region& wanted) const {
  const auto d = static_cast<size_t>(
      detail::wrap_dim(dim_, static_cast<int64_t>(input.shape.size()), "narrow"));
  const int64_t start = range(input.shape[d]).first;
  Region out = wanted;
  out.begin[d] += start;
  out.end[d] += start;
  return out;
}

MapperPtr NarrowMapper::do_inverse(const SpecDict&) const {
  throw NotInvertibleError(
      str_cat(describe(), ": keeps a part of its input, so it has no inverse"));
}

std::string NarrowMapper::describe() const {
  if (piece_) {
    return describe_op("shard_tensor",
                       str_cat("dim ", dim_, ", piece ", piece_->index, " of ", piece_->parts));
  }
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
