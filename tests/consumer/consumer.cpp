// Uses the installed (or subproject) d9d: stacks two weights, chunks them back, checks the bytes,
// and passes the result through DLPack.
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
  // DLPack comes with d9d (d9d.pc or the subproject's d9d_dep), at a 1.x version.
  static_assert(DLPACK_MAJOR_VERSION >= 1, "d9d's DLPack is 1.x");
  const Tensor back = from_dlpack_versioned(to_dlpack_versioned(qk));
  const bool ok_dlpack = back.data_ptr() == qk.data_ptr() && equal(back, qk);
  std::printf("consumer: %s -> %s (DLPack %d.%d)\n", qk.str().c_str(),
              ok && ok_dlpack ? "ok" : "FAILED", DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION);
  if (!ok_dlpack) return 1;
  return ok ? 0 : 1;
}
