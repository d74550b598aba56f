// A strict, allocation-light JSON reader and writer helpers (private to io).
//
// Note [own JSON parser]: the header is the attack surface of every checkpoint, and the rules of
// safetensors.hpp need things general parsers do not give: duplicate keys detected (nlohmann and
// simdjson's DOM keep one silently), integers kept exact up to 2^63 - 1 and told apart from
// "1.0" or "1e3", keys compared after unescaping, and error positions. The cursor below parses
// RFC 8259 exactly: no comments, no trailing commas, no leading zeros, no bare control
// characters in strings, \u escapes decoded to UTF-8 with surrogates paired. It expects input
// already checked to be valid UTF-8 (validate_utf8) and reports the first error as a
// JsonSyntaxError with its byte position; callers add the file name and rule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace d9d::io::detail {

struct JsonSyntaxError {
  size_t pos;           // byte offset in the JSON text
  std::string message;  // what was expected or found
};

// Position of the first byte that breaks UTF-8 (RFC 3629: no overlong forms, no surrogates, no
// code point past U+10FFFF), or npos if `text` is valid.
size_t find_invalid_utf8(std::string_view text);

// A JSON number as written, classified. Only `value` of an integer that fits is meaningful.
struct JsonNumber {
  bool negative = false;
  bool integer = true;     // no fraction and no exponent
  bool too_large = false;  // an integer past 2^63 - 1
  uint64_t value = 0;
  std::string_view text;
};

class JsonCursor {
 public:
  static constexpr int kMaxDepth = 64;

  explicit JsonCursor(std::string_view text) : text_(text) {}

  size_t pos() const { return pos_; }
  std::string_view text() const { return text_; }
  bool at_end() const { return pos_ >= text_.size(); }
  void skip_ws() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\n' && c != '\r' && c != '\t') return;
      ++pos_;
    }
  }
  // The next byte after whitespace, or '\0' at the end.
  char peek() {
    skip_ws();
    return pos_ < text_.size() ? text_[pos_] : '\0';
  }
  // Consumes `c` after whitespace if it is next.
  bool consume(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  // Consumes `c` after whitespace or throws "expected <what>".
  void expect(char c, const char* what);

  // Parses a string (the cursor at its opening quote, after whitespace). Returns a view of the
  // text itself when it has no escapes, else of `scratch`, which receives the decoded string.
  std::string_view string(std::string& scratch);
  // Parses a number (the cursor at its first byte, after whitespace).
  JsonNumber number();
  // Parses and discards any value, checking its syntax and duplicate keys in its objects; returns
  // the value's text.
  std::string_view skip_value(int depth = 0);

  // Describes the token at the cursor for messages: "'x'", "the end of the header", "a NUL byte",
  // "byte 0x0a".
  std::string describe_next();
  // Describes the byte at `pos` itself (no whitespace skipped).
  std::string describe_at(size_t pos) const;
  [[noreturn]] void fail(std::string message) const;
  [[noreturn]] void fail_at(size_t pos, std::string message) const;

 private:
  std::string_view text_;
  size_t pos_ = 0;
};

// Appends `text` as a JSON string (quotes included), escaping as serde_json does: '"', '\\', and
// control characters (\b \f \n \r \t, others as \u00XX); everything else verbatim.
void append_json_string(std::string& out, std::string_view text);

// `text` quoted for an error message: JSON-escaped, and cut to 200 bytes with "..." if longer.
std::string quote_name(std::string_view text);

}  // namespace d9d::io::detail
