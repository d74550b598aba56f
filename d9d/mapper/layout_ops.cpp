// The model-layout ops of leaf.hpp: RoPE row order, Megatron's grouped QKV, interleaving, stacked
// experts, tied embeddings. Each validates in its infer side (which apply() runs first) and moves
// bytes with core's views and copies only, so it runs on any device core copies on.
//
// Note [model layouts]: the layouts, each checked against the code that defines it.
//   - RoPE. transformers' rotate-half rotary embedding pairs element i of a head with element
//     i + head_dim / 2; Meta's original checkpoints (and GGUF) pair 2i with 2i + 1. Viewing a q or
//     k weight's rows as [n_heads, head_dim / 2, 2] (interleaved) or [n_heads, 2, head_dim / 2]
//     (rotate-half), the conversion swaps the two inner dims: transformers'
//     models/llama/convert_llama_weights_to_hf.py permute(w, n_heads, dim1, dim2) =
//     w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2) goes to
//     HF (kToHf), and llama.cpp's convert_hf_to_gguf.py LlamaModel.permute(weights, n_head,
//     n_head_kv) = weights.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2)
//     .reshape(weights.shape) comes back (kFromHf); both take n_heads = the KV head count for k,
//     and llama.cpp applies the same to 1-D q / k biases (`*rest` empty).
//   - Megatron's QKV (Megatron-Bridge param_mapping.py merge_qkv_weights, QKVMapping): q viewed as
//     [n_heads, d, ...], k and v as [n_kv_heads, d, ...]; for each group i < n_kv_heads the q heads
//     i * g .. (i + 1) * g - 1 (g = n_heads / n_kv_heads), then k head i, then v head i, all
//     concatenated along dim 0; biases the same with no trailing dims.
//   - gpt-oss (transformers models/gpt_oss/modeling_gpt_oss.py GptOssExperts): gate_up_proj is
//     [E, H, 2I] and `gate, up = gate_up[..., ::2], gate_up[..., 1::2]`: gate the even elements
//     of the last dim, up the odd ones (gate_up_proj_bias [E, 2I] likewise).
//   - Stacked experts (transformers v5 conversion_mapping.py: mixtral, qwen2_moe and the models
//     that copy it, qwen3_moe and deepseek_v3 among them): experts.*.w1 / gate_proj and w3 /
//     up_proj go through MergeModulelist(dim=0) (torch.stack of every expert's [I, H]) then
//     Concatenate(dim=1), so gate_up_proj is [E, 2I, H] with gate rows first in every expert;
//     w2 / down_proj [H, I] stack into down_proj [E, H, I].
#include <d9d/mapper/leaf.hpp>

#include <algorithm>
#include <limits>

#include "internal.hpp"
#include "shape_rules.hpp"

namespace d9d::mapper {

using d9d::detail::str_cat;

namespace {

// `lead`, then the dims of `shape` from `skip` on: the views below regroup leading dims.
Shape with_leading(std::initializer_list<int64_t> lead, const Shape& shape, size_t skip) {
  Shape out(lead);
  for (size_t i = skip; i < shape.size(); ++i) out.push_back(shape[i]);
  return out;
}

void check_same_shape(const std::vector<std::string>& names,
                      const std::vector<const TensorSpec*>& inputs, const char* op) {
  for (size_t i = 1; i < inputs.size(); ++i) {
    D9D_CHECK(inputs[i]->shape == inputs[0]->shape, op,
              ": expected every tensor to have the shape ", inputs[0]->shape, " of '", names[0],
              "', but '", names[i], "' has ", inputs[i]->shape);
  }
}

// The number of parts of every expert (they must agree).
int64_t parts_of(const char* op, const std::vector<std::vector<std::string>>& experts) {
  D9D_CHECK(!experts.empty(), op, ": needs at least one expert");
  const size_t parts = experts[0].size();
  D9D_CHECK(parts > 0, op, ": expert 0 has no parts");
  for (size_t e = 0; e < experts.size(); ++e) {
    D9D_CHECK(experts[e].size() == parts, op, ": expert ", e, " has ", experts[e].size(),
              " parts, expert 0 has ", parts);
  }
  return static_cast<int64_t>(parts);
}

// The names expert by expert ([e0p0, e0p1, e1p0, ...]).
std::vector<std::string> flatten(const std::vector<std::vector<std::string>>& experts) {
  std::vector<std::string> out;
  for (const auto& parts : experts) out.insert(out.end(), parts.begin(), parts.end());
  return out;
}

std::vector<std::vector<std::string>> regroup(const std::vector<std::string>& flat, int64_t parts) {
  std::vector<std::vector<std::string>> out;
  for (size_t i = 0; i < flat.size(); i += static_cast<size_t>(parts)) {
    out.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(i),
                     flat.begin() + static_cast<std::ptrdiff_t>(i + static_cast<size_t>(parts)));
  }
  return out;
}

// The dim of a part's dims `part_dim` once the experts' dim `dim` is inserted before or after it.
int64_t part_dim_in_stack(int64_t part_dim, int64_t dim) {
  return dim <= part_dim ? part_dim + 1 : part_dim;
}

}  // namespace

