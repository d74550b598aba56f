// What the CPU benchmarks (bench_core, bench_quant) time with: medians, wall-clock and per-thread
// CPU seconds, and memcpy of the same bytes as the limit, timed in turn with the op rep after rep
// so that both see the same machine. Header-only; bench code, not part of libd9d.
#pragma once

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

namespace d9d::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

inline double seconds_of(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The CPU time of the calling thread that fn takes: what one core does, whatever else the machine
// runs meanwhile (the wall clock of a shared machine counts the other processes' turns too).
inline double cpu_seconds_of(const std::function<void()>& fn) {
  auto now = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  };
  const double t0 = now();
  fn();
  return now() - t0;
}

// memcpy of `nbytes` between buffers faulted in once: on one thread, or on `threads` over
// disjoint slices.
class MemcpyLimit {
 public:
  explicit MemcpyLimit(size_t nbytes) : src_(nbytes, 1), dst_(nbytes, 0) {}

  void one() { std::memcpy(dst_.data(), src_.data(), src_.size()); }
  void all(int threads) {
    std::vector<std::thread> pool;
    const size_t n = src_.size();
    const size_t share = n / static_cast<size_t>(threads);
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t lo = share * static_cast<size_t>(t);
        const size_t hi = t == threads - 1 ? n : lo + share;
        std::memcpy(dst_.data() + lo, src_.data() + lo, hi - lo);
      });
    }
    for (auto& th : pool) th.join();
  }

 private:
  std::vector<char> src_, dst_;
};

// Medians of `reps` wall-clock runs of `op` and of memcpy of half of `bytes` (read + written),
// each after a warm-up (which faults in the op's inputs and fills the block cache).
struct BesideMemcpy {
  double op_seconds = 0;
  double limit_gbps = 0;  // the better of one-thread and all-thread memcpy
};

inline BesideMemcpy time_beside_memcpy(const std::function<void()>& op, double bytes, int reps,
                                       int threads, MemcpyLimit& memcpy_limit) {
  op();
  memcpy_limit.one();
  memcpy_limit.all(threads);
  std::vector<double> t_op, t_one, t_all;
  for (int i = 0; i < reps; ++i) {
    t_op.push_back(seconds_of(op));
    t_one.push_back(seconds_of([&] { memcpy_limit.one(); }));
    t_all.push_back(seconds_of([&] { memcpy_limit.all(threads); }));
  }
  return {median(t_op), bytes / std::min(median(t_one), median(t_all)) / 1e9};
}

}  // namespace d9d::bench
