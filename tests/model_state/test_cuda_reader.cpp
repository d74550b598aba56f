// read_model_state to a CUDA device: the group transform runs on the device and every output is
// byte-identical to the CPU read of the same mapper. Exits 77 (skipped) without a CUDA device
// (common/cuda_main.cpp).
#include <doctest/doctest.h>

#include <filesystem>
#include <map>

#include <d9d/d9d.hpp>
#include <d9d/mapper.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

#include "common/files.hpp"
#include "common/helpers.hpp"

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::model_state;
namespace fs = std::filesystem;
using d9d::test::random_tensor;
using d9d::test::read_file;
using d9d::test::TempDir;

TEST_CASE("read_model_state to cuda:0 runs the groups on the device, byte-identical to the CPU") {
  const TempDir tmp;
  const fs::path dir = tmp / "reader";
  StateDict src;
  for (int l = 0; l < 4; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    src[p + "q"] = random_tensor({96, 64}, DType::BF16, 10 * l + 1);
    src[p + "k"] = random_tensor({32, 64}, DType::BF16, 10 * l + 2);
    src[p + "v"] = random_tensor({32, 64}, DType::BF16, 10 * l + 3);
    src[p + "o"] = random_tensor({64, 96}, DType::F32, 10 * l + 4);
    src[p + "big"] = random_tensor({3, 1 << 20}, DType::U8, 10 * l + 5);  // several staging chunks
  }
  WriteOptions wo;
  wo.show_progress = false;
  wo.shard_size = 4 << 20;  // several shards (a tensor larger than a shard is an error)
  save_model_state(dir, identity_mapper_from_state(src), src, wo);

  std::vector<MapperPtr> parts;
  for (int l = 0; l < 4; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    parts.push_back(concatenate_tensors({p + "q", p + "k", p + "v"}, p + "qkv", 0));
    parts.push_back(sequential({transpose(p + "o", 0, 1), cast(p + "o", DType::BF16)}));
    parts.push_back(stack_tensors({p + "big"}, p + "big_stacked", 1));
  }
  const MapperPtr m = parallel(parts);
  ReadOptions cpu;
  cpu.show_progress = false;
  std::map<std::string, Tensor> expect;
  for (auto&& [name, t] : read_model_state(dir, m, cpu)) expect[name] = t.contiguous();
  ReadOptions gpu = cpu;
  gpu.device = Device::cuda(0);
  gpu.reader_threads = 3;
  size_t seen = 0;
  for (auto&& [name, t] : read_model_state(dir, m, gpu)) {
    INFO(name);
    CHECK(t.device() == Device::cuda(0));
    CHECK(t.storage().kind() == StorageKind::kCuda);
    const Tensor back = t.to(Device::cpu());
    REQUIRE(expect.contains(name));
    CHECK(back.dtype() == expect[name].dtype());
    CHECK(back.shape() == expect[name].shape());
    CHECK(equal(back.contiguous(), expect[name]));
    ++seen;
  }
  CHECK(seen == expect.size());
}

TEST_CASE("load_model_state into cuda:0 targets fills them as the CPU load fills host targets") {
  const TempDir tmp;
  const fs::path dir = tmp / "load";
  StateDict src;
  src["q"] = random_tensor({64, 32}, DType::BF16, 1);
  src["k"] = random_tensor({16, 32}, DType::BF16, 2);
  src["o"] = random_tensor({3 << 20}, DType::U8, 3);  // several staging chunks
  WriteOptions wo;
  wo.show_progress = false;
  save_model_state(dir, identity_mapper_from_state(src), src, wo);
  const MapperPtr m =
      parallel({concatenate_tensors({"q", "k"}, "qk", 0), cast("o", DType::F16)});
  ReadOptions ro;
  ro.show_progress = false;
  StateDict host{{"qk", Tensor::zeros({80, 32}, DType::BF16)},
                 {"o", Tensor::zeros({3 << 20}, DType::F16)}};
  load_model_state(dir, m, Device::cpu(), host, ro);
  StateDict device{{"qk", Tensor::zeros({80, 32}, DType::BF16, Device::cuda(0))},
                   {"o", Tensor::zeros({3 << 20}, DType::F16, Device::cuda(0))}};
  const void* qk_storage = device["qk"].data_ptr();
  load_model_state(dir, m, Device::cuda(0), device, ro);
  CHECK(device["qk"].data_ptr() == qk_storage);  // filled in place
  for (const auto& [name, t] : host) {
    INFO(name);
    CHECK(equal(device[name].to(Device::cpu()), t));
  }
}

TEST_CASE("read_model_state to cuda:0 reports a shard truncated after it was opened") {
  // The device path preads into the staging ring (Note [pread into the staging ring]): a short
  // file is an IoError naming it, not SIGBUS.
  const TempDir tmp;
  const fs::path dir = tmp / "trunc";
  StateDict src;
  src["w"] = random_tensor({4, 1 << 20}, DType::U8, 7);
  WriteOptions wo;
  wo.show_progress = false;
  save_model_state(dir, identity_mapper_from_state(src), src, wo);
  ReadOptions gpu;
  gpu.show_progress = false;
  gpu.device = Device::cuda(0);
  auto stream = read_model_state(dir, identity_mapper_from_state(src), gpu);
  fs::path shard;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") shard = entry.path();
  }
  REQUIRE(!shard.empty());
  fs::resize_file(shard, 200);
  auto drain = [&] {
    for (auto&& [name, t] : stream) (void)name;
  };
  const std::string file = shard.filename().string();
  CHECK_THROWS_WITH_AS(drain(), doctest::Contains(doctest::String(file.c_str())), io::IoError);
}