// ---- permute_for_rope ---------------------------------------------------------------------------

PermuteForRopeMapper::PermuteForRopeMapper(std::string source, std::string target, int64_t n_heads,
                                           RopeDirection direction, std::optional<int64_t> head_dim)
    : SingleTensorMapper(std::move(source), std::move(target)),
      n_heads_(n_heads),
      direction_(direction),
      head_dim_(head_dim) {
  D9D_CHECK(n_heads_ > 0, "permute_for_rope(", this->source(), "): n_heads must be positive, got ",
            n_heads_);
  D9D_CHECK(!head_dim_ || *head_dim_ > 0, "permute_for_rope(", this->source(),
            "): head_dim must be positive, got ", *head_dim_);
}

TensorSpec PermuteForRopeMapper::infer_one(const TensorSpec& input) const {
  detail::check_elements(input.dtype, "permute_for_rope");
  D9D_CHECK_INDEX(!input.shape.empty(), "permute_for_rope: a 0-dim tensor has no rows");
  const int64_t rows = input.shape[0];
  // (Divisions, not products: n_heads may be any positive value a spec's param gives.)
  D9D_CHECK(rows % n_heads_ == 0 && rows / n_heads_ % 2 == 0, "permute_for_rope: ", rows,
            " rows are not ", n_heads_, " heads of an even head_dim");
  D9D_CHECK(!head_dim_ || rows / n_heads_ == *head_dim_, "permute_for_rope: ", rows,
            " rows are not ", n_heads_, " heads of head_dim ", *head_dim_);
  return input;
}

Tensor PermuteForRopeMapper::apply_one(Tensor input) const {
  const Shape shape = input.shape();
  const int64_t half = shape[0] / n_heads_ / 2;
  // kToHf reads the rows as [n_heads, half, 2] (interleaved pairs), kFromHf as [n_heads, 2, half].
  const Shape heads = direction_ == RopeDirection::kToHf
                          ? with_leading({n_heads_, half, 2}, shape, 1)
                          : with_leading({n_heads_, 2, half}, shape, 1);
  return input.reshape(heads).transpose(1, 2).contiguous().reshape(shape);
}

MapperPtr PermuteForRopeMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<PermuteForRopeMapper>(
      target(), source(), n_heads_,
      direction_ == RopeDirection::kToHf ? RopeDirection::kFromHf : RopeDirection::kToHf,
      head_dim_);
}

std::string PermuteForRopeMapper::describe() const {
  return describe_op(
      "permute_for_rope",
      str_cat("n_heads ", n_heads_, head_dim_ ? str_cat(", head_dim ", *head_dim_) : "",
              direction_ == RopeDirection::kToHf ? ", to_hf" : ", from_hf"));
}

// Rows move within their head only: the box's rows widened to whole heads (Note [slice pushdown]
// in region.cpp).
std::optional<Region> PermuteForRopeMapper::input_region(const TensorSpec& input,
                                                         const Region& wanted) const {
  const int64_t head = input.shape[0] / n_heads_;
  Region out = wanted;
  if (wanted.numel() > 0) {
    out.begin[0] = wanted.begin[0] / head * head;
    out.end[0] = (wanted.end[0] + head - 1) / head * head;
  }
  return out;
}

// ---- interleave_qkv, deinterleave_qkv -----------------------------------------------------------

