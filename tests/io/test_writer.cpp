// plan_safetensors, SafetensorsWriter and save_safetensors: layout, ordering, padding, strided
// sources, streaming, and atomicity under failures.
#include <sys/resource.h>

#include <csignal>
#include <thread>

#include <d9d/io/hashes.hpp>

#include "helpers.hpp"

namespace d9d::io::test {
namespace {

// Note [hashing as written]: the digest the writer computes while it writes is the file's, for
// tensors written in order, out of order, in pieces, and with padding between header and data.
TEST_CASE("SaveOptions::sha256: the writer's digest is the SHA-256 of the file it wrote") {
  TempDir dir;
  const Tensor a = patterned({3 << 20}, DType::U8, 1);
  const Tensor b = patterned({5, 7}, DType::F32, 2);
  const Tensor c = patterned({9 << 20}, DType::U8, 3);  // more than one of the hasher's pieces
  const std::vector<TensorDecl> decls = {
      {"a", DType::U8, a.shape()}, {"b", DType::F32, b.shape()}, {"c", DType::U8, c.shape()}};
  for (const int order : {0, 1, 2}) {
    CAPTURE(order);
    SaveOptions o;
    o.alignment = 4096;
    o.fsync = false;
    o.sha256 = true;
    const auto path = dir / ("t" + std::to_string(order) + ".safetensors");
    SafetensorsWriter w(path, decls, {}, o);
    if (order == 0) {  // in file order
      w.write("a", a);
      w.write("b", b);
      w.write("c", c);
    } else if (order == 1) {  // backwards
      w.write("c", c);
      w.write("b", b);
      w.write("a", a);
    } else {  // c in two pieces, the second first
      const auto* p = static_cast<const std::byte*>(c.data_ptr());
      const size_t half = static_cast<size_t>(c.nbytes()) / 2;
      w.write("a", a);
      w.write_bytes("c", static_cast<int64_t>(half),
                    {p + half, static_cast<size_t>(c.nbytes()) - half});
      w.write("b", b);
      w.write_bytes("c", 0, {p, half});
    }
    CHECK_FALSE(w.sha256().has_value());  // not before the commit
    w.commit();
    REQUIRE(w.sha256().has_value());
    CHECK(*w.sha256() == sha256_of_file(path));
  }
  SaveOptions plain;
  plain.fsync = false;
  SafetensorsWriter w(dir / "plain.safetensors", decls, {}, plain);
  w.write("a", a);
  w.write("b", b);
  w.write("c", c);
  w.commit();
  CHECK_FALSE(w.sha256().has_value());
}

TEST_CASE("the header is compact JSON in the reference's order, padded with spaces to 8") {
  const std::vector<TensorDecl> decls = {
      {"b", DType::U8, {1}}, {"a", DType::F32, {2}}, {"c", DType::F32, {1}}, {"d", DType::I64, {}}};
  const SafetensorsLayout layout = plan_safetensors(decls);
  const std::string json = layout.prefix.substr(8);
  const std::string expected = R"({"__metadata__":{"format":"pt"},)"
                               R"("d":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
                               R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                               R"("c":{"dtype":"F32","shape":[1],"data_offsets":[16,20]},)"
                               R"("b":{"dtype":"U8","shape":[1],"data_offsets":[20,21]}})";
  CHECK(json.substr(0, expected.size()) == expected);
  CHECK(json.find_first_not_of(' ', expected.size()) == std::string::npos);
  CHECK(layout.prefix.size() % 8 == 0);
  CHECK(layout.prefix.size() - expected.size() - 8 < 8);
  CHECK(layout.prefix.substr(0, 8) == le64(json.size()));
  CHECK(layout.file_size == static_cast<int64_t>(layout.prefix.size()) + 21);
  // The layout's own header is a valid file header.
  std::string file = layout.prefix;
  file.resize(static_cast<size_t>(layout.file_size), '\0');
  const auto h = validate_safetensors(as_bytes(file), "planned");
  CHECK(h.tensors == layout.header.tensors);
}

TEST_CASE("the writer orders every dtype as the reference does") {
  std::vector<TensorDecl> decls;
  for (int d = 0; d < kNumDTypes; ++d) {
    decls.push_back({std::string(all_dtypes()[d].name), all_dtypes()[d].dtype, {8}});
  }
  const auto layout = plan_safetensors(decls, {});
  std::vector<std::string> order;
  for (const auto& [name, info] : layout.header.tensors) order.push_back(name);
  CHECK(order == std::vector<std::string>{
                     "U64",         "I64",     "F64",     "C64",     "F32", "U32",
                     "I32",         "BF16",    "F16",     "U16",     "I16", "F8_E5M2FNUZ",
                     "F8_E4M3FNUZ", "F8_E8M0", "F8_E4M3", "F8_E5M2", "I8",  "U8",
                     "F6_E3M2",     "F6_E2M3", "F4",      "BOOL"});
}

TEST_CASE("alignment pads the header so the data section starts on the boundary") {
  for (const int64_t alignment : {8, 64, 4096, 1 << 20}) {
    CAPTURE(alignment);
    const auto layout = plan_safetensors(std::vector<TensorDecl>{{"x", DType::F16, {3}}}, {},
                                         {.alignment = alignment});
    CHECK(static_cast<int64_t>(layout.prefix.size()) % alignment == 0);
    CHECK(layout.header.data_offset() == static_cast<int64_t>(layout.prefix.size()));
  }
  for (const int64_t bad : {0, 4, 12, 2 << 20}) {
    CAPTURE(bad);
    CHECK_THROWS_WITH_AS(plan_safetensors(std::vector<TensorDecl>{}, {}, {.alignment = bad}),
                         doctest::Contains("alignment must be a power of two"), ValueError);
  }
}

TEST_CASE("plan_safetensors rejects what the format cannot hold") {
  using V = std::vector<TensorDecl>;
  CHECK_THROWS_WITH_AS(plan_safetensors(V{{"a", DType::U8, {1}}, {"a", DType::U8, {1}}}),
                       doctest::Contains("\"a\" is given twice"), ValueError);
  CHECK_THROWS_WITH_AS(plan_safetensors(V{{"a", DType::U8, {1}}, {"a", DType::F32, {1}}}),
                       doctest::Contains("\"a\" is given twice"), ValueError);
  CHECK_THROWS_WITH_AS(plan_safetensors(V{{"__metadata__", DType::U8, {1}}}),
                       doctest::Contains("reserved"), ValueError);
  CHECK_THROWS_WITH_AS(plan_safetensors(V{{"bad\xFF", DType::U8, {1}}}),
                       doctest::Contains("not valid UTF-8"), ValueError);
  CHECK_THROWS_WITH_AS(plan_safetensors(V{}, {{"k", "\xC0\xAF"}}),
                       doctest::Contains("metadata value"), ValueError);
  CHECK_THROWS_WITH_AS(plan_safetensors(V{{"f4", DType::F4, {3}}}),
                       doctest::Contains("not a whole number of bytes"), ValueError);
  CHECK_THROWS_WITH_AS(plan_safetensors(V{{"a", DType::U8, {-1}}}), doctest::Contains("negative"),
                       ValueError);
}

TEST_CASE(
    "names and metadata with quotes, backslashes, control characters and Unicode round-trip") {
  TempDir dir;
  const std::string name = "a\"b\\c\n\t\x01/\xE2\x82\xAC";
  const Metadata meta = {{"k\"", "v\\\x1f"}, {"", ""}};
  save_safetensors(dir / "n.safetensors", {{name, patterned({2}, DType::U8)}}, meta);
  const SafetensorsFile f = SafetensorsFile::open(dir / "n.safetensors");
  CHECK(f.keys() == std::vector<std::string>{name});
  CHECK(f.metadata() == meta);
}

TEST_CASE("strided and non-contiguous tensors are written element-exact") {
  TempDir dir;
  const Tensor base = patterned({64, 48, 3}, DType::F32, 5);
  // 36 MiB transposed: larger than the 16 MiB bounce buffer, so it is written in blocks.
  const Tensor huge = patterned({3072, 3072}, DType::F32, 6).transpose(0, 1);
  const std::map<std::string, Tensor> tensors = {
      {"transposed", base.transpose(0, 2)},
      {"narrowed", base.narrow(1, 5, 20)},
      {"selected", base.select(2, 1)},
      {"permuted", base.permute({1, 2, 0})},
      {"huge", huge},
      {"bf16", patterned({16, 8}, DType::BF16).transpose(0, 1)},
  };
  save_safetensors(dir / "s.safetensors", tensors, default_metadata(), {.fsync = false});
  const SafetensorsFile f = SafetensorsFile::open(dir / "s.safetensors");
  for (const auto& [name, t] : tensors) {
    CAPTURE(name);
    CHECK(equal(f.tensor(name), t));
  }
}

TEST_CASE("SafetensorsWriter streams tensors in any order and in pieces, from several threads") {
  TempDir dir;
  const Tensor a = patterned({1000, 10}, DType::I32, 1);
  const Tensor b = patterned({123}, DType::U8, 2);
  const Tensor c = patterned({7, 3}, DType::F64, 3);
  const std::vector<TensorDecl> decls = {{"a", DType::I32, {1000, 10}},
                                         {"b", DType::U8, {123}},
                                         {"c", DType::F64, {7, 3}},
                                         {"e", DType::F32, {0}}};
  SafetensorsWriter w(dir / "w.safetensors", decls, {{"format", "pt"}}, {.alignment = 4096});
  CHECK(w.layout().header.data_offset() == 4096);
  CHECK(dir.list().size() == 1);  // the temporary only
  CHECK_FALSE(std::filesystem::exists(dir / "w.safetensors"));
  std::thread t1([&] { w.write("c", c); });
  std::thread t2([&] {
    const std::string bytes = bytes_of(a);
    // Back to front in uneven pieces.
    for (int64_t end = static_cast<int64_t>(bytes.size()); end > 0;) {
      const int64_t begin = std::max<int64_t>(0, end - 777);
      w.write_bytes("a", begin, as_bytes(std::string_view(bytes).substr(begin, end - begin)));
      end = begin;
    }
  });
  t1.join();
  t2.join();
  CHECK_FALSE(w.complete());
  CHECK_THROWS_WITH_AS(w.commit(), doctest::Contains("1 tensors are not fully written: \"b\""),
                       ValueError);
  w.write("b", b);
  CHECK(w.complete());  // "e" has no bytes
  w.commit();
  CHECK(dir.list() == std::vector<std::string>{"w.safetensors"});
  const SafetensorsFile f = SafetensorsFile::open(dir / "w.safetensors");
  CHECK(equal(f.tensor("a"), a));
  CHECK(equal(f.tensor("b"), b));
  CHECK(equal(f.tensor("c"), c));
  CHECK(f.info("e").nbytes() == 0);
  CHECK_THROWS_WITH_AS(w.write("b", b), doctest::Contains("already committed"), ValueError);
}

TEST_CASE("SafetensorsWriter rejects writes that do not match the plan") {
  TempDir dir;
  SafetensorsWriter w(dir / "w.safetensors", std::vector<TensorDecl>{{"a", DType::F32, {4}}});
  CHECK_THROWS_WITH_AS(w.write("x", patterned({4}, DType::F32)),
                       doctest::Contains("\"x\" was not declared"), ValueError);
  CHECK_THROWS_WITH_AS(w.write("a", patterned({4}, DType::F16)),
                       doctest::Contains("declared F32 but is F16"), TypeError);
  CHECK_THROWS_WITH_AS(w.write("a", patterned({2, 2}, DType::F32)),
                       doctest::Contains("declared with shape [4] but has shape [2, 2]"),
                       ValueError);
  const std::string bytes(16, 'x');
  CHECK_THROWS_WITH_AS(w.write_bytes("a", 10, as_bytes(bytes.substr(0, 8))),
                       doctest::Contains("outside tensor \"a\""), ValueError);
  w.write_bytes("a", 4, as_bytes(bytes.substr(0, 8)));
  CHECK_THROWS_WITH_AS(w.write_bytes("a", 8, as_bytes(bytes.substr(0, 8))),
                       doctest::Contains("overlap bytes already written"), ValueError);
  CHECK_THROWS_WITH_AS(w.write_bytes("a", 0, as_bytes(bytes.substr(0, 5))),
                       doctest::Contains("overlap"), ValueError);
  w.write_bytes("a", 0, as_bytes(bytes.substr(0, 4)));
  w.write_bytes("a", 12, as_bytes(bytes.substr(0, 4)));
  CHECK(w.complete());
}

TEST_CASE("a shared file written by several writers is the file one writer would write") {
  TempDir dir;
  const Tensor a = patterned({300, 7}, DType::BF16, 1);
  const Tensor b = patterned({123}, DType::U8, 2);
  const Tensor c = patterned({7, 3}, DType::F64, 3).transpose(0, 1);  // strided
  const std::vector<TensorDecl> decls = {{"a", DType::BF16, {300, 7}},
                                         {"b", DType::U8, {123}},
                                         {"c", DType::F64, {3, 7}},
                                         {"e", DType::F32, {0}}};
  const SaveOptions options{.alignment = 4096, .fsync = false};
  save_safetensors(dir / "one.safetensors",
                   std::map<std::string, Tensor>{
                       {"a", a}, {"b", b}, {"c", c}, {"e", Tensor::zeros({0}, DType::F32)}},
                   default_metadata(), options);
  const auto path = dir / ".shared.safetensors";
  SafetensorsWriter::create_shared(path, decls, default_metadata(), options).commit();
  CHECK_THROWS_AS(SafetensorsWriter::create_shared(path, decls, default_metadata(), options),
                  IoError);  // it exists
  // Two "processes", each with its own tensors, in pieces from the other end.
  SafetensorsWriter p1 = SafetensorsWriter::open_shared(path, decls, default_metadata(), options);
  SafetensorsWriter p2 = SafetensorsWriter::open_shared(path, decls, default_metadata(), options);
  p2.write("c", c);
  const std::string bytes = bytes_of(a);
  p1.write_bytes("a", 1000, as_bytes(std::string_view(bytes).substr(1000)));
  p1.write_bytes("a", 0, as_bytes(std::string_view(bytes).substr(0, 1000)));
  p2.write("b", b);
  CHECK_FALSE(p1.complete());  // each sees only its own writes
  p1.commit();                 // no completeness check, no rename
  p2.commit();
  CHECK(read_file(path) == read_file(dir / "one.safetensors"));
  std::filesystem::rename(path, dir / "two.safetensors");
  CHECK(equal(SafetensorsFile::open(dir / "two.safetensors").tensor("c"), c));
}

TEST_CASE(
    "open_shared refuses a file planned from other tensors; an uncommitted creator cleans up") {
  TempDir dir;
  const std::vector<TensorDecl> decls = {{"a", DType::F32, {4}}};
  const auto path = dir / "s.safetensors";
  CHECK_THROWS_AS(SafetensorsWriter::open_shared(path, decls), IoError);  // not created yet
  {
    SafetensorsWriter creator = SafetensorsWriter::create_shared(path, decls);
    CHECK(std::filesystem::file_size(path) == static_cast<uintmax_t>(creator.layout().file_size));
    CHECK_THROWS_WITH_AS(
        SafetensorsWriter::open_shared(path, std::vector<TensorDecl>{{"a", DType::F32, {2, 2}}}),
        doctest::Contains("not the one planned"), IoError);
    CHECK_THROWS_AS(
        SafetensorsWriter::open_shared(path, std::vector<TensorDecl>{{"b", DType::F32, {4}}}),
        IoError);
    SafetensorsWriter other = SafetensorsWriter::open_shared(path, decls);
    other.write("a", patterned({4}, DType::F32));
  }  // the creator never committed: the file goes, whatever the others did
  CHECK(dir.list().empty());
}

TEST_CASE("a writer dropped before commit leaves no file, and an earlier file stays intact") {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  write_file(path, "old contents");
  {
    SafetensorsWriter w(path, std::vector<TensorDecl>{{"a", DType::F32, {4}}});
    w.write("a", patterned({4}, DType::F32));
  }  // no commit
  CHECK(dir.list() == std::vector<std::string>{"m.safetensors"});
  CHECK(read_file(path) == "old contents");
  SafetensorsWriter w(dir / "n.safetensors", std::vector<TensorDecl>{{"a", DType::F32, {4}}});
  w.abandon();
  CHECK(dir.list() == std::vector<std::string>{"m.safetensors"});
}

TEST_CASE("save_safetensors that fails on a tensor half way leaves no file under the final name") {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  // A tensor that throws when its bytes are fetched: it claims to live on CUDA device 1000, which
  // exists on no machine (without CUDA the copy fails all the same).
  static std::byte fake[64];
  const Tensor bad = Tensor::from_storage(
      Storage::wrap(fake, sizeof fake, Device::cuda(1000), StorageKind::kCuda, false, {}),
      DType::F32, {16});
  const std::map<std::string, Tensor> tensors = {{"a_good", patterned({1 << 20}, DType::F32)},
                                                 {"b_bad", bad}};
  CHECK_THROWS_AS(save_safetensors(path, tensors), Error);
  CHECK(dir.list().empty());
}

TEST_CASE("a full disk (file size limit) fails cleanly and leaves no file behind") {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  write_file(path, "old contents");
  // RLIMIT_FSIZE makes writes past 1 MiB fail with EFBIG, as a full disk fails with ENOSPC.
  struct sigaction ignore {
  }, old_action{};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGXFSZ, &ignore, &old_action);
  rlimit old_limit{};
  getrlimit(RLIMIT_FSIZE, &old_limit);
  rlimit limit = old_limit;
  limit.rlim_cur = 1 << 20;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &limit) == 0);
  std::string message;
  try {
    save_safetensors(path, {{"x", patterned({4 << 20}, DType::U8)}});
  } catch (const IoError& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old_limit);
  sigaction(SIGXFSZ, &old_action, nullptr);
  INFO(message);
  CHECK(message.find("m.safetensors") != std::string::npos);
  CHECK(message.find("File too large") != std::string::npos);
  CHECK(dir.list() == std::vector<std::string>{"m.safetensors"});
  CHECK(read_file(path) == "old contents");
}

