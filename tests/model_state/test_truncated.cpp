// The streamed engine when a checkpoint file is cut short while it is read (Note [truncated
// files] in <d9d/io/mapped_file.hpp>, Note [views or copies] in reader.cpp): an IoError naming the
// file, never SIGBUS; and what it reads with pread rather than through a mapping.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <d9d/d9d.hpp>
#include <d9d/io/checkpoint.hpp>
#include <d9d/mapper.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

#include "common/files.hpp"
#include "common/model_state.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::model_state;
namespace fs = std::filesystem;
using d9d::test::files_in;
using d9d::test::quiet_read;
using d9d::test::quiet_write;
using d9d::test::TempDir;

namespace {

// A one-shard checkpoint of q, k, v (1 MiB each, bytes i % 251) and o.
struct Llamaish {
  TempDir tmp;
  fs::path dir = tmp / "c";
  fs::path shard = dir / "model-00001-of-00001.safetensors";
  StateDict tensors;
  Llamaish() {
    for (const char* name : {"q", "k", "v", "o"}) {
      Tensor t = Tensor::empty({1 << 20}, DType::U8);
      auto* p = static_cast<uint8_t*>(t.mutable_data_ptr());
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<uint8_t>((i + name[0]) % 251);
      tensors.emplace(name, t);
    }
    save_model_state(dir, identity_mapper_from_state(tensors), tensors, quiet_write());
  }
  void truncate() const { fs::resize_file(shard, 4096); }
};

MapperPtr fused() {
  return parallel({concatenate_tensors({"q", "k", "v"}, "qkv", 0), rename_tensor("o", "out")});
}

// The message of the IoError `fn` throws; "" when it throws none.
template <class F>
std::string io_error_of(F fn) {
  try {
    fn();
  } catch (const io::IoError& e) {
    return e.what();
  }
  return "";
}

// Bytes this process has read with read(2)-family calls so far (/proc/self/io's rchar: pread
// counts, a read through a mapping does not); -1 where the kernel does not say.
int64_t bytes_read_by_syscalls() {
  std::ifstream io("/proc/self/io");
  std::string key;
  int64_t value = 0;
  while (io >> key >> value) {
    if (key == "rchar:") return value;
  }
  return -1;
}

}  // namespace

TEST_CASE("a shard cut short under a conversion is an IoError naming it, for copies and views") {
  for (const bool view_group_first : {false, true}) {
    Llamaish c;
    // The plan is made (every file opened); then the file shrinks before a byte is read.
    MapperPtr m = view_group_first ? MapperPtr(rename_tensor("o", "out")) : fused();
    ModelStateStream stream = read_model_state(c.dir, m, quiet_read());
    c.truncate();
    const std::string message = io_error_of([&] {
      for (auto&& [name, tensor] : stream) (void)tensor;
    });
    INFO("message: ", message);
    CHECK(message.find(c.shard.string()) != std::string::npos);
  }
}

TEST_CASE("a view written after its file shrank is an IoError naming that file, not SIGBUS") {
  Llamaish c;
  ReadOptions o = quiet_read();
  o.memory_budget = 1;  // one group at a time: the view is taken before the file shrinks
  ModelStateStream stream = read_model_state(c.dir, identity("o"), o);
  auto it = stream.begin();
  REQUIRE(it != stream.end());
  const Tensor view = it->second;
  CHECK(view.storage().kind() == StorageKind::kMapped);  // zero-copy, populated
  c.truncate();
  // The writer pwrites from the view: EFAULT, which names the source, not the output.
  const std::string message = io_error_of([&] {
    save_model_state(c.tmp / "out", identity("o"), {{"o", view}}, quiet_write());
  });
  INFO("message: ", message);
  CHECK(message.find("the bytes to write are a view of " + c.shard.string()) != std::string::npos);
  CHECK(message.find("which is now 4096 bytes long") != std::string::npos);
  CHECK((!fs::exists(c.tmp / "out") || files_in(c.tmp / "out").empty()));
}

// rename_tensor(o -> out) that cuts the shard short as it runs: after the reader made its view of
// o, before load_model_state reads that view into the target.
class CutShort : public ModelStateMapper {
 public:
  explicit CutShort(fs::path shard) : shard_(std::move(shard)) {
    groups_.insert(StateGroup{{"o"}, {"out"}});
  }
  StateDict apply(StateDict group) const override {
    fs::resize_file(shard_, 4096);
    return {{"out", group.at("o")}};
  }
  SpecDict infer(const SpecDict& group) const override { return {{"out", group.at("o")}}; }
  bool moves_data(const StateGroup&) const override { return false; }

