// dequantize and quantized (Note [scales follow their weights] in quantized.hpp).
#include <d9d/mapper/quantized.hpp>

#include <algorithm>

#include <d9d/mapper/leaf.hpp>

#include "internal.hpp"
#include "shape_rules.hpp"

namespace d9d::mapper {

using d9d::detail::str_cat;
using detail::rethrow_with;

// ---- QuantNames ---------------------------------------------------------------------------------

bool QuantNames::is_weight(std::string_view key) const {
  return !weight_suffix.empty() && key.size() > weight_suffix.size() &&
         key.substr(key.size() - weight_suffix.size()) == weight_suffix;
}

std::string QuantNames::scale_of(std::string_view key) const {
  return std::string(key.substr(0, key.size() - weight_suffix.size())) + scale_suffix;
}

std::string QuantNames::global_scale_of(std::string_view key) const {
  return std::string(key.substr(0, key.size() - weight_suffix.size())) + global_scale_suffix;
}

namespace {

bool per_tensor(const Shape& shape) {
  return shape.size() <= 1 && numel_of(shape) == 1;
}

std::optional<QuantizedInput> input_of(const TensorSpec* spec) {
  if (spec == nullptr) return std::nullopt;
  return QuantizedInput{spec->dtype, spec->shape};
}

// The dequantized spec of a weight and its scales, or the rule they break, naming all of them.
// Only shapes and dtypes are checked here, so a global scale's mode is not needed.
TensorSpec logical_spec(const QuantScheme& scheme, const std::string& weight, const TensorSpec& w,
                        const std::string& scale, const TensorSpec& s, const std::string& global,
                        const TensorSpec* g) {
  Dequantization how;
  how.format = scheme.format;
  how.block_rows = scheme.block_rows;
  how.block_cols = scheme.block_cols;
  how.dtype = DType::F32;
  if (g != nullptr) how.global_scale_mode = GlobalScaleMode::kMultiply;
  try {
    return {DType::F32,
            dequantized_shape(how, {w.dtype, w.shape}, {s.dtype, s.shape}, input_of(g))};
  } catch (const Error&) {
    rethrow_with(str_cat("'", weight, "' (", w, ") and its scale '", scale, "' (", s, ")",
                         g != nullptr ? str_cat(" and global scale '", global, "' (", *g, ")") : "",
                         " do not fit: "));
  }
}

}  // namespace

// ---- dequantize ---------------------------------------------------------------------------------

DequantizeMapper::DequantizeMapper(std::string source, std::string scale, std::string global_scale,
                                   std::string target, Dequantization how)
    : source_(std::move(source)),
      scale_(std::move(scale)),
      global_scale_(std::move(global_scale)),
      target_(std::move(target)),
      how_(how) {
  StateGroup g{{source_, scale_}, {target_}};
  if (!global_scale_.empty()) g.inputs.insert(global_scale_);
  D9D_CHECK(g.inputs.size() == (global_scale_.empty() ? 2u : 3u), describe(),
            ": the source, scale and global scale must be three different tensors");
  groups_.insert(std::move(g));
}

SpecDict DequantizeMapper::infer(const SpecDict& group) const {
  detail::check_group_inputs(*this, *groups_.begin(), group);
  const TensorSpec& w = group.at(source_);
  const TensorSpec& s = group.at(scale_);
  const TensorSpec* g = global_scale_.empty() ? nullptr : &group.at(global_scale_);
  try {
    return {{target_,
             {how_.dtype,
              dequantized_shape(how_, {w.dtype, w.shape}, {s.dtype, s.shape}, input_of(g))}}};
  } catch (const Error&) {
    rethrow_with(str_cat(describe(), ": '", source_, "' is ", w, ", '", scale_, "' is ", s,
                         g != nullptr ? str_cat(", '", global_scale_, "' is ", *g) : "", ": "));
  }
}

StateDict DequantizeMapper::apply(StateDict group) const {
  infer(specs_of(group));  // every rule, with the names, before any byte is read
  const Tensor global = global_scale_.empty() ? Tensor() : group.at(global_scale_);
  Tensor out = d9d::dequantize(group.at(source_), group.at(scale_), how_, global);
  return {{target_, std::move(out)}};
}

// The output's first dim is the weight's and the scale's first dim, one for one (rows of a matrix,
// or experts of a stack), except fp8_block's matrix rows, which share a scale per block of rows:
// there the rows widen to whole blocks. A box of the output is read as its rows, whole otherwise.
RegionDict DequantizeMapper::input_regions(const SpecDict& inputs, const RegionDict& wanted,
                                           std::vector<std::string>* whole) const {
  const auto w = wanted.find(target_);
  if (w == wanted.end()) return {};
  const Shape out = infer(inputs).at(target_).shape;
  const TensorSpec& source = inputs.at(source_);
  const TensorSpec& scale = inputs.at(scale_);
  const bool per_tensor = scale.shape.size() <= 1 && numel_of(scale.shape) == 1;
  if (out.size() < 2 || source.shape.size() < 2 || per_tensor || w->second.numel() == 0) {
    return ModelStateMapper::input_regions(inputs, wanted, whole);
  }
  int64_t begin = w->second.begin[0];
  int64_t end = w->second.end[0];
  int64_t scale_begin = begin;
  int64_t scale_end = end;
  if (how_.format == QuantFormat::kFp8Block && source.shape.size() == 2) {
    scale_begin = begin / how_.block_rows;
    scale_end = (end + how_.block_rows - 1) / how_.block_rows;
    begin = scale_begin * how_.block_rows;
    end = std::min(scale_end * how_.block_rows, source.shape[0]);
  }
  auto rows = [](const Shape& shape, int64_t b, int64_t e) {
    Region r = Region::whole(shape);
    r.begin[0] = b;
    r.end[0] = e;
    return r;
  };
  RegionDict out_regions{{source_, rows(source.shape, begin, end)},
                         {scale_, rows(scale.shape, scale_begin, scale_end)}};
  if (!global_scale_.empty()) {
    out_regions.emplace(global_scale_, Region::whole(inputs.at(global_scale_).shape));
  }
  return out_regions;
}

MapperPtr DequantizeMapper::do_inverse(const SpecDict&) const {
  throw NotInvertibleError(str_cat(describe(),
                                   ": dequantizing loses the packed codes and their scales, and "
                                   "d9d does not quantize; keep the quantized checkpoint"));
}

std::string DequantizeMapper::describe() const {
  return str_cat("dequantize(", source_, ", ", scale_,
                 global_scale_.empty() ? "" : str_cat(", ", global_scale_), " -> ", target_, ", ",
                 quant_format_name(how_.format), " to ", how_.dtype, ")");
}

// ---- quantized ----------------------------------------------------------------------------------

// What the weight mapper does, as the scales see it.
struct QuantizedMapper::Move {
  enum class Kind : uint8_t { kSame, kTranspose, kStack, kCat, kUnbind, kSplit };
  Kind kind = Kind::kSame;
  std::vector<std::string> sources, targets;  // weights, in the op's order
  int64_t dim = 0, dim1 = 0;                  // as given (not wrapped)

