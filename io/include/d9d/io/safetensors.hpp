// safetensors: d9d's strict reader and streaming writer.
//
// THE FORMAT (as written by the reference implementation, huggingface/safetensors)
//
//   offset 0      8 bytes   N, an unsigned 64-bit little-endian integer: the header's length
//   offset 8      N bytes   the header: UTF-8 JSON, padded at the end with spaces
//   offset 8 + N  ...       the data section: every tensor's bytes, packed, row-major
//
// The header is one JSON object. The optional key "__metadata__" maps to an object of strings
// (free-form: {"format": "pt"}). Every other key is a tensor name, mapping to
//
//   {"dtype": "BF16", "shape": [4096, 11008], "data_offsets": [BEGIN, END]}
//
// BEGIN and END are byte offsets relative to the start of the data section (8 + N). dtype is one
// of BOOL U8 I8 I16 U16 I32 U32 I64 U64 F16 BF16 F32 F64 F8_E4M3 F8_E5M2 F8_E8M0 F8_E4M3FNUZ
// F8_E5M2FNUZ C64 F4 F6_E2M3 F6_E3M2 (the sub-byte F4/F6 are packed: numel * bits / 8 bytes).
// Elements are little-endian; no alignment of a tensor's bytes is promised (d9d assumes none).
//
// THE RULES. SafetensorsFile::open (and validate_safetensors) check all of them before a tensor
// byte is touched. A violation throws FormatError, whose message names the file, the key and the
// rule: `model.safetensors: tensor "w": ... (rule 12: ...)`.
//
//   1. The file holds at least the 8 bytes of N.
//   2. N <= 100,000,000 (the reference's limit; this also keeps 8 + N from overflowing). A
//      larger N is not a length anyone wrote but 8 bytes of some other file (a text file, a
//      key), so the error does not show it: "its first 8 bytes are not a plausible header
//      length". A plausible N that passes the end of the file (rule 3) is shown.
//   3. 8 + N <= the file size: the header lies inside the file.
//   4. The header is valid UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
//   5. The header is exactly one RFC 8259 JSON object: it begins with '{' at its first byte and
//      is followed only by JSON whitespace (the reference writer pads with spaces; NUL bytes are
//      not whitespace). \u escapes must form valid code points (paired surrogates); keys are
//      compared after unescaping, so "\u005f_metadata__" is "__metadata__".
//   6. No object has the same key twice (the reference silently keeps the last: d9d rejects).
//   7. "__metadata__", if present, is an object whose values are all strings.
//   8. Every other value is an object with exactly the keys "dtype", "shape" and "data_offsets".
//   9. "dtype" is a string naming a dtype above exactly (case-sensitive: "bf16" is unknown).
//  10. "shape" is an array of integers in [0, 2^63 - 1], written as JSON integers: no sign, no
//      fraction, no exponent ("1.0", "-1", "1e3" and 2^64 are rejected). [] is a scalar.
//  11. "data_offsets" is an array of exactly two such integers, BEGIN <= END.
//  12. The byte size numel * bits / 8 is computed with overflow checks (numel as the reference's
//      checked product, the size itself exactly: a U8 tensor of 2^63 - 1 elements is 2^63 - 1
//      bytes), must be a whole number of bytes, and must equal END - BEGIN.
//  13. Sorted by (BEGIN, END), the ranges tile the data section: the first begins at 0, each one
//      begins where the previous one ended (no gap, no overlap, no two tensors on the same bytes),
//      and the last ends exactly at the end of the file (no trailing bytes). Zero-size tensors
//      (BEGIN == END, a 0 in the shape) and scalars are valid.
//
// FILES. SafetensorsFile::open maps a regular file only: a FIFO, a device or a directory is an
// IoError (never waited on: a FIFO nobody writes would block forever). Symbolic links are
// followed wherever they point, inside the checkpoint directory or not: the Hugging Face hub's
// cache is built of them (each snapshot's files link to blobs in another directory), so a reader
// that refused them would refuse every downloaded model; index rule 3 (checkpoint.hpp) keeps the
// index's file names inside the directory, and what a link there points to is the choice of
// whoever made the link. The header is read with pread; tensors are views of the mapping (Note
// [truncated files] in mapped_file.hpp says what happens when the file shrinks under them).
//
// WHERE D9D IS STRICTER than the reference (safetensors 0.8, checked by tests/io/differential.py):
// whitespace before the opening '{' (rule 5), duplicate keys (rule 6), "__metadata__": null
// (rule 7), unknown keys in a tensor entry (rule 8) and, in a zero-size tensor, a size in
// [2^63, 2^64) (rule 10: sizes are int64 here, as in PyTorch) are accepted there and rejected
// here. No file the reference rejects is accepted here.
//
// THE WRITER follows the reference: tensors sorted by dtype alignment descending (the reference's
// dtype order: U64 I64 F64 C64 F32 U32 I32 BF16 F16 U16 I16 F8_E5M2FNUZ F8_E4M3FNUZ F8_E8M0
// F8_E4M3 F8_E5M2 I8 U8 F6_E3M2 F6_E2M3 F4 BOOL), then by name (bytewise); the header is compact
// JSON ("__metadata__" first) padded with spaces so that the data section begins on a multiple of
// SaveOptions::alignment (8 as the reference; 4096 lets loaders use O_DIRECT and aligned copies).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <d9d/dims.hpp>
#include <d9d/dtype.hpp>
#include <d9d/error.hpp>
#include <d9d/io/mapped_file.hpp>
#include <d9d/io/read.hpp>
#include <d9d/tensor.hpp>

