// Leaf mappers. Each op's infer side (shape_rules.cpp) validates before its apply side touches
// data, so apply() raises exactly the errors infer() raises, and names the mapper and the tensor.
#include <d9d/mapper/leaf.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <unordered_set>

#include <d9d/dist/dtensor.hpp>

#include "internal.hpp"
#include "shape_rules.hpp"

namespace d9d::mapper {

namespace {

using d9d::detail::str_cat;
using detail::rethrow_with;

void check_unique(const char* op, const std::vector<std::string>& names, const char* what) {
  D9D_CHECK(!names.empty(), op, ": needs at least one ", what, " name");
  std::unordered_set<std::string_view> seen;
  for (const auto& n : names) {
    D9D_CHECK(seen.insert(n).second, op, ": the ", what, " '", n, "' is listed twice in ",
              detail::keys_str(names));
  }
}

// Note [DTensor in a StateDict]: an op that moves data would move only this rank's slice, and
// could not say what the result is; the user gathers first.
void check_not_dtensor(const std::string& who, const std::string& name, const Tensor& tensor) {
  if (!dist::is_dtensor(tensor)) return;
  d9d::detail::throw_error<ValueError>(who, ": '", name, "' is a distributed tensor (",
                                       dist::as_dtensor(tensor)->str(),
                                       "); this op needs the whole tensor: gather_full_tensor it "
                                       "first");
}

std::string dims_str(const std::vector<int64_t>& v) {
  std::ostringstream out;
  out << Dims(v);
  return out.str();
}

}  // namespace

// ---- SingleTensorMapper -------------------------------------------------------------------------

SingleTensorMapper::SingleTensorMapper(std::string source, std::string target)
    : source_(std::move(source)), target_(std::move(target)) {
  groups_.insert(StateGroup{{source_}, {target_}});
}

StateDict SingleTensorMapper::apply(StateDict group) const {
  detail::check_group_inputs(*this, *groups_.begin(), group);
  Tensor input = std::move(group.begin()->second);
  const TensorSpec spec = TensorSpec::of(input);
  try {
    infer_one(spec);
  } catch (const Error&) {
    rethrow_with(str_cat(describe(), ": '", source_, "' is ", spec, ": "));
  }
  if (!accepts_dtensor()) check_not_dtensor(describe(), source_, input);
  StateDict out;
  out.emplace(target_, apply_one(std::move(input)));
  return out;
}

SpecDict SingleTensorMapper::infer(const SpecDict& group) const {
  detail::check_group_inputs(*this, *groups_.begin(), group);
  const TensorSpec& spec = group.begin()->second;
  SpecDict out;
  try {
    out.emplace(target_, infer_one(spec));
  } catch (const Error&) {
    rethrow_with(str_cat(describe(), ": '", source_, "' is ", spec, ": "));
  }
  return out;
}

std::string SingleTensorMapper::describe_op(const std::string& op, const std::string& args) const {
  std::string out = op + "(" + source_;
  if (target_ != source_) out += " -> " + target_;
  if (!args.empty()) out += ", " + args;
  return out + ")";
}

const TensorSpec& SingleTensorMapper::input_spec(const SpecDict& specs) const {
  auto it = specs.find(source_);
  if (it == specs.end()) {
    throw NotInvertibleError(str_cat(describe(),
                                     ": its inverse depends on the input, so it needs "
                                     "the spec of '",
                                     source_, "' (call inverse(input_specs))"));
  }
  return it->second;
}

// ---- identity, rename ---------------------------------------------------------------------------

IdentityMapper::IdentityMapper(std::string name) : SingleTensorMapper(name, name) {}
MapperPtr IdentityMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<IdentityMapper>(source());
}
std::string IdentityMapper::describe() const {
  return describe_op("identity", "");
}

RenameTensorMapper::RenameTensorMapper(std::string from, std::string to)
    : SingleTensorMapper(std::move(from), std::move(to)) {}
MapperPtr RenameTensorMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<RenameTensorMapper>(target(), source());
}
std::string RenameTensorMapper::describe() const {
  return describe_op("rename_tensor", "");
}

// ---- transpose, permute -------------------------------------------------------------------------

TransposeMapper::TransposeMapper(std::string source, std::string target, int64_t dim0, int64_t dim1)
    : SingleTensorMapper(std::move(source), std::move(target)), dim0_(dim0), dim1_(dim1) {}

TensorSpec TransposeMapper::infer_one(const TensorSpec& input) const {
  detail::check_elements(input.dtype, "transpose");
  return {input.dtype, detail::transpose_shape(input.shape, dim0_, dim1_)};
}
Tensor TransposeMapper::apply_one(Tensor input) const {
  return input.transpose(dim0_, dim1_).contiguous();
}
MapperPtr TransposeMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<TransposeMapper>(target(), source(), dim0_, dim1_);
}
std::string TransposeMapper::describe() const {
  return describe_op("transpose", str_cat(dim0_, ", ", dim1_));
}

PermuteMapper::PermuteMapper(std::string source, std::string target, Dims dims)
    : SingleTensorMapper(std::move(source), std::move(target)), dims_(std::move(dims)) {
  const auto n = static_cast<int64_t>(dims_.size());
  std::vector<bool> seen(dims_.size(), false);
  for (int64_t d : dims_) {
    D9D_CHECK(d >= -n && d < n, "permute(", this->source(), "): ", dims_,
              " is not a permutation of 0..", n - 1, " (", d, " is out of range)");
    const auto w = static_cast<size_t>(d < 0 ? d + n : d);
    D9D_CHECK(!seen[w], "permute(", this->source(), "): ", dims_, " is not a permutation (dim ", d,
              " appears twice)");
    seen[w] = true;
  }
}

