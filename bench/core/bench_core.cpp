// bench_core: throughput of the core's data movement, one JSON object per line.
//
// Each op runs `--reps` times after a warm-up, alternating with memcpy of the same bytes (the
// limit); medians are reported with the bytes the op must move (every input byte read once, every
// output byte written once). Outputs are allocated by the op itself, as a caller would see it.
//
//   bench_core [--reps N] [--threads N]
#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <d9d/core.hpp>

#include "../common/timing.hpp"

using namespace d9d;

namespace {

int g_reps = 7;

Tensor random_tensor(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<uint64_t*>(t.mutable_data_ptr());
  std::mt19937_64 gen(42);
  for (int64_t i = 0; i < t.nbytes() / 8; ++i) p[i] = gen() & 0x3F3F3F3F3F3F3F3Full;  // finite floats
  return t;
}

// Times the op and memcpy of the same bytes (into memory already faulted in; one thread, and all
// threads over disjoint slices) in turn, rep after rep, so that both see the same machine, and
// prints one JSON line: the op's GB/s (bytes read + written) and the better memcpy's.
void run(const std::string& op, const std::string& detail, double bytes_read, double bytes_written,
         const std::function<void()>& fn) {
  const double bytes = bytes_read + bytes_written;
  const int threads = num_threads();
  bench::MemcpyLimit memcpy_limit(static_cast<size_t>(bytes / 2));
  const bench::BesideMemcpy t =
      bench::time_beside_memcpy(fn, bytes, g_reps, threads, memcpy_limit);
  const double limit = t.limit_gbps;
  const double seconds = t.op_seconds;
  std::printf("{\"op\": \"%s\", \"detail\": \"%s\", \"bytes\": %.0f, \"seconds\": %.6f, "
              "\"gbps\": %.3f, \"memcpy_gbps\": %.3f, \"threads\": %d}\n",
              op.c_str(), detail.c_str(), bytes, seconds, bytes / seconds / 1e9, limit, threads);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--reps") g_reps = std::stoi(argv[i + 1]);
    if (flag == "--threads") set_num_threads(std::stoi(argv[i + 1]));
  }
  const int64_t n = 4096;
  auto bytes_of = [](const Tensor& t) { return static_cast<double>(t.nbytes()); };
  for (DType dtype : {DType::BF16, DType::F32}) {
    const std::string name(dtype_name(dtype));
    const int64_t rows = dtype == DType::BF16 ? n : n / 2;  // 32 MiB per tensor either way
    const std::string shape = "3x[" + std::to_string(rows) + ",4096]";
    std::vector<Tensor> three;
    for (int i = 0; i < 3; ++i) three.push_back(random_tensor({rows, n}, dtype));
    const double in = 3 * bytes_of(three[0]);
    run("stack", name + " " + shape + " dim 0", in, in, [&] { stack(three, 0); });
    run("cat", name + " " + shape + " dim 0", in, in, [&] { cat(three, 0); });
    run("cat", name + " " + shape + " dim 1", in, in, [&] { cat(three, 1); });
  }
  {
    Tensor x = random_tensor({n, 2 * n}, DType::BF16);
    run("chunk", "BF16 [4096,8192] into 2 on dim 1, each contiguous()", bytes_of(x), bytes_of(x),
        [&] {
          for (const Tensor& p : chunk(x, 2, 1)) p.contiguous();
        });
    Tensor y = random_tensor({n, 3, n}, DType::BF16);
    run("unbind", "BF16 [4096,3,4096] on dim 1, each contiguous()", bytes_of(y), bytes_of(y), [&] {
      for (const Tensor& p : unbind(y, 1)) p.contiguous();
    });
  }
  {
    Tensor x = random_tensor({n, n}, DType::BF16);
    run("transpose", "BF16 [4096,4096] transpose(0,1).contiguous()", bytes_of(x), bytes_of(x),
        [&] { x.transpose(0, 1).contiguous(); });
    Tensor big = random_tensor({2 * n, 2 * n}, DType::BF16);  // 128 MiB: out of a 260 MiB L3's reach
    run("transpose", "BF16 [8192,8192] transpose(0,1).contiguous()", bytes_of(big), bytes_of(big),
        [&] { big.transpose(0, 1).contiguous(); });
    Tensor f = random_tensor({n, n}, DType::F32);
    run("transpose", "F32 [4096,4096] transpose(0,1).contiguous()", bytes_of(f), bytes_of(f),
        [&] { f.transpose(0, 1).contiguous(); });
    run("cast", "F32->BF16 [4096,4096]", bytes_of(f), bytes_of(f) / 2,
        [&] { f.to(DType::BF16); });
    run("cast", "BF16->F32 [4096,4096]", bytes_of(x), 2 * bytes_of(x), [&] { x.to(DType::F32); });
  }
  return 0;
}
