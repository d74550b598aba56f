// Uses the installed (or subproject) d9d: stacks two weights, chunks them back, checks the bytes.
#include <cstdio>

#include <d9d/d9d.hpp>

int main() {
  using namespace d9d;
  const Tensor q = Tensor::arange(12, DType::BF16).reshape({3, 4});
  const Tensor k = Tensor::full({3, 4}, 2.5f, DType::BF16);
  const Tensor qk = stack({q, k}, 0);
  const auto parts = chunk(qk, 2, 0);
  const bool ok = qk.shape() == Shape{2, 3, 4} && equal(parts[0].squeeze(0), q) &&
                  equal(parts[1].squeeze(0), k) && qk.select(0, 1).select(0, 2).select(0, 3).item<float>() == 2.5f;
  std::printf("consumer: %s -> %s\n", qk.str().c_str(), ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