TensorSpec PermuteMapper::infer_one(const TensorSpec& input) const {
  detail::check_elements(input.dtype, "permute");
  return {input.dtype, detail::permute_shape(input.shape, dims_)};
}
Tensor PermuteMapper::apply_one(Tensor input) const {
  return input.permute(dims_).contiguous();
}
MapperPtr PermuteMapper::do_inverse(const SpecDict&) const {
  const auto n = static_cast<int64_t>(dims_.size());
  Dims inv(dims_.size(), 0);
  for (size_t i = 0; i < dims_.size(); ++i) {
    const int64_t d = dims_[i] < 0 ? dims_[i] + n : dims_[i];
    inv[static_cast<size_t>(d)] = static_cast<int64_t>(i);
  }
  return std::make_shared<PermuteMapper>(target(), source(), inv);
}
std::string PermuteMapper::describe() const {
  std::ostringstream args;
  args << dims_;
  return describe_op("permute", args.str());
}

// ---- squeeze, unsqueeze, reshape ----------------------------------------------------------------

SqueezeMapper::SqueezeMapper(std::string source, std::string target, std::optional<int64_t> dim,
                             bool require_size_one)
    : SingleTensorMapper(std::move(source), std::move(target)),
      dim_(dim),
      require_size_one_(require_size_one) {
  D9D_CHECK(dim_ || !require_size_one_, "squeeze(", this->source(),
            "): require_size_one needs a dim");
}

TensorSpec SqueezeMapper::infer_one(const TensorSpec& input) const {
  if (!dim_) return {input.dtype, detail::squeeze_shape(input.shape)};
  bool changed = false;
  Shape out = detail::squeeze_shape(input.shape, *dim_, &changed);
  D9D_CHECK(changed || !require_size_one_, "squeeze: dim ", *dim_, " of shape ", input.shape,
            " does not have size 1 (this squeeze undoes an unsqueeze)");
  return {input.dtype, std::move(out)};
}
Tensor SqueezeMapper::apply_one(Tensor input) const {
  return dim_ ? input.squeeze(*dim_) : input.squeeze();
}
MapperPtr SqueezeMapper::do_inverse(const SpecDict& input_specs) const {
  if (require_size_one_) return std::make_shared<UnsqueezeMapper>(target(), source(), *dim_);
  if (input_specs.find(source()) == input_specs.end()) {
    throw NotInvertibleError(
        str_cat(describe(),
                ": which dims it drops depends on the input shape, so its inverse needs the "
                "spec of '",
                source(), "' (call inverse(input_specs))"));
  }
  const TensorSpec in = input_spec(input_specs);
  const TensorSpec out = infer(SpecDict{{source(), in}}).begin()->second;
  if (!dim_) return std::make_shared<ReshapeMapper>(target(), source(), in.shape, out.shape);
  if (out.shape == in.shape) {  // torch.squeeze(dim) left it as it was
    if (target() == source()) return std::make_shared<IdentityMapper>(source());
    return std::make_shared<RenameTensorMapper>(target(), source());
  }
  return std::make_shared<UnsqueezeMapper>(target(), source(), *dim_);
}
std::string SqueezeMapper::describe() const {
  return describe_op("squeeze", dim_ ? std::to_string(*dim_) : "");
}

UnsqueezeMapper::UnsqueezeMapper(std::string source, std::string target, int64_t dim)
    : SingleTensorMapper(std::move(source), std::move(target)), dim_(dim) {}
TensorSpec UnsqueezeMapper::infer_one(const TensorSpec& input) const {
  return {input.dtype, detail::unsqueeze_shape(input.shape, dim_)};
}
Tensor UnsqueezeMapper::apply_one(Tensor input) const {
  return input.unsqueeze(dim_);
}
MapperPtr UnsqueezeMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<SqueezeMapper>(target(), source(), dim_, /*require_size_one=*/true);
}
std::string UnsqueezeMapper::describe() const {
  return describe_op("unsqueeze", std::to_string(dim_));
}

ReshapeMapper::ReshapeMapper(std::string source, std::string target, Shape shape,
                             std::optional<Shape> input_shape)
    : SingleTensorMapper(std::move(source), std::move(target)),
      shape_(std::move(shape)),
      input_shape_(std::move(input_shape)) {
  int infer = 0;
  for (int64_t s : shape_) {
    D9D_CHECK(s >= -1, "reshape(", this->source(), "): invalid size ", s, " in ", shape_);
    infer += s == -1;
  }
  D9D_CHECK(infer <= 1, "reshape(", this->source(), "): only one dim can be -1 in ", shape_);
}
TensorSpec ReshapeMapper::infer_one(const TensorSpec& input) const {
  D9D_CHECK(!input_shape_ || input.shape == *input_shape_, "reshape: expected the shape ",
            *input_shape_, " (this reshape undoes another), got ", input.shape);
  return {input.dtype, detail::reshape_shape(input.shape, shape_)};
}
Tensor ReshapeMapper::apply_one(Tensor input) const {
  return input.reshape(shape_);
}
MapperPtr ReshapeMapper::do_inverse(const SpecDict& input_specs) const {
  const Shape in = input_shape_ ? *input_shape_ : input_spec(input_specs).shape;
  Shape out;
  try {
    out = detail::reshape_shape(in, shape_);
  } catch (const Error&) {
    rethrow_with(str_cat(describe(), ": inverse: "));
  }
  return std::make_shared<ReshapeMapper>(target(), source(), in, out);
}
std::string ReshapeMapper::describe() const {
  std::ostringstream args;
  args << shape_;
  return describe_op("reshape", args.str());
}

// ---- cast ---------------------------------------------------------------------------------------

