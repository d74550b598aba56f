#include <d9d/io/file.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

namespace d9d::io {

void throw_errno(const char* op, const std::filesystem::path& path, int err) {
  d9d::detail::throw_error<IoError>(op, " ", path.string(), ": ", std::strerror(err));
}

FileDescriptor FileDescriptor::open(const std::filesystem::path& path, int flags, unsigned mode) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, static_cast<mode_t>(mode));
  if (fd < 0) throw_errno((flags & O_CREAT) != 0 ? "create" : "open", path, errno);
  return FileDescriptor(fd);
}

FileDescriptor& FileDescriptor::operator=(FileDescriptor&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = other.release();
  }
  return *this;
}

void FileDescriptor::reset() noexcept {
  if (fd_ >= 0) ::close(fd_);  // the descriptor is gone even when close reports an error
  fd_ = -1;
}

FileDescriptor open_regular_file(const std::filesystem::path& path) {
  FileDescriptor fd = FileDescriptor::open(path, O_RDONLY | O_NONBLOCK);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("stat", path, errno);
  if (!S_ISREG(st.st_mode)) {
    const char* kind = S_ISFIFO(st.st_mode)   ? " (a FIFO)"
                       : S_ISDIR(st.st_mode)  ? " (a directory)"
                       : S_ISCHR(st.st_mode)  ? " (a character device)"
                       : S_ISBLK(st.st_mode)  ? " (a block device)"
                       : S_ISSOCK(st.st_mode) ? " (a socket)"
                                              : "";
    d9d::detail::throw_error<IoError>("open ", path.string(), ": not a regular file", kind);
  }
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    throw_errno("open", path, errno);
  }
  return fd;
}

std::string read_regular_file(const std::filesystem::path& path) {
  const FileDescriptor fd = open_regular_file(path);
  std::string text;
  char buf[1 << 16];
  for (;;) {
    const ssize_t got = ::pread(fd.get(), buf, sizeof buf, static_cast<off_t>(text.size()));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", path, errno);
    }
    if (got == 0) return text;
    text.append(buf, static_cast<size_t>(got));
  }
}

