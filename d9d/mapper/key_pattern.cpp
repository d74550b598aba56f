#include "key_pattern.hpp"

#include <algorithm>
#include <cctype>

#include <d9d/error.hpp>
#include <d9d/mapper/json.hpp>

namespace d9d::mapper::detail {

Pattern::Pattern(std::string text) : text_(std::move(text)) {
  D9D_CHECK(!text_.empty(), "a pattern cannot be empty");
  // Segments end at dots outside braces ("{rest...}" holds dots of its own).
  size_t start = 0;
  bool in_braces = false;
  for (size_t i = 0; i <= text_.size(); ++i) {
    if (i == text_.size() || (text_[i] == '.' && !in_braces)) {
      parse_segment(text_.substr(start, i - start));
      start = i + 1;
    } else if (text_[i] == '{') {
      in_braces = true;
    } else if (text_[i] == '}') {
      in_braces = false;
    }
  }
}

bool Pattern::match(const std::vector<std::string_view>& parts, Bindings& b) const {
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

std::string Pattern::instantiate(const Bindings& b) const {
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

bool Pattern::bind(Bindings& b, const std::string& name, std::string value) {
  auto [it, inserted] = b.emplace(name, value);
  return inserted || it->second == value;
}

bool Pattern::match_segment(const Segment& s, std::string_view part, Bindings& b) {
  if (s.kind == Segment::kLiteral) return part == s.prefix;
  if (part.size() <= s.prefix.size() + s.suffix.size()) return false;
  if (part.substr(0, s.prefix.size()) != s.prefix) return false;
  if (part.substr(part.size() - s.suffix.size()) != s.suffix) return false;
  return bind(
      b, s.name,
      std::string(part.substr(s.prefix.size(), part.size() - s.prefix.size() - s.suffix.size())));
}

void Pattern::parse_segment(const std::string& seg) {
  D9D_CHECK(!seg.empty(), "pattern ", json_string_excerpt(text_), " has an empty segment");
  const size_t open = seg.find('{');
  if (open == std::string::npos) {
    D9D_CHECK(seg.find('}') == std::string::npos, "pattern ", json_string_excerpt(text_),
              ": unmatched '}' in segment ", json_string_excerpt(seg));
    segs_.push_back(Segment{Segment::kLiteral, seg, {}, {}});
    return;
  }
  const size_t close = seg.find('}', open);
  D9D_CHECK(close != std::string::npos, "pattern ", json_string_excerpt(text_),
            ": unmatched '{' in segment ", json_string_excerpt(seg));
  Segment s{Segment::kCapture, seg.substr(0, open), seg.substr(open + 1, close - open - 1),
            seg.substr(close + 1)};
  D9D_CHECK(
      s.prefix.find('}') == std::string::npos && s.suffix.find_first_of("{}") == std::string::npos,
      "pattern ", json_string_excerpt(text_), ": a segment holds at most one capture, got ",
      json_string_excerpt(seg));
  if (s.name.size() > 3 && s.name.compare(s.name.size() - 3, 3, "...") == 0) {
    s.name.resize(s.name.size() - 3);
    s.kind = Segment::kMulti;
    D9D_CHECK(s.prefix.empty() && s.suffix.empty(), "pattern ", json_string_excerpt(text_), ": {",
              s.name, "...} must be a whole segment, got ", json_string_excerpt(seg));
    D9D_CHECK(multi_ < 0, "pattern ", json_string_excerpt(text_),
              ": at most one {name...} per pattern");
    multi_ = static_cast<int>(segs_.size());
  }
  const bool ident = !s.name.empty() && !std::isdigit(static_cast<unsigned char>(s.name[0])) &&
                     std::all_of(s.name.begin(), s.name.end(), [](char c) {
                       return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                     });
  D9D_CHECK(ident, "pattern ", json_string_excerpt(text_), ": capture name ",
            json_string_excerpt(s.name), " is not an identifier (letters, digits, _)");
  captures_.insert(s.name);
  segs_.push_back(std::move(s));
}

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

}  // namespace d9d::mapper::detail
