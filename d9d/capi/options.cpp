#include "options.hpp"

#include <array>
#include <cctype>
#include <limits>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include <d9d/error.hpp>
#include <d9d/model_state/conversion.hpp>

namespace d9d::capi {

namespace {

using d9d::detail::throw_error;
using Json = nlohmann::json;

constexpr int64_t kMaxInt64 = std::numeric_limits<int64_t>::max();

// Text from the caller, cut short in messages.
std::string shown(std::string text) {
  constexpr size_t kMax = 64;
  if (text.size() > kMax) text = text.substr(0, kMax) + "...";
  return text;
}
std::string shown(const Json& value) {
  return shown(value.dump());
}

// a * b + c, or nullopt past int64_t (all non-negative).
std::optional<int64_t> mul_add(int64_t a, int64_t b, int64_t c) {
  int64_t product = 0;
  int64_t sum = 0;
  if (__builtin_mul_overflow(a, b, &product) || __builtin_add_overflow(product, c, &sum)) {
    return std::nullopt;
  }
  return sum;
}

// The value of `field` as a positive size.
int64_t size_value(const Json& value, std::string_view field) {
  int64_t bytes = 0;
  if (value.is_number_integer()) {
    if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(kMaxInt64)) {
      throw_error<ValueError>("options_json: \"", field, "\" is out of range: ", shown(value));
    }
    bytes = value.get<int64_t>();
  } else if (value.is_string()) {
    bytes = parse_size(value.get<std::string>(), field);
  } else {
    throw_error<ValueError>("options_json: \"", field,
                            "\" must be a number of bytes or a size string (\"512MiB\"), got ",
                            shown(value));
  }
  D9D_CHECK(bytes > 0, "options_json: \"", field, "\" must be positive, got ", shown(value));
  return bytes;
}

bool bool_value(const Json& value, std::string_view field) {
  D9D_CHECK(value.is_boolean(), "options_json: \"", field, "\" must be true or false, got ",
            shown(value));
  return value.get<bool>();
}

}  // namespace

