// plan_safetensors, SafetensorsWriter and save_safetensors.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include <d9d/io/file.hpp>
#include <d9d/io/safetensors.hpp>
#include <d9d/io/sha256.hpp>
#include <d9d/staging.hpp>

#include "json.hpp"

namespace d9d::io {
namespace {

constexpr int64_t kMaxHeaderSize = 100'000'000;
constexpr int64_t kBounceBytes = int64_t{16} << 20;

// The reference's Dtype enum order ("increasing alignment"); the writer sorts by it descending.
int reference_rank(DType dtype) {
  static constexpr std::array<DType, kNumDTypes> kOrder = {
      DType::BOOL,        DType::F4,      DType::F6_E2M3, DType::F6_E3M2, DType::U8,
      DType::I8,          DType::F8_E5M2, DType::F8_E4M3, DType::F8_E8M0, DType::F8_E4M3FNUZ,
      DType::F8_E5M2FNUZ, DType::I16,     DType::U16,     DType::F16,     DType::BF16,
      DType::I32,         DType::U32,     DType::F32,     DType::C64,     DType::F64,
      DType::I64,         DType::U64};
  for (size_t i = 0; i < kOrder.size(); ++i) {
    if (kOrder[i] == dtype) return static_cast<int>(i);
  }
  D9D_ASSERT(false);
}

void check_utf8(std::string_view text, const char* what) {
  D9D_CHECK(detail::find_invalid_utf8(text) == std::string_view::npos, "save_safetensors: ", what,
            " ", detail::quote_name(text), " is not valid UTF-8 (the header must be UTF-8 JSON)");
}

}  // namespace

Metadata default_metadata() {
  return {{"format", "pt"}};
}

SafetensorsLayout plan_safetensors(std::span<const TensorDecl> tensors, const Metadata& metadata,
                                   const SaveOptions& options) {
  D9D_CHECK(options.alignment >= 8 && options.alignment <= (int64_t{1} << 20) &&
                std::has_single_bit(static_cast<uint64_t>(options.alignment)),
            "save_safetensors: alignment must be a power of two from 8 to 1048576, got ",
            options.alignment);
  for (const auto& [key, value] : metadata) {
    check_utf8(key, "metadata key");
    check_utf8(value, "metadata value");
  }
  std::vector<const TensorDecl*> order;
  order.reserve(tensors.size());
  for (const TensorDecl& t : tensors) {
    D9D_CHECK(t.name != "__metadata__",
              "save_safetensors: \"__metadata__\" is reserved and cannot name a tensor");
    check_utf8(t.name, "tensor name");
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const TensorDecl* a, const TensorDecl* b) {
    const int ra = reference_rank(a->dtype), rb = reference_rank(b->dtype);
    if (ra != rb) return ra > rb;
    return a->name < b->name;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    D9D_CHECK(order[i - 1]->name != order[i]->name || order[i - 1]->dtype != order[i]->dtype,
              "save_safetensors: tensor ", detail::quote_name(order[i]->name), " is given twice");
  }
  {  // the same name with two dtypes sorts apart: check names on their own
    std::vector<std::string_view> names;
    names.reserve(order.size());
    for (const TensorDecl* t : order) names.push_back(t->name);
    std::sort(names.begin(), names.end());
    const auto dup = std::adjacent_find(names.begin(), names.end());
    D9D_CHECK(dup == names.end(), "save_safetensors: tensor ", detail::quote_name(*dup),
              " is given twice");
  }

  SafetensorsLayout layout;
  std::string& json = layout.prefix;
  json.assign(8, '\0');
  json += '{';
  bool first = true;
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (const auto& [key, value] : metadata) {
      if (!first) json += ',';
      first = false;
      detail::append_json_string(json, key);
      json += ':';
      detail::append_json_string(json, value);
    }
    json += '}';
    first = false;
  }
  int64_t offset = 0;
  layout.header.tensors.reserve(order.size());
  for (const TensorDecl* t : order) {
    int64_t numel = 1;
    for (const int64_t s : t->shape) {
      D9D_CHECK(s >= 0, "save_safetensors: tensor ", detail::quote_name(t->name),
                " has a negative size in shape ", t->shape);
      D9D_CHECK(!__builtin_mul_overflow(numel, s, &numel), "save_safetensors: tensor ",
                detail::quote_name(t->name), " of shape ", t->shape,
                " has more than 2^63 elements");
    }
    int64_t bits = 0;
    D9D_CHECK(!__builtin_mul_overflow(numel, int64_t{dtype_bits(t->dtype)}, &bits),
              "save_safetensors: tensor ", detail::quote_name(t->name), " is too large");
    D9D_CHECK(bits % 8 == 0, "save_safetensors: tensor ", detail::quote_name(t->name), " (",
              t->dtype, " ", t->shape, ") is ", bits, " bits, not a whole number of bytes");
    TensorInfo info{t->dtype, t->shape, offset, 0};
    D9D_CHECK(!__builtin_add_overflow(offset, bits / 8, &info.end),
              "save_safetensors: the data section passes 2^63 bytes");
    offset = info.end;
    if (!first) json += ',';
    first = false;
    detail::append_json_string(json, t->name);
    json += ":{\"dtype\":\"";
    json += dtype_name(t->dtype);
    json += "\",\"shape\":[";
    for (size_t i = 0; i < t->shape.size(); ++i) {
      if (i > 0) json += ',';
      json += std::to_string(t->shape[i]);
    }
    json += "],\"data_offsets\":[";
    json += std::to_string(info.begin);
    json += ',';
    json += std::to_string(info.end);
    json += "]}";
    layout.header.tensors.emplace_back(t->name, std::move(info));
  }
  json += '}';
  const auto unpadded = static_cast<int64_t>(json.size());
  const int64_t padded = (unpadded + options.alignment - 1) / options.alignment * options.alignment;
  json.append(static_cast<size_t>(padded - unpadded), ' ');
  const int64_t n = padded - 8;
  D9D_CHECK(n <= kMaxHeaderSize, "save_safetensors: the header would be ", n,
            " bytes, past the format's limit of 100000000 (too many tensors or too much metadata)");
  for (int i = 0; i < 8; ++i)
    json[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  layout.header.metadata = metadata;
  layout.header.header_size = n;
  layout.file_size = padded + offset;
  return layout;
}

// ---- hashing as written
// ---------------------------------------------------------------------------

// Note [hashing as written]: SaveOptions::sha256 gives the writer a thread of its own that follows
// the writes: each range written is announced to it, and it reads back (pread: the bytes are in
// the page cache, just written) and hashes the file front to back as far as the announced ranges
// reach without a gap. The writer's thread pays nothing but the announcement, and a file written
// in order (as d9d's streamed shards are: the header, then each tensor) is hashed by the time
// its last tensor is written; at commit the follower hashes whatever is left (a gap of padding,
// ranges written out of order) to the end of the file. The bytes are hashed as the file holds
// them, never from the caller's buffers, which may be gone by then.
class FollowingHasher {
 public:
  FollowingHasher(int fd, std::filesystem::path path, uint64_t size)
      : fd_(fd), path_(std::move(path)), size_(size), thread_([this] { run(); }) {}
  FollowingHasher(const FollowingHasher&) = delete;
  FollowingHasher& operator=(const FollowingHasher&) = delete;
  ~FollowingHasher() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // Bytes [begin, end) of the file have been written.
  void written(uint64_t begin, uint64_t end) {
    if (begin >= end) return;
    {
      std::lock_guard lock(mu_);
      auto next = ready_.find(end);  // a range that starts where this one ends: joined
      if (next != ready_.end()) {
        end = next->second;
        ready_.erase(next);
      }
      if (const auto prev = ends_.find(begin); prev != ends_.end()) {  // one that ends at begin
        begin = prev->second;
        ends_.erase(prev);
      }
      ready_[begin] = end;
      ends_[end] = begin;
    }
    cv_.notify_all();
  }

