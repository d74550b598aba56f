// An emulated CUDA runtime: d9d's device paths run on a machine without a GPU.
//
// Note [emulated CUDA device]: built as libcudart.so.<toolkit major> and put first on
// LD_LIBRARY_PATH, this library stands in for the toolkit's runtime under the unchanged test
// binaries (the *_emulated tests in tests/meson.build). It implements the runtime calls d9d makes,
// with the semantics d9d relies on, made as unforgiving as they can be on a CPU:
// - device memory is host memory that the runtime tracks: a copy, memset or kernel given a pointer
//   outside a live allocation of the right kind (device of the right index, pinned or pageable
//   host) fails with cudaErrorInvalidValue and a line on stderr naming the call; fresh device
//   memory is filled with 0xCD, not zeros;
// - every stream is a worker thread that runs its work in order, each item after a random pause
//   (0..$D9D_EMULATED_CUDA_DELAY_US, default 200 us), so work the host does not wait for really is
//   unfinished: a pinned buffer refilled before its copy ran, or a result read before its
//   stream was synchronized, shows up as wrong bytes;
// - copies from pageable memory are staged at the call and copies into pageable memory return
//   when done, as the real runtime does; the legacy stream waits for the other blocking streams;
// - events, cudaStreamPerThread, cudaMallocAsync/cudaFreeAsync, the current device per thread,
//   $D9D_EMULATED_CUDA_DEVICES devices (default 1) of $D9D_EMULATED_CUDA_MEMORY bytes each
//   (default 8 GiB) with cudaErrorMemoryAllocation beyond;
// - kernel launches: the kernels registered by kernels/copy.cu, kernels/cast.cu and
//   kernels/dequantize.cu are run on the stream's thread by executing their thread bodies
//   (copy_body.hpp, cast_body.hpp, dequantize_body.hpp: the same code nvcc compiles) for every
//   block and thread of the launch configuration given, in order, with the tile barrier kept.
//   Launch-configuration errors are the runtime's.
//
// What it cannot show: the device code nvcc generated, real concurrency between blocks, the
// speed of anything. tests/core/test_cuda_parity and friends on an H200 (bench/gpu_check.sh) do.
#include <cuda_runtime_api.h>
#include <cxxabi.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include "cast_body.hpp"
#include "copy_body.hpp"
#include "dequantize_body.hpp"

namespace {

// ---------------------------------------------------------------------------------------------
// Configuration and errors

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  return (end != v && *end == '\0' && x >= 0) ? x : fallback;
}

int device_count() {
  static const int n = static_cast<int>(env_int("D9D_EMULATED_CUDA_DEVICES", 1));
  return n;
}
int64_t device_memory() {
  static const int64_t n = env_int("D9D_EMULATED_CUDA_MEMORY", int64_t{8} << 30);
  return n;
}
int64_t delay_us() {
  static const int64_t n = env_int("D9D_EMULATED_CUDA_DELAY_US", 200);
  return n;
}

thread_local cudaError_t last_error = cudaSuccess;
thread_local int current_device = 0;

cudaError_t fail(cudaError_t err) {
  last_error = err;
  return err;
}

// A misuse the real runtime would report (or turn into a fault): said on stderr, so that the test
// log names it, and returned.
__attribute__((format(printf, 3, 4))) cudaError_t misuse(cudaError_t err, const char* call,
                                                          const char* fmt, ...) {
  std::fprintf(stderr, "emulated CUDA: %s: ", call);
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stderr, fmt, args);
  va_end(args);
  std::fputc('\n', stderr);
  return fail(err);
}

// ---------------------------------------------------------------------------------------------
// Memory

enum class Kind { kDevice, kPinned };

struct Allocation {
  size_t size;
  Kind kind;
  int device;  // kDevice only
};

struct Memory {
  std::mutex mu;
  std::map<uintptr_t, Allocation> live;  // by first byte
  std::vector<int64_t> used = std::vector<int64_t>(static_cast<size_t>(device_count()), 0);
};

Memory& memory() {
  static auto* m = new Memory();  // never destroyed: frees may come from static destructors
  return *m;
}

