// The numbered rules of safetensors.hpp, as short sentences for error messages (private to io).
#pragma once

#include <cstdint>

namespace d9d::io::detail {

// Rule 2: the largest header length N.
inline constexpr uint64_t kMaxHeaderSize = 100'000'000;

// "the header length is at most 100,000,000" for rule 2; "" for a number that is not a rule.
const char* rule_text(int rule);

}  // namespace d9d::io::detail