namespace d9d::io {

// A file that breaks a rule of the format (safetensors or index). The message names the file, the
// key and the rule.
class FormatError : public Error {
 public:
  using Error::Error;
};

// The header's "__metadata__": string keys to string values. Empty means "no __metadata__ key".
using Metadata = std::map<std::string, std::string>;

// What the header says about one tensor.
struct TensorInfo {
  DType dtype = DType::U8;
  Shape shape;
  int64_t begin = 0;  // data_offsets[0], relative to the start of the data section
  int64_t end = 0;    // data_offsets[1]

  int64_t nbytes() const { return end - begin; }
  int64_t numel() const { return numel_of(shape); }
  friend bool operator==(const TensorInfo& a, const TensorInfo& b) = default;
};

// A validated header.
struct SafetensorsHeader {
  // Tensors in file order: by data offset (then by position in the header, for zero-size tensors
  // that share an offset). For files from the reference writer this is also header order.
  std::vector<std::pair<std::string, TensorInfo>> tensors;
  Metadata metadata;
  int64_t header_size = 0;  // N: the JSON header's length in bytes, padding included
  int64_t data_offset() const { return 8 + header_size; }
};

// Validates a whole file image (the 8-byte prefix, the header and the data section; the data
// bytes themselves are not read) against every rule above and returns its header. `name` is the
// file name used in error messages.
SafetensorsHeader validate_safetensors(std::span<const std::byte> file, std::string_view name);

// ---- reading ------------------------------------------------------------------------------------

// A validated, memory-mapped safetensors file. Move-only; tensors taken from it keep the mapping
// alive on their own, so they may outlive the SafetensorsFile. Const member functions are safe to
// call from several threads at once.
class SafetensorsFile {
 public:
  // Maps `path` and validates it (see THE RULES); throws FormatError or IoError.
  static SafetensorsFile open(const std::filesystem::path& path);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::filesystem::path& path() const;
  const Metadata& metadata() const;
  size_t size() const;          // tensors in the file
  int64_t file_size() const;    // bytes
  int64_t data_offset() const;  // 8 + N: where the data section begins
  int64_t header_size() const;  // N

  // Tensor names in file order (by data offset, as SafetensorsHeader::tensors).
  const std::vector<std::string>& keys() const;
  // Tensor names sorted bytewise (the order of Python's safe_open(...).keys()).
  const std::vector<std::string>& sorted_keys() const;
  bool contains(std::string_view name) const;
  // Throws ValueError naming the file if there is no such tensor.
  const TensorInfo& info(std::string_view name) const;

  // A zero-copy, read-only view of the tensor's bytes in the mapping. Its storage (kind kMapped)
  // holds the mapping alive. Tensors of 1 MiB and more get MADV_WILLNEED, so a cold file starts
  // reading them in at once.
  Tensor tensor(std::string_view name) const;
  // An owned, contiguous, writable copy in host memory, read with parallel pread.
  Tensor load(std::string_view name) const;
  // Reads the tensor into `dst`, a writable CPU tensor of the same dtype and shape (any strides).
  // A contiguous `dst` is filled straight from the file; a strided one through the copy engine.
  void read_into(std::string_view name, const Tensor& dst) const;
  // Every tensor, loaded as load() does but with one parallel read plan over the whole file.
  std::map<std::string, Tensor> load_all() const;