TEST_CASE("save_model_state from device tensors writes the same files as from host tensors") {
  const TempDir base;
  StateDict host;
  host["a"] = random_tensor({1000, 77}, DType::BF16, 1);
  host["big"] = random_tensor({5, 10 << 20}, DType::U8, 2);  // 50 MB: several staging chunks
  host["t"] = random_tensor({130, 257}, DType::F32, 3).transpose(0, 1);  // strided
  host["empty"] = random_tensor({0, 4}, DType::F16, 4);
  StateDict device;
  for (const auto& [name, t] : host) device[name] = t.to(Device::cuda(0));
  WriteOptions wo;
  wo.show_progress = false;
  wo.shard_size = 52'500'000;  // "big" fits (a tensor larger than a shard is an error), not all
  save_model_state(base / "cpu", identity_mapper_from_state(host), host, wo);
  save_model_state(base / "gpu", identity_mapper_from_state(device), device, wo);
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(base / "cpu")) {
    INFO(entry.path().filename().string());
    const fs::path other = base / "gpu" / entry.path().filename();
    REQUIRE(fs::exists(other));
    CHECK(read_file(entry.path()) == read_file(other));
    ++files;
  }
  CHECK(files >= 3);  // shards and the index
}

TEST_CASE("the model-layout ops run on cuda:0, byte-identical to the CPU, and invert there") {
  // RoPE permutation, Megatron's QKV, gpt-oss's interleaved gate/up, stacked experts and tied
  // embeddings: views and copies of core, so on the device through its kernels.
  const TempDir tmp;
  const fs::path dir = tmp / "layouts";
  StateDict src;
  src["q"] = random_tensor({8 * 6, 40}, DType::BF16, 1);
  src["k"] = random_tensor({2 * 6, 40}, DType::BF16, 2);
  src["v"] = random_tensor({2 * 6, 40}, DType::BF16, 3);
  src["q_bias"] = random_tensor({8 * 6}, DType::F32, 4);
  src["gate_up"] = random_tensor({4, 40, 2 * 24}, DType::BF16, 5);
  for (int e = 0; e < 5; ++e) {
    src["e." + std::to_string(e) + ".gate"] = random_tensor({24, 40}, DType::BF16, 10 + e);
    src["e." + std::to_string(e) + ".up"] = random_tensor({24, 40}, DType::BF16, 20 + e);
  }
  src["embed"] = random_tensor({64, 40}, DType::BF16, 6);
  WriteOptions wo;
  wo.show_progress = false;
  save_model_state(dir, identity_mapper_from_state(src), src, wo);

  std::vector<std::vector<std::string>> experts;
  for (int e = 0; e < 5; ++e) {
    experts.push_back({"e." + std::to_string(e) + ".gate", "e." + std::to_string(e) + ".up"});
  }
  const MapperPtr m =
      parallel({sequential({parallel({permute_for_rope("q", 8, RopeDirection::kFromHf),
                                      permute_for_rope("k", 2, RopeDirection::kFromHf)}),
                            interleave_qkv({"q", "k", "v"}, "qkv", 8, 2)}),
                permute_for_rope("q_bias", 8, RopeDirection::kToHf),
                deinterleave("gate_up", {"gate", "up"}, -1),
                stack_experts(experts, "experts", 0, 0), untie_embeddings("embed", "lm_head")});
  ReadOptions cpu;
  cpu.show_progress = false;
  StateDict expect;
  for (auto&& [name, t] : read_model_state(dir, m, cpu)) expect[name] = t.contiguous();
  ReadOptions gpu = cpu;
  gpu.device = Device::cuda(0);
  StateDict on_device;
  for (auto&& [name, t] : read_model_state(dir, m, gpu)) {
    INFO(name);
    CHECK(t.device() == Device::cuda(0));
    REQUIRE(expect.contains(name));
    CHECK(equal(t.to(Device::cpu()).contiguous(), expect[name]));
    on_device[name] = t;
  }
  CHECK(on_device.size() == expect.size());
  // The inverse on the device gives the checkpoint back (stack_experts unstacks with views and
  // device copies; tie_embeddings compares a separate copy of lm_head with the embedding).
  on_device["lm_head"] = on_device["lm_head"].clone();
  const MapperPtr back = m->inverse(specs_of(src));
  const StateDict again = apply_all(*back, on_device);
  REQUIRE(again.size() == src.size());
  for (const auto& [name, t] : src) {
    INFO(name);
    CHECK(again.at(name).device() == Device::cuda(0));
    CHECK(equal(again.at(name).to(Device::cpu()).contiguous(), t));
  }
}
