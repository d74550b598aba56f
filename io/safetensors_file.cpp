// SafetensorsFile: the validated, mapped reader; read_ranges: the parallel copy planner.
//
// Note [pread for copies]: views are zero-copy into the mapping, but copies into owned memory
// (load, read_into, load_all, read_ranges) use pread/preadv on the file descriptor instead of
// memcpy from the mapping. On this class of machine both reach the same speed from the page cache
// (measured: 2 threads, 2 GB, 12.7 GB/s pread vs 12.9 GB/s memcpy into warm memory), but pread
// needs no page-table entries for the source, so loading a checkpoint does not add the whole file
// to this process's resident set on top of the copies, and a file truncated under us is an
// IoError instead of SIGBUS (Note [truncated files]). Adjacent small tensors are read with one
// preadv (up to 1024 pieces), so a file of many small tensors costs few system calls.
//
// Note [fresh memory]: copies land in Storage::allocate memory (core's allocator, whose cache of
// freed blocks lets a streaming reader reuse warm memory). Filling brand-new memory costs the
// kernel's page zeroing on first touch, a third pass over the bytes that no reader can avoid, so
// load_all stays below the pread-into-warm-memory limit while read_into (buffers the caller
// already owns) reaches it. MADV_HUGEPAGE on the destination was tried and dropped: it helps when
// the memory was recently freed in this process (5.7 vs 3.4 GB/s here), but on this VM a fresh
// process faulting in huge pages the host has reclaimed ran 3-5x slower than with 4 KiB pages.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>

#include <d9d/io/file.hpp>
#include <d9d/io/safetensors.hpp>

#include "json.hpp"
#include "name_index.hpp"
#include "parallel.hpp"
#include "rules.hpp"
#include "validate.hpp"

namespace d9d::io {

struct SafetensorsFile::Impl {
  std::shared_ptr<const MappedFile> file;
  Storage storage;  // the whole mapping, kind kMapped, read-only; holds `file` alive
  std::vector<std::string> keys;
  std::vector<TensorInfo> infos;
  detail::NameIndex index;  // over `keys`
  Metadata metadata;
  int64_t header_size = 0;
  std::once_flag sorted_once;
  std::vector<std::string> sorted;

  uint32_t find(std::string_view name) const {
    const auto it = index.find(name);
    if (!it) {
      d9d::detail::throw_error<ValueError>(file->path().string(), ": no tensor named ",
                                           detail::quote_name(name), " (the file has ", keys.size(),
                                           " tensors)");
    }
    return static_cast<uint32_t>(*it);
  }
  int64_t file_offset(const TensorInfo& info) const { return 8 + header_size + info.begin; }
};

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  auto impl = std::make_unique<Impl>();
  auto file = std::make_shared<MappedFile>(MappedFile::open(path));
  // The header is read with pread, not through the mapping (Note [truncated files]: a file cut
  // short meanwhile is an IoError, not SIGBUS). Note [header without read-around]: reading it
  // must not read megabytes of tensor data along with it (d9d inspect of a sharded checkpoint, a
  // rank that loads a slice), so the descriptor's readahead is off while it is read: exactly its
  // pages come from a cold disk.
  ::posix_fadvise(file->fd(), 0, 0, POSIX_FADV_RANDOM);
  std::string head(static_cast<size_t>(std::min<uint64_t>(file->size(), 8)), '\0');
  file->read(0, std::as_writable_bytes(std::span(head)));
  if (head.size() == 8) {
    uint64_t n = 0;
    std::memcpy(&n, head.data(), 8);  // little-endian on every platform d9d builds for
    if (n <= detail::kMaxHeaderSize && 8 + n <= file->size()) {
      head.resize(static_cast<size_t>(8 + n));
      file->read(8, std::as_writable_bytes(std::span(head)).subspan(8));
    }
  }
  ::posix_fadvise(file->fd(), 0, 0, POSIX_FADV_SEQUENTIAL);  // as MappedFile::open left it
  SafetensorsHeader header = detail::validate_safetensors(std::as_bytes(std::span(head)),
                                                          file->size(), path.string(), impl->index);
  impl->header_size = header.header_size;
  impl->metadata = std::move(header.metadata);
  impl->keys.reserve(header.tensors.size());
  impl->infos.reserve(header.tensors.size());
  for (auto& [name, info] : header.tensors) {
    impl->keys.push_back(std::move(name));
    impl->infos.push_back(std::move(info));
  }
  const std::vector<std::string>& keys = impl->keys;  // same names, same order: repoint the index
  impl->index.rebind([&keys](size_t i) -> std::string_view { return keys[i]; });
  // The storage's deleter owns a reference to the mapping: views outlive this object.
  std::shared_ptr<const MappedFile> keep = file;
  impl->storage = Storage::wrap(const_cast<std::byte*>(file->data()), file->size(), Device::cpu(),
                                StorageKind::kMapped, /*writable=*/false,
                                [keep](std::byte*) mutable { keep.reset(); });
  impl->file = std::move(file);
  return SafetensorsFile(std::move(impl));
}

