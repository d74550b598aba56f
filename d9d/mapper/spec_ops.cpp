// The op table of spec files, and the rule parser that reads each family's fields.
#include "spec_ops.hpp"

#include <d9d/mapper/leaf.hpp>
#include <d9d/mapper/quantized.hpp>

namespace d9d::mapper::detail {

using d9d::detail::str_cat;

namespace {

std::string quant_format_list() {
  std::string list;
  for (int i = 0; i < kNumQuantFormats; ++i) {
    list += str_cat(i ? ", " : "", quant_format_name(static_cast<QuantFormat>(i)));
  }
  return list;
}

int64_t dim_or_zero(const Node& node) {
  auto d = node.find("dim");
  return d ? d->integer() : 0;
}

int64_t positive(const Node& node) {
  const int64_t v = node.integer();
  if (v < 1) node.fail(str_cat("expected a positive integer, got ", v));
  return v;
}

// "n_kv_heads": positive, dividing n_heads.
int64_t kv_heads(const Node& node, int64_t n_heads) {
  const Node n = node.at("n_kv_heads");
  const int64_t v = positive(n);
  if (n_heads % v != 0) n.fail(str_cat("n_heads ", n_heads, " is not a multiple of ", v));
  return v;
}

// Names listed value by value, `parts` per value, as the expansion lists a parts_over rule's.
std::vector<std::vector<std::string>> by_expert(std::vector<std::string> names, size_t parts) {
  std::vector<std::vector<std::string>> out;
  for (size_t i = 0; i < names.size(); i += parts) {
    out.emplace_back(
        std::make_move_iterator(names.begin() + static_cast<std::ptrdiff_t>(i)),
        std::make_move_iterator(names.begin() + static_cast<std::ptrdiff_t>(i + parts)));
  }
  return out;
}

// Every op, in the order error messages list them. Each parse reads the op's own fields (the
// family's are read already) in the order the format lists them, so a rule with several problems
// reports the first.
const std::vector<OpDef>& ops() {
  static const std::vector<OpDef> table = {
      {"identity",
       Family::kSingle,
       {"source"},
       [](const Node&, const Rule&) -> Builder {
         return [](Instance i) { return identity(std::move(i.sources[0])); };
       }},
      {"rename_tensor",
       Family::kSingle,
       {"source", "target"},
       [](const Node& node, const Rule&) -> Builder {
         node.at("target");  // required: a rename without a target would be an identity
         return [](Instance i) {
           return rename_tensor(std::move(i.sources[0]), std::move(i.targets[0]));
         };
       }},
      {"select_child_modules",
       Family::kSelect,
       {"parent", "base_names"},
       [](const Node&, const Rule&) -> Builder {
         return [](Instance i) { return select_child_modules(std::move(i.targets), i.sources[0]); };
       }},
      {"transpose",
       Family::kSingle,
       {"source", "target", "dims"},
       [](const Node& node, const Rule&) -> Builder {
         const Node dims = node.at("dims");
         const std::vector<int64_t> d = dims.integers();
         if (d.size() != 2) dims.fail("expected two dims [d0, d1]");
         return [d0 = d[0], d1 = d[1]](Instance i) -> MapperPtr {
           return std::make_shared<TransposeMapper>(std::move(i.sources[0]),
                                                    std::move(i.targets[0]), d0, d1);
         };
       }},
      {"permute",
       Family::kSingle,
       {"source", "target", "dims"},
       [](const Node& node, const Rule&) -> Builder {
         Dims dims(node.at("dims").integers());
         return [dims](Instance i) -> MapperPtr {
           return std::make_shared<PermuteMapper>(std::move(i.sources[0]), std::move(i.targets[0]),
                                                  dims);
         };
       }},
      {"squeeze",
       Family::kSingle,
       {"source", "target", "dim"},
       [](const Node& node, const Rule&) -> Builder {
         std::optional<int64_t> dim;
         if (auto d = node.find("dim")) dim = d->integer();
         return [dim](Instance i) -> MapperPtr {
           return std::make_shared<SqueezeMapper>(std::move(i.sources[0]), std::move(i.targets[0]),
                                                  dim);
         };
       }},
      {"unsqueeze",
       Family::kSingle,
       {"source", "target", "dim"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t dim = node.at("dim").integer();
         return [dim](Instance i) -> MapperPtr {
           return std::make_shared<UnsqueezeMapper>(std::move(i.sources[0]),
                                                    std::move(i.targets[0]), dim);
         };
       }},
      {"reshape",
       Family::kSingle,
       {"source", "target", "shape"},
       [](const Node& node, const Rule&) -> Builder {
         Shape shape(node.at("shape").integers());
         return [shape](Instance i) -> MapperPtr {
           return std::make_shared<ReshapeMapper>(std::move(i.sources[0]), std::move(i.targets[0]),
                                                  shape);
         };
       }},
      // Note [casts a rule did not ask for]: a catch-all cast ("{x...}" to BF16) would turn an
      // I64 position_ids into BF16, where positions 257, 259, ... collapse. So a cast rule whose
      // source has captures refuses integer inputs cast to a floating-point dtype (a TypeError
      // when the specs are inferred, before any byte is read), unless it names the dtypes it casts
      // ("from": [...]; inputs of other dtypes pass through unchanged) or says "lossy": true. A
      // rule naming one key casts what it names.
      {"cast",
       Family::kSingle,
       {"source", "target", "dtype", "from", "lossy"},
       [](const Node& node, const Rule& rule) -> Builder {
         auto dtype_of = [](const Node& name) {
           const std::optional<DType> dtype = dtype_from_name(name.str());
           if (!dtype) {
             std::string list;
             for (int i = 0; i < kNumDTypes; ++i) {
               list += (i ? ", " : "") + std::string(all_dtypes()[i].name);
             }
             name.fail(str_cat("unknown dtype ", json_string_excerpt(name.str()),
                               " (dtypes: ", list, ")"));
           }
           return *dtype;
         };
         const DType dtype = dtype_of(node.at("dtype"));
         CastSelection selection;
         if (auto from = node.find("from")) {
           const std::vector<Node> names = from->array();
           if (names.empty()) from->fail("expected a non-empty array of dtypes");
           selection.from.emplace();
           for (const Node& name : names) selection.from->insert(dtype_of(name));
         }
         const bool lossy = node.find("lossy") ? node.at("lossy").boolean() : false;
         selection.refuse_integers_to_floats = !lossy && !rule.sources[0].captures().empty();
         selection.inverse_even_if_lossy = rule.lossy_inverse;
         return [dtype, selection](Instance i) -> MapperPtr {
           return std::make_shared<CastMapper>(std::move(i.sources[0]), std::move(i.targets[0]),
                                               dtype, std::nullopt, selection);
         };
       }},
      {"stack_tensors",
       Family::kManyToOne,
       {"sources", "source", "over", "target", "dim"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t dim = dim_or_zero(node);
         return [dim](Instance i) {
           return stack_tensors(std::move(i.sources), std::move(i.targets[0]), dim);
         };
       }},
      {"concatenate_tensors",
       Family::kManyToOne,
       {"sources", "source", "over", "target", "dim"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t dim = dim_or_zero(node);
         return [dim](Instance i) {
           return concatenate_tensors(std::move(i.sources), std::move(i.targets[0]), dim);
         };
       }},
      {"unstack_tensors",
       Family::kOneToMany,
       {"source", "targets", "target", "over", "count", "dim"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t dim = dim_or_zero(node);
         return [dim](Instance i) {
           return unstack_tensors(std::move(i.sources[0]), std::move(i.targets), dim);
         };
       }},
      {"chunk_tensors",
       Family::kOneToMany,
       {"source", "targets", "target", "over", "count", "dim"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t dim = dim_or_zero(node);
         return [dim](Instance i) {
           return chunk_tensors(std::move(i.sources[0]), std::move(i.targets), dim);
         };
       }},
      {"split_tensors",
       Family::kOneToMany,
       {"source", "targets", "sizes", "dim"},
       [](const Node& node, const Rule& rule) -> Builder {
         const Node sizes_node = node.at("sizes");
         const std::vector<int64_t> sizes = sizes_node.integers();
         if (sizes.size() != rule.targets.size()) {
           sizes_node.fail(str_cat(sizes.size(), " sizes for ", rule.targets.size(), " targets"));
         }
         for (int64_t s : sizes) {
           if (s < 0) sizes_node.fail(str_cat("negative size ", s));
         }
         const int64_t dim = dim_or_zero(node);
         return [sizes, dim](Instance i) {
           return split_tensors(std::move(i.sources[0]), std::move(i.targets), sizes, dim);
         };
       }},
      // ---- tensor-parallel layouts (tp_ops.cpp) ----
      {"shard_tensor",
       Family::kSingle,
       {"source", "target", "dim", "parts", "index"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t dim = node.at("dim").integer();
         const int64_t parts = positive(node.at("parts"));
         const Node index_node = node.at("index");
         const int64_t index = index_node.integer();
         if (index < 0 || index >= parts) {
           index_node.fail(str_cat("index ", index, " is not in [0, ", parts, ")"));
         }
         return [=](Instance i) {
           return shard_tensor(std::move(i.sources[0]), std::move(i.targets[0]), dim, parts, index);
         };
       }},
      {"pad",
       Family::kSingle,
       {"source", "target", "dim", "multiple"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t dim = node.at("dim").integer();
         const int64_t multiple = positive(node.at("multiple"));
         return [=](Instance i) {
           return pad(std::move(i.sources[0]), std::move(i.targets[0]), dim, multiple);
         };
       }},
      {"dequantize",
       Family::kPaired,
       {"format", "source", "scale", "global_scale", "global_scale_mode", "block", "dtype",
        "target"},
       [](const Node& node, const Rule&) -> Builder {
         Dequantization how;
         const Node format = node.at("format");
         const std::optional<QuantFormat> f = quant_format_from_name(format.str());
         if (!f) {
           format.fail(str_cat("unknown format ", json_string_excerpt(format.str()),
                               " (formats: ", quant_format_list(), ")"));
         }
         how.format = *f;
         if (auto block = node.find("block")) {
           const std::vector<int64_t> b = block->integers();
           if (how.format != QuantFormat::kFp8Block) block->fail("only fp8_block has a block");
           if (b.size() != 2 || b[0] < 1 || b[1] < 1) {
             block->fail("expected two positive sizes [rows, cols]");
           }
           how.block_rows = b[0];
           how.block_cols = b[1];
         }
         if (auto mode = node.find("global_scale_mode")) {
           how.global_scale_mode = global_scale_mode_from_name(mode->str());
           if (!how.global_scale_mode) {
             mode->fail(
                 str_cat("expected \"multiply\" (ModelOpt's weight_scale_2) or \"divide\" "
                         "(compressed-tensors' weight_global_scale), got ",
                         json_string_excerpt(mode->str())));
           }
         }
         if (node.has("global_scale") != how.global_scale_mode.has_value()) {
           node.fail(
               "\"global_scale\" and \"global_scale_mode\" go together: the two nvfp4 "
               "conventions (multiply, divide) are never guessed");
         }
         if (node.has("global_scale") && how.format != QuantFormat::kNvfp4) {
           node.at("global_scale").fail("only nvfp4 has a global scale");
         }
         const Node dtype = node.at("dtype");
         const std::optional<DType> d = dtype_from_name(dtype.str());
         if (!d || (*d != DType::BF16 && *d != DType::F16 && *d != DType::F32)) {
           dtype.fail(str_cat("expected \"BF16\", \"F16\" or \"F32\", got ",
                              json_string_excerpt(dtype.str())));
         }
         how.dtype = *d;
         return [how](Instance i) {
           return dequantize(std::move(i.sources[0]), std::move(i.sources[1]),
                             std::move(i.targets[0]), how,
                             i.sources.size() > 2 ? std::move(i.sources[2]) : std::string());
         };
       }},
      // ---- model layouts (Note [model layouts] in layout_ops.cpp) ----
      {"permute_for_rope",
       Family::kSingle,
       {"source", "target", "n_heads", "head_dim", "direction"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t n_heads = positive(node.at("n_heads"));
         std::optional<int64_t> head_dim;
         if (auto h = node.find("head_dim")) head_dim = positive(*h);
         const Node d = node.at("direction");
         const std::string name = d.str();
         if (name != "to_hf" && name != "from_hf") {
           d.fail(str_cat("expected \"to_hf\" (interleaved -> rotate-half) or \"from_hf\", got ",
                          json_string_excerpt(name)));
         }
         const RopeDirection direction =
             name == "to_hf" ? RopeDirection::kToHf : RopeDirection::kFromHf;
         return [=](Instance i) -> MapperPtr {
           return std::make_shared<PermuteForRopeMapper>(
               std::move(i.sources[0]), std::move(i.targets[0]), n_heads, direction, head_dim);
         };
       }},
      {"interleave_qkv",
       Family::kManyToOne,
       {"sources", "target", "n_heads", "n_kv_heads"},
       [](const Node& node, const Rule& rule) -> Builder {
         if (rule.sources.size() != 3) node.at("sources").fail("expected [q, k, v]");
         const int64_t n_heads = positive(node.at("n_heads"));
         const int64_t n_kv_heads = kv_heads(node, n_heads);
         return [=](Instance i) {
           return interleave_qkv(std::move(i.sources), std::move(i.targets[0]), n_heads,
                                 n_kv_heads);
         };
       }},
      {"deinterleave_qkv",
       Family::kOneToMany,
       {"source", "targets", "n_heads", "n_kv_heads"},
       [](const Node& node, const Rule& rule) -> Builder {
         if (rule.targets.size() != 3) node.at("targets").fail("expected [q, k, v]");
         const int64_t n_heads = positive(node.at("n_heads"));
         const int64_t n_kv_heads = kv_heads(node, n_heads);
         return [=](Instance i) {
           return deinterleave_qkv(std::move(i.sources[0]), std::move(i.targets), n_heads,
                                   n_kv_heads);
         };
       }},
      {"interleave",
       Family::kManyToOne,
       {"sources", "source", "over", "target", "dim"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t dim = dim_or_zero(node);
         return [dim](Instance i) {
           return interleave(std::move(i.sources), std::move(i.targets[0]), dim);
         };
       }},
      {"deinterleave",
       Family::kOneToMany,
       {"source", "targets", "target", "over", "count", "dim"},
       [](const Node& node, const Rule&) -> Builder {
         const int64_t dim = dim_or_zero(node);
         return [dim](Instance i) {
           return deinterleave(std::move(i.sources[0]), std::move(i.targets), dim);
         };
       }},
      {"stack_experts",
       Family::kManyToOne,
       {"sources", "source", "over", "count", "target", "dim", "part_dim"},
       [](const Node& node, const Rule& rule) -> Builder {
         node.at("over");  // the experts are the values of a capture
         const int64_t dim = dim_or_zero(node);
         const int64_t part_dim = node.find("part_dim") ? node.at("part_dim").integer() : 0;
         const size_t parts = rule.sources.size();
         return [=](Instance i) {
           return stack_experts(by_expert(std::move(i.sources), parts), std::move(i.targets[0]),
                                dim, part_dim);
         };
       },
       /*parts_over=*/true},
      {"unstack_experts",
       Family::kOneToMany,
       {"source", "targets", "target", "over", "count", "dim", "part_dim"},
       [](const Node& node, const Rule& rule) -> Builder {
         node.at("over");
         const int64_t dim = dim_or_zero(node);
         const int64_t part_dim = node.find("part_dim") ? node.at("part_dim").integer() : 0;
         const size_t parts = rule.targets.size();
         return [=](Instance i) {
           return unstack_experts(std::move(i.sources[0]), by_expert(std::move(i.targets), parts),
                                  dim, part_dim);
         };
       },
       /*parts_over=*/true},
      {"untie_embeddings",
       Family::kUntie,
       {"embedding", "lm_head", "tied"},
       [](const Node&, const Rule&) -> Builder {
         return [](Instance i) {
           return untie_embeddings(std::move(i.sources[0]), std::move(i.targets[0]));
         };
       }},
      {"tie_embeddings",
       Family::kTie,
       {"embedding", "lm_head", "tied"},
       [](const Node&, const Rule&) -> Builder {
         return [](Instance i) {
           return tie_embeddings(std::move(i.sources[0]), std::move(i.targets[0]));
         };
       }},
  };
  return table;
}

Pattern pattern_at(std::string text, const Node& where) {
  try {
    return Pattern(std::move(text));
  } catch (const ValueError& e) {
    where.fail(e.what());
  }
}

Pattern pattern(const Node& node) {
  return pattern_at(node.str(), node);
}

void read_single(const Node& node, Rule& r) {
  r.sources.push_back(pattern(node.at("source")));
  auto target = node.find("target");
  r.targets.push_back(target ? pattern(*target) : r.sources[0]);
}

// "over" (the capture named `over` must be in every pattern of `patterns`).
std::string read_over(const Node& over, const std::vector<Pattern>& patterns, const char* which) {
  std::string name = over.str();
  for (const auto& p : patterns) {
    if (!p.has_capture(name)) {
      over.fail(str_cat("the ", which, " ", json_string_excerpt(p.text()), " has no capture {",
                        name, "}"));
    }
  }
  return name;
}

void read_many_to_one(const Node& node, Rule& r, const std::string& what) {
  if (node.has("sources") == node.has("source")) {
    node.fail(str_cat(what, " needs either \"sources\" (a list) or \"source\" with \"over\""));
  }
  if (auto list = node.find("sources")) {
    if (node.has("over") && !r.op->parts_over) {
      node.at("over").fail("\"over\" goes with \"source\", not \"sources\"");
    }
    for (const auto& n : list->array()) r.sources.push_back(pattern(n));
    if (r.sources.empty()) list->fail("expected at least one source");
    for (const auto& s : r.sources) {
      if (s.captures() != r.sources[0].captures()) {
        list->fail(str_cat("every source must use the same captures; ",
                           json_string_excerpt(s.text()), " and ",
                           json_string_excerpt(r.sources[0].text()), " differ"));
      }
    }
    if (auto over = node.find("over")) r.over = read_over(*over, r.sources, "source");
  } else {
    r.sources.push_back(pattern(node.at("source")));
    r.over = read_over(node.at("over"), r.sources, "source");
  }
  if (auto count = node.find("count")) {
    r.count = count->integer();
    if (r.count < 1) count->fail("expected a count of at least 1");
  }
  r.targets.push_back(pattern(node.at("target")));
  if (!r.over.empty() && r.targets[0].has_capture(r.over)) {
    node.at("target").fail(str_cat("the target cannot use {", r.over,
                                   "}: the tensors of every value of it go into one target"));
  }
}

void read_one_to_many(const Node& node, Rule& r, const std::string& what) {
  r.sources.push_back(pattern(node.at("source")));
  if (node.has("targets") == node.has("target")) {
    node.fail(str_cat(what,
                      " needs either \"targets\" (a list) or \"target\" with \"over\" and "
                      "\"count\""));
  }
  if (auto list = node.find("targets")) {
    for (const auto& n : list->array()) r.targets.push_back(pattern(n));
    if (r.targets.empty()) list->fail("expected at least one target");
    if (!r.op->parts_over) {
      if (node.has("over")) node.at("over").fail("\"over\" goes with \"target\", not \"targets\"");
      if (node.has("count")) node.at("count").fail("\"count\" goes with \"target\" and \"over\"");
      return;
    }
    if (!node.has("over")) return;
  } else {
    r.targets.push_back(pattern(node.at("target")));
  }
  const Node over = node.at("over");
  r.over = read_over(over, r.targets, "target");
  if (r.sources[0].has_capture(r.over)) {
    over.fail(str_cat("the source cannot use {", r.over, "}: it is numbered by \"count\""));
  }
  const Node count = node.at("count");
  r.count = count.integer();
  if (r.count < 1) count.fail("expected a count of at least 1");
}

void read_paired(const Node& node, Rule& r) {
  read_single(node, r);
  for (const char* companion : {"scale", "global_scale"}) {
    const std::optional<Node> n = companion == std::string_view("scale")
                                      ? std::optional<Node>(node.at(companion))
                                      : node.find(companion);
    if (!n) continue;
    r.sources.push_back(pattern(*n));
    for (const auto& c : r.sources.back().captures()) {
      if (!r.sources[0].has_capture(c)) {
        n->fail(str_cat("the capture {", c, "} is not bound by the source ",
                        json_string_excerpt(r.sources[0].text())));
      }
    }
  }
}

// "embedding" and "lm_head" patterns (sources and targets of the rule) and "tied".
void read_tied(const Node& node, Rule& r) {
  r.sources.push_back(pattern(node.at("embedding")));
  r.targets.push_back(pattern(node.at("lm_head")));
  if (auto tied = node.find("tied")) r.tied = tied->boolean();
}

void read_select(const Node& node, Rule& r) {
  const Node parent = node.at("parent");
  const Pattern p = pattern(parent);
  if (p.has_multi()) parent.fail("the parent pattern cannot hold a {name...} capture");
  if (p.has_capture("child")) parent.fail("the capture name \"child\" is reserved here");
  r.sources.push_back(pattern_at(p.text() + ".{child...}", parent));
  if (auto names = node.find("base_names")) {
    r.base_names.emplace();
    for (const auto& n : names->array()) {
      if (!r.base_names->insert(n.str()).second) n.fail("base name listed twice");
    }
    if (r.base_names->empty()) names->fail("expected at least one base name");
  }
}

}  // namespace

std::string Rule::summary() const {
  return str_cat(path, " (", op->name, " ", sources.empty() ? "" : sources[0].text(), ")");
}

Rule parse_rule(const Node& node, bool lossy_inverse) {
  node.expect(node.j.is_object(), "a rule object");
  Rule r;
  r.path = node.path;
  r.lossy_inverse = lossy_inverse;
  const Node op = node.at("op");
  const std::string name = op.str();
  for (const auto& o : ops()) {
    if (name == o.name) r.op = &o;
  }
  if (!r.op) {
    std::string list;
    for (const auto& o : ops()) list += str_cat(list.empty() ? "" : ", ", o.name);
    op.fail(str_cat("unknown op ", json_string_excerpt(name), " (ops: ", list, ")"));
  }
  const std::string what = str_cat("op \"", r.op->name, "\"");
  std::vector<std::string_view> allowed{"op", "comment", "optional"};
  allowed.insert(allowed.end(), r.op->fields.begin(), r.op->fields.end());
  node.only(allowed, what);
  switch (r.op->family) {
    case Family::kSingle:
      read_single(node, r);
      break;
    case Family::kManyToOne:
      read_many_to_one(node, r, what);
      break;
    case Family::kOneToMany:
      read_one_to_many(node, r, what);
      break;
    case Family::kSelect:
      read_select(node, r);
      break;
    case Family::kPaired:
      read_paired(node, r);
      break;
    case Family::kUntie:
    case Family::kTie:
      read_tied(node, r);
      break;
  }
  if (auto optional = node.find("optional")) r.optional = optional->boolean();
  r.build = r.op->parse(node, r);
  // Targets may use only what the sources bind.
  const std::set<std::string>& bound = r.sources[0].captures();
  for (size_t i = 0; i < r.targets.size(); ++i) {
    for (const auto& c : r.targets[i].captures()) {
      if (!bound.count(c) && c != r.over) {
        const Node t = node.has("targets")   ? node.at("targets").array()[i]
                       : node.has("lm_head") ? node.at("lm_head")
                                             : node.at("target");
        t.fail(str_cat("the capture {", c, "} is not bound by the source ",
                       json_string_excerpt(r.sources[0].text())));
      }
    }
  }
  return r;
}

}  // namespace d9d::mapper::detail