// The value traits come from the dtype table (Note [dtype value traits]); C64's are those of its
// parts, so a cast to C64 is lossless when the cast to F32 is.
bool is_lossless_cast(DType from, DType to) {
  if (from == to) return true;
  if (from == DType::C64 || to == DType::BOOL) return false;  // drops imaginary parts / values
  if (is_sub_byte(from) || is_sub_byte(to)) return false;     // packed: core converts none of them
  const DTypeInfo& a = dtype_info(from);
  const DTypeInfo& b = dtype_info(to);
  if (!b.has_zero || (a.is_signed && !b.is_signed)) return false;
  const bool b_is_float = b.kind == DTypeKind::kFloat || b.kind == DTypeKind::kComplex;
  if (a.kind == DTypeKind::kFloat) {
    return b_is_float && b.precision >= a.precision && b.max_finite >= a.max_finite &&
           b.min_positive <= a.min_positive && (!a.has_inf || b.has_inf) &&
           (!a.has_nan || b.has_nan) && (!a.has_neg_zero || b.has_neg_zero);
  }
  // Integers (and BOOL): every value must be an exact integer of `to`. The largest magnitude of a
  // signed integer is its lowest value, -2^precision.
  if (b_is_float) {
    const double magnitude = a.is_signed ? std::ldexp(1, a.precision) : a.max_finite;
    return magnitude <= std::ldexp(1, b.precision) && magnitude <= b.max_finite;
  }
  return a.precision <= b.precision;
}

CastMapper::CastMapper(std::string source, std::string target, DType dtype,
                       std::optional<DType> input_dtype, CastSelection selection)
    : SingleTensorMapper(std::move(source), std::move(target)),
      dtype_(dtype),
      input_dtype_(input_dtype),
      selection_(std::move(selection)) {}

DType CastMapper::output_dtype(DType dtype) const {
  return selection_.from && !selection_.from->count(dtype) ? dtype : dtype_;
}

TensorSpec CastMapper::infer_one(const TensorSpec& input) const {
  D9D_CHECK_TYPE(!input_dtype_ || input.dtype == *input_dtype_, "cast: expected ", *input_dtype_,
                 " (this cast undoes another), got ", input.dtype);
  const DType out = output_dtype(input.dtype);
  if (input.dtype != out) {
    D9D_CHECK_TYPE(!is_sub_byte(input.dtype) && !is_sub_byte(out), "to: cannot convert ",
                   input.dtype, " to ", out, ": packed sub-byte dtypes have no element access");
    D9D_CHECK_TYPE(
        !selection_.refuse_integers_to_floats || selection_.from || !is_integral(input.dtype) ||
            !is_floating_point(out),
        "cast: '", source(), "' holds integers (", input.dtype, "); cast to ", out,
        " they would change (positions, ids and counts above the float's exact range collapse). "
        "Name the dtypes the rule casts (\"from\": [\"F32\", ...]: others pass through), or "
        "say \"lossy\": true");
  }
  return {out, input.shape};
}
Tensor CastMapper::apply_one(Tensor input) const {
  (void)infer_one({input.dtype(), input.shape()});  // the same checks as planning
  return input.to(output_dtype(input.dtype()));
}
MapperPtr CastMapper::do_inverse(const SpecDict& input_specs) const {
  if (!input_dtype_ && input_specs.find(source()) == input_specs.end()) {
    throw NotInvertibleError(
        str_cat(describe(),
                ": whether it loses values depends on the input dtype, so its inverse needs "
                "the spec of '",
                source(), "' (call inverse(input_specs))"));
  }
  const DType from = input_dtype_ ? *input_dtype_ : input_spec(input_specs).dtype;
  const DType to = output_dtype(from);
  if (!is_lossless_cast(from, to) && !selection_.inverse_even_if_lossy) {
    throw NotInvertibleError(str_cat(describe(), ": converting ", from, " to ", to,
                                     " loses values, so it has no inverse"));
  }
  return std::make_shared<CastMapper>(target(), source(), from, to);
}
std::string CastMapper::describe() const {
  return describe_op("cast", std::string(dtype_name(dtype_)));
}

// ---- distributed tensors ------------------------------------------------------------------------

DistributeMapper::DistributeMapper(std::string name, dist::DeviceMesh mesh,
                                   std::vector<dist::Placement> placements)
    : SingleTensorMapper(name, name), mesh_(std::move(mesh)), placements_(std::move(placements)) {
  D9D_CHECK(static_cast<int64_t>(placements_.size()) <= mesh_.ndim(), describe(), ": ",
            placements_.size(), " placements for the ", mesh_.ndim(), "-D mesh ", mesh_.str());
}
TensorSpec DistributeMapper::infer_one(const TensorSpec& input) const {
  dist::normalize_placements(mesh_, placements_, static_cast<int64_t>(input.shape.size()));
  return input;
}
Tensor DistributeMapper::apply_one(Tensor input) const {
  return dist::distribute_tensor(input, mesh_, placements_).as_tensor();
}
MapperPtr DistributeMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<GatherFullTensorMapper>(source());
}
std::string DistributeMapper::describe() const {
  return describe_op("distribute", dist::to_string(placements_));
}

GatherFullTensorMapper::GatherFullTensorMapper(std::string name) : SingleTensorMapper(name, name) {}
Tensor GatherFullTensorMapper::apply_one(Tensor input) const {
  const std::optional<dist::DTensor> d = dist::as_dtensor(input);
  D9D_CHECK(d.has_value(), describe(), ": cannot gather anything but a DTensor; '", source(),
            "' is ", input.str());
  return d->full_tensor();
}
std::string GatherFullTensorMapper::describe() const {
  return describe_op("gather_full_tensor", "");
}

// ---- select_child_modules -----------------------------------------------------------------------

SelectChildModulesMapper::SelectChildModulesMapper(std::vector<std::string> base_names,
                                                   const std::string& parent)
    : parent_prefix_(parent + ".") {
  for (auto& name : base_names) groups_.insert(StateGroup{{parent_prefix_ + name}, {name}});
}

const std::string& SelectChildModulesMapper::child_of(const std::string& key) const {
  // Groups are {parent.name} -> {name}: the group of `key` is the one whose input is `key`.
  auto it = groups_.lower_bound(StateGroup{{key}, {}});
  if (it == groups_.end() || *it->inputs.begin() != key) {
    throw ValueError(str_cat(describe(), ": got an undefined group [", key, "]: it selects only ",
                             detail::keys_str(all_inputs(*this))));
  }
  return *it->outputs.begin();
}

