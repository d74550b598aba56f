// The streamed engine: ports of the reference's test_local_io.py, then what d9d adds (plans,
// errors before reading, zero-copy views, budgets, atomic output).
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

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
using d9d::test::read_file;
using d9d::test::TempDir;

namespace {

// Random bytes below 64 from their own seed.
Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937_64 gen(seed);
  auto* p = static_cast<unsigned char*>(t.mutable_data_ptr());
  for (int64_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(gen() & 0x3F);
  return t;
}

StateDict collect(ModelStateStream stream) {
  StateDict out;
  for (auto&& [name, tensor] : stream) out.emplace(name, tensor);
  return out;
}

// The reference's SimpleModel: nn.Linear(4, 2).
StateDict simple_model(float weight, float bias) {
  return {{"fc.weight", Tensor::full({2, 4}, weight, DType::F32)},
          {"fc.bias", Tensor::full({2}, bias, DType::F32)}};
}

// The reference test's SplitTensorMapper: {fused} -> {a = fused[0], b = fused[1]}, written as a
// user would, without infer().
class SplitTensorMapper : public ModelStateMapper {
 public:
  SplitTensorMapper(std::string fused, std::string a, std::string b)
      : fused_(std::move(fused)), a_(std::move(a)), b_(std::move(b)) {
    groups_.insert(StateGroup{{fused_}, {a_, b_}});
  }
  StateDict apply(StateDict group) const override {
    const Tensor& t = group.at(fused_);
    return {{a_, t.select(0, 0)}, {b_, t.select(0, 1)}};
  }

 private:
  std::string fused_, a_, b_;
};

// Writes a checkpoint of `tensors` with the engine itself (identity mapper).
void write_checkpoint(const fs::path& dir, const StateDict& tensors, int64_t shard_size) {
  WriteOptions o = quiet_write();
  o.shard_size = shard_size;
  save_model_state(dir, identity_mapper_from_state(tensors), tensors, o);
}

}  // namespace

// ---- ports of test/d9d_test/model_state/test_local_io.py (CPU) ------------------------------

TEST_CASE("save then load round-trips a model, with the reference's exact index (test_model_save_load_roundtrip_simple)") {
  TempDir tmp;
  StateDict model = simple_model(1.5f, 0.5f);
  MapperPtr mapper = identity_mapper_from_state(model);
  save_model_state(tmp / "ckpt", mapper, model, quiet_write());

  const auto index = nlohmann::json::parse(read_file(tmp / "ckpt" / "model.safetensors.index.json"));
  CHECK(index == nlohmann::json::parse(R"({
      "metadata": {"total_size": 40},
      "weight_map": {"fc.weight": "model-00001-of-00001.safetensors",
                     "fc.bias": "model-00001-of-00001.safetensors"}})"));

  StateDict fresh = simple_model(0.0f, 0.0f);
  load_model_state(tmp / "ckpt", mapper, Device::cpu(), fresh, quiet_read());
  CHECK(equal(fresh.at("fc.weight"), model.at("fc.weight")));
  CHECK(equal(fresh.at("fc.bias"), model.at("fc.bias")));
}

TEST_CASE("a partial save with renaming loads back into the renamed target only (test_model_partial_save_load_with_renaming)") {
  TempDir tmp;
  StateDict model = simple_model(2.0f, 3.0f);
  save_model_state(tmp / "rename_ckpt", rename_tensor("fc.weight", "layer.w"), model, quiet_write());
  const auto index =
      nlohmann::json::parse(read_file(tmp / "rename_ckpt" / "model.safetensors.index.json"));
  CHECK(index == nlohmann::json::parse(R"({
      "metadata": {"total_size": 32},
      "weight_map": {"layer.w": "model-00001-of-00001.safetensors"}})"));

  StateDict fresh = simple_model(0.0f, 0.0f);
  load_model_state(tmp / "rename_ckpt", rename_tensor("layer.w", "fc.weight"), Device::cpu(), fresh,
                   quiet_read());
  CHECK(equal(fresh.at("fc.weight"), model.at("fc.weight")));
  CHECK_FALSE(equal(fresh.at("fc.bias"), model.at("fc.bias")));
}

