// The read engine: byte ranges of mapped files copied into memory, by one read plan (merged into
// chunks of a few MiB, dealt out to threads, in file order per file) and one of four backends,
// chosen per file. Note [read backends] in read_engine.cpp says which and why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>

#include <d9d/io/mapped_file.hpp>

namespace d9d::io {

// How a file's bytes are read (the d9d CLI's --io, model_state::ReadOptions::io).
enum class IoBackend : uint8_t {
  kAuto,    // per file: pread where the bytes are in the page cache or the file system is remote,
            // O_DIRECT through io_uring (or threads) where they have to come from a local disk
  kMmap,    // copies from the mapping, each chunk faulted in first with MADV_POPULATE_READ
  kPread,   // preadv on threads, through the page cache
  kDirect,  // O_DIRECT preads of aligned chunks on threads, past the page cache
  kUring,   // O_DIRECT reads of aligned chunks through one io_uring, tens in flight
};

std::string_view to_string(IoBackend backend);
// "auto", "mmap", "pread", "direct" or "uring"; throws ValueError naming the accepted words.
IoBackend parse_io_backend(std::string_view text);
// The network or FUSE file system `file` lives on ("nfs", "cifs", "fuse", "ceph", ...), or nullptr
// for a local one (statfs). d9d never reads such a file through a mapping.
const char* remote_file_system(const MappedFile& file);
// Whether this build has io_uring (liburing) and the kernel lets this process set one up.
bool io_uring_available();
// The offset alignment of `file`'s O_DIRECT reads (statx STATX_DIOALIGN; 512 bytes on most
// disks, 4096 where the kernel does not say): the direct and uring backends read whole such
// blocks, so a narrowed read plan counts in them.
uint64_t direct_io_alignment(const MappedFile& file);

// One byte range of a file to copy into memory.
struct ReadRange {
  const MappedFile* file = nullptr;
  uint64_t offset = 0;  // in the file
  std::byte* dst = nullptr;
  uint64_t size = 0;
  // `dst` is memory never touched yet: fault it in with one madvise(MADV_POPULATE_WRITE) per
  // piece before reading, which is cheaper than a page fault per 4 KiB inside the read.
  bool populate = false;
};

// What the engine did with each file: bytes per backend, and notes (a backend refused and what
// was used instead). Thread-safe; a caller passes one to every read it wants accounted.
class ReadLog {
 public:
  struct File {
    std::map<IoBackend, uint64_t> bytes;
    std::set<std::string> notes;
  };
  void add(const std::filesystem::path& file, IoBackend used, uint64_t bytes);
  void note(const std::filesystem::path& file, std::string text);
  // Keyed by the file's path.
  std::map<std::string, File> files() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, File> files_;
};

struct ReadRangesOptions {
  int threads = 0;  // 0: d9d::num_threads()
  IoBackend io = IoBackend::kAuto;
  ReadLog* log = nullptr;
};

// Copies every range into its destination. Destinations must not overlap. Throws ValueError for a
// range past the end of its file (as opened), IoError naming the file for a read that fails or a
// file cut short since it was opened, on every backend (never SIGBUS).
void read_ranges(std::span<const ReadRange> ranges, const ReadRangesOptions& options = {});

}  // namespace d9d::io