// The live allocation holding bytes [p, p + n), if any; n == 0 counts as one byte.
bool find_allocation(const void* p, size_t n, Allocation* out) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  Memory& m = memory();
  std::lock_guard lock(m.mu);
  auto it = m.live.upper_bound(a);
  if (it == m.live.begin()) return false;
  --it;
  if (a < it->first || a + std::max<size_t>(n, 1) > it->first + it->second.size) return false;
  *out = it->second;
  return true;
}

bool is_device(const void* p, size_t n, int device) {
  Allocation a{};
  return find_allocation(p, n, &a) && a.kind == Kind::kDevice && a.device == device;
}
bool is_any_device(const void* p) {
  Allocation a{};
  return find_allocation(p, 1, &a) && a.kind == Kind::kDevice;
}
bool is_pinned(const void* p, size_t n) {
  Allocation a{};
  return find_allocation(p, n, &a) && a.kind == Kind::kPinned;
}

// Exactly n bytes (under AddressSanitizer, a kernel or copy past the end is reported), aligned as
// cudaMalloc's (256) and pages.
void* allocate(size_t n, Kind kind, int device) {
  void* p = nullptr;
  if (posix_memalign(&p, kind == Kind::kPinned ? 4096 : 256, std::max<size_t>(n, 1)) != 0) {
    return nullptr;
  }
  if (kind == Kind::kDevice) std::memset(p, 0xCD, n);
  Memory& m = memory();
  std::lock_guard lock(m.mu);
  m.live[reinterpret_cast<uintptr_t>(p)] = {n, kind, device};
  return p;
}

// Frees the live allocation of `kind` that starts at p; false if there is none.
bool deallocate(void* p, Kind kind) {
  Memory& m = memory();
  std::lock_guard lock(m.mu);
  auto it = m.live.find(reinterpret_cast<uintptr_t>(p));
  if (it == m.live.end() || it->second.kind != kind) return false;
  if (kind == Kind::kDevice) {
    m.used[static_cast<size_t>(it->second.device)] -= static_cast<int64_t>(it->second.size);
  }
  m.live.erase(it);
  std::free(p);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Streams and events

void pause_a_little() {
  if (delay_us() == 0) return;
  thread_local std::minstd_rand rng(std::random_device{}());
  std::this_thread::sleep_for(std::chrono::microseconds(
      std::uniform_int_distribution<int64_t>(0, delay_us())(rng)));
}

class Stream {
 public:
  Stream(int device, bool blocking) : device_(device), blocking_(blocking) {
    worker_ = std::thread([this] { run(); });
  }
  ~Stream() {
    synchronize();
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  int device() const { return device_; }
  bool blocking() const { return blocking_; }

  void enqueue(std::function<void()> work) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(work));
      ++submitted_;
    }
    cv_.notify_all();
  }

  void synchronize() {
    std::unique_lock lock(mu_);
    const uint64_t target = submitted_;
    cv_.wait(lock, [&] { return completed_ >= target; });
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      std::function<void()> work = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      pause_a_little();
      work();
      lock.lock();
      ++completed_;
      cv_.notify_all();
    }
  }

  const int device_;
  const bool blocking_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  uint64_t submitted_ = 0, completed_ = 0;
  bool stop_ = false;
  std::thread worker_;
};

struct Streams {
  std::mutex mu;
  std::set<Stream*> live;
};
Streams& streams() {
  static auto* s = new Streams();
  return *s;
}

Stream* create_stream(int device, bool blocking) {
  auto* s = new Stream(device, blocking);
  std::lock_guard lock(streams().mu);
  streams().live.insert(s);
  return s;
}
void destroy_stream(Stream* s) {
  {
    std::lock_guard lock(streams().mu);
    streams().live.erase(s);
  }
  delete s;
}

// Waits for the work of every stream, or of the blocking ones only: what the legacy default
// stream waits for (on all devices: the emulation keeps no legacy stream per device).
void synchronize_streams(bool blocking_only) {
  std::vector<Stream*> all;
  {
    std::lock_guard lock(streams().mu);
    for (Stream* s : streams().live) {
      if (!blocking_only || s->blocking()) all.push_back(s);
    }
  }
  for (Stream* s : all) s->synchronize();
}

// cudaStreamPerThread: one stream per thread and device, gone with the thread.
struct PerThreadStreams {
  std::map<int, Stream*> by_device;
  ~PerThreadStreams() {
    for (auto& [device, s] : by_device) destroy_stream(s);
  }
};
thread_local PerThreadStreams per_thread_streams;

