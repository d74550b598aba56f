// Sizes as people write them ("5GB", "1.5GiB", "4096"), for the d9d CLI's flags and the C ABI's
// options: one grammar, one parser.
#pragma once

#include <cstdint>
#include <string_view>

namespace d9d::model_state {

// Note [size units]: a size (a command-line flag, a size in the C ABI's options_json) is a number
// with an optional unit. Decimal units are powers of 1000 and binary units powers of 1024, as
// huggingface_hub's max_shard_size ("5GB" = 5 * 10^9 bytes) and the IEC: B, KB, MB, GB, TB = 10^0..10^12; KiB, MiB, GiB, TiB =
// 2^10..2^40. Units are case-insensitive ("5gb"), a space before the unit is allowed, fractions
// are allowed ("1.5GiB", rounded down to a whole byte). Single letters ("5G") are refused as
// ambiguous. (The reference's shard_size_gb counts GiB: its 1.0 is --shard-size 1GiB.) Computed
// in integers, exactly, whatever the number of digits; past 2^63 - 1 bytes is an error.
//
// Throws ValueError naming (a bounded prefix of) the text.
int64_t parse_size(std::string_view text);

}  // namespace d9d::model_state
