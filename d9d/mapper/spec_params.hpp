// Spec parameters ("params" in spec.hpp's format): each resolved from the caller's values, the
// checkpoint's config.json or the spec's default, and the "{expression}" integer arithmetic that
// op fields may use on them. Private to the mapper layer; it reads no file (the caller hands over
// config.json's text).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <d9d/mapper/spec.hpp>

namespace d9d::mapper::detail {

struct Node;

// Parameter name -> value, what "{expression}" fields are evaluated against.
using ParamValues = std::map<std::string, int64_t>;

// Resolves the spec's "params" object (`params`: its node; nullopt when the spec has none)
// against what the caller gives. A caller's value for a name the spec does not declare is an
// error, as is a param with no value from any source. Errors are SpecErrors naming the JSON path
// of the param (and the config.json path tried).
std::map<std::string, ParamValue> resolve_params(const std::optional<Node>& params,
                                                 const SpecParams& given);

// Whether `text` is a param expression: "{...}".
bool is_param_expression(std::string_view text);

// The value of the expression `text` ("{n_heads / n_kv_heads}", braces included): integers,
// param names, + - * / % (integer division and remainder, truncating toward zero, as C), unary
// minus, parentheses, min(a, b) and max(a, b). Division by zero, overflow past int64, an unknown
// name and a syntax error are SpecErrors at `where`.
int64_t evaluate_param_expression(std::string_view text, const ParamValues& params,
                                  const Node& where);

}  // namespace d9d::mapper::detail
