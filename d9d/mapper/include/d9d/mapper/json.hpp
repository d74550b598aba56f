// Strict JSON for the layers above io (spec files here; the CLI and model_state may use it too):
// nlohmann/json with the rules a hand-written file needs and nlohmann does not enforce, and a
// bounded way to put a JSON value into a message. (io keeps its own parser for safetensors
// headers: Note [own JSON parser] in io/json.hpp.) Not part of <d9d/mapper.hpp>, since it brings
// nlohmann/json.hpp with it.
//
// parse_json's rules, each error naming the JSON path of the offending value ("$.rules[2].dim";
// "$" is the document):
//   1. The text is one JSON document (RFC 8259, as nlohmann reads it) whose numbers fit a double;
//      a syntax error names its byte offset.
//   2. No object holds the same key twice (nlohmann would keep the last one silently).
//   3. No value is nested deeper than max_depth arrays and objects (a 100,000-deep "[[[..." is an
//      error, not a stack overflow in whatever walks the value later).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <d9d/error.hpp>

namespace d9d::mapper {

// A document that breaks a rule of parse_json. what() is "PATH: DETAIL".
class JsonError : public ValueError {
 public:
  JsonError(std::string path, std::string detail);
  const std::string& path() const { return path_; }
  const std::string& detail() const { return detail_; }

 private:
  std::string path_;
  std::string detail_;
};

// The nesting parse_json allows by default: far beyond any spec or sidecar, far below a stack.
inline constexpr size_t kMaxJsonDepth = 64;
// How many characters of a value json_excerpt keeps by default.
inline constexpr size_t kJsonExcerptChars = 100;

// Parses `text` under the rules above. Throws JsonError.
nlohmann::json parse_json(std::string_view text, size_t max_depth = kMaxJsonDepth);

// `value` as compact JSON (what dump() gives), cut to at most `max_chars` characters and then
// "..." when longer; work and recursion are bounded by max_chars, however large or deep `value`
// is. For putting a value from a file into an error message.
std::string json_excerpt(const nlohmann::json& value, size_t max_chars = kJsonExcerptChars);
// `text` as a JSON string literal ("\"a.b\""), cut like json_excerpt.
std::string json_string_excerpt(std::string_view text, size_t max_chars = kJsonExcerptChars);

// The path of a member of the value at `path`: "$.rules" for a plain key (letters, digits, _),
// "$[\"a.b\"]" for any other, "$.rules[3]" for an array element.
std::string json_child_path(const std::string& path, std::string_view key);
std::string json_child_path(const std::string& path, size_t index);

}  // namespace d9d::mapper