namespace {

void check_heads(const char* op, int64_t n_heads, int64_t n_kv_heads) {
  D9D_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, op, ": n_heads ", n_heads,
            " must be a positive multiple of n_kv_heads ", n_kv_heads);
  // n_heads + 2 * n_kv_heads heads must not overflow (n_kv_heads <= n_heads).
  D9D_CHECK(n_heads <= std::numeric_limits<int64_t>::max() / 4, op, ": n_heads ", n_heads,
            " is out of range");
}

}  // namespace

InterleaveQkvMapper::InterleaveQkvMapper(std::vector<std::string> qkv, std::string target,
                                         int64_t n_heads, int64_t n_kv_heads)
    : ManyToOneMapper("interleave_qkv", std::move(qkv), std::move(target), 0),
      n_heads_(n_heads),
      n_kv_heads_(n_kv_heads) {
  D9D_CHECK(sources().size() == 3, "interleave_qkv(", this->target(),
            "): expected q, k and v, got ", detail::keys_str(sources()));
  check_heads("interleave_qkv", n_heads_, n_kv_heads_);
}

TensorSpec InterleaveQkvMapper::infer_many(const std::vector<const TensorSpec*>& inputs) const {
  detail::check_joinable(sources(), inputs, "interleave_qkv");
  const Shape& q = inputs[0]->shape;
  D9D_CHECK_INDEX(!q.empty(), "interleave_qkv: '", sources()[0], "' is 0-dim");
  D9D_CHECK(q[0] % n_heads_ == 0, "interleave_qkv: '", sources()[0], "' has ", q[0],
            " rows, not a multiple of n_heads ", n_heads_);
  const int64_t head_dim = q[0] / n_heads_;
  for (size_t i = 1; i < 3; ++i) {
    const Shape& s = inputs[i]->shape;
    const Shape want = with_leading({n_kv_heads_ * head_dim}, q, 1);
    D9D_CHECK(s == want, "interleave_qkv: '", sources()[i], "' has shape ", s, ", expected ", want,
              " (", n_kv_heads_, " KV heads of head_dim ", head_dim, ", as '", sources()[0],
              "' of shape ", q, " has ", n_heads_, " heads)");
  }
  return {inputs[0]->dtype, with_leading({(n_heads_ + 2 * n_kv_heads_) * head_dim}, q, 1)};
}

Tensor InterleaveQkvMapper::apply_many(const std::vector<Tensor>& inputs) const {
  const Shape& q = inputs[0].shape();
  const int64_t head_dim = q[0] / n_heads_;
  const int64_t group = n_heads_ / n_kv_heads_;
  // (groups, rows of the group's part, ...) for each of q, k, v; joined along the rows.
  const Tensor parts =
      d9d::cat({inputs[0].reshape(with_leading({n_kv_heads_, group * head_dim}, q, 1)),
                inputs[1].reshape(with_leading({n_kv_heads_, head_dim}, q, 1)),
                inputs[2].reshape(with_leading({n_kv_heads_, head_dim}, q, 1))},
               1);
  return parts.reshape(with_leading({(n_heads_ + 2 * n_kv_heads_) * head_dim}, q, 1));
}

// Note [slice pushdown] through the per-KV-group layout: the output's rows come in groups of
// (n_heads / n_kv_heads + 2) heads, KV group g holding q heads of g, then k head g, then v head g.
// A box of rows widens to whole groups, each q, k and v read for those groups; a box of rows of
// q, k or v the other way round widens to the groups holding them.
namespace {

struct KvGroups {
  int64_t head_dim, q_heads_per_group;
  int64_t rows() const { return (q_heads_per_group + 2) * head_dim; }
};

// The KV groups [first, last) whose rows of a part (q: q_heads_per_group heads a group; k, v: one)
// meet [begin, end).
std::pair<int64_t, int64_t> groups_of(int64_t begin, int64_t end, int64_t rows_per_group) {
  return {begin / rows_per_group, (end + rows_per_group - 1) / rows_per_group};
}

Region with_rows(Region box, int64_t begin, int64_t end) {
  box.begin[0] = begin;
  box.end[0] = end;
  return box;
}

}  // namespace