StateDict SelectChildModulesMapper::apply(StateDict group) const {
  if (group.size() != 1) detail::throw_undefined_group(*this, group);
  StateDict out;
  out.emplace(child_of(group.begin()->first), std::move(group.begin()->second));
  return out;
}

SpecDict SelectChildModulesMapper::infer(const SpecDict& group) const {
  if (group.size() != 1) detail::throw_undefined_group(*this, group);
  return SpecDict{{child_of(group.begin()->first), group.begin()->second}};
}

MapperPtr SelectChildModulesMapper::do_inverse(const SpecDict&) const {
  throw NotInvertibleError(
      str_cat(describe(),
              ": a selection of a child module's keys has no inverse (to map names back, "
              "use rename_tensor or prefix_scope)"));
}

std::string SelectChildModulesMapper::describe() const {
  return str_cat("select_child_modules(", parent_prefix_.substr(0, parent_prefix_.size() - 1), ", ",
                 groups_.size(), " names)");
}

// ---- ManyToOneMapper ----------------------------------------------------------------------------

ManyToOneMapper::ManyToOneMapper(const char* op, std::vector<std::string> sources,
                                 std::string target, int64_t dim)
    : sources_(std::move(sources)), target_(std::move(target)), dim_(dim) {
  check_unique(op, sources_, "source");
  groups_.insert(StateGroup{{sources_.begin(), sources_.end()}, {target_}});
}

std::vector<const TensorSpec*> ManyToOneMapper::specs_of_inputs(const SpecDict& specs) const {
  std::vector<const TensorSpec*> out;
  for (const auto& name : sources_) {
    auto it = specs.find(name);
    if (it == specs.end()) {
      throw NotInvertibleError(str_cat(describe(),
                                       ": its inverse depends on the input shapes, so "
                                       "it needs the spec of '",
                                       name, "' (call inverse(input_specs))"));
    }
    out.push_back(&it->second);
  }
  return out;
}

StateDict ManyToOneMapper::apply(StateDict group) const {
  detail::check_group_inputs(*this, *groups_.begin(), group);
  std::vector<Tensor> inputs;
  std::vector<TensorSpec> specs;
  std::vector<const TensorSpec*> spec_ptrs;
  inputs.reserve(sources_.size());
  specs.reserve(sources_.size());
  for (const auto& name : sources_) {
    inputs.push_back(group.at(name));
    check_not_dtensor(describe(), name, inputs.back());
    specs.push_back(TensorSpec::of(inputs.back()));
  }
  for (const auto& s : specs) spec_ptrs.push_back(&s);
  try {
    infer_many(spec_ptrs);
  } catch (const Error&) {
    rethrow_with(describe() + ": ");
  }
  group.clear();  // the inputs may go as soon as the output exists
  StateDict out;
  out.emplace(target_, apply_many(inputs));
  return out;
}

SpecDict ManyToOneMapper::infer(const SpecDict& group) const {
  detail::check_group_inputs(*this, *groups_.begin(), group);
  std::vector<const TensorSpec*> specs;
  for (const auto& name : sources_) specs.push_back(&group.at(name));
  SpecDict out;
  try {
    out.emplace(target_, infer_many(specs));
  } catch (const Error&) {
    rethrow_with(describe() + ": ");
  }
  return out;
}

std::string ManyToOneMapper::describe_op(const char* op) const {
  return str_cat(op, "(", detail::keys_str(sources_), " -> ", target_, ", dim ", dim_, ")");
}

void detail::check_joinable(const std::vector<std::string>& names,
                            const std::vector<const TensorSpec*>& inputs, const char* op) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    detail::check_elements(inputs[i]->dtype, op);
    D9D_CHECK_TYPE(inputs[i]->dtype == inputs[0]->dtype, op, ": '", names[i], "' is ",
                   inputs[i]->dtype, " but '", names[0], "' is ", inputs[0]->dtype,
                   " (cast one of them first)");
  }
}

StackTensorsMapper::StackTensorsMapper(std::vector<std::string> sources, std::string target,
                                       int64_t dim)
    : ManyToOneMapper("stack_tensors", std::move(sources), std::move(target), dim) {}

TensorSpec StackTensorsMapper::infer_many(const std::vector<const TensorSpec*>& inputs) const {
  detail::check_joinable(sources(), inputs, "stack");
  const Shape& shape = inputs[0]->shape;
  for (size_t i = 1; i < inputs.size(); ++i) {
    D9D_CHECK(inputs[i]->shape == shape, "stack: expected every tensor to have the shape ", shape,
              " of '", sources()[0], "', but '", sources()[i], "' has ", inputs[i]->shape);
  }
  const int64_t d = detail::wrap_dim(dim(), static_cast<int64_t>(shape.size()) + 1, "stack");
  Shape out = shape;
  out.insert(static_cast<size_t>(d), static_cast<int64_t>(inputs.size()));
  return {inputs[0]->dtype, std::move(out)};
}
Tensor StackTensorsMapper::apply_many(const std::vector<Tensor>& inputs) const {
  return d9d::stack(inputs, dim()).contiguous();
}
MapperPtr StackTensorsMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<UnstackTensorsMapper>(target(), sources(), dim());
}
std::string StackTensorsMapper::describe() const {
  return describe_op("stack_tensors");
}

ConcatenateTensorsMapper::ConcatenateTensorsMapper(std::vector<std::string> sources,
                                                   std::string target, int64_t dim, Parts parts,
                                                   std::vector<int64_t> sizes)
    : ManyToOneMapper("concatenate_tensors", std::move(sources), std::move(target), dim),
      parts_(parts),
      sizes_(std::move(sizes)) {
  D9D_CHECK(parts_ != Parts::kSizes || sizes_.size() == this->sources().size(),
            "concatenate_tensors(", target, "): ", sizes_.size(), " sizes for ",
            this->sources().size(), " sources");
}