TEST_CASE("stack on save and a user-defined split mapper on load (test_save_load_complex_io_transformation)") {
  TempDir tmp;
  const Tensor a = Tensor::full({4}, 1.0f, DType::F32);
  const Tensor b = Tensor::zeros({4}, DType::F32);
  std::vector<std::pair<std::string, Tensor>> generator{{"a", a}, {"b", b}};
  write_model_state_local(tmp / "stacked", stack_tensors({"a", "b"}, "ab_stacked", 0), generator,
                          quiet_write());

  auto split = std::make_shared<SplitTensorMapper>("ab_stacked", "a_rec", "b_rec");
  StateDict res = collect(read_model_state(tmp / "stacked", split, quiet_read()));
  CHECK(res.size() == 2);
  CHECK(equal(res.at("a_rec"), a));
  CHECK(equal(res.at("b_rec"), b));
}

TEST_CASE("shard_size is enforced: two 1 MiB tensors with 0.0015 GiB shards make two shards (test_sharding_enforcement)") {
  TempDir tmp;
  const Tensor heavy = Tensor::zeros({1024 * 1024}, DType::U8);
  std::vector<std::pair<std::string, Tensor>> gen{{"t1", heavy}, {"t2", heavy}};
  WriteOptions o = quiet_write();
  o.shard_size = static_cast<int64_t>(0.0015 * (1 << 30));
  write_model_state_local(tmp / "sharded",
                          sequential({rename_tensor("t1", "t1"), rename_tensor("t2", "t2")}), gen, o);
  const auto index =
      nlohmann::json::parse(read_file(tmp / "sharded" / "model.safetensors.index.json"));
  CHECK(index == nlohmann::json::parse(R"({
      "metadata": {"total_size": 2097152},
      "weight_map": {"t1": "model-00001-of-00002.safetensors",
                     "t2": "model-00002-of-00002.safetensors"}})"));
  CHECK(files_in(tmp / "sharded") == std::set<std::string>{"model.safetensors.index.json",
                                                           "model-00001-of-00002.safetensors",
                                                           "model-00002-of-00002.safetensors"});
}

// ---- reading ------------------------------------------------------------------------------------

TEST_CASE("the read plan lists every missing input at once, before reading") {
  TempDir tmp;
  write_checkpoint(tmp / "c", {{"x", Tensor::zeros({2}, DType::F32)}}, 1 << 20);
  MapperPtr m = parallel({stack_tensors({"x", "y"}, "xy", 0), rename_tensor("z", "w")});
  CHECK_THROWS_WITH_AS(read_model_state(tmp / "c", m, quiet_read()),
                       doctest::Contains("2 inputs are missing from"), ValueError);
  CHECK_THROWS_WITH_AS(read_model_state(tmp / "c", m, quiet_read()), doctest::Contains(": y, z"),
                       ValueError);
}

TEST_CASE("the read plan infers every output and rejects a mapper that cannot apply, naming the group") {
  TempDir tmp;
  write_checkpoint(tmp / "c",
                   {{"a", Tensor::zeros({2, 3}, DType::F32)}, {"b", Tensor::zeros({2, 4}, DType::F32)}},
                   1 << 20);
  CHECK_THROWS_WITH_AS(read_model_state(tmp / "c", stack_tensors({"a", "b"}, "ab", 0), quiet_read()),
                       doctest::Contains("{a, b} -> {ab}"), ValueError);
  ModelStateStream s =
      read_model_state(tmp / "c", concatenate_tensors({"a", "b"}, "ab", 1), quiet_read());
  REQUIRE(s.plan().groups.size() == 1);
  CHECK(s.plan().groups[0].outputs.at("ab") == TensorSpec{DType::F32, {2, 7}});
  CHECK(s.plan().output_bytes == 56);
}