std::optional<std::vector<std::optional<Region>>> InterleaveQkvMapper::input_regions_many(
    const std::vector<const TensorSpec*>& inputs, const Region& wanted) const {
  const KvGroups g{inputs[0]->shape[0] / n_heads_, n_heads_ / n_kv_heads_};
  if (wanted.numel() == 0) return std::vector<std::optional<Region>>(3);
  const auto [first, last] = groups_of(wanted.begin[0], wanted.end[0], g.rows());
  const int64_t q_rows = g.q_heads_per_group * g.head_dim;
  return std::vector<std::optional<Region>>{
      with_rows(wanted, first * q_rows, last * q_rows),
      with_rows(wanted, first * g.head_dim, last * g.head_dim),
      with_rows(wanted, first * g.head_dim, last * g.head_dim)};
}

MapperPtr InterleaveQkvMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<DeinterleaveQkvMapper>(target(), sources(), n_heads_, n_kv_heads_);
}

std::string InterleaveQkvMapper::describe() const {
  return str_cat("interleave_qkv(", detail::keys_str(sources()), " -> ", target(), ", n_heads ",
                 n_heads_, ", n_kv_heads ", n_kv_heads_, ")");
}

DeinterleaveQkvMapper::DeinterleaveQkvMapper(std::string source, std::vector<std::string> qkv,
                                             int64_t n_heads, int64_t n_kv_heads)
    : OneToManyMapper("deinterleave_qkv", std::move(source), std::move(qkv), 0),
      n_heads_(n_heads),
      n_kv_heads_(n_kv_heads) {
  D9D_CHECK(targets().size() == 3, "deinterleave_qkv(", this->source(),
            "): expected q, k and v, got ", detail::keys_str(targets()));
  check_heads("deinterleave_qkv", n_heads_, n_kv_heads_);
}

std::vector<TensorSpec> DeinterleaveQkvMapper::infer_pieces(const TensorSpec& input) const {
  detail::check_elements(input.dtype, "deinterleave_qkv");
  const Shape& s = input.shape;
  D9D_CHECK_INDEX(!s.empty(), "deinterleave_qkv: a 0-dim tensor has no rows");
  const int64_t heads = n_heads_ + 2 * n_kv_heads_;
  D9D_CHECK(s[0] % heads == 0, "deinterleave_qkv: ", s[0], " rows are not ", n_heads_,
            " q heads and 2 x ", n_kv_heads_, " KV heads of one head_dim");
  const int64_t head_dim = s[0] / heads;
  const TensorSpec kv{input.dtype, with_leading({n_kv_heads_ * head_dim}, s, 1)};
  return {TensorSpec{input.dtype, with_leading({n_heads_ * head_dim}, s, 1)}, kv, kv};
}

std::vector<Tensor> DeinterleaveQkvMapper::apply_pieces(const Tensor& input) const {
  const Shape& s = input.shape();
  const int64_t head_dim = s[0] / (n_heads_ + 2 * n_kv_heads_);
  const int64_t group = n_heads_ / n_kv_heads_;
  const Tensor groups = input.reshape(with_leading({n_kv_heads_, (group + 2) * head_dim}, s, 1));
  return {groups.narrow(1, 0, group * head_dim).reshape(with_leading({n_heads_ * head_dim}, s, 1)),
          groups.narrow(1, group * head_dim, head_dim)
              .reshape(with_leading({n_kv_heads_ * head_dim}, s, 1)),
          groups.narrow(1, (group + 1) * head_dim, head_dim)
              .reshape(with_leading({n_kv_heads_ * head_dim}, s, 1))};
}

std::optional<Region> DeinterleaveQkvMapper::input_region_pieces(
    const TensorSpec& input, const std::vector<std::optional<Region>>& wanted) const {
  const KvGroups g{input.shape[0] / (n_heads_ + 2 * n_kv_heads_), n_heads_ / n_kv_heads_};
  std::optional<Region> out;
  for (size_t part = 0; part < 3; ++part) {
    if (!wanted[part] || wanted[part]->numel() == 0) continue;
    const int64_t rows_per_group = part == 0 ? g.q_heads_per_group * g.head_dim : g.head_dim;
    const auto [first, last] =
        groups_of(wanted[part]->begin[0], wanted[part]->end[0], rows_per_group);
    const Region r = with_rows(*wanted[part], first * g.rows(), last * g.rows());
    out = out ? out->hull(r) : r;
  }
  if (!out) {  // nothing of any part: an empty box
    out = Region::whole(input.shape);
    out->end[0] = out->begin[0];
  }
  return out;
}

