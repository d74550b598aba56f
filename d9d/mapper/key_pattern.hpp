// Key patterns of spec files (the language in spec.hpp): dotted keys with named captures, matched
// against a checkpoint's keys and instantiated from the captures' values. Private to the mapper
// layer; knows nothing of JSON.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace d9d::mapper::detail {

// Capture name -> the text it matched.
using Bindings = std::map<std::string, std::string>;

// A dotted key pattern: literal segments, segments with one capture `pre{name}post`, and at most
// one whole-segment multi-capture `{name...}`.
class Pattern {
 public:
  Pattern() = default;
  // Throws ValueError naming the pattern and what is wrong with it.
  explicit Pattern(std::string text);

  const std::string& text() const { return text_; }
  const std::set<std::string>& captures() const { return captures_; }
  bool has_capture(const std::string& name) const { return captures_.count(name) != 0; }
  bool has_multi() const { return multi_ >= 0; }

  // Matches a key already split into segments (split_key), binding captures into `b`; a capture
  // already bound in `b` must match the same text.
  bool match(const std::vector<std::string_view>& parts, Bindings& b) const;
  // The key with every capture replaced by its binding (each must be bound).
  std::string instantiate(const Bindings& b) const;

 private:
  struct Segment {
    enum Kind : uint8_t { kLiteral, kCapture, kMulti } kind;
    std::string prefix, name, suffix;
  };
  static bool bind(Bindings& b, const std::string& name, std::string value);
  static bool match_segment(const Segment& s, std::string_view part, Bindings& b);
  void parse_segment(const std::string& seg);

  std::string text_;
  std::vector<Segment> segs_;
  std::set<std::string> captures_;
  int multi_ = -1;  // index of the {name...} segment
};

// "a.b.c" -> {"a", "b", "c"} (views into `key`).
std::vector<std::string_view> split_key(std::string_view key);

// "{E=3, L=0}", for messages.
std::string bindings_str(const Bindings& b);

}  // namespace d9d::mapper::detail
