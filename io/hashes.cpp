// Note [hash lists]: a checkpoint's files are checked against SHA-256 digests from one of two
// places. d9d convert writes d9d-hashes.json beside its output, a companion file of the checkpoint
// published by the same commit (model_state's WriteOptions::write_hashes): its shards, hashed
// once written (they are in the page cache then), and its index. A Hugging Face hub snapshot
// needs no list: its large files are symbolic links into ../../blobs/, each blob named by the
// SHA-256 of its bytes (the LFS object id), so the name the link points to is the digest. Small
// files there (an index, a config) are git blobs named by a SHA-1 of another form, not checked.
// A digest is computed as the file is read, front to back, by the read engine in pieces of
// kPieceBytes, the next piece read while the last is hashed.
#include <d9d/io/hashes.hpp>

#include <algorithm>
#include <future>
#include <set>
#include <sstream>

#include <d9d/io/checkpoint.hpp>
#include <d9d/io/file.hpp>
#include <d9d/io/sha256.hpp>
#include <d9d/tensor.hpp>  // num_threads

#include "json.hpp"
#include "parallel.hpp"

namespace d9d::io {

namespace {

constexpr uint64_t kPieceBytes = uint64_t{16} << 20;

bool is_sha256_hex(std::string_view text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

[[noreturn]] void hashes_fail(std::string_view file, std::string_view where,
                              const std::string& what) {
  d9d::detail::throw_error<FormatError>(file, ": ", where, ": ", what);
}

}  // namespace

std::string hashes_json(const std::map<std::string, std::string>& sha256) {
  std::string out = "{\n  \"algorithm\": \"sha256\",\n  \"files\": {";
  bool first = true;
  for (const auto& [file, digest] : sha256) {
    out += first ? "\n    " : ",\n    ";
    first = false;
    detail::append_json_string(out, file);
    out += ": ";
    detail::append_json_string(out, digest);
  }
  out += first ? "}\n}\n" : "\n  }\n}\n";
  return out;
}

std::map<std::string, std::string> parse_hashes_json(std::string_view json, std::string_view name) {
  if (const size_t bad = detail::find_invalid_utf8(json); bad != std::string_view::npos) {
    hashes_fail(name, "byte " + std::to_string(bad), "invalid UTF-8");
  }
  std::map<std::string, std::string> files;
  detail::JsonCursor cur(json);
  bool seen_files = false;
  try {
    cur.expect('{', "a JSON object");
    std::set<std::string> keys;
    std::string scratch, scratch2;
    if (!cur.consume('}')) {
      do {
        cur.skip_ws();
        const size_t key_pos = cur.pos();
        const std::string key(cur.string(scratch));
        if (!keys.insert(key).second)
          cur.fail_at(key_pos, "duplicate key " + detail::quote_name(key));
        cur.expect(':', "':' after a key");
        if (key == "algorithm") {
          if (cur.peek() != '"') hashes_fail(name, "algorithm", "expected a string");
          const std::string algorithm(cur.string(scratch));
          if (algorithm != "sha256") {
            hashes_fail(name, "algorithm",
                        detail::quote_name(algorithm) + " is not one d9d checks (sha256)");
          }
        } else if (key == "files") {
          seen_files = true;
          if (cur.peek() != '{') {
            hashes_fail(name, "files", "expected an object, found " + cur.describe_next());
          }
          cur.expect('{', "'{'");
          if (!cur.consume('}')) {
            do {
              cur.skip_ws();
              const std::string file(cur.string(scratch));
              cur.expect(':', "':' after a key");
              const std::string where = "files[" + detail::quote_name(file) + "]";
              if (!is_plain_file_name(file)) {
                hashes_fail(name, where, "not a plain file name in the checkpoint directory");
              }
              if (cur.peek() != '"') hashes_fail(name, where, "expected a string");
              std::string digest(cur.string(scratch2));
              if (!is_sha256_hex(digest)) {
                hashes_fail(name, where,
                            detail::quote_name(digest) +
                                " is not a SHA-256 digest (64 lowercase hex digits)");
              }
              if (!files.emplace(file, std::move(digest)).second) {
                hashes_fail(name, where, "the file appears twice");
              }
            } while (cur.consume(','));
            cur.expect('}', "',' or '}' in files");
          }
        } else {
          cur.skip_value();  // a later version's field
        }
      } while (cur.consume(','));
      cur.expect('}', "',' or '}'");
    }
    if (!cur.at_end() && cur.peek() != '\0') cur.fail_at(cur.pos(), "text after the object");
  } catch (const detail::JsonSyntaxError& e) {
    hashes_fail(name, "byte " + std::to_string(e.pos), e.message);
  }
  if (!seen_files) hashes_fail(name, "files", "missing");
  return files;
}

std::map<std::string, ExpectedHash> expected_hashes(const std::filesystem::path& dir,
                                                    const std::vector<std::string>& files) {
  std::map<std::string, ExpectedHash> out;
  std::map<std::string, std::string> listed;
  const std::filesystem::path list = dir / std::string(kHashesFileName);
  std::error_code ec;
  if (std::filesystem::exists(list, ec)) {
    listed = parse_hashes_json(read_regular_file(list), list.string());
  }
  for (const std::string& file : files) {
    if (const auto it = listed.find(file); it != listed.end()) {
      out[file] = {it->second, std::string(kHashesFileName)};
      continue;
    }
    const std::filesystem::path path = dir / file;
    if (!std::filesystem::is_symlink(path, ec)) continue;
    const std::string blob = std::filesystem::read_symlink(path, ec).filename().string();
    if (!ec && is_sha256_hex(blob)) out[file] = {blob, "the hub's blob name"};
  }
  return out;
}

std::string sha256_of_file(const std::filesystem::path& path, IoBackend io) {
  const MappedFile file = MappedFile::open(path);
  const uint64_t size = file.size();
  std::vector<std::byte> buffers[2];
  for (auto& b : buffers) b.resize(static_cast<size_t>(std::min(size, kPieceBytes)));
  auto read_piece = [&](int b, uint64_t offset) {
    const ReadRange range{&file, offset, buffers[b].data(), std::min(kPieceBytes, size - offset)};
    read_ranges({&range, 1}, {.threads = 2, .io = io});
  };
  Sha256 sha;
  std::future<void> next;
  if (size > 0) next = std::async(std::launch::async, read_piece, 0, 0);
  for (uint64_t offset = 0; offset < size; offset += kPieceBytes) {
    next.get();
    const int b = static_cast<int>(offset / kPieceBytes % 2);
    if (offset + kPieceBytes < size) {
      next = std::async(std::launch::async, read_piece, 1 - b, offset + kPieceBytes);
    }
    sha.update({buffers[b].data(), static_cast<size_t>(std::min(kPieceBytes, size - offset))});
  }
  return Sha256::hex(sha.finish());
}

std::vector<std::string> sha256_of_files(const std::vector<std::filesystem::path>& paths,
                                         int threads, IoBackend io) {
  std::vector<std::string> digests(paths.size());
  if (threads <= 0) threads = num_threads();
  detail::parallel_indices(static_cast<int64_t>(paths.size()), threads, [&](int64_t i) {
    digests[static_cast<size_t>(i)] = sha256_of_file(paths[static_cast<size_t>(i)], io);
  });
  return digests;
}

uint64_t verify_hashes(const std::filesystem::path& dir, const std::vector<std::string>& files,
                       int threads, IoBackend io) {
  const std::map<std::string, ExpectedHash> expected = expected_hashes(dir, files);
  std::vector<std::string> missing;
  for (const std::string& file : files) {
    if (!expected.contains(file)) missing.push_back(file);
  }
  if (!missing.empty()) {
    std::ostringstream list;
    for (size_t i = 0; i < missing.size(); ++i) list << (i ? ", " : "") << missing[i];
    d9d::detail::throw_error<IntegrityError>(
        dir.string(), ": no SHA-256 to check ", list.str(), " against (", kHashesFileName,
        " does not list ", missing.size() == 1 ? "it" : "them",
        ", and a hub snapshot's blob name gives one only for its large files)");
  }
  std::vector<std::filesystem::path> paths;
  for (const std::string& file : files) paths.push_back(dir / file);
  const std::vector<std::string> digests = sha256_of_files(paths, threads, io);
  std::ostringstream bad;
  int differing = 0;
  uint64_t bytes = 0;
  for (size_t k = 0; k < files.size(); ++k) {
    bytes += std::filesystem::file_size(paths[k]);
    const ExpectedHash& want = expected.at(files[k]);
    if (digests[k] == want.sha256) continue;
    bad << (differing++ ? "; " : "") << (dir / files[k]).string() << " has SHA-256 " << digests[k]
        << ", expected " << want.sha256 << " (from " << want.source << ")";
  }
  if (differing > 0) {
    d9d::detail::throw_error<IntegrityError>(
        differing == 1 ? "a file does not match its hash: " : "files do not match their hashes: ",
        bad.str());
  }
  return bytes;
}

}  // namespace d9d::io