MapperPtr DeinterleaveQkvMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<InterleaveQkvMapper>(targets(), source(), n_heads_, n_kv_heads_);
}

std::string DeinterleaveQkvMapper::describe() const {
  return str_cat("deinterleave_qkv(", source(), " -> ", detail::keys_str(targets()), ", n_heads ",
                 n_heads_, ", n_kv_heads ", n_kv_heads_, ")");
}

// ---- interleave, deinterleave -------------------------------------------------------------------

InterleaveMapper::InterleaveMapper(std::vector<std::string> sources, std::string target,
                                   int64_t dim)
    : ManyToOneMapper("interleave", std::move(sources), std::move(target), dim) {}

TensorSpec InterleaveMapper::infer_many(const std::vector<const TensorSpec*>& inputs) const {
  detail::check_joinable(sources(), inputs, "interleave");
  check_same_shape(sources(), inputs, "interleave");
  Shape out = inputs[0]->shape;
  D9D_CHECK_INDEX(!out.empty(), "interleave: '", sources()[0], "' is 0-dim");
  const int64_t d = detail::wrap_dim(dim(), static_cast<int64_t>(out.size()), "interleave");
  out[static_cast<size_t>(d)] *= static_cast<int64_t>(inputs.size());
  return {inputs[0]->dtype, std::move(out)};
}

Tensor InterleaveMapper::apply_many(const std::vector<Tensor>& inputs) const {
  const Shape& s = inputs[0].shape();
  const int64_t d = detail::wrap_dim(dim(), static_cast<int64_t>(s.size()), "interleave");
  // Stacked after `d`, the sources' elements alternate once the two dims are merged.
  Shape out = s;
  out[static_cast<size_t>(d)] *= static_cast<int64_t>(inputs.size());
  return d9d::stack(inputs, d + 1).reshape(out);
}

MapperPtr InterleaveMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<DeinterleaveMapper>(target(), sources(), dim());
}

std::string InterleaveMapper::describe() const {
  return describe_op("interleave");
}

DeinterleaveMapper::DeinterleaveMapper(std::string source, std::vector<std::string> targets,
                                       int64_t dim)
    : OneToManyMapper("deinterleave", std::move(source), std::move(targets), dim) {}

std::vector<TensorSpec> DeinterleaveMapper::infer_pieces(const TensorSpec& input) const {
  detail::check_elements(input.dtype, "deinterleave");
  const auto n = static_cast<int64_t>(input.shape.size());
  D9D_CHECK_INDEX(n > 0, "deinterleave: cannot deinterleave a 0-dim tensor");
  const int64_t d = detail::wrap_dim(dim(), n, "deinterleave");
  const auto count = static_cast<int64_t>(targets().size());
  const int64_t size = input.shape[static_cast<size_t>(d)];
  D9D_CHECK(size % count == 0, "deinterleave: dim ", dim(), " of shape ", input.shape, " has size ",
            size, ", not a multiple of the ", count, " targets");
  TensorSpec piece = input;
  piece.shape[static_cast<size_t>(d)] = size / count;
  return std::vector<TensorSpec>(targets().size(), piece);
}

std::vector<Tensor> DeinterleaveMapper::apply_pieces(const Tensor& input) const {
  const Shape& s = input.shape();
  const auto d =
      static_cast<size_t>(detail::wrap_dim(dim(), static_cast<int64_t>(s.size()), "deinterleave"));
  const auto count = static_cast<int64_t>(targets().size());
  // Dim d as (size / count, count): target i is index i of the inner one.
  Shape split = s;
  split[d] = s[d] / count;
  split.insert(d + 1, count);
  const Tensor grouped = input.reshape(split);
  std::vector<Tensor> out;
  for (int64_t i = 0; i < count; ++i) out.push_back(grouped.select(static_cast<int64_t>(d) + 1, i));
  return out;
}

MapperPtr DeinterleaveMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<InterleaveMapper>(targets(), source(), dim());
}