  // Hashes what is left to the end of the file; the digest, or nullopt if a read failed.
  std::optional<std::string> finish() {
    {
      std::lock_guard lock(mu_);
      finishing_ = true;
    }
    cv_.notify_all();
    thread_.join();
    return digest_;
  }

 private:
  void run() {
    std::vector<std::byte> buffer(static_cast<size_t>(std::min<uint64_t>(size_, kPiece)));
    Sha256 sha;
    uint64_t hashed = 0;
    try {
      for (;;) {
        uint64_t end = 0;
        {
          std::unique_lock lock(mu_);
          cv_.wait(lock, [&] { return stop_ || finishing_ || ready_.contains(hashed); });
          if (stop_) return;
          if (const auto it = ready_.find(hashed); it != ready_.end()) {
            end = it->second;
            ends_.erase(it->second);
            ready_.erase(it);
          } else {
            end = size_;  // finishing: the rest, whatever was announced
          }
        }
        for (; hashed < end;) {
          const auto n = static_cast<size_t>(std::min<uint64_t>(end - hashed, kPiece));
          pread_all(fd_, hashed, buffer.data(), n, path_);
          sha.update({buffer.data(), n});
          hashed += n;
        }
        if (hashed == size_) {
          std::unique_lock lock(mu_);
          cv_.wait(lock, [&] { return stop_ || finishing_; });  // every byte is final only now
          if (finishing_ && !stop_) digest_ = Sha256::hex(sha.finish());
          return;
        }
      }
    } catch (const Error&) {
      // digest_ stays empty: the caller hashes the file itself, and meets the error there
    }
  }

