#include <d9d/model_state/progress.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <d9d/dist/process_group.hpp>

namespace d9d::model_state {
namespace {

// Under mpirun a rank's standard error is a pipe to mpirun, which copies it to its own (and its
// standard output is a pseudo-terminal whatever mpirun's is): a person watches when the
// launcher's standard error, the parent process's, is a terminal.
bool watched() {
  if (isatty(STDERR_FILENO) == 1) return true;
  if (!dist::launched()) return false;
  const std::string parent = "/proc/" + std::to_string(::getppid()) + "/fd/2";
  const int fd = ::open(parent.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool tty = isatty(fd) == 1;
  ::close(fd);
  return tty;
}

std::string format_bytes(double bytes) {
  char buf[32];
  if (bytes >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  } else if (bytes >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f KB", bytes / 1e3);
  }
  return buf;
}

}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total_items, int64_t total_bytes, bool enabled)
    : label_(std::move(label)),
      total_items_(total_items),
      total_bytes_(total_bytes),
      drawing_(enabled && watched()),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {
  if (drawing_) draw(false);
}

ProgressBar::~ProgressBar() {
  if (!drawing_) return;
  std::lock_guard lock(mu_);
  draw(true);
}

void ProgressBar::advance(int64_t items, int64_t bytes) {
  if (!drawing_) return;
  std::lock_guard lock(mu_);
  items_ += items;
  bytes_ += bytes;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ >= std::chrono::milliseconds(100)) {
    last_draw_ = now;
    draw(false);
  }
}

void ProgressBar::draw(bool final) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = seconds > 0 ? static_cast<double>(bytes_) / seconds : 0.0;
  std::string line = "\r" + label_ + " " + std::to_string(items_) + "/" +
                     std::to_string(total_items_) + " tensors";
  if (total_bytes_ > 0) {
    line += ", " + format_bytes(static_cast<double>(bytes_)) + "/" +
            format_bytes(static_cast<double>(total_bytes_));
  }
  line += ", " + format_bytes(rate) + "/s";
  if (!final && rate > 0 && total_bytes_ > bytes_) {
    line += ", ETA " + std::to_string(static_cast<int64_t>(
                           static_cast<double>(total_bytes_ - bytes_) / rate + 0.5)) + "s";
  } else if (final) {
    char buf[32];
    std::snprintf(buf, sizeof buf, " in %.1fs", seconds);
    line += buf;
  }
  line += "\033[K";  // clear what a longer previous line left
  if (final) line += "\n";
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

std::string progress_label(const std::string& label, int rank, int world_size) {
  return world_size > 1 ? label + " [" + std::to_string(rank) + "]" : label;
}

}  // namespace d9d::model_state
