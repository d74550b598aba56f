#include "options.hpp"

#include <limits>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include <d9d/error.hpp>
#include <d9d/mapper/json.hpp>
#include <d9d/model_state/conversion.hpp>
#include <d9d/model_state/sizes.hpp>

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
// A value from the caller in a message: bounded however large or deep it is (json_excerpt).
std::string shown(const Json& value) {
  return mapper::json_excerpt(value, 64);
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
  try {
    return model_state::parse_size(text);  // Note [size units]
  } catch (const ValueError& e) {
    throw_error<ValueError>("options_json: \"", field, "\": ", e.what());
  }
}

Options parse_options(const char* json, OptionsFor use) {
  Options o;
  // A library draws no progress bar unless asked; the read stream's bar covers a conversion.
  o.read.show_progress = false;
  o.write.show_progress = false;
  o.write.oversized_tensor_alone = true;  // as `d9d convert` (transformers' splitter's rule)
  o.write.single_file_if_one_shard =
      true;                     // as `d9d convert` (save_pretrained's model.safetensors)
  o.write.write_hashes = true;  // as `d9d convert`: d9d-hashes.json beside the checkpoint
  if (json == nullptr) return o;
  Json root;
  try {
    root = mapper::parse_json(json);  // strict and at most 64 levels deep
  } catch (const mapper::JsonError& e) {
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
      D9D_CHECK(value.is_string(), "options_json: \"io\" must be a string, got ", shown(value));
      try {
        o.read.io = io::parse_io_backend(value.get<std::string>());
      } catch (const ValueError& e) {
        throw_error<ValueError>("options_json: \"io\": ", e.what());
      }
    } else if (convert && key == "write_hashes") {
      o.write.write_hashes = bool_value(value, key);
    } else if (key == "shard_size" || key == "overwrite" || key == "fsync" ||
               key == "write_hashes") {
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