TensorSpec ConcatenateTensorsMapper::infer_many(
    const std::vector<const TensorSpec*>& inputs) const {
  detail::check_joinable(sources(), inputs, "cat");
  // As torch.cat, 1-D tensors of shape [0] take no part (a legacy rule core keeps for parity).
  const TensorSpec* ref = nullptr;
  size_t ref_index = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Shape& s = inputs[i]->shape;
    D9D_CHECK_INDEX(!s.empty(), "cat: '", sources()[i], "' is 0-dim and cannot be concatenated");
    if (!ref && !(s.size() == 1 && s[0] == 0)) {
      ref = inputs[i];
      ref_index = i;
    }
  }
  const bool all_skipped = ref == nullptr;
  Shape out{0};
  int64_t d = 0;
  if (!all_skipped) {
    d = detail::wrap_dim(dim(), static_cast<int64_t>(ref->shape.size()), "cat");
    out = ref->shape;
    int64_t total = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Shape& s = inputs[i]->shape;
      if (s.size() == 1 && s[0] == 0) continue;
      bool same = s.size() == ref->shape.size();
      for (size_t j = 0; same && j < s.size(); ++j) {
        same = static_cast<int64_t>(j) == d || s[j] == ref->shape[j];
      }
      D9D_CHECK(same, "cat: sizes must match except in dim ", dim(), ", but '", sources()[i],
                "' has shape ", s, " and '", sources()[ref_index], "' has shape ", ref->shape);
      total += s[static_cast<size_t>(d)];
    }
    out[static_cast<size_t>(d)] = total;
  }
  if (parts_ != Parts::kAny) {
    // The parts must be what chunk / split made, or the inverse would not give them back.
    std::vector<int64_t> got;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Shape& s = inputs[i]->shape;
      D9D_CHECK(s.size() == out.size(), "cat: '", sources()[i], "' has shape ", s,
                ", which a split of the result of shape ", out, " would not give back");
      got.push_back(s[static_cast<size_t>(d)]);
    }
    const std::vector<int64_t> want =
        parts_ == Parts::kSizes
            ? sizes_
            : detail::chunk_sizes(out[static_cast<size_t>(d)], static_cast<int64_t>(inputs.size()));
    D9D_CHECK(got == want, "cat: the parts have sizes ", dims_str(got), " along dim ", dim(),
              " but this concatenation undoes a ",
              parts_ == Parts::kSizes ? "split into sizes " : "chunk into sizes ", dims_str(want));
  }
  return {inputs[0]->dtype, std::move(out)};
}
Tensor ConcatenateTensorsMapper::apply_many(const std::vector<Tensor>& inputs) const {
  return d9d::cat(inputs, dim()).contiguous();
}
MapperPtr ConcatenateTensorsMapper::do_inverse(const SpecDict& input_specs) const {
  if (parts_ == Parts::kChunks) {
    return std::make_shared<ChunkTensorsMapper>(target(), sources(), dim());
  }
  if (parts_ == Parts::kSizes) {
    return std::make_shared<SplitTensorsMapper>(target(), sources(), sizes_, dim());
  }
  const std::vector<const TensorSpec*> inputs = specs_of_inputs(input_specs);
  TensorSpec out;
  try {
    out = infer_many(inputs);
  } catch (const Error&) {
    rethrow_with(describe() + ": inverse: ");
  }
  const auto ndim = static_cast<int64_t>(out.shape.size());
  const int64_t d = ndim == 1 ? 0 : detail::wrap_dim(dim(), ndim, "cat");
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (static_cast<int64_t>(inputs[i]->shape.size()) != ndim) {
      throw NotInvertibleError(str_cat(describe(), ": '", sources()[i], "' of shape ",
                                       inputs[i]->shape, " takes no part in the result of shape ",
                                       out.shape, ", so no split gives it back"));
    }
    sizes.push_back(inputs[i]->shape[static_cast<size_t>(d)]);
  }
  return std::make_shared<SplitTensorsMapper>(target(), sources(), sizes, ndim == 1 ? 0 : dim());
}
std::string ConcatenateTensorsMapper::describe() const {
  return describe_op("concatenate_tensors");
}

// ---- OneToManyMapper ----------------------------------------------------------------------------

OneToManyMapper::OneToManyMapper(const char* op, std::string source,
                                 std::vector<std::string> targets, int64_t dim)
    : source_(std::move(source)), targets_(std::move(targets)), dim_(dim) {
  check_unique(op, targets_, "target");
  groups_.insert(StateGroup{{source_}, {targets_.begin(), targets_.end()}});
}

StateDict OneToManyMapper::apply(StateDict group) const {
  detail::check_group_inputs(*this, *groups_.begin(), group);
  Tensor input = std::move(group.begin()->second);
  check_not_dtensor(describe(), source_, input);
  const TensorSpec spec = TensorSpec::of(input);
  try {
    infer_pieces(spec);
  } catch (const Error&) {
    rethrow_with(str_cat(describe(), ": '", source_, "' is ", spec, ": "));
  }
  std::vector<Tensor> pieces = apply_pieces(input);
  D9D_ASSERT(pieces.size() == targets_.size());
  StateDict out;
  for (size_t i = 0; i < pieces.size(); ++i) out.emplace(targets_[i], pieces[i].contiguous());
  return out;
}

SpecDict OneToManyMapper::infer(const SpecDict& group) const {
  detail::check_group_inputs(*this, *groups_.begin(), group);
  const TensorSpec& spec = group.begin()->second;
  std::vector<TensorSpec> pieces;
  try {
    pieces = infer_pieces(spec);
  } catch (const Error&) {
    rethrow_with(str_cat(describe(), ": '", source_, "' is ", spec, ": "));
  }
  SpecDict out;
  for (size_t i = 0; i < pieces.size(); ++i) out.emplace(targets_[i], std::move(pieces[i]));
  return out;
}

std::string OneToManyMapper::describe_op(const char* op, const std::string& extra) const {
  return str_cat(op, "(", source_, " -> ", detail::keys_str(targets_), ", ", extra, "dim ", dim_,
                 ")");
}

