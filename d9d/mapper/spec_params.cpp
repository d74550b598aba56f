#include "spec_params.hpp"

#include <algorithm>
#include <cctype>
#include <limits>
#include <vector>

#include <d9d/mapper/json.hpp>

#include "spec_json.hpp"

namespace d9d::mapper::detail {

using d9d::detail::str_cat;
using Json = nlohmann::json;

namespace {

constexpr std::string_view kConfigPrefix = "config.";

bool is_name(std::string_view s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '_') return false;
  }
  return true;
}

std::string names_of(const ParamValues& params) {
  std::string out;
  for (const auto& [name, value] : params) out += str_cat(out.empty() ? "" : ", ", name);
  return out.empty() ? "none" : out;
}

// The value at a dotted `path` under `root`, or nullptr.
const Json* find_path(const Json& root, std::string_view path) {
  const Json* at = &root;
  while (!path.empty()) {
    const size_t dot = path.find('.');
    const std::string key(path.substr(0, dot));
    if (!at->is_object()) return nullptr;
    auto it = at->find(key);
    if (it == at->end()) return nullptr;
    at = &*it;
    path = dot == std::string_view::npos ? std::string_view{} : path.substr(dot + 1);
  }
  return at;
}

// config.json, parsed once and only when a param needs it.
class Config {
 public:
  explicit Config(const SpecParams& given) : given_(given) {}

  // The integer at `path` (after "config."): at the top level, else under "text_config" (the
  // language model's part of a multimodal config). nullopt when neither holds it, it is null, or
  // there is no config.json.
  // `where` is the param's node, for errors; `origin` says which path held the value.
  std::optional<int64_t> lookup(const std::string& path, const Node& where, std::string& origin) {
    if (!given_.config_json) return std::nullopt;
    const Json& root = document(where);
    const Json* value = find_path(root, path);
    std::string found = path;
    if (value == nullptr || value->is_null()) {
      value = nullptr;
      if (const Json* text = find_path(root, "text_config"); text != nullptr) {
        value = find_path(*text, path);
        found = "text_config." + path;
      }
    }
    if (value == nullptr || value->is_null()) return std::nullopt;
    origin = str_cat(given_.config_origin, ": ", found);
    if (value->is_boolean()) return value->get<bool>() ? 1 : 0;
    if (value->is_number_integer() &&
        !(value->is_number_unsigned() &&
          value->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
      return value->get<int64_t>();
    }
    where.fail(str_cat(given_.config_origin, "'s \"", found, "\" is ", json_excerpt(*value),
                       ", not an integer or a boolean"));
  }

 private:
  const Json& document(const Node& where) {
    if (!parsed_) {
      try {
        json_ = parse_json(*given_.config_json);
      } catch (const JsonError& e) {
        where.fail(str_cat(given_.config_origin, " is not valid: ", e.what()));
      }
      parsed_ = true;
    }
    return json_;
  }

  const SpecParams& given_;
  Json json_;
  bool parsed_ = false;
};

// One declaration, read: where its value may come from.
struct Declaration {
  std::optional<std::string> config_path;  // after "config."
  std::optional<int64_t> fallback;         // the spec's default
};

int64_t literal(const Node& n) {
  if (n.j.is_boolean()) return n.j.get<bool>() ? 1 : 0;
  n.expect(n.j.is_number_integer(), "an integer or a boolean");
  return n.integer();
}

std::string config_path(const Node& n) {
  const std::string text = n.str();
  if (text.rfind(kConfigPrefix, 0) != 0 || text.size() == kConfigPrefix.size()) {
    n.fail(str_cat("expected \"config.<dotted path in config.json>\", got ",
                   json_string_excerpt(text)));
  }
  return text.substr(kConfigPrefix.size());
}

Declaration read_declaration(const Node& n) {
  Declaration d;
  if (n.j.is_string()) {
    d.config_path = config_path(n);
  } else if (n.j.is_object()) {
    n.only({"from", "default"}, "a param");
    d.config_path = config_path(n.at("from"));
    if (auto def = n.find("default")) d.fallback = literal(*def);
  } else {
    n.expect(n.j.is_number_integer() || n.j.is_boolean(),
             "an integer default, \"config.<path>\" or {\"from\": \"config.<path>\", \"default\": "
             "N}");
    d.fallback = literal(n);
  }
  return d;
}

// ---- expressions --------------------------------------------------------------------------------

class Parser {
 public:
  Parser(std::string_view text, const ParamValues& params, const Node& where)
      : text_(text), params_(params), where_(where) {}

  int64_t parse() {
    const int64_t v = sum();
    skip();
    if (pos_ != text_.size()) fail("unexpected text");
    return v;
  }

