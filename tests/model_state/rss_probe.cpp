// rss_probe: peak resident memory of a streamed conversion, measured in a process of its own.
//
//   rss_probe make DIR          writes a checkpoint of 16 layers x (a, b: 8 MiB each, c: 4 MiB)
//   rss_probe convert SRC DST BUDGET
//                               converts SRC -> DST (a+b concatenated, c renamed) with
//                               memory_budget = BUDGET bytes; prints "baseline_kib peak_kib
//                               largest_group_bytes" (VmRSS before, VmHWM after)
#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include <d9d/d9d.hpp>
#include <d9d/mapper.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

using namespace d9d;
using namespace d9d::mapper;
using namespace d9d::model_state;

namespace {

constexpr int kLayers = 16;

long status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  }
  return -1;
}

std::string key(int layer, const char* name) {
  std::string k = "layer.";
  k += std::to_string(layer);
  k += '.';
  k += name;
  return k;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "make" && argc == 3) {
      StateDict state;
      std::mt19937_64 gen(1);
      for (int l = 0; l < kLayers; ++l) {
        for (const auto& [name, rows] : {std::pair{"a", 2048}, std::pair{"b", 2048}, std::pair{"c", 1024}}) {
          Tensor t = Tensor::empty({rows, 2048}, DType::BF16);
          auto* p = static_cast<uint64_t*>(t.mutable_data_ptr());
          for (int64_t i = 0; i < t.nbytes() / 8; ++i) p[i] = gen();
          state[key(l, name)] = t;
        }
      }
      WriteOptions o;
      o.show_progress = false;
      o.fsync = false;
      o.shard_size = int64_t{64} << 20;
      save_model_state(argv[2], identity_mapper_from_state(state), state, o);
      return 0;
    }
    if (mode == "convert" && argc == 5) {
      std::vector<MapperPtr> parts;
      for (int l = 0; l < kLayers; ++l) {
        parts.push_back(concatenate_tensors({key(l, "a"), key(l, "b")}, key(l, "ab"), 0));
        parts.push_back(rename_tensor(key(l, "c"), key(l, "renamed_c")));
      }
      MapperPtr m = parallel(parts);
      ReadOptions ro;
      ro.show_progress = false;
      ro.memory_budget = std::stoll(argv[4]);
      WriteOptions wo;
      wo.show_progress = false;
      wo.fsync = false;
      wo.shard_size = int64_t{64} << 20;
      const long baseline = status_kib("VmRSS");
      ModelStateStream stream = read_model_state(argv[2], m, ro);
      int64_t largest = 0;
      for (const GroupPlan& g : stream.plan().groups) largest = std::max(largest, g.input_bytes + g.output_bytes);
      write_model_state_local(argv[3], identity_mapper_from_mapper_outputs(m), std::move(stream), wo);
      std::printf("%ld %ld %lld\n", baseline, status_kib("VmHWM"), static_cast<long long>(largest));
      return 0;
    }
    std::fprintf(stderr, "usage: rss_probe make DIR | rss_probe convert SRC DST BUDGET\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rss_probe: %s\n", e.what());
    return 1;
  }
}