// Pieces of `input` with the given sizes along the wrapped dim `d`.
static std::vector<TensorSpec> pieces_along(const TensorSpec& input, int64_t d,
                                            const std::vector<int64_t>& sizes) {
  std::vector<TensorSpec> out;
  out.reserve(sizes.size());
  for (int64_t s : sizes) {
    TensorSpec piece = input;
    piece.shape[static_cast<size_t>(d)] = s;
    out.push_back(std::move(piece));
  }
  return out;
}

UnstackTensorsMapper::UnstackTensorsMapper(std::string source, std::vector<std::string> targets,
                                           int64_t dim)
    : OneToManyMapper("unstack_tensors", std::move(source), std::move(targets), dim) {}

std::vector<TensorSpec> UnstackTensorsMapper::infer_pieces(const TensorSpec& input) const {
  const auto n = static_cast<int64_t>(input.shape.size());
  D9D_CHECK_INDEX(n > 0, "unbind: cannot unbind a 0-dim tensor");
  const int64_t d = detail::wrap_dim(dim(), n, "unbind");
  const int64_t count = input.shape[static_cast<size_t>(d)];
  D9D_CHECK(count == static_cast<int64_t>(targets().size()), "unbind: dim ", dim(), " of shape ",
            input.shape, " has size ", count, ", but there are ", targets().size(), " targets");
  detail::check_elements(input.dtype, "select");
  TensorSpec piece = input;
  piece.shape.erase(static_cast<size_t>(d));
  return std::vector<TensorSpec>(static_cast<size_t>(count), piece);
}
std::vector<Tensor> UnstackTensorsMapper::apply_pieces(const Tensor& input) const {
  return d9d::unbind(input, dim());
}
MapperPtr UnstackTensorsMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<StackTensorsMapper>(targets(), source(), dim());
}
std::string UnstackTensorsMapper::describe() const {
  return describe_op("unstack_tensors", "");
}

ChunkTensorsMapper::ChunkTensorsMapper(std::string source, std::vector<std::string> targets,
                                       int64_t dim)
    : OneToManyMapper("chunk_tensors", std::move(source), std::move(targets), dim) {}

std::vector<TensorSpec> ChunkTensorsMapper::infer_pieces(const TensorSpec& input) const {
  const auto n = static_cast<int64_t>(input.shape.size());
  D9D_CHECK_INDEX(n > 0, "chunk: cannot chunk a 0-dim tensor");
  const int64_t d = detail::wrap_dim(dim(), n, "chunk");
  const int64_t size = input.shape[static_cast<size_t>(d)];
  const auto want = static_cast<int64_t>(targets().size());
  const std::vector<int64_t> sizes = detail::chunk_sizes(size, want);
  D9D_CHECK(static_cast<int64_t>(sizes.size()) == want, "chunk: torch.chunk splits dim ", dim(),
            " of size ", size, " into ", sizes.size(), " pieces of sizes ", dims_str(sizes),
            ", not into the ", want, " pieces the targets need");
  detail::check_elements(input.dtype, "narrow");
  return pieces_along(input, d, sizes);
}
std::vector<Tensor> ChunkTensorsMapper::apply_pieces(const Tensor& input) const {
  return d9d::chunk(input, static_cast<int64_t>(targets().size()), dim());
}
MapperPtr ChunkTensorsMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<ConcatenateTensorsMapper>(targets(), source(), dim(),
                                                    ConcatenateTensorsMapper::Parts::kChunks);
}
std::string ChunkTensorsMapper::describe() const {
  return describe_op("chunk_tensors", "");
}

SplitTensorsMapper::SplitTensorsMapper(std::string source, std::vector<std::string> targets,
                                       std::vector<int64_t> sizes, int64_t dim)
    : OneToManyMapper("split_tensors", std::move(source), std::move(targets), dim),
      sizes_(std::move(sizes)) {
  D9D_CHECK(sizes_.size() == this->targets().size(), "split_tensors(", this->source(),
            "): ", sizes_.size(), " sizes ", dims_str(sizes_), " for ", this->targets().size(),
            " targets");
  for (int64_t s : sizes_) {
    D9D_CHECK(s >= 0, "split_tensors(", this->source(), "): negative size ", s, " in ",
              dims_str(sizes_));
  }
}

std::vector<TensorSpec> SplitTensorsMapper::infer_pieces(const TensorSpec& input) const {
  const auto n = static_cast<int64_t>(input.shape.size());
  D9D_CHECK_INDEX(n > 0, "split: cannot split a 0-dim tensor");
  const int64_t d = detail::wrap_dim(dim(), n, "split");
  int64_t sum = 0;
  for (int64_t s : sizes_) sum += s;
  D9D_CHECK(sum == input.shape[static_cast<size_t>(d)], "split: sizes ", dims_str(sizes_),
            " add up to ", sum, " but dim ", dim(), " of shape ", input.shape, " has size ",
            input.shape[static_cast<size_t>(d)]);
  detail::check_elements(input.dtype, "narrow");
  return pieces_along(input, d, sizes_);
}
std::vector<Tensor> SplitTensorsMapper::apply_pieces(const Tensor& input) const {
  return d9d::split(input, sizes_, dim());
}
MapperPtr SplitTensorsMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<ConcatenateTensorsMapper>(
      targets(), source(), dim(), ConcatenateTensorsMapper::Parts::kSizes, sizes_);
}
std::string SplitTensorsMapper::describe() const {
  return describe_op("split_tensors", "sizes " + dims_str(sizes_) + ", ");
}

// ---- factories ----------------------------------------------------------------------------------

