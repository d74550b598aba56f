// validate_safetensors: the header parser and every rule of safetensors.hpp.
#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>
#include <sstream>
#include <string>

#include <d9d/io/safetensors.hpp>

#include "json.hpp"
#include "name_index.hpp"
#include "rules.hpp"
#include "validate.hpp"

namespace d9d::io {
namespace detail {

const char* rule_text(int rule) {
  static const char* const kRules[] = {
      "",
      "the file holds the 8-byte header length",
      "the header length is at most 100,000,000",
      "the header lies inside the file",
      "the header is valid UTF-8",
      "the header is exactly one JSON object",
      "no key appears twice",
      "__metadata__ is an object of strings",
      "a tensor entry has exactly the keys dtype, shape and data_offsets",
      "dtype is a known safetensors dtype",
      "shape is a list of non-negative integers",
      "data_offsets is two non-negative integers, begin <= end",
      "the byte size of dtype and shape equals end - begin",
      "the data ranges tile the data section from 0 to the end of the file",
  };
  return rule >= 1 && rule <= 13 ? kRules[rule] : "";
}

}  // namespace detail

namespace {

using detail::JsonCursor;
using detail::JsonNumber;
using detail::JsonSyntaxError;
using detail::quote_name;

using Entry = std::pair<std::string, TensorInfo>;

// `text == literal`, with the length checked first and a fixed-size compare the compiler inlines
// (these run for every key of a 100,000-tensor header).
template <size_t N>
bool is(std::string_view text, const char (&literal)[N]) {
  return text.size() == N - 1 && std::memcmp(text.data(), literal, N - 1) == 0;
}

class HeaderParser {
 public:
  HeaderParser(std::string_view file_name, std::string_view header)
      : file_(file_name), cursor_(header) {}

  [[noreturn]] void fail(const std::string& where, const std::string& what, int rule) const {
    d9d::detail::throw_error<FormatError>(file_, ": ", where, ": ", what, " (rule ", rule, ": ",
                                          detail::rule_text(rule), ")");
  }
  [[noreturn]] void fail_syntax(const JsonSyntaxError& e, int rule) const {
    fail("header byte " + std::to_string(e.pos), e.message, rule);
  }

  void parse(std::vector<Entry>& entries, Metadata& metadata) {
    try {
      parse_root(entries, metadata);
    } catch (const JsonSyntaxError& e) {
      fail_syntax(e, 5);
    }
  }

 private:
  void parse_root(std::vector<Entry>& entries, Metadata& metadata) {
    const std::string_view text = cursor_.text();
    if (text.empty() || text[0] != '{') {
      cursor_.fail("the header must begin with '{', found " + cursor_.describe_at(0));
    }
    cursor_.expect('{', "'{'");
    bool seen_metadata = false;
    std::string scratch;
    if (!cursor_.consume('}')) {
      do {
        cursor_.skip_ws();
        const size_t key_pos = cursor_.pos();
        const std::string_view key = cursor_.string(scratch);
        cursor_.expect(':', "':' after a key");
        if (is(key, "__metadata__")) {
          if (seen_metadata) {
            fail("header byte " + std::to_string(key_pos), "\"__metadata__\" appears twice", 6);
          }
          seen_metadata = true;
          parse_metadata(metadata);
        } else {
          Entry& entry = entries.emplace_back();
          entry.first.assign(key);
          parse_tensor(entry);
        }
      } while (cursor_.consume(','));
      cursor_.expect('}', "',' or '}' after a header entry");
    }
    cursor_.skip_ws();
    if (!cursor_.at_end()) {
      const bool nul = text[cursor_.pos()] == '\0';
      cursor_.fail(std::string(nul ? "NUL padding" : "trailing bytes") +
                   " after the JSON object (" + std::to_string(text.size() - cursor_.pos()) +
                   " bytes); only spaces may pad the header");
    }
  }

