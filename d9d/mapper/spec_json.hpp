// A spec's JSON values with their paths: typed accessors whose every error is a SpecError naming
// the path, and that print a wrong value bounded (json_excerpt). Private to the mapper layer.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/mapper/json.hpp>
#include <d9d/mapper/spec.hpp>

namespace d9d::mapper::detail {

// Parses a spec's text (parse_json's rules), its errors as SpecErrors.
nlohmann::json parse_spec_json(std::string_view text);

struct Node {
  const nlohmann::json& j;
  std::string path;
  // The spec's resolved params, which integer() evaluates "{expression}" fields against; the
  // nodes at() / find() / array() return carry it on.
  const std::map<std::string, int64_t>* params = nullptr;

  [[noreturn]] void fail(const std::string& message) const;
  // Fails with "expected WHAT, got TYPE VALUE" unless `ok`.
  void expect(bool ok, const char* what) const;
  bool has(const char* key) const { return j.contains(key); }
  // A required field (an error names it when it is missing) / an optional one.
  Node at(const char* key) const;
  std::optional<Node> find(const char* key) const;
  // Expects an object, and fails for any field not in `allowed`, which catches misspellings
  // ("dims" for "dim"); `what` says whose fields they are ("op \"transpose\"").
  void only(const std::vector<std::string_view>& allowed, const std::string& what) const;
  std::string str() const;
  // An integer, or a "{expression}" over the params (spec_params.hpp).
  int64_t integer() const;
  // true / false, or an integer() (non-zero is true): "{tied}".
  bool boolean() const;
  std::vector<Node> array() const;
  std::vector<int64_t> integers() const;
};

}  // namespace d9d::mapper::detail