void pread_all(int fd, uint64_t offset, std::byte* dst, size_t size,
               const std::filesystem::path& path) {
  while (size > 0) {
    const ssize_t got = ::pread(fd, dst, size, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", path, errno);
    }
    if (got == 0) {
      d9d::detail::throw_error<IoError>("read ", path.string(), ": unexpected end of file at byte ",
                                        offset, " (", size,
                                        " more bytes expected; was the file truncated after it "
                                        "was opened?)");
    }
    dst += got;
    size -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

void pwrite_all(int fd, uint64_t offset, const std::byte* src, size_t size,
                const std::filesystem::path& path) {
  while (size > 0) {
    const ssize_t put = ::pwrite(fd, src, size, static_cast<off_t>(offset));
    if (put < 0) {
      if (errno == EINTR) continue;
      if (errno == EFAULT) {
        if (const auto source = MappedFile::describe_source(src)) {
          d9d::detail::throw_error<IoError>("write ", path.string(),
                                            ": the bytes to write are a view of ", *source);
        }
      }
      throw_errno("write", path, errno);
    }
    src += put;
    size -= static_cast<size_t>(put);
    offset += static_cast<uint64_t>(put);
  }
}

// Note [early writeback]
// ~~~~~~~~~~~~~~~~~~~~~~~
// A durable write (SaveOptions::fsync) ends in fsync, which then waits for every dirty page of
// the file to reach the disk: for a shard of gigabytes, seconds in which nothing else happens.
// So each range is handed to the disk as soon as it is written (sync_file_range with
// SYNC_FILE_RANGE_WRITE: start writeback, do not wait), and the disk works while the next
// tensors are read and transformed; the final fsync waits only for what is still in flight, and
// stays the one durability guarantee (sync_file_range alone makes no promise about metadata or
// the disk's cache). Without durability nothing is started: scratch output stays in the page
// cache for as long as the kernel likes.
void start_writeback(int fd, uint64_t offset, size_t size) noexcept {
#if defined(__linux__)
  (void)::sync_file_range(fd, static_cast<off_t>(offset), static_cast<off_t>(size),
                          SYNC_FILE_RANGE_WRITE);
#else
  (void)fd;
  (void)offset;
  (void)size;
#endif
}

void fsync_parent_dir(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  FileDescriptor fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.is_open()) throw_errno("open directory", dir, errno);
  if (::fsync(fd.get()) != 0) throw_errno("fsync directory", dir, errno);
}

// ---- AtomicFile ---------------------------------------------------------------------------------

AtomicFile::AtomicFile(std::filesystem::path final_path, int64_t size)
    : final_path_(std::move(final_path)) {
  D9D_CHECK(final_path_.has_filename(), "cannot write to ", final_path_.string(),
            ": the path names no file");
  thread_local std::mt19937_64 rng(std::random_device{}());
  for (int attempt = 0;; ++attempt) {
    std::string name = ".";
    name.append(final_path_.filename().string());
    name.append(".d9d-tmp-");
    name.append(std::to_string(::getpid()));
    name.append("-");
    name.append(std::to_string(rng() % 1000000000));
    temp_path_ = final_path_.parent_path() / name;
    const int fd = ::open(temp_path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      fd_ = FileDescriptor(fd);
      break;
    }
    if (errno != EEXIST || attempt == 100) {
      const int err = errno;
      temp_path_.clear();
      throw_errno("create temporary file for", final_path_, err);
    }
  }
  if (size > 0) {
    int rc = 0;
    do {
      rc = ::fallocate(fd_.get(), 0, 0, static_cast<off_t>(size));
    } while (rc != 0 && errno == EINTR);
    // File systems without fallocate (EOPNOTSUPP) still get the bytes written, just not reserved.
    if (rc != 0 && errno != EOPNOTSUPP && errno != ENOSYS) {
      const int err = errno;
      abandon();
      d9d::detail::throw_error<IoError>("reserve ", size, " bytes for ", final_path_.string(), ": ",
                                        std::strerror(err));
    }
  }
}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : final_path_(std::move(other.final_path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::move(other.fd_)) {
  other.temp_path_.clear();
}

AtomicFile& AtomicFile::operator=(AtomicFile&& other) noexcept {
  if (this != &other) {
    abandon();
    final_path_ = std::move(other.final_path_);
    temp_path_ = std::move(other.temp_path_);
    fd_ = std::move(other.fd_);
    other.temp_path_.clear();
  }
  return *this;
}

void AtomicFile::commit(bool sync) {
  D9D_ASSERT(fd_.get() >= 0);
  if (sync && ::fsync(fd_.get()) != 0) throw_errno("fsync", temp_path_, errno);
  if (::close(fd_.release()) != 0) throw_errno("close", temp_path_, errno);
  if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    const int err = errno;
    abandon();
    throw_errno("rename temporary file to", final_path_, err);
  }
  temp_path_.clear();
  if (sync) fsync_parent_dir(final_path_);
}

void AtomicFile::abandon() noexcept {
  fd_.reset();
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
}

// ---- LockFile -----------------------------------------------------------------------------------

LockFile& LockFile::operator=(LockFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    fd_ = std::move(other.fd_);
  }
  return *this;
}

std::optional<LockFile> LockFile::try_lock(const std::filesystem::path& path,
                                           const std::string& note) {
  for (int attempt = 0;; ++attempt) {
    FileDescriptor fd = FileDescriptor::open(path, O_RDWR | O_CREAT, 0644);
    int rc = 0;
    do {
      rc = ::flock(fd.get(), LOCK_EX | LOCK_NB);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      if (errno == EWOULDBLOCK) return std::nullopt;
      throw_errno("lock", path, errno);
    }
    // Still the file at `path`? A holder that released meanwhile removed the one we opened.
    struct stat held {
    }, named{};
    if (::fstat(fd.get(), &held) != 0) throw_errno("stat", path, errno);
    if (::stat(path.c_str(), &named) == 0 && named.st_dev == held.st_dev &&
        named.st_ino == held.st_ino) {
      if (::ftruncate(fd.get(), 0) != 0) throw_errno("truncate", path, errno);
      pwrite_all(fd.get(), 0, reinterpret_cast<const std::byte*>(note.data()), note.size(), path);
      LockFile lock;
      lock.path_ = path;
      lock.fd_ = std::move(fd);
      return lock;
    }
    D9D_CHECK_AS(IoError, attempt < 100, "lock ", path.string(),
                 ": the lock file keeps being replaced");
  }
}

std::string LockFile::note_of(const std::filesystem::path& path) {
  const FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.is_open()) return "";
  char buf[256];
  const ssize_t got = ::pread(fd.get(), buf, sizeof buf, 0);
  return got > 0 ? std::string(buf, static_cast<size_t>(got)) : "";
}

void LockFile::release() noexcept {
  if (!fd_.is_open()) return;
  ::unlink(path_.c_str());  // before the unlock: no one can lock this file and think it current
  fd_.reset();
}

}  // namespace d9d::io
