// bench_quant: dequantize throughput for each format, one JSON object per line.
//
// Each case runs `--reps` times after a warm-up, alternating with memcpy of the same bytes (the
// limit); medians are reported with the bytes dequantize must move (every input byte read once:
// weight and scales; every output byte written once). Then the same on one thread, timed by the
// thread's CPU time ("core_gbps"), which a busy machine disturbs far less than the wall clock. Outputs are allocated by dequantize itself,
// as a caller would see it. The inputs are written to --dump DIR (raw bytes, for the Python
// driver's numpy oracle, which times the same work on the same data).
//
//   bench_quant [--reps N] [--threads N] [--dump DIR]
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <d9d/core.hpp>

#include "../common/timing.hpp"

using namespace d9d;

namespace {

int g_reps = 7;
std::string g_dump;

// Random bytes; `mask` keeps the codes in a range (E8M0 exponents near 2^0, finite F32 scales).
Tensor random_tensor(const Shape& shape, DType dtype, uint8_t mask = 0xFF, uint8_t add = 0) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<uint8_t*>(t.mutable_data_ptr());
  std::mt19937_64 gen(42);
  for (int64_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>((gen() & mask) + add);
  return t;
}

void dump(const std::string& name, const Tensor& t) {
  if (g_dump.empty()) return;
  std::ofstream(g_dump + "/" + name, std::ios::binary)
      .write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
}

// As bench_core's run(): the op and memcpy of the same bytes (one thread, and all threads over
// disjoint slices) in turn, rep after rep; one JSON line with the op's GB/s (bytes read + written)
// and the better memcpy's.
void run(const std::string& name, const Tensor& source, const Tensor& scale,
         const Dequantization& how, const Tensor& global = Tensor()) {
  const double bytes_read = static_cast<double>(source.nbytes() + scale.nbytes() +
                                                (global.defined() ? global.nbytes() : 0));
  const Shape out_shape = dequantized_shape(
      how, {source.dtype(), source.shape()}, {scale.dtype(), scale.shape()},
      global.defined() ? std::optional<QuantizedInput>({global.dtype(), global.shape()})
                       : std::nullopt);
  const double bytes_written = static_cast<double>(numel_of(out_shape) * element_size(how.dtype));
  const double bytes = bytes_read + bytes_written;
  const int threads = num_threads();
  bench::MemcpyLimit memcpy_limit(static_cast<size_t>(bytes / 2));
  auto op = [&] { dequantize(source, scale, how, global); };
  const bench::BesideMemcpy t =
      bench::time_beside_memcpy(op, bytes, g_reps, threads, memcpy_limit);
  const double limit = t.limit_gbps;
  const double seconds = t.op_seconds;
  // One core: the op on one thread and memcpy, each timed by its thread's CPU time.
  set_num_threads(1);
  std::vector<double> c_op, c_one;
  for (int i = 0; i < g_reps; ++i) {
    c_op.push_back(bench::cpu_seconds_of(op));
    c_one.push_back(bench::cpu_seconds_of([&] { memcpy_limit.one(); }));
  }
  set_num_threads(threads);
  std::printf(
      "{\"case\": \"%s\", \"bytes\": %.0f, \"seconds\": %.6f, \"gbps\": %.3f, "
      "\"memcpy_gbps\": %.3f, \"core_gbps\": %.3f, \"core_memcpy_gbps\": %.3f, "
      "\"threads\": %d}\n",
      name.c_str(), bytes, seconds, bytes / seconds / 1e9, limit, bytes / bench::median(c_op) / 1e9,
      bytes / bench::median(c_one) / 1e9, threads);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--reps") g_reps = std::stoi(argv[i + 1]);
    if (flag == "--threads") set_num_threads(std::stoi(argv[i + 1]));
    if (flag == "--dump") g_dump = argv[i + 1];
  }
  const int64_t n = 4096;
  Dequantization how;  // BF16 output throughout
  {
    const Tensor w = random_tensor({n, n}, DType::F8_E4M3);
    const Tensor s = random_tensor({n / 128, n / 128}, DType::F32, 0x3F, 0x20);
    dump("fp8_block.w", w);
    dump("fp8_block.s", s);
    how.format = QuantFormat::kFp8Block;
    run("fp8_block", w, s, how);
    const Tensor c = random_tensor({n, 1}, DType::BF16, 0x3F, 0x20);
    dump("fp8_channel.s", c);
    how.format = QuantFormat::kFp8Channel;
    run("fp8_channel", w, c, how);
  }
  {
    const Tensor blocks = random_tensor({n, n / 32, 16}, DType::U8);
    const Tensor scales = random_tensor({n, n / 32}, DType::U8, 0x07, 120);
    dump("mxfp4.w", blocks);
    dump("mxfp4.s", scales);
    how.format = QuantFormat::kMxfp4;
    run("mxfp4", blocks, scales, how);
  }
  {
    const Tensor packed = random_tensor({n, n / 2}, DType::U8);
    const Tensor scales = random_tensor({n, n / 16}, DType::F8_E4M3, 0x3F, 0x10);
    const Tensor global = Tensor::full({}, 2688.0f, DType::F32);
    dump("nvfp4.w", packed);
    dump("nvfp4.s", scales);
    how.format = QuantFormat::kNvfp4;
    how.global_scale_mode = GlobalScaleMode::kDivide;
    run("nvfp4", packed, scales, how, global);
    how.global_scale_mode.reset();
  }
  {
    // gpt-oss-20b's down_proj: 32 experts of [2880, 2880], blocks [32, 2880, 90, 16].
    const Tensor blocks = random_tensor({32, 2880, 90, 16}, DType::U8);
    const Tensor scales = random_tensor({32, 2880, 90}, DType::U8, 0x07, 120);
    dump("mxfp4_experts.w", blocks);
    dump("mxfp4_experts.s", scales);
    how.format = QuantFormat::kMxfp4;
    run("mxfp4_experts", blocks, scales, how);
  }
  return 0;
}