std::string DeinterleaveMapper::describe() const {
  return describe_op("deinterleave", "");
}

// ---- stack_experts, unstack_experts -------------------------------------------------------------

StackExpertsMapper::StackExpertsMapper(std::vector<std::vector<std::string>> experts,
                                       std::string target, int64_t dim, int64_t part_dim)
    : ManyToOneMapper("stack_experts", flatten(experts), std::move(target), dim),
      parts_(parts_of("stack_experts", experts)),
      part_dim_(part_dim) {}

int64_t StackExpertsMapper::experts() const {
  return static_cast<int64_t>(sources().size()) / parts_;
}

TensorSpec StackExpertsMapper::infer_many(const std::vector<const TensorSpec*>& inputs) const {
  detail::check_joinable(sources(), inputs, "stack_experts");
  check_same_shape(sources(), inputs, "stack_experts");
  Shape out = inputs[0]->shape;
  if (parts_ > 1) {
    D9D_CHECK_INDEX(!out.empty(), "stack_experts: '", sources()[0],
                    "' is 0-dim, so its parts cannot be joined");
    const int64_t pd =
        detail::wrap_dim(part_dim_, static_cast<int64_t>(out.size()), "stack_experts");
    out[static_cast<size_t>(pd)] *= parts_;
  }
  const int64_t d = detail::wrap_dim(dim(), static_cast<int64_t>(out.size()) + 1, "stack_experts");
  out.insert(static_cast<size_t>(d), experts());
  return {inputs[0]->dtype, std::move(out)};
}

Tensor StackExpertsMapper::apply_many(const std::vector<Tensor>& inputs) const {
  const auto n = static_cast<int64_t>(inputs[0].shape().size());
  const int64_t d = detail::wrap_dim(dim(), n + 1, "stack_experts");
  if (parts_ == 1) return d9d::stack(inputs, d);
  const int64_t pd = detail::wrap_dim(part_dim_, n, "stack_experts");
  if (d == 0 && pd == 0) {
    // [E * P, rows, ...] in expert-major order is [E, P * rows, ...]: one copy.
    Shape out = inputs[0].shape();
    out[0] *= parts_;
    out.insert(0, experts());
    return d9d::stack(inputs, 0).reshape(out);
  }
  // Each part stacked over the experts, then the parts joined.
  std::vector<Tensor> stacked;
  for (int64_t p = 0; p < parts_; ++p) {
    std::vector<Tensor> of_part;
    for (int64_t e = 0; e < experts(); ++e)
      of_part.push_back(inputs[static_cast<size_t>(e * parts_ + p)]);
    stacked.push_back(d9d::stack(of_part, d));
  }
  return d9d::cat(stacked, part_dim_in_stack(pd, d));
}

// Expert e is index e of the stacked dim, and part p of it holds rows [p * rows, (p + 1) *
// rows) of the joined part dim: each wanted expert's parts get the box cut to theirs (Note [slice
// pushdown] in region.cpp); experts outside the box are not read.
std::optional<std::vector<std::optional<Region>>> StackExpertsMapper::input_regions_many(
    const std::vector<const TensorSpec*>& inputs, const Region& wanted) const {
  const auto n = static_cast<int64_t>(inputs[0]->shape.size());
  const auto d = static_cast<size_t>(detail::wrap_dim(dim(), n + 1, "stack_experts"));
  Region expert = wanted;  // the box in an expert's dims (its parts joined)
  expert.begin.erase(d);
  expert.end.erase(d);
  const auto pd =
      parts_ > 1 ? static_cast<size_t>(detail::wrap_dim(part_dim_, n, "stack_experts")) : 0;
  const int64_t rows = parts_ > 1 ? inputs[0]->shape[pd] : 0;
  std::vector<std::optional<Region>> out(inputs.size());
  for (int64_t e = wanted.begin[d]; e < wanted.end[d]; ++e) {
    for (int64_t p = 0; p < parts_; ++p) {
      Region r = expert;
      if (parts_ > 1) {
        const int64_t begin = std::max(r.begin[pd], p * rows);
        const int64_t end = std::min(r.end[pd], (p + 1) * rows);
        if (begin >= end) continue;
        r.begin[pd] = begin - p * rows;
        r.end[pd] = end - p * rows;
      }
      out[static_cast<size_t>(e * parts_ + p)] = std::move(r);
    }
  }
  return out;
}

