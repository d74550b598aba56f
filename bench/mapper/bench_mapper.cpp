// Times building, grouping and sharding the mapper of a MoE-like conversion (tests/mapper/
// moe_graph.hpp) at about 1k, 10k and 100k tensors. Prints a table, and with --json one JSON
// object per size (what bench/mapper/run.sh puts beside the reference's figures).
//
//   build   leaf mappers + the two stage parallels (collision checks, routing tables)
//   group   sequential(): gap filling and the net groups
//   shard   shard(m, 8, r) for every r
//   spec    the same conversion from a spec file (pattern expansion included)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <d9d/mapper.hpp>

#include "moe_graph.hpp"

using namespace d9d::mapper;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Times {
  double build = 1e30, group = 1e30, shard = 1e30, spec = 1e30;
  size_t groups = 0;
};

Times measure(moe::Size size, int repeats) {
  const std::vector<std::string> keys = moe::keys(size);
  Times best;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = Clock::now();
    moe::Stages st = moe::stages(size, keys);
    MapperPtr s1 = parallel(std::move(st.renames));
    MapperPtr s2 = parallel(std::move(st.fusions));
    const double build = seconds_since(t0);
    t0 = Clock::now();
    MapperPtr m = sequential({s1, s2});
    const double group = seconds_since(t0);
    t0 = Clock::now();
    size_t dealt = 0;
    for (int k = 0; k < 8; ++k) dealt += shard(m, 8, k)->state_dependency_groups().size();
    const double shard_time = seconds_since(t0);
    t0 = Clock::now();
    SpecMapping from = from_spec(moe::kSpec, keys);
    const double spec = seconds_since(t0);
    if (dealt != m->state_dependency_groups().size() ||
        from.mapper->state_dependency_groups() != m->state_dependency_groups()) {
      std::fprintf(stderr, "bench_mapper: inconsistent groups at %zu tensors\n", keys.size());
      std::exit(1);
    }
    best.build = std::min(best.build, build);
    best.group = std::min(best.group, group);
    best.shard = std::min(best.shard, shard_time);
    best.spec = std::min(best.spec, spec);
    best.groups = m->state_dependency_groups().size();
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const bool json = argc > 1 && std::strcmp(argv[1], "--json") == 0;
  const moe::Size sizes[] = {{30, 8}, {126, 23}, {126, 261}};
  if (!json) {
    std::printf("%-9s %-8s %-7s %9s %9s %9s %9s %9s\n", "tensors", "layers", "experts", "build_s",
                "group_s", "shard8_s", "total_s", "spec_s");
  }
  for (const auto& size : sizes) {
    const Times t = measure(size, size.tensors() > 50'000 ? 3 : 5);
    const double total = t.build + t.group + t.shard;
    if (json) {
      std::printf(
          "{\"impl\": \"d9d-cpp\", \"tensors\": %zu, \"layers\": %d, \"experts\": %d, "
          "\"groups\": %zu, \"build_s\": %.6f, \"group_s\": %.6f, \"shard_s\": %.6f, "
          "\"total_s\": %.6f, \"spec_s\": %.6f}\n",
          size.tensors(), size.layers, size.experts, t.groups, t.build, t.group, t.shard, total,
          t.spec);
    } else {
      std::printf("%-9zu %-8d %-7d %9.4f %9.4f %9.4f %9.4f %9.4f\n", size.tensors(), size.layers,
                  size.experts, t.build, t.group, t.shard, total, t.spec);
    }
  }
  return 0;
}
