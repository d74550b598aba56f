// Spec files (format in spec.hpp): parse with JSON paths, expand rules against keys, build.
#include <d9d/mapper/spec.hpp>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <d9d/mapper/compose.hpp>
#include <d9d/mapper/leaf.hpp>

#include "internal.hpp"

namespace d9d::mapper {

using d9d::detail::str_cat;
using Json = nlohmann::json;

SpecError::SpecError(std::string path, const std::string& message)
    : ValueError("spec " + path + ": " + message), path_(std::move(path)) {}

namespace {

// ---- JSON with paths ----------------------------------------------------------------------------

std::string child_path(const std::string& path, const std::string& key) {
  const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
  return plain ? path + "." + key : path + "[" + Json(key).dump() + "]";
}
std::string child_path(const std::string& path, size_t index) {
  return path + "[" + std::to_string(index) + "]";
}

std::string type_name(const Json& j) {
  if (j.is_number_integer()) return "an integer";
  if (j.is_number()) return "a number";
  if (j.is_string()) return "a string";
  if (j.is_boolean()) return "a boolean";
  if (j.is_null()) return "null";
  if (j.is_array()) return "an array";
  return "an object";
}

// Parses `text`, rejecting duplicate object keys (nlohmann would keep the last silently), and
// reports syntax errors with their byte offset.
Json parse_json(std::string_view text) {
  struct Frame {
    bool object;
    std::set<std::string> keys;
    std::string key;
    size_t index = 0;
    bool started = false;
  };
  std::vector<Frame> frames;
  auto path = [&frames]() {
    std::string p = "$";
    for (const auto& f : frames) {
      if (f.object) {
        if (!f.key.empty()) p = child_path(p, f.key);
      } else if (f.started) {
        p = child_path(p, f.index);
      }
    }
    return p;
  };
  auto next_element = [&frames]() {
    if (frames.empty() || frames.back().object) return;
    Frame& f = frames.back();
    if (f.started) ++f.index;
    f.started = true;
  };
  Json::parser_callback_t callback = [&](int, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        next_element();
        frames.push_back(Frame{true, {}, {}, 0, false});
        break;
      case Json::parse_event_t::array_start:
        next_element();
        frames.push_back(Frame{false, {}, {}, 0, false});
        break;
      case Json::parse_event_t::object_end:
      case Json::parse_event_t::array_end:
        frames.pop_back();
        break;
      case Json::parse_event_t::key: {
        Frame& f = frames.back();
        std::string key = parsed.get<std::string>();
        if (!f.keys.insert(key).second) {
          f.key = key;
          throw SpecError(path(), "duplicate key \"" + key + "\"");
        }
        f.key = std::move(key);
        break;
      }
      case Json::parse_event_t::value:
        next_element();
        break;
    }
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), callback);
  } catch (const Json::parse_error& e) {
    throw SpecError("$", str_cat("invalid JSON at byte ", e.byte, ": ", e.what()));
  }
}

// A JSON value and its path, with typed accessors that name the path in every error.
struct Node {
  const Json& j;
  std::string path;

  [[noreturn]] void fail(const std::string& message) const { throw SpecError(path, message); }
  void expect(bool ok, const char* what) const {
    if (!ok) fail(str_cat("expected ", what, ", got ", type_name(j), " ", j.dump()));
  }
  bool has(const char* key) const { return j.contains(key); }
  Node at(const char* key) const {
    auto it = j.find(key);
    if (it == j.end()) fail(str_cat("missing required field \"", key, "\""));
    return Node{*it, child_path(path, key)};
  }
  std::optional<Node> find(const char* key) const {
    auto it = j.find(key);
    if (it == j.end()) return std::nullopt;
    return Node{*it, child_path(path, key)};
  }
  // Throws for any field not in `allowed`, which catches misspellings ("dims" for "dim").
  void only(std::initializer_list<const char*> allowed, const std::string& what) const {
    expect(j.is_object(), "an object");
    for (const auto& item : j.items()) {
      const std::string& key = item.key();  // (not a structured binding: lambdas capture it)
      const bool ok =
          std::any_of(allowed.begin(), allowed.end(), [&key](const char* a) { return key == a; });
      if (!ok) {
        std::string list;
        for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
        throw SpecError(child_path(path, key), str_cat("unknown field \"", key, "\" for ", what,
                                                       " (allowed: ", list, ")"));
      }
    }
  }
  std::string str() const {
    expect(j.is_string(), "a string");
    return j.get<std::string>();
  }
  int64_t integer() const {
    expect(j.is_number_integer(), "an integer");
    return j.get<int64_t>();
  }
  std::vector<Node> array() const {
    expect(j.is_array(), "an array");
    std::vector<Node> out;
    for (size_t i = 0; i < j.size(); ++i) out.push_back(Node{j[i], child_path(path, i)});
    return out;
  }
  std::vector<int64_t> integers() const {
    std::vector<int64_t> out;
    for (const auto& n : array()) out.push_back(n.integer());
    return out;
  }
};

