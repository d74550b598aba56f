// Integrity of a checkpoint's files: the SHA-256 hash list d9d writes beside a checkpoint
// (d9d-hashes.json), the one a Hugging Face hub snapshot carries in its blob names, and the check
// of files against either (Note [hash lists] in hashes.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/io/read.hpp>

namespace d9d::io {

inline constexpr std::string_view kHashesFileName = "d9d-hashes.json";

// A file's bytes do not hash to what its hash list says, or a file has no hash to check against.
class IntegrityError : public IoError {
 public:
  using IoError::IoError;
};

// The expected SHA-256 (64 lowercase hex digits) of a file, and where it was found.
struct ExpectedHash {
  std::string sha256;
  std::string source;  // "d9d-hashes.json", or "the hub's blob name"
};

// d9d-hashes.json's text for `sha256` (file name -> hex digest): {"algorithm": "sha256",
// "files": {...}}, keys sorted, two-space indent, trailing newline.
std::string hashes_json(const std::map<std::string, std::string>& sha256);
// Parses d9d-hashes.json's text; `name` names the file in errors. Throws FormatError naming the
// key and what is wrong (not an object, another algorithm, a digest that is not 64 hex digits, a
// name that is not a plain file name, a duplicate key).
std::map<std::string, std::string> parse_hashes_json(std::string_view json, std::string_view name);

// The expected hash of each of `files` (names in `dir`) that has one: from `dir`'s
// d9d-hashes.json where it lists the file, else from the hub's blob name when the file is a
// symbolic link to a blob named by its SHA-256 (a hub snapshot's large files).
std::map<std::string, ExpectedHash> expected_hashes(const std::filesystem::path& dir,
                                                    const std::vector<std::string>& files);

// The SHA-256 of the file at `path`, read front to back by the read engine in pieces of a few
// tens of MiB. Throws IoError.
std::string sha256_of_file(const std::filesystem::path& path, IoBackend io = IoBackend::kAuto);

// The SHA-256 of each file, several files at once on `threads` threads (0: one per core).
std::vector<std::string> sha256_of_files(const std::vector<std::filesystem::path>& paths,
                                         int threads = 0, IoBackend io = IoBackend::kAuto);

// Hashes each of `files` (names in `dir`, several at once on `threads` threads, 0: one per core)
// and checks it against expected_hashes(). Throws IntegrityError naming the first file (in
// `files` order) whose digest differs, with both digests and where the expected one came from,
// or naming every file that has no expected hash. Returns the bytes hashed.
uint64_t verify_hashes(const std::filesystem::path& dir, const std::vector<std::string>& files,
                       int threads = 0, IoBackend io = IoBackend::kAuto);

}  // namespace d9d::io