  static constexpr uint64_t kPiece = uint64_t{8} << 20;
  const int fd_;
  const std::filesystem::path path_;
  const uint64_t size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, uint64_t> ready_;  // announced, not hashed: begin -> end, joined
  std::map<uint64_t, uint64_t> ends_;   // the same ranges: end -> begin
  bool finishing_ = false;
  bool stop_ = false;
  std::optional<std::string> digest_;
  std::thread thread_;  // last: started once every member above exists
};

// ---- SafetensorsWriter --------------------------------------------------------------------------

struct SafetensorsWriter::Impl {
  std::filesystem::path path;
  SaveOptions options;
  SafetensorsLayout layout;
  AtomicFile file;
  // Note [shared file]: the file itself, not a temporary of it.
  bool shared = false;
  bool creator = false;
  FileDescriptor shared_fd;
  std::unordered_map<std::string_view, size_t> index;  // views into layout's names
  std::mutex mu;
  std::vector<std::map<int64_t, int64_t>> written;  // per tensor: merged [begin, end) pieces
  bool committed = false;
  // SaveOptions::sha256: declared after `file`, so destroyed (its thread stopped) before the file
  // is closed.
  std::unique_ptr<FollowingHasher> hasher;
  std::optional<std::string> digest;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() { abandon_shared(); }

  void abandon_shared() noexcept {
    if (!shared) return;
    const bool remove = creator && !committed && shared_fd.get() >= 0;
    shared_fd.reset();
    if (remove) ::unlink(path.c_str());
  }
  int fd() const { return shared ? shared_fd.get() : file.fd(); }
  void write_at(uint64_t offset, const std::byte* data, size_t size) const {
    if (shared) {
      pwrite_all(shared_fd.get(), offset, data, size, path);
    } else {
      file.write_at(offset, data, size);
    }
  }

  // Note [shared file]: the file itself is opened (extra `flags` beside O_RDWR), no temporary.
  void open_shared(int flags) {
    shared = true;
    shared_fd = FileDescriptor::open(path, O_RDWR | flags);
  }

  void plan(const std::filesystem::path& file_path, std::span<const TensorDecl> tensors,
            const Metadata& metadata, const SaveOptions& save_options) {
    path = file_path;
    options = save_options;
    layout = plan_safetensors(tensors, metadata, save_options);
    const auto& planned = layout.header.tensors;
    index.reserve(planned.size());
    for (size_t i = 0; i < planned.size(); ++i) index.emplace(planned[i].first, i);
    written.resize(planned.size());
  }

  size_t find(std::string_view name) const {
    const auto it = index.find(name);
    D9D_CHECK(it != index.end(), "SafetensorsWriter ", path.string(), ": tensor ",
              detail::quote_name(name), " was not declared");
    return it->second;
  }
  void check_open() const {
    D9D_CHECK(!committed && fd() >= 0, "SafetensorsWriter ", path.string(),
              ": the writer was already committed or abandoned");
  }

