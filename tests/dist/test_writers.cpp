// The distributed writers (ports of the reference's test_dist_io.py), failures agreed on by every
// rank, load_model_state into DTensor targets reading only each rank's slice, and the distributed
// conversion against the single-process one, byte for byte.
#include <fcntl.h>
#include <sys/mman.h>

#include <bit>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "helpers.hpp"

namespace d9d::dist::test {
namespace {

using mapper::MapperPtr;
using mapper::StateDict;

std::string shard_name(int i, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", i, n);
  return buf;
}

nlohmann::json index_of(const fs::path& dir) {
  return nlohmann::json::parse(read_file(dir / "model.safetensors.index.json"));
}

// Port of test_distributed_write_sharding (8 ranks in the reference; any number here).
TEST_CASE(
    "every rank writes tensor_<rank>: one shard per rank, in rank order "
    "(test_distributed_write_sharding)") {
  ProcessGroup& g = world();
  SharedTempDir tmp;
  const int rank = g.rank();
  const Tensor my_tensor = Tensor::full<float>({}, static_cast<float>(rank), DType::F32);
  const std::string name = "tensor_" + std::to_string(rank);
  const MapperPtr mapper = mapper::identity(name);
  const std::vector<std::pair<std::string, Tensor>> gen{{name, my_tensor}};
  const fs::path dest = tmp / "dist_save";
  model_state::write_model_state_distributed(dest, mapper, gen, g, quiet_write());
  g.barrier();
  if (rank == 0) {
    nlohmann::json expected = {{"metadata", {{"total_size", 4 * g.size()}}}, {"weight_map", {}}};
    std::vector<MapperPtr> identities;
    for (int i = 0; i < g.size(); ++i) {
      expected["weight_map"]["tensor_" + std::to_string(i)] = shard_name(i + 1, g.size());
      identities.push_back(mapper::identity("tensor_" + std::to_string(i)));
    }
    CHECK(index_of(dest) == expected);
    std::map<std::string, float> loaded;
    for (auto&& [n, t] :
         model_state::read_model_state(dest, mapper::parallel(identities), quiet_read())) {
      loaded[n] = t.item<float>();
    }
    REQUIRE(static_cast<int>(loaded.size()) == g.size());
    for (int i = 0; i < g.size(); ++i)
      CHECK(loaded["tensor_" + std::to_string(i)] == static_cast<float>(i));
    // Only the checkpoint: no temporary file is left.
    std::set<std::string> expected_files{"model.safetensors.index.json"};
    for (int i = 0; i < g.size(); ++i) expected_files.insert(shard_name(i + 1, g.size()));
    CHECK(files_in(dest) == expected_files);
  }
}

// Port of test_pipeline_parallel_save: the reference's 8-rank mesh is pp=4 x dp_replicate=2 (its
// other dims of size 1); here pp=4 x ep=1 x dp=2, so that the rule "non-pipeline coordinates all
// 0" sees a dim of size 1 too.
TEST_CASE(
    "pipeline-parallel save: one writer per stage, stages in pp order "
    "(test_pipeline_parallel_save)") {
  ProcessGroup& g = world();
  if (g.size() != 8) return;
  SharedTempDir tmp;
  const DeviceMesh mesh(dist::world(), {4, 1, 2}, {"pp", "ep", "dp"});
  const DeviceMesh pp_mesh = mesh["pp"];
  const int global_rank = pp_mesh.get_rank();
  StateDict model{
      {"weight", Tensor::full<float>({1, 1}, static_cast<float>(global_rank), DType::F32)}};
  const MapperPtr mapper =
      mapper::rename_tensor("weight", "layer_" + std::to_string(global_rank) + ".w");
  const fs::path dest = tmp / "pp_save";
  model_state::save_model_state_pipeline_parallel(dest, mapper, mesh, "pp", {model}, quiet_write());
  g.barrier();
  if (g.rank() == 0) {
    const nlohmann::json expected = {{"metadata", {{"total_size", 16}}},
                                     {"weight_map",
                                      {{"layer_0.w", "model-00001-of-00004.safetensors"},
                                       {"layer_2.w", "model-00002-of-00004.safetensors"},
                                       {"layer_4.w", "model-00003-of-00004.safetensors"},
                                       {"layer_6.w", "model-00004-of-00004.safetensors"}}}};
    CHECK(index_of(dest) == expected);
    std::vector<MapperPtr> identities;
    for (int i = 0; i < 8; i += 2)
      identities.push_back(mapper::identity("layer_" + std::to_string(i) + ".w"));
    for (auto&& [n, t] :
         model_state::read_model_state(dest, mapper::parallel(identities), quiet_read())) {
      CHECK(equal(t, Tensor::full<float>({1, 1}, std::stof(n.substr(6)), DType::F32)));
    }
  }
}

// The issue's mesh: pp=4 x ep=2 x dp=2 (16 ranks), stages' weights sharded over dp as DTensors:
// every rank takes part in gathering them, the four stage writers write whole tensors.
TEST_CASE("pipeline-parallel save on pp=4 x ep=2 x dp=2 gathers DTensor states") {
  ProcessGroup& g = world();
  if (g.size() != 16) return;
  SharedTempDir tmp;
  const DeviceMesh mesh(dist::world(), {4, 2, 2}, {"pp", "ep", "dp"});
  const int stage = mesh.get_local_rank("pp");
  const Tensor full = Tensor::full<float>({4, 3}, static_cast<float>(stage), DType::F32);
  StateDict model{{"weight", distribute_tensor(full, mesh["dp"], {Shard{0}}).as_tensor()},
                  {"bias", Tensor::full<float>({3}, static_cast<float>(g.rank()), DType::F32)}};
  const MapperPtr mapper =
      mapper::parallel({mapper::rename_tensor("weight", "layer_" + std::to_string(stage) + ".w"),
                        mapper::rename_tensor("bias", "layer_" + std::to_string(stage) + ".b")});
  const fs::path dest = tmp / "pp_save";
  model_state::save_model_state_pipeline_parallel(dest, mapper, mesh, "pp", {model}, quiet_write());
  if (g.rank() == 0) {
    const nlohmann::json index = index_of(dest);
    CHECK(index["metadata"]["total_size"] == 4 * (48 + 12));
    for (int s = 0; s < 4; ++s) {
      const std::string file = shard_name(s + 1, 4);
      CHECK(index["weight_map"]["layer_" + std::to_string(s) + ".w"] == file);
      CHECK(index["weight_map"]["layer_" + std::to_string(s) + ".b"] == file);
      const io::Checkpoint back = io::Checkpoint::open(dest);
      CHECK(equal(back.load("layer_" + std::to_string(s) + ".w"),
                  Tensor::full<float>({4, 3}, static_cast<float>(s), DType::F32)));
      // The stage's writer is its rank with ep = dp = 0: global rank 4 s.
      CHECK(equal(back.load("layer_" + std::to_string(s) + ".b"),
                  Tensor::full<float>({3}, static_cast<float>(4 * s), DType::F32)));
    }
  }
}

TEST_CASE("a rank that fails makes every rank throw the same error, and no index is written") {
  ProcessGroup& g = world();
  SharedTempDir tmp;
  const fs::path dest = tmp / "out";
  // The last rank's tensor is larger than a shard.
  const int64_t n = g.rank() == g.size() - 1 ? 100 : 4;
  const std::string name = "t" + std::to_string(g.rank());
  const std::vector<std::pair<std::string, Tensor>> gen{{name, Tensor::zeros({n}, DType::U8)}};
  model_state::WriteOptions wo = quiet_write();
  wo.shard_size = 50;
  const std::string expected = "rank " + std::to_string(g.size() - 1) + ": write_model_state: t" +
                               std::to_string(g.size() - 1) + " has 100 bytes";
  CHECK_THROWS_WITH_AS(
      model_state::write_model_state_distributed(dest, mapper::identity(name), gen, g, wo),
      doctest::Contains(expected.c_str()), CollectiveError);
  g.barrier();
  if (g.rank() == 0) CHECK(files_in(dest).empty());  // no index, no shard, no temporary
  // A source that ends early on one rank, caught at finish().
  const MapperPtr both = mapper::parallel({mapper::identity(name), mapper::identity(name + "x")});
  CHECK_THROWS_AS(model_state::write_model_state_distributed(dest, both, gen, g, quiet_write()),
                  CollectiveError);
  g.barrier();
  if (g.rank() == 0) CHECK(files_in(dest).empty());
  // An existing checkpoint is refused on every rank unless overwrite.
  model_state::write_model_state_distributed(
      dest, mapper::identity(name),
      std::vector<std::pair<std::string, Tensor>>{{name, Tensor::zeros({4}, DType::U8)}}, g,
      quiet_write());
  CHECK_THROWS_WITH_AS(model_state::write_model_state_distributed(dest, mapper::identity(name), gen,
                                                                  g, quiet_write()),
                       doctest::Contains("already holds a checkpoint"), CollectiveError);
}

// Note [checkpoint commit] under several ranks: the finalizing rank's lock refuses a second
// writer on every rank, and a commit that fails at any step leaves the old checkpoint.
TEST_CASE("a destination another writer holds refuses a distributed write on every rank") {
  ProcessGroup& g = world();
  SharedTempDir tmp;
  const fs::path dest = tmp / "out";
  const std::string name = "t" + std::to_string(g.rank());
  const std::vector<std::pair<std::string, Tensor>> gen{{name, Tensor::zeros({4}, DType::U8)}};
  std::optional<model_state::Destination> held;
  if (g.rank() == 0) held.emplace(dest, quiet_write());
  g.barrier();
  CHECK_THROWS_WITH_AS(model_state::write_model_state_distributed(dest, mapper::identity(name), gen,
                                                                  g, quiet_write()),
                       doctest::Contains("is being written by another d9d process"),
                       CollectiveError);
  g.barrier();
  held.reset();
  g.barrier();
  model_state::write_model_state_distributed(dest, mapper::identity(name), gen, g, quiet_write());
  if (g.rank() == 0) CHECK(files_in(dest).size() == static_cast<size_t>(g.size()) + 1);
}

TEST_CASE(
    "a distributed commit that fails at any step leaves the old checkpoint, or the new one whole") {
  ProcessGroup& g = world();
  SharedTempDir tmp;
  const std::string name = "t" + std::to_string(g.rank());
  const MapperPtr mapper = mapper::identity(name);
  auto state = [&](uint64_t seed) {
    return std::vector<std::pair<std::string, Tensor>>{
        {name, random_tensor({64}, DType::U8, seed + static_cast<uint64_t>(g.rank()))}};
  };
  model_state::WriteOptions wo = quiet_write();
  wo.overwrite = true;
  model_state::write_model_state_distributed(tmp / "expected", mapper, state(100), g, wo);
  int failed = 0;
  for (int k = 1; k < 100; ++k) {
    CAPTURE(k);
    const fs::path out = tmp / ("out" + std::to_string(k));
    model_state::write_model_state_distributed(out, mapper, state(200), g, wo);  // the old one
    std::map<std::string, std::string> before;
    if (g.rank() == 0) {
      for (const std::string& f : files_in(out)) before[f] = read_file(out / f);
    }
    ::setenv("D9D_TEST_COMMIT_FAULT", ("error:" + std::to_string(k)).c_str(), 1);
    bool threw = false;
    try {
      model_state::write_model_state_distributed(out, mapper, state(100), g, wo);
    } catch (const CollectiveError& e) {
      threw = true;
      CHECK(std::string(e.what()).find("D9D_TEST_COMMIT_FAULT") != std::string::npos);
    }
    ::unsetenv("D9D_TEST_COMMIT_FAULT");
    failed += threw ? 1 : 0;
    std::string done;
    if (g.rank() == 0) {
      std::map<std::string, std::string> now;
      for (const std::string& f : files_in(out)) now[f] = read_file(out / f);
      if (threw) {
        CHECK(now == before);  // undone
      } else {
        { model_state::Destination next(out, wo); }  // finishes a commit past its commit point
        std::map<std::string, std::string> after, expected;
        for (const std::string& f : files_in(out)) after[f] = read_file(out / f);
        for (const std::string& f : files_in(tmp / "expected")) {
          expected[f] = read_file(tmp / "expected" / f);
        }
        CHECK(after == expected);
        if (now == expected) done = "every step was tried";
      }
    }
    if (!g.broadcast_object(done, 0).empty()) break;
  }
  CHECK(failed >= 5);  // the staged index, the journal, the links, the renames, the commit point
}

// ---- load_model_state into DTensor targets ------------------------------------------------------

int64_t read_bytes_so_far() {
  std::ifstream io("/proc/self/io");
  std::string key;
  int64_t value = 0;
  while (io >> key >> value) {
    if (key == "read_bytes:") return value;
  }
  return -1;
}

TEST_CASE("load_model_state fills DTensor targets with each rank's slice") {
  ProcessGroup& g = world();
  SharedTempDir tmp;
  const Tensor a = random_tensor({2 * g.size() + 1, 5}, DType::F32, 1);  // uneven rows
  const Tensor b = random_tensor({3, 4 * g.size() - 1}, DType::BF16, 2);
  const Tensor c = random_tensor({6}, DType::I64, 3);
  if (g.rank() == 0) {
    model_state::save_model_state(tmp / "ckpt", mapper::identity_mapper_from_names({"a", "b", "c"}),
                                  {{"a", a}, {"b", b}, {"c", c}}, quiet_write());
  }
  g.barrier();
  const DeviceMesh mesh(dist::world(), {g.size()}, {"dp"});
  StateDict targets{{"a2", dist::zeros(a.shape(), a.dtype(), mesh, {Shard{0}}).as_tensor()},
                    {"b", dist::zeros(b.shape(), b.dtype(), mesh, {Shard{-1}}).as_tensor()},
                    {"c", dist::zeros(c.shape(), c.dtype(), mesh, {Replicate{}}).as_tensor()}};
  const MapperPtr m = mapper::parallel(
      {mapper::rename_tensor("a", "a2"), mapper::identity("b"), mapper::identity("c")});
  model_state::load_model_state(tmp / "ckpt", m, Device::cpu(), targets, quiet_read());
  CHECK(
      equal(as_dtensor(targets.at("a2"))->local(), distribute_tensor(a, mesh, {Shard{0}}).local()));
  CHECK(
      equal(as_dtensor(targets.at("b"))->local(), distribute_tensor(b, mesh, {Shard{1}}).local()));
  CHECK(equal(as_dtensor(targets.at("c"))->local(), c));
  CHECK(equal(as_dtensor(targets.at("a2"))->full_tensor(), a));
  // A target of another layout or a plain target for a DTensor output are errors.
  StateDict wrong{{"a2", dist::zeros(a.shape(), a.dtype(), mesh, {Shard{1}}).as_tensor()},
                  {"b", Tensor::zeros({1}, DType::BF16)},
                  {"c", Tensor::zeros(c.shape(), c.dtype())}};
  CHECK_THROWS_WITH_AS(
      model_state::load_model_state(tmp / "ckpt", m, Device::cpu(), wrong, quiet_read()),
      doctest::Contains("but the target is BF16[1]"), ValueError);
  StateDict small{{"a2", dist::zeros({1, 5}, a.dtype(), mesh, {Shard{0}}).as_tensor()},
                  {"b", Tensor::zeros(b.shape(), b.dtype())},
                  {"c", Tensor::zeros(c.shape(), c.dtype())}};
  CHECK_THROWS_WITH_AS(
      model_state::load_model_state(tmp / "ckpt", m, Device::cpu(), small, quiet_read()),
      doctest::Contains("F32[1, 5]"), ValueError);  // checked by the global shape
}

// Note [slice pushdown]: a DTensor target of a fused output (cat of q, k, v) or of a transposed
// one reads each rank's rows of the inputs only, as the read engine's log accounts them.
TEST_CASE("load_model_state reads only each rank's slice through cat and transpose") {
  ProcessGroup& g = world();
  SharedTempDir tmp;
  const int64_t n = g.size();
  const Tensor q = random_tensor({4 * n + 1, 48}, DType::F32, 11);
  const Tensor k = random_tensor({2 * n, 48}, DType::F32, 12);
  const Tensor v = random_tensor({2 * n + 3, 48}, DType::F32, 13);
  const Tensor o = random_tensor({6, 2048 * n}, DType::F32, 14);  // 8 KiB of each row per rank
  if (g.rank() == 0) {
    model_state::save_model_state(tmp / "ckpt",
                                  mapper::identity_mapper_from_names({"q", "k", "v", "o"}),
                                  {{"q", q}, {"k", k}, {"v", v}, {"o", o}}, quiet_write());
  }
  g.barrier();
  const DeviceMesh mesh(dist::world(), {n}, {"tp"});
  const Tensor qkv = d9d::cat({q, k, v}, 0);
  const Tensor o_t = o.transpose(0, 1).contiguous();
  StateDict targets{{"qkv", dist::zeros(qkv.shape(), qkv.dtype(), mesh, {Shard{0}}).as_tensor()},
                    {"o_t", dist::zeros(o_t.shape(), o_t.dtype(), mesh, {Shard{0}}).as_tensor()}};
  const MapperPtr m =
      mapper::parallel({mapper::concatenate_tensors({"q", "k", "v"}, "qkv", 0),
                        std::make_shared<mapper::TransposeMapper>("o", "o_t", 0, 1)});
  model_state::ReadOptions ro = quiet_read();
  io::ReadLog log;
  ro.read_log = &log;
  model_state::load_model_state(tmp / "ckpt", m, Device::cpu(), targets, ro);
  const Tensor qkv_local = as_dtensor(targets.at("qkv"))->local();
  const Tensor o_local = as_dtensor(targets.at("o_t"))->local();
  CHECK(equal(qkv_local, distribute_tensor(qkv, mesh, {Shard{0}}).local()));
  CHECK(equal(o_local, distribute_tensor(o_t, mesh, {Shard{0}}).local()));
  uint64_t read = 0;
  for (const auto& [path, file] : log.files()) {
    for (const auto& [backend, bytes] : file.bytes) read += bytes;
  }
  MESSAGE("rank ", g.rank(), " of ", n, " read ", read, " bytes for slices of ",
          qkv_local.nbytes() + o_local.nbytes(), " (the tensors are ", qkv.nbytes() + o.nbytes(),
          ")");
  // The slices' rows, each run widened to the file's 4 KiB blocks (an edge block each side of
  // each of the 3 + 6 runs at most); a rank of one reads everything.
  const auto slices = static_cast<uint64_t>(qkv_local.nbytes() + o_local.nbytes());
  CHECK(read >= slices);
  CHECK(read <= std::min<uint64_t>(slices + (3 + 6) * 2 * 4096, qkv.nbytes() + o.nbytes()));
}

// A spec's shard_tensor with params from the mesh's "tp" dim (mapper::parallel_params): each rank
// loads its piece into a plain target, reading that piece alone.
TEST_CASE("load_model_state of a tp spec with parallel_params reads each rank's piece") {
  ProcessGroup& g = world();
  SharedTempDir tmp;
  const int64_t n = g.size();
  const Tensor w = random_tensor({3 * n + 2, 1024}, DType::BF16, 21);
  if (g.rank() == 0) {
    model_state::save_model_state(tmp / "ckpt", mapper::identity("w"), {{"w", w}}, quiet_write());
  }
  g.barrier();
  const DeviceMesh mesh(dist::world(), {1, n}, {"dp", "tp"});
  const std::map<std::string, int64_t> params = mapper::parallel_params(mesh);
  CHECK(params == std::map<std::string, int64_t>{{"tp", n}, {"tp_rank", g.rank()}});
  mapper::SpecParams sp;
  sp.values = params;
  const MapperPtr m =
      mapper::from_spec(R"({"d9d_mapper_spec": 1, "params": {"tp": 1, "tp_rank": 0}, "rules": [
        {"op": "shard_tensor", "source": "w", "dim": 0, "parts": "{tp}", "index": "{tp_rank}"}]})",
                        {"w"}, sp)
          .mapper;
  const std::vector<Tensor> pieces = d9d::chunk(w, n, 0);
  const Tensor expected = g.rank() < static_cast<int>(pieces.size())
                              ? pieces[static_cast<size_t>(g.rank())]
                              : w.narrow(0, w.size(0), 0);
  StateDict target{{"w", Tensor::zeros(expected.shape(), DType::BF16)}};
  model_state::ReadOptions ro = quiet_read();
  io::ReadLog log;
  ro.read_log = &log;
  model_state::load_model_state(tmp / "ckpt", m, Device::cpu(), target, ro);
  CHECK(equal(target.at("w"), expected));
  uint64_t read = 0;
  for (const auto& [path, file] : log.files()) {
    for (const auto& [backend, bytes] : file.bytes) read += bytes;
  }
  // The piece's rows (one run) and at most the 4 KiB blocks at its two ends.
  CHECK(read >= static_cast<uint64_t>(expected.nbytes()));
  CHECK(read <= static_cast<uint64_t>(expected.nbytes()) + 2 * 4096);
}