int64_t parse_size(std::string_view text, std::string_view field) {
  auto fail = [&](std::string_view why) {
    throw_error<ValueError>("options_json: \"", field, "\": invalid size \"",
                            shown(std::string(text)), "\": ", why);
  };
  size_t pos = 0;
  int64_t whole = 0;
  int digits = 0;
  for (; pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]));
       ++pos, ++digits) {
    const std::optional<int64_t> next = mul_add(whole, 10, text[pos] - '0');
    if (!next) fail("out of range");
    whole = *next;
  }
  // The fraction as numerator / 10^fraction_digits; 9 digits keep every product below 2^63.
  int64_t numerator = 0;
  int64_t denominator = 1;
  if (pos < text.size() && text[pos] == '.') {
    for (++pos; pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos])); ++pos) {
      if (denominator == 1'000'000'000) fail("at most 9 digits after the point");
      numerator = numerator * 10 + (text[pos] - '0');
      denominator *= 10;
      ++digits;
    }
  }
  if (digits == 0) fail("expected a number with an optional unit (512MiB, 1.5GB, 4096)");
  while (pos < text.size() && text[pos] == ' ') ++pos;
  std::string unit(text.substr(pos));
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // Note [size units] (d9d/cli/cli.hpp): decimal and binary units, no single letters.
  static constexpr std::array<std::pair<std::string_view, int64_t>, 10> kUnits = {{
      {"", 1},
      {"b", 1},
      {"kb", 1'000},
      {"mb", 1'000'000},
      {"gb", 1'000'000'000},
      {"tb", 1'000'000'000'000},
      {"kib", int64_t{1} << 10},
      {"mib", int64_t{1} << 20},
      {"gib", int64_t{1} << 30},
      {"tib", int64_t{1} << 40},
  }};
  int64_t scale = 0;
  for (const auto& [name, value] : kUnits) {
    if (unit == name) scale = value;
  }
  if (scale == 0) {
    fail(
        "unknown unit (use B, KB, MB, GB, TB = powers of 1000, or KiB, MiB, GiB, TiB = powers "
        "of 1024)");
  }
  // floor(numerator * scale / denominator) without overflow: scale = q * denominator + r, and
  // numerator * r < 10^18.
  const int64_t q = scale / denominator;
  const int64_t r = scale % denominator;
  const std::optional<int64_t> fraction = mul_add(numerator, q, numerator * r / denominator);
  const std::optional<int64_t> bytes = fraction ? mul_add(whole, scale, *fraction) : std::nullopt;
  if (!bytes) fail("out of range");
  return *bytes;
}

Options parse_options(const char* json, OptionsFor use) {
  Options o;
  // A library draws no progress bar unless asked; the read stream's bar covers a conversion.
  o.read.show_progress = false;
  o.write.show_progress = false;
  if (json == nullptr) return o;
  Json root;
  try {
    root = Json::parse(json);
  } catch (const Json::exception& e) {
    throw_error<ValueError>("options_json: not valid JSON (", e.what(), ")");
  }
  D9D_CHECK(root.is_object(), "options_json: expected a JSON object, got ", root.type_name());
  const bool convert = use == OptionsFor::kConvert;
  for (const auto& [key, value] : root.items()) {
    if (key == "device") {
      D9D_CHECK(value.is_string(), "options_json: \"device\" must be \"cpu\" or \"cuda:N\", got ",
                shown(value));
      try {
        o.read.device = Device::parse(value.get<std::string>());
      } catch (const ValueError& e) {
        throw_error<ValueError>("options_json: \"device\": ", e.what());
      }
    } else if (key == "memory_budget") {
      o.read.memory_budget = size_value(value, key);
    } else if (key == "threads") {
      D9D_CHECK(
          value.is_number_integer() && value.get<int64_t>() >= 0 && value.get<int64_t>() <= 1024,
          "options_json: \"threads\" must be an integer from 0 to 1024, got ", shown(value));
      o.threads = value.get<int>();
    } else if (key == "reader_threads") {
      D9D_CHECK(
          value.is_number_integer() && value.get<int64_t>() >= 0 && value.get<int64_t>() <= 1024,
          "options_json: \"reader_threads\" must be an integer from 0 to 1024, got ", shown(value));
      o.read.reader_threads = value.get<int>();
    } else if (key == "show_progress") {
      o.read.show_progress = bool_value(value, key);
    } else if (convert && key == "shard_size") {
      o.write.shard_size = size_value(value, key);
    } else if (convert && key == "overwrite") {
      o.write.overwrite = bool_value(value, key);
    } else if (convert && key == "fsync") {
      o.write.fsync = bool_value(value, key);
    } else if (key == "params") {
      D9D_CHECK(value.is_object(), "options_json: \"params\" must be an object of integers, got ",
                shown(value));
      for (const auto& [name, v] : value.items()) {
        D9D_CHECK(v.is_boolean() || (v.is_number_integer() &&
                                     !(v.is_number_unsigned() &&
                                       v.get<uint64_t>() > static_cast<uint64_t>(kMaxInt64))),
                  "options_json: \"params\".\"", shown(name),
                  "\" must be an integer (or true / false), got ", shown(v));
        o.params[name] = v.is_boolean() ? (v.get<bool>() ? 1 : 0) : v.get<int64_t>();
      }
    } else if (key == "io") {
      throw_error<ValueError>("options_json: \"", key, "\" is not supported by this build of d9d");
    } else if (key == "shard_size" || key == "overwrite" || key == "fsync") {
      throw_error<ValueError>("options_json: \"", key, "\" is an option of d9d_convert only");
    } else {
      throw_error<ValueError>(
          "options_json: unknown field \"", shown(key),
          "\" (known: device, memory_budget, threads, reader_threads, show_progress, params",
          convert ? ", shard_size, overwrite, fsync)" : ")");
    }
  }
  // d9d's worker threads are process-wide (as the CLI's --threads): they take effect once the
  // whole options object is known to be valid.
  if (o.threads > 0) set_num_threads(o.threads);
  return o;
}

}  // namespace d9d::capi