  // Marks [begin, end) of tensor i as written; throws if any byte of it already was.
  void claim(size_t i, int64_t begin, int64_t end) {
    std::lock_guard lock(mu);
    auto& pieces = written[i];
    auto next = pieces.upper_bound(begin);
    if (next != pieces.begin()) {
      auto prev = std::prev(next);
      D9D_CHECK(prev->second <= begin, "SafetensorsWriter ", path.string(), ": bytes [", begin,
                ", ", end, ") of tensor ", detail::quote_name(layout.header.tensors[i].first),
                " overlap bytes already written");
    }
    D9D_CHECK(next == pieces.end() || next->first >= end, "SafetensorsWriter ", path.string(),
              ": bytes [", begin, ", ", end, ") of tensor ",
              detail::quote_name(layout.header.tensors[i].first), " overlap bytes already written");
    pieces.emplace(begin, end);
  }
  void unclaim(size_t i, int64_t begin) {
    std::lock_guard lock(mu);
    written[i].erase(begin);
  }
  bool tensor_complete(size_t i) const {
    const int64_t n = layout.header.tensors[i].second.nbytes();
    int64_t covered = 0;
    for (const auto& [b, e] : written[i]) covered += e - b;
    return covered == n;  // pieces never overlap, so full coverage is the byte count
  }

  void write_bytes(size_t i, int64_t offset, std::span<const std::byte> bytes) {
    check_open();
    const TensorInfo& info = layout.header.tensors[i].second;
    const auto size = static_cast<int64_t>(bytes.size());
    D9D_CHECK(offset >= 0 && offset <= info.nbytes() && size <= info.nbytes() - offset,
              "SafetensorsWriter ", path.string(), ": bytes [", offset, ", ", offset + size,
              ") are outside tensor ", detail::quote_name(layout.header.tensors[i].first), " (",
              info.nbytes(), " bytes)");
    if (size == 0) return;
    claim(i, offset, offset + size);
    const auto at = static_cast<uint64_t>(layout.header.data_offset() + info.begin + offset);
    try {
      write_at(at, bytes.data(), bytes.size());
    } catch (...) {
      unclaim(i, offset);
      throw;
    }
    if (hasher) hasher->written(at, at + bytes.size());
    if (options.fsync) start_writeback(fd(), at, bytes.size());  // Note [early writeback]
  }

  // Writes `view`, a block of tensor i in row-major order starting at byte `offset`; returns the
  // offset after it. Contiguous blocks go straight from their memory; strided ones through a
  // bounded buffer, split along their outer dims until a block fits.
  int64_t write_block(size_t i, const Tensor& view, int64_t offset, Storage& bounce) {
    const int64_t nbytes = view.nbytes();
    if (nbytes == 0) return offset;
    if (view.is_contiguous()) {
      write_bytes(i, offset,
                  {static_cast<const std::byte*>(view.data_ptr()), static_cast<size_t>(nbytes)});
      return offset + nbytes;
    }
    if (nbytes <= kBounceBytes) {
      // Sized by the first block (blocks of one tensor are equal but for the last), so a small
      // strided tensor does not cost a 16 MiB buffer.
      if (bounce.nbytes() < static_cast<size_t>(nbytes)) {
        bounce = Storage::allocate(static_cast<size_t>(nbytes));
      }
      const Tensor packed = Tensor::from_storage(bounce, view.dtype(), view.shape());
      packed.copy_(view);
      write_bytes(i, offset,
                  {static_cast<const std::byte*>(packed.data_ptr()), static_cast<size_t>(nbytes)});
      return offset + nbytes;
    }
    const int64_t rows = view.size(0);
    if (rows == 1) return write_block(i, view.select(0, 0), offset, bounce);
    const int64_t step = std::max<int64_t>(1, kBounceBytes / (nbytes / rows));
    for (int64_t r = 0; r < rows; r += step) {
      offset = write_block(i, view.narrow(0, r, std::min(step, rows - r)), offset, bounce);
    }
    return offset;
  }