bool is_legacy(cudaStream_t s) { return s == nullptr || s == cudaStreamLegacy; }

// The stream a handle names; nullptr for the legacy default stream.
Stream* resolve(cudaStream_t s) {
  if (is_legacy(s)) return nullptr;
  if (s == cudaStreamPerThread) {
    Stream*& mine = per_thread_streams.by_device[current_device];
    if (mine == nullptr) mine = create_stream(current_device, true);
    return mine;
  }
  return reinterpret_cast<Stream*>(s);
}

int device_of(cudaStream_t s) {
  const Stream* st = resolve(s);
  return st != nullptr ? st->device() : current_device;
}

// Runs `work` in the order of stream `s`: later on its thread, or now for the legacy stream.
void submit(cudaStream_t s, std::function<void()> work) {
  Stream* st = resolve(s);
  if (st == nullptr) {
    synchronize_streams(true);
    work();
    return;
  }
  st->enqueue(std::move(work));
}

struct Event {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t recorded = 0, completed = 0;
  std::chrono::steady_clock::time_point when{};
};
// A cudaEvent_t is a heap shared_ptr, so work in flight keeps a destroyed event alive.
using EventHandle = std::shared_ptr<Event>;
EventHandle& event_of(cudaEvent_t e) { return *reinterpret_cast<EventHandle*>(e); }

// ---------------------------------------------------------------------------------------------
// Kernels

struct LaunchConfig {
  dim3 grid, block;
  size_t shared;
  cudaStream_t stream;
};
thread_local std::vector<LaunchConfig> pushed_configs;

// Checks a launch and its arguments (read now, as the real runtime copies them at the launch) and
// returns the work that runs it on the stream; a nullptr function after a misuse.
using Emulation = std::function<std::function<void()>(const LaunchConfig&, int device, void** args)>;

std::function<void()> strided_copy(const LaunchConfig& cfg, const d9d::kernels::DeviceCopy* copies,
                                   std::vector<d9d::kernels::DeviceCopy> inline_copies, int count,
                                   int device, const char* name) {
  using namespace d9d::kernels;
  if (cfg.block.x != kCopyThreads || count <= 0) {
    misuse(cudaErrorInvalidConfiguration, name, "%u threads per block, %d copies", cfg.block.x,
           count);
    return nullptr;
  }
  if (copies != nullptr && !is_device(copies, sizeof(DeviceCopy) * static_cast<size_t>(count),
                                      device)) {
    misuse(cudaErrorInvalidValue, name, "descriptors at %p are not on cuda:%d",
           static_cast<const void*>(copies), device);
    return nullptr;
  }
  const unsigned blocks = cfg.grid.x;
  return [=, inline_copies = std::move(inline_copies)] {
    // Descriptors in device memory are read when the kernel runs, after the upload before it.
    std::vector<DeviceCopy> all = copies != nullptr
                                      ? std::vector<DeviceCopy>(copies, copies + count)
                                      : inline_copies;
    for (const DeviceCopy& c : all) {
      if (!is_device(c.dst, 1, device) || !is_device(c.src, 1, device)) {
        std::fprintf(stderr, "emulated CUDA: %s: a copy's %p <- %p is not on cuda:%d\n", name,
                     static_cast<void*>(c.dst), static_cast<const void*>(c.src), device);
        std::abort();  // a kernel touching foreign memory: on a GPU, an illegal address
      }
    }
    alignas(16) std::byte tile[kTileBytes];
    for (int64_t block = 0; block < static_cast<int64_t>(blocks); ++block) {
      const DeviceCopy& c = all[static_cast<size_t>(find_copy(all.data(), count, block))];
      const int64_t local = block - c.block_begin;
      if (c.tiled) {  // every thread loads, barrier, every thread stores
        const TilePosition p = tile_position(c, local);
        for (int t = 0; t < kCopyThreads; ++t) tile_load_any(c, p, t, tile);
        for (int t = 0; t < kCopyThreads; ++t) tile_store_any(c, p, t, tile);
      } else {
        for (int t = 0; t < kCopyThreads; ++t) copy_words_any(c, local, t);
      }
    }
  };
}