// ---- patterns -----------------------------------------------------------------------------------

using Bindings = std::map<std::string, std::string>;

// A dotted key pattern: literal segments, segments with one capture `pre{name}post`, and at most
// one whole-segment multi-capture `{name...}`.
class Pattern {
 public:
  Pattern() = default;
  Pattern(std::string text, const Node& where) : text_(std::move(text)) {
    if (text_.empty()) where.fail("a pattern cannot be empty");
    // Segments end at dots outside braces ("{rest...}" holds dots of its own).
    size_t start = 0;
    bool in_braces = false;
    for (size_t i = 0; i <= text_.size(); ++i) {
      if (i == text_.size() || (text_[i] == '.' && !in_braces)) {
        parse_segment(text_.substr(start, i - start), where);
        start = i + 1;
      } else if (text_[i] == '{') {
        in_braces = true;
      } else if (text_[i] == '}') {
        in_braces = false;
      }
    }
  }

  const std::string& text() const { return text_; }
  const std::set<std::string>& captures() const { return captures_; }
  bool has_capture(const std::string& name) const { return captures_.count(name) != 0; }
  bool has_multi() const { return multi_ >= 0; }

  // Matches the dotted `key` (already split into `parts`), binding captures into `b`.
  bool match(const std::vector<std::string_view>& parts, Bindings& b) const {
    const size_t n = segs_.size();
    if (multi_ < 0) {
      if (parts.size() != n) return false;
      for (size_t i = 0; i < n; ++i) {
        if (!match_segment(segs_[i], parts[i], b)) return false;
      }
      return true;
    }
    const auto m = static_cast<size_t>(multi_);
    if (parts.size() < n) return false;  // the multi-capture takes at least one segment
    const size_t tail = n - m - 1;
    for (size_t i = 0; i < m; ++i) {
      if (!match_segment(segs_[i], parts[i], b)) return false;
    }
    for (size_t i = 0; i < tail; ++i) {
      if (!match_segment(segs_[m + 1 + i], parts[parts.size() - tail + i], b)) return false;
    }
    std::string value;
    for (size_t i = m; i < parts.size() - tail; ++i) {
      if (i > m) value += '.';
      value += parts[i];
    }
    return bind(b, segs_[m].name, std::move(value));
  }

  // The key with every capture replaced by its binding (each must be bound).
  std::string instantiate(const Bindings& b) const {
    std::string out;
    for (size_t i = 0; i < segs_.size(); ++i) {
      if (i) out += '.';
      const Segment& s = segs_[i];
      out += s.prefix;
      if (s.kind != Segment::kLiteral) out += b.at(s.name);
      out += s.suffix;
    }
    return out;
  }

 private:
  struct Segment {
    enum Kind : uint8_t { kLiteral, kCapture, kMulti } kind;
    std::string prefix, name, suffix;
  };

  static bool bind(Bindings& b, const std::string& name, std::string value) {
    auto [it, inserted] = b.emplace(name, value);
    return inserted || it->second == value;
  }

  static bool match_segment(const Segment& s, std::string_view part, Bindings& b) {
    if (s.kind == Segment::kLiteral) return part == s.prefix;
    if (part.size() <= s.prefix.size() + s.suffix.size()) return false;
    if (part.substr(0, s.prefix.size()) != s.prefix) return false;
    if (part.substr(part.size() - s.suffix.size()) != s.suffix) return false;
    return bind(
        b, s.name,
        std::string(part.substr(s.prefix.size(), part.size() - s.prefix.size() - s.suffix.size())));
  }

