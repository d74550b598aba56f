// Test helpers for io: hand-built safetensors files (scratch directories from common/files.hpp).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include <doctest/doctest.h>

#include <d9d/io/checkpoint.hpp>
#include <d9d/io/file.hpp>
#include <d9d/io/safetensors.hpp>

#include "common/files.hpp"

namespace d9d::io::test {

using ::d9d::test::read_file;
using ::d9d::test::TempDir;
using ::d9d::test::write_file;

inline std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

// A file image: the length of `header`, `header` verbatim (no padding added), then `data_size`
// bytes of data (0, 1, 2, ... mod 251).
inline std::string image(std::string_view header, size_t data_size) {
  std::string out = le64(header.size());
  out += header;
  for (size_t i = 0; i < data_size; ++i) out += static_cast<char>(i % 251);
  return out;
}

inline std::span<const std::byte> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// The FormatError message validate_safetensors gives for `file`, or "" if it is accepted.
inline std::string rejection(std::string_view file) {
  try {
    validate_safetensors(as_bytes(file), "t.safetensors");
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

// Checks that `file` is rejected with a message that contains every one of `parts`.
#define CHECK_REJECTED(file, ...)                                                         \
  do {                                                                                    \
    const std::string msg_ = ::d9d::io::test::rejection(file);                            \
    INFO("message: ", msg_);                                                              \
    REQUIRE_FALSE(msg_.empty());                                                          \
    CHECK(msg_.rfind("t.safetensors: ", 0) == 0);                                         \
    for (const char* part_ : {__VA_ARGS__}) CHECK(msg_.find(part_) != std::string::npos); \
  } while (0)

// A tensor of `shape` and `dtype` whose bytes are 0, 1, 2, ... (mod 256) offset by `seed`.
inline Tensor patterned(const Shape& shape, DType dtype, int seed = 0) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<uint8_t*>(t.mutable_data_ptr());
  for (int64_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>((i * 7 + seed) & 0xFF);
  return t;
}

// Whether `open_it` (a call that opens `fifo`, a FIFO nobody writes) threw an IoError saying it is
// a FIFO, at once. An open that waited for a writer would hang the test; a thread opens the FIFO
// for writing after 5 s to release it, and the time taken fails the check instead.
template <class F>
bool refused_at_once(const std::filesystem::path& fifo, F open_it) {
  using namespace std::chrono;
  std::atomic<bool> done{false};
  std::thread release([&] {
    for (int i = 0; i < 50 && !done; ++i) std::this_thread::sleep_for(milliseconds(100));
    if (done) return;
    const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (fd >= 0) ::close(fd);
  });
  const auto start = steady_clock::now();
  std::string message;
  try {
    open_it();
  } catch (const IoError& e) {
    message = e.what();
  }
  done = true;
  release.join();
  INFO("message: ", message);
  CHECK(message.find("not a regular file (a FIFO)") != std::string::npos);
  CHECK(message.find(fifo.filename().string()) != std::string::npos);
  return steady_clock::now() - start < seconds(3);
}

inline std::string bytes_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  return {static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.nbytes())};
}

}  // namespace d9d::io::test
