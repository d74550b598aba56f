#include <d9d/io/mapped_file.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <mutex>
#include <utility>

#include <d9d/io/file.hpp>

namespace d9d::io {

namespace {

// Every live mapping by its first byte, for describe_source (Note [truncated files]). An entry
// goes before its descriptor is closed, so a descriptor found here under the lock is open.
struct Registered {
  size_t size;
  int fd;
  std::string path;
};
std::mutex& registry_mutex() {
  static auto* mu = new std::mutex;  // never destroyed: mappings may outlive static destructors
  return *mu;
}
std::map<uintptr_t, Registered>& registry() {
  static auto* mappings = new std::map<uintptr_t, Registered>;
  return *mappings;
}

// ", which is now N bytes long but had SIZE when it was opened (...)" when the file of `fd` is
// shorter than `size`; "" when it is not (or fstat fails, with errno set).
std::string shrunk(int fd, size_t size) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) >= size) return "";
  return d9d::detail::str_cat(", which is now ", st.st_size, " bytes long but had ", size,
                              " when it was opened (it was truncated while d9d was reading it)");
}

}  // namespace

MappedFile MappedFile::open(const std::filesystem::path& path) {
  FileDescriptor fd = open_regular_file(path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("stat", path, errno);
  MappedFile file;
  file.path_ = path;
  file.size_ = static_cast<size_t>(st.st_size);
  if (file.size_ > 0) {  // mmap of zero bytes is EINVAL: an empty file stays unmapped
    void* p = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) throw_errno("mmap", path, errno);
    file.data_ = static_cast<std::byte*>(p);
  }
  // Bulk copies go through pread on this descriptor: let its readahead run wide on cold files.
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  file.fd_ = fd.release();
  if (file.data_ != nullptr) {
    std::lock_guard lock(registry_mutex());
    registry().emplace(reinterpret_cast<uintptr_t>(file.data_),
                       Registered{file.size_, file.fd_, path.string()});
  }
  return file;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    close();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() noexcept {
  close();
}

void MappedFile::close() noexcept {
  if (data_ != nullptr) {
    {
      std::lock_guard lock(registry_mutex());
      registry().erase(reinterpret_cast<uintptr_t>(data_));
    }
    ::munmap(data_, size_);
  }
  if (fd_ >= 0) ::close(fd_);
  data_ = nullptr;
  size_ = 0;
  fd_ = -1;
}

void MappedFile::advise(Advice advice, size_t offset, size_t length) const noexcept {
  if (data_ == nullptr || offset >= size_) return;
  length = std::min(length, size_ - offset);
  const auto page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t begin = offset / page * page;  // madvise wants a page-aligned start
  int flag = MADV_NORMAL;
  switch (advice) {
    case Advice::kNormal:
      flag = MADV_NORMAL;
      break;
    case Advice::kSequential:
      flag = MADV_SEQUENTIAL;
      break;
    case Advice::kRandom:
      flag = MADV_RANDOM;
      break;
    case Advice::kWillNeed:
      flag = MADV_WILLNEED;
      break;
    case Advice::kDontNeed:
      flag = MADV_DONTNEED;
      break;
  }
  ::madvise(data_ + begin, offset + length - begin, flag);
}

void MappedFile::read(uint64_t offset, std::span<std::byte> dst) const {
  if (dst.empty()) return;
  uint64_t end = 0;
  if (__builtin_add_overflow(offset, dst.size(), &end) || end > size_) {
    d9d::detail::throw_error<IoError>("read ", path_.string(), ": bytes [", offset, ", ",
                                      offset + dst.size(), ") pass the end of the file (", size_,
                                      " bytes)");
  }
  pread_all(fd_, offset, dst.data(), dst.size(), path_);
}

void MappedFile::check_size() const {
  if (fd_ < 0) return;
  errno = 0;
  const std::string why = shrunk(fd_, size_);
  if (!why.empty()) d9d::detail::throw_error<IoError>("read ", path_.string(), why);
  if (errno != 0) throw_errno("stat", path_, errno);
}

void MappedFile::populate(size_t offset, size_t length) const {
#ifndef MADV_POPULATE_READ
  constexpr int MADV_POPULATE_READ = 22;
#endif
  if (data_ == nullptr || offset >= size_ || length == 0) return;
  length = std::min(length, size_ - offset);
  const auto page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t begin = offset / page * page;
  int rc = 0;
  do {
    rc = ::madvise(data_ + begin, offset + length - begin, MADV_POPULATE_READ);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0 || errno == EINVAL) return;  // EINVAL: a kernel without the advice
  const int err = errno;
  check_size();  // the usual reason (EFAULT): the file shrank
  throw_errno("read", path_, err);
}

std::optional<std::string> MappedFile::describe_source(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  std::lock_guard lock(registry_mutex());
  auto it = registry().upper_bound(address);
  if (it == registry().begin()) return std::nullopt;
  --it;
  const auto offset = static_cast<size_t>(address - it->first);
  if (offset >= it->second.size) return std::nullopt;
  return d9d::detail::str_cat(it->second.path, " (byte ", offset, ")",
                              shrunk(it->second.fd, it->second.size));
}

}  // namespace d9d::io