  // The mapping (for callers that plan their own reads; see read_ranges).
  const MappedFile& mapped_file() const;
  std::shared_ptr<const MappedFile> shared_mapped_file() const;

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---- writing ------------------------------------------------------------------------------------

struct SaveOptions {
  // The data section begins at a multiple of this many bytes from the start of the file: a power
  // of two from 8 (the reference's choice) to 1 MiB. 4096 makes every page-aligned read possible.
  int64_t alignment = 8;
  // fsync the file before the rename and the directory after it. Turn off only for scratch files.
  bool fsync = true;
  // Compute the file's SHA-256 while it is written (Note [hashing as written] in writer.cpp), for
  // SafetensorsWriter::sha256(). Not for a shared writer's file.
  bool sha256 = false;
};

// {"format": "pt"}: what transformers writes, and what some loaders look for.
Metadata default_metadata();

// A tensor to be written, known before its bytes are: name, dtype and shape.
struct TensorDecl {
  std::string name;
  DType dtype = DType::U8;
  Shape shape;
};

// The exact bytes a writer will lay down, computed from names, dtypes and shapes alone.
struct SafetensorsLayout {
  std::string prefix;        // the 8-byte N followed by the padded header: the file's first bytes
  SafetensorsHeader header;  // tensors in write order, with their offsets
  int64_t file_size = 0;
};

// Orders the tensors as the reference writer does and computes the header, padding and offsets.
// Throws ValueError for a duplicate name, the name "__metadata__", a name or metadata string that
// is not valid UTF-8, a sub-byte tensor that is not a whole number of bytes, a header past
// 100,000,000 bytes, or a bad alignment.
SafetensorsLayout plan_safetensors(std::span<const TensorDecl> tensors,
                                   const Metadata& metadata = default_metadata(),
                                   const SaveOptions& options = {});

// Writes a safetensors file whose header is known up front and whose tensors are streamed in, in
// any order, from any thread: each write lands at its planned offset with pwrite. Nothing exists
// under `path` until commit() (see Note [atomic publish]); a writer destroyed without commit()
// (an exception in the caller, a failed write) leaves no file behind.
//
//   SafetensorsWriter w(path, {{"a", DType::F32, {2, 3}}, {"b", DType::BF16, {4}}});
//   w.write("b", b);              // a whole tensor: CPU (any strides) or CUDA
//   w.write_bytes("a", 0, bytes); // or its raw bytes, in pieces, as they arrive
//   w.commit();
class SafetensorsWriter {
 public:
  // Plans the file (plan_safetensors), creates the temporary file, reserves its size and writes
  // the header.
  SafetensorsWriter(const std::filesystem::path& path, std::span<const TensorDecl> tensors,
                    const Metadata& metadata = default_metadata(), const SaveOptions& options = {});

  // Note [shared file]: one file written by several processes at once (`mpirun d9d convert`).
  // Its layout follows from the declarations alone, so every process knows every offset. One
  // process create_shared()s the file under a name of the caller's choosing (header written, full
  // size reserved, data zero); then every process that owns tensors of it open_shared()s it and
  // writes them at their planned offsets. commit() of a shared writer makes this process's writes
  // durable (fsync, when options.fsync) and closes it: it checks nothing beyond this writer's own
  // writes and renames nothing, because the caller publishes the file once every process has
  // committed. A shared writer destroyed without commit() leaves the file, except that the
  // creator's removes it.
  //
  // Creates `path` (which must not exist; IoError otherwise) for the planned file.
  static SafetensorsWriter create_shared(const std::filesystem::path& path,
                                         std::span<const TensorDecl> tensors,
                                         const Metadata& metadata = default_metadata(),
                                         const SaveOptions& options = {});
  // Opens the file create_shared() made from the same declarations, metadata and options; throws
  // IoError when its size or header is not the planned one (a process that planned differently).
  static SafetensorsWriter open_shared(const std::filesystem::path& path,
                                       std::span<const TensorDecl> tensors,
                                       const Metadata& metadata = default_metadata(),
                                       const SaveOptions& options = {});

  SafetensorsWriter(SafetensorsWriter&&) noexcept;
  SafetensorsWriter& operator=(SafetensorsWriter&&) noexcept;
  ~SafetensorsWriter();  // abandons the file unless committed

  const SafetensorsLayout& layout() const;
  const std::filesystem::path& path() const;

  // Writes the whole tensor `name`, whose dtype and shape must be the declared ones. Strided CPU
  // tensors are packed through a bounded buffer (at most 16 MiB), never copied whole.
  void write(std::string_view name, const Tensor& tensor);
  // Writes bytes [offset, offset + bytes.size()) of tensor `name`'s data. Each byte of each tensor
  // must be written exactly once (a second write of a byte is an error).
  void write_bytes(std::string_view name, int64_t offset, std::span<const std::byte> bytes);
  // True when every byte of every tensor has been written (by this writer).
  bool complete() const;
  // Checks complete(), then fsyncs, renames the temporary to `path` and fsyncs the directory.
  // (A shared writer: see Note [shared file].)
  void commit();
  // After commit(): the SHA-256 of the file's bytes (64 hex digits) when SaveOptions::sha256
  // asked for it; nullopt otherwise or when it could not be computed.
  std::optional<std::string> sha256() const;
  // Removes the temporary file now; the writer is then unusable. (A shared writer: closes it, and
  // the creator's removes the file.)
  void abandon() noexcept;

 private:
  SafetensorsWriter() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes `tensors` (CPU tensors of any strides, or CUDA tensors) to `path` atomically: a
// temporary file in the same directory, fsynced, renamed, directory fsynced. On any failure no
// file is left under `path` (an existing file there is untouched).
void save_safetensors(const std::filesystem::path& path,
                      const std::map<std::string, Tensor>& tensors,
                      const Metadata& metadata = default_metadata(),
                      const SaveOptions& options = {});
// As above; the names must be unique.
void save_safetensors(const std::filesystem::path& path,
                      std::span<const std::pair<std::string, Tensor>> tensors,
                      const Metadata& metadata = default_metadata(),
                      const SaveOptions& options = {});

}  // namespace d9d::io
