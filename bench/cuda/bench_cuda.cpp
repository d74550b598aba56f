// The GPU check's timings (bench/gpu_check.sh runs it): pinned cudaMemcpy ceilings, the staging
// ring's download (how device tensors are saved) against pinned D2H, the engine's
// read_model_state and load_model_state to cuda:0 against pinned H2D, the copy/cast/dequantize
// kernels against a device-to-device cudaMemcpy, and an NCCL world-of-one all_gather. Prints one table; exits nonzero if a result is wrong.
//
// Usage: bench_cuda SCRATCH_DIR [CHECKPOINT_GIB]   (default 8 GiB; the checkpoint is written under
// SCRATCH_DIR, read once to bring it into the page cache, then timed, and removed at the end)
//
// Timing: CUDA events on the calling thread's stream after one warm-up, the median of the repeats.
// Kernel data are several times the H200's 60 MB L2. Bytes counted are each input read once plus
// each output written once, for the kernels and for the device-to-device cudaMemcpy alike.
#include <cuda_runtime_api.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <d9d/d9d.hpp>
#include <d9d/dist.hpp>
#include <d9d/staging.hpp>
#include <d9d/mapper.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

using namespace d9d;
namespace fs = std::filesystem;

namespace {

#define CHECK_CUDA(call)                                                                      \
  do {                                                                                        \
    const cudaError_t err_ = (call);                                                          \
    if (err_ != cudaSuccess) {                                                                \
      std::fprintf(stderr, "bench_cuda: %s failed: %s\n", #call, cudaGetErrorString(err_));   \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

constexpr int kRepeats = 7;
const Device kGpu = Device::cuda(0);

// Median seconds of `fn` over kRepeats runs, after one warm-up, timed with CUDA events on the
// per-thread stream (the stream d9d's ops and the copies below use).
double time_median(const std::function<void()>& fn) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  fn();
  CHECK_CUDA(cudaStreamSynchronize(cudaStreamPerThread));
  std::vector<double> seconds;
  for (int i = 0; i < kRepeats; ++i) {
    CHECK_CUDA(cudaEventRecord(start, cudaStreamPerThread));
    fn();
    CHECK_CUDA(cudaEventRecord(stop, cudaStreamPerThread));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    seconds.push_back(ms / 1e3);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

Tensor random_device(const Shape& shape, DType dtype, uint64_t seed) {
  Tensor host = Tensor::empty(shape, dtype);
  auto* p = static_cast<uint64_t*>(host.mutable_data_ptr());
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < host.nbytes() / 8; ++i) {  // xorshift: fast, never all zeros
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = x;
  }
  return host.to(kGpu);
}

struct Row {
  std::string name;
  double gbps;
  std::string ratio;
};
std::vector<Row> rows;
bool failed = false;

void add(const std::string& name, double bytes, double seconds, double ceiling_gbps,
         const char* ceiling_name) {
  const double gbps = bytes / seconds / 1e9;
  char ratio[64] = "";
  if (ceiling_gbps > 0) std::snprintf(ratio, sizeof ratio, "%.2f of %s", gbps / ceiling_gbps, ceiling_name);
  rows.push_back({name, gbps, ratio});
}

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "bench_cuda: WRONG RESULT: %s\n", what.c_str());
    failed = true;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_cuda SCRATCH_DIR [CHECKPOINT_GIB]\n");
    return 2;
  }
  if (cuda_device_count() == 0) {
    std::printf("bench_cuda: no CUDA device visible\n");
    return 77;
  }
  const fs::path scratch = argv[1];
  const int64_t checkpoint_gib = argc > 2 ? std::atoll(argv[2]) : 8;
  CHECK_CUDA(cudaSetDevice(0));
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.0f GiB, L2 %d MB\n", prop.name, prop.multiProcessorCount,
              static_cast<double>(prop.totalGlobalMem) / (1 << 30), prop.l2CacheSize >> 20);