MapperPtr StackExpertsMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<UnstackExpertsMapper>(target(), regroup(sources(), parts_), dim(),
                                                part_dim_);
}

std::string StackExpertsMapper::describe() const {
  return str_cat("stack_experts(", detail::keys_str(sources()), " -> ", target(), ", ", experts(),
                 " experts x ", parts_, " parts, dim ", dim(), ", part_dim ", part_dim_, ")");
}

UnstackExpertsMapper::UnstackExpertsMapper(std::string source,
                                           std::vector<std::vector<std::string>> experts,
                                           int64_t dim, int64_t part_dim)
    : OneToManyMapper("unstack_experts", std::move(source), flatten(experts), dim),
      parts_(parts_of("unstack_experts", experts)),
      part_dim_(part_dim) {}

int64_t UnstackExpertsMapper::experts() const {
  return static_cast<int64_t>(targets().size()) / parts_;
}

std::vector<TensorSpec> UnstackExpertsMapper::infer_pieces(const TensorSpec& input) const {
  detail::check_elements(input.dtype, "unstack_experts");
  const auto n = static_cast<int64_t>(input.shape.size());
  D9D_CHECK_INDEX(n > 0, "unstack_experts: cannot unstack a 0-dim tensor");
  const int64_t d = detail::wrap_dim(dim(), n, "unstack_experts");
  D9D_CHECK(input.shape[static_cast<size_t>(d)] == experts(), "unstack_experts: dim ", dim(),
            " of shape ", input.shape, " has size ", input.shape[static_cast<size_t>(d)],
            ", but there are ", experts(), " experts");
  TensorSpec piece = input;
  piece.shape.erase(static_cast<size_t>(d));
  if (parts_ > 1) {
    D9D_CHECK_INDEX(!piece.shape.empty(), "unstack_experts: an expert of shape ", piece.shape,
                    " has no dim to split into ", parts_, " parts");
    const auto pd = static_cast<size_t>(
        detail::wrap_dim(part_dim_, static_cast<int64_t>(piece.shape.size()), "unstack_experts"));
    D9D_CHECK(piece.shape[pd] % parts_ == 0, "unstack_experts: part_dim ", part_dim_,
              " of an expert's shape ", piece.shape, " is not ", parts_, " equal parts");
    piece.shape[pd] /= parts_;
  }
  return std::vector<TensorSpec>(targets().size(), piece);
}

std::vector<Tensor> UnstackExpertsMapper::apply_pieces(const Tensor& input) const {
  const int64_t d = detail::wrap_dim(dim(), input.dim(), "unstack_experts");
  std::vector<Tensor> out;
  for (int64_t e = 0; e < experts(); ++e) {
    const Tensor expert = input.select(d, e);
    if (parts_ == 1) {
      out.push_back(expert);
      continue;
    }
    for (Tensor& part : d9d::chunk(expert, parts_, part_dim_)) out.push_back(std::move(part));
  }
  return out;
}

MapperPtr UnstackExpertsMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<StackExpertsMapper>(regroup(targets(), parts_), source(), dim(),
                                              part_dim_);
}

std::string UnstackExpertsMapper::describe() const {
  return str_cat("unstack_experts(", source(), " -> ", detail::keys_str(targets()), ", ", experts(),
                 " experts x ", parts_, " parts, dim ", dim(), ", part_dim ", part_dim_, ")");
}

// ---- untie_embeddings, tie_embeddings -----------------------------------------------------------

UntieEmbeddingsMapper::UntieEmbeddingsMapper(std::string embedding, std::string lm_head)
    : OneToManyMapper("untie_embeddings", embedding, {embedding, std::move(lm_head)}, 0) {}

std::vector<TensorSpec> UntieEmbeddingsMapper::infer_pieces(const TensorSpec& input) const {
  return {input, input};
}

std::vector<Tensor> UntieEmbeddingsMapper::apply_pieces(const Tensor& input) const {
  return {input, input};
}

// Both outputs are the input: the hull of their boxes.
std::optional<Region> UntieEmbeddingsMapper::input_region_pieces(
    const TensorSpec&, const std::vector<std::optional<Region>>& wanted) const {
  std::optional<Region> out;
  for (const auto& w : wanted) {
    if (w) out = out ? out->hull(*w) : *w;
  }
  return out;
}

