// Files as d9d writes them: an owned file descriptor, whole-buffer pread / pwrite, a file
// published atomically under its final name (Note [atomic publish]) and an exclusive lock file.
// Every error is an IoError "<operation> <path>: <the system's reason>".
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <d9d/io/mapped_file.hpp>  // IoError

namespace d9d::io {

// Throws IoError "<op> <path>: <strerror(err)>".
[[noreturn]] void throw_errno(const char* op, const std::filesystem::path& path, int err);

// An owned file descriptor (move-only; -1 after a move or release()).
class FileDescriptor {
 public:
  FileDescriptor() noexcept = default;
  // Takes ownership of `fd` (-1: an empty handle).
  explicit FileDescriptor(int fd) noexcept : fd_(fd) {}
  // open(2) of `path` with `flags` (O_CLOEXEC added) and, when creating, `mode` less the umask.
  // Throws IoError "open <path>: ..." ("create <path>: ..." when `flags` has O_CREAT).
  static FileDescriptor open(const std::filesystem::path& path, int flags, unsigned mode = 0666);

  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  FileDescriptor(FileDescriptor&& other) noexcept : fd_(other.release()) {}
  FileDescriptor& operator=(FileDescriptor&& other) noexcept;
  ~FileDescriptor() noexcept { reset(); }

  bool is_open() const noexcept { return fd_ >= 0; }
  int get() const noexcept { return fd_; }
  // Gives up ownership: the caller closes the descriptor.
  int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  // Closes the descriptor (its close errors are lost: use release() and close(2) to see them).
  void reset() noexcept;

 private:
  int fd_ = -1;
};

// Opens `path` read-only, refusing anything but a regular file: a FIFO would block the open (or the
// first read) forever, a device or directory fail later and less clearly. The open is
// non-blocking and the descriptor is made blocking again once fstat has said what it is. Throws
// IoError "open <path>: ..." ("...: not a regular file (a FIFO)").
FileDescriptor open_regular_file(const std::filesystem::path& path);
// The whole regular file at `path` (open_regular_file, then pread to its end): for small files
// read once (an index, a spec, a conversion record). Throws IoError.
std::string read_regular_file(const std::filesystem::path& path);

// Reads exactly `size` bytes at `offset` (retrying short reads and EINTR); throws IoError on an
// error or on end of file before `size` bytes. `path` names the file in errors.
void pread_all(int fd, uint64_t offset, std::byte* dst, size_t size,
               const std::filesystem::path& path);
// Writes exactly `size` bytes at `offset`; throws IoError (ENOSPC, EFBIG, EIO, ...). When `src`
// is a view of a mapped file that shrank under it (EFAULT: the system refused to read the bytes;
// Note [truncated files] in mapped_file.hpp), the error names that file.
void pwrite_all(int fd, uint64_t offset, const std::byte* src, size_t size,
                const std::filesystem::path& path);
// fsyncs the directory that holds `path`, so that a rename into it is durable.
void fsync_parent_dir(const std::filesystem::path& path);
// Starts writing [offset, offset + size) of `fd` back to the disk without waiting for it (Note
// [early writeback] in file.cpp); a hint: errors are left to the fsync that follows.
void start_writeback(int fd, uint64_t offset, size_t size) noexcept;

// Note [atomic publish]: output goes to a temporary file in the destination's directory (so the
// rename cannot cross file systems), named ".<final name>.d9d-tmp-<pid>-<random>". commit()
// fsyncs it, renames it over the final name and fsyncs the directory; until then nothing exists
// under the final name (an earlier file there is left untouched), and the destructor of an
// uncommitted file unlinks the temporary. A crash can leave a temporary behind, never a torn file
// under the final name; the pid in its name lets a later writer see that its process is gone
// (a model_state Destination removes such files).
class AtomicFile {
 public:
  AtomicFile() noexcept = default;
  // Creates the temporary (mode 0666 less the umask; open for reading too, so that a writer can
  // hash what it wrote: Note [hashing as written] in writer.cpp). `size`, when known (> 0), is reserved up
  // front with fallocate, so a full disk fails here rather than half way through the data.
  AtomicFile(std::filesystem::path final_path, int64_t size);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&& other) noexcept;
  ~AtomicFile() noexcept { abandon(); }

  int fd() const noexcept { return fd_.get(); }
  const std::filesystem::path& final_path() const noexcept { return final_path_; }
  const std::filesystem::path& temp_path() const noexcept { return temp_path_; }
  void write_at(uint64_t offset, const std::byte* data, size_t size) const {
    pwrite_all(fd_.get(), offset, data, size, temp_path_);
  }
  // fsync (when `sync`), rename to the final name, fsync the directory (when `sync`).
  void commit(bool sync);
  // Closes and unlinks the temporary; a no-op after commit or on an empty handle.
  void abandon() noexcept;

 private:
  std::filesystem::path final_path_;
  std::filesystem::path temp_path_;
  FileDescriptor fd_;
};

// An exclusive flock(2) on a lock file, held until destruction, or until the process dies (the
// kernel drops it then: a killed holder leaves no stale lock). The file holds a note of who holds
// it, for the message of whoever is refused. The destructor removes the file while still holding
// the lock; try_lock() therefore checks, once locked, that the path still names the file it
// locked, and starts again if not (someone else's release removed it meanwhile). Move-only.
class LockFile {
 public:
  LockFile() noexcept = default;
  LockFile(LockFile&&) noexcept = default;
  LockFile& operator=(LockFile&& other) noexcept;
  ~LockFile() noexcept { release(); }

  // Locks `path` (created with mode 0644 if missing) without waiting and writes `note` into it;
  // nullopt when another open file description holds the lock. Throws IoError.
  static std::optional<LockFile> try_lock(const std::filesystem::path& path,
                                          const std::string& note);
  // The note of the lock's holder ("" if it cannot be read or is not written yet).
  static std::string note_of(const std::filesystem::path& path);

  bool locked() const noexcept { return fd_.is_open(); }
  // Removes the file and drops the lock; a no-op when not locked.
  void release() noexcept;

 private:
  std::filesystem::path path_;
  FileDescriptor fd_;
};

}  // namespace d9d::io
