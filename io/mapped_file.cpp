#include <d9d/io/mapped_file.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include <d9d/io/file.hpp>

namespace d9d::io {

MappedFile MappedFile::open(const std::filesystem::path& path) {
  FileDescriptor fd = FileDescriptor::open(path, O_RDONLY);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("stat", path, errno);
  if (!S_ISREG(st.st_mode)) {
    d9d::detail::throw_error<IoError>("open ", path.string(), ": not a regular file");
  }
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
  if (data_ != nullptr) ::munmap(data_, size_);
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

}  // namespace d9d::io