  // ---- ceilings ----------------------------------------------------------------------------------
  const size_t kCopyBytes = size_t{1} << 30;
  void* pinned = nullptr;
  void* dev_a = nullptr;
  void* dev_b = nullptr;
  CHECK_CUDA(cudaMallocHost(&pinned, kCopyBytes));
  std::memset(pinned, 0x5A, kCopyBytes);
  CHECK_CUDA(cudaMalloc(&dev_a, kCopyBytes));
  CHECK_CUDA(cudaMalloc(&dev_b, kCopyBytes));
  const double h2d = time_median([&] {
    CHECK_CUDA(cudaMemcpyAsync(dev_a, pinned, kCopyBytes, cudaMemcpyHostToDevice, cudaStreamPerThread));
  });
  const double h2d_gbps = static_cast<double>(kCopyBytes) / h2d / 1e9;
  add("pinned cudaMemcpy H2D (ceiling)", static_cast<double>(kCopyBytes), h2d, 0, "");
  const double d2h = time_median([&] {
    CHECK_CUDA(cudaMemcpyAsync(pinned, dev_a, kCopyBytes, cudaMemcpyDeviceToHost, cudaStreamPerThread));
  });
  const double d2h_gbps = static_cast<double>(kCopyBytes) / d2h / 1e9;
  add("pinned cudaMemcpy D2H (ceiling)", static_cast<double>(kCopyBytes), d2h, 0, "");
  const double d2d = time_median([&] {
    CHECK_CUDA(cudaMemcpyAsync(dev_b, dev_a, kCopyBytes, cudaMemcpyDeviceToDevice, cudaStreamPerThread));
  });
  const double d2d_gbps = 2.0 * static_cast<double>(kCopyBytes) / d2d / 1e9;  // read + write
  add("cudaMemcpy D2D, read+write (ceiling)", 2.0 * static_cast<double>(kCopyBytes), d2d, 0, "");
  CHECK_CUDA(cudaFree(dev_a));
  CHECK_CUDA(cudaFree(dev_b));
  CHECK_CUDA(cudaFreeHost(pinned));

  // ---- saving from the device: the staging ring into pageable memory, as a file write takes it --
  {
    const Tensor d = random_device({int64_t{1} << 30}, DType::U8, 9);
    std::vector<std::byte> host(size_t{1} << 30);
    std::memset(host.data(), 0, host.size());  // fault the pages in before timing
    StagingRing& ring = StagingRing::shared(kGpu);
    auto sink = [&](std::span<const std::byte> bytes, int64_t offset) {
      std::memcpy(host.data() + offset, bytes.data(), bytes.size());
    };
    add("StagingRing::download -> pageable memory", static_cast<double>(d.nbytes()),
        time_median([&] { ring.download(d, sink); }), d2h_gbps, "pinned D2H");
    const Tensor back = d.to(Device::cpu());
    expect(std::memcmp(back.data_ptr(), host.data(), host.size()) == 0,
           "StagingRing::download changed the bytes");
  }