  void parse_metadata(Metadata& metadata) {
    const std::string where = "__metadata__";
    if (cursor_.peek() != '{') {
      fail(where, "expected an object, found " + cursor_.describe_next(), 7);
    }
    cursor_.expect('{', "'{'");
    if (cursor_.consume('}')) return;
    std::string key_scratch, value_scratch;
    do {
      cursor_.skip_ws();
      const std::string_view key = cursor_.string(key_scratch);
      cursor_.expect(':', "':' after a key");
      if (cursor_.peek() != '"') {
        fail(
            where,
            "the value of " + quote_name(key) + " is " + cursor_.describe_next() + ", not a string",
            7);
      }
      std::string value(cursor_.string(value_scratch));
      if (!metadata.emplace(std::string(key), std::move(value)).second) {
        fail(where, "key " + quote_name(key) + " appears twice", 6);
      }
    } while (cursor_.consume(','));
    cursor_.expect('}', "',' or '}' in __metadata__");
  }

  // Names a tensor entry in messages, formatted only when one is thrown.
  struct TensorWhere {
    const std::string* name;
    operator std::string() const { return "tensor " + quote_name(*name); }  // NOLINT
  };

  // Non-negative integer for rules 10 and 11; `what` names the value for messages.
  int64_t parse_count(const TensorWhere& where, const char* what, int rule) {
    const char c = cursor_.peek();
    if (c != '-' && (c < '0' || c > '9')) {
      fail(where, std::string(what) + " is " + cursor_.describe_next() + ", not an integer", rule);
    }
    const JsonNumber num = cursor_.number();
    if (num.negative)
      fail(where, std::string(what) + " is negative: " + std::string(num.text), rule);
    if (!num.integer) {
      fail(where, std::string(what) + " " + std::string(num.text) + " is not an integer", rule);
    }
    if (num.too_large) {
      fail(where, std::string(what) + " " + std::string(num.text) + " is past 2^63 - 1", rule);
    }
    return static_cast<int64_t>(num.value);
  }

  void parse_tensor(Entry& entry) {
    // Messages are built only on failure: this runs once per tensor of a 100,000-tensor header.
    const TensorWhere where{&entry.first};
    if (cursor_.peek() != '{') {
      fail(where,
           "expected an object {dtype, shape, data_offsets}, found " + cursor_.describe_next(), 8);
    }
    cursor_.expect('{', "'{'");
    enum : unsigned { kDtype = 1, kShape = 2, kOffsets = 4 };
    unsigned seen = 0;
    std::string scratch;
    if (!cursor_.consume('}')) {
      do {
        cursor_.skip_ws();
        const std::string_view key = cursor_.string(scratch);
        cursor_.expect(':', "':' after a key");
        unsigned bit = 0;
        if (is(key, "dtype")) {
          bit = kDtype;
        } else if (is(key, "shape")) {
          bit = kShape;
        } else if (is(key, "data_offsets")) {
          bit = kOffsets;
        } else {
          fail(where, "unexpected key " + quote_name(key), 8);
        }
        if ((seen & bit) != 0) fail(where, "key " + quote_name(key) + " appears twice", 6);
        seen |= bit;
        if (bit == kDtype) {
          if (cursor_.peek() != '"') {
            fail(where, "dtype is " + cursor_.describe_next() + ", not a string", 9);
          }
          const std::string_view name = cursor_.string(scratch);
          const auto dtype = dtype_from_name(name);
          if (!dtype) fail(where, "unknown dtype " + quote_name(name), 9);
          entry.second.dtype = *dtype;
        } else if (bit == kShape) {
          if (cursor_.peek() != '[') {
            fail(where, "shape is " + cursor_.describe_next() + ", not a list", 10);
          }
          cursor_.expect('[', "'['");
          if (!cursor_.consume(']')) {
            do {
              entry.second.shape.push_back(parse_count(where, "a shape entry", 10));
            } while (cursor_.consume(','));
            cursor_.expect(']', "',' or ']' in shape");
          }
        } else {
          if (cursor_.peek() != '[') {
            fail(where, "data_offsets is " + cursor_.describe_next() + ", not a list", 11);
          }
          cursor_.expect('[', "'['");
          int64_t offsets[2] = {0, 0};
          int count = 0;
          if (!cursor_.consume(']')) {
            do {
              const int64_t v = parse_count(where, "a data offset", 11);
              if (count < 2) offsets[count] = v;
              ++count;
            } while (cursor_.consume(','));
            cursor_.expect(']', "',' or ']' in data_offsets");
          }
          if (count != 2) {
            fail(where, "data_offsets has " + std::to_string(count) + " entries, not 2", 11);
          }
          if (offsets[0] > offsets[1]) {
            fail(where,
                 "data_offsets [" + std::to_string(offsets[0]) + ", " + std::to_string(offsets[1]) +
                     "] end before they begin",
                 11);
          }
          entry.second.begin = offsets[0];
          entry.second.end = offsets[1];
        }
      } while (cursor_.consume(','));
      cursor_.expect('}', "',' or '}' in a tensor entry");
    }
    if ((seen & kDtype) == 0) fail(where, "the key \"dtype\" is missing", 8);
    if ((seen & kShape) == 0) fail(where, "the key \"shape\" is missing", 8);
    if ((seen & kOffsets) == 0) fail(where, "the key \"data_offsets\" is missing", 8);
    check_size(where, entry.second);
  }

