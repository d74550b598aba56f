// bench_io: the io layer's benchmarks, driven by bench/io/io.py (which runs the peers beside it).
//
//   bench_io materialize CKPT REPS   every tensor of the checkpoint into owned contiguous host
//                                    memory (Checkpoint::load_all), REPS times; fresh memory each
//   bench_io pread CKPT REPS THREADS [fresh]
//                                    the machine's limit: pread of the same bytes (every file's
//                                    data section) into one buffer, faulted in before timing; with
//                                    "fresh", into new memory each rep (allocation timed): the
//                                    limit for any loader that must hand out new memory
//   bench_io into CKPT REPS          every tensor into buffers allocated and faulted in before
//                                    timing (Checkpoint::read_into), as an engine fills its weights
//   bench_io header FILE REPS        SafetensorsFile::open (map + validate) of FILE
//
// Each prints one JSON object: {"times": [seconds...], "bytes": N, "max_rss_mb": M, ...}.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <d9d/io/checkpoint.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using d9d::io::Checkpoint;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

long max_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024;
}

void print(const std::vector<double>& times, int64_t bytes, const std::string& extra = "") {
  std::printf("{\"times\": [");
  for (size_t i = 0; i < times.size(); ++i) std::printf("%s%.6f", i ? ", " : "", times[i]);
  std::printf("], \"bytes\": %lld, \"max_rss_mb\": %ld%s}\n", static_cast<long long>(bytes),
              max_rss_mb(), extra.c_str());
}

int materialize(const std::string& path, int reps) {
  std::vector<double> times;
  int64_t bytes = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    const Checkpoint ckpt = Checkpoint::open(path);
    auto tensors = ckpt.load_all();
    times.push_back(seconds_since(t0));
    bytes = ckpt.total_bytes();
    if (tensors.size() != ckpt.keys().size()) return 1;
  }  // tensors freed between reps: every rep fills fresh memory, as a loader does
  print(times, bytes);
  return 0;
}

int into(const std::string& path, int reps) {
  const Checkpoint ckpt = Checkpoint::open(path);
  std::map<std::string, d9d::Tensor> targets;
  for (const std::string& name : ckpt.keys()) {
    const auto& info = ckpt.info(name);
    targets[name] = d9d::Tensor::zeros(info.shape, info.dtype);  // zeros: faulted in
  }
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    ckpt.read_into(targets);
    times.push_back(seconds_since(t0));
  }
  print(times, ckpt.total_bytes());
  return 0;
}

int pread_limit(const std::string& path, int reps, int threads, bool fresh) {
  // The same bytes the loader reads: each file's data section.
  const Checkpoint ckpt = Checkpoint::open(path);
  struct Span {
    std::string file;
    int64_t offset, size;
  };
  std::vector<Span> spans;
  int64_t total = 0;
  for (const std::string& f : ckpt.files()) {
    const auto& sf = ckpt.file(f);
    spans.push_back(
        {(ckpt.dir() / f).string(), sf.data_offset(), sf.file_size() - sf.data_offset()});
    total += spans.back().size;
  }
  std::vector<char> warm_buffer(fresh ? 0 : static_cast<size_t>(total), 1);  // faulted in
  const auto mapped = static_cast<size_t>(total);
  constexpr int64_t kChunk = int64_t{8} << 20;
  struct Job {
    int fd;
    int64_t offset, size;
    char* dst;
  };
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    std::vector<int> fds;
    std::vector<Job> jobs;
    const auto t0 = Clock::now();
    char* base = warm_buffer.data();
    void* raw = nullptr;
    if (fresh) {
      raw = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (raw == MAP_FAILED) return 1;
      base = static_cast<char*>(raw);
    }
    char* dst = base;
    for (const Span& s : spans) {
      const int fd = ::open(s.file.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return 1;
      fds.push_back(fd);
      for (int64_t o = 0; o < s.size; o += kChunk) {
        jobs.push_back({fd, s.offset + o, std::min(kChunk, s.size - o), dst + o});
      }
      dst += s.size;
    }
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t j = next++; j < jobs.size(); j = next++) {
        int64_t done = 0;
        while (done < jobs[j].size) {
          const ssize_t got =
              ::pread(jobs[j].fd, jobs[j].dst + done, static_cast<size_t>(jobs[j].size - done),
                      jobs[j].offset + done);
          if (got <= 0) std::abort();
          done += got;
        }
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    times.push_back(seconds_since(t0));
    for (const int fd : fds) ::close(fd);
    if (fresh) ::munmap(raw, mapped);  // untimed
  }
  print(times, total, ", \"threads\": " + std::to_string(threads));
  return 0;
}

int header(const std::string& path, int reps) {
  std::vector<double> times;
  size_t count = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    const auto f = d9d::io::SafetensorsFile::open(path);
    times.push_back(seconds_since(t0));
    count = f.size();
  }
  print(times, 0, ", \"tensors\": " + std::to_string(count));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() == 3 && args[0] == "materialize")
      return materialize(args[1], std::stoi(args[2]));
    if ((args.size() == 4 || args.size() == 5) && args[0] == "pread") {
      return pread_limit(args[1], std::stoi(args[2]), std::stoi(args[3]),
                         args.size() == 5 && args[4] == "fresh");
    }
    if (args.size() == 3 && args[0] == "into") return into(args[1], std::stoi(args[2]));
    if (args.size() == 3 && args[0] == "header") return header(args[1], std::stoi(args[2]));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_io: %s\n", e.what());
    return 1;
  }
  std::fprintf(
      stderr,
      "usage: bench_io materialize CKPT REPS | pread CKPT REPS THREADS | header FILE REPS\n");
  return 2;
}
