// bench_dist: the dist layer's costs, under mpirun (bench/dist/run.py drives it).
//
//   mpirun -np N bench_dist allgather
//       ProcessGroup::all_gather_into_tensor against MPI_Allgather of the same raw buffers, for
//       per-rank messages of 4 KiB .. 64 MiB: GB/s (bytes gathered per rank / seconds) and the
//       overhead ratio (d9d's time / MPI's), medians of several rounds.
//   mpirun -np N bench_dist convert SRC DEST SPEC
//       convert_model_state_distributed (what `mpirun d9d convert` runs) with each rank's bytes
//       read from storage (/proc/self/io read_bytes: run it on a cold page cache) and written.
// Rank 0 prints one JSON object per line.
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <d9d/d9d.hpp>

using namespace d9d;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::pair<int64_t, int64_t> io_bytes() {  // read_bytes, write_bytes
  std::ifstream io("/proc/self/io");
  std::string key;
  int64_t value = 0, read = -1, written = -1;
  while (io >> key >> value) {
    if (key == "read_bytes:") read = value;
    if (key == "write_bytes:") written = value;
  }
  return {read, written};
}

int allgather(dist::ProcessGroup& world) {
  const int n = world.size();
  for (int64_t bytes = 4 << 10; bytes <= int64_t{64} << 20; bytes *= 4) {
    const Tensor input =
        Tensor::full<uint8_t>({bytes}, static_cast<uint8_t>(world.rank()), DType::U8);
    const Tensor output = Tensor::empty({bytes * n}, DType::U8);
    const int rounds = bytes <= (1 << 20) ? 200 : 10;
    std::vector<double> ours, theirs;
    for (int trial = 0; trial < 7; ++trial) {
      // Alternate, so that neither always runs on a warmer machine.
      world.barrier();
      double t0 = now();
      for (int i = 0; i < rounds; ++i) world.all_gather_into_tensor(output, input);
      ours.push_back((now() - t0) / rounds);
      MPI_Barrier(MPI_COMM_WORLD);
      t0 = now();
      for (int i = 0; i < rounds; ++i) {
        MPI_Allgather(input.data_ptr(), static_cast<int>(bytes), MPI_BYTE,
                      output.mutable_data_ptr(), static_cast<int>(bytes), MPI_BYTE, MPI_COMM_WORLD);
      }
      theirs.push_back((now() - t0) / rounds);
    }
    const double a = median(ours), b = median(theirs);
    if (world.rank() == 0) {
      std::printf(
          "{\"bench\": \"allgather\", \"ranks\": %d, \"bytes_per_rank\": %lld, \"d9d_s\": %.9f, "
          "\"mpi_s\": %.9f, \"d9d_GBps\": %.3f, \"mpi_GBps\": %.3f, \"ratio\": %.3f}\n",
          n, static_cast<long long>(bytes), a, b, static_cast<double>(bytes * n) / a / 1e9,
          static_cast<double>(bytes * n) / b / 1e9, a / b);
      std::fflush(stdout);
    }
  }
  return 0;
}

int convert(dist::ProcessGroup& world, const char* src, const char* dest, const char* spec_path) {
  std::ifstream in(spec_path);
  std::stringstream text;
  text << in.rdbuf();
  const io::Checkpoint checkpoint = io::Checkpoint::open(src);
  const mapper::SpecMapping mapping = mapper::from_spec(text.str(), checkpoint.keys());
  model_state::ReadOptions ro;
  ro.show_progress = false;
  ro.memory_budget = int64_t{256} << 20;  // the CLI's default
  model_state::WriteOptions wo;
  wo.show_progress = false;
  wo.shard_size = int64_t{1} << 30;
  world.barrier();
  const auto [read0, written0] = io_bytes();
  const double t0 = now();
  const model_state::ReadPlan plan =
      model_state::convert_model_state_distributed(src, dest, mapping.mapper, world, ro, wo);
  const double seconds = now() - t0;
  const auto [read1, written1] = io_bytes();
  const std::string mine = std::to_string(read1 - read0) + " " +
                           std::to_string(written1 - written0) + " " + std::to_string(seconds);
  const std::vector<std::string> all = world.all_gather_object(mine);
  if (world.rank() == 0) {
    std::string reads, writes, times;
    for (const std::string& s : all) {
      std::istringstream r(s);
      std::string a, b, c;
      r >> a >> b >> c;
      reads += (reads.empty() ? "" : ", ") + a;
      writes += (writes.empty() ? "" : ", ") + b;
      times += (times.empty() ? "" : ", ") + c;
    }
    std::printf(
        "{\"bench\": \"convert\", \"ranks\": %d, \"seconds\": %.3f, \"input_bytes\": %lld, "
        "\"output_bytes\": %lld, \"read_bytes\": [%s], \"write_bytes\": [%s], \"rank_seconds\": "
        "[%s]}\n",
        world.size(), seconds, static_cast<long long>(plan.input_bytes),
        static_cast<long long>(plan.output_bytes), reads.c_str(), writes.c_str(), times.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const dist::ProcessGroupPtr world = dist::init();
  if (world->backend() != dist::Backend::kMpi) {
    std::fprintf(stderr, "bench_dist: run it under mpirun\n");
    return 2;
  }
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "allgather" && argc == 2) return allgather(*world);
  if (mode == "convert" && argc == 5) return convert(*world, argv[2], argv[3], argv[4]);
  std::fprintf(stderr, "usage: bench_dist allgather | bench_dist convert SRC DEST SPEC\n");
  return 2;
}
