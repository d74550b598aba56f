#include "json.hpp"

#include <cstring>
#include <set>

#include <d9d/error.hpp>

namespace d9d::io::detail {

size_t find_invalid_utf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time (headers are almost all ASCII).
    while (i + 8 <= n) {
      uint64_t word = 0;
      std::memcpy(&word, p + i, 8);
      if ((word & 0x8080808080808080ULL) != 0) break;
      i += 8;
    }
    if (i >= n) break;
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t min = 0;
    uint32_t cp = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2, min = 0x80, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min = 0x800, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min = 0x10000, cp = c & 0x07;
    } else {
      return i;  // a continuation byte without a lead, or 0xF8..0xFF
    }
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

std::string JsonCursor::describe_next() {
  skip_ws();
  return describe_at(pos_);
}

std::string JsonCursor::describe_at(size_t pos) const {
  if (pos >= text_.size()) return "the end of the header";
  const auto c = static_cast<unsigned char>(text_[pos]);
  if (c == 0) return "a NUL byte";
  if (c < 0x20 || c >= 0x7F) {
    static const char* hex = "0123456789abcdef";
    return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
  }
  return std::string("'") + static_cast<char>(c) + "'";
}

void JsonCursor::fail(std::string message) const {
  fail_at(pos_, std::move(message));
}

void JsonCursor::fail_at(size_t pos, std::string message) const {
  throw JsonSyntaxError{pos, std::move(message)};
}

void JsonCursor::expect(char c, const char* what) {
  if (!consume(c)) fail(std::string("expected ") + what + ", found " + describe_next());
}

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace

std::string_view JsonCursor::string(std::string& scratch) {
  skip_ws();
  if (at_end() || text_[pos_] != '"') fail("expected a string, found " + describe_next());
  const size_t start = ++pos_;
  const char* s = text_.data();
  const size_t n = text_.size();
  // Fast path: no escapes. Eight bytes at a time until one may be '"', '\\' or a control
  // character (the classic has-zero-byte test on the word XORed with each).
  size_t i = start;
  constexpr uint64_t kOnes = 0x0101010101010101ULL, kHighs = 0x8080808080808080ULL;
  while (i + 8 <= n) {
    uint64_t w = 0;
    std::memcpy(&w, s + i, 8);
    const uint64_t quote = w ^ (kOnes * '"'), slash = w ^ (kOnes * '\\');
    const uint64_t special =
        ((quote - kOnes) & ~quote) | ((slash - kOnes) & ~slash) | ((w - kOnes * 0x20) & ~w);
    if ((special & kHighs) != 0) break;
    i += 8;
  }
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\' || c < 0x20) break;
    ++i;
  }
  if (i < n && s[i] == '"') {
    pos_ = i + 1;
    return text_.substr(start, i - start);
  }
  scratch.assign(s + start, i - start);
  while (true) {
    if (i >= n) fail_at(start - 1, "unterminated string");
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"') {
      pos_ = i + 1;
      return scratch;
    }
    if (c < 0x20) {
      fail_at(i, "control character 0x" + std::string(1, "0123456789abcdef"[c >> 4]) +
                     "0123456789abcdef"[c & 15] + " inside a string (it must be escaped)");
    }
    if (c != '\\') {
      scratch += static_cast<char>(c);
      ++i;
      continue;
    }
    if (i + 1 >= n) fail_at(i, "unterminated escape");
    const char e = s[i + 1];
    i += 2;
    switch (e) {
      case '"':
        scratch += '"';
        continue;
      case '\\':
        scratch += '\\';
        continue;
      case '/':
        scratch += '/';
        continue;
      case 'b':
        scratch += '\b';
        continue;
      case 'f':
        scratch += '\f';
        continue;
      case 'n':
        scratch += '\n';
        continue;
      case 'r':
        scratch += '\r';
        continue;
      case 't':
        scratch += '\t';
        continue;
      case 'u':
        break;
      default:
        fail_at(i - 2, std::string("invalid escape '\\") + e + "'");
    }
    auto read_hex4 = [&](size_t at) -> uint32_t {
      if (at + 4 > n) fail_at(at - 2, "truncated \\u escape");
      uint32_t v = 0;
      for (size_t k = 0; k < 4; ++k) {
        const int h = hex_value(s[at + k]);
        if (h < 0) fail_at(at - 2, "invalid \\u escape (expected four hex digits)");
        v = (v << 4) | static_cast<uint32_t>(h);
      }
      return v;
    };
    uint32_t cp = read_hex4(i);
    const size_t escape_pos = i - 2;
    i += 4;
    if (cp >= 0xDC00 && cp <= 0xDFFF) {
      fail_at(escape_pos, "\\u escape is a lone low surrogate");
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (i + 2 > n || s[i] != '\\' || s[i + 1] != 'u') {
        fail_at(escape_pos, "\\u escape is a high surrogate without its low surrogate");
      }
      const uint32_t low = read_hex4(i + 2);
      if (low < 0xDC00 || low > 0xDFFF) {
        fail_at(escape_pos, "\\u escape is a high surrogate without its low surrogate");
      }
      i += 6;
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    append_utf8(scratch, cp);
  }
}