  // ---- kernels: bytes read + written, against D2D ----------------------------------------------
  {
    // stack of 4 [8192, 8192] BF16 (128 MiB each) along dim 1: interleaved rows.
    std::vector<Tensor> parts;
    for (int i = 0; i < 4; ++i) parts.push_back(random_device({8192, 8192}, DType::BF16, 10 + i));
    const double bytes = 2.0 * 4 * parts[0].nbytes();
    add("stack 4 x [8192,8192] BF16, dim 1", bytes, time_median([&] { (void)stack(parts, 1); }),
        d2d_gbps, "D2D");
    Tensor got = stack(parts, 1).to(Device::cpu());
    std::vector<Tensor> host_parts;
    for (const Tensor& t : parts) host_parts.push_back(t.to(Device::cpu()));
    expect(equal(got, stack(host_parts, 1)), "stack on the device differs from the CPU");
    // 256 small tensors of [1024, 512] F32 (2 MiB each) in one launch.
    std::vector<Tensor> small;
    for (int i = 0; i < 256; ++i) small.push_back(random_device({1024, 512}, DType::F32, 100 + i));
    add("stack 256 x [1024,512] F32, dim 0", 2.0 * 256 * small[0].nbytes(),
        time_median([&] { (void)stack(small, 0); }), d2d_gbps, "D2D");
  }
  {
    std::vector<Tensor> parts = {random_device({8192, 8192}, DType::BF16, 1),
                                 random_device({8192, 2048}, DType::BF16, 2),
                                 random_device({8192, 2048}, DType::BF16, 3)};
    double in = 0;
    for (const Tensor& t : parts) in += static_cast<double>(t.nbytes());
    add("cat [8192,8192|2048|2048] BF16, dim 1", 2.0 * in, time_median([&] { (void)cat(parts, 1); }),
        d2d_gbps, "D2D");
  }
  {
    Tensor m = random_device({16384, 16384}, DType::BF16, 4);
    add("transpose [16384,16384] BF16 .contiguous()", 2.0 * static_cast<double>(m.nbytes()),
        time_median([&] { (void)m.transpose(0, 1).contiguous(); }), d2d_gbps, "D2D");
    Tensor small = random_device({1000, 3000}, DType::BF16, 5);
    expect(equal(small.transpose(0, 1).contiguous().to(Device::cpu()),
                 small.to(Device::cpu()).transpose(0, 1).contiguous()),
           "transpose on the device differs from the CPU");
  }
  {
    Tensor bf16 = random_device({16384, 8192}, DType::BF16, 6);
    Tensor f32 = bf16.to(DType::F32);
    const double n = static_cast<double>(bf16.numel());
    add("cast BF16 -> F32 [16384,8192]", n * 6, time_median([&] { (void)bf16.to(DType::F32); }),
        d2d_gbps, "D2D");
    add("cast F32 -> BF16 [16384,8192]", n * 6, time_median([&] { (void)f32.to(DType::BF16); }),
        d2d_gbps, "D2D");
    add("cast F32 -> F8_E4M3 [16384,8192]", n * 5,
        time_median([&] { (void)f32.to(DType::F8_E4M3); }), d2d_gbps, "D2D");
    Tensor part = f32.narrow(0, 0, 512);
    expect(equal(part.to(DType::F8_E4M3).to(Device::cpu()),
                 part.to(Device::cpu()).to(DType::F8_E4M3)),
           "F32 -> F8_E4M3 on the device differs from the CPU");
  }

  {
    // Dequantization to BF16 of a [16384, 8192] weight in each format: bytes read (the packed
    // weight and its scales) + written (the BF16 output).
    const double n = 16384.0 * 8192.0;
    Dequantization how;
    how.format = QuantFormat::kFp8Block;
    const Tensor w8 = random_device({16384, 8192}, DType::F8_E4M3, 11);
    const Tensor s8 = random_device({128, 64}, DType::F32, 12);
    add("dequantize fp8_block -> BF16 [16384,8192]", n * 3 + 128 * 64 * 4,
        time_median([&] { (void)dequantize(w8, s8, how); }), d2d_gbps, "D2D");
    expect(equal(dequantize(w8, s8, how).narrow(0, 0, 256).to(Device::cpu()),
                 dequantize(w8.narrow(0, 0, 256).to(Device::cpu()),
                            s8.narrow(0, 0, 2).to(Device::cpu()), how)),
           "dequantize fp8_block on the device differs from the CPU");
    how.format = QuantFormat::kMxfp4;
    const Tensor b4 = random_device({16384, 256, 16}, DType::U8, 13);
    const Tensor e8 = random_device({16384, 256}, DType::U8, 14);
    add("dequantize mxfp4 -> BF16 [16384,8192]", n * 2.5 + n / 32,
        time_median([&] { (void)dequantize(b4, e8, how); }), d2d_gbps, "D2D");
    how.format = QuantFormat::kNvfp4;
    how.global_scale_mode = GlobalScaleMode::kDivide;
    const Tensor p4 = random_device({16384, 4096}, DType::U8, 15);
    const Tensor s4 = random_device({16384, 512}, DType::F8_E4M3, 16);
    const Tensor g = Tensor::full({}, 2688.0f, DType::F32).to(kGpu);
    add("dequantize nvfp4 -> BF16 [16384,8192]", n * 2.5 + n / 16,
        time_median([&] { (void)dequantize(p4, s4, how, g); }), d2d_gbps, "D2D");
    expect(equal(dequantize(p4, s4, how, g).narrow(0, 0, 256).to(Device::cpu()),
                 dequantize(p4.narrow(0, 0, 256).to(Device::cpu()),
                            s4.narrow(0, 0, 256).to(Device::cpu()), how, g.to(Device::cpu()))),
           "dequantize nvfp4 on the device differs from the CPU");
  }

