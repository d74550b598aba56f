// A small fork-join thread pool for data movement (private to core).
//
// Note [opportunistic parallelism]: parallel_for runs on the shared pool when the pool is idle
// and inline on the calling thread otherwise (the pool is busy with another caller, or the caller
// is itself a pool worker). A streamed reader with many threads then gets one copy per thread
// instead of queueing every copy behind one pool; a lone caller gets every core.
#pragma once

#include <cstdint>
#include <functional>

namespace d9d::detail {

// Calls fn(i) for every i in [0, count), on up to num_threads() threads. The first exception
// thrown by fn stops the remaining indices and is rethrown here.
void parallel_for(int64_t count, const std::function<void(int64_t)>& fn);

// Bytes below which splitting a copy across threads costs more than it gains.
inline constexpr int64_t kParallelMinBytes = int64_t{1} << 20;

}  // namespace d9d::detail