  void parse_segment(const std::string& seg, const Node& where) {
    if (seg.empty()) where.fail(str_cat("pattern \"", text_, "\" has an empty segment"));
    const size_t open = seg.find('{');
    if (open == std::string::npos) {
      if (seg.find('}') != std::string::npos) {
        where.fail(str_cat("pattern \"", text_, "\": unmatched '}' in segment \"", seg, "\""));
      }
      segs_.push_back(Segment{Segment::kLiteral, seg, {}, {}});
      return;
    }
    const size_t close = seg.find('}', open);
    if (close == std::string::npos) {
      where.fail(str_cat("pattern \"", text_, "\": unmatched '{' in segment \"", seg, "\""));
    }
    Segment s{Segment::kCapture, seg.substr(0, open), seg.substr(open + 1, close - open - 1),
              seg.substr(close + 1)};
    if (s.prefix.find('}') != std::string::npos ||
        s.suffix.find_first_of("{}") != std::string::npos) {
      where.fail(str_cat("pattern \"", text_, "\": a segment holds at most one capture, got \"",
                         seg, "\""));
    }
    if (s.name.size() > 3 && s.name.compare(s.name.size() - 3, 3, "...") == 0) {
      s.name.resize(s.name.size() - 3);
      s.kind = Segment::kMulti;
      if (!s.prefix.empty() || !s.suffix.empty()) {
        where.fail(str_cat("pattern \"", text_, "\": {", s.name,
                           "...} must be a whole segment, got \"", seg, "\""));
      }
      if (multi_ >= 0) {
        where.fail(str_cat("pattern \"", text_, "\": at most one {name...} per pattern"));
      }
      multi_ = static_cast<int>(segs_.size());
    }
    const bool ident = !s.name.empty() && !std::isdigit(static_cast<unsigned char>(s.name[0])) &&
                       std::all_of(s.name.begin(), s.name.end(), [](char c) {
                         return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                       });
    if (!ident) {
      where.fail(str_cat("pattern \"", text_, "\": capture name \"", s.name,
                         "\" is not an identifier (letters, digits, _)"));
    }
    captures_.insert(s.name);
    segs_.push_back(std::move(s));
  }

  std::string text_;
  std::vector<Segment> segs_;
  std::set<std::string> captures_;
  int multi_ = -1;
};

std::vector<std::string_view> split_key(std::string_view key) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    parts.push_back(
        key.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
    if (dot == std::string_view::npos) return parts;
    start = dot + 1;
  }
}

std::string bindings_str(const Bindings& b) {
  std::string out = "{";
  for (const auto& [k, v] : b) out += (out.size() > 1 ? ", " : "") + k + "=" + v;
  return out + "}";
}

// ---- rules --------------------------------------------------------------------------------------

enum class Op : uint8_t {
  kIdentity,
  kRename,
  kSelectChild,
  kTranspose,
  kPermute,
  kSqueeze,
  kUnsqueeze,
  kReshape,
  kCast,
  kStack,
  kConcatenate,
  kUnstack,
  kChunk,
  kSplit
};

struct OpInfo {
  const char* name;
  Op op;
};
constexpr OpInfo kOps[] = {
    {"identity", Op::kIdentity},
    {"rename_tensor", Op::kRename},
    {"select_child_modules", Op::kSelectChild},
    {"transpose", Op::kTranspose},
    {"permute", Op::kPermute},
    {"squeeze", Op::kSqueeze},
    {"unsqueeze", Op::kUnsqueeze},
    {"reshape", Op::kReshape},
    {"cast", Op::kCast},
    {"stack_tensors", Op::kStack},
    {"concatenate_tensors", Op::kConcatenate},
    {"unstack_tensors", Op::kUnstack},
    {"chunk_tensors", Op::kChunk},
    {"split_tensors", Op::kSplit},
};

struct Rule {
  std::string path;
  std::string op_name;
  Op op{};
  std::vector<Pattern> sources;  // one, except stack / concatenate with "sources"
  std::vector<Pattern> targets;  // one, except unstack / chunk / split with "targets"
  std::string over;              // stack / concatenate / unstack / chunk over a capture
  int64_t count = 0;             // unstack / chunk "over": how many targets
  int64_t dim = 0;
  std::optional<int64_t> opt_dim;  // squeeze
  std::vector<int64_t> ints;       // transpose / permute dims, reshape shape, split sizes
  DType dtype = DType::F32;        // cast
  std::optional<std::set<std::string>> base_names;  // select_child_modules
  std::string summary() const {
    return path + " (" + op_name + " " + (sources.empty() ? "" : sources[0].text()) + ")";
  }
};