JsonNumber JsonCursor::number() {
  skip_ws();
  JsonNumber num;
  const size_t start = pos_;
  const char* s = text_.data();
  const size_t n = text_.size();
  size_t i = pos_;
  auto digit = [&](size_t k) { return k < n && static_cast<unsigned>(s[k] - '0') < 10; };
  if (i < n && s[i] == '-') {
    num.negative = true;
    ++i;
  }
  if (!digit(i)) fail_at(start, "invalid number (expected a digit)");
  if (s[i] == '0' && digit(i + 1)) fail_at(start, "invalid number (leading zero)");
  // Up to 18 digits cannot pass 2^63 - 1; only longer numbers need the overflow check.
  const size_t first_digit = i;
  uint64_t value = 0;
  while (digit(i) && i - first_digit < 18) value = value * 10 + static_cast<uint64_t>(s[i++] - '0');
  while (digit(i)) {
    const auto d = static_cast<uint64_t>(s[i++] - '0');
    if (value > (uint64_t{INT64_MAX} - d) / 10) num.too_large = true;
    if (!num.too_large) value = value * 10 + d;
  }
  num.value = value;
  if (i < n && s[i] == '.') {
    num.integer = false;
    ++i;
    if (!digit(i)) fail_at(start, "invalid number (expected a digit after '.')");
    while (digit(i)) ++i;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    num.integer = false;
    ++i;
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digit(i)) fail_at(start, "invalid number (expected a digit in the exponent)");
    while (digit(i)) ++i;
  }
  pos_ = i;
  num.text = text_.substr(start, i - start);
  return num;
}

std::string_view JsonCursor::skip_value(int depth) {
  if (depth >= kMaxDepth) fail("values nested deeper than 64 levels");
  const char c = peek();
  const size_t start = pos_;
  std::string scratch;
  switch (c) {
    case '{': {
      ++pos_;
      std::set<std::string> keys;
      if (!consume('}')) {
        do {
          skip_ws();
          const size_t key_pos = pos_;
          const std::string_view key = string(scratch);
          if (!keys.emplace(key).second) fail_at(key_pos, "duplicate key " + quote_name(key));
          expect(':', "':' after an object key");
          skip_value(depth + 1);
        } while (consume(','));
        expect('}', "',' or '}' in an object");
      }
      break;
    }
    case '[':
      ++pos_;
      if (!consume(']')) {
        do {
          skip_value(depth + 1);
        } while (consume(','));
        expect(']', "',' or ']' in an array");
      }
      break;
    case '"':
      string(scratch);
      break;
    case 't':
    case 'f':
    case 'n': {
      const std::string_view word = c == 't' ? "true" : c == 'f' ? "false" : "null";
      if (text_.substr(pos_, word.size()) != word)
        fail("invalid literal, found " + describe_next());
      pos_ += word.size();
      break;
    }
    default:
      if (c == '-' || (c >= '0' && c <= '9')) {
        number();
      } else {
        fail("expected a value, found " + describe_next());
      }
  }
  return text_.substr(start, pos_ - start);
}

void append_json_string(std::string& out, std::string_view text) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

std::string quote_name(std::string_view text) {
  constexpr size_t kMax = 200;
  size_t keep = text.size();
  if (keep > kMax) {
    keep = kMax;
    while (keep > 0 && (static_cast<unsigned char>(text[keep]) & 0xC0) == 0x80) --keep;
  }
  std::string out;
  append_json_string(out, text.substr(0, keep));
  if (keep < text.size()) out.insert(out.size() - 1, "...");
  if (find_invalid_utf8(out) == std::string_view::npos) return out;
  // Not UTF-8 (a name from a broken file): escape every byte that is not printable ASCII.
  std::string safe;
  for (const char ch : out) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x7F) {
      static const char* hex = "0123456789abcdef";
      safe += "\\x";
      safe += hex[c >> 4];
      safe += hex[c & 15];
    } else {
      safe += ch;
    }
  }
  return safe;
}

}  // namespace d9d::io::detail