std::function<void()> emulate_inline_copy(const LaunchConfig& cfg, int device, void** args) {
  const auto& copies = *static_cast<const d9d::kernels::InlineCopies*>(args[0]);
  const int count = *static_cast<const int*>(args[1]);
  if (count > d9d::kernels::kInlineCopies) {
    misuse(cudaErrorInvalidValue, "strided_copy_kernel_inline", "%d copies", count);
    return nullptr;
  }
  return strided_copy(cfg, nullptr,
                      std::vector<d9d::kernels::DeviceCopy>(copies.copies, copies.copies + count),
                      count, device, "strided_copy_kernel_inline");
}

std::function<void()> emulate_copy(const LaunchConfig& cfg, int device, void** args) {
  const auto* copies = *static_cast<const d9d::kernels::DeviceCopy* const*>(args[0]);
  const int count = *static_cast<const int*>(args[1]);
  return strided_copy(cfg, copies, {}, count, device, "strided_copy_kernel");
}

template <class D, class S>
std::function<void()> emulate_cast(const LaunchConfig& cfg, int device, void** args) {
  using namespace d9d::kernels;
  const auto* src = *static_cast<const std::byte* const*>(args[0]);
  auto* dst = *static_cast<std::byte* const*>(args[1]);
  const int64_t count = *static_cast<const int64_t*>(args[2]);
  const int64_t items = *static_cast<const int64_t*>(args[3]);
  const bool vector = *static_cast<const bool*>(args[4]);
  const auto src_bytes = static_cast<size_t>(count) * sizeof(Raw<S>);
  const auto dst_bytes = static_cast<size_t>(count) * sizeof(Raw<D>);
  if (cfg.block.x != kCastThreads) {
    misuse(cudaErrorInvalidConfiguration, "cast_kernel", "%u threads per block", cfg.block.x);
    return nullptr;
  }
  if (!is_device(src, src_bytes, device) || !is_device(dst, dst_bytes, device)) {
    misuse(cudaErrorInvalidValue, "cast_kernel", "%zu bytes at %p -> %zu bytes at %p: not on cuda:%d",
           src_bytes, static_cast<const void*>(src), dst_bytes, static_cast<void*>(dst), device);
    return nullptr;
  }
  const int64_t blocks = cfg.grid.x;
  return [=] {
    const int64_t step = blocks * kCastThreads;
    for (int64_t block = 0; block < blocks; ++block) {
      for (int t = 0; t < kCastThreads; ++t) {
        for (int64_t i = block * kCastThreads + t; i < items; i += step) {
          cast_item<D, S>(src, dst, count, i, vector);
        }
      }
    }
  };
}

std::function<void()> emulate_dequantize(const LaunchConfig& cfg, int device, void** args) {
  using namespace d9d::kernels;
  const DequantArgs a = *static_cast<const DequantArgs*>(args[0]);
  const bool fp4 = a.format == d9d::QuantFormat::kMxfp4 || a.format == d9d::QuantFormat::kNvfp4;
  const auto elements = static_cast<size_t>(a.layout.rows * a.layout.cols);
  const size_t source_bytes = fp4 ? elements / 2 : elements;
  const size_t out_bytes =
      elements *
      static_cast<size_t>(d9d::numerics::kDTypes[static_cast<int>(a.out_dtype)].bits / 8);
  if (cfg.block.x != kDequantThreads) {
    misuse(cudaErrorInvalidConfiguration, "dequantize_kernel", "%u threads per block", cfg.block.x);
    return nullptr;
  }
  if (!is_device(a.source, source_bytes, device) || !is_device(a.scale, 1, device) ||
      !is_device(a.out, out_bytes, device) ||
      (a.global_scale != nullptr && !is_device(a.global_scale, 4, device))) {
    misuse(cudaErrorInvalidValue, "dequantize_kernel", "an input or the output is not on cuda:%d",
           device);
    return nullptr;
  }
  const int64_t blocks = cfg.grid.x;
  return [=] {
    const int64_t step = blocks * kDequantThreads;
    for (int64_t block = 0; block < blocks; ++block) {
      for (int t = 0; t < kDequantThreads; ++t) {
        for (int64_t i = block * kDequantThreads + t; i < a.items; i += step) {
          dequantize_item_any(a, i);
        }
      }
    }
  };
}

