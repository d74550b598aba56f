#include <d9d/model_state/sizes.hpp>

#include <algorithm>
#include <cctype>
#include <string>
#include <utility>

#include <d9d/error.hpp>

namespace d9d::model_state {

namespace {

// The text of a flag value, for a message: at most 40 bytes of it.
std::string shown(std::string_view text) {
  std::string out = "\"";  // appended piece by piece: GCC 12's -Wrestrict misfires on operator+
  out.append(text.substr(0, 40));
  out.append(text.size() > 40 ? "...\"" : "\"");
  return out;
}

}  // namespace

int64_t parse_size(std::string_view text) {
  auto invalid = [&](const auto&... why) -> int64_t {
    d9d::detail::throw_error<ValueError>("invalid size ", shown(text), ": ", why...);
  };
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  size_t pos = 0;
  while (pos < text.size() && is_digit(text[pos])) ++pos;
  const std::string_view whole = text.substr(0, pos);
  std::string_view fraction;
  if (pos < text.size() && text[pos] == '.') {
    const size_t begin = ++pos;
    while (pos < text.size() && is_digit(text[pos])) ++pos;
    fraction = text.substr(begin, pos - begin);
  }
  if (whole.empty() && fraction.empty()) {
    return invalid("expected a number with an optional unit (500MB, 1.5GiB, 4096)");
  }
  std::string unit(text.substr(pos));
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  std::transform(unit.begin(), unit.end(), unit.begin(), [](char c) {
    return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  });
  static constexpr std::pair<std::string_view, int64_t> kUnits[] = {{"", 1},
                                                                    {"b", 1},
                                                                    {"kb", 1'000},
                                                                    {"mb", 1'000'000},
                                                                    {"gb", 1'000'000'000},
                                                                    {"tb", 1'000'000'000'000},
                                                                    {"kib", int64_t{1} << 10},
                                                                    {"mib", int64_t{1} << 20},
                                                                    {"gib", int64_t{1} << 30},
                                                                    {"tib", int64_t{1} << 40}};
  int64_t scale = 0;
  for (const auto& [name, value] : kUnits) {
    if (unit == name) scale = value;
  }
  if (scale == 0) {
    return invalid("unknown unit ", shown(text.substr(pos)),
                   " (use B, KB, MB, GB, TB = powers of 1000, or KiB, MiB, GiB, TiB = powers of "
                   "1024)");
  }
  // whole * scale + floor(0.fraction * scale), in integers: the fraction's part is the carry out
  // of a long multiplication of its digits by scale (last digit first).
  int64_t bytes = 0;
  for (const char c : whole) {
    if (__builtin_mul_overflow(bytes, 10, &bytes) ||
        __builtin_add_overflow(bytes, c - '0', &bytes)) {
      return invalid("more than 2^63 - 1 bytes");
    }
  }
  int64_t carry = 0;  // < scale <= 2^40, so digit * scale + carry cannot overflow
  for (auto it = fraction.rbegin(); it != fraction.rend(); ++it) {
    carry = ((*it - '0') * scale + carry) / 10;
  }
  if (__builtin_mul_overflow(bytes, scale, &bytes) ||
      __builtin_add_overflow(bytes, carry, &bytes)) {
    return invalid("more than 2^63 - 1 bytes");
  }
  return bytes;
}

}  // namespace d9d::model_state