Rule parse_rule(const Node& node) {
  node.expect(node.j.is_object(), "a rule object");
  Rule r;
  r.path = node.path;
  const Node op = node.at("op");
  r.op_name = op.str();
  const OpInfo* info = nullptr;
  for (const auto& o : kOps) {
    if (r.op_name == o.name) info = &o;
  }
  if (!info) {
    std::string list;
    for (const auto& o : kOps) list += (list.empty() ? "" : ", ") + std::string(o.name);
    op.fail(str_cat("unknown op \"", r.op_name, "\" (ops: ", list, ")"));
  }
  r.op = info->op;
  const std::string what = "op \"" + r.op_name + "\"";
  auto pattern = [](const Node& n) { return Pattern(n.str(), n); };
  auto single_source = [&]() { r.sources.push_back(pattern(node.at("source"))); };
  auto optional_target = [&]() {
    auto t = node.find("target");
    r.targets.push_back(t ? pattern(*t) : r.sources[0]);
  };
  auto dim_or_zero = [&]() {
    if (auto d = node.find("dim")) r.dim = d->integer();
  };

  switch (r.op) {
    case Op::kIdentity:
      node.only({"op", "comment", "source"}, what);
      single_source();
      r.targets.push_back(r.sources[0]);
      break;
    case Op::kRename:
      node.only({"op", "comment", "source", "target"}, what);
      single_source();
      r.targets.push_back(pattern(node.at("target")));
      break;
    case Op::kSelectChild: {
      node.only({"op", "comment", "parent", "base_names"}, what);
      const Node parent = node.at("parent");
      Pattern p = pattern(parent);
      if (p.has_multi()) parent.fail("the parent pattern cannot hold a {name...} capture");
      if (p.has_capture("child")) parent.fail("the capture name \"child\" is reserved here");
      r.sources.push_back(Pattern(p.text() + ".{child...}", parent));
      if (auto names = node.find("base_names")) {
        r.base_names.emplace();
        for (const auto& n : names->array()) {
          if (!r.base_names->insert(n.str()).second) n.fail("base name listed twice");
        }
        if (r.base_names->empty()) names->fail("expected at least one base name");
      }
      break;
    }
    case Op::kTranspose: {
      node.only({"op", "comment", "source", "target", "dims"}, what);
      single_source();
      optional_target();
      const Node dims = node.at("dims");
      r.ints = dims.integers();
      if (r.ints.size() != 2) dims.fail("expected two dims [d0, d1]");
      break;
    }
    case Op::kPermute:
      node.only({"op", "comment", "source", "target", "dims"}, what);
      single_source();
      optional_target();
      r.ints = node.at("dims").integers();
      break;
    case Op::kSqueeze:
      node.only({"op", "comment", "source", "target", "dim"}, what);
      single_source();
      optional_target();
      if (auto d = node.find("dim")) r.opt_dim = d->integer();
      break;
    case Op::kUnsqueeze:
      node.only({"op", "comment", "source", "target", "dim"}, what);
      single_source();
      optional_target();
      r.dim = node.at("dim").integer();
      break;
    case Op::kReshape:
      node.only({"op", "comment", "source", "target", "shape"}, what);
      single_source();
      optional_target();
      r.ints = node.at("shape").integers();
      break;
    case Op::kCast: {
      node.only({"op", "comment", "source", "target", "dtype"}, what);
      single_source();
      optional_target();
      const Node dtype = node.at("dtype");
      auto parsed = dtype_from_name(dtype.str());
      if (!parsed) {
        std::string list;
        for (int i = 0; i < kNumDTypes; ++i) {
          list += (i ? ", " : "") + std::string(all_dtypes()[i].name);
        }
        dtype.fail(str_cat("unknown dtype \"", dtype.str(), "\" (dtypes: ", list, ")"));
      }
      r.dtype = *parsed;
      break;
    }
    case Op::kStack:
    case Op::kConcatenate: {
      node.only({"op", "comment", "sources", "source", "over", "target", "dim"}, what);
      if (node.has("sources") == node.has("source")) {
        node.fail(str_cat(what, " needs either \"sources\" (a list) or \"source\" with \"over\""));
      }
      if (auto list = node.find("sources")) {
        if (node.has("over"))
          node.at("over").fail("\"over\" goes with \"source\", not \"sources\"");
        for (const auto& n : list->array()) r.sources.push_back(pattern(n));
        if (r.sources.empty()) list->fail("expected at least one source");
        for (const auto& s : r.sources) {
          if (s.captures() != r.sources[0].captures()) {
            list->fail(str_cat("every source must use the same captures; \"", s.text(), "\" and \"",
                               r.sources[0].text(), "\" differ"));
          }
        }
      } else {
        single_source();
        const Node over = node.at("over");
        r.over = over.str();
        if (!r.sources[0].has_capture(r.over)) {
          over.fail(
              str_cat("the source \"", r.sources[0].text(), "\" has no capture {", r.over, "}"));
        }
      }
      r.targets.push_back(pattern(node.at("target")));
      if (!r.over.empty() && r.targets[0].has_capture(r.over)) {
        node.at("target").fail(str_cat("the target cannot use {", r.over,
                                       "}: the tensors of every value of it go into one target"));
      }
      dim_or_zero();
      break;
    }
    case Op::kUnstack:
    case Op::kChunk:
    case Op::kSplit: {
      if (r.op == Op::kSplit) {
        node.only({"op", "comment", "source", "targets", "sizes", "dim"}, what);
      } else {
        node.only({"op", "comment", "source", "targets", "target", "over", "count", "dim"}, what);
      }
      single_source();
      if (node.has("targets") == node.has("target")) {
        node.fail(str_cat(what,
                          " needs either \"targets\" (a list) or \"target\" with \"over\" and "
                          "\"count\""));
      }
      if (auto list = node.find("targets")) {
        for (const auto& n : list->array()) r.targets.push_back(pattern(n));
        if (r.targets.empty()) list->fail("expected at least one target");
        if (node.has("over"))
          node.at("over").fail("\"over\" goes with \"target\", not \"targets\"");
        if (node.has("count")) node.at("count").fail("\"count\" goes with \"target\" and \"over\"");
      } else {
        r.targets.push_back(pattern(node.at("target")));
        const Node over = node.at("over");
        r.over = over.str();
        if (!r.targets[0].has_capture(r.over)) {
          over.fail(
              str_cat("the target \"", r.targets[0].text(), "\" has no capture {", r.over, "}"));
        }
        if (r.sources[0].has_capture(r.over)) {
          over.fail(str_cat("the source cannot use {", r.over, "}: it is numbered by \"count\""));
        }
        const Node count = node.at("count");
        r.count = count.integer();
        if (r.count < 1) count.fail("expected a count of at least 1");
      }
      if (r.op == Op::kSplit) {
        const Node sizes = node.at("sizes");
        r.ints = sizes.integers();
        if (r.ints.size() != r.targets.size()) {
          sizes.fail(str_cat(r.ints.size(), " sizes for ", r.targets.size(), " targets"));
        }
        for (int64_t s : r.ints) {
          if (s < 0) sizes.fail(str_cat("negative size ", s));
        }
      }
      dim_or_zero();
      break;
    }
  }
  // Targets may use only what the sources bind.
  const std::set<std::string>& bound = r.sources[0].captures();
  for (size_t i = 0; i < r.targets.size(); ++i) {
    for (const auto& c : r.targets[i].captures()) {
      if (!bound.count(c) && c != r.over) {
        const Node t = node.has("targets") ? node.at("targets").array()[i] : node.at("target");
        t.fail(str_cat("the capture {", c, "} is not bound by the source \"", r.sources[0].text(),
                       "\""));
      }
    }
  }
  return r;
}

