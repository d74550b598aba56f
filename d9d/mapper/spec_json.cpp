#include "spec_json.hpp"

#include <algorithm>

#include "spec_params.hpp"

namespace d9d::mapper::detail {

using d9d::detail::str_cat;
using Json = nlohmann::json;

namespace {

std::string type_name(const Json& j) {
  if (j.is_number_integer()) return "an integer";
  if (j.is_number()) return "a number";
  if (j.is_string()) return "a string";
  if (j.is_boolean()) return "a boolean";
  if (j.is_null()) return "null";
  if (j.is_array()) return "an array";
  return "an object";
}

}  // namespace

Json parse_spec_json(std::string_view text) {
  try {
    return parse_json(text);
  } catch (const JsonError& e) {
    throw SpecError(e.path(), e.detail());
  }
}

void Node::fail(const std::string& message) const {
  throw SpecError(path, message);
}

void Node::expect(bool ok, const char* what) const {
  if (!ok) fail(str_cat("expected ", what, ", got ", type_name(j), " ", json_excerpt(j)));
}

Node Node::at(const char* key) const {
  auto it = j.find(key);
  if (it == j.end()) fail(str_cat("missing required field \"", key, "\""));
  return Node{*it, json_child_path(path, key), params};
}

std::optional<Node> Node::find(const char* key) const {
  auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  return Node{*it, json_child_path(path, key), params};
}

void Node::only(const std::vector<std::string_view>& allowed, const std::string& what) const {
  expect(j.is_object(), "an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (std::find(allowed.begin(), allowed.end(), it.key()) != allowed.end()) continue;
    std::string list;
    for (std::string_view a : allowed) list += str_cat(list.empty() ? "" : ", ", a);
    throw SpecError(json_child_path(path, it.key()),
                    str_cat("unknown field ", json_string_excerpt(it.key()), " for ", what,
                            " (allowed: ", list, ")"));
  }
}

std::string Node::str() const {
  expect(j.is_string(), "a string");
  return j.get<std::string>();
}

int64_t Node::integer() const {
  if (j.is_string() && is_param_expression(j.get_ref<const std::string&>())) {
    static const ParamValues kNone;
    return evaluate_param_expression(j.get_ref<const std::string&>(), params ? *params : kNone,
                                     *this);
  }
  expect(j.is_number_integer(), "an integer");
  return j.get<int64_t>();
}

bool Node::boolean() const {
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_integer() || j.is_string()) return integer() != 0;
  expect(false, "true, false or a \"{param expression}\"");
  return false;
}

std::vector<Node> Node::array() const {
  expect(j.is_array(), "an array");
  std::vector<Node> out;
  out.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) out.push_back(Node{j[i], json_child_path(path, i), params});
  return out;
}

std::vector<int64_t> Node::integers() const {
  std::vector<int64_t> out;
  for (const auto& n : array()) out.push_back(n.integer());
  return out;
}

}  // namespace d9d::mapper::detail