 private:
  fs::path shard_;
};

TEST_CASE("load_model_state reads a view of a shard cut short meanwhile as an IoError naming it") {
  Llamaish c;
  StateDict target{{"out", Tensor::zeros({1 << 20}, DType::U8)}};
  const std::string message = io_error_of([&] {
    load_model_state(c.dir, std::make_shared<CutShort>(c.shard), Device::cpu(), target,
                     quiet_read());
  });
  INFO("message: ", message);
  CHECK(message.find(c.shard.string()) != std::string::npos);
  CHECK(message.find("unexpected end of file") != std::string::npos);
}

// Note [views or copies], measured: groups that move data get their inputs with pread (counted by
// the kernel as bytes read), groups that only make views hand out views (nothing read by a
// syscall), and load_model_state reads views into its targets with pread.
TEST_CASE("copies are read with pread, views are not copied, and load_model_state preads views") {
  if (bytes_read_by_syscalls() < 0) return;  // no per-process I/O accounting here
  Llamaish c;
  const int64_t mib = int64_t{1} << 20;
  {
    ModelStateStream stream = read_model_state(c.dir, fused(), quiet_read());
    const int64_t before = bytes_read_by_syscalls();
    StateDict out;
    for (auto&& [name, tensor] : stream) out.emplace(name, tensor);
    const int64_t read = bytes_read_by_syscalls() - before;
    CHECK(out.at("qkv").storage().kind() != StorageKind::kMapped);
    CHECK(out.at("out").storage().kind() == StorageKind::kMapped);
    CHECK(equal(out.at("qkv"), cat({c.tensors.at("q"), c.tensors.at("k"), c.tensors.at("v")}, 0)));
    CHECK(equal(out.at("out"), c.tensors.at("o")));
    CHECK(read >= 3 * mib);  // q, k and v
    CHECK(read < 4 * mib);   // not o
  }
  {
    ReadOptions o = quiet_read();
    o.zero_copy = false;  // everything read with pread (d9d verify)
    ModelStateStream stream = read_model_state(c.dir, rename_tensor("o", "out"), o);
    const int64_t before = bytes_read_by_syscalls();
    for (auto&& [name, tensor] : stream) {
      CHECK(tensor.storage().kind() != StorageKind::kMapped);
      CHECK(equal(tensor, c.tensors.at("o")));
    }
    CHECK(bytes_read_by_syscalls() - before >= mib);
  }
  {
    StateDict target{{"out", Tensor::zeros({1 << 20}, DType::U8)}};
    const int64_t before = bytes_read_by_syscalls();
    load_model_state(c.dir, rename_tensor("o", "out"), Device::cpu(), target, quiet_read());
    CHECK(bytes_read_by_syscalls() - before >= mib);
    CHECK(equal(target.at("out"), c.tensors.at("o")));
  }
}

// Note [read backends] and Note [one read plan]: every backend fills the targets with the same
// bytes, a fused group (read by the engine into its output) and a renamed one (read by the one
// plan straight into its target) alike, and every input byte is accounted to its file.
TEST_CASE("load_model_state fills its targets alike with every I/O backend, and logs the reads") {
  Llamaish c;
  const Tensor qkv = cat({c.tensors.at("q"), c.tensors.at("k"), c.tensors.at("v")}, 0);
  for (const io::IoBackend backend :
       {io::IoBackend::kAuto, io::IoBackend::kMmap, io::IoBackend::kPread, io::IoBackend::kDirect,
        io::IoBackend::kUring}) {
    CAPTURE(io::to_string(backend));
    StateDict target{{"qkv", Tensor::zeros({3 << 20}, DType::U8)},
                     {"out", Tensor::zeros({1 << 20}, DType::U8)}};
    io::ReadLog log;
    ReadOptions o = quiet_read();
    o.io = backend;
    o.read_log = &log;
    load_model_state(c.dir, fused(), Device::cpu(), target, o);
    CHECK(equal(target.at("qkv"), qkv));
    CHECK(equal(target.at("out"), c.tensors.at("o")));
    const auto files = log.files();
    REQUIRE(files.size() == 1);
    uint64_t logged = 0;
    for (const auto& [used, bytes] : files.at(c.shard.string()).bytes) {
      logged += bytes;
      if (backend != io::IoBackend::kAuto && files.at(c.shard.string()).notes.empty()) {
        CHECK(used == backend);
      }
    }
    CHECK(logged == uint64_t{4} << 20);
  }
}