struct Spec {
  std::string description;
  UnmatchedPolicy unmatched = UnmatchedPolicy::kKeep;
  std::vector<std::vector<Rule>> stages;
};

Spec parse_spec(std::string_view text) {
  const Json json = parse_json(text);
  const Node root{json, "$"};
  root.only({"d9d_mapper_spec", "description", "unmatched", "stages", "rules"}, "a spec");
  Spec spec;
  const Node version = root.at("d9d_mapper_spec");
  if (version.integer() != 1)
    version.fail(str_cat("unsupported version ", version.integer(), " (this d9d reads version 1)"));
  if (auto d = root.find("description")) spec.description = d->str();
  if (auto u = root.find("unmatched")) {
    const std::string policy = u->str();
    if (policy == "keep") {
      spec.unmatched = UnmatchedPolicy::kKeep;
    } else if (policy == "drop") {
      spec.unmatched = UnmatchedPolicy::kDrop;
    } else if (policy == "error") {
      spec.unmatched = UnmatchedPolicy::kError;
    } else {
      u->fail(str_cat("expected \"keep\", \"drop\" or \"error\", got \"", policy, "\""));
    }
  }
  if (root.has("stages") == root.has("rules")) {
    root.fail("expected either \"stages\" (a list of {\"rules\": [...]}) or \"rules\"");
  }
  auto parse_rules = [](const Node& rules) {
    std::vector<Rule> out;
    for (const auto& r : rules.array()) out.push_back(parse_rule(r));
    return out;
  };
  if (auto rules = root.find("rules")) {
    spec.stages.push_back(parse_rules(*rules));
  } else {
    for (const auto& stage : root.at("stages").array()) {
      stage.only({"rules", "comment"}, "a stage");
      spec.stages.push_back(parse_rules(stage.at("rules")));
    }
  }
  return spec;
}

