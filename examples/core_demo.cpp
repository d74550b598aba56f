// d9d-core-demo: exercises the tensor core on Llama-shaped attention weights and prints what it
// did. (The streamed-engine work replaces it with `d9d demo`.)
//
//   d9d-core-demo [hidden_size]      default 4096: q/k/v/o projections of 4096 x 4096 BF16
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include <d9d/d9d.hpp>

using namespace d9d;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs fn, prints one line with its time and throughput over `bytes` moved (read + written).
template <class F>
auto timed(const char* what, double bytes, F&& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  auto result = fn();
  const double s = seconds_since(t0);
  std::printf("  %-44s %8.2f ms  %7.2f GB/s\n", what, s * 1e3, bytes / s / 1e9);
  return result;
}

Tensor random_weight(int64_t rows, int64_t cols, std::mt19937& gen) {
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> values(static_cast<size_t>(rows * cols));
  for (float& v : values) v = dist(gen);
  return Tensor::from_vector(values, {rows, cols}).to(DType::BF16);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int64_t hidden = argc > 1 ? std::stoll(argv[1]) : 4096;
    if (hidden <= 0 || hidden % 8 != 0) {
      std::fprintf(stderr, "usage: d9d-core-demo [hidden_size, a positive multiple of 8]\n");
      return 2;
    }
    std::printf("d9d core demo: attention weights of a hidden size %lld model, BF16, %d threads\n",
                static_cast<long long>(hidden), num_threads());
    std::mt19937 gen(7);
    const Tensor q = random_weight(hidden, hidden, gen);
    const Tensor k = random_weight(hidden / 4, hidden, gen);  // grouped-query attention: 4 q per kv
    const Tensor v = random_weight(hidden / 4, hidden, gen);
    const double qkv_bytes = static_cast<double>(q.nbytes() + k.nbytes() + v.nbytes());
    std::printf("  q %s, k %s, v %s\n", q.str().c_str(), k.str().c_str(), v.str().c_str());

    Tensor qkv = timed("cat(q, k, v) -> fused qkv", 2 * qkv_bytes, [&] { return cat({q, k, v}, 0); });
    auto parts = timed("split(qkv) -> q, k, v (views)", 0, [&] {
      return split(qkv, {hidden, hidden / 4, hidden / 4}, 0);
    });
    const bool split_ok = equal(parts[0], q) && equal(parts[1], k) && equal(parts[2], v);

    Tensor kv = timed("stack(k, v) -> [2, kv, hidden]", 4.0 * static_cast<double>(k.nbytes()),
                      [&] { return stack({k, v}, 0); });
    auto unbound = unbind(kv, 0);
    const bool stack_ok = equal(unbound[0], k) && equal(unbound[1], v);

    Tensor qt = timed("q.transpose(0, 1).contiguous()", 2.0 * static_cast<double>(q.nbytes()),
                      [&] { return q.transpose(0, 1).contiguous(); });
    const bool transpose_ok = equal(qt.transpose(0, 1).contiguous(), q);

    Tensor q32 = timed("q.to(F32)", 3.0 * static_cast<double>(q.nbytes()),
                       [&] { return q.to(DType::F32); });
    Tensor q16 = timed("q.to(F32).to(BF16) (round to nearest even)",
                       3.0 * static_cast<double>(q.nbytes()), [&] { return q32.to(DType::BF16); });
    const bool cast_ok = equal(q16, q);

    auto heads = timed("chunk(q, 32 heads, dim 1) -> contiguous", 2.0 * static_cast<double>(q.nbytes()), [&] {
      std::vector<Tensor> out;
      for (const Tensor& h : chunk(q, 32, 1)) out.push_back(h.contiguous());
      return out;
    });
    const bool chunk_ok = equal(cat(heads, 1), q);

    std::printf("  checks: split %s, stack/unbind %s, transpose twice %s, cast round trip %s, "
                "chunk/cat %s\n",
                split_ok ? "ok" : "FAILED", stack_ok ? "ok" : "FAILED",
                transpose_ok ? "ok" : "FAILED", cast_ok ? "ok" : "FAILED",
                chunk_ok ? "ok" : "FAILED");
    const bool ok = split_ok && stack_ok && transpose_ok && cast_ok && chunk_ok;
    std::printf("%s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "d9d-core-demo: %s\n", e.what());
    return 1;
  }
}