TEST_CASE("groups whose inputs span shards are read, in file order, deterministically") {
  TempDir tmp;
  StateDict tensors;
  for (int i = 0; i < 12; ++i) {
    tensors["w" + std::to_string(i)] = random_tensor({64, 64}, DType::BF16, static_cast<uint64_t>(i));
  }
  write_checkpoint(tmp / "c", tensors, 3 * 64 * 64 * 2);  // three tensors per shard
  CHECK(io::Checkpoint::open(tmp / "c").files().size() == 4);
  // Pairs across shard boundaries: (w2, w3), (w5, w6), ...
  std::vector<MapperPtr> parts;
  for (int i = 0; i < 12; i += 2) {
    const std::string a = "w" + std::to_string((i + 2) % 12), b = "w" + std::to_string((i + 3) % 12);
    parts.push_back(stack_tensors({a, b}, "s" + std::to_string(i / 2), 0));
  }
  MapperPtr m = parallel(parts);
  std::vector<std::string> first, second;
  for (int run = 0; run < 2; ++run) {
    ReadOptions o = quiet_read();
    o.reader_threads = run == 0 ? 1 : 3;
    o.memory_budget = 50000;  // a few groups at a time
    for (auto&& [name, t] : read_model_state(tmp / "c", m, o)) {
      (run == 0 ? first : second).push_back(name);
      const int k = std::stoi(name.substr(1));
      const std::string a = "w" + std::to_string((2 * k + 2) % 12);
      const std::string b = "w" + std::to_string((2 * k + 3) % 12);
      CHECK(equal(t, stack({tensors.at(a), tensors.at(b)}, 0)));
    }
  }
  CHECK(first.size() == 6);
  CHECK(first == second);
  // The group whose first input comes first in the files comes first: (w0, w1) is s5.
  CHECK(first.front() == "s5");
}

TEST_CASE("identity and rename outputs are zero-copy views of the mapped file") {
  TempDir tmp;
  const Tensor w = random_tensor({256, 1024}, DType::F32, 7);
  write_checkpoint(tmp / "c", {{"w", w}}, 1 << 30);
  for (auto&& [name, t] : read_model_state(tmp / "c", rename_tensor("w", "weight"), quiet_read())) {
    CHECK(name == "weight");
    CHECK(t.storage().kind() == StorageKind::kMapped);
    CHECK_FALSE(t.storage().writable());
    CHECK(equal(t, w));
  }
}

TEST_CASE("a group larger than the whole memory budget still runs, alone") {
  TempDir tmp;
  StateDict tensors{{"big", random_tensor({1 << 20}, DType::U8, 1)},
                    {"small", random_tensor({16}, DType::U8, 2)}};
  write_checkpoint(tmp / "c", tensors, 1 << 30);
  ReadOptions o = quiet_read();
  o.memory_budget = 1024;
  StateDict out = collect(read_model_state(tmp / "c", identity_mapper_from_state(tensors), o));
  CHECK(equal(out.at("big"), tensors.at("big")));
  CHECK(equal(out.at("small"), tensors.at("small")));
}

TEST_CASE("a stream dropped halfway stops its readers without hanging") {
  TempDir tmp;
  StateDict tensors;
  for (int i = 0; i < 40; ++i) tensors["t" + std::to_string(i)] = random_tensor({4096}, DType::F32, i);
  write_checkpoint(tmp / "c", tensors, 1 << 30);
  ReadOptions o = quiet_read();
  o.memory_budget = 4 * 4096 * 4;
  int seen = 0;
  {
    ModelStateStream s = read_model_state(tmp / "c", identity_mapper_from_state(tensors), o);
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (++seen == 3) break;
    }
  }
  CHECK(seen == 3);
}

TEST_CASE("an error in one group reaches the consumer at that group") {
  TempDir tmp;
  write_checkpoint(tmp / "c", {{"a", Tensor::zeros({2}, DType::F32)}}, 1 << 20);
  class Throwing : public ModelStateMapper {
   public:
    Throwing() { groups_.insert(StateGroup{{"a"}, {"b"}}); }
    StateDict apply(StateDict) const override { throw ValueError("custom failure in apply"); }
  };
  ModelStateStream s = read_model_state(tmp / "c", std::make_shared<Throwing>(), quiet_read());
  CHECK_THROWS_WITH_AS(s.begin(), doctest::Contains("custom failure in apply"), ValueError);
}

// ---- writing ------------------------------------------------------------------------------------

namespace {

// A single-pass source: it cannot say what it holds before it yields it.
class OneShotSource {
 public:
  explicit OneShotSource(std::vector<std::pair<std::string, Tensor>> items) : items_(std::move(items)) {}
  struct iterator {
    using value_type = std::pair<std::string, Tensor>;
    using difference_type = std::ptrdiff_t;
    OneShotSource* src;
    value_type& operator*() const { return src->items_[src->pos_]; }
    iterator& operator++() {
      ++src->pos_;
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return src->pos_ >= src->items_.size(); }
  };
  iterator begin() { return {this}; }
  std::default_sentinel_t end() { return {}; }

 private:
  std::vector<std::pair<std::string, Tensor>> items_;
  size_t pos_ = 0;
};
static_assert(std::ranges::input_range<OneShotSource>);
static_assert(!std::ranges::forward_range<OneShotSource>);

}  // namespace