// ---- expansion ----------------------------------------------------------------------------------

// One expanded rule instance: a leaf mapper and the keys it consumes and produces.
struct Instance {
  MapperPtr mapper;
  size_t rule;
};

// The keys one stage sees, each split into segments once for all rules.
struct KeySet {
  std::vector<std::string> keys;  // sorted
  std::vector<std::vector<std::string_view>> parts;
  std::unordered_set<std::string_view> lookup;

  explicit KeySet(std::vector<std::string> sorted_keys) : keys(std::move(sorted_keys)) {
    parts.reserve(keys.size());
    lookup.reserve(keys.size());
    for (const auto& k : keys) {
      parts.push_back(split_key(k));
      lookup.insert(k);
    }
  }
  bool has(const std::string& key) const { return lookup.count(key) != 0; }
};

// Numeric order when every value is a non-negative integer (then they must be 0..n-1), else
// lexicographic.
void order_over_values(std::vector<std::pair<std::string, std::string>>& items, const Rule& r,
                       const Bindings& group) {
  const bool numeric = std::all_of(items.begin(), items.end(), [](const auto& it) {
    return !it.first.empty() && it.first.size() < 18 &&
           std::all_of(it.first.begin(), it.first.end(),
                       [](char c) { return c >= '0' && c <= '9'; });
  });
  if (!numeric) {
    std::sort(items.begin(), items.end());
    return;
  }
  std::sort(items.begin(), items.end(),
            [](const auto& a, const auto& b) { return std::stoll(a.first) < std::stoll(b.first); });
  for (size_t i = 0; i < items.size(); ++i) {
    if (std::stoll(items[i].first) != static_cast<int64_t>(i) ||
        (i > 0 && items[i].first == items[i - 1].first)) {
      throw SpecError(r.path, str_cat("for ", bindings_str(group), ", {", r.over,
                                      "} takes the values ", detail::keys_str([&] {
                                        std::vector<std::string> v;
                                        for (const auto& it : items) v.push_back(it.first);
                                        return v;
                                      }()),
                                      ": expected 0..", items.size() - 1, " with none missing"));
    }
  }
}

MapperPtr make_single(const Rule& r, std::string source, std::string target) {
  switch (r.op) {
    case Op::kIdentity:
      return std::make_shared<IdentityMapper>(std::move(source));
    case Op::kRename:
      return std::make_shared<RenameTensorMapper>(std::move(source), std::move(target));
    case Op::kTranspose:
      return std::make_shared<TransposeMapper>(std::move(source), std::move(target), r.ints[0],
                                               r.ints[1]);
    case Op::kPermute:
      return std::make_shared<PermuteMapper>(std::move(source), std::move(target), Dims(r.ints));
    case Op::kSqueeze:
      return std::make_shared<SqueezeMapper>(std::move(source), std::move(target), r.opt_dim);
    case Op::kUnsqueeze:
      return std::make_shared<UnsqueezeMapper>(std::move(source), std::move(target), r.dim);
    case Op::kReshape:
      return std::make_shared<ReshapeMapper>(std::move(source), std::move(target), Dims(r.ints));
    case Op::kCast:
      return std::make_shared<CastMapper>(std::move(source), std::move(target), r.dtype);
    default:
      D9D_ASSERT(false);
  }
  return nullptr;
}

