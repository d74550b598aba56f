// MappedFile and SafetensorsFile: mapping lifetime, views, copies, key orders, errors.
#include <fcntl.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>

#include "helpers.hpp"

namespace d9d::io::test {
namespace {

TEST_CASE("MappedFile maps a file read-only and is move-only with a sentinel after a move") {
  TempDir dir;
  write_file(dir / "f", "hello world");
  MappedFile a = MappedFile::open(dir / "f");
  CHECK(a.is_open());
  CHECK(a.size() == 11);
  CHECK(std::string_view(reinterpret_cast<const char*>(a.data()), a.size()) == "hello world");
  MappedFile b = std::move(a);
  CHECK_FALSE(a.is_open());  // NOLINT(bugprone-use-after-move): the sentinel is the contract
  CHECK(a.data() == nullptr);
  CHECK(a.size() == 0);
  CHECK(a.fd() == -1);
  CHECK(b.size() == 11);
  std::byte buf[5];
  b.read(6, buf);
  CHECK(std::string_view(reinterpret_cast<const char*>(buf), 5) == "world");
  CHECK_THROWS_AS(b.read(8, buf), IoError);  // past the end
  b.advise(Advice::kSequential);
  b.advise(Advice::kWillNeed, 3, 100);  // clamped, never fails
  MappedFile c;
  c = std::move(b);
  CHECK(c.size() == 11);
  static_assert(!std::is_copy_constructible_v<MappedFile>);
  static_assert(std::is_nothrow_move_constructible_v<MappedFile>);
  static_assert(std::is_nothrow_destructible_v<MappedFile>);
}

TEST_CASE("MappedFile opens an empty file without mapping it") {
  TempDir dir;
  write_file(dir / "empty", "");
  const MappedFile f = MappedFile::open(dir / "empty");
  CHECK(f.is_open());
  CHECK(f.size() == 0);
  CHECK(f.data() == nullptr);
  CHECK(f.bytes().empty());
}

TEST_CASE("MappedFile reports missing files and directories as IoError naming the path") {
  TempDir dir;
  try {
    MappedFile::open(dir / "missing");
    FAIL("no exception");
  } catch (const IoError& e) {
    CHECK(std::string(e.what()).find("missing") != std::string::npos);
    CHECK(std::string(e.what()).find("No such file") != std::string::npos);
  }
  CHECK_THROWS_WITH_AS(MappedFile::open(dir.path()), doctest::Contains("not a regular file"),
                       IoError);
}

TEST_CASE("a FIFO is refused at once, naming it, not waited on for a writer") {
  TempDir dir;
  REQUIRE(::mkfifo((dir / "f.safetensors").c_str(), 0600) == 0);
  CHECK(refused_at_once(dir / "f.safetensors", [&] { MappedFile::open(dir / "f.safetensors"); }));
  CHECK(refused_at_once(dir / "f.safetensors",
                        [&] { SafetensorsFile::open(dir / "f.safetensors"); }));
  CHECK(refused_at_once(dir / "f.safetensors", [&] { read_regular_file(dir / "f.safetensors"); }));
  CHECK_THROWS_WITH_AS(read_regular_file(dir.path()), doctest::Contains("(a directory)"), IoError);
}

TEST_CASE("read_regular_file reads a whole file, larger than its buffer too") {
  TempDir dir;
  std::string text(200'000, '\0');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>(i * 13 % 256);
  write_file(dir / "t", text);
  CHECK(read_regular_file(dir / "t") == text);
  write_file(dir / "e", "");
  CHECK(read_regular_file(dir / "e").empty());
  CHECK_THROWS_WITH_AS(read_regular_file(dir / "missing"), doctest::Contains("No such file"),
                       IoError);
}

TEST_CASE("an empty file or a short file is a FormatError from SafetensorsFile::open") {
  TempDir dir;
  write_file(dir / "e.safetensors", "");
  CHECK_THROWS_WITH_AS(SafetensorsFile::open(dir / "e.safetensors"),
                       doctest::Contains("e.safetensors: header length: the file is 0 bytes"),
                       FormatError);
}

struct Fixture {
  TempDir dir;
  std::filesystem::path path = dir / "m.safetensors";
  Tensor w = patterned({3, 4}, DType::F32, 1);
  Tensor b = patterned({4}, DType::BF16, 2);
  Tensor s = patterned({}, DType::I64, 3);
  Tensor z = Tensor::empty({0, 5}, DType::F16);
  Tensor f4 = patterned({2, 3}, DType::F4, 4);
  Fixture() {
    save_safetensors(path, {{"w", w}, {"b", b}, {"s", s}, {"z", z}, {"f4", f4}},
                     {{"format", "pt"}, {"note", "caf\xC3\xA9"}});
  }
};

TEST_CASE("opening a cold file reads its header, not the kernel's read-around of tensor data") {
  std::ifstream probe("/proc/self/io");
  if (!probe) return;  // no per-process I/O accounting here
  auto read_bytes = [] {
    std::ifstream io("/proc/self/io");
    std::string key;
    int64_t value = 0;
    while (io >> key >> value) {
      if (key == "read_bytes:") return value;
    }
    return int64_t{-1};
  };
  TempDir dir;
  const auto path = dir / "big.safetensors";
  save_safetensors(path,
                   std::map<std::string, Tensor>{{"w", Tensor::zeros({32 << 20}, DType::U8)}});
  const int fd = ::open(path.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);  // clean (fsynced) pages: evicted
  ::close(fd);
  const int64_t before = read_bytes();
  const SafetensorsFile f = SafetensorsFile::open(path);
  CHECK(read_bytes() - before <= 64 << 10);  // was 16 MiB: Note [header without read-around]
  CHECK(f.info("w").nbytes() == 32 << 20);
}

TEST_CASE("SafetensorsFile exposes keys in file and sorted order, infos and metadata") {
  Fixture fx;
  const SafetensorsFile f = SafetensorsFile::open(fx.path);
  CHECK(f.size() == 5);
  // Written in the reference order: I64, F32, BF16, F16 (zero bytes), F4.
  CHECK(f.keys() == std::vector<std::string>{"s", "w", "b", "z", "f4"});
  CHECK(f.sorted_keys() == std::vector<std::string>{"b", "f4", "s", "w", "z"});
  CHECK(f.metadata() == Metadata{{"format", "pt"}, {"note", "caf\xC3\xA9"}});
  CHECK(f.info("w") == TensorInfo{DType::F32, {3, 4}, 8, 56});
  CHECK(f.info("s").shape.empty());
  CHECK(f.info("z").nbytes() == 0);
  CHECK(f.info("f4").nbytes() == 3);
  CHECK(f.data_offset() % 8 == 0);
  CHECK(f.file_size() == f.data_offset() + 8 + 48 + 8 + 3);
  CHECK(f.contains("w"));
  CHECK_FALSE(f.contains("W"));
  CHECK_THROWS_WITH_AS(f.info("nope"), doctest::Contains("no tensor named \"nope\""), ValueError);
}

TEST_CASE("tensor() is a zero-copy read-only view that keeps the mapping alive") {
  Fixture fx;
  Tensor view;
  {
    const SafetensorsFile f = SafetensorsFile::open(fx.path);
    view = f.tensor("w");
    CHECK(view.storage().kind() == StorageKind::kMapped);
    CHECK_FALSE(view.storage().writable());
    CHECK(static_cast<const std::byte*>(view.data_ptr()) ==
          f.mapped_file().data() + f.data_offset() + f.info("w").begin);
    CHECK_THROWS_AS(view.mutable_data_ptr(), ValueError);
  }
  // The SafetensorsFile is gone; the view still reads the mapping.
  CHECK(equal(view, fx.w));
  CHECK(view.transpose(0, 1).contiguous().shape() == Shape{4, 3});
}

TEST_CASE("load() and load_all() give owned contiguous copies equal to the file") {
  Fixture fx;
  const SafetensorsFile f = SafetensorsFile::open(fx.path);
  for (const auto& [name, expected] : std::vector<std::pair<std::string, Tensor>>{
           {"w", fx.w}, {"b", fx.b}, {"s", fx.s}, {"z", fx.z}}) {
    CAPTURE(name);
    const Tensor t = f.load(name);
    CHECK(t.storage().kind() != StorageKind::kMapped);
    CHECK(t.storage().writable());
    CHECK(t.is_contiguous());
    CHECK(equal(t, expected));
  }
  const Tensor packed = f.load("f4");
  CHECK(packed.dtype() == DType::F4);
  CHECK(bytes_of(packed) == bytes_of(fx.f4));
  const auto all = f.load_all();
  CHECK(all.size() == 5);
  CHECK(equal(all.at("w"), fx.w));
  CHECK(bytes_of(all.at("f4")) == bytes_of(fx.f4));
}

TEST_CASE("read_into fills contiguous and strided destinations and checks dtype and shape") {
  Fixture fx;
  const SafetensorsFile f = SafetensorsFile::open(fx.path);
  Tensor dst = Tensor::zeros({3, 4}, DType::F32);
  f.read_into("w", dst);
  CHECK(equal(dst, fx.w));
  Tensor big = Tensor::zeros({4, 3}, DType::F32);
  const Tensor strided = big.transpose(0, 1);  // shape (3, 4), not contiguous
  f.read_into("w", strided);
  CHECK(equal(strided, fx.w));
  CHECK(equal(big, fx.w.transpose(0, 1).contiguous()));
  CHECK_THROWS_WITH_AS(f.read_into("w", Tensor::zeros({3, 4}, DType::F16)),
                       doctest::Contains("holds F32 but the destination is F16"), TypeError);
  CHECK_THROWS_WITH_AS(f.read_into("w", Tensor::zeros({4, 3}, DType::F32)),
                       doctest::Contains("holds shape [3, 4]"), ValueError);
}

TEST_CASE("large tensors are read in parallel chunks, exactly") {
  TempDir dir;
  // 24 MiB + 3 bytes: several 4 MiB chunks and a ragged tail; neighbours joined by preadv.
  const Tensor big = patterned({(int64_t{24} << 20) + 3}, DType::U8, 9);
  std::vector<std::pair<std::string, Tensor>> tensors = {{"big", big}};
  for (int i = 0; i < 3000; ++i)
    tensors.emplace_back("small." + std::to_string(i), patterned({3}, DType::U8, i));
  save_safetensors(dir / "x.safetensors", tensors, {}, {.alignment = 4096, .fsync = false});
  const SafetensorsFile f = SafetensorsFile::open(dir / "x.safetensors");
  CHECK(f.data_offset() % 4096 == 0);
  CHECK(equal(f.load("big"), big));
  const auto all = f.load_all();
  CHECK(all.size() == 3001);
  for (const auto& [name, t] : tensors) REQUIRE(equal(all.at(name), t));
}

TEST_CASE("read_ranges copies ranges of several files, joined or split, on several threads") {
  TempDir dir;
  std::string a(10 << 20, '\0'), b(3000, '\0');
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<char>(i * 31 % 251);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<char>(i % 7);
  write_file(dir / "a", a);
  write_file(dir / "b", b);
  const MappedFile fa = MappedFile::open(dir / "a");
  const MappedFile fb = MappedFile::open(dir / "b");
  std::vector<std::byte> out_a(a.size() - 5), out_b1(1000), out_b2(1000), out_b3(7);
  const std::vector<ReadRange> ranges = {
      {&fa, 5, out_a.data(), out_a.size(), true},  // 10 MiB: split into chunks
      {&fb, 0, out_b1.data(), 1000, false},        // adjacent: one preadv
      {&fb, 1000, out_b2.data(), 1000, false},
      {&fb, 2993, out_b3.data(), 7, false},
      {&fb, 0, nullptr, 0, false},  // empty: ignored
  };
  read_ranges(ranges, {.threads = 2});
  CHECK(std::memcmp(out_a.data(), a.data() + 5, out_a.size()) == 0);
  CHECK(std::memcmp(out_b1.data(), b.data(), 1000) == 0);
  CHECK(std::memcmp(out_b2.data(), b.data() + 1000, 1000) == 0);
  CHECK(std::memcmp(out_b3.data(), b.data() + 2993, 7) == 0);
  const ReadRange past{&fb, 2995, out_b3.data(), 7, false};
  CHECK_THROWS_WITH_AS(read_ranges({&past, 1}), doctest::Contains("pass the end of"), ValueError);
}

TEST_CASE("read_ranges reports a file truncated after it was opened") {
  TempDir dir;
  save_safetensors(dir / "t.safetensors", {{"a", patterned({1 << 16}, DType::U8)}});
  const SafetensorsFile f = SafetensorsFile::open(dir / "t.safetensors");
  std::filesystem::resize_file(dir / "t.safetensors", 100);
  CHECK_THROWS_WITH_AS(f.load("a"), doctest::Contains("unexpected end of file"), IoError);
}

TEST_CASE("every read backend returns the bytes pread does, and names a file cut short") {
  TempDir dir;
  // Sizes that are not multiples of the 4 KiB block; one file larger than a chunk.
  std::string a((9 << 20) + 12345, '\0'), b(4096 * 3 + 1, '\0');
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<char>(i * 131 % 253);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<char>(i * 7 % 251);
  write_file(dir / "a", a);
  write_file(dir / "b", b);
  const MappedFile fa = MappedFile::open(dir / "a");
  const MappedFile fb = MappedFile::open(dir / "b");
  // Random ranges in file order, unaligned heads and tails, adjacent and empty ones, the last
  // byte of each file.
  uint64_t seed = 12345;
  auto next = [&](uint64_t n) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return (seed >> 33) % n;
  };
  struct Want {
    const MappedFile* file;
    const std::string* bytes;
    uint64_t offset, size;
  };
  std::vector<Want> wants;
  for (uint64_t at = 0; at < a.size();) {
    const uint64_t size =
        std::min<uint64_t>(a.size() - at, next(3) == 0 ? next(3 << 20) : next(9000));
    wants.push_back({&fa, &a, at, size});
    at += size + (next(2) ? 0 : next(5000));
  }
  wants.push_back({&fa, &a, a.size() - 1, 1});
  wants.push_back({&fb, &b, 0, 0});
  wants.push_back({&fb, &b, 1, 4095});
  wants.push_back({&fb, &b, 4096, b.size() - 4096});
  for (const IoBackend io : {IoBackend::kAuto, IoBackend::kMmap, IoBackend::kPread,
                             IoBackend::kDirect, IoBackend::kUring}) {
    CAPTURE(to_string(io));
    std::vector<std::vector<std::byte>> out(wants.size());
    std::vector<ReadRange> ranges;
    for (size_t i = 0; i < wants.size(); ++i) {
      out[i].assign(wants[i].size, std::byte{0xEE});
      ranges.push_back({wants[i].file, wants[i].offset, out[i].data(), wants[i].size, i % 2 == 0});
    }
    ReadLog log;
    read_ranges(ranges, {.threads = 2, .io = io, .log = &log});
    for (size_t i = 0; i < wants.size(); ++i) {
      if (wants[i].size == 0) continue;  // (an empty vector's data() may be null: no memcmp)
      REQUIRE(std::memcmp(out[i].data(), wants[i].bytes->data() + wants[i].offset, wants[i].size) ==
              0);
    }
    // Every byte is accounted to the file it came from, by the backend asked for (or the one a
    // note says was used instead).
    const auto files = log.files();
    REQUIRE(files.count((dir / "a").string()) == 1);
    const ReadLog::File& fa_log = files.at((dir / "a").string());
    uint64_t logged = 0;
    for (const auto& [backend, bytes] : fa_log.bytes) logged += bytes;
    uint64_t wanted_a = 0;
    for (const Want& w : wants) wanted_a += w.file == &fa ? w.size : 0;
    CHECK(logged == wanted_a);
    if (io != IoBackend::kAuto && fa_log.notes.empty()) CHECK(fa_log.bytes.count(io) == 1);
    if (io == IoBackend::kUring && io_uring_available()) CHECK(fa_log.notes.empty());
  }
  // A file cut short after it was opened: an IoError naming it, on every backend.
  std::filesystem::resize_file(dir / "a", 5 << 20);
  std::vector<std::byte> tail(1 << 20);
  const ReadRange past_cut{&fa, 6 << 20, tail.data(), tail.size(), false};
  const std::string a_path = (dir / "a").string();
  for (const IoBackend io :
       {IoBackend::kMmap, IoBackend::kPread, IoBackend::kDirect, IoBackend::kUring}) {
    CAPTURE(to_string(io));
    CHECK_THROWS_WITH_AS(read_ranges({&past_cut, 1}, {.io = io}), doctest::Contains(a_path.c_str()),
                         IoError);
  }
  CHECK_THROWS_WITH_AS(parse_io_backend("aio"), doctest::Contains("auto, mmap, pread"), ValueError);
}

// Checks that `text` contains `part`, showing `text` otherwise.
#define CHECK_CONTAINS(text, part)                \
  do {                                            \
    const std::string text_ = (text);             \
    INFO("message: ", text_);                     \
    CHECK(text_.find(part) != std::string::npos); \
  } while (0)

// The message of the IoError `fn` throws; "" when it throws none.
template <class F>
std::string io_error_of(F fn) {
  try {
    fn();
  } catch (const IoError& e) {
    return e.what();
  }
  return "";
}

// Note [truncated files]: every way d9d reads a file cut short under it is an IoError naming it.
TEST_CASE("a file cut short after it was opened is an IoError naming it, never SIGBUS") {
  TempDir dir;
  const auto path = dir / "t.safetensors";
  save_safetensors(path,
                   {{"a", patterned({1 << 20}, DType::U8)}, {"b", patterned({4}, DType::U8)}});
  const SafetensorsFile f = SafetensorsFile::open(path);
  const Tensor view = f.tensor("a");  // taken before: the caller's, under the mmap contract
  std::filesystem::resize_file(path, 4096);
  const std::string shrunk = "t.safetensors, which is now 4096 bytes long but had";
  // No view of bytes that are gone is handed out.
  CHECK_CONTAINS(io_error_of([&] { f.tensor("a"); }), shrunk);
  CHECK_CONTAINS(io_error_of([&] { f.tensor("b"); }), shrunk);
  // Copies read with pread: a new tensor, a strided destination.
  CHECK_CONTAINS(io_error_of([&] { f.load("a"); }), "unexpected end of file");
  Tensor wide = Tensor::zeros({1 << 20, 2}, DType::U8);
  CHECK_CONTAINS(io_error_of([&] { f.read_into("a", wide.select(1, 0)); }), "t.safetensors");
  CHECK_CONTAINS(io_error_of([&] { f.mapped_file().check_size(); }), shrunk);
  // Page-table entries of the lost pages: MADV_POPULATE_READ fails where a touch would SIGBUS.
  CHECK_CONTAINS(io_error_of([&] { f.mapped_file().populate(0, f.mapped_file().size()); }), shrunk);
  // A view written to another file goes through pwrite, which the kernel answers with EFAULT:
  // the error names the file the bytes were a view of.
  const std::string written = io_error_of([&] {
    save_safetensors(dir / "o.safetensors", {{"a", view}});
  });
  CHECK_CONTAINS(written, "the bytes to write are a view of " + path.string());
  CHECK_CONTAINS(written, "(byte 4096), which is now 4096 bytes long");
  CHECK(dir.list() == std::vector<std::string>{"t.safetensors"});  // no output, no temporary
  CHECK(MappedFile::describe_source(view.data_ptr()).value().rfind(path.string(), 0) == 0);
  CHECK_FALSE(MappedFile::describe_source(wide.data_ptr()).has_value());
}

TEST_CASE("a header not in offset order is listed in file order and looked up by name") {
  TempDir dir;
  write_file(dir / "r.safetensors", image(R"({"c":{"dtype":"U8","shape":[2],"data_offsets":[3,5]},)"
                                          R"("z":{"dtype":"F32","shape":[0],"data_offsets":[1,1]},)"
                                          R"("b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]},)"
                                          R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                                          5));
  const SafetensorsFile f = SafetensorsFile::open(dir / "r.safetensors");
  CHECK(f.keys() == std::vector<std::string>{"a", "z", "b", "c"});
  CHECK(f.sorted_keys() == std::vector<std::string>{"a", "b", "c", "z"});
  CHECK(f.info("a").begin == 0);
  CHECK(f.info("b").begin == 1);
  CHECK(f.info("c").begin == 3);
  CHECK(f.info("z").nbytes() == 0);
  CHECK(f.load("c").to_vector<uint8_t>() == std::vector<uint8_t>{3, 4});
  CHECK_FALSE(f.contains("d"));
}

TEST_CASE("SafetensorsFile::open names the file in format errors") {
  TempDir dir;
  write_file(dir / "bad.safetensors",
             image(R"({"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4));
  CHECK_THROWS_WITH_AS(
      SafetensorsFile::open(dir / "bad.safetensors"),
      doctest::Contains("bad.safetensors: tensor \"a\": unknown dtype \"F33\" (rule 9"),
      FormatError);
}

}  // namespace
}  // namespace d9d::io::test