MapperPtr identity(std::string name) {
  return std::make_shared<IdentityMapper>(std::move(name));
}
MapperPtr rename_tensor(std::string from, std::string to) {
  return std::make_shared<RenameTensorMapper>(std::move(from), std::move(to));
}
MapperPtr select_child_modules(std::vector<std::string> base_names, const std::string& parent) {
  return std::make_shared<SelectChildModulesMapper>(std::move(base_names), parent);
}
MapperPtr transpose(std::string name, int64_t dim0, int64_t dim1) {
  std::string target = name;
  return std::make_shared<TransposeMapper>(std::move(name), std::move(target), dim0, dim1);
}
MapperPtr squeeze(std::string name) {
  std::string target = name;
  return std::make_shared<SqueezeMapper>(std::move(name), std::move(target), std::nullopt);
}
MapperPtr squeeze(std::string name, int64_t dim) {
  std::string target = name;
  return std::make_shared<SqueezeMapper>(std::move(name), std::move(target), dim);
}
MapperPtr unsqueeze(std::string name, int64_t dim) {
  std::string target = name;
  return std::make_shared<UnsqueezeMapper>(std::move(name), std::move(target), dim);
}
MapperPtr stack_tensors(std::vector<std::string> sources, std::string target, int64_t dim) {
  return std::make_shared<StackTensorsMapper>(std::move(sources), std::move(target), dim);
}
MapperPtr unstack_tensors(std::string source, std::vector<std::string> targets, int64_t dim) {
  return std::make_shared<UnstackTensorsMapper>(std::move(source), std::move(targets), dim);
}
MapperPtr chunk_tensors(std::string source, std::vector<std::string> targets, int64_t dim) {
  return std::make_shared<ChunkTensorsMapper>(std::move(source), std::move(targets), dim);
}
MapperPtr concatenate_tensors(std::vector<std::string> sources, std::string target, int64_t dim) {
  return std::make_shared<ConcatenateTensorsMapper>(std::move(sources), std::move(target), dim);
}
MapperPtr cast(std::string name, DType dtype) {
  std::string target = name;
  return std::make_shared<CastMapper>(std::move(name), std::move(target), dtype);
}
MapperPtr reshape(std::string name, Shape shape) {
  std::string target = name;
  return std::make_shared<ReshapeMapper>(std::move(name), std::move(target), std::move(shape));
}
MapperPtr permute(std::string name, Dims dims) {
  std::string target = name;
  return std::make_shared<PermuteMapper>(std::move(name), std::move(target), std::move(dims));
}
MapperPtr split_tensors(std::string source, std::vector<std::string> targets,
                        std::vector<int64_t> sizes, int64_t dim) {
  return std::make_shared<SplitTensorsMapper>(std::move(source), std::move(targets),
                                              std::move(sizes), dim);
}
MapperPtr distribute(std::string name, const dist::DeviceMesh& mesh,
                     const std::vector<dist::Placement>& placements) {
  return std::make_shared<DistributeMapper>(std::move(name), mesh, placements);
}
MapperPtr gather_full_tensor(std::string name) {
  return std::make_shared<GatherFullTensorMapper>(std::move(name));
}

// ---- slice pushdown (Note [slice pushdown] in region.cpp) ---------------------------------------

namespace {

// `wanted`'s dims [0, at) and [at + 1, ...) with `range` inserted as dim `at`.
Region with_dim(const Region& wanted, size_t at, int64_t begin, int64_t end) {
  Region out = wanted;
  out.begin.insert(at, begin);
  out.end.insert(at, end);
  return out;
}

Region without_dim(const Region& wanted, size_t at) {
  Region out = wanted;
  out.begin.erase(at);
  out.end.erase(at);
  return out;
}

// The input box of pieces laid side by side along `d` (`sizes[i]` each) that makes the wanted
// boxes of the pieces: their hull, shifted to where each piece starts. `stacked`: each piece is
// one index of `d`, which the pieces do not have (unstack).
std::optional<Region> hull_of_pieces(const TensorSpec& input, size_t d,
                                     const std::vector<int64_t>& sizes,
                                     const std::vector<std::optional<Region>>& wanted,
                                     bool stacked) {
  std::optional<Region> out;
  int64_t at = 0;
  for (size_t i = 0; i < wanted.size(); ++i) {
    const int64_t size = stacked ? 1 : sizes[i];
    if (wanted[i] && wanted[i]->numel() > 0) {
      Region r = stacked ? with_dim(*wanted[i], d, at, at + 1) : *wanted[i];
      if (!stacked) {
        r.begin[d] += at;
        r.end[d] += at;
      }
      out = out ? out->hull(r) : r;
    }
    at += size;
  }
  if (!out) {  // nothing of any piece: an empty box
    out = Region::whole(input.shape);
    out->end[d] = out->begin[d];
  }
  return out;
}

}  // namespace

RegionDict SingleTensorMapper::input_regions(const SpecDict& inputs, const RegionDict& wanted,
                                             std::vector<std::string>* whole) const {
  const auto w = wanted.find(target_);
  if (w == wanted.end()) return {};
  if (auto r = input_region(inputs.at(source_), w->second)) return {{source_, std::move(*r)}};
  return ModelStateMapper::input_regions(inputs, wanted, whole);
}
std::optional<Region> SingleTensorMapper::input_region(const TensorSpec&, const Region&) const {
  return std::nullopt;
}

RegionDict ManyToOneMapper::input_regions(const SpecDict& inputs, const RegionDict& wanted,
                                          std::vector<std::string>* whole) const {
  const auto w = wanted.find(target_);
  if (w == wanted.end()) return {};
  std::vector<const TensorSpec*> specs;
  for (const auto& name : sources_) specs.push_back(&inputs.at(name));
  if (auto regions = input_regions_many(specs, w->second)) {
    RegionDict out;
    for (size_t i = 0; i < sources_.size(); ++i) {
      if ((*regions)[i]) out.emplace(sources_[i], std::move(*(*regions)[i]));
    }
    return out;
  }
  return ModelStateMapper::input_regions(inputs, wanted, whole);
}
std::optional<std::vector<std::optional<Region>>> ManyToOneMapper::input_regions_many(
    const std::vector<const TensorSpec*>&, const Region&) const {
  return std::nullopt;
}