// Every instance of `r` over `keys`.
std::vector<MapperPtr> expand(const Rule& r, const KeySet& keys) {
  std::vector<MapperPtr> out;
  auto guarded = [&r](auto&& build) -> MapperPtr {
    try {
      return build();
    } catch (const SpecError&) {
      throw;
    } catch (const Error& e) {
      throw SpecError(r.path, e.what());
    }
  };
  const Pattern& source = r.sources[0];

  if (r.op == Op::kSelectChild) {
    // One mapper per parent instance, holding the children found (or the base names asked for).
    std::map<std::string, std::set<std::string>> children;  // parent key -> base names
    for (size_t i = 0; i < keys.keys.size(); ++i) {
      Bindings b;
      if (!source.match(keys.parts[i], b)) continue;
      const std::string child = b.at("child");
      if (r.base_names && !r.base_names->count(child)) continue;
      const std::string& key = keys.keys[i];
      children[key.substr(0, key.size() - child.size() - 1)].insert(child);
    }
    for (const auto& entry : children) {
      const std::string& parent = entry.first;
      const std::set<std::string>& found = entry.second;
      if (r.base_names && found.size() != r.base_names->size()) {
        std::vector<std::string> missing;
        for (const auto& n : *r.base_names) {
          if (!found.count(n)) missing.push_back(parent + "." + n);
        }
        throw SpecError(r.path, str_cat("the checkpoint has some base names of '", parent,
                                        "' but not ", detail::keys_str(missing)));
      }
      out.push_back(guarded([&] {
        return std::make_shared<SelectChildModulesMapper>(
            std::vector<std::string>(found.begin(), found.end()), parent);
      }));
    }
    return out;
  }

  const bool many_sources = r.op == Op::kStack || r.op == Op::kConcatenate;
  if (many_sources && r.over.empty()) {
    // Bindings found by any source; each must find every source.
    std::set<Bindings> bindings;
    for (const auto& p : r.sources) {
      for (size_t i = 0; i < keys.keys.size(); ++i) {
        Bindings b;
        if (p.match(keys.parts[i], b)) bindings.insert(std::move(b));
      }
    }
    for (const auto& b : bindings) {
      std::vector<std::string> names, missing;
      for (const auto& p : r.sources) {
        names.push_back(p.instantiate(b));
        if (!keys.has(names.back())) missing.push_back(names.back());
      }
      if (!missing.empty()) {
        throw SpecError(
            r.path, str_cat("for ", bindings_str(b), " the checkpoint has some sources but not ",
                            detail::keys_str(missing)));
      }
      std::string target = r.targets[0].instantiate(b);
      out.push_back(guarded([&]() -> MapperPtr {
        if (r.op == Op::kStack) return stack_tensors(std::move(names), std::move(target), r.dim);
        return concatenate_tensors(std::move(names), std::move(target), r.dim);
      }));
    }
    return out;
  }
  if (many_sources) {
    // One tensor per value of the `over` capture, grouped by the other captures.
    std::map<Bindings, std::vector<std::pair<std::string, std::string>>> groups;
    for (size_t i = 0; i < keys.keys.size(); ++i) {
      Bindings b;
      if (!source.match(keys.parts[i], b)) continue;
      std::string value = b.at(r.over);
      b.erase(r.over);
      groups[b].emplace_back(std::move(value), keys.keys[i]);
    }
    for (auto& [b, items] : groups) {
      order_over_values(items, r, b);
      std::vector<std::string> names;
      for (auto& it : items) names.push_back(std::move(it.second));
      std::string target = r.targets[0].instantiate(b);
      out.push_back(guarded([&]() -> MapperPtr {
        if (r.op == Op::kStack) return stack_tensors(std::move(names), std::move(target), r.dim);
        return concatenate_tensors(std::move(names), std::move(target), r.dim);
      }));
    }
    return out;
  }

  for (size_t i = 0; i < keys.keys.size(); ++i) {
    Bindings b;
    if (!source.match(keys.parts[i], b)) continue;
    const std::string& key = keys.keys[i];
    if (r.op != Op::kUnstack && r.op != Op::kChunk && r.op != Op::kSplit) {
      out.push_back(guarded([&] { return make_single(r, key, r.targets[0].instantiate(b)); }));
      continue;
    }
    std::vector<std::string> targets;
    if (r.over.empty()) {
      for (const auto& t : r.targets) targets.push_back(t.instantiate(b));
    } else {
      for (int64_t k = 0; k < r.count; ++k) {
        Bindings with = b;
        with[r.over] = std::to_string(k);
        targets.push_back(r.targets[0].instantiate(with));
      }
    }
    out.push_back(guarded([&]() -> MapperPtr {
      if (r.op == Op::kUnstack) return unstack_tensors(key, std::move(targets), r.dim);
      if (r.op == Op::kChunk) return chunk_tensors(key, std::move(targets), r.dim);
      return split_tensors(key, std::move(targets), r.ints, r.dim);
    }));
  }
  return out;
}

}  // namespace