  // Device tensors come to the host through the device's shared staging ring, each chunk
  // written while the next ones are still crossing the bus (Note [pinned staging ring]).
  void write_device(size_t i, const Tensor& tensor) {
    StagingRing::shared(tensor.device())
        .download(tensor, [&](std::span<const std::byte> bytes, int64_t offset) {
          write_bytes(i, offset, bytes);
        });
  }
};

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path,
                                     std::span<const TensorDecl> tensors, const Metadata& metadata,
                                     const SaveOptions& options)
    : impl_(std::make_unique<Impl>()) {
  impl_->plan(path, tensors, metadata, options);
  impl_->file = AtomicFile(path, impl_->layout.file_size);
  const std::string& prefix = impl_->layout.prefix;
  impl_->file.write_at(0, reinterpret_cast<const std::byte*>(prefix.data()), prefix.size());
  if (options.sha256) {
    impl_->hasher = std::make_unique<FollowingHasher>(
        impl_->file.fd(), impl_->file.temp_path(), static_cast<uint64_t>(impl_->layout.file_size));
    impl_->hasher->written(0, prefix.size());
  }
}

SafetensorsWriter SafetensorsWriter::create_shared(const std::filesystem::path& path,
                                                   std::span<const TensorDecl> tensors,
                                                   const Metadata& metadata,
                                                   const SaveOptions& options) {
  SafetensorsWriter writer;
  writer.impl_ = std::make_unique<Impl>();
  Impl& w = *writer.impl_;
  w.plan(path, tensors, metadata, options);
  w.open_shared(O_CREAT | O_EXCL);
  w.creator = true;
  // The full size up front: reserved where the file system can, zeros (a hole) otherwise.
  const auto size = static_cast<off_t>(w.layout.file_size);
  int rc = 0;
  do {
    rc = ::fallocate(w.shared_fd.get(), 0, 0, size);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0 && errno != EOPNOTSUPP && errno != ENOSYS) {
    throw_errno("reserve space for", path, errno);
  }
  if (::ftruncate(w.shared_fd.get(), size) != 0) throw_errno("resize", path, errno);
  const std::string& prefix = w.layout.prefix;
  w.write_at(0, reinterpret_cast<const std::byte*>(prefix.data()), prefix.size());
  return writer;
}

SafetensorsWriter SafetensorsWriter::open_shared(const std::filesystem::path& path,
                                                 std::span<const TensorDecl> tensors,
                                                 const Metadata& metadata,
                                                 const SaveOptions& options) {
  SafetensorsWriter writer;
  writer.impl_ = std::make_unique<Impl>();
  Impl& w = *writer.impl_;
  w.plan(path, tensors, metadata, options);
  w.open_shared(0);
  const off_t size = ::lseek(w.shared_fd.get(), 0, SEEK_END);
  if (size < 0) throw_errno("seek", path, errno);
  const std::string& prefix = w.layout.prefix;
  std::string found(prefix.size(), '\0');
  if (size == static_cast<off_t>(w.layout.file_size)) {
    pread_all(w.shared_fd.get(), 0, reinterpret_cast<std::byte*>(found.data()), found.size(), path);
  }
  D9D_CHECK_AS(IoError, size == static_cast<off_t>(w.layout.file_size) && found == prefix,
               "SafetensorsWriter::open_shared ", path.string(),
               ": the file is not the one planned from these tensors (", size, " bytes, ",
               w.layout.file_size, " planned; or another header)");
  return writer;
}

SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&&) noexcept = default;
SafetensorsWriter& SafetensorsWriter::operator=(SafetensorsWriter&&) noexcept = default;
SafetensorsWriter::~SafetensorsWriter() = default;  // AtomicFile's destructor abandons

const SafetensorsLayout& SafetensorsWriter::layout() const {
  return impl_->layout;
}
const std::filesystem::path& SafetensorsWriter::path() const {
  return impl_->path;
}