  Move(Kind k, std::vector<std::string> s, std::vector<std::string> t, int64_t d = 0,
       int64_t d1 = 0)
      : kind(k), sources(std::move(s)), targets(std::move(t)), dim(d), dim1(d1) {}
};

namespace {

// One companion (the scales, or the global scales) through one group: what happens to the
// companions of the weight mapper's inputs, in its order, to make those of its outputs.
struct CompanionOp {
  // kFirst: the first part's, the parts being copies of one (checked when the data comes).
  enum class Kind : uint8_t { kSame, kTranspose, kStack, kCat, kUnbind, kSplit, kCopy, kFirst };
  Kind kind = Kind::kSame;
  int64_t dim = 0, dim1 = 0;
  std::vector<int64_t> sizes;        // kSplit
  size_t outputs = 1;                // kCopy, kUnbind, kSplit: how many pieces
  bool flatten_parts = false;        // kStack: each part (one element) to [] first
  std::optional<Shape> piece_shape;  // kUnbind: each 0-dim piece reshaped to this

  static CompanionOp of(Kind kind, int64_t dim = 0, int64_t dim1 = 0) {
    CompanionOp op;
    op.kind = kind;
    op.dim = dim;
    op.dim1 = dim1;
    return op;
  }

  std::vector<TensorSpec> infer(const std::vector<TensorSpec>& in) const {
    std::vector<TensorSpec> out;
    switch (kind) {
      case Kind::kSame:
        return in;
      case Kind::kTranspose:
        return {{in[0].dtype, detail::transpose_shape(in[0].shape, dim, dim1)}};
      case Kind::kStack: {
        Shape s = flatten_parts ? Shape{} : in[0].shape;
        s.insert(static_cast<size_t>(dim), static_cast<int64_t>(in.size()));
        return {{in[0].dtype, s}};
      }
      case Kind::kCat: {
        Shape s = in[0].shape;
        s[static_cast<size_t>(dim)] = 0;
        for (const TensorSpec& t : in)
          s[static_cast<size_t>(dim)] += t.shape[static_cast<size_t>(dim)];
        return {{in[0].dtype, s}};
      }
      case Kind::kUnbind: {
        Shape s = in[0].shape;
        s.erase(static_cast<size_t>(dim));
        if (s.empty() && piece_shape) s = *piece_shape;
        return std::vector<TensorSpec>(outputs, {in[0].dtype, s});
      }
      case Kind::kSplit:
        for (int64_t size : sizes) {
          TensorSpec t = in[0];
          t.shape[static_cast<size_t>(dim)] = size;
          out.push_back(t);
        }
        return out;
      case Kind::kCopy:
        return std::vector<TensorSpec>(outputs, in[0]);
      case Kind::kFirst:
        return {in[0]};
    }
    return out;
  }