  void check_size(const TensorWhere& where, const TensorInfo& info) const {
    // The element count overflows as the reference's checked product does (so [0, 2^62, 2^62] is
    // empty and [2^62, 2^62, 0] is an overflow). The byte size is numel * bits / 8 taken as
    // (numel / 8) * bits + (numel % 8) * bits / 8, so that it does not overflow where only the
    // bit count would (a U8 tensor of 2^63 - 1 elements is 2^63 - 1 bytes).
    uint64_t numel = 1;
    bool overflow = false;
    for (const int64_t s : info.shape) {
      overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(s), &numel);
    }
    const auto bits = static_cast<uint64_t>(dtype_bits(info.dtype));
    uint64_t bytes = 0;
    overflow |= __builtin_mul_overflow(numel / 8, bits, &bytes);
    overflow |= __builtin_add_overflow(bytes, numel % 8 * bits / 8, &bytes);
    auto desc = [&] {
      std::ostringstream out;
      out << info.dtype << " " << info.shape;
      return out;
    };
    if (overflow || bytes > static_cast<uint64_t>(INT64_MAX)) {
      fail(where, desc().str() + " has a byte size past 2^63 - 1", 12);
    }
    if (numel % 8 * bits % 8 != 0) {
      fail(where,
           desc().str() + " is " + std::to_string(numel) + " elements of " + std::to_string(bits) +
               " bits, not a whole number of bytes",
           12);
    }
    if (bytes != static_cast<uint64_t>(info.end - info.begin)) {
      fail(where,
           desc().str() + " needs " + std::to_string(bytes) + " bytes but data_offsets [" +
               std::to_string(info.begin) + ", " + std::to_string(info.end) + "] hold " +
               std::to_string(info.end - info.begin),
           12);
    }
  }

  std::string_view file_;
  JsonCursor cursor_;
};

}  // namespace

SafetensorsHeader validate_safetensors(std::span<const std::byte> file, std::string_view name) {
  detail::NameIndex index;
  return detail::validate_safetensors(file, file.size(), name, index);
}