  // ---- read_model_state to cuda:0 --------------------------------------------------------------
  {
    const fs::path dir = scratch / "checkpoint";
    fs::remove_all(dir);
    // 256 MiB BF16 tensors, all sharing one host buffer (the writer streams each out).
    const int64_t count = checkpoint_gib * 4;
    Tensor payload = random_device({8192, 16384}, DType::BF16, 7).to(Device::cpu());
    mapper::StateDict state;
    for (int64_t i = 0; i < count; ++i) state["w." + std::to_string(i)] = payload;
    model_state::WriteOptions wo;
    wo.show_progress = false;
    wo.shard_size = int64_t{2} << 30;
    wo.fsync = false;  // scratch output: the pages stay in the page cache, which is the point
    auto t0 = std::chrono::steady_clock::now();
    model_state::save_model_state(dir, mapper::identity_mapper_from_state(state), state, wo);
    const double write_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("wrote a %lld GiB checkpoint in %.1f s\n", static_cast<long long>(checkpoint_gib),
                write_s);
    const mapper::MapperPtr m = mapper::identity_mapper_from_state(state);
    model_state::ReadOptions ro;
    ro.show_progress = false;
    ro.device = kGpu;
    ro.memory_budget = int64_t{4} << 30;
    double seconds = 0;
    int64_t bytes = 0;
    Tensor first;  // checked after the timed pass
    for (int pass = 0; pass < 2; ++pass) {  // pass 0 brings the files into the page cache
      bytes = 0;
      t0 = std::chrono::steady_clock::now();
      for (auto&& [name, t] : model_state::read_model_state(dir, m, ro)) {
        bytes += t.nbytes();
        if (pass == 1 && !first.defined()) first = t;
      }
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    expect(first.defined() && first.device() == kGpu && equal(first.to(Device::cpu()), payload),
           "read_model_state to cuda:0 changed the bytes");
    add("read_model_state -> cuda:0 (page-cached)", static_cast<double>(bytes), seconds, h2d_gbps,
        "pinned H2D");
    // An inference engine's load: into device tensors it already holds (the groups run on the
    // device, each output copied into its target).
    mapper::StateDict targets;
    for (const auto& [name, t] : state) targets[name] = Tensor::empty(t.shape(), t.dtype(), kGpu);
    t0 = std::chrono::steady_clock::now();
    model_state::load_model_state(dir, m, kGpu, targets, ro);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    expect(equal(targets["w.0"].to(Device::cpu()), payload),
           "load_model_state into cuda:0 targets changed the bytes");
    add("load_model_state -> cuda:0 targets (page-cached)", static_cast<double>(bytes), seconds,
        h2d_gbps, "pinned H2D");
    targets.clear();
    fs::remove_all(dir);
  }

  // ---- NCCL world of one -------------------------------------------------------------------------
  std::string nccl = "not built";
  if (dist::nccl_compiled()) {
    dist::ProcessGroupPtr world = dist::init(dist::Backend::kNccl);
    Tensor x = random_device({1 << 20}, DType::F32, 8);
    std::vector<Tensor> got = world->all_gather(x);
    const bool ok = got.size() == 1 && got[0].device() == kGpu && equal(got[0], x);
    expect(ok, "NCCL all_gather of a world of one");
    nccl = ok ? "ok (world 1, 4 MiB F32 all_gather identical)" : "WRONG";
  }

  std::printf("\n%-50s %10s   %s\n", "measurement", "GB/s", "ratio");
  for (const Row& r : rows) {
    std::printf("%-50s %10.1f   %s\n", r.name.c_str(), r.gbps, r.ratio.c_str());
  }
  std::printf("%-50s %s\n", "NCCL all_gather sanity", nccl.c_str());
  return failed ? 1 : 0;
}