std::string demangle(const char* mangled) {
  int status = 0;
  char* s = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  if (status != 0 || s == nullptr) return mangled;
  std::string out = s;
  std::free(s);
  return out;
}

// The emulation of the kernel named `device_name` (mangled), or an empty function.
Emulation emulation_for(const std::string& device_name) {
  const std::string name = demangle(device_name.c_str());
  if (name.find("::strided_copy_kernel_inline(") != std::string::npos) return emulate_inline_copy;
  if (name.find("::strided_copy_kernel(") != std::string::npos) return emulate_copy;
  if (name.find("::dequantize_kernel<") != std::string::npos) return emulate_dequantize;
  Emulation found;
  for (int s = 0; s < d9d::kNumDTypes; ++s) {
    d9d::numerics::visit_element_type(static_cast<d9d::DType>(s), [&](auto src) {
      for (int d = 0; d < d9d::kNumDTypes; ++d) {
        d9d::numerics::visit_element_type(static_cast<d9d::DType>(d), [&](auto dst) {
          using S = decltype(src);
          using D = decltype(dst);
          const std::string s_name = demangle(typeid(S).name());
          const std::string want = "::cast_kernel<" + demangle(typeid(D).name()) + ", " +
                                   s_name + (s_name.back() == '>' ? " >(" : ">(");
          if (name.find(want) != std::string::npos) found = emulate_cast<D, S>;
        });
      }
    });
  }
  return found;
}

struct Kernels {
  std::mutex mu;
  std::map<const void*, std::pair<std::string, Emulation>> by_stub;
};
Kernels& kernels() {
  static auto* k = new Kernels();
  return *k;
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}

bool valid_device(int d) { return d >= 0 && d < device_count(); }

}  // namespace

extern "C" {

// ----- errors ---------------------------------------------------------------------------------

cudaError_t cudaGetLastError() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return last_error; }
const char* cudaGetErrorName(cudaError_t e) { return error_name(e); }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorMisalignedAddress: return "misaligned address";
    default: return error_name(e);
  }
}

// ----- devices --------------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  *count = device_count();
  return device_count() == 0 ? fail(cudaErrorNoDevice) : cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  if (device_count() == 0) return fail(cudaErrorNoDevice);
  *device = current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "d9d emulated CUDA device %d", device);
  prop->totalGlobalMem = static_cast<size_t>(device_memory());
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 1;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  synchronize_streams(false);
  return cudaSuccess;
}

// ----- memory ---------------------------------------------------------------------------------

cudaError_t cudaMalloc(void** p, size_t n) {
  *p = nullptr;
  if (!valid_device(current_device)) return fail(cudaErrorNoDevice);
  if (n == 0) return cudaSuccess;  // a null pointer, as the real runtime's
  {
    Memory& m = memory();
    std::lock_guard lock(m.mu);
    int64_t& used = m.used[static_cast<size_t>(current_device)];
    if (static_cast<int64_t>(n) > device_memory() - used) return fail(cudaErrorMemoryAllocation);
    used += static_cast<int64_t>(n);
  }
  *p = allocate(n, Kind::kDevice, current_device);
  if (*p != nullptr) return cudaSuccess;
  Memory& m = memory();
  std::lock_guard lock(m.mu);
  m.used[static_cast<size_t>(current_device)] -= static_cast<int64_t>(n);
  return fail(cudaErrorMemoryAllocation);
}

cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  synchronize_streams(false);  // cudaFree waits for the device
  if (!deallocate(p, Kind::kDevice)) {
    return misuse(cudaErrorInvalidValue, "cudaFree", "%p is not a device allocation", p);
  }
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t stream) {
  const int saved = current_device;
  current_device = device_of(stream);
  const cudaError_t e = cudaMalloc(p, n);
  current_device = saved;
  return e;
}