namespace detail {

SafetensorsHeader validate_safetensors(std::span<const std::byte> head, uint64_t file_size,
                                       std::string_view name, NameIndex& index) {
  auto fail = [&](const std::string& where, const std::string& what, int rule) {
    d9d::detail::throw_error<FormatError>(name, ": ", where, ": ", what, " (rule ", rule, ": ",
                                          detail::rule_text(rule), ")");
  };
  if (file_size < 8) {
    fail("header length", "the file is " + std::to_string(file_size) + " bytes, fewer than 8", 1);
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(head[static_cast<size_t>(i)]);
  if (n > detail::kMaxHeaderSize) {
    // Not echoed: an implausible length is 8 bytes of whatever the file is (a secret, a
    // password file's first line), not a number anyone wrote.
    fail("header length",
         "not a safetensors file: its first 8 bytes are not a plausible header length (a "
         "little-endian integer of at most 100000000)",
         2);
  }
  if (8 + n > file_size) {
    fail("header length",
         std::to_string(n) + " bytes of header do not fit in the " + std::to_string(file_size - 8) +
             " bytes after the length",
         3);
  }
  D9D_ASSERT(head.size() >= 8 + n);
  const std::string_view header(reinterpret_cast<const char*>(head.data()) + 8,
                                static_cast<size_t>(n));
  if (const size_t bad = detail::find_invalid_utf8(header); bad != std::string_view::npos) {
    fail("header byte " + std::to_string(bad), "invalid UTF-8", 4);
  }

  SafetensorsHeader out;
  out.header_size = static_cast<int64_t>(n);
  std::vector<Entry>& entries = out.tensors;
  // Every tensor entry opens exactly one '{' of its own, so counting them bounds the entries and
  // the vector never reallocates (a memchr-speed pass over the header).
  entries.reserve(static_cast<size_t>(std::count(header.begin(), header.end(), '{')));
  HeaderParser(name, header).parse(entries, out.metadata);

  // Rule 6 for tensor names (entries' strings no longer move), and the index callers keep. Its
  // positions are header positions until the stable sort below; then it is rebuilt only if the
  // sort moved anything (reference writers' headers are already in offset order).
  if (const auto dup = index.build(
          entries.size(), [&](size_t i) -> std::string_view { return entries[i].first; })) {
    fail("tensor " + quote_name(entries[*dup].first), "the name appears twice in the header", 6);
  }

  // Rule 13: sorted by range, the tensors tile [0, data size).
  // Stable: zero-size tensors on one offset keep their header order.
  auto by_range = [](const Entry& a, const Entry& b) {
    if (a.second.begin != b.second.begin) return a.second.begin < b.second.begin;
    return a.second.end < b.second.end;
  };
  if (!std::is_sorted(entries.begin(), entries.end(), by_range)) {
    std::stable_sort(entries.begin(), entries.end(), by_range);
    index.build(entries.size(), [&](size_t i) -> std::string_view { return entries[i].first; });
  }
  const auto data_size = static_cast<int64_t>(file_size - 8 - n);
  int64_t cursor = 0;
  const std::string* previous = nullptr;
  for (const auto& [e_name, e_info] : entries) {
    struct {
      const std::string& name;
      const TensorInfo& info;
    } e{e_name, e_info};
    if (e.info.begin != cursor) {
      const std::string range =
          "data_offsets [" + std::to_string(e.info.begin) + ", " + std::to_string(e.info.end) + "]";
      if (previous == nullptr) {
        fail("tensor " + quote_name(e.name),
             range + ": the first tensor of the data section must begin at 0 (a gap of " +
                 std::to_string(e.info.begin) + " bytes)",
             13);
      }
      const std::string prev =
          "tensor " + quote_name(*previous) + ", which ends at " + std::to_string(cursor);
      if (e.info.begin > cursor) {
        fail("tensor " + quote_name(e.name),
             range + " leave a gap of " + std::to_string(e.info.begin - cursor) + " bytes after " +
                 prev,
             13);
      }
      fail("tensor " + quote_name(e.name), range + " overlap " + prev, 13);
    }
    if (e.info.end > data_size) {
      fail("tensor " + quote_name(e.name),
           "data_offsets [" + std::to_string(e.info.begin) + ", " + std::to_string(e.info.end) +
               "] pass the end of the file (the data section has " + std::to_string(data_size) +
               " bytes)",
           13);
    }
    cursor = e.info.end;
    previous = &e_name;
  }
  if (cursor != data_size) {
    fail("data section",
         std::to_string(data_size - cursor) + " trailing bytes after the last tensor (" +
             (previous ? "tensor " + quote_name(*previous) + " ends"
                       : std::string("no tensors, data ends")) +
             " at " + std::to_string(cursor) + ", the data section has " +
             std::to_string(data_size) + " bytes)",
         13);
  }

  return out;
}

}  // namespace detail
}  // namespace d9d::io
