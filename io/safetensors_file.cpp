// SafetensorsFile: the validated, mapped reader. Its copies go through the read engine
// (read_engine.cpp: Note [pread for copies]).
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

}  // namespace d9d::io