MapperPtr UntieEmbeddingsMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<TieEmbeddingsMapper>(targets()[0], targets()[1]);
}

std::string UntieEmbeddingsMapper::describe() const {
  return str_cat("untie_embeddings(", source(), " -> ", targets()[1], ")");
}

TieEmbeddingsMapper::TieEmbeddingsMapper(std::string embedding, std::string lm_head)
    : ManyToOneMapper("tie_embeddings", {embedding, std::move(lm_head)}, embedding, 0) {}

TensorSpec TieEmbeddingsMapper::infer_many(const std::vector<const TensorSpec*>& inputs) const {
  D9D_CHECK(*inputs[0] == *inputs[1], "tie_embeddings: '", sources()[1], "' is ", *inputs[1],
            " but '", sources()[0], "' is ", *inputs[0], ": they cannot be tied");
  return *inputs[0];
}

Tensor TieEmbeddingsMapper::apply_many(const std::vector<Tensor>& inputs) const {
  const Tensor& embedding = inputs[0];
  const Tensor& lm_head = inputs[1];
  const bool same_view = embedding.device() == lm_head.device() &&
                         embedding.data_ptr() == lm_head.data_ptr() &&
                         embedding.strides() == lm_head.strides();
  D9D_CHECK(same_view || d9d::equal(embedding, lm_head), "tie_embeddings: '", sources()[1],
            "' differs from '", sources()[0],
            "', so the embeddings are not tied and dropping it would lose it (keep it, or set the "
            "spec's tied param to false)");
  return embedding;
}

MapperPtr TieEmbeddingsMapper::do_inverse(const SpecDict&) const {
  return std::make_shared<UntieEmbeddingsMapper>(sources()[0], sources()[1]);
}

std::string TieEmbeddingsMapper::describe() const {
  return str_cat("tie_embeddings(", sources()[0], ", dropping ", sources()[1], ")");
}

// ---- factories ----------------------------------------------------------------------------------

MapperPtr permute_for_rope(std::string name, int64_t n_heads, RopeDirection direction) {
  std::string target = name;
  return std::make_shared<PermuteForRopeMapper>(std::move(name), std::move(target), n_heads,
                                                direction);
}
MapperPtr interleave_qkv(std::vector<std::string> qkv, std::string target, int64_t n_heads,
                         int64_t n_kv_heads) {
  return std::make_shared<InterleaveQkvMapper>(std::move(qkv), std::move(target), n_heads,
                                               n_kv_heads);
}
MapperPtr deinterleave_qkv(std::string source, std::vector<std::string> qkv, int64_t n_heads,
                           int64_t n_kv_heads) {
  return std::make_shared<DeinterleaveQkvMapper>(std::move(source), std::move(qkv), n_heads,
                                                 n_kv_heads);
}
MapperPtr interleave(std::vector<std::string> sources, std::string target, int64_t dim) {
  return std::make_shared<InterleaveMapper>(std::move(sources), std::move(target), dim);
}
MapperPtr deinterleave(std::string source, std::vector<std::string> targets, int64_t dim) {
  return std::make_shared<DeinterleaveMapper>(std::move(source), std::move(targets), dim);
}
MapperPtr stack_experts(std::vector<std::vector<std::string>> experts, std::string target,
                        int64_t dim, int64_t part_dim) {
  return std::make_shared<StackExpertsMapper>(std::move(experts), std::move(target), dim, part_dim);
}
MapperPtr unstack_experts(std::string source, std::vector<std::vector<std::string>> experts,
                          int64_t dim, int64_t part_dim) {
  return std::make_shared<UnstackExpertsMapper>(std::move(source), std::move(experts), dim,
                                                part_dim);
}
MapperPtr untie_embeddings(std::string embedding, std::string lm_head) {
  return std::make_shared<UntieEmbeddingsMapper>(std::move(embedding), std::move(lm_head));
}
MapperPtr tie_embeddings(std::string embedding, std::string lm_head) {
  return std::make_shared<TieEmbeddingsMapper>(std::move(embedding), std::move(lm_head));
}

}  // namespace d9d::mapper
