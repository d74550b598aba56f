// MappedFile: a whole file mapped read-only into memory, and the errors of the io layer.
//
// The mapping is MAP_PRIVATE and PROT_READ: nothing d9d does can change the file, and a view of it
// is zero-copy. The file descriptor stays open next to the mapping so that bulk copies can use
// pread (see Note [pread for copies] in read_engine.cpp). A zero-byte file cannot be mapped;
// it opens as an empty MappedFile (data() == nullptr, size() == 0).
//
// Note [truncated files]: a file can shrink while it is mapped (another process truncates or
// rewrites it in place). Touching a page of the mapping past the file's new end raises SIGBUS,
// which kills the process without a word. So d9d never reads the bytes of a mapping itself:
// every copy d9d makes (loads, the read engine's inputs to ops that move data, verify, headers)
// reads the file with pread, for which a short file is an IoError naming it; views are faulted in
// with MADV_POPULATE_READ, which fails instead of raising the signal; and a view's bytes written
// to another file go through pwrite, for which the kernel answers EFAULT (pwrite_all then names
// the file the view is of, through describe_source). Only a view handed to the caller and read
// by the caller's own code can still meet SIGBUS: that is the contract of any mmap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>

#include <d9d/error.hpp>

namespace d9d::io {

// The operating system refused an operation on a file (open, mmap, read, write, rename, fsync).
// The message names the operation, the path and the system's reason (strerror).
class IoError : public Error {
 public:
  using Error::Error;
};

// How the bytes of a mapping will be read; passed to madvise.
enum class Advice : uint8_t {
  kNormal,      // the kernel's default readahead
  kSequential,  // read front to back once: aggressive readahead, pages freed early
  kRandom,      // scattered reads: no readahead
  kWillNeed,    // start reading these pages in now, asynchronously
  kDontNeed,    // drop this range's page-table entries (the page cache keeps the bytes)
};

class MappedFile {
 public:
  // An empty handle: no file, size 0.
  MappedFile() noexcept = default;
  // Maps the regular file at `path` (opened by open_regular_file: a FIFO is refused, not waited
  // on). Throws IoError if it cannot be opened, is not a regular file, or cannot be mapped.
  static MappedFile open(const std::filesystem::path& path);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  ~MappedFile() noexcept;

  bool is_open() const noexcept { return fd_ >= 0; }
  const std::filesystem::path& path() const noexcept { return path_; }
  // First byte of the mapping; nullptr for an empty file or an empty handle.
  const std::byte* data() const noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  // The open descriptor (read-only), -1 for an empty handle. Owned by this object.
  int fd() const noexcept { return fd_; }

  // Hints the kernel about bytes [offset, offset + length) (clamped to the file; page-rounded).
  // Advice is only advice: errors are ignored.
  void advise(Advice advice, size_t offset = 0, size_t length = SIZE_MAX) const noexcept;

  // Copies bytes [offset, offset + dst.size()) of the file into `dst` with pread (no page-table
  // work, no growth of this process's mapped set). Throws IoError on a read error or if the range
  // passes the end of the file (a file truncated after it was opened).
  void read(uint64_t offset, std::span<std::byte> dst) const;

  // Throws IoError naming the file when it is shorter now (fstat) than when it was mapped: a
  // view of it handed out now could raise SIGBUS (Note [truncated files]).
  void check_size() const;
  // Faults in the page-table entries of bytes [offset, offset + length) (clamped to the mapping)
  // with MADV_POPULATE_READ, so that reading them through the mapping costs no page faults.
  // Throws IoError naming the file when they are no longer all inside it, where touching them
  // would raise SIGBUS. Skipped on kernels before 5.14, which lack the advice.
  void populate(size_t offset, size_t length) const;

  // When `p` lies in the mapping of a live MappedFile: "PATH (byte N)", followed by ", which is
  // now M bytes long but had K when it was opened" when the file has shrunk since. nullopt
  // otherwise. For naming the file behind a view in an error (Note [truncated files]).
  static std::optional<std::string> describe_source(const void* p);

 private:
  void close() noexcept;

  std::filesystem::path path_;
  int fd_ = -1;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace d9d::io