  std::vector<Tensor> apply(const std::vector<Tensor>& in) const {
    std::vector<Tensor> out;
    switch (kind) {
      case Kind::kSame:
        return in;
      case Kind::kTranspose:
        return {in[0].transpose(dim, dim1).contiguous()};
      case Kind::kStack: {
        std::vector<Tensor> parts = in;
        if (flatten_parts) {
          for (Tensor& t : parts) t = t.reshape({});
        }
        return {d9d::stack(parts, dim).contiguous()};
      }
      case Kind::kCat:
        return {d9d::cat(in, dim).contiguous()};
      case Kind::kUnbind:
        for (const Tensor& t : d9d::unbind(in[0], dim)) {
          out.push_back((t.dim() == 0 && piece_shape ? t.reshape(*piece_shape) : t).contiguous());
        }
        return out;
      case Kind::kSplit:
        for (const Tensor& t : d9d::split(in[0], sizes, dim)) out.push_back(t.contiguous());
        return out;
      case Kind::kCopy:
        return std::vector<Tensor>(outputs, in[0]);
      case Kind::kFirst:
        for (const Tensor& t : in) {
          D9D_CHECK(equal(t.contiguous(), in[0].contiguous()),
                    "the pieces' scales differ, so no one scale serves the joined weight");
        }
        return {in[0]};
    }
    return out;
  }
};

// What a weight dim is to its scale (or global scale).
enum class Role : uint8_t {
  kMirrored,  // the companion has the same dim, one entry per weight index
  kBlocked,   // the companion has the same dim, one entry per `unit` weight indices
  kCopied,    // the companion has no such dim: a piece along it keeps the whole companion
  kFixed,     // inside a block's packed bytes: nothing may split or join it
};

struct DimRole {
  Role role = Role::kMirrored;
  int64_t unit = 1;
};

}  // namespace

struct QuantizedMapper::Plan {
  SpecDict outputs;
  CompanionOp scales;
  std::optional<CompanionOp> globals;
};

QuantizedMapper::QuantizedMapper(MapperPtr weights, QuantScheme scheme)
    : QuantizedMapper(std::move(weights), std::move(scheme), Undo{}) {}

QuantizedMapper::QuantizedMapper(MapperPtr weights, QuantScheme scheme, Undo undo)
    : weights_(std::move(weights)), scheme_(std::move(scheme)), undo_(std::move(undo)) {
  D9D_CHECK(weights_ != nullptr, "quantized: no weight mapper");
  D9D_CHECK(weights_->state_dependency_groups().size() == 1, "quantized(", weights_->describe(),
            "): expected a mapper of one group (a leaf op)");
  using K = Move::Kind;
  using Names = std::vector<std::string>;
  std::shared_ptr<Move> move;
  const ModelStateMapper* w = weights_.get();
  if (const auto* m = dynamic_cast<const IdentityMapper*>(w)) {
    move = std::make_shared<Move>(K::kSame, Names{m->source()}, Names{m->target()});
  } else if (const auto* m = dynamic_cast<const RenameTensorMapper*>(w)) {
    move = std::make_shared<Move>(K::kSame, Names{m->source()}, Names{m->target()});
  } else if (const auto* m = dynamic_cast<const TransposeMapper*>(w)) {
    move = std::make_shared<Move>(K::kTranspose, Names{m->source()}, Names{m->target()}, m->dim0(),
                                  m->dim1());
  } else if (const auto* m = dynamic_cast<const StackTensorsMapper*>(w)) {
    move = std::make_shared<Move>(K::kStack, m->sources(), Names{m->target()}, m->dim());
  } else if (const auto* m = dynamic_cast<const ConcatenateTensorsMapper*>(w)) {
    move = std::make_shared<Move>(K::kCat, m->sources(), Names{m->target()}, m->dim());
  } else if (const auto* m = dynamic_cast<const StackExpertsMapper*>(w); m && m->parts() == 1) {
    // Whole experts stacked (a fused gate_up made by an earlier rule, say): a stack.
    move = std::make_shared<Move>(K::kStack, m->sources(), Names{m->target()}, m->dim());
  } else if (const auto* m = dynamic_cast<const UnstackTensorsMapper*>(w)) {
    move = std::make_shared<Move>(K::kUnbind, Names{m->source()}, m->targets(), m->dim());
  } else if (const auto* m = dynamic_cast<const UnstackExpertsMapper*>(w); m && m->parts() == 1) {
    move = std::make_shared<Move>(K::kUnbind, Names{m->source()}, m->targets(), m->dim());
  } else if (const auto* m = dynamic_cast<const ChunkTensorsMapper*>(w)) {
    move = std::make_shared<Move>(K::kSplit, Names{m->source()}, m->targets(), m->dim());
  } else if (const auto* m = dynamic_cast<const SplitTensorsMapper*>(w)) {
    move = std::make_shared<Move>(K::kSplit, Names{m->source()}, m->targets(), m->dim());
  } else {
    const StateGroup& g = *weights_->state_dependency_groups().begin();
    const std::string& first = *g.inputs.begin();
    throw ValueError(str_cat(weights_->describe(), ": the scale '", scheme_.names.scale_of(first),
                             "' of the quantized weight '", first,
                             "' cannot follow this op (scales follow identity, rename_tensor, "
                             "transpose, stack, concatenate, unstack, chunk and split, and "
                             "stack_experts / unstack_experts of whole experts: fuse an "
                             "expert's parts in an earlier stage); dequantize the weight first"));
  }
  const bool global = !scheme_.names.global_scale_suffix.empty();
  StateGroup group;
  for (const auto& [names, into] :
       {std::pair{&move->sources, &group.inputs}, std::pair{&move->targets, &group.outputs}}) {
    for (const std::string& name : *names) {
      D9D_CHECK(scheme_.names.is_weight(name), "quantized(", weights_->describe(), "): '", name,
                "' does not end in the weight suffix '", scheme_.names.weight_suffix,
                "', so its scale has no name");
      into->insert(name);
      into->insert(scheme_.names.scale_of(name));
      if (global) into->insert(scheme_.names.global_scale_of(name));
    }
  }
  const size_t per = global ? 3 : 2;
  D9D_CHECK(group.inputs.size() == per * move->sources.size() &&
                group.outputs.size() == per * move->targets.size(),
            "quantized(", weights_->describe(), "): a weight's name is also another's scale");
  groups_.insert(std::move(group));
  move_ = std::move(move);
}

QuantizedMapper::Plan QuantizedMapper::plan(const SpecDict& inputs) const {
  const Move& mv = *move_;
  const QuantNames& names = scheme_.names;
  const bool has_global = !names.global_scale_suffix.empty();
  const QuantFormat format = scheme_.format;
  // Every input pair fits.
  std::vector<TensorSpec> w, s, g;
  SpecDict weight_inputs;
  for (const std::string& name : mv.sources) {
    const std::string sn = names.scale_of(name), gn = names.global_scale_of(name);
    w.push_back(inputs.at(name));
    s.push_back(inputs.at(sn));
    if (has_global) g.push_back(inputs.at(gn));
    logical_spec(scheme_, name, w.back(), sn, s.back(), gn, has_global ? &g.back() : nullptr);
    weight_inputs.emplace(name, w.back());
  }
  const SpecDict weight_outputs = weights_->infer(weight_inputs);
  const std::string& first = mv.sources[0];
  const std::string what = str_cat(describe(), ": ");
  auto refuse = [&](const std::string& why) -> void {
    throw ValueError(str_cat(what, why, "; dequantize first, or move the weights in another way"));
  };
  // The companions' structure must be the same for every part.
  const auto n = static_cast<int64_t>(w[0].shape.size());
  const bool scale_per_tensor = format == QuantFormat::kFp8Channel && per_tensor(s[0].shape);
  const bool mx_blocks =
      format == QuantFormat::kMxfp4 && s[0].shape.size() + 1 == w[0].shape.size();
  const bool global_per_tensor = has_global && per_tensor(g[0].shape);
  for (size_t i = 1; i < mv.sources.size(); ++i) {
    const bool same =
        w[i].shape.size() == w[0].shape.size() && s[i].shape.size() == s[0].shape.size() &&
        (format != QuantFormat::kFp8Channel || per_tensor(s[i].shape) == scale_per_tensor) &&
        (!has_global || (per_tensor(g[i].shape) == global_per_tensor &&
                         g[i].shape.size() == g[0].shape.size()));
    if (!same) {
      refuse(str_cat("the scales of '", mv.sources[i], "' and '", first,
                     "' are of different kinds (", s[i], " and ", s[0], ")"));
    }
  }
  // What each weight dim is to the scale, and to the global scale.
  auto scale_role = [&](int64_t d) -> DimRole {
    if (scale_per_tensor) return {Role::kCopied};
    switch (format) {
      case QuantFormat::kFp8Block:
        if (d == n - 2) return {Role::kBlocked, scheme_.block_rows};
        if (d == n - 1) return {Role::kBlocked, scheme_.block_cols};
        return {Role::kMirrored};
      case QuantFormat::kFp8Channel:
        return d == n - 1 ? DimRole{Role::kCopied} : DimRole{Role::kMirrored};
      case QuantFormat::kMxfp4:
        if (d < n - 1) return {Role::kMirrored};
        return mx_blocks ? DimRole{Role::kFixed} : DimRole{Role::kBlocked, 16};  // 32 codes
      case QuantFormat::kNvfp4:
        return d == n - 1 ? DimRole{Role::kBlocked, 8} : DimRole{Role::kMirrored};  // 16 codes
    }
    return {Role::kFixed};
  };
  // Dims before the first that is not mirrored: where a stack may insert one.
  int64_t mirrored = 0;
  while (mirrored < n && scale_role(mirrored).role == Role::kMirrored) ++mirrored;
  auto global_mirrored = [&](int64_t d) { return !global_per_tensor && d < n - 2; };

  Plan p;
  p.outputs = weight_outputs;
  CompanionOp& so = p.scales;
  CompanionOp go;
  using K = Move::Kind;
  using C = CompanionOp::Kind;
  switch (mv.kind) {
    case K::kSame:
      so.kind = go.kind = C::kSame;
      break;
    case K::kTranspose: {
      const int64_t a = detail::wrap_dim(mv.dim, n, "transpose");
      const int64_t b = detail::wrap_dim(mv.dim1, n, "transpose");
      const DimRole ra = scale_role(a), rb = scale_role(b);
      so.kind = C::kTranspose;
      so.dim = a;
      so.dim1 = b;
      if (a == b || (ra.role == Role::kCopied && rb.role == Role::kCopied)) {
        so.kind = C::kSame;
      } else if (ra.role == Role::kMirrored && rb.role == Role::kMirrored) {
      } else if (ra.role == Role::kBlocked && rb.role == Role::kBlocked &&
                 format == QuantFormat::kFp8Block) {
        if (scheme_.block_rows != scheme_.block_cols) {
          refuse(str_cat("transposing '", first, "' would make its ", scheme_.block_rows, " x ",
                         scheme_.block_cols, " blocks ", scheme_.block_cols, " x ",
                         scheme_.block_rows));
        }
      } else {
        refuse(str_cat("transposing dims ", a, " and ", b, " of '", first,
                       "' would move its codes across the blocks of its scale '",
                       names.scale_of(first), "'"));
      }
      go.kind = C::kSame;
      if (has_global && global_mirrored(a) != global_mirrored(b)) {
        refuse(str_cat("transposing dims ", a, " and ", b, " of '", first,
                       "' would mix its matrices, each with its own global scale"));
      }
      if (has_global && a != b && global_mirrored(a) && global_mirrored(b)) {
        go = CompanionOp::of(C::kTranspose, a, b);
      }
      break;
    }
    case K::kStack: {
      const int64_t d = detail::wrap_dim(mv.dim, n + 1, "stack");
      if (scale_per_tensor && undo_.scales_copied) {
        so = CompanionOp::of(C::kFirst);
      } else if (scale_per_tensor || d > mirrored) {
        refuse(str_cat("stacking at dim ", d, " would ",
                       scale_per_tensor ? "need one scale per part, but each part's scale is one "
                                          "for its whole tensor"
                                        : "put the new dim inside the blocks of the scales",
                       " (of '", first, "' and the others)"));
      } else {
        so = CompanionOp::of(C::kStack, d);
      }
      if (has_global) {
        if (undo_.global_scales_copied) {
          go = CompanionOp::of(C::kFirst);
        } else if (!global_per_tensor && d <= n - 2) {
          go = CompanionOp::of(C::kStack, d);
        } else if (global_per_tensor && n == 2 && d == 0) {
          go = CompanionOp::of(C::kStack, 0);
          go.flatten_parts = true;  // one global scale per stacked matrix
        } else {
          refuse(str_cat("stacking at dim ", d, " leaves no place for the global scales of '",
                         first, "' and the others"));
        }
      }
      break;
    }
    case K::kCat: {
      const int64_t d = detail::wrap_dim(mv.dim, n, "cat");
      const DimRole r = scale_role(d);
      if (r.role == Role::kCopied && undo_.scales_copied) {
        so = CompanionOp::of(C::kFirst);
      } else if (r.role == Role::kCopied || r.role == Role::kFixed) {
        refuse(str_cat("concatenating along dim ", d,
                       " would need one scale for the parts, "
                       "whose scales ('",
                       names.scale_of(first), "', ...) may differ"));
      }
      for (size_t i = 0; i + 1 < w.size() && r.role == Role::kBlocked; ++i) {
        const int64_t extent = w[i].shape[static_cast<size_t>(d)];
        if (extent % r.unit != 0) {
          refuse(str_cat("concatenating along dim ", d, ": '", mv.sources[i], "' has ", extent,
                         " there, not a multiple of the block's ", r.unit,
                         ", so a block of the fused weight would mix '", mv.sources[i], "' and '",
                         mv.sources[i + 1], "' under one scale"));
        }
      }
      if (so.kind != C::kFirst) so = CompanionOp::of(C::kCat, d);
      if (has_global) {
        if (!global_mirrored(d) && undo_.global_scales_copied) {
          go = CompanionOp::of(C::kFirst);
        } else if (!global_mirrored(d)) {
          refuse(str_cat("concatenating along dim ", d,
                         " would need one global scale for the parts, whose global scales ('",
                         names.global_scale_of(first), "', ...) may differ"));
        } else {
          go = CompanionOp::of(C::kCat, d);
        }
      }
      break;
    }
    case K::kUnbind:
    case K::kSplit: {
      const int64_t d = detail::wrap_dim(mv.dim, n, mv.kind == K::kUnbind ? "unbind" : "split");
      const DimRole r = scale_role(d);
      std::vector<int64_t> extents;
      for (const std::string& t : mv.targets) {
        const Shape& ts = weight_outputs.at(t).shape;
        extents.push_back(mv.kind == K::kUnbind ? 1 : ts[static_cast<size_t>(d)]);
      }
      if (r.role == Role::kFixed || (mv.kind == K::kUnbind && r.role == Role::kBlocked)) {
        refuse(str_cat("splitting '", first, "' along dim ", d,
                       " would cut through the blocks of its scale '", names.scale_of(first), "'"));
      }
      if (r.role == Role::kCopied) {
        so = CompanionOp::of(C::kCopy);
      } else if (mv.kind == K::kUnbind) {
        so = CompanionOp::of(C::kUnbind, d);
      } else {
        so = CompanionOp::of(C::kSplit, d);
        int64_t used = 0;
        for (size_t i = 0; i < extents.size(); ++i) {
          if (i + 1 < extents.size()) {
            if (extents[i] % r.unit != 0) {
              refuse(str_cat("splitting '", first, "' along dim ", d, ": the piece '",
                             mv.targets[i], "' gets ", extents[i],
                             " there, not a multiple of the "
                             "block's ",
                             r.unit, ", so one scale of '", names.scale_of(first),
                             "' would have to serve two pieces"));
            }
            so.sizes.push_back(extents[i] / r.unit);
            used += so.sizes.back();
          } else {
            so.sizes.push_back(s[0].shape[static_cast<size_t>(d)] - used);
          }
        }
      }
      so.outputs = mv.targets.size();
      if (has_global) {
        if (!global_mirrored(d)) {
          go = CompanionOp::of(C::kCopy);
        } else if (mv.kind == K::kUnbind) {
          go = CompanionOp::of(C::kUnbind, d);
          go.piece_shape = undo_.global_piece_shape;
        } else {
          go = CompanionOp::of(C::kSplit, d);
          go.sizes = extents;
        }
        go.outputs = mv.targets.size();
      }
      break;
    }
  }
  if (has_global) p.globals = go;
  // The companions of the outputs, and every output pair fits.
  const std::vector<TensorSpec> s_out = so.infer(s);
  const std::vector<TensorSpec> g_out = has_global ? go.infer(g) : std::vector<TensorSpec>{};
  for (size_t j = 0; j < mv.targets.size(); ++j) {
    const std::string& t = mv.targets[j];
    const std::string sn = names.scale_of(t), gn = names.global_scale_of(t);
    p.outputs[sn] = s_out[j];
    if (has_global) p.outputs[gn] = g_out[j];
    try {
      logical_spec(scheme_, t, weight_outputs.at(t), sn, s_out[j], gn,
                   has_global ? &g_out[j] : nullptr);
    } catch (const Error&) {
      rethrow_with(what);
    }
  }
  return p;
}

SpecDict QuantizedMapper::infer(const SpecDict& group) const {
  detail::check_group_inputs(*this, *groups_.begin(), group);
  return plan(group).outputs;
}

StateDict QuantizedMapper::apply(StateDict group) const {
  detail::check_group_inputs(*this, *groups_.begin(), group);
  const Plan p = plan(specs_of(group));
  const QuantNames& names = scheme_.names;
  StateDict weights;
  std::vector<Tensor> scales, globals;
  for (const std::string& name : move_->sources) {
    weights.emplace(name, std::move(group.at(name)));
    scales.push_back(std::move(group.at(names.scale_of(name))));
    if (p.globals) globals.push_back(std::move(group.at(names.global_scale_of(name))));
  }
  group.clear();
  std::vector<Tensor> s_out, g_out;
  try {
    s_out = p.scales.apply(scales);
    if (p.globals) g_out = p.globals->apply(globals);
  } catch (const Error&) {
    rethrow_with(describe() + ": ");
  }
  StateDict out = weights_->apply(std::move(weights));
  for (size_t j = 0; j < move_->targets.size(); ++j) {
    out.emplace(names.scale_of(move_->targets[j]), s_out[j]);
    if (p.globals) out.emplace(names.global_scale_of(move_->targets[j]), g_out[j]);
  }
  return out;
}

MapperPtr QuantizedMapper::do_inverse(const SpecDict& input_specs) const {
  const StateGroup& g = *groups_.begin();
  SpecDict specs;
  for (const std::string& key : g.inputs) {
    auto it = input_specs.find(key);
    if (it == input_specs.end()) {
      throw NotInvertibleError(str_cat(describe(), ": its inverse needs the spec of '", key,
                                       "' (call inverse(input_specs))"));
    }
    specs.emplace(key, it->second);
  }
  const Plan p = plan(specs);  // the forward direction must hold for these specs
  Undo undo;
  undo.scales_copied = p.scales.kind == CompanionOp::Kind::kCopy;
  if (p.globals) {
    undo.global_scales_copied = p.globals->kind == CompanionOp::Kind::kCopy;
    const Shape& g = specs.at(scheme_.names.global_scale_of(move_->sources[0])).shape;
    if (per_tensor(g)) undo.global_piece_shape = g;
  }
  return std::make_shared<QuantizedMapper>(weights_->inverse(specs), scheme_, std::move(undo));
}

std::string QuantizedMapper::describe() const {
  return str_cat("quantized(", weights_->describe(), ", ", quant_format_name(scheme_.format),
                 " with scales '*", scheme_.names.scale_suffix, "'",
                 scheme_.names.global_scale_suffix.empty()
                     ? ""
                     : str_cat(" and '*", scheme_.names.global_scale_suffix, "'"),
                 ")");
}

// ---- factories ----------------------------------------------------------------------------------

MapperPtr dequantize(std::string source, std::string scale, std::string target, Dequantization how,
                     std::string global_scale) {
  return std::make_shared<DequantizeMapper>(std::move(source), std::move(scale),
                                            std::move(global_scale), std::move(target), how);
}

MapperPtr quantized(MapperPtr weights, QuantScheme scheme) {
  return std::make_shared<QuantizedMapper>(std::move(weights), std::move(scheme));
}

}  // namespace d9d::mapper
