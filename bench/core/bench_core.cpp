// bench_core: throughput of the core's data movement, one JSON object per line.
//
// Each op runs `--reps` times after a warm-up; the median time is reported with the bytes the op
// must move (every input byte read once, every output byte written once). Outputs are allocated
// by the op itself, as a caller would see it. Beside each op: memcpy of the same bytes, the limit.
//
//   bench_core [--reps N] [--threads N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <d9d/core.hpp>

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

double median_seconds(const std::function<void()>& fn) {
  fn();  // warm-up: faults in inputs, fills the block cache
  std::vector<double> times;
  for (int i = 0; i < g_reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// memcpy of `nbytes` into memory that is already faulted in: one thread, and all threads over
// disjoint slices. The better of the two is the limit an op moving the same bytes is held to.
double memcpy_gbps(size_t nbytes) {
  static std::vector<char> src, dst;
  if (src.size() < nbytes) {
    src.assign(nbytes, 1);
    dst.assign(nbytes, 0);
  }
  const double bytes = 2.0 * static_cast<double>(nbytes);
  const double one = bytes / median_seconds([&] { std::memcpy(dst.data(), src.data(), nbytes); });
  const int threads = num_threads();
  const double all = bytes / median_seconds([&] {
    std::vector<std::thread> pool;
    const size_t share = nbytes / static_cast<size_t>(threads);
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t lo = share * static_cast<size_t>(t);
        const size_t hi = t == threads - 1 ? nbytes : lo + share;
        std::memcpy(dst.data() + lo, src.data() + lo, hi - lo);
      });
    }
    for (auto& th : pool) th.join();
  });
  return std::max(one, all) / 1e9;
}

// Times the op and prints one JSON line: the op's GB/s (bytes read + written) and the memcpy
// limit for the same number of bytes.
void run(const std::string& op, const std::string& detail, double bytes_read, double bytes_written,
         const std::function<void()>& fn) {
  const double seconds = median_seconds(fn);
  const double bytes = bytes_read + bytes_written;
  const double limit = memcpy_gbps(static_cast<size_t>(bytes / 2));
  std::printf("{\"op\": \"%s\", \"detail\": \"%s\", \"bytes\": %.0f, \"seconds\": %.6f, "
              "\"gbps\": %.3f, \"memcpy_gbps\": %.3f, \"threads\": %d}\n",
              op.c_str(), detail.c_str(), bytes, seconds, bytes / seconds / 1e9, limit,
              num_threads());
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
    Tensor f = random_tensor({n, n}, DType::F32);
    run("transpose", "F32 [4096,4096] transpose(0,1).contiguous()", bytes_of(f), bytes_of(f),
        [&] { f.transpose(0, 1).contiguous(); });
    run("cast", "F32->BF16 [4096,4096]", bytes_of(f), bytes_of(f) / 2,
        [&] { f.to(DType::BF16); });
    run("cast", "BF16->F32 [4096,4096]", bytes_of(x), 2 * bytes_of(x), [&] { x.to(DType::F32); });
  }
  return 0;
}