cudaError_t cudaFreeAsync(void* p, cudaStream_t stream) {
  if (p == nullptr) return cudaSuccess;
  if (!is_any_device(p)) {
    return misuse(cudaErrorInvalidValue, "cudaFreeAsync", "%p is not a device allocation", p);
  }
  submit(stream, [p] {
    if (!deallocate(p, Kind::kDevice)) {
      std::fprintf(stderr, "emulated CUDA: cudaFreeAsync: %p freed twice\n", p);
      std::abort();
    }
  });
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** p, size_t n) {
  *p = allocate(n, Kind::kPinned, -1);
  return *p != nullptr ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

cudaError_t cudaFreeHost(void* p) {
  if (p == nullptr) return cudaSuccess;
  synchronize_streams(false);
  if (!deallocate(p, Kind::kPinned)) {
    return misuse(cudaErrorInvalidValue, "cudaFreeHost", "%p is not a pinned allocation", p);
  }
  return cudaSuccess;
}

// ----- copies ---------------------------------------------------------------------------------

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int device = device_of(stream);
  const bool dst_device = is_any_device(dst), src_device = is_any_device(src);
  bool ok = false;
  switch (kind) {
    case cudaMemcpyHostToDevice: ok = !src_device && is_device(dst, n, device); break;
    case cudaMemcpyDeviceToHost: ok = !dst_device && is_device(src, n, device); break;
    case cudaMemcpyDeviceToDevice: ok = is_device(dst, n, device) && is_device(src, n, device); break;
    case cudaMemcpyHostToHost: ok = !dst_device && !src_device; break;
    default: ok = false;
  }
  if (!ok) {
    return misuse(cudaErrorInvalidValue, "cudaMemcpyAsync",
                  "kind %d, %zu bytes %p -> %p on a stream of cuda:%d: a pointer is not of its kind",
                  static_cast<int>(kind), n, src, dst, device);
  }
  if (kind == cudaMemcpyHostToDevice && !is_pinned(src, n)) {
    // From pageable memory: staged now, so the caller may reuse its buffer at once.
    auto staged = std::make_shared<std::vector<std::byte>>(static_cast<const std::byte*>(src),
                                                           static_cast<const std::byte*>(src) + n);
    submit(stream, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
    return cudaSuccess;
  }
  submit(stream, [dst, src, n] { std::memcpy(dst, src, n); });
  if (kind == cudaMemcpyDeviceToHost && !is_pinned(dst, n)) {
    // Into pageable memory: returns when the bytes are there.
    if (Stream* s = resolve(stream)) s->synchronize();
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, n, kind, nullptr);  // the legacy stream: now
}

cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_device, const void* src, int src_device,
                                size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (!is_device(dst, n, dst_device) || !is_device(src, n, src_device)) {
    return misuse(cudaErrorInvalidValue, "cudaMemcpyPeerAsync",
                  "%zu bytes %p (cuda:%d) -> %p (cuda:%d): a pointer is not on its device", n, src,
                  src_device, dst, dst_device);
  }
  submit(stream, [dst, src, n] { std::memcpy(dst, src, n); });
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int device = device_of(stream);
  if (!is_device(p, n, device)) {
    return misuse(cudaErrorInvalidValue, "cudaMemsetAsync", "%zu bytes at %p are not on cuda:%d",
                  n, p, device);
  }
  submit(stream, [p, value, n] { std::memset(p, value, n); });
  return cudaSuccess;
}

// ----- streams and events ---------------------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  if (!valid_device(current_device)) return fail(cudaErrorNoDevice);
  *s = reinterpret_cast<cudaStream_t>(
      create_stream(current_device, (flags & cudaStreamNonBlocking) == 0));
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (is_legacy(s) || s == cudaStreamPerThread) return fail(cudaErrorInvalidResourceHandle);
  destroy_stream(reinterpret_cast<Stream*>(s));  // after its work, as the real runtime frees it
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (Stream* st = resolve(s)) {
    st->synchronize();
  } else {
    synchronize_streams(true);
  }
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned /*flags*/) {
  *e = reinterpret_cast<cudaEvent_t>(new EventHandle(std::make_shared<Event>()));
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }

cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (e == nullptr) return fail(cudaErrorInvalidResourceHandle);
  delete &event_of(e);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (e == nullptr) return fail(cudaErrorInvalidResourceHandle);
  EventHandle event = event_of(e);
  uint64_t generation = 0;
  {
    std::lock_guard lock(event->mu);
    generation = ++event->recorded;
  }
  submit(s, [event, generation] {
    {
      std::lock_guard lock(event->mu);
      event->completed = std::max(event->completed, generation);
      event->when = std::chrono::steady_clock::now();
    }
    event->cv.notify_all();
  });
  return cudaSuccess;
}