TEST_CASE("a planned write and a single-pass write lay out the same shards and the same data") {
  TempDir tmp;
  std::vector<std::pair<std::string, Tensor>> items;
  for (int i = 0; i < 9; ++i) {
    items.emplace_back("p" + std::to_string(i), random_tensor({100 + i, 33}, DType::F32, i));
  }
  MapperPtr m = identity_mapper_from_names({"p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"});
  WriteOptions o = quiet_write();
  o.shard_size = 40000;
  write_model_state_local(tmp / "planned", m, items, o);
  write_model_state_local(tmp / "oneshot", m, OneShotSource(items), o);
  const auto a = io::SafetensorsIndex::read(tmp / "planned" / "model.safetensors.index.json");
  const auto b = io::SafetensorsIndex::read(tmp / "oneshot" / "model.safetensors.index.json");
  CHECK(a.weight_map == b.weight_map);
  CHECK(a.total_size == b.total_size);
  // The reference's rule: close a shard when the next tensor would take it past shard_size.
  size_t shards = 0;
  int64_t open = 0;
  for (const auto& [name, t] : items) {
    if (shards == 0 || open + t.nbytes() > o.shard_size) {
      ++shards;
      open = 0;
    }
    open += t.nbytes();
  }
  CHECK(shards == 4);
  CHECK(a.files().size() == shards);
  io::Checkpoint ca = io::Checkpoint::open(tmp / "planned");
  io::Checkpoint cb = io::Checkpoint::open(tmp / "oneshot");
  for (const auto& [name, t] : items) {
    CHECK(equal(ca.tensor(name), t));
    CHECK(equal(cb.tensor(name), t));
  }
}

