// A small fork-join helper for io's parallel reads (private to io).
#pragma once

#include <cstdint>
#include <functional>

namespace d9d::io::detail {

// Calls fn(i) for i in [0, count) on up to `threads` threads (the caller is one of them); the
// first exception stops the remaining indices and is rethrown. Small and self-contained because
// core's pool is private to core; see the report for the proposed core API.
void parallel_indices(int64_t count, int threads, const std::function<void(int64_t)>& fn);

}  // namespace d9d::io::detail