const std::filesystem::path& SafetensorsFile::path() const {
  return impl_->file->path();
}
const Metadata& SafetensorsFile::metadata() const {
  return impl_->metadata;
}
size_t SafetensorsFile::size() const {
  return impl_->keys.size();
}
int64_t SafetensorsFile::file_size() const {
  return static_cast<int64_t>(impl_->file->size());
}
int64_t SafetensorsFile::data_offset() const {
  return 8 + impl_->header_size;
}
int64_t SafetensorsFile::header_size() const {
  return impl_->header_size;
}
const std::vector<std::string>& SafetensorsFile::keys() const {
  return impl_->keys;
}

const std::vector<std::string>& SafetensorsFile::sorted_keys() const {
  std::call_once(impl_->sorted_once, [this] {
    impl_->sorted = impl_->keys;
    std::sort(impl_->sorted.begin(), impl_->sorted.end());
  });
  return impl_->sorted;
}

bool SafetensorsFile::contains(std::string_view name) const {
  return impl_->index.find(name).has_value();
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  return impl_->infos[impl_->find(name)];
}

const MappedFile& SafetensorsFile::mapped_file() const {
  return *impl_->file;
}
std::shared_ptr<const MappedFile> SafetensorsFile::shared_mapped_file() const {
  return impl_->file;
}

Tensor SafetensorsFile::tensor(std::string_view name) const {
  const TensorInfo& info = impl_->infos[impl_->find(name)];
  const int64_t offset = impl_->file_offset(info);
  impl_->file->check_size();  // Note [truncated files]: no view of bytes already gone
  if (info.nbytes() >= (int64_t{1} << 20)) {
    impl_->file->advise(Advice::kWillNeed, static_cast<size_t>(offset),
                        static_cast<size_t>(info.nbytes()));
  }
  return Tensor::from_storage(impl_->storage, info.dtype, info.shape, offset);
}

Tensor SafetensorsFile::load(std::string_view name) const {
  const TensorInfo& info = impl_->infos[impl_->find(name)];
  Tensor out = Tensor::from_storage(Storage::allocate(static_cast<size_t>(info.nbytes())),
                                    info.dtype, info.shape);
  const ReadRange range{impl_->file.get(), static_cast<uint64_t>(impl_->file_offset(info)),
                        static_cast<std::byte*>(out.mutable_data_ptr()),
                        static_cast<uint64_t>(info.nbytes()), /*populate=*/true};
  read_ranges({&range, 1});
  return out;
}

void SafetensorsFile::read_into(std::string_view name, const Tensor& dst) const {
  const TensorInfo& info = impl_->infos[impl_->find(name)];
  D9D_CHECK(dst.defined(), "read_into ", detail::quote_name(name),
            ": the destination is undefined");
  D9D_CHECK_TYPE(dst.dtype() == info.dtype, "read_into ", detail::quote_name(name), " from ",
                 path().string(), ": the file holds ", info.dtype, " but the destination is ",
                 dst.dtype());
  D9D_CHECK(dst.shape() == info.shape, "read_into ", detail::quote_name(name), " from ",
            path().string(), ": the file holds shape ", info.shape,
            " but the destination has shape ", dst.shape());
  if (dst.device().is_cpu() && dst.is_contiguous()) {
    const ReadRange range{impl_->file.get(), static_cast<uint64_t>(impl_->file_offset(info)),
                          static_cast<std::byte*>(dst.mutable_data_ptr()),
                          static_cast<uint64_t>(info.nbytes())};
    read_ranges({&range, 1});
    return;
  }
  // A strided (or device) destination: an owned copy first, then the copy engine (Note
  // [truncated files]: never a copy through the mapping).
  dst.copy_(load(name));
}

