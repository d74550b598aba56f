// Sha256: SHA-256 as FIPS 180-4 defines it (section 6.2), for checking checkpoint shards (files of
// many GB) against the hash lists published with them. Our own code, no OpenSSL: io has no
// external dependency.
//
// The compression function is chosen once per process at run time: on x86-64 CPUs with the SHA
// extensions (SHA-NI: Intel since Goldmont / Ice Lake, AMD since Zen) it runs on them, several
// times faster than the portable C++ one every other CPU (and architecture) uses. Both give the
// same digests; implementation() says which one runs.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace d9d::io {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256() noexcept { reset(); }

  // Hashes `bytes` after everything given so far. Any sizes, any number of calls: the digest
  // depends only on the concatenation. Whole 64-byte blocks are hashed straight from `bytes`.
  void update(std::span<const std::byte> bytes) noexcept;
  // Pads the message and returns its digest. The object then holds no message: call reset()
  // before hashing another one.
  Digest finish() noexcept;
  // Starts a new, empty message.
  void reset() noexcept;

  // The 64 lowercase hex digits of `d`, as sha256sum and Hugging Face hash lists write it.
  static std::string hex(const Digest& d);
  // Which compression function runs here: "sha-ni" or "portable".
  static const char* implementation() noexcept;

 private:
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;  // the start of an unfinished block
  size_t buffered_;                 // bytes in buffer_, < 64 between calls
  uint64_t total_;                  // bytes hashed so far (the length field counts bits mod 2^64)
};

// The lowercase hex SHA-256 of `bytes`.
std::string sha256_hex(std::span<const std::byte> bytes);

namespace detail {
// For tests only: true makes every Sha256 use the portable compression function (so that both
// can be tested on a CPU with SHA-NI), false restores the choice made at run time. Safe at any
// time: both keep the state in the same form, so a switch between two blocks changes nothing.
void sha256_force_portable(bool force) noexcept;
}  // namespace detail

}  // namespace d9d::io
