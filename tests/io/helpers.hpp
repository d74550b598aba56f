// Test helpers for io: hand-built safetensors files (scratch directories from common/files.hpp).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <doctest/doctest.h>

#include <d9d/io/checkpoint.hpp>
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

inline std::string bytes_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  return {static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.nbytes())};
}

}  // namespace d9d::io::test