SpecMapping from_spec(std::string_view json, const std::vector<std::string>& checkpoint_keys) {
  const Spec spec = parse_spec(json);
  SpecMapping result;
  result.unmatched = spec.unmatched;
  result.description = spec.description;

  std::vector<std::string> current(checkpoint_keys);
  std::sort(current.begin(), current.end());
  for (size_t i = 1; i < current.size(); ++i) {
    D9D_CHECK(current[i] != current[i - 1], "from_spec: the checkpoint key '", current[i],
              "' is listed twice");
  }
  std::unordered_set<std::string> untouched(current.begin(), current.end());
  std::vector<std::vector<MapperPtr>> stage_mappers;

  for (const auto& rules : spec.stages) {
    const KeySet keys(std::move(current));
    std::unordered_map<std::string, size_t> consumed_by, produced_by;  // key -> rule index
    std::vector<MapperPtr> mappers;
    for (size_t ri = 0; ri < rules.size(); ++ri) {
      const Rule& r = rules[ri];
      std::vector<MapperPtr> instances = expand(r, keys);
      if (instances.empty()) result.unused_rules.push_back(r.summary());
      for (auto& m : instances) {
        for (const auto& g : m->state_dependency_groups()) {
          for (const auto& k : g.inputs) {
            auto [it, fresh] = consumed_by.emplace(k, ri);
            if (!fresh) {
              throw SpecError(r.path, str_cat("'", k, "' is consumed both by ",
                                              rules[it->second].summary(), " and by this rule"));
            }
          }
          for (const auto& k : g.outputs) {
            auto [it, fresh] = produced_by.emplace(k, ri);
            if (!fresh) {
              throw SpecError(r.path, str_cat("'", k, "' is produced both by ",
                                              rules[it->second].summary(), " and by this rule"));
            }
          }
        }
        mappers.push_back(std::move(m));
      }
    }
    // The keys after this stage: what it produced, and what it did not consume.
    std::vector<std::string> next;
    for (const auto& k : keys.keys) {
      if (consumed_by.count(k)) {
        untouched.erase(k);
        continue;
      }
      if (auto it = produced_by.find(k); it != produced_by.end()) {
        throw SpecError(rules[it->second].path,
                        str_cat("its output '", k, "' would replace the key '", k,
                                "' that no rule of this stage consumes"));
      }
      next.push_back(k);
    }
    for (auto& [k, ri] : produced_by) next.push_back(k);
    std::sort(next.begin(), next.end());
    current = std::move(next);
    stage_mappers.push_back(std::move(mappers));
  }

  result.unmatched_keys.assign(untouched.begin(), untouched.end());
  std::sort(result.unmatched_keys.begin(), result.unmatched_keys.end());
  if (spec.unmatched == UnmatchedPolicy::kError && !result.unmatched_keys.empty()) {
    throw ValueError(str_cat("from_spec: ", result.unmatched_keys.size(),
                             " checkpoint key(s) match no rule and the spec says \"unmatched\": "
                             "\"error\": ",
                             detail::keys_str(result.unmatched_keys)));
  }
  if (spec.unmatched == UnmatchedPolicy::kKeep) {
    if (stage_mappers.empty()) stage_mappers.emplace_back();
    for (const auto& k : result.unmatched_keys) stage_mappers[0].push_back(identity(k));
  }

  std::vector<MapperPtr> stages;
  for (auto& mappers : stage_mappers) stages.push_back(parallel(std::move(mappers)));
  stages = filter_empty_mappers(stages);
  if (stages.empty()) {
    result.mapper = parallel({});
  } else if (stages.size() == 1) {
    result.mapper = stages[0];
  } else {
    result.mapper = sequential(std::move(stages));
  }
  return result;
}

}  // namespace d9d::mapper
