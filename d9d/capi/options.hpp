// The C ABI's options_json (the OPTIONS section of <d9d/d9d.h>) as the engine's options.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

namespace d9d::capi {

// Which function the options are for: d9d_convert also takes the writer's fields.
enum class OptionsFor : uint8_t { kRead, kConvert };

struct Options {
  model_state::ReadOptions read;
  model_state::WriteOptions write;        // d9d_convert only
  int threads = 0;                        // d9d's worker threads (set_num_threads); 0: unchanged
  std::map<std::string, int64_t> params;  // values for the spec's params (as the CLI's --set)
};

// Parses options_json (NULL: the defaults). Throws ValueError naming the field and the rule: an
// unknown field, a value of the wrong type or range, a field that is reserved for later ("io").
Options parse_options(const char* json, OptionsFor use);

// A size string, as model_state::parse_size reads it (Note [size units] in
// <d9d/model_state/sizes.hpp>: "512MiB", "1.5GB", "4096"). Throws ValueError naming `field` and
// the text.
int64_t parse_size(std::string_view text, std::string_view field);

}  // namespace d9d::capi
