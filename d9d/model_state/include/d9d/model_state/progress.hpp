// A progress bar on standard error: "label [rank] 12/300 tensors, 1.2/4.0 GB, 850 MB/s, ETA 3s".
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace d9d::model_state {

class ProgressBar {
 public:
  // Draws only when `enabled` and standard error is a terminal (under mpirun: when mpirun's is);
  // otherwise every call is a no-op.
  // `total_bytes` may be 0 when unknown.
  ProgressBar(std::string label, int64_t total_items, int64_t total_bytes, bool enabled);
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar();  // finishes the line

  // Adds done work; redraws at most ten times a second. Thread-safe.
  void advance(int64_t items, int64_t bytes);
  bool drawing() const { return drawing_; }

 private:
  void draw(bool final);
  std::string label_;
  int64_t total_items_;
  int64_t total_bytes_;
  bool drawing_;
  std::mutex mu_;
  int64_t items_ = 0;
  int64_t bytes_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

// The label of a process's bars: `label`, or `label [rank]` when ranks share a terminal.
std::string progress_label(const std::string& label, int rank, int world_size);

}  // namespace d9d::model_state