TEST_CASE("read_model_state piped into write_model_state_local converts a sharded checkpoint") {
  TempDir tmp;
  StateDict src;
  for (int l = 0; l < 3; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    src[p + "q_proj.weight"] = random_tensor({64, 64}, DType::BF16, 10 * l + 1);
    src[p + "k_proj.weight"] = random_tensor({16, 64}, DType::BF16, 10 * l + 2);
    src[p + "v_proj.weight"] = random_tensor({16, 64}, DType::BF16, 10 * l + 3);
    src[p + "o_proj.weight"] = random_tensor({64, 64}, DType::BF16, 10 * l + 4);
  }
  write_checkpoint(tmp / "hf", src, 20000);
  std::vector<MapperPtr> parts;
  for (int l = 0; l < 3; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    const std::string q = "layers." + std::to_string(l) + ".attn.";
    parts.push_back(concatenate_tensors({p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight"},
                                        q + "qkv.weight", 0));
    parts.push_back(rename_tensor(p + "o_proj.weight", q + "out.weight"));
  }
  MapperPtr forward = parallel(parts);
  ReadOptions ro = quiet_read();
  ro.memory_budget = 30000;
  WriteOptions wo = quiet_write();
  wo.shard_size = 25000;
  write_model_state_local(tmp / "fused", identity_mapper_from_mapper_outputs(forward),
                          read_model_state(tmp / "hf", forward, ro), wo);
  io::Checkpoint fused = io::Checkpoint::open(tmp / "fused");
  CHECK(fused.keys().size() == 6);
  for (int l = 0; l < 3; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    CHECK(equal(fused.tensor("layers." + std::to_string(l) + ".attn.qkv.weight"),
                cat({src[p + "q_proj.weight"], src[p + "k_proj.weight"], src[p + "v_proj.weight"]}, 0)));
  }
  // And back, with the mapper's inverse.
  MapperPtr backward = forward->inverse(specs_of(src));
  write_model_state_local(tmp / "back", identity_mapper_from_mapper_outputs(backward),
                          read_model_state(tmp / "fused", backward, ro), wo);
  io::Checkpoint back = io::Checkpoint::open(tmp / "back");
  CHECK(back.keys().size() == src.size());
  for (const auto& [name, t] : src) CHECK(equal(back.tensor(name), t));
}

TEST_CASE("a tensor larger than a shard is an error before anything is written") {
  TempDir tmp;
  std::vector<std::pair<std::string, Tensor>> items{{"small", Tensor::zeros({10}, DType::U8)},
                                                    {"huge", Tensor::zeros({100}, DType::U8)}};
  WriteOptions o = quiet_write();
  o.shard_size = 64;
  CHECK_THROWS_WITH_AS(write_model_state_local(tmp / "out", identity_mapper_from_names({"small", "huge"}),
                                               items, o),
                       doctest::Contains("huge has 100 bytes, more than the shard size of 64"),
                       ValueError);
  CHECK(files_in(tmp / "out").empty());
}

TEST_CASE("oversized_tensor_alone: a tensor larger than a shard gets a shard of its own") {
  TempDir tmp;
  std::vector<std::pair<std::string, Tensor>> items{{"a", Tensor::full({10}, 1.0f, DType::U8)},
                                                    {"huge", Tensor::full({100}, 2.0f, DType::U8)},
                                                    {"b", Tensor::full({10}, 3.0f, DType::U8)}};
  WriteOptions o = quiet_write();
  o.shard_size = 64;
  o.oversized_tensor_alone = true;  // transformers' splitter's rule
  write_model_state_local(tmp / "out", identity_mapper_from_names({"a", "huge", "b"}), items, o);
  const auto index = nlohmann::json::parse(read_file(tmp / "out" / "model.safetensors.index.json"));
  CHECK(index["weight_map"]["a"] == "model-00001-of-00003.safetensors");
  CHECK(index["weight_map"]["huge"] == "model-00002-of-00003.safetensors");
  CHECK(index["weight_map"]["b"] == "model-00003-of-00003.safetensors");
  io::Checkpoint out = io::Checkpoint::open(tmp / "out");
  for (const auto& [name, t] : items) CHECK(equal(out.tensor(name), t));
}

TEST_CASE("unsatisfied groups are an error naming their inputs; unconsumed tensors only warn") {
  TempDir tmp;
  std::vector<std::pair<std::string, Tensor>> items{{"a", Tensor::zeros({2}, DType::F32)},
                                                    {"extra", Tensor::zeros({2}, DType::F32)}};
  CHECK_THROWS_WITH_AS(
      write_model_state_local(tmp / "out", stack_tensors({"a", "b"}, "ab", 0), items, quiet_write()),
      doctest::Contains("{a, b} -> {ab}"), ValueError);
  CHECK(files_in(tmp / "out").empty());
  CHECK_THROWS_WITH_AS(write_model_state_local(tmp / "out2", stack_tensors({"a", "b"}, "ab", 0),
                                               OneShotSource(items), quiet_write()),
                       doctest::Contains("ended before every input of 1 group arrived"), ValueError);
  CHECK(files_in(tmp / "out2").empty());
  write_model_state_local(tmp / "out3", identity("a"), items, quiet_write());  // warns about "extra"
  CHECK(io::Checkpoint::open(tmp / "out3").keys() == std::vector<std::string>{"a"});
}

TEST_CASE("a failure in the middle of a write leaves no final file, no index and no temporary") {
  TempDir tmp;
  class FailOnSecond : public ModelStateMapper {
   public:
    FailOnSecond() {
      groups_.insert(StateGroup{{"a"}, {"a"}});
      groups_.insert(StateGroup{{"b"}, {"b"}});
    }
    StateDict apply(StateDict g) const override {
      if (g.contains("b")) throw ValueError("disk on fire");
      return g;
    }
    SpecDict infer(const SpecDict& g) const override { return g; }
  };
  std::vector<std::pair<std::string, Tensor>> items{{"a", Tensor::zeros({1 << 16}, DType::U8)},
                                                    {"b", Tensor::zeros({1 << 16}, DType::U8)}};
  WriteOptions o = quiet_write();
  o.shard_size = 1 << 16;  // "a" fills and commits shard 1 before "b" fails
  CHECK_THROWS_WITH_AS(write_model_state_local(tmp / "out", std::make_shared<FailOnSecond>(), items, o),
                       doctest::Contains("disk on fire"), ValueError);
  CHECK(files_in(tmp / "out").empty());
}

TEST_CASE("an existing checkpoint is refused unless overwrite, which replaces it whole") {
  TempDir tmp;
  StateDict three{{"x", Tensor::zeros({1000}, DType::U8)},
                  {"y", Tensor::zeros({1000}, DType::U8)},
                  {"z", Tensor::zeros({1000}, DType::U8)}};
  write_checkpoint(tmp / "out", three, 1000);  // three shards
  CHECK(files_in(tmp / "out").size() == 4);
  StateDict one{{"w", Tensor::full({8}, uint8_t{7}, DType::U8)}};
  CHECK_THROWS_WITH_AS(write_checkpoint(tmp / "out", one, 1000),
                       doctest::Contains("already holds a checkpoint"), io::IoError);
  WriteOptions o = quiet_write();
  o.overwrite = true;
  save_model_state(tmp / "out", identity_mapper_from_state(one), one, o);
  CHECK(files_in(tmp / "out") ==
        std::set<std::string>{"model.safetensors.index.json", "model-00001-of-00001.safetensors"});
  CHECK(io::Checkpoint::open(tmp / "out").load("w").to_vector<int>() == std::vector<int>(8, 7));
}

TEST_CASE("temporary files of a dead process are removed by the next write") {
  TempDir tmp;
  fs::create_directories(tmp / "out");
  // A pid that cannot be alive: above the kernel's pid_max.
  std::ofstream(tmp / "out" / ".d9d-shard-99999999-0-1.safetensors") << "partial";
  std::ofstream(tmp / "out" / ".model-00001-of-00002.safetensors.d9d-tmp-99999999-12345") << "x";
  std::ofstream(tmp / "out" / ".unrelated") << "kept";
  write_checkpoint(tmp / "out", {{"a", Tensor::zeros({4}, DType::F32)}}, 1 << 20);
  CHECK(files_in(tmp / "out") == std::set<std::string>{".unrelated", "model.safetensors.index.json",
                                                        "model-00001-of-00001.safetensors"});
}

TEST_CASE("the destination must be writable") {
  if (::geteuid() == 0) return;  // root writes anywhere
  TempDir tmp;
  fs::create_directories(tmp / "ro");
  fs::permissions(tmp / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  CHECK_THROWS_WITH_AS(write_checkpoint(tmp / "ro", {{"a", Tensor::zeros({4}, DType::F32)}}, 1 << 20),
                       doctest::Contains("not writable"), io::IoError);
}

// ---- one writer, and the commit (Note [checkpoint commit]) --------------------------------------

namespace {

// Every file of a directory with its bytes.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const std::string& name : files_in(dir)) files[name] = read_file(dir / name);
  return files;
}

// D9D_TEST_COMMIT_FAULT for the scope (read by every Destination made meanwhile).
struct CommitFault {
  explicit CommitFault(const std::string& value) {
    ::setenv("D9D_TEST_COMMIT_FAULT", value.c_str(), 1);
  }
  ~CommitFault() { ::unsetenv("D9D_TEST_COMMIT_FAULT"); }
};

}  // namespace

TEST_CASE("a second writer into a directory is refused at once, naming the first one's pid") {
  TempDir tmp;
  std::optional<Destination> first(std::in_place, tmp / "out", quiet_write());
  CHECK(files_in(tmp / "out") == std::set<std::string>{".d9d-lock"});
  const std::string pid =
      "is being written by another d9d process (pid " + std::to_string(::getpid()) + ")";
  CHECK_THROWS_WITH_AS(write_checkpoint(tmp / "out", {{"a", Tensor::zeros({4}, DType::F32)}}, 64),
                       doctest::Contains(pid.c_str()), io::IoError);
  first.reset();  // the lock and its file go with the first writer
  CHECK(files_in(tmp / "out").empty());
  write_checkpoint(tmp / "out", {{"a", Tensor::zeros({4}, DType::F32)}}, 64);
  CHECK(files_in(tmp / "out") ==
        std::set<std::string>{"model.safetensors.index.json", "model-00001-of-00001.safetensors"});
}

TEST_CASE("overwrite replaces the old checkpoint's files and nothing else in the directory") {
  TempDir tmp;
  const StateDict three{{"x", Tensor::zeros({1000}, DType::U8)},
                        {"y", Tensor::zeros({1000}, DType::U8)},
                        {"z", Tensor::zeros({1000}, DType::U8)}};
  write_checkpoint(tmp / "out", three, 1000);  // model-0000{1,2,3}-of-00003
  d9d::test::write_file(tmp / "out" / "model_backup.safetensors", "the user's");
  d9d::test::write_file(tmp / "out" / "config.json", "{}");
  WriteOptions o = quiet_write();
  o.overwrite = true;
  const StateDict one{{"w", Tensor::full({8}, uint8_t{7}, DType::U8)}};
  save_model_state(tmp / "out", identity_mapper_from_state(one), one, o);
  CHECK(files_in(tmp / "out") == std::set<std::string>{"model.safetensors.index.json",
                                                       "model-00001-of-00001.safetensors",
                                                       "model_backup.safetensors", "config.json"});
  CHECK(read_file(tmp / "out" / "model_backup.safetensors") == "the user's");
  // A file under a name the new checkpoint needs that the old index does not name: refused,
  // nothing changed.
  d9d::test::write_file(tmp / "out" / "model-00001-of-00003.safetensors", "not d9d's");
  const auto before = snapshot(tmp / "out");
  CHECK_THROWS_WITH_AS(write_checkpoint(tmp / "out", three, 1000),  // no overwrite: refused
                       doctest::Contains("already holds a checkpoint"), io::IoError);
  WriteOptions small = o;
  small.shard_size = 1000;
  CHECK_THROWS_WITH_AS(
      save_model_state(tmp / "out", identity_mapper_from_state(three), three, small),
      doctest::Contains("model-00001-of-00003.safetensors is not part of the checkpoint"),
      io::IoError);
  CHECK(snapshot(tmp / "out") == before);
  // A lone model.safetensors is the old checkpoint too.
  TempDir hf;
  io::save_safetensors(hf / "model.safetensors", three);
  save_model_state(hf.path(), identity_mapper_from_state(one), one, o);
  CHECK(files_in(hf.path()) ==
        std::set<std::string>{"model.safetensors.index.json", "model-00001-of-00001.safetensors"});
  // An index that cannot be read: which files are the old checkpoint is unknown.
  d9d::test::write_file(hf / "model.safetensors.index.json", "{not json");
  CHECK_THROWS_WITH_AS(save_model_state(hf.path(), identity_mapper_from_state(one), one, o),
                       doctest::Contains("its index cannot be read"), io::IoError);
}

TEST_CASE(
    "a commit that fails at any step leaves the old checkpoint; one past its commit point, the "
    "new") {
  // Old checkpoints: none, one whose shard names the new one reuses (set aside by links), one of
  // other names (removed after the commit point), each with a companion file; a lone
  // model.safetensors (set aside before the commit point).
  struct Old {
    const char* what;
    int64_t shard_size;  // 0: no old checkpoint; -1: a lone model.safetensors
  };
  const StateDict fresh{{"a", Tensor::full({600}, uint8_t{1}, DType::U8)},
                        {"b", Tensor::full({600}, uint8_t{2}, DType::U8)}};
  const StateDict stale{{"a", Tensor::full({600}, uint8_t{3}, DType::U8)},
                        {"b", Tensor::full({600}, uint8_t{4}, DType::U8)}};
  for (const Old old : {Old{"no old checkpoint", 0}, Old{"the same shard names", 1000},
                        Old{"other shard names", 600 * 2}, Old{"a lone model.safetensors", -1}}) {
    CAPTURE(old.what);
    TempDir tmp;
    WriteOptions o = quiet_write();
    o.overwrite = true;
    o.shard_size = 1000;  // two shards
    o.companion_files["notes.json"] = "new";
    WriteOptions before_options = o;
    before_options.shard_size = old.shard_size;
    before_options.companion_files["notes.json"] = "old";
    // The expected end state, written without faults.
    save_model_state(tmp / "expected", identity_mapper_from_state(fresh), fresh, o);
    const auto expected = snapshot(tmp / "expected");
    int failed = 0, finished_late = 0;
    for (int k = 1;; ++k) {
      CAPTURE(k);
      const fs::path out = tmp / ("out" + std::to_string(k));
      fs::create_directories(out);
      d9d::test::write_file(out / "config.json", "{}");  // the user's
      if (old.shard_size > 0) {
        save_model_state(out, identity_mapper_from_state(stale), stale, before_options);
      } else if (old.shard_size < 0) {
        io::save_safetensors(out / "model.safetensors", stale);
      }
      const auto original = snapshot(out);
      bool threw = false;
      {
        CommitFault fault("error:" + std::to_string(k));
        try {
          save_model_state(out, identity_mapper_from_state(fresh), fresh, o);
        } catch (const io::IoError& e) {
          threw = true;
          CHECK(std::string(e.what()).find("D9D_TEST_COMMIT_FAULT") != std::string::npos);
        }
      }
      if (threw) {  // before the commit point: undone, the old checkpoint exactly
        ++failed;
        CHECK(snapshot(out) == original);
        continue;
      }
      // Past the commit point (a warning) or no fault at all: the new checkpoint, whole.
      const io::Checkpoint back = io::Checkpoint::open(out);
      CHECK(equal(back.load("a"), fresh.at("a")));
      CHECK(equal(back.load("b"), fresh.at("b")));
      auto now = snapshot(out);
      now.erase("config.json");
      if (now == expected) break;  // the fault came after the last step: every step was tried
      ++finished_late;
      { Destination next(out, o); }  // the next writer finishes the commit
      now = snapshot(out);
      CHECK(now.erase("config.json") == 1);
      CHECK(now == expected);
    }
    CHECK(failed >= 6);         // stage index and companion, journal, two renames, the commit point
    CHECK(finished_late >= 2);  // the companion's rename, the journal's removal
  }
}

// ---- limits the plan knows ----------------------------------------------------------------------

TEST_CASE("100,000 one-byte tensors in shards of one byte fail before a byte is written") {
  TempDir tmp;
  std::vector<std::pair<std::string, Tensor>> items;
  std::vector<std::string> names;
  const Tensor byte = Tensor::zeros({1}, DType::U8);
  for (int i = 0; i < 100'000; ++i) {
    names.push_back("t" + std::to_string(i));
    items.emplace_back(names.back(), byte);
  }
  WriteOptions o = quiet_write();
  o.shard_size = 1;
  CHECK_THROWS_WITH_AS(
      write_model_state_local(tmp / "out", identity_mapper_from_names(names), items, o),
      doctest::Contains("need 100000 shards of at most 1 bytes, more than the 99999"), ValueError);
  CHECK(files_in(tmp / "out").empty());
  // Every other limit of a shard's header too: a tensor the format cannot name.
  CHECK_THROWS_WITH_AS(
      write_model_state_local(tmp / "out", identity("__metadata__"),
                              std::vector<std::pair<std::string, Tensor>>{{"__metadata__", byte}},
                              quiet_write()),
      doctest::Contains("shard 1 of 1"), ValueError);
  CHECK(files_in(tmp / "out").empty());
}

// ---- loading ------------------------------------------------------------------------------------

TEST_CASE("load_model_state checks every target's shape and dtype before reading, naming the key") {
  TempDir tmp;
  StateDict model = simple_model(1.0f, 2.0f);
  save_model_state(tmp / "c", identity_mapper_from_state(model), model, quiet_write());
  StateDict wrong_shape{{"fc.weight", Tensor::zeros({4, 2}, DType::F32)},
                        {"fc.bias", Tensor::zeros({2}, DType::F32)}};
  CHECK_THROWS_WITH_AS(load_model_state(tmp / "c", identity_mapper_from_state(model), Device::cpu(),
                                        wrong_shape, quiet_read()),
                       doctest::Contains("fc.weight is F32[2, 4] in the checkpoint but the target is F32[4, 2]"),
                       ValueError);
  CHECK(equal(wrong_shape.at("fc.bias"), Tensor::zeros({2}, DType::F32)));  // nothing was read
  StateDict wrong_dtype{{"fc.weight", Tensor::zeros({2, 4}, DType::BF16)},
                        {"fc.bias", Tensor::zeros({2}, DType::F32)}};
  CHECK_THROWS_WITH_AS(load_model_state(tmp / "c", identity_mapper_from_state(model), Device::cpu(),
                                        wrong_dtype, quiet_read()),
                       doctest::Contains("fc.weight"), ValueError);
  StateDict missing{{"fc.weight", Tensor::zeros({2, 4}, DType::F32)}};
  CHECK_THROWS_WITH_AS(load_model_state(tmp / "c", identity_mapper_from_state(model), Device::cpu(),
                                        missing, quiet_read()),
                       doctest::Contains("fc.bias but the target has no tensor of that name"),
                       ValueError);
}

TEST_CASE("load_model_state fills strided targets") {
  TempDir tmp;
  const Tensor w = random_tensor({8, 6}, DType::F32, 3);
  write_checkpoint(tmp / "c", {{"w", w}}, 1 << 20);
  Tensor storage = Tensor::zeros({6, 8}, DType::F32);
  StateDict target{{"w", storage.transpose(0, 1)}};
  load_model_state(tmp / "c", identity("w"), Device::cpu(), target, quiet_read());
  CHECK(equal(storage.transpose(0, 1).contiguous(), w));
}