// Waits for the work before the event's latest record; an event never recorded is complete.
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (e == nullptr) return fail(cudaErrorInvalidResourceHandle);
  Event& event = *event_of(e);
  std::unique_lock lock(event.mu);
  const uint64_t target = event.recorded;
  event.cv.wait(lock, [&] { return event.completed >= target; });
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (start == nullptr || end == nullptr) return fail(cudaErrorInvalidResourceHandle);
  Event& a = *event_of(start);
  Event& b = *event_of(end);
  std::chrono::steady_clock::time_point ta, tb;
  {
    std::lock_guard lock(a.mu);
    ta = a.when;
  }
  {
    std::lock_guard lock(b.mu);
    tb = b.when;
  }
  *ms = std::chrono::duration<float, std::milli>(tb - ta).count();
  return cudaSuccess;
}

// ----- kernel registration and launch (what nvcc's host stubs call) ---------------------------

void** __cudaRegisterFatBinary(void* fat_cubin) {
  static void* handle_storage = nullptr;
  handle_storage = fat_cubin;
  return &handle_storage;
}
void __cudaRegisterFatBinaryEnd(void** /*handle*/) {}
void __cudaUnregisterFatBinary(void** /*handle*/) {}

void __cudaRegisterFunction(void** /*handle*/, const char* host_fun, char* device_fun,
                            const char* /*device_name*/, int /*thread_limit*/, uint3* /*tid*/,
                            uint3* /*bid*/, dim3* /*block*/, dim3* /*grid*/, int* /*warp_size*/) {
  Kernels& k = kernels();
  std::lock_guard lock(k.mu);
  k.by_stub[host_fun] = {device_fun, emulation_for(device_fun)};
}

unsigned __cudaPushCallConfiguration(dim3 grid, dim3 block, size_t shared, CUstream_st* stream) {
  pushed_configs.push_back({grid, block, shared, stream});
  return 0;
}

cudaError_t __cudaPopCallConfiguration(dim3* grid, dim3* block, size_t* shared, void* stream) {
  if (pushed_configs.empty()) return fail(cudaErrorInvalidConfiguration);
  const LaunchConfig c = pushed_configs.back();
  pushed_configs.pop_back();
  *grid = c.grid;
  *block = c.block;
  *shared = c.shared;
  *static_cast<cudaStream_t*>(stream) = c.stream;
  return cudaSuccess;
}

cudaError_t __cudaGetKernel(cudaKernel_t* kernel, const void* host_fun) {
  *kernel = reinterpret_cast<cudaKernel_t>(const_cast<void*>(host_fun));
  return cudaSuccess;
}

cudaError_t __cudaLaunchKernel(cudaKernel_t kernel, dim3 grid, dim3 block, void** args,
                               size_t shared, cudaStream_t stream) {
  std::pair<std::string, Emulation> found;
  {
    Kernels& k = kernels();
    std::lock_guard lock(k.mu);
    auto it = k.by_stub.find(reinterpret_cast<const void*>(kernel));
    if (it == k.by_stub.end()) {
      return misuse(cudaErrorInvalidDeviceFunction, "launch", "unregistered kernel %p",
                    static_cast<void*>(kernel));
    }
    found = it->second;
  }
  if (!found.second) {
    return misuse(cudaErrorNotSupported, "launch", "no emulation of kernel %s",
                  demangle(found.first.c_str()).c_str());
  }
  if (grid.x == 0 || grid.y != 1 || grid.z != 1 || block.x == 0 || block.x > 1024 ||
      block.y != 1 || block.z != 1 || grid.x > 0x7fffffffu) {
    return fail(cudaErrorInvalidConfiguration);
  }
  const LaunchConfig cfg{grid, block, shared, stream};
  std::function<void()> work = found.second(cfg, device_of(stream), args);
  if (!work) return last_error;
  submit(stream, std::move(work));
  return cudaSuccess;
}

cudaError_t __cudaLaunchKernel_ptsz(cudaKernel_t kernel, dim3 grid, dim3 block, void** args,
                                    size_t shared, cudaStream_t stream) {
  return __cudaLaunchKernel(kernel, grid, block, args, shared,
                            is_legacy(stream) ? cudaStreamPerThread : stream);
}

}  // extern "C"