TEST_CASE("a file can be rewritten in place from views of its own mapping") {
  // The temporary-and-rename publish leaves the old inode (and every view of it) intact.
  TempDir dir;
  const auto path = dir / "m.safetensors";
  const Tensor a = patterned({64, 32}, DType::F32, 1);
  save_safetensors(path, {{"a", a}});
  {
    const SafetensorsFile f = SafetensorsFile::open(path);
    const Tensor view = f.tensor("a");
    save_safetensors(path, {{"a", view}, {"a_t", view.transpose(0, 1)}}, {{"format", "np"}});
    CHECK(equal(view, a));  // the old mapping still reads the old bytes
  }
  const SafetensorsFile g = SafetensorsFile::open(path);
  CHECK(g.metadata() == Metadata{{"format", "np"}});
  CHECK(equal(g.tensor("a"), a));
  CHECK(equal(g.tensor("a_t"), a.transpose(0, 1)));
  CHECK(dir.list() == std::vector<std::string>{"m.safetensors"});
}

TEST_CASE("save then open round-trips every dtype, scalars and empty tensors") {
  TempDir dir;
  std::map<std::string, Tensor> tensors;
  for (int d = 0; d < kNumDTypes; ++d) {
    const DType dtype = all_dtypes()[d].dtype;
    const std::string name(all_dtypes()[d].name);
    tensors[name] = patterned({4, 6}, dtype, d);
    if (!is_sub_byte(dtype)) tensors[name + ".scalar"] = patterned({}, dtype, d);
    tensors[name + ".empty"] = Tensor::empty({0, 3}, dtype);
  }
  save_safetensors(dir / "all.safetensors", tensors, {});
  const SafetensorsFile f = SafetensorsFile::open(dir / "all.safetensors");
  CHECK(f.metadata().empty());
  CHECK(f.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    CAPTURE(name);
    CHECK(f.info(name).dtype == t.dtype());
    CHECK(f.info(name).shape == t.shape());
    CHECK(bytes_of(f.load(name)) == bytes_of(t));
  }
}

}  // namespace
}  // namespace d9d::io::test