std::map<std::string, Tensor> SafetensorsFile::load_all() const {
  std::map<std::string, Tensor> out;
  std::vector<ReadRange> ranges;
  ranges.reserve(impl_->keys.size());
  for (size_t i = 0; i < impl_->keys.size(); ++i) {
    const TensorInfo& info = impl_->infos[i];
    Tensor t = Tensor::from_storage(Storage::allocate(static_cast<size_t>(info.nbytes())),
                                    info.dtype, info.shape);
    ranges.push_back({impl_->file.get(), static_cast<uint64_t>(impl_->file_offset(info)),
                      static_cast<std::byte*>(t.mutable_data_ptr()),
                      static_cast<uint64_t>(info.nbytes()), /*populate=*/true});
    out.emplace_hint(out.end(), impl_->keys[i], std::move(t));
  }
  read_ranges(ranges);
  return out;
}

// ---- read_ranges --------------------------------------------------------------------------------

namespace {

constexpr uint64_t kChunkBytes = uint64_t{4} << 20;
constexpr size_t kMaxPieces = 1024;  // IOV_MAX on Linux
constexpr uint64_t kParallelMin = uint64_t{8} << 20;

// A run of file-contiguous bytes read with one preadv.
struct Chunk {
  const MappedFile* file = nullptr;
  uint64_t offset = 0;
  size_t first = 0;  // pieces [first, first + count) of the piece list
  size_t count = 0;
  uint64_t bytes = 0;
  bool populate = false;
};

// Faults in the whole pages inside [p, p + size) for writing, in one system call (Linux 5.14+;
// an older kernel refuses and the read faults them in itself).
void populate_pages(void* p, size_t size) {
#ifndef MADV_POPULATE_WRITE
  constexpr int MADV_POPULATE_WRITE = 23;
#endif
  constexpr uintptr_t kPage = 4096;
  const auto begin = (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  const auto end = (reinterpret_cast<uintptr_t>(p) + size) & ~(kPage - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
}

void preadv_all(const MappedFile& file, uint64_t offset, iovec* iov, int count) {
  while (count > 0) {
    const ssize_t got = ::preadv(file.fd(), iov, count, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", file.path(), errno);
    }
    if (got == 0) {
      d9d::detail::throw_error<IoError>("read ", file.path().string(),
                                        ": unexpected end of file at byte ", offset,
                                        " (was the file truncated after it was opened?)");
    }
    offset += static_cast<uint64_t>(got);
    auto left = static_cast<size_t>(got);
    while (count > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
}

}  // namespace

void read_ranges(std::span<const ReadRange> ranges, int threads) {
  std::vector<iovec> pieces;
  std::vector<Chunk> chunks;
  uint64_t total = 0;
  for (const ReadRange& r : ranges) {
    if (r.size == 0) continue;
    D9D_CHECK(r.file != nullptr && r.file->is_open() && r.dst != nullptr,
              "read_ranges: a range without a file or a destination");
    uint64_t end = 0;
    D9D_CHECK(!__builtin_add_overflow(r.offset, r.size, &end) && end <= r.file->size(),
              "read_ranges: bytes [", r.offset, ", ", r.offset + r.size, ") pass the end of ",
              r.file->path().string(), " (", r.file->size(), " bytes)");
    total += r.size;
    for (uint64_t done = 0; done < r.size;) {
      Chunk* last = chunks.empty() ? nullptr : &chunks.back();
      const bool extend = last != nullptr && last->file == r.file && last->populate == r.populate &&
                          last->offset + last->bytes == r.offset + done &&
                          last->count < kMaxPieces && last->bytes < kChunkBytes;
      const uint64_t room = extend ? kChunkBytes - last->bytes : kChunkBytes;
      const uint64_t take = std::min(room, r.size - done);
      pieces.push_back({r.dst + done, static_cast<size_t>(take)});
      if (extend) {
        ++last->count;
        last->bytes += take;
      } else {
        chunks.push_back({r.file, r.offset + done, pieces.size() - 1, 1, take, r.populate});
      }
      done += take;
    }
  }
  if (threads <= 0) threads = num_threads();
  if (total < kParallelMin) threads = 1;
  detail::parallel_indices(static_cast<int64_t>(chunks.size()), threads, [&](int64_t i) {
    const Chunk& c = chunks[static_cast<size_t>(i)];
    if (c.populate) {
      for (size_t k = c.first; k < c.first + c.count; ++k) {
        populate_pages(pieces[k].iov_base, pieces[k].iov_len);
      }
    }
    // preadv_all edits the iovecs as it goes; each chunk owns its pieces, so threads never share.
    preadv_all(*c.file, c.offset, pieces.data() + c.first, static_cast<int>(c.count));
  });
}

}  // namespace d9d::io