 private:
  // The expression as the spec writes it, quoted and bounded.
  std::string shown() const { return json_string_excerpt(str_cat("{", text_, "}")); }
  [[noreturn]] void fail(const std::string& what) const {
    where_.fail(str_cat(what, " at offset ", pos_, " of the expression ", shown()));
  }
  void skip() {
    while (pos_ < text_.size() && text_[pos_] == ' ') ++pos_;
  }
  bool take(char c) {
    skip();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  // Fails when `overflow` (the result of a __builtin_*_overflow, evaluated before the call).
  void check_overflow(bool overflow) const {
    if (overflow) where_.fail(str_cat("the expression ", shown(), " overflows a 64-bit integer"));
  }
  int64_t sum() {
    int64_t v = product();
    for (;;) {
      int64_t r = 0;
      if (take('+')) {
        check_overflow(__builtin_add_overflow(v, product(), &r));
        v = r;
      } else if (take('-')) {
        check_overflow(__builtin_sub_overflow(v, product(), &r));
        v = r;
      } else {
        return v;
      }
    }
  }
  int64_t product() {
    int64_t v = unary();
    for (;;) {
      int64_t r = 0;
      if (take('*')) {
        check_overflow(__builtin_mul_overflow(v, unary(), &r));
        v = r;
      } else if (take('/')) {
        v = divide(v, unary(), true);
      } else if (take('%')) {
        v = divide(v, unary(), false);
      } else {
        return v;
      }
    }
  }
  int64_t divide(int64_t a, int64_t b, bool quotient) const {
    if (b == 0) where_.fail(str_cat("the expression ", shown(), " divides by zero"));
    check_overflow(a == std::numeric_limits<int64_t>::min() && b == -1);
    return quotient ? a / b : a % b;
  }
  int64_t unary() {
    if (take('-')) {
      int64_t r = 0;
      check_overflow(__builtin_sub_overflow(int64_t{0}, unary(), &r));
      return r;
    }
    return primary();
  }
  int64_t primary() {
    skip();
    if (take('(')) {
      const int64_t v = sum();
      if (!take(')')) fail("expected ')'");
      return v;
    }
    const size_t start = pos_;
    if (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
      int64_t v = 0;
      while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
        check_overflow(__builtin_mul_overflow(v, 10, &v) ||
                       __builtin_add_overflow(v, text_[pos_] - '0', &v));
        ++pos_;
      }
      return v;
    }
    while (pos_ < text_.size() &&
           (std::isalnum(static_cast<unsigned char>(text_[pos_])) != 0 || text_[pos_] == '_')) {
      ++pos_;
    }
    if (pos_ == start) fail("expected a number, a param name or '('");
    const std::string name(text_.substr(start, pos_ - start));
    if ((name == "min" || name == "max") && take('(')) {  // min(a, b), max(a, b)
      const int64_t a = sum();
      if (!take(',')) fail("expected ',' between the two arguments of " + name);
      const int64_t b = sum();
      if (!take(')')) fail("expected ')'");
      return name == "min" ? std::min(a, b) : std::max(a, b);
    }
    auto it = params_.find(name);
    if (it == params_.end()) {
      where_.fail(str_cat("unknown param \"", name, "\" in the expression ", shown(),
                          " (the spec's params: ", names_of(params_), ")"));
    }
    return it->second;
  }

  std::string_view text_;
  const ParamValues& params_;
  const Node& where_;
  size_t pos_ = 0;
};

}  // namespace

std::map<std::string, ParamValue> resolve_params(const std::optional<Node>& params,
                                                 const SpecParams& given) {
  std::map<std::string, ParamValue> out;
  Config config(given);
  if (params) {
    params->expect(params->j.is_object(), "an object of params");
    for (auto it = params->j.begin(); it != params->j.end(); ++it) {
      const Node n{it.value(), json_child_path(params->path, it.key()), nullptr};
      if (!is_name(it.key())) {
        n.fail(str_cat("invalid param name ", json_string_excerpt(it.key()),
                       " (letters, digits and _, not starting with a digit)"));
      }
      const Declaration d = read_declaration(n);
      ParamValue& v = out[it.key()];
      if (auto g = given.values.find(it.key()); g != given.values.end()) {
        v = {g->second, "the caller"};
        continue;
      }
      if (d.config_path) {
        if (auto c = config.lookup(*d.config_path, n, v.origin)) {
          v.value = *c;
          continue;
        }
      }
      if (d.fallback) {
        v = {*d.fallback, "the spec's default"};
        continue;
      }
      const bool have_config = given.config_json.has_value();
      n.fail(str_cat("no value: ", have_config ? given.config_origin : "there is no config.json",
                     have_config ? str_cat(" has no \"", *d.config_path, "\" (nor \"text_config.",
                                           *d.config_path, "\")")
                                 : std::string(),
                     ", the param has no default and the caller gave none"));
    }
  }
  for (const auto& [name, value] : given.values) {
    if (!out.count(name)) {
      std::string declared;
      for (const auto& [n, v] : out) declared += str_cat(declared.empty() ? "" : ", ", n);
      throw SpecError("$.params", str_cat("the caller sets \"", name,
                                          "\", which the spec does not declare (its params: ",
                                          declared.empty() ? "none" : declared, ")"));
    }
  }
  return out;
}

bool is_param_expression(std::string_view text) {
  return text.size() >= 2 && text.front() == '{' && text.back() == '}';
}

int64_t evaluate_param_expression(std::string_view text, const ParamValues& params,
                                  const Node& where) {
  return Parser(text.substr(1, text.size() - 2), params, where).parse();
}

}  // namespace d9d::mapper::detail

namespace d9d::mapper {

std::map<std::string, int64_t> parallel_params(const dist::DeviceMesh& mesh) {
  std::map<std::string, int64_t> out;
  for (const std::string& name : mesh.mesh_dim_names()) {
    if (name != "tp" && name != "ep") continue;
    out[name] = mesh.size(mesh.dim_index(name));
    out[name + "_rank"] = mesh.get_local_rank(std::string_view(name));
  }
  return out;
}

}  // namespace d9d::mapper