void SafetensorsWriter::write(std::string_view name, const Tensor& tensor) {
  D9D_CHECK(impl_ != nullptr, "SafetensorsWriter: use of a moved-from writer");
  impl_->check_open();
  const size_t i = impl_->find(name);
  const TensorInfo& info = impl_->layout.header.tensors[i].second;
  D9D_CHECK(tensor.defined(), "SafetensorsWriter ", impl_->path.string(), ": tensor ",
            detail::quote_name(name), " is undefined");
  D9D_CHECK_TYPE(tensor.dtype() == info.dtype, "SafetensorsWriter ", impl_->path.string(),
                 ": tensor ", detail::quote_name(name), " was declared ", info.dtype, " but is ",
                 tensor.dtype());
  D9D_CHECK(tensor.shape() == info.shape, "SafetensorsWriter ", impl_->path.string(), ": tensor ",
            detail::quote_name(name), " was declared with shape ", info.shape, " but has shape ",
            tensor.shape());
  if (tensor.device().is_cpu()) {
    Storage bounce;
    impl_->write_block(i, tensor, 0, bounce);
  } else {
    impl_->write_device(i, tensor);
  }
}

void SafetensorsWriter::write_bytes(std::string_view name, int64_t offset,
                                    std::span<const std::byte> bytes) {
  D9D_CHECK(impl_ != nullptr, "SafetensorsWriter: use of a moved-from writer");
  impl_->write_bytes(impl_->find(name), offset, bytes);
}

bool SafetensorsWriter::complete() const {
  std::lock_guard lock(impl_->mu);
  for (size_t i = 0; i < impl_->written.size(); ++i) {
    if (!impl_->tensor_complete(i)) return false;
  }
  return true;
}

void SafetensorsWriter::commit() {
  D9D_CHECK(impl_ != nullptr, "SafetensorsWriter: use of a moved-from writer");
  impl_->check_open();
  if (impl_->shared) {  // Note [shared file]
    const int fd = impl_->shared_fd.release();
    const bool synced = !impl_->options.fsync || ::fsync(fd) == 0;
    const int err = errno;
    const bool closed = ::close(fd) == 0;
    if (!synced) throw_errno("fsync", impl_->path, err);
    if (!closed) throw_errno("close", impl_->path, errno);
    impl_->committed = true;
    return;
  }
  {
    std::lock_guard lock(impl_->mu);
    std::vector<std::string_view> missing;
    for (size_t i = 0; i < impl_->written.size(); ++i) {
      if (!impl_->tensor_complete(i)) missing.push_back(impl_->layout.header.tensors[i].first);
    }
    if (!missing.empty()) {
      std::string names;
      for (size_t k = 0; k < missing.size() && k < 10; ++k) {
        names += (k ? ", " : "") + detail::quote_name(missing[k]);
      }
      if (missing.size() > 10) names += ", ...";
      d9d::detail::throw_error<ValueError>("SafetensorsWriter ", impl_->path.string(),
                                           ": cannot commit, ", missing.size(),
                                           " tensors are not fully written: ", names);
    }
  }
  if (impl_->hasher) {
    impl_->digest = impl_->hasher->finish();
    impl_->hasher.reset();
  }
  impl_->file.commit(impl_->options.fsync);
  impl_->committed = true;
}

std::optional<std::string> SafetensorsWriter::sha256() const {
  D9D_CHECK(impl_ != nullptr, "SafetensorsWriter: use of a moved-from writer");
  return impl_->committed ? impl_->digest : std::nullopt;
}

void SafetensorsWriter::abandon() noexcept {
  if (!impl_) return;
  impl_->hasher.reset();
  impl_->abandon_shared();
  impl_->file.abandon();
}

// ---- save_safetensors ---------------------------------------------------------------------------

void save_safetensors(const std::filesystem::path& path,
                      std::span<const std::pair<std::string, Tensor>> tensors,
                      const Metadata& metadata, const SaveOptions& options) {
  std::vector<TensorDecl> decls;
  decls.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    D9D_CHECK(tensor.defined(), "save_safetensors ", path.string(), ": tensor ",
              detail::quote_name(name), " is undefined");
    decls.push_back({name, tensor.dtype(), tensor.shape()});
  }
  SafetensorsWriter writer(path, decls, metadata, options);
  for (const auto& [name, tensor] : tensors) writer.write(name, tensor);
  writer.commit();
}

void save_safetensors(const std::filesystem::path& path,
                      const std::map<std::string, Tensor>& tensors, const Metadata& metadata,
                      const SaveOptions& options) {
  std::vector<std::pair<std::string, Tensor>> list(tensors.begin(), tensors.end());
  save_safetensors(path, std::span<const std::pair<std::string, Tensor>>(list), metadata, options);
}

}  // namespace d9d::io