RegionDict OneToManyMapper::input_regions(const SpecDict& inputs, const RegionDict& wanted,
                                          std::vector<std::string>* whole) const {
  std::vector<std::optional<Region>> pieces(targets_.size());
  bool any = false;
  for (size_t i = 0; i < targets_.size(); ++i) {
    if (const auto w = wanted.find(targets_[i]); w != wanted.end()) {
      pieces[i] = w->second;
      any = true;
    }
  }
  if (!any) return {};
  if (auto r = input_region_pieces(inputs.at(source_), pieces)) return {{source_, std::move(*r)}};
  return ModelStateMapper::input_regions(inputs, wanted, whole);
}
std::optional<Region> OneToManyMapper::input_region_pieces(
    const TensorSpec&, const std::vector<std::optional<Region>>&) const {
  return std::nullopt;
}

// Element for element: the same box.
std::optional<Region> IdentityMapper::input_region(const TensorSpec&, const Region& wanted) const {
  return wanted;
}
std::optional<Region> RenameTensorMapper::input_region(const TensorSpec&,
                                                       const Region& wanted) const {
  return wanted;
}
std::optional<Region> CastMapper::input_region(const TensorSpec&, const Region& wanted) const {
  return wanted;
}

std::optional<Region> TransposeMapper::input_region(const TensorSpec& input,
                                                    const Region& wanted) const {
  const auto n = static_cast<int64_t>(input.shape.size());
  const auto d0 = static_cast<size_t>(detail::wrap_dim(dim0_, n, "transpose"));
  const auto d1 = static_cast<size_t>(detail::wrap_dim(dim1_, n, "transpose"));
  Region out = wanted;
  std::swap(out.begin[d0], out.begin[d1]);
  std::swap(out.end[d0], out.end[d1]);
  return out;
}

std::optional<Region> PermuteMapper::input_region(const TensorSpec& input,
                                                  const Region& wanted) const {
  const auto n = static_cast<int64_t>(input.shape.size());
  Region out = wanted;
  for (size_t i = 0; i < dims_.size(); ++i) {  // output dim i is input dim dims_[i]
    const auto d = static_cast<size_t>(detail::wrap_dim(dims_[i], n, "permute"));
    out.begin[d] = wanted.begin[i];
    out.end[d] = wanted.end[i];
  }
  return out;
}

std::optional<Region> SqueezeMapper::input_region(const TensorSpec& input,
                                                  const Region& wanted) const {
  return reshape_region(input.shape, infer_one(input).shape, wanted);
}
std::optional<Region> UnsqueezeMapper::input_region(const TensorSpec& input,
                                                    const Region& wanted) const {
  return reshape_region(input.shape, infer_one(input).shape, wanted);
}
std::optional<Region> ReshapeMapper::input_region(const TensorSpec& input,
                                                  const Region& wanted) const {
  return reshape_region(input.shape, infer_one(input).shape, wanted);
}

// Input i is index i of the stacked dim.
std::optional<std::vector<std::optional<Region>>> StackTensorsMapper::input_regions_many(
    const std::vector<const TensorSpec*>& inputs, const Region& wanted) const {
  const auto d = static_cast<size_t>(
      detail::wrap_dim(dim(), static_cast<int64_t>(inputs[0]->shape.size()) + 1, "stack"));
  std::vector<std::optional<Region>> out(inputs.size());
  for (int64_t i = wanted.begin[d]; i < wanted.end[d]; ++i) {
    out[static_cast<size_t>(i)] = without_dim(wanted, d);
  }
  return out;
}

// Input i holds [offset_i, offset_i + size_i) of the joined dim: the box cut to that.
std::optional<std::vector<std::optional<Region>>> ConcatenateTensorsMapper::input_regions_many(
    const std::vector<const TensorSpec*>& inputs, const Region& wanted) const {
  std::vector<std::optional<Region>> out(inputs.size());
  const Shape out_shape = infer_many(inputs).shape;
  if (wanted.ndim() != static_cast<int64_t>(out_shape.size())) return std::nullopt;
  size_t d = 0;
  for (const TensorSpec* in : inputs) {  // the dim, as infer_many() wraps it
    if (!(in->shape.size() == 1 && in->shape[0] == 0)) {
      d = static_cast<size_t>(
          detail::wrap_dim(dim(), static_cast<int64_t>(in->shape.size()), "cat"));
      break;
    }
  }
  int64_t at = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Shape& s = inputs[i]->shape;
    if (s.size() == 1 && s[0] == 0) continue;  // takes no part (legacy rule)
    const int64_t begin = std::max(wanted.begin[d], at);
    const int64_t end = std::min(wanted.end[d], at + s[d]);
    if (begin < end) {
      Region r = wanted;
      r.begin[d] = begin - at;
      r.end[d] = end - at;
      out[i] = std::move(r);
    }
    at += s[d];
  }
  return out;
}

std::optional<Region> UnstackTensorsMapper::input_region_pieces(
    const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const {
  const auto d = static_cast<size_t>(
      detail::wrap_dim(dim(), static_cast<int64_t>(input.shape.size()), "unbind"));
  return hull_of_pieces(input, d, {}, wanted, /*stacked=*/true);
}

std::optional<Region> ChunkTensorsMapper::input_region_pieces(
    const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const {
  const auto d = static_cast<size_t>(
      detail::wrap_dim(dim(), static_cast<int64_t>(input.shape.size()), "chunk"));
  return hull_of_pieces(input, d,
                        detail::chunk_sizes(input.shape[d], static_cast<int64_t>(targets().size())),
                        wanted, /*stacked=*/false);
}

std::optional<Region> SplitTensorsMapper::input_region_pieces(
    const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const {
  const auto d = static_cast<size_t>(
      detail::wrap_dim(dim(), static_cast<int64_t>(input.shape.size()), "split"));
  return hull_of_pieces(input, d, sizes_, wanted, /*stacked=*/false);
}

}  // namespace d9d::mapper