// Note [reading what a rank owns], measured: with a cold page cache, each rank's reads (the bytes
// /proc/self/io says this process brought in from disk) are its slice, not the whole tensor.
TEST_CASE("a rank reads about its slice of a Shard(0) tensor, not the whole tensor") {
  ProcessGroup& g = world();
  if (read_bytes_so_far() < 0) return;  // no per-process I/O accounting here
  SharedTempDir tmp;
  const int64_t rows = 16 * g.size() * 256;  // 16 MiB per rank of 4 KiB rows
  const Tensor big = Tensor::arange(rows * 1024, DType::I32).reshape({rows, 1024});
  if (g.rank() == 0) {
    model_state::WriteOptions wo = quiet_write();
    wo.fsync = true;  // clean pages, so that they can be evicted
    model_state::save_model_state(tmp / "ckpt", mapper::identity("w"), {{"w", big}}, wo);
    // Evict the file from the page cache: the ranks' reads come from the disk.
    const int fd = ::open((tmp / "ckpt" / "model-00001-of-00001.safetensors").c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
  const DeviceMesh mesh(dist::world(), {g.size()});
  // A first load of a small checkpoint, unmeasured: the code it runs for the first time (and may
  // fault in from disk, which /proc/self/io also counts) is not charged to the slice.
  const Tensor small = Tensor::arange(g.size() * 1024, DType::I32).reshape({g.size(), 1024});
  if (g.rank() == 0) {
    model_state::save_model_state(tmp / "warm", mapper::identity("w"), {{"w", small}},
                                  quiet_write());
  }
  g.barrier();
  StateDict warm{{"w", dist::zeros(small.shape(), DType::I32, mesh, {Shard{0}}).as_tensor()}};
  model_state::load_model_state(tmp / "warm", mapper::identity("w"), Device::cpu(), warm,
                                quiet_read());
  StateDict target{{"w", dist::zeros(big.shape(), DType::I32, mesh, {Shard{0}}).as_tensor()}};
  const int64_t before = read_bytes_so_far();
  model_state::load_model_state(tmp / "ckpt", mapper::identity("w"), Device::cpu(), target,
                                quiet_read());
  const int64_t read = read_bytes_so_far() - before;
  const int64_t slice = big.nbytes() / g.size();
  CHECK(
      equal(as_dtensor(target.at("w"))->local(), distribute_tensor(big, mesh, {Shard{0}}).local()));
  MESSAGE("rank ", g.rank(), " of ", g.size(), " read ", read >> 10, " KiB for its slice of ",
          slice >> 10, " KiB (the tensor is ", big.nbytes() >> 10, " KiB)");
  // The slice, its edge pages and the kernel's read-ahead past them: far from the whole tensor
  // when there is more than one rank. (One full-suite run of 8 ranks saw 3.5 MiB over the slice
  // with a bound of 1 MiB and no warm-up. A page cache that did not drop the file reads less:
  // that is fine too.)
  CHECK(read <= slice + (int64_t{4} << 20));
}

// ---- the distributed conversion -----------------------------------------------------------------

TEST_CASE("balanced_runs splits costs into contiguous runs with the smallest largest sum") {
  using model_state::balanced_runs;
  const std::vector<int64_t> costs{5, 1, 1, 1, 1, 1, 5};
  CHECK(balanced_runs(costs, 1) == std::vector<size_t>{0, 7});
  CHECK(balanced_runs(costs, 2) == std::vector<size_t>{0, 4, 7});     // 8 | 7
  CHECK(balanced_runs(costs, 3) == std::vector<size_t>{0, 1, 6, 7});  // 5 | 5 | 5
  CHECK(balanced_runs(costs, 9).size() == 10);                        // empty runs at the end
  CHECK(balanced_runs(std::vector<int64_t>{}, 3) == std::vector<size_t>{0, 0, 0, 0});
  CHECK(balanced_runs(std::vector<int64_t>{0, 0, 0}, 2).back() == 3);
  // The largest run is never above the best possible: brute force on small random inputs.
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> c(rng() % 7);
    for (auto& x : c) x = static_cast<int64_t>(rng() % 10);
    const int parts = 1 + static_cast<int>(rng() % 4);
    const std::vector<size_t> runs = balanced_runs(c, parts);
    REQUIRE(runs.size() == static_cast<size_t>(parts) + 1);
    int64_t largest = 0;
    for (int p = 0; p < parts; ++p) {
      int64_t sum = 0;
      for (size_t i = runs[static_cast<size_t>(p)]; i < runs[static_cast<size_t>(p) + 1]; ++i)
        sum += c[i];
      largest = std::max(largest, sum);
    }
    // The best: every way of cutting c into `parts` runs (c has at most 6 items).
    int64_t best = INT64_MAX;
    const size_t n = c.size();
    for (uint32_t cuts = 0; cuts < (1u << n); ++cuts) {
      if (std::popcount(cuts) > parts - 1) continue;
      int64_t worst = 0, sum = 0;
      for (size_t i = 0; i < n; ++i) {
        if (cuts >> i & 1) {
          worst = std::max(worst, sum);
          sum = 0;
        }
        sum += c[i];
      }
      best = std::min(best, std::max(worst, sum));
    }
    CHECK(largest == best);
  }
}

TEST_CASE("the distributed conversion writes the single-process checkpoint, byte for byte") {
  ProcessGroup& g = world();
  SharedTempDir tmp;
  // A checkpoint of several shards and dtypes; a mapper that renames, fuses and transposes.
  StateDict state;
  for (int layer = 0; layer < 5; ++layer) {
    const std::string p = "layers." + std::to_string(layer) + ".";
    state[p + "q"] = random_tensor({16 + layer, 24}, DType::BF16, 10 * layer + 1);
    state[p + "k"] = random_tensor({16 + layer, 24}, DType::BF16, 10 * layer + 2);
    state[p + "norm"] = random_tensor({24}, DType::F32, 10 * layer + 3);
    state[p + "ids"] = random_tensor({layer + 1}, DType::I64, 10 * layer + 4);
  }
  state["embed"] = random_tensor({100, 24}, DType::F16, 99);
  std::vector<MapperPtr> parts;
  for (int layer = 0; layer < 5; ++layer) {
    const std::string p = "layers." + std::to_string(layer) + ".";
    parts.push_back(mapper::stack_tensors({p + "q", p + "k"}, p + "qk", 0));
    parts.push_back(mapper::transpose(p + "norm", 0, 0));
    parts.push_back(mapper::rename_tensor(p + "ids", "ids." + std::to_string(layer)));
  }
  parts.push_back(mapper::identity("embed"));
  const MapperPtr m = mapper::parallel(parts);
  model_state::WriteOptions wo = quiet_write();
  wo.shard_size = 6000;
  if (g.rank() == 0) {
    model_state::WriteOptions small = quiet_write();
    small.shard_size = 5000;
    model_state::save_model_state(tmp / "src", mapper::identity_mapper_from_state(state), state,
                                  small);
    model_state::write_model_state_local(
        tmp / "one", mapper::identity_mapper_from_mapper_outputs(m),
        model_state::read_model_state(tmp / "src", m, quiet_read()), wo);
  }
  g.barrier();
  const model_state::ReadPlan plan = model_state::convert_model_state_distributed(
      tmp / "src", tmp / "many", m, g, quiet_read(), wo);
  CHECK(plan.output_count == 16);
  if (g.rank() == 0) {
    const std::set<std::string> files = files_in(tmp / "one");
    CHECK(files.size() > 3);
    CHECK(files_in(tmp / "many") == files);
    for (const std::string& f : files) {
      CAPTURE(f);
      CHECK(read_file(tmp / "one" / f) == read_file(tmp / "many" / f));
    }
  }
  // Into the same place again: refused on every rank, then replaced with overwrite.
  CHECK_THROWS_WITH_AS(model_state::convert_model_state_distributed(tmp / "src", tmp / "many", m, g,
                                                                    quiet_read(), wo),
                       doctest::Contains("rank 0: write_model_state:"), CollectiveError);
  wo.overwrite = true;
  wo.shard_size = 1 << 20;
  bool called = false;
  model_state::convert_model_state_distributed(tmp / "src", tmp / "many", m, g, quiet_read(), wo,
                                               [&] { called = true; });
  CHECK(called == (g.rank() == 0));
  if (g.rank() == 0) {
    CHECK(files_in(tmp / "many") == std::set<std::string>{"model-00001-of-00001.safetensors",
                                                          "model.safetensors.index.json"});
  }
  // A mapper that cannot apply to the checkpoint: every rank fails at planning.
  CHECK_THROWS_WITH_AS(
      model_state::convert_model_state_distributed(
          tmp / "src", tmp / "x", mapper::identity("missing"), g, quiet_read(), wo),
      doctest::Contains("missing"), CollectiveError);
}

}  // namespace
}  // namespace d9d::dist::test
