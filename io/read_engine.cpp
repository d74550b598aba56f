// The read engine (read.hpp): one read plan over the ranges a caller needs, and the backends.
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
//
// Note [read chunks]: read_ranges sorts nothing (callers list ranges in file order) but joins
// file-adjacent ranges into chunks of up to 4 MiB (one preadv each, up to 1024 pieces) and splits
// larger ones, so every backend sees the same chunks: a few MiB, in file order per file, dealt out
// to threads (or kept in flight in one io_uring).
//
// Note [read backends]: what each does, and what `auto` picks for a file (per call, from the
// bytes that call reads):
//  - pread: preadv on `threads` threads through the page cache. From the page cache it is a copy
//    at memory speed; cold, the kernel's readahead fetches ahead of each thread. `auto` takes it
//    when at least half of the pages to read are resident (mincore over the mapping), and always
//    on a network or FUSE file system (statfs type), where neither mmap faults nor O_DIRECT
//    behave.
//  - direct: the file opened again with O_DIRECT (through /proc/self/fd, so the same inode),
//    each chunk's aligned span (the file system's O_DIRECT alignment, direct_io_alignment(): 512
//    bytes on most disks, else 4 KiB) read into a page-aligned bounce buffer and copied out (the
//    head and tail bytes outside the range are read and dropped). Past the page cache: no copy into
//    the cache and out of it, no readahead guesses, and the checkpoint does not push the engine's
//    own memory out of the cache. A file system that refuses O_DIRECT (EINVAL at open or at the
//    first read) is read with pread instead, with a note in the ReadLog.
//  - uring: the same O_DIRECT chunks, kept kUringDepth in flight through one io_uring with
//    registered bounce buffers (liburing; without it, or where the kernel refuses io_uring, the
//    direct backend with a note). `auto` takes it for bytes that must come from a local disk.
//  - mmap: each chunk faulted in with MADV_POPULATE_READ (which reports a file cut short as an
//    IoError) and copied from the mapping. Only on request: a file truncated between the fault-in
//    and the copy would still raise SIGBUS (Note [truncated files]).
#include <d9d/io/read.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <unordered_map>
#include <vector>

#ifdef D9D_HAVE_LIBURING
#include <liburing.h>
#endif

#include <d9d/error.hpp>
#include <d9d/io/file.hpp>
#include <d9d/tensor.hpp>  // num_threads

#include "parallel.hpp"

namespace d9d::io {

std::string_view to_string(IoBackend backend) {
  switch (backend) {
    case IoBackend::kAuto:
      return "auto";
    case IoBackend::kMmap:
      return "mmap";
    case IoBackend::kPread:
      return "pread";
    case IoBackend::kDirect:
      return "direct";
    case IoBackend::kUring:
      return "uring";
  }
  return "?";
}

IoBackend parse_io_backend(std::string_view text) {
  for (IoBackend b : {IoBackend::kAuto, IoBackend::kMmap, IoBackend::kPread, IoBackend::kDirect,
                      IoBackend::kUring}) {
    if (text == to_string(b)) return b;
  }
  d9d::detail::throw_error<ValueError>("unknown I/O backend '", text,
                                       "': expected auto, mmap, pread, direct or uring");
}

bool io_uring_available() {
#ifdef D9D_HAVE_LIBURING
  static const bool available = [] {
    io_uring ring;
    if (io_uring_queue_init(2, &ring, 0) != 0) return false;  // ENOSYS, EPERM (seccomp), ...
    io_uring_queue_exit(&ring);
    return true;
  }();
  return available;
#else
  return false;
#endif
}

const char* remote_file_system(const MappedFile& file) {
  struct statfs st {};
  if (!file.is_open() || ::fstatfs(file.fd(), &st) != 0) return nullptr;
  switch (static_cast<uint64_t>(st.f_type)) {
    case 0x6969:
      return "nfs";
    case 0x517B:
      return "smb";
    case 0xFF534D42:
      return "cifs";
    case 0xFE534D42:
      return "smb2";
    case 0x65735546:
      return "fuse";
    case 0x00C36400:
      return "ceph";
    case 0x01021997:
      return "9p";
    case 0x5346414F:
    case 0x6B414653:
      return "afs";
    case 0x0BD00BD0:
      return "lustre";
    case 0x47504653:
      return "gpfs";
    default:
      return nullptr;
  }
}

void ReadLog::add(const std::filesystem::path& file, IoBackend used, uint64_t bytes) {
  std::lock_guard lock(mu_);
  files_[file.string()].bytes[used] += bytes;
}

void ReadLog::note(const std::filesystem::path& file, std::string text) {
  std::lock_guard lock(mu_);
  files_[file.string()].notes.insert(std::move(text));
}

std::map<std::string, ReadLog::File> ReadLog::files() const {
  std::lock_guard lock(mu_);
  return files_;
}

namespace {

constexpr uint64_t kChunkBytes = uint64_t{4} << 20;
constexpr size_t kMaxPieces = 1024;  // IOV_MAX on Linux
constexpr uint64_t kParallelMin = uint64_t{8} << 20;
constexpr uint64_t kAlign = 4096;
constexpr uint64_t kBounceBytes = kChunkBytes + 2 * kAlign;  // a chunk's aligned span fits
constexpr unsigned kUringDepth = 16;
// Threads for O_DIRECT preads: each waits on the disk most of the time, so more of them than
// cores keep the device's queue filled.
constexpr int kDirectThreads = 8;

struct FileState {
  IoBackend backend = IoBackend::kPread;
  FileDescriptor direct;    // open with O_DIRECT for kDirect and kUring
  uint64_t align = kAlign;  // of O_DIRECT reads: direct_io_alignment()
};

// A run of file-contiguous bytes read in one piece.
struct Chunk {
  const MappedFile* file = nullptr;
  FileState* state = nullptr;
  uint64_t offset = 0;
  size_t first = 0;  // pieces [first, first + count) of the piece list
  size_t count = 0;
  uint64_t bytes = 0;
  bool populate = false;
};

[[noreturn]] void throw_truncated(const MappedFile& file, uint64_t offset) {
  d9d::detail::throw_error<IoError>("read ", file.path().string(),
                                    ": unexpected end of file at byte ", offset,
                                    " (was the file truncated after it was opened?)");
}

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

void populate_pieces(const Chunk& c, const iovec* pieces) {
  if (!c.populate) return;
  for (size_t k = c.first; k < c.first + c.count; ++k) {
    populate_pages(pieces[k].iov_base, pieces[k].iov_len);
  }
}

// Copies `src` (the chunk's bytes, in order) out to the chunk's pieces.
void copy_out(const Chunk& c, const iovec* pieces, const std::byte* src) {
  populate_pieces(c, pieces);
  for (size_t k = c.first; k < c.first + c.count; ++k) {
    std::memcpy(pieces[k].iov_base, src, pieces[k].iov_len);
    src += pieces[k].iov_len;
  }
}

// ---- pread and mmap ----

void read_chunk_pread(const Chunk& c, iovec* pieces) {
  populate_pieces(c, pieces);
  // preadv edits the iovecs as it goes; each chunk owns its pieces, so threads never share.
  iovec* iov = pieces + c.first;
  int count = static_cast<int>(c.count);
  uint64_t offset = c.offset;
  while (count > 0) {
    const ssize_t got = ::preadv(c.file->fd(), iov, count, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw_errno("read", c.file->path(), errno);
    }
    if (got == 0) throw_truncated(*c.file, offset);
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

void read_chunk_mmap(const Chunk& c, iovec* pieces) {
  c.file->populate(c.offset, c.bytes);  // an IoError naming the file if it has been cut short
  copy_out(c, pieces, c.file->data() + c.offset);
}

// ---- O_DIRECT ----

struct FreeDeleter {
  void operator()(std::byte* p) const noexcept { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte, FreeDeleter>;

// Bounce buffers are kept for reuse: a fresh one costs a thousand page faults per chunk.
class BouncePool {
 public:
  static AlignedBuffer take() {
    {
      std::lock_guard lock(mu());
      if (!free_list().empty()) {
        AlignedBuffer b = std::move(free_list().back());
        free_list().pop_back();
        return b;
      }
    }
    void* p = std::aligned_alloc(kAlign, kBounceBytes);
    if (p == nullptr) throw std::bad_alloc();
    return AlignedBuffer(static_cast<std::byte*>(p));
  }
  static void give(AlignedBuffer b) {
    std::lock_guard lock(mu());
    if (free_list().size() < 2 * kUringDepth) free_list().push_back(std::move(b));
  }

 private:
  static std::mutex& mu() {
    static std::mutex m;
    return m;
  }
  static std::vector<AlignedBuffer>& free_list() {
    static std::vector<AlignedBuffer> list;
    return list;
  }
};

// The aligned span of the file around a chunk: [begin, end), of which the bytes up to
// c.offset + c.bytes must arrive (the end of the file may come before `end`).
struct Span {
  uint64_t begin, end, need;
};
Span aligned_span(const Chunk& c) {
  const uint64_t align = c.state->align;
  const uint64_t begin = c.offset / align * align;
  const uint64_t end = (c.offset + c.bytes + align - 1) / align * align;
  return {begin, end, c.offset + c.bytes - begin};
}

// After `done` bytes of a span arrived: true when more are needed and may come. A read that
// ends off a block boundary has met the end of the file, which must lie past the chunk.
bool span_needs_more(const Chunk& c, const Span& s, uint64_t done, ssize_t got) {
  if (done >= s.need) return false;
  if (got == 0 || done % c.state->align != 0) throw_truncated(*c.file, s.begin + done);
  return true;
}

// Reads a chunk through the O_DIRECT descriptor; false when the file system refused (EINVAL).
bool read_chunk_direct(const Chunk& c, iovec* pieces) {
  const Span s = aligned_span(c);
  AlignedBuffer bounce = BouncePool::take();
  uint64_t done = 0;
  for (;;) {
    const ssize_t got = ::pread(c.state->direct.get(), bounce.get() + done, s.end - s.begin - done,
                                static_cast<off_t>(s.begin + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL) return false;
      throw_errno("read (O_DIRECT)", c.file->path(), errno);
    }
    done += static_cast<uint64_t>(got);
    if (!span_needs_more(c, s, done, got)) break;
  }
  copy_out(c, pieces, bounce.get() + (c.offset - s.begin));
  BouncePool::give(std::move(bounce));
  return true;
}

}  // namespace

// statx's STATX_DIOALIGN (Linux 6.1): the file system's offset alignment for O_DIRECT, 512 bytes
// on most disks; kept within [512, 4096] (4096 where the kernel does not say).
uint64_t direct_io_alignment(const MappedFile& file) {
  struct statx st {};
  if (::statx(file.fd(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) != 0 ||
      (st.stx_mask & STATX_DIOALIGN) == 0 || st.stx_dio_offset_align == 0) {
    return kAlign;
  }
  return std::clamp<uint64_t>(st.stx_dio_offset_align, 512, kAlign);
}

namespace {

// The file opened again with O_DIRECT, through /proc/self/fd so that it is the same inode even if
// its name has been replaced since. An empty descriptor and a note when that is refused.
FileDescriptor open_direct(const MappedFile& file, ReadLog* log) {
  char proc[64];
  std::snprintf(proc, sizeof proc, "/proc/self/fd/%d", file.fd());
  int fd = ::open(proc, O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) fd = ::open(file.path().c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0 && log != nullptr) {
    log->note(file.path(), d9d::detail::str_cat("O_DIRECT refused (", std::strerror(errno),
                                                "): read with pread"));
  }
  return FileDescriptor(fd);
}

// The share of the pages under `chunks` (all of one file) that are in the page cache, estimated
// from a sample: the first 64 KiB of at most 256 chunks spread over the file (mincore of every
// page of a page-cached 2 GB costs ~45 ms, a fifth of reading it).
double resident_share(const MappedFile& file, const std::vector<const Chunk*>& chunks) {
  if (file.data() == nullptr) return 1.0;
  const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  constexpr uint64_t kSampleBytes = 64 << 10;
  constexpr size_t kSampledChunks = 256;
  std::vector<unsigned char> in_core;
  uint64_t pages = 0, resident = 0;
  const size_t step = (chunks.size() + kSampledChunks - 1) / kSampledChunks;
  for (size_t i = 0; i < chunks.size(); i += step) {
    const Chunk* c = chunks[i];
    const uint64_t begin = c->offset / page * page;
    const uint64_t end = std::min(c->offset + c->bytes, c->offset + kSampleBytes);
    const uint64_t count = (end - begin + page - 1) / page;
    in_core.resize(count);
    if (::mincore(const_cast<std::byte*>(file.data()) + begin, count * page, in_core.data()) != 0) {
      return 1.0;  // cannot tell: the page cache path is never wrong, only maybe slower
    }
    pages += count;
    for (unsigned char v : in_core) resident += v & 1;
  }
  return pages == 0 ? 1.0 : static_cast<double>(resident) / static_cast<double>(pages);
}

// Decides how `file` is read for `chunks` (Note [read backends]).
void resolve(const MappedFile& file, const std::vector<const Chunk*>& chunks, IoBackend wanted,
             ReadLog* log, FileState& state) {
  if (wanted == IoBackend::kAuto) {
    if (remote_file_system(file) != nullptr || resident_share(file, chunks) >= 0.5) {
      state.backend = IoBackend::kPread;
      return;
    }
    wanted = io_uring_available() ? IoBackend::kUring : IoBackend::kDirect;
  } else if (wanted == IoBackend::kUring && !io_uring_available()) {
    if (log != nullptr) {
#ifdef D9D_HAVE_LIBURING
      log->note(file.path(), "io_uring refused by the kernel: read with O_DIRECT preads");
#else
      log->note(file.path(), "this build has no io_uring (liburing): read with O_DIRECT preads");
#endif
    }
    wanted = IoBackend::kDirect;
  }
  if (wanted == IoBackend::kDirect || wanted == IoBackend::kUring) {
    state.direct = open_direct(file, log);
    state.align = direct_io_alignment(file);
    if (!state.direct.is_open()) wanted = IoBackend::kPread;
  }
  state.backend = wanted;
}

// A chunk the O_DIRECT path could not read (EINVAL: the file system takes O_DIRECT opens but not
// these reads) is read with pread instead.
void direct_refused(const Chunk& c, iovec* pieces, ReadLog* log) {
  if (log != nullptr) {
    log->note(c.file->path(), "O_DIRECT reads refused (Invalid argument): read with pread");
  }
  read_chunk_pread(c, pieces);
}

// ---- io_uring ----

#ifdef D9D_HAVE_LIBURING
// Reads `chunks` (all of files resolved to kUring) with up to kUringDepth in flight.
void read_uring(const std::vector<const Chunk*>& chunks, iovec* pieces, ReadLog* log) {
  const unsigned depth = static_cast<unsigned>(std::min<size_t>(kUringDepth, chunks.size()));
  io_uring ring;
  if (const int rc = io_uring_queue_init(depth, &ring, 0); rc < 0) {
    throw_errno("io_uring_queue_init", chunks.front()->file->path(), -rc);
  }
  struct Slot {
    const Chunk* chunk = nullptr;
    Span span{};
    uint64_t done = 0;
    AlignedBuffer buffer;
  };
  std::vector<Slot> slots(depth);
  std::vector<iovec> registered(depth);
  for (unsigned i = 0; i < depth; ++i) {
    slots[i].buffer = BouncePool::take();
    registered[i] = {slots[i].buffer.get(), kBounceBytes};
  }
  // Registered buffers save pinning them on every read; without (RLIMIT_MEMLOCK) plain reads.
  const bool fixed = io_uring_register_buffers(&ring, registered.data(), depth) == 0;
  unsigned in_flight = 0;
  auto submit = [&](unsigned i) {
    Slot& s = slots[i];
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    const auto length = static_cast<unsigned>(s.span.end - s.span.begin - s.done);
    const int fd = s.chunk->state->direct.get();
    if (fixed) {
      io_uring_prep_read_fixed(sqe, fd, s.buffer.get() + s.done, length, s.span.begin + s.done,
                               static_cast<int>(i));
    } else {
      io_uring_prep_read(sqe, fd, s.buffer.get() + s.done, length, s.span.begin + s.done);
    }
    io_uring_sqe_set_data64(sqe, i);
    ++in_flight;
  };
  size_t next = 0;
  auto start = [&](unsigned i) {
    slots[i].chunk = chunks[next++];
    slots[i].span = aligned_span(*slots[i].chunk);
    slots[i].done = 0;
    submit(i);
  };
  try {
    for (unsigned i = 0; i < depth; ++i) start(i);
    while (in_flight > 0) {
      io_uring_submit(&ring);
      io_uring_cqe* cqe = nullptr;
      if (const int rc = io_uring_wait_cqe(&ring, &cqe); rc < 0) {
        if (rc == -EINTR) continue;
        throw_errno("io_uring_wait_cqe", chunks.front()->file->path(), -rc);
      }
      const auto i = static_cast<unsigned>(io_uring_cqe_get_data64(cqe));
      const int res = cqe->res;
      io_uring_cqe_seen(&ring, cqe);
      --in_flight;
      Slot& s = slots[i];
      if (res == -EINTR || res == -EAGAIN) {
        submit(i);
        continue;
      }
      if (res == -EINVAL) {
        direct_refused(*s.chunk, pieces, log);
      } else if (res < 0) {
        throw_errno("read (io_uring)", s.chunk->file->path(), -res);
      } else {
        s.done += static_cast<uint64_t>(res);
        if (span_needs_more(*s.chunk, s.span, s.done, res)) {
          submit(i);
          continue;
        }
        copy_out(*s.chunk, pieces, s.buffer.get() + (s.chunk->offset - s.span.begin));
      }
      if (next < chunks.size()) start(i);
    }
  } catch (...) {
    // The kernel may still be writing into the buffers: wait for every read in flight before
    // they go back to the pool.
    io_uring_submit(&ring);
    while (in_flight > 0) {
      io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe(&ring, &cqe) == -EINTR) continue;
      if (cqe == nullptr) break;
      io_uring_cqe_seen(&ring, cqe);
      --in_flight;
    }
    io_uring_queue_exit(&ring);
    throw;
  }
  io_uring_queue_exit(&ring);
  for (Slot& s : slots) BouncePool::give(std::move(s.buffer));
}
#endif

}  // namespace

void read_ranges(std::span<const ReadRange> ranges, const ReadRangesOptions& options) {
  // The chunks (Note [read chunks]).
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
        chunks.push_back(
            {r.file, nullptr, r.offset + done, pieces.size() - 1, 1, take, r.populate});
      }
      done += take;
    }
  }
  if (chunks.empty()) return;

  // The backend of each file (Note [read backends]).
  std::unordered_map<const MappedFile*, std::vector<const Chunk*>> by_file;
  for (const Chunk& c : chunks) by_file[c.file].push_back(&c);
  std::unordered_map<const MappedFile*, FileState> states;
  std::vector<const Chunk*> uring_chunks;
  for (auto& [file, file_chunks] : by_file) {
    FileState& state = states[file];
    resolve(*file, file_chunks, options.io, options.log, state);
    uint64_t bytes = 0;
    for (const Chunk* c : file_chunks) bytes += c->bytes;
    if (options.log != nullptr) options.log->add(file->path(), state.backend, bytes);
  }
  std::vector<size_t> threaded;  // chunks read on threads
  bool direct = false;
  for (size_t i = 0; i < chunks.size(); ++i) {
    Chunk& c = chunks[i];
    c.state = &states.at(c.file);
    if (c.state->backend == IoBackend::kUring) {
      uring_chunks.push_back(&c);
    } else {
      direct = direct || c.state->backend == IoBackend::kDirect;
      threaded.push_back(i);
    }
  }

#ifdef D9D_HAVE_LIBURING
  if (!uring_chunks.empty()) read_uring(uring_chunks, pieces.data(), options.log);
#endif
  int threads = options.threads > 0 ? options.threads : num_threads();
  if (direct) threads = std::max(threads, kDirectThreads);
  if (total < kParallelMin) threads = 1;
  detail::parallel_indices(static_cast<int64_t>(threaded.size()), threads, [&](int64_t i) {
    const Chunk& c = chunks[threaded[static_cast<size_t>(i)]];
    switch (c.state->backend) {
      case IoBackend::kMmap:
        read_chunk_mmap(c, pieces.data());
        break;
      case IoBackend::kDirect:
        if (!read_chunk_direct(c, pieces.data())) direct_refused(c, pieces.data(), options.log);
        break;
      default:
        read_chunk_pread(c, pieces.data());
        break;
    }
  });
}

}  // namespace d9d::io
